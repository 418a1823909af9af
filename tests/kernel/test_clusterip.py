"""Trace a Service by its ClusterIP (issue 28): -H and -P match a packet by its connection's
original tuple too, both directions, without --keep; --header-only restores header-only matching.

Runs on: host (tracepoints) and guest-6.1 (kprobes): three tracer starts launched together
(tracing_together: their compiles overlap) over one round of traffic on one kube-proxy node
(testbed/kubeproxy.py KubeProxyNode, iptables mode, echo servers) that also holds pwru's local
OUTPUT DNAT (testbed/clusterip.py LocalDnat, on the same cluster):

  local    -H 10.10.20.99 --ct               node1's own TCP and UDP connections to 10.10.20.99,
                                             DNATed in nat OUTPUT before any tracepoint sees them
  service  -H 10.96.0.30 -P 53 --names       dns-pair (two endpoints): several UDP and TCP
                                             connections from the client pod; ubuntu-server2
                                             (10.96.0.20:53, whose endpoint server2:9000 dns-pair
                                             shares) is the second Service, not to be seen; the
                                             Service's name from kube-proxy's rule comments
  strict   -H 10.96.0.30 --header-only       the same traffic, headers only

Each run writes --json=FILE; the assertions pick rows by our source ports.
"""

import json
import re
import time

import pytest
from conftest import BACKEND, GUEST

from testbed.clusterip import BACKEND as DNAT_BACKEND
from testbed.clusterip import BACKEND_PORT, NODE_ADDR, VIP, LocalDnat, open_connections
from testbed.kubeproxy import PAIR_IP, SERVER, SERVER2, KubeProxyNode
from testbed.topology import IP, cleanup_stale
from testbed.tracer import TracerRun, tracing_together

LOCAL_TCP, LOCAL_UDP = 45061, 45062
PAIR_UDP, PAIR_TCP, OTHER_UDP = 46061, 46081, 46091
SERVICE2 = IP["service2"]


@pytest.fixture(scope="module")
def traced(tmp_path_factory, settle):
    where = tmp_path_factory.mktemp("clusterip")
    paths = {name: str(where / (name + ".jsonl")) for name in ("local", "service", "strict")}
    cleanup_stale()
    with KubeProxyNode(mode="iptables", echo=True) as node, \
            LocalDnat(cluster=node.cluster, iptables=node.cluster.iptables) as dnat:
        runs = {"local": TracerRun(["-H", VIP, "--ct", "--json=" + paths["local"],
                                    "--width", "1000", "-v"]),
                "service": TracerRun(["-H", PAIR_IP, "-P", "53", "--json=" + paths["service"],
                                      "--width", "1000", "-v", "--names"]),
                "strict": TracerRun(["-H", PAIR_IP, "--header-only", "--json=" + paths["strict"],
                                     "--width", "1000"])}
        with tracing_together(runs.values()):
            local = {"tcp": dnat.tcp(LOCAL_TCP), "udp": dnat.udp(LOCAL_UDP)}
            conns = (open_connections(node, PAIR_IP, 53, "udp", count=4, first_sport=PAIR_UDP,
                                      endpoints=2)
                     + open_connections(node, PAIR_IP, 53, "tcp", count=2, first_sport=PAIR_TCP))
            other = open_connections(node, SERVICE2, 53, "udp", count=2, first_sport=OTHER_UDP)
            entries = {proto: dnat.entry(proto, sport)
                       for proto, sport in (("tcp", LOCAL_TCP), ("udp", LOCAL_UDP))}
            time.sleep(settle)
    events, services = {}, {}
    for name, path in paths.items():
        with open(path) as f:
            objects = [json.loads(line) for line in f]
        events[name] = [o for o in objects if o.get("type") == "event"]
        services[name] = [o for o in objects if o.get("type") == "service"]
    yield runs, events, local, entries, conns, other, services


def of_port(events, sport):
    """Our connection's events: its client port on either end."""
    return [o for o in events if sport in (o.get("sport"), o.get("dport"))]


def _tuple(o, reverse=False):
    ends = ((o["saddr"], o["sport"]), (o["daddr"], o["dport"]))
    return (o["proto"],) + (ends[::-1] if reverse else ends)


def matched_by(o, mine, vip, port=None):
    """How a row of one connection matched -H vip: 'headers', 'conn' (its entry's original
    tuple), or 'learned' (no entry: crossing into a pod's namespace scrubbed it; its headers
    equal a translated tuple of a row whose entry matched)."""
    if vip in (o["saddr"], o["daddr"]) and port in (None, o["sport"], o["dport"]):
        return "headers"
    if o.get("ct"):
        return "conn" if o["ct"]["orig"]["dst"] == vip else None
    translated = {_tuple(m) for m in mine if m.get("ct") and m["ct"]["orig"]["dst"] == vip}
    return "learned" if _tuple(o) in translated or _tuple(o, True) in translated else None


