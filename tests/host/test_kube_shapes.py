"""Ground truth of the kube-proxy node shapes (testbed/kubeproxy.py, testbed/clusterip.py) from the
kernel's own tools, no tracer: which rule decided (iptables counters, nft trace with handles,
ipvsadm), what conntrack recorded.  Runs on the host and in the guests; IPVS only where the kernel
has ip_vs (the guests).

    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/host/test_kube_shapes.py
"""

import dataclasses
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from testbed import groundtruth  # noqa: E402
from testbed.clusterip import BACKEND, BACKEND_PORT, NODE_ADDR, VIP, LocalDnat, open_connections  # noqa: E402
from testbed.kubeproxy import (  # noqa: E402
    FLOWS,
    LB_IP,
    PAIR_IP,
    SERVER,
    SERVER2,
    KubeProxyNode,
    ipvs_missing,
)
from testbed.kuberules import ClusterConfig, iptables_ruleset, nft_ruleset, rule_count, synthetic_services  # noqa: E402
from testbed.topology import IP, cleanup_stale  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

FIREWALLED = ClusterConfig(node_firewall=True)
POD_OF = {SERVER.ip: "server", SERVER2.ip: "server2"}


@pytest.fixture(scope="module", autouse=True)
def no_leftovers():
    cleanup_stale()
    yield


# ---------------------------------------------------------------- iptables mode (nft and legacy)


@pytest.fixture(scope="module", params=["nft", "legacy"])
def ipt_node(request, no_leftovers):
    with KubeProxyNode(mode="iptables", iptables=request.param, promisc=True, config=FIREWALLED) as node:
        yield node


def _send(node, name, sport):
    before = node.iptables()
    outcome = node.send(FLOWS[name], sport=sport)
    after = node.iptables()
    return outcome, after.hits(before), after.policy_hits(before), after


def test_iptables_ruleset_as_kube_proxy_writes_it(ipt_node):
    state = ipt_node.iptables()
    svc = ipt_node.service("ubuntu-server:dns")
    jump = state.rule(table="nat", chain="KUBE-SERVICES", comment="default/ubuntu-server:dns cluster IP")
    assert jump.target == svc.svc_chain and "-d 10.96.0.10/32 -p udp" in jump.spec
    pair = ipt_node.service("dns-pair:dns")
    first = state.rule(table="nat", chain=pair.svc_chain, comment=f"default/dns-pair:dns -> {SERVER}")
    assert "--mode random --probability 0.50000000000" in first.spec
    assert state.rule(table="nat", chain=pair.sep_chain(SERVER2), contains="DNAT").comment == "default/dns-pair:dns"
    assert state.chains[("filter", "INPUT")].policy == "DROP"
    assert state.rule(table="nat", chain="KUBE-MARK-MASQ").target == "MARK"
    assert state.find(table="nat", chain="KUBE-POSTROUTING", contains="MASQUERADE --random-fully")


def test_iptables_scenario1_dnat_rule_and_invalid_drop(ipt_node):
    """Seed scenario 1 under kube-proxy's rules: the KUBE-SEP DNAT rule counts the datagram; with
    promisc on, the routed copy has no conntrack entry in FORWARD and KUBE-FORWARD's INVALID rule
    drops it, so only the bridged copy (TTL 64) arrives."""
    svc = ipt_node.service("ubuntu-server:dns")
    outcome, hits, _, _ = _send(ipt_node, "service", 41001)
    assert outcome.received == {"server": 1, "server2": 0}
    assert [r.ttl for r in ipt_node.received_now("server")] == [64]
    dnat = ipt_node.iptables().rule(table="nat", chain=svc.sep_chain(SERVER), contains="DNAT")
    assert hits[("nat", svc.sep_chain(SERVER), dnat.number)] == 1
    invalid = ipt_node.iptables().rule(table="filter", chain="KUBE-FORWARD", contains="INVALID")
    assert hits[("filter", "KUBE-FORWARD", invalid.number)] == 1


def test_iptables_scenario1_duplicate_without_invalid_rule(ipt_node):
    ipt_node.config = dataclasses.replace(FIREWALLED, drop_invalid=False)
    ipt_node.apply()
    try:
        outcome, _, _, _ = _send(ipt_node, "service", 41002)
        assert outcome.received == {"server": 2, "server2": 0}
        assert sorted(r.ttl for r in ipt_node.received_now("server")) == [63, 64]
    finally:
        ipt_node.config = FIREWALLED
        ipt_node.apply()


