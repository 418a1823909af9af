"""Overlays (issue 24): a pod-to-pod packet traced with `-H <pod-b IP>` only, no --keep, is seen on
both nodes, inside the tunnel too: the underlay eth0 rows show the inner flow (PKT_INFO, JSON's
addresses and ports) and the outer header as JSON's "tunnel" object and TRACE_INFO's suffix
(`vxlan vni 1 192.168.0.1->192.168.0.2`); judged against tcpdump's captures on the underlay,
parsed by dpkt (testbed/packets.py), and read back by -r.

- flannel (testbed/overlay.py): VXLAN 1, dstport 8472, UDP and ping. Host and guests.
- Calico IPIP (testbed/calico.py): tunl0, UDP and ping. Where the ipip module is (the guests).

One tracer per shape."""

import json
import subprocess
import time

import pytest

from testbed.calico import CalicoCluster, tunnel_unavailable
from testbed.overlay import UNDERLAY, FlannelCluster
from testbed.tracer import PYTHON, SKBTRACER, TracerRun

SCENARIOS = ("udp", "ping")
UNDERLAY_LINKS = (("node1", "eth0"), ("node2", "eth0"))
PROTO = {"udp": 17, "ping": 1}


def _trace(shape, tmp_path_factory, name):
    """Run the scenarios under `-H <pod-b IP>`; (tracer run, its JSON events, its text, what was
    sent: name -> (scenario, outcome, underlay packets, time window), namespace names, JSON path)."""
    json_path = str(tmp_path_factory.mktemp(name) / "tunnel.jsonl")
    with shape:
        pod_b = shape.pods["pod-b"].ip4
        sent = {}
        with TracerRun(["--json=" + json_path, "--width", "1000", "-H", pod_b]) as run:
            for scenario in SCENARIOS:
                sc = shape.scenario(scenario)
                start = time.time_ns()
                outcome, caps = shape.run(sc, watch=UNDERLAY_LINKS)
                packets = {link: [p for p in caps[link].packets if p.tunnel] for link in UNDERLAY_LINKS}
                sent[scenario] = (sc, outcome, packets, (start, time.time_ns()))
        ns = dict(shape.ns)
    with open(json_path) as f:
        events = [o for o in map(json.loads, f) if o.get("type") == "event"]
    return run, events, sent, ns, pod_b, json_path


@pytest.fixture(scope="module")
def flannel(tmp_path_factory):
    return _trace(FlannelCluster(), tmp_path_factory, "flannel")


@pytest.fixture(scope="module")
def ipip(tmp_path_factory):
    reason = tunnel_unavailable("ipip")
    if reason:
        pytest.skip(reason)
    return _trace(CalicoCluster("ipip"), tmp_path_factory, "ipip")


def _wire(packet):
    """What a captured tunnel packet says: (tunnel kind, vni, outer src, outer dst, outer sport,
    outer dport, inner src, inner dst, inner protocol)."""
    o, i = packet.outer, packet.inner
    return (packet.tunnel.kind, packet.tunnel.vni, o.src, o.dst, o.sport, o.dport, i.src, i.dst, i.proto)


def _row(o):
    t = o["tunnel"]
    return (t["type"], t["vni"], t["saddr"], t["daddr"], t["sport"], t["dport"], o["saddr"], o["daddr"],
            o["l4proto"])


def _check_scenario(traced, scenario, kind):
    run, events, sent, ns, pod_b, _path = traced
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    sc, outcome, packets, (start, end) = sent[scenario]
    assert outcome.mismatches() == [], "the shape itself: %s" % outcome.mismatches()
    window = [o for o in events if start <= o["time_ns"] <= end]
    for node, link in UNDERLAY_LINKS:
        wire = {_wire(p) for p in packets[(node, link)]}
        assert wire and {w[0] for w in wire} == {kind}, wire
        assert {w[2:4] for w in wire} >= {(UNDERLAY["node1"], UNDERLAY["node2"])}, wire
        rows = [o for o in window if o["netns_name"] == ns[node] and o["ifname"] == link and o.get("tunnel")]
        # every encapsulated packet on the underlay has rows; each row is one of them
        assert {_row(o) for o in rows} == wire, (node, {_row(o) for o in rows}, wire)
        assert all(pod_b in (o["saddr"], o["daddr"]) and o["l4proto"] == PROTO[scenario] for o in rows)
    # the story on both nodes: the pods' ends and the tunnel devices, inner rows without "tunnel"
    seen = {(o["netns_name"], o["ifname"]) for o in window}
    dev = "flannel.1" if kind == "vxlan" else "tunl0"
    for role, ifname in (("pod-a", "eth0"), ("node1", dev), ("node2", dev), ("pod-b", "eth0")):
        assert (ns[role], ifname) in seen, (role, ifname, sorted(seen))
    assert not any(o.get("tunnel") for o in window if o["ifname"] == dev)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_vxlan_rows_on_both_nodes_show_the_inner_flow_and_the_tunnel(flannel, scenario):
    _check_scenario(flannel, scenario, "vxlan")
    events = flannel[1]
    tunneled = [o for o in events if o.get("tunnel")]
    assert {o["tunnel"]["vni"] for o in tunneled} == {1}
    assert {o["tunnel"]["dport"] for o in tunneled if o["tunnel"]["saddr"] == UNDERLAY["node1"]} == {8472}


def test_vxlan_text_rows_end_in_the_tunnel_and_r_reads_it_back(flannel):
    run, events, _sent, _ns, _pod_b, json_path = flannel
    suffix = " vxlan vni 1 %s->%s" % (UNDERLAY["node1"], UNDERLAY["node2"])
    replay = subprocess.run([PYTHON, SKBTRACER, "-r", json_path, "--json"], capture_output=True,
                            text=True, timeout=120)
    assert replay.returncode == 0, replay.stderr
    again = [o for o in map(json.loads, replay.stdout.splitlines()) if o.get("type") == "event"]
    assert [o.get("tunnel") for o in again] == [o.get("tunnel") for o in events]
    rows = subprocess.run([PYTHON, SKBTRACER, "-r", json_path, "--width", "1000"],
                          capture_output=True, text=True, timeout=120)
    assert rows.returncode == 0, rows.stderr
    assert any(line.endswith(suffix) for line in rows.stdout.splitlines()), rows.stdout[-3000:]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ipip_rows_on_both_nodes_show_the_inner_flow_and_the_tunnel(ipip, scenario):
    _check_scenario(ipip, scenario, "ipip")