def test_runs_ok_and_ground_truth(traced):
    runs, _events, local, entries, conns, other, _services = traced
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.stderr)
        assert "Traceback" not in run.stderr, run.stderr
        assert re.search(r"^skbtracer: \d+ rows printed, 0 events lost$", run.stderr, re.M), \
            (name, run.stderr)
    for name in ("local", "service"):     # -v: the nf_conn layout is known on these kernels
        assert "skbtracer: note: -H/-P/--proto: the packet's headers, else its connection's " \
            "original tuple" in runs[name].stderr, runs[name].stderr
    assert local["tcp"] == [b"line0", b"line1"] and len(local["udp"]) == 2
    for entry in entries.values():
        assert (entry.orig["src"], entry.orig["dst"]) == (NODE_ADDR, VIP)
        assert (entry.reply["src"], entry.reply["sport"]) == (DNAT_BACKEND, str(BACKEND_PORT))
    assert all(c.replies == c.sent for c in conns + other)
    assert {c.endpoint for c in conns} == {str(SERVER), str(SERVER2)}
    assert {c.endpoint for c in other} == {str(SERVER2)}


@pytest.mark.parametrize("proto, sport", [("tcp", LOCAL_TCP), ("udp", LOCAL_UDP)])
def test_local_output_dnat_requests_and_replies_are_rows(traced, proto, sport):
    """No tracepoint sees node1's packets before nat OUTPUT rewrote them: every request row has
    the backend's address in its header, and is a row only by its connection; so are the
    replies before the un-NAT (the backend's source address)."""
    _runs, events, *_ = traced
    mine = of_port(events["local"], sport)
    requests = [o for o in mine if o["sport"] == sport]
    replies = [o for o in mine if o["dport"] == sport]
    assert requests and replies, mine
    assert any(o["daddr"] == DNAT_BACKEND and o["dport"] == BACKEND_PORT for o in requests)
    assert any(o["saddr"] == DNAT_BACKEND for o in replies), replies
    for o in requests + replies:
        assert matched_by(o, mine, VIP) in ("headers", "conn", "learned"), o
    # the connection is one: one entry, its reply rows in the reply direction
    assert len({o["ct"]["id"] for o in mine if o.get("ct")}) == 1
    assert {o["ct"]["state"] for o in replies if o.get("ct")} == {"ESTABLISHED_REPLY"}


def test_local_story_shows_one_connection_to_the_service(traced):
    runs, *_ = traced
    err = runs["local"].stderr
    for port in (80, 53):
        assert re.search(r"^SERVICE: [TU] %s:%d -> %s:%d \(1 connection\)$"
                         % (re.escape(VIP), port, re.escape(DNAT_BACKEND), BACKEND_PORT),
                         err, re.M), err


def test_every_connection_of_the_service_both_directions(traced):
    _runs, events, _local, _entries, conns, _other, _services = traced
    for c in conns:
        endpoint_ip = c.endpoint.split(":")[0]
        mine = of_port(events["service"], c.sport)
        requests = [o for o in mine if o["sport"] == c.sport]
        replies = [o for o in mine if o["dport"] == c.sport]
        # before DNAT (headers) and after it (the connection)
        assert any(o["daddr"] == PAIR_IP for o in requests), (c, mine)
        assert any(o["daddr"] == endpoint_ip and o["dport"] == 9000 for o in requests), (c, mine)
        assert any(o["saddr"] == PAIR_IP for o in replies), (c, mine)
        if BACKEND == "kprobe":       # the tracepoints see no forwarded reply before POSTROUTING
            assert any(o["saddr"] == endpoint_ip for o in replies), (c, mine)
        how = [matched_by(o, mine, PAIR_IP, 53) for o in mine]
        assert None not in how, mine
        assert all(o["ct"]["orig"]["dport"] == 53 for o, h in zip(mine, how) if h == "conn")
        # in the endpoint's pod: no entry, the translated tuple
        assert "learned" in how, (c, mine)


def test_nothing_of_the_second_service(traced):
    """ubuntu-server2's connections go to the same endpoint (server2:9000) and port 53: their
    rows after DNAT look like dns-pair's, but their original tuple is not; none is a row."""
    _runs, events, _local, _entries, _conns, other, _services = traced
    assert other and all(c.replies for c in other)
    for c in other:
        assert of_port(events["service"], c.sport) == []
    assert not [o for o in events["service"] if SERVICE2 in (o["saddr"], o["daddr"])]