def test_iptables_two_endpoints_statistic_rule(ipt_node):
    """Each datagram to dns-pair is DNATed by exactly one KUBE-SEP rule, the one of the endpoint
    that received it; over enough tries both endpoints are chosen."""
    ipt_node.cluster.set_promisc(False)
    pair = ipt_node.service("dns-pair:dns")
    chosen = set()
    try:
        for sport in range(41100, 41140):
            outcome, hits, _, state = _send(ipt_node, "pair", sport)
            pod = [p for p, n in outcome.received.items() if n][0]
            assert sum(outcome.received.values()) == 1
            ep = SERVER if pod == "server" else SERVER2
            dnat = state.rule(table="nat", chain=pair.sep_chain(ep), contains="DNAT")
            assert hits[("nat", pair.sep_chain(ep), dnat.number)] == 1
            chosen.add(pod)
            if len(chosen) == 2:
                break
    finally:
        ipt_node.cluster.set_promisc(True)
    assert chosen == {"server", "server2"}


@pytest.mark.parametrize("flow, chain, comment", [
    ("no-endpoints", "KUBE-SERVICES", "default/no-endpoints:http has no endpoints"),
    ("lb-firewalled", "KUBE-PROXY-FIREWALL", None),
])
def test_iptables_dropped_flows_name_their_rule(ipt_node, flow, chain, comment):
    outcome, hits, _, state = _send(ipt_node, flow, 41200 + len(flow))
    assert sum(outcome.received.values()) == 0
    assert outcome.connect == ("refused" if FLOWS[flow].expect == "rejected" else "timeout")
    if comment is None:
        comment = f"default/lb-firewalled:http traffic not accepted by {ipt_node.service('lb-firewalled:http').fw_chain}"
    rule = state.rule(table="filter", chain=chain, comment=comment)
    assert rule.target in ("REJECT", "DROP") and hits[("filter", chain, rule.number)] >= 1


def test_iptables_policy_drop(ipt_node):
    outcome, hits, policies, _ = _send(ipt_node, "node-policy", 41300)
    assert sum(outcome.received.values()) == 0
    assert policies.get(("filter", "INPUT")) == 1


# ---------------------------------------------------------------- nftables mode


@pytest.fixture(scope="module")
def nft_node(no_leftovers):
    with KubeProxyNode(mode="nft", promisc=True, config=FIREWALLED) as node:
        yield node


def _traced(node, name, sport):
    with node.nft_trace(f"ip saddr {IP['client']}") as trace:
        outcome = node.send(FLOWS[name], sport=sport)
    return outcome, [line for line in trace.lines() if line.table != groundtruth.TRACE_TABLE]


def test_nft_ruleset_readable_with_python_nftables(nft_node):
    ruleset = nft_node.nft_ruleset()
    svc = nft_node.service("ubuntu-server:dns")
    chains = {o["chain"]["name"] for o in ruleset if "chain" in o and o["chain"]["table"] == "kube-proxy"}
    assert {svc.nft_service_chain, svc.nft_endpoint_chain(SERVER), "services", "reject-chain"} <= chains
    service_ips = next(o["map"] for o in ruleset if "map" in o and o["map"]["name"] == "service-ips")
    assert service_ips["comment"] == "ClusterIP, ExternalIP and LoadBalancer IP traffic"
    assert all("handle" in r for r in groundtruth.nft_rules(ruleset, "kube-proxy"))


def test_nft_scenario1_endpoint_rule_and_duplicate(nft_node):
    """kube-proxy's nft mode has no INVALID rule: scenario 1 gives the seed's duplicate; the trace
    names the endpoint chain's dnat rule by the handle python3-nftables reads back."""
    svc = nft_node.service("ubuntu-server:dns")
    outcome, lines = _traced(nft_node, "service", 42001)
    assert outcome.received == {"server": 2, "server2": 0}
    dnat = [l for l in lines if l.chain == svc.nft_endpoint_chain(SERVER) and l.kind == "rule" and "dnat" in l.text]
    assert len(dnat) == 1 and dnat[0].verdict == "accept"
    rules = groundtruth.nft_rules(nft_node.nft_ruleset(), "kube-proxy")
    by_handle = {r["handle"]: r for r in rules}
    assert by_handle[dnat[0].handle]["chain"] == svc.nft_endpoint_chain(SERVER)
    vmap = [l for l in lines if l.chain == "services" and l.kind == "rule"][0]
    assert vmap.verdict == f"goto {svc.nft_service_chain}"


