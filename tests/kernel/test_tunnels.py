"""Overlays (issue 24): a pod-to-pod packet traced with `-H <pod-b IP>` only, no --keep, is seen on
both nodes, inside the tunnel too: the underlay eth0 rows show the inner flow (PKT_INFO, JSON's
addresses and ports) and the outer header as JSON's "tunnel" object and TRACE_INFO's suffix
(`vxlan vni 1 192.168.0.1->192.168.0.2`); judged against tcpdump's captures on the underlay,
parsed by dpkt (testbed/packets.py), and read back by -r. The story has one packet from pod-a's
eth0 across both nodes to pod-b's eth0.

Shapes (testbed/overlay.py, testbed/calico.py), each with UDP, TCP and ping from pod-a to pod-b:
- flannel: VXLAN 1, dstport 8472; and its over-MTU case: a DF datagram bigger than flannel.1's
  MTU from pod-big, whose story ends dropped on node1 with ICMP frag needed sent back (--why);
- calico-vxlan: VXLAN 4096, dstport 4789, routed veths;
- calico-ipip: tunl0; calico-geneve: geneve0, collect_md, VNI 4097 and an 8-byte TLV option;
- calico-sit: sit1, IPv6 pods over the IPv4 underlay.
One tracer for the IPv4 shapes (every pod-b has the same address), one for SIT; and, on the host
only, flannel's UDP under one tracer per node (-N, --node) read back together by -r: one path.
The IPv4 tracer writes -w too: each tunnel packet's pcapng comment carries both headers. Beside
it, started together (the compiles overlap), a tracer of the pods' ping by filters that only the
inner packet meets on the underlay (--proto icmp, --icmpid, the expression `icmp`) and -N of
node2 and pod-b only, with --keep: the echo request is first seen inside the tunnel on node2's
eth0 and followed through decapsulation to pod-b; the reply, first seen in pod-b, through
encapsulation and node1's decapsulation to pod-a.

Runs on: the host (VXLAN only: its kernel has no ipip, geneve or sit module) and the 6.1 guest
(all of them; CI). It passes in the 5.10 and 6.12 guests too, but is not in their stage lists
(tests/run_all.py): 7 and 5 minutes there."""

import json
import re
import struct
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from conftest import BACKEND

from testbed.calico import TUNNELS, CalicoCluster, tunnel_unavailable
from testbed.packets import decode
from testbed.overlay import PING_IDENT, UNDERLAY, FlannelCluster
from testbed.tracer import PYTHON, SKBTRACER, TracerRun, tracing_together

UNDERLAY_LINKS = (("node1", "eth0"), ("node2", "eth0"))


@dataclass(frozen=True)
class Overlay:
    name: str
    kind: str           # the tunnel, as rows and testbed.packets name it
    device: str         # each node's tunnel device
    family: int         # of the pods' traffic
    vni: int | None = None
    port: int | None = None     # UDP destination port of the outer header

    def build(self):
        return FlannelCluster() if self.name == "flannel" else CalicoCluster(self.kind)

    def scenarios(self):
        suffix = "6" if self.family == 6 else ""
        return tuple(name + suffix for name in ("udp", "tcp", "ping"))


def _calico(kind):
    t = TUNNELS[kind]
    return Overlay("calico-" + kind, kind, t.device, t.family, t.vni, t.port)


OVERLAYS = (Overlay("flannel", "vxlan", FlannelCluster.TUNNEL, 4, 1, 8472),
            _calico("vxlan"), _calico("ipip"), _calico("geneve"), _calico("sit"))
BY_NAME = {o.name: o for o in OVERLAYS}
OVER_MTU = "flannel"      # the shape whose over-MTU scenario runs too
PROTO = {("udp", 4): 17, ("tcp", 4): 6, ("ping", 4): 1, ("udp", 6): 17, ("tcp", 6): 6, ("ping", 6): 58}


@dataclass
class Traced:
    """One shape's part of a tracer run."""
    overlay: Overlay
    run: TracerRun
    events: list        # the run's JSON event objects (all shapes')
    summaries: list     # its story's "summary" objects (all shapes')
    sent: dict          # scenario -> (Scenario, Outcome, underlay tunnel packets, (start, end) ns,
    #                     the sender's eth0 capture: _exchange)
    ns: dict            # role -> namespace name
    pod_b: str
    json_path: str
    pcap_path: str
    filtered: list      # the inner-filter --keep tracer's JSON event objects (IPv4 only)