def test_service_story_groups_connections_under_the_named_service(traced):
    """--names: the name is kube-proxy's, from the KUBE-SERVICES rule's comment in node1 (where
    the DNAT was); the JSON story has the same line as a service object."""
    runs, _events, _local, _entries, conns, _other, services = traced
    err = runs["service"].stderr
    for letter, proto, name in (("U", "udp", "default/dns-pair:dns"),
                                ("T", "tcp", "default/dns-pair:dns-tcp")):
        counts = {}
        for c in conns:
            if c.proto == proto:
                counts[c.endpoint] = counts.get(c.endpoint, 0) + 1
        line = re.search(r"^SERVICE: %s %s %s:53 -> (.*)$"
                         % (re.escape(name), letter, re.escape(PAIR_IP)), err, re.M)
        assert line, err
        shown = dict((ep, int(n)) for ep, n in re.findall(r"(\S+) \((\d+) connections?\)",
                                                           line.group(1)))
        assert shown == counts, (line.group(0), counts)
        obj, = [o for o in services["service"] if o["proto"] == proto]
        assert (obj["name"], obj["address"], obj["port"], obj["family"]) == (name, PAIR_IP, 53, 4)
        assert {"%s:%d" % (e["address"], e["port"]): e["connections"]
                for e in obj["endpoints"]} == counts, obj
        assert obj["connections"] == sum(counts.values()) and obj["text"] == line.group(0)
    assert "SERVICE: U %s:53" % SERVICE2 not in err
    assert len(services["service"]) == 2, services["service"]
    # without --names: no name, and the JSON object says so
    assert all(o["name"] is None for o in services["local"]) and services["local"], services


def test_header_only_restores_header_matching(traced):
    """--header-only: rows only where the header has the ClusterIP; the same traffic's rows after
    DNAT (the service run's, the positive control) are not there."""
    _runs, events, _local, _entries, conns, _other, _services = traced
    strict, service = events["strict"], events["service"]
    assert strict, "no rows with the ClusterIP in the header"
    assert all(PAIR_IP in (o["saddr"], o["daddr"]) for o in strict)
    ports = {c.sport for c in conns}
    by_conn = [o for o in service if PAIR_IP not in (o["saddr"], o["daddr"])
               and ports & {o["sport"], o["dport"]}]
    assert by_conn, "the positive control: the service run has rows by the connection"
    assert not [o for o in strict if ports & {o["sport"], o["dport"]}
                and PAIR_IP not in (o["saddr"], o["daddr"])]


def test_seed_scenario_by_its_clusterip_tells_the_duplicate():
    """The seed's scenario 1 (promiscuous cbr0, the datagram through the service) traced by the
    ClusterIP alone, without --keep: the same DUPLICATE as `-H <client>`. The copies in the server
    pod have lost their conntrack entry (crossing the veth scrubs it) and carry the endpoint's
    address: they are rows because their headers equal the translated tuple learned on the node's
    side, where the entry matched."""
    from testbed.topology import SeedCluster
    cleanup_stale()
    with SeedCluster(promisc=True) as cluster:
        cluster.start_udp_receiver("server")
        flags = ["-H", cluster.ip["service"], "--proto", "udp", "--route", "--width", "1000"]
        with TracerRun(flags) as run:
            cluster.send_udp("client", cluster.ip["service"], cluster.SERVICE_PORT)
            received = cluster.received("server", settle=0.5)
    assert received == 2
    assert run.returncode == 0, run.stderr
    server = cluster.netns_name("server")
    dup = [line for line in run.stderr.splitlines() if line.startswith("DUPLICATE:")]
    assert len(dup) == 1 and "reached %s/eth0 2 times" % server in dup[0], run.stderr
    assert "SERVICE: U %s:%d -> %s:%d (1 connection)" % (
        cluster.ip["service"], cluster.SERVICE_PORT, cluster.ip["server"],
        cluster.SERVER_PORT) in run.stderr, run.stderr


@pytest.mark.skipif(bool(GUEST), reason="host only: Service names are read from the ruleset in user "
                    "space, and a tracer start costs a compile in the guest")
def test_nft_mode_service_names(tmp_path, settle):
    """kube-proxy's nftables mode: --names reads the Service's name from the service-ips map's
    verdict chain (nft -j list map), as the iptables mode's from the rule comments."""
    path = str(tmp_path / "nft.jsonl")
    cleanup_stale()
    with KubeProxyNode(mode="nft", echo=True) as node:
        with TracerRun(["-H", PAIR_IP, "-P", "53", "--names", "--json=" + path, "--width", "1000"]) as run:
            conns = open_connections(node, PAIR_IP, 53, "udp", count=2, first_sport=PAIR_UDP + 20,
                                     endpoints=2)
            time.sleep(settle)
    assert run.returncode == 0 and conns and all(c.replies for c in conns), run.stderr
    with open(path) as f:
        services = [o for o in map(json.loads, f) if o.get("type") == "service"]
    obj, = services
    assert (obj["name"], obj["address"], obj["port"], obj["proto"]) == \
        ("default/dns-pair:dns", PAIR_IP, 53, "udp"), obj
    assert obj["connections"] == len(conns), obj
    assert re.search(r"^SERVICE: default/dns-pair:dns U %s:53 -> " % re.escape(PAIR_IP), run.stderr,
                     re.M), run.stderr