def test_nft_two_endpoints_numgen(nft_node):
    nft_node.cluster.set_promisc(False)
    pair = nft_node.service("dns-pair:dns")
    chosen = set()
    try:
        for sport in range(42100, 42140):
            outcome, lines = _traced(nft_node, "pair", sport)
            pod = [p for p, n in outcome.received.items() if n][0]
            ep = SERVER if pod == "server" else SERVER2
            numgen = [l for l in lines if l.chain == pair.nft_service_chain and "numgen" in l.text]
            assert [l.verdict for l in numgen] == [f"goto {pair.nft_endpoint_chain(ep)}"]
            chosen.add(pod)
            if len(chosen) == 2:
                break
    finally:
        nft_node.cluster.set_promisc(True)
    assert chosen == {"server", "server2"}


@pytest.mark.parametrize("flow, chain, verdict, comment", [
    ("no-endpoints", "reject-chain", "drop", None),  # reject: the trace says drop, the client gets refused
    ("lb-firewalled", "firewall-UF6UPVLT-default/lb-firewalled/tcp/http", "drop", None),
    ("unallocated", "cluster-ips-check", "drop", "Drop traffic to unallocated ClusterIPs"),
    ("node-policy", "input", "drop", None),
])
def test_nft_dropped_flows_name_their_rule(nft_node, flow, chain, verdict, comment):
    outcome, lines = _traced(nft_node, flow, 42200 + len(flow))
    assert sum(outcome.received.values()) == 0
    last = [l for l in lines if l.kind in ("rule", "policy")][-1]
    assert (last.chain, last.verdict) == (chain, verdict)
    if flow == "node-policy":
        assert last.kind == "policy" and last.table == "node-firewall"
    if comment:
        assert f'comment "{comment}"' in last.text
    if flow == "no-endpoints":
        assert outcome.connect == "refused"


# ---------------------------------------------------------------- IPVS mode (guests)


@pytest.fixture(scope="module", params=[True, False], ids=["vs-conntrack", "conntrack-less"])
def ipvs_node(request, no_leftovers):
    if why := ipvs_missing():
        pytest.skip(why)
    with KubeProxyNode(mode="ipvs", promisc=False, vs_conntrack=request.param) as node:
        yield node


def test_ipvs_rr_two_real_servers(ipvs_node):
    vs = f"UDP {PAIR_IP}:53"
    before = ipvs_node.ipvs()[vs]
    got = [ipvs_node.send(FLOWS["pair"], sport=sport).received for sport in (43001, 43002)]
    after = ipvs_node.ipvs()[vs]
    assert after.scheduler == "rr" and set(after.reals) == {str(SERVER), str(SERVER2)}
    assert sorted(tuple(sorted(g.items())) for g in got) == [
        (("server", 0), ("server2", 1)), (("server", 1), ("server2", 0))]
    assert {k: after.reals[k]["conns"] - before.reals[k]["conns"] for k in after.reals} == {str(SERVER): 1, str(SERVER2): 1}
    conns = [c for c in ipvs_node.ipvs_connections() if c.virtual == f"{PAIR_IP}:53"]
    assert {c.source for c in conns} >= {f"{IP['client']}:43001", f"{IP['client']}:43002"}


def test_ipvs_conntrack_or_untracked(ipvs_node):
    """net.ipv4.vs.conntrack=1 (kube-proxy): the IPVS connection also has a conntrack entry with
    the DNAT reply tuple; =0: IPVS keeps its own table and conntrack has no entry for it."""
    ipvs_node.send(FLOWS["service"], sport=43010)
    entries = ipvs_node.conntrack("-p", "udp", "--orig-port-src", "43010")
    if ipvs_node.vs_conntrack:
        assert [e.reply["src"] for e in entries] == [SERVER.ip]
    else:
        assert entries == []


def test_ipvs_filter_rejects_other_ports(ipvs_node):
    before = ipvs_node.iptables()
    outcome = ipvs_node.send(FLOWS["ipvs-filter"], sport=43020)
    state = ipvs_node.iptables()
    rule = state.rule(table="filter", chain="KUBE-IPVS-FILTER", contains="REJECT")
    assert outcome.connect == "refused" and state.hits(before)[("filter", "KUBE-IPVS-FILTER", rule.number)] == 1


# ---------------------------------------------------------------- 10,000 rules


@pytest.mark.skipif(bool(os.environ.get("TESTBED_GUEST")),
                    reason="10,000 rules: loaded on the host only (10-26 s a load under TCG)")