def _exchange(capture):
    """The sender's side of a scenario, for a failure's message: (src, sport, dst, dport, TCP flags)."""
    return [(p.outer.src, p.outer.sport, p.outer.dst, p.outer.dport, p.outer.tcp_flags) for p in capture.packets]


def _trace(family, tmp_path_factory):
    """Build every shape of the family this kernel can, run their scenarios under one tracer
    (`-H <pod-b>`), and return {shape name: Traced or the reason it cannot run}."""
    overlays = [o for o in OVERLAYS if o.family == family]
    result = {o.name: tunnel_unavailable(o.kind) for o in overlays}
    result = {name: reason for name, reason in result.items() if reason}
    runnable = [o for o in overlays if o.name not in result]
    if not runnable:
        return result
    where = tmp_path_factory.mktemp("tunnels%d" % family)
    json_path, pcap_path, filtered_path = (str(where / name) for name in
                                           ("tunnels.jsonl", "tunnels.pcapng", "filtered.jsonl"))
    with ExitStack() as stack:
        shapes = {o.name: stack.enter_context(o.build()) for o in runnable}
        pod_b = {s.pods["pod-b"].ip4 if family == 4 else s.pods["pod-b"].ip6 for s in shapes.values()}
        assert len(pod_b) == 1, "one -H for all shapes: %s" % pod_b
        pod_b = pod_b.pop()
        sent = {name: {} for name in shapes}
        why = ["--route", "--drop", "--why"] if OVER_MTU in shapes else []
        run = TracerRun(why + ["--json=" + json_path, "-w", pcap_path, "--width", "1000", "-H", pod_b])
        runs = [run]
        if family == 4:
            runs.append(TracerRun(["--keep", "--proto", "icmp", "--icmpid", str(PING_IDENT),
                                   "--json=" + filtered_path]
                                  + [arg for shape in shapes.values()
                                     for role in ("node2", "pod-b") for arg in ("-N", shape.ns[role])]
                                  + ["icmp"]))
        with tracing_together(runs):
            for o in runnable:
                shape = shapes[o.name]
                for scenario in o.scenarios() + (("over-mtu",) if o.name == OVER_MTU else ()):
                    sc = shape.scenario(scenario)
                    start = time.time_ns()
                    outcome, caps = shape.run(sc, watch=UNDERLAY_LINKS)
                    packets = {link: [p for p in caps[link].packets if p.tunnel] for link in UNDERLAY_LINKS}
                    sent[o.name][scenario] = (sc, outcome, packets, (start, time.time_ns()),
                                              _exchange(caps[(sc.src, "eth0")]))
        namespaces = {name: dict(shape.ns) for name, shape in shapes.items()}
    objects = _objects(json_path)
    events = [o for o in objects if o.get("type") == "event"]
    summaries = [o for o in objects if o.get("type") == "summary"]
    filtered = None
    if family == 4:
        assert runs[1].returncode == 0 and "Traceback" not in runs[1].stderr, runs[1].stderr
        filtered = [o for o in _objects(filtered_path) if o.get("type") == "event"]
    for o in runnable:
        result[o.name] = Traced(o, run, events, summaries, sent[o.name], namespaces[o.name], pod_b,
                                json_path, pcap_path, filtered)
    return result