@pytest.mark.parametrize("how", ["iptables-nft", "iptables-legacy", "nft"])
def test_ten_thousand_rules_load(no_leftovers, how):
    """kube-proxy at scale (large cluster mode): the ruleset loads in one restore; seconds printed."""
    mode = "nft" if how == "nft" else "iptables"
    services = synthetic_services(10_000, mode=mode)
    flavour = how.split("-")[1] if "-" in how else "nft"
    with KubeProxyNode(mode=mode, iptables=flavour, services=services) as node:
        text = (nft_ruleset if mode == "nft" else iptables_ruleset)(services)
        if mode == "nft":
            loaded = len(groundtruth.nft_rules(node.nft_ruleset(), "kube-proxy"))
        else:
            loaded = len(node.iptables().rules)
        print(f"\n{how}: {rule_count(text)} rules loaded in {node.load_seconds:.2f} s on {os.uname().release}")
        assert loaded >= rule_count(text) >= 10_000


# ---------------------------------------------------------------- issue 28: services by ClusterIP


@pytest.fixture(scope="module", params=["nft", "legacy"])
def dnat(request, no_leftovers):
    with LocalDnat(iptables=request.param) as d:
        yield d


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_local_output_dnat(dnat, proto):
    """pwru's CI case: a hostNetwork process's connection to 10.10.20.99 is DNATed in nat OUTPUT
    (rule counted once, for the first packet) and both directions flow."""
    sport = 45001 if proto == "tcp" else 45002
    before = dnat.rule(proto).packets
    replies = getattr(dnat, proto)(sport)
    assert len(replies) == 2
    assert dnat.rule(proto).packets - before == 1
    entry = dnat.entry(proto, sport)
    assert (entry.orig["src"], entry.orig["dst"]) == (NODE_ADDR, VIP)
    assert (entry.reply["src"], entry.reply["sport"]) == (BACKEND, str(BACKEND_PORT))


@pytest.fixture(scope="module")
def echo_node(no_leftovers):
    with KubeProxyNode(mode="iptables", echo=True) as node:
        yield node


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_service_connections_and_a_second_service(echo_node, proto):
    """Several connections to dns-pair (two endpoints) all answered, each with its endpoint in
    conntrack; ubuntu-server2 (the same server2:9000 endpoint) is told apart by its original tuple."""
    first = 46001 if proto == "udp" else 46101
    conns = open_connections(echo_node, PAIR_IP, 53, proto, count=4, first_sport=first, endpoints=2)
    other = open_connections(echo_node, IP["service2"], 53, proto, count=2, first_sport=first + 50)
    assert all(c.replies == c.sent for c in conns + other)
    assert {c.endpoint for c in conns} == {str(SERVER), str(SERVER2)}
    assert {c.endpoint for c in other} == {str(SERVER2)}
    sports = {c.sport for c in conns}
    seen = {r.sport for pod in ("server", "server2") for r in echo_node.received_now(pod, proto)}
    assert sports <= seen


# ---------------------------------------------------------------- a rule changed while tracing


def test_iptables_rule_inserted_above_then_deleted(ipt_node):
    """After a rule is inserted above it, the DNAT rule of scenario 1 is number 3 in its chain and
    counts there; after the delete, number 2 again."""
    svc = ipt_node.service("ubuntu-server:dns")
    chain = svc.sep_chain(SERVER)
    ipt_node.insert_noop_rule(chain)
    try:
        _, hits, _, state = _send(ipt_node, "service", 41400)
        dnat = state.rule(table="nat", chain=chain, contains="DNAT")
        assert dnat.number == 3 and hits[("nat", chain, 3)] == 1
        assert state.rule(table="nat", chain=chain, comment="inserted while tracing").number == 1
    finally:
        ipt_node.delete_noop_rule(chain)
    _, hits, _, state = _send(ipt_node, "service", 41401)
    assert state.rule(table="nat", chain=chain, contains="DNAT").number == 2 and hits[("nat", chain, 2)] == 1


def test_nft_rule_inserted_above_keeps_handles(nft_node):
    svc = nft_node.service("ubuntu-server:dns")
    chain = svc.nft_endpoint_chain(SERVER)
    _, lines = _traced(nft_node, "service", 42300)
    handle = [l.handle for l in lines if l.chain == chain and "dnat" in l.text][0]
    key = nft_node.insert_noop_rule(chain)
    try:
        rules = [r for r in groundtruth.nft_rules(nft_node.nft_ruleset(), "kube-proxy") if r["chain"] == chain]
        assert rules[0]["handle"] == int(key) and rules[0]["comment"] == "inserted while tracing"
        _, lines = _traced(nft_node, "service", 42301)  # the trace shows only rules that matched
        assert [l.handle for l in lines if l.chain == chain and "dnat" in l.text] == [handle]
    finally:
        nft_node.delete_noop_rule(chain, key)
    rules = groundtruth.nft_rules(nft_node.nft_ruleset(), "kube-proxy")
    assert int(key) not in {r["handle"] for r in rules if r["chain"] == chain}