def _objects(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def traced4(tmp_path_factory):
    return _trace(4, tmp_path_factory)


@pytest.fixture(scope="module")
def traced6(tmp_path_factory):
    return _trace(6, tmp_path_factory)


@pytest.fixture
def traced(request):
    """The Traced of the test's shape (its parameter: a shape name); the family's tracer runs
    when a test first asks for one of its shapes."""
    overlay = BY_NAME[request.param]
    found = request.getfixturevalue("traced%d" % overlay.family)[overlay.name]
    if isinstance(found, str):
        pytest.skip(found)
    return found


def _cases():
    return pytest.mark.parametrize(("traced", "scenario"), [(o.name, s) for o in OVERLAYS for s in o.scenarios()],
                                   indirect=["traced"])


def _wire(packet):
    """What a captured tunnel packet says: (tunnel kind, vni, outer src, outer dst, outer sport,
    outer dport, inner src, inner dst, inner protocol)."""
    o, i = packet.outer, packet.inner
    return (packet.tunnel.kind, packet.tunnel.vni, o.src, o.dst, o.sport, o.dport, i.src, i.dst, i.proto)


def _row(o):
    t = o["tunnel"]
    return (t["type"], t["vni"], t["saddr"], t["daddr"], t["sport"], t["dport"], o["saddr"], o["daddr"],
            o["l4proto"])


def _brief(o):
    return (o["netns_name"], o["ifname"], o["func"], o["skb"], o["saddr"], o["daddr"], o.get("tunnel"))


def _window(t, scenario, events=None):
    """The shape's events (t.events, or those given) while the scenario ran."""
    _sc, _outcome, _packets, (start, end), _sender = t.sent[scenario]
    return [o for o in (t.events if events is None else events)
            if start <= o["time_ns"] <= end and o["netns_name"] in t.ns.values()]


@_cases()
def test_underlay_rows_on_both_nodes_show_the_inner_flow_and_the_tunnel(traced, scenario):
    t = traced
    assert t.run.returncode == 0 and "Traceback" not in t.run.stderr, t.run.stderr
    _sc, outcome, packets, _times, exchange = t.sent[scenario]
    assert outcome.mismatches() == [], "the shape itself: %s %s" % (outcome.mismatches(), exchange)
    window = _window(t, scenario)
    proto = PROTO[(scenario.rstrip("6"), t.overlay.family)]
    for node, link in UNDERLAY_LINKS:
        wire = {_wire(p) for p in packets[(node, link)]}
        assert wire and {w[0] for w in wire} == {t.overlay.kind}, wire
        assert {w[2:4] for w in wire} >= {(UNDERLAY["node1"], UNDERLAY["node2"])}, wire
        rows = [o for o in window if o["netns_name"] == t.ns[node] and o["ifname"] == link and o.get("tunnel")]
        # every encapsulated packet on the underlay has rows; each row is one of them
        assert {_row(o) for o in rows} == wire, (node, {_row(o) for o in rows}, wire)
        assert all(t.pod_b in (o["saddr"], o["daddr"]) and o["l4proto"] == proto for o in rows)
    tunneled = [o["tunnel"] for o in window if o.get("tunnel")]
    assert {x["vni"] for x in tunneled} == {t.overlay.vni}
    assert {x["dport"] for x in tunneled if x["saddr"] == UNDERLAY["node1"]} == {t.overlay.port}


@_cases()
def test_tunnel_device_rows_show_the_inner_packet_until_it_is_encapsulated(traced, scenario):
    """On the tunnel device the rows are the pod's packet. A row there with the tunnel is the
    output path after encapsulation, before it sets the underlay device (kprobes: ip_output with
    skb->dev still the tunnel's): on the sending node only, after the same skb's inner rows on
    that device, and its tunnel is what the wire carried."""
    t = traced
    _sc, _outcome, packets, _times, _sender = t.sent[scenario]
    window = _window(t, scenario)
    device = [o for o in window if o["ifname"] == t.overlay.device]
    for node in ("node1", "node2"):
        assert any(o["netns_name"] == t.ns[node] and not o.get("tunnel") for o in device), \
            (node, [_brief(o) for o in device])
    wire = {_wire(p) for link in UNDERLAY_LINKS for p in packets[link]}
    for i, o in enumerate(device):
        if not o.get("tunnel"):
            continue
        # the sending side: node1 for pod-a's packet, node2 for pod-b's reply
        sender = "node1" if o["tunnel"]["saddr"] == UNDERLAY["node1"] else "node2"
        assert o["netns_name"] == t.ns[sender], _brief(o)
        assert _row(o) in wire, (_row(o), wire)
        assert any(x["skb"] == o["skb"] and x["netns_name"] == o["netns_name"] and not x.get("tunnel")
                   for x in device[:i]), [_brief(x) for x in device]


def _pcapng_packets(path):
    """(link type, frame, comment) of every packet block of a -w file (dpkt's block classes)."""
    from dpkt import pcapng
    with open(path, "rb") as f:
        data = f.read()
    linktypes, packets, at = [], [], 0
    while at < len(data):
        kind, length = struct.unpack_from("<II", data, at)
        block = data[at:at + length]
        at += length
        if kind == pcapng.PCAPNG_BT_IDB:
            linktypes.append(pcapng.InterfaceDescriptionBlockLE(block).linktype)
        elif kind == pcapng.PCAPNG_BT_EPB:
            epb = pcapng.EnhancedPacketBlockLE(block)
            comment = [o.data for o in epb.opts if o.code == pcapng.PCAPNG_OPT_COMMENT]
            packets.append((linktypes[epb.iface_id], epb.pkt_data, comment[0].decode() if comment else ""))
    return packets


@pytest.mark.parametrize("traced", [o.name for o in OVERLAYS], indirect=True)
def test_pcapng_comments_carry_both_headers(traced):
    """-w: a packet block holds the skb as it is (the outer frame on the underlay); its comment is
    the row: the inner flow (PKT_INFO) and the tunnel's kind, VNI and outer addresses."""
    t = traced
    # the rows' NETWORK_NS: inodes
    shape_ns = {"[%d]" % o["netns"] for o in t.events if o["netns_name"] in t.ns.values()}
    tunneled = []
    for linktype, frame, comment in _pcapng_packets(t.pcap_path):
        packet = decode(frame, linktype)
        if packet and packet.tunnel and packet.tunnel.kind == t.overlay.kind and \
                any(ns in comment for ns in shape_ns):
            tunneled.append((packet, comment))
    assert tunneled
    for packet, comment in tunneled:
        o, i = packet.outer, packet.inner
        vni = " vni %d" % packet.tunnel.vni if packet.tunnel.vni is not None else ""
        assert comment.endswith(" %s%s %s->%s" % (packet.tunnel.kind, vni, o.src, o.dst)), comment
        assert re.search(r" \S+:\[?%s\]?(:\d+)?->\[?%s\]?" % (re.escape(i.src), re.escape(i.dst)), comment), \
            comment


IPV4_SHAPES = [o.name for o in OVERLAYS if o.family == 4]


def _skbs_at(events, netns, ifname, tunnel=None):
    return {o["skb"] for o in events if o["netns_name"] == netns and o["ifname"] == ifname
            and (tunnel is None or bool(o.get("tunnel")) == tunnel)}


@pytest.mark.parametrize("traced", IPV4_SHAPES, indirect=True)
def test_inner_filters_select_on_the_underlay_and_keep_follows_across_the_tunnel(traced):
    """--keep --proto icmp --icmpid ID -N node2 -N pod-b 'icmp': on the underlay only the inner
    packet is ICMP. The echo request is first seen on node2's eth0, still encapsulated, and
    followed (the same skb) through decapsulation to pod-b's eth0; node1 and pod-a never see it.
    The reply, first seen in pod-b, is followed through encapsulation, across the underlay and
    node1's decapsulation to pod-a's eth0."""
    t = traced
    ns = t.ns
    window = _window(t, "ping", t.filtered)
    assert window, t.run.stderr
    assert all(o["l4proto"] == 1 and o["icmp_id"] == PING_IDENT for o in window), \
        {(o["l4proto"], o["icmp_id"]) for o in window}
    requests = [o for o in window if o["icmp_type"] == 8]
    replies = [o for o in window if o["icmp_type"] == 0]
    assert not [o for o in requests if o["netns_name"] in (ns["node1"], ns["pod-a"])], \
        [_brief(o) for o in requests]
    encapsulated = _skbs_at(requests, ns["node2"], "eth0", tunnel=True)
    assert {o["tunnel"]["type"] for o in requests if o.get("tunnel")} == {t.overlay.kind}
    assert encapsulated & _skbs_at(requests, ns["pod-b"], "eth0"), [_brief(o) for o in requests]
    across = (_skbs_at(replies, ns["pod-b"], "eth0") & _skbs_at(replies, ns["node1"], "eth0", tunnel=True)
              & _skbs_at(replies, ns["pod-a"], "eth0", tunnel=False))
    assert across, [_brief(o) for o in replies]


def _keyed_tunnel(o):
    return o["ktime_ns"], o["skb"], o["func"], json.dumps(o.get("tunnel"), sort_keys=True)


def _hops(summary):
    return [(i["netns_name"], i["ifname"]) for copy in summary["copies"] for i in copy["interfaces"]]


def _in_order(wanted, hops):
    it = iter(hops)
    return all(hop in it for hop in wanted)


@_cases()
def test_the_story_has_one_path_across_both_nodes(traced, scenario):
    t = traced
    ns, device = t.ns, t.overlay.device
    wanted = [(ns["pod-a"], "eth0"), (ns["node1"], device), (ns["node1"], "eth0"),
              (ns["node2"], "eth0"), (ns["node2"], device), (ns["pod-b"], "eth0")]
    pod_a = [s for s in t.summaries if _hops(s)[:1] == [(ns["pod-a"], "eth0")]
             and s["headers"][0]["l4proto"] == PROTO[(scenario.rstrip("6"), t.overlay.family)]]
    assert any(_in_order(wanted, _hops(s)) for s in pod_a), [(s["flow"], s["path"]) for s in pod_a]


def test_over_mtu_story_names_where_it_stopped_and_the_frag_needed(traced4):
    t = traced4[OVER_MTU]
    _sc, outcome, packets, _times, _sender = t.sent["over-mtu"]
    assert outcome.mismatches() == [], "the shape itself: %s" % outcome.mismatches()
    assert not any(packets.values()), "nothing reaches the underlay"
    ns = t.ns
    big = [s for s in t.summaries if _hops(s)[:1] == [(ns["pod-big"], "eth0")]]
    ends = [c["end"] for s in big for c in s["copies"]]
    dropped = [e for e in ends if e["kind"] == "dropped"]
    assert dropped and {e["netns_name"] for e in dropped} == {ns["node1"]}, ends
    assert all("ICMP frag needed" in e.get("sent_back", "") for e in dropped), dropped
    line = [x for x in t.run.stderr.splitlines() if x.startswith("DROPPED:") and ns["node1"] in x]
    assert line and "ICMP frag needed" in line[0], t.run.stderr


@pytest.mark.parametrize("traced", ["flannel"], indirect=True)
def test_text_rows_end_in_the_tunnel_and_r_reads_it_back(traced):
    t = traced
    suffix = " vxlan vni 1 %s->%s" % (UNDERLAY["node1"], UNDERLAY["node2"])
    replay = subprocess.run([PYTHON, SKBTRACER, "-r", t.json_path, "--json"], capture_output=True,
                            text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    again = [o for o in map(json.loads, replay.stdout.splitlines()) if o.get("type") == "event"]
    # -r orders the events by time (the live file: as the CPUs' buffers were read)
    assert sorted(map(_keyed_tunnel, again)) == sorted(map(_keyed_tunnel, t.events))
    rows = subprocess.run([PYTHON, SKBTRACER, "-r", t.json_path, "--width", "1000"],
                          capture_output=True, text=True, timeout=120)
    assert rows.returncode == 0, rows.stderr
    assert any(line.endswith(suffix) for line in rows.stdout.splitlines()), rows.stdout[-3000:]


MERGE_ONLY_ON_HOST = ("host only: merging two nodes' files involves no probes, and a tracer start "
                      "costs a compile in the guest")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """flannel's UDP scenario under one tracer per node (-N the node and its pods, --node), each
    writing JSON lines: (shape's namespaces, (node1's file, node2's), the tracer runs, the
    scenario's outcome and source port)."""
    if BACKEND == "kprobe":
        pytest.skip(MERGE_ONLY_ON_HOST)
    where = tmp_path_factory.mktemp("nodes")
    files = (where / "node1.jsonl", where / "node2.jsonl")
    with FlannelCluster() as shape:
        def node_args(node, roles, path):
            return (["-H", shape.pods["pod-b"].ip4, "--node", node, "--json=%s" % path]
                    + [arg for role in roles for arg in ("-N", shape.ns[role])])

        with TracerRun(node_args("node1", ("node1", "pod-a"), files[0])) as one, \
                TracerRun(node_args("node2", ("node2", "pod-b"), files[1])) as two:
            outcome, _caps = shape.run(shape.scenario("udp"))
        yield dict(shape.ns), files, (one, two), outcome


def test_r_of_two_node_tracers_tells_one_path_through_the_tunnel(two_nodes):
    ns, files, runs, outcome = two_nodes
    assert outcome.mismatches() == [], "the shape itself: %s" % outcome.mismatches()
    for run in runs:
        assert run.returncode == 0, run.stderr
    result = subprocess.run([PYTHON, SKBTRACER, "-r", *map(str, files), "--story-per-packet", "--width", "1000"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    sport, _errors = outcome.result
    lines = [line for line in result.stderr.splitlines() if ":%d->" % sport in line]
    assert len(lines) == 1, result.stderr
    # pod-a's datagram: into flannel.1 and out of node1's eth0, then node2's eth0, flannel.1, pod-b
    assert re.search(r"node1:%s/eth0 > .*> flannel\.1 > eth0 => node2:%s/eth0 > flannel\.1 > .*%s/eth0 "
                     % (ns["pod-a"], ns["node2"], ns["pod-b"]), lines[0]), lines[0]
