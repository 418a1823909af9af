"""Ground truth of the node shapes (testbed/overlay.py, calico.py, routing.py): each scenario does
what its description says the kernel does, judged by tcpdump, nstat counters and the kernel's
own tables (ip route get, neighbour states).  No tracer here: these are what the tracer's tests
will compare against.

Host: flannel, Calico VXLAN, the routing lab; Calico IPIP, Geneve, IP6IP6 and SIT skip with
"needs the <module> module (guest)" (the host kernel has no such modules).  Guests (5.10, 6.1,
6.12) run all of it, e.g. (testbed.guest is testbed.qemu once the ci branch is in):
    flock /work/guest.lock /usr/bin/python3 -m testbed.guest --flavour 6.1 -- \\
        /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/host/test_shapes.py
"""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root, wherever pytest is started

from testbed import cni  # noqa: E402
from testbed.calico import GENEVE_OPTION, TUNNELS, CalicoCluster, tunnel_unavailable  # noqa: E402
from testbed.overlay import UNDERLAY, UNDERLAY6, FlannelCluster  # noqa: E402
from testbed.routing import POLICY_TABLE, RoutingLab  # noqa: E402
from testbed.shape import cleanup_stale  # noqa: E402
from testbed.topology import netns_path  # noqa: E402

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(cni.available() is not None, reason=str(cni.available())),
]

OUR_PREFIX = f"skbt{os.getpid()}-"
PROTO = {("udp", 4): 17, ("tcp", 4): 6, ("icmp", 4): 1, ("udp", 6): 17, ("tcp", 6): 6, ("icmp", 6): 58}


def our_netns() -> list[str]:
    return [n for n in os.listdir("/run/netns") if n.startswith(OUR_PREFIX)] if os.path.isdir("/run/netns") else []


@pytest.fixture(scope="module", autouse=True)
def no_leftovers():
    cleanup_stale()
    yield
    assert our_netns() == []
    assert not [d for d in os.listdir(cni.DATA_ROOT) if d.startswith(OUR_PREFIX)] if os.path.isdir(cni.DATA_ROOT) else True


def assert_path(shape, sc, caps):
    """tcpdump saw the pod's packet on every interface of the scenario's path (inner header on the wire)."""
    family = 6 if ":" in sc.dst else 4
    src = {str(i.ip) for i in shape.pods[sc.src].ips}
    for hop in sc.path:
        seen = [p for p in caps[hop].packets if p.flow.src in src and p.flow.dst == sc.dst
                and p.flow.proto == PROTO[(sc.proto, family)]]
        assert seen, f"{sc.name}: nothing from {sc.src} to {sc.dst} on {hop[0]}/{hop[1]}"


def underlay_packets(shape, sc, caps):
    """The scenario's packets as node1's eth0 saw them (pod -> pod direction)."""
    return [p for p in caps[("node1", "eth0")].packets if p.inner and p.inner.dst == sc.dst]


# ---------------------------------------------------------------- flannel (host and guests)


@pytest.fixture(scope="module")
def flannel(no_leftovers):
    with FlannelCluster() as f:
        yield f


@pytest.mark.parametrize("name", ["udp", "tcp", "ping"])
def test_flannel_pod_to_pod(flannel, name):
    sc = flannel.scenario(name)
    before = flannel.link_stats("node1", "flannel.1"), flannel.link_stats("node2", "flannel.1")
    outcome, caps = flannel.run(sc, watch=sc.path)
    assert outcome.mismatches() == []
    after = flannel.link_stats("node1", "flannel.1"), flannel.link_stats("node2", "flannel.1")
    assert after[0]["tx_packets"] > before[0]["tx_packets"] and after[1]["rx_packets"] > before[1]["rx_packets"]
    assert_path(flannel, sc, caps)
    wire = underlay_packets(flannel, sc, caps)
    assert wire and all(p.tunnel.kind == "vxlan" and p.tunnel.vni == 1 and p.outer.dport == 8472 and
                        (p.outer.src, p.outer.dst) == (UNDERLAY["node1"], UNDERLAY["node2"]) for p in wire)
    # The tunnel devices carry the inner packet only; the pods never see the outer one.
    for hop in (("node1", "flannel.1"), ("node2", "flannel.1"), ("pod-b", "eth0")):
        assert all(p.tunnel is None for p in caps[hop].packets)


def test_flannel_over_mtu(flannel):
    sc = flannel.scenario("over-mtu")
    outcome, caps = flannel.run(sc, watch=sc.path + (("node1", "eth0"), ("node1", "flannel.1")))
    assert outcome.mismatches() == []
    assert flannel.run(sc)[0].mismatches() == []  # again: the learnt path MTU does not stop it leaving
    assert outcome.replies[0].outer.src == "10.244.1.1"  # cni0: the interface it came in on
    assert_path(flannel, sc, caps)
    assert not [p for p in caps[("node1", "flannel.1")].packets if p.outer.dst == sc.dst]
    assert not underlay_packets(flannel, sc, caps)  # the black hole: nothing crossed


def test_flannel_fdb_and_neighbours(flannel):
    fdb = flannel.exec("node1", ["bridge", "fdb", "show", "dev", "flannel.1"]).stdout
    assert f"dst {UNDERLAY['node2']}" in fdb and "permanent" in fdb
    assert flannel.neighbour("node1", "10.244.2.0") == "PERMANENT"
    details = flannel.exec("node1", ["ip", "-d", "link", "show", "flannel.1"]).stdout
    assert "vxlan id 1 " in details and "dstport 8472" in details and "nolearning" in details
    assert "promiscuity 0" in flannel.exec("node1", ["ip", "-d", "link", "show", "cni0"]).stdout
    assert "hairpin on" in flannel.exec("node1", ["bridge", "-d", "link", "show", "dev",
                                                  flannel.pods["pod-a"].host_ifname]).stdout


# ---------------------------------------------------------------- Calico (VXLAN on the host; all in guests)


@pytest.fixture(scope="module", params=list(TUNNELS))
def calico(request, no_leftovers):
    reason = tunnel_unavailable(request.param)
    if reason:
        pytest.skip(reason)
    with CalicoCluster(request.param) as c:
        yield c


def _expected_encapsulation(calico, p):
    underlay = UNDERLAY6 if calico.tunnel == "ip6ip6" else UNDERLAY
    assert (p.outer.src, p.outer.dst) == (underlay["node1"], underlay["node2"])
    assert p.tunnel.kind == calico.tunnel
    if calico.tunnel in ("vxlan", "geneve"):
        assert (p.tunnel.vni, p.outer.dport) == (calico.kind.vni, calico.kind.port)
    if calico.tunnel == "geneve":
        assert p.tunnel.options == [GENEVE_OPTION]
    if calico.tunnel == "ip6ip6":
        assert p.outer.ext_headers == [60]  # ip6tnl's tunnel encapsulation limit option


@pytest.mark.parametrize("name", ["udp", "tcp", "ping"])
def test_calico_pod_to_pod(calico, name):
    sc = calico.scenario(name if calico.kind.family == 4 else name + "6")
    outcome, caps = calico.run(sc, watch=sc.path)
    assert outcome.mismatches() == []
    assert_path(calico, sc, caps)
    wire = underlay_packets(calico, sc, caps)
    assert wire
    for p in wire:
        _expected_encapsulation(calico, p)


def test_calico_over_mtu(calico):
    sc = calico.scenario("over-mtu")
    outcome, caps = calico.run(sc, watch=sc.path + (("node1", "eth0"),))
    assert outcome.mismatches() == []
    assert not underlay_packets(calico, sc, caps)


def test_calico_routed_veth(calico):
    pod = calico.pods["pod-a"]
    routes = calico.exec("node1", ["ip", "-6" if calico.ipv6 else "-4", "route", "show", "dev", pod.host_ifname]).stdout
    assert f"{pod.ips[0].ip} " in routes and ("scope link" in routes or calico.ipv6)  # ip -6 shows no scope
    if not calico.ipv6:
        proxy_arp = calico.exec("node1", ["sysctl", "-n", f"net.ipv4.conf.{pod.host_ifname}.proxy_arp"]).stdout
        assert proxy_arp.strip() == "1"
        assert "default via 169.254.1.1 dev eth0" in calico.exec("pod-a", ["ip", "route"]).stdout
        assert calico.neighbour("pod-a", "169.254.1.1") in ("REACHABLE", "STALE", "DELAY")  # proxy ARP answered
    else:
        assert "default via fe80::ecee:eeff:feee:eeee dev eth0" in calico.exec("pod-a", ["ip", "-6", "route"]).stdout
    assert "bridge" not in calico.exec("node1", ["ip", "-d", "link"]).stdout  # no bridge anywhere


# ---------------------------------------------------------------- routing lab (host and guests)


@pytest.fixture(scope="module")
def lab(no_leftovers):
    with RoutingLab() as r:
        yield r


ROUTING = ["route-main", "route-policy", "blackhole", "prohibit", "unreachable", "no-route", "rp-filter",
           "port-unreachable", "frag-needed", "ttl-exceeded", "tcp-reset"]


@pytest.mark.parametrize("name", ROUTING)
def test_routing(lab, name):
    sc = lab.scenario(name)
    outcome, _ = lab.run(sc)
    assert outcome.mismatches() == []
    if "route" in sc.facts:
        src = sc.options.get("src_ip") or lab.pods[sc.src].ip4
        got = lab.route_get(sc.dst, src)
        assert {k: got.get(k) for k in sc.facts["route"]} == sc.facts["route"]
    if "table" in sc.facts:  # error routes: ip route get names the type, the table holds the route
        shown = lab.exec("router", ["ip", "route", "show", "table", sc.facts["table"], "type", sc.facts["route"]["type"]])
        assert sc.dst.rsplit(".", 1)[0] in shown.stdout
    if "rule" in sc.facts:
        assert sc.facts["rule"] in lab.exec("router", ["ip", "rule"]).stdout.replace(":\t", ": ")


@pytest.mark.parametrize("name", ["neigh-failed", "neigh-failed6"])
def test_neighbour_fails(lab, name):
    sc = lab.scenario(name)
    outcome, caps = lab.run(sc)
    assert outcome.mismatches() == []
    assert lab.neighbour("pod-a", sc.facts["neighbour"]) == "FAILED"
    cap = caps[("pod-a", "eth0")]
    if ":" in sc.dst:
        probes = [p for p in cap.packets if p.outer.icmp_type == 135]  # neighbour solicitations
        assert not [p for p in cap.packets if p.outer.icmp_type == 136 and p.outer.dst == lab.pods["pod-a"].ip6]
    else:
        probes = [a for a in cap.arp if a == ("request", lab.pods["pod-a"].ip4, sc.dst)]
        assert not [a for a in cap.arp if a[0] == "reply" and a[1] == sc.dst]
    assert len(probes) == sc.facts["probes"]
    assert not [p for p in cap.packets if p.outer.dst == sc.dst]  # the datagram never left


def _unresolved_discards() -> int:
    """unresolved_discards of the ARP table, summed over CPUs (all namespaces: only ever rises)."""
    with open("/proc/net/stat/arp_cache") as f:
        head, *cpus = f.read().split("\n")
    column = head.split().index("unresolved_discards")
    return sum(int(line.split()[column], 16) for line in cpus if line.strip())


def test_neighbour_queue_full(lab):
    sc = lab.scenario("neigh-queuefull")
    before = _unresolved_discards()
    outcome, _ = lab.run(sc)
    assert outcome.mismatches() == []
    assert _unresolved_discards() - before >= sc.facts["queuefull"]
    assert lab.neighbour("pod-a", sc.dst) == "FAILED"


def test_two_flows_on_one_cpu(lab):
    sc = lab.scenario("two-flows-one-cpu")
    outcome, caps = lab.run(sc, watch=(("pod-c", "eth0"),))
    assert outcome.mismatches() == []
    rx = lab.receivers[("pod-c", "udp", sc.port, 4)].snapshot()
    assert sorted({r.src for r in rx}) == sorted(sc.facts["routes"])
    for src, table in sc.facts["routes"].items():
        assert sum(r.src == src for r in rx) == sc.options["count"]
        assert lab.route_get(sc.dst, src)["table"] == table
    # Interleaved on the wire: the two sources alternate rather than one burst after the other.
    order = [p.outer.src for p in caps[("pod-c", "eth0")].packets if p.outer.dst == sc.dst]
    assert sum(a != b for a, b in itertools.pairwise(order)) > 2


@pytest.mark.parametrize("name", ["mld-hop-by-hop", "ipv6-fragments", "ipv6-dstopts", "ipv6-routing"])
def test_ipv6_extension_headers(lab, name):
    sc = lab.scenario(name)
    outcome, caps = lab.run(sc)
    assert outcome.mismatches() == []
    sent = [p for p in caps[("pod-a", "eth0")].packets if p.outer.dst == sc.dst and p.outer.proto == sc.facts["upper"]]
    assert sent and all(p.outer.ext_headers == sc.facts["ext_headers"] for p in sent)
    if name == "mld-hop-by-hop":
        assert {p.outer.icmp_type for p in sent} == {sc.facts["icmp6_type"]}
    if name == "ipv6-fragments":
        assert len(sent) == sc.facts["fragments"] and [p.outer.fragment[1] for p in sent] == [True, True, False]


def test_policy_rule_and_tables(lab):
    rules = lab.exec("router", ["ip", "rule"]).stdout
    assert f"from {lab.pods['pod-b'].ip4} lookup {POLICY_TABLE}" in rules
    mtu = lab.exec("router", ["ip", "link", "show", lab.pods["pod-c"].host_ifname]).stdout
    assert "mtu 1280" in mtu


# ---------------------------------------------------------------- CNI plugin use and cleanup


def test_cni_del_releases_the_address(no_leftovers):
    with RoutingLab() as r:
        pod = r.pods["pod-b"]
        leases = Path(cni.data_dir(r.prefix)) / "lan"
        assert (leases / pod.ip4).exists()
        r.networks["lan"].delete(r.ns["router"], r.ns["pod-b"], "pod-b")
        assert not (leases / pod.ip4).exists()
        assert pod.host_ifname not in r.exec("router", ["ip", "link"]).stdout
        assert "eth0" not in r.exec("pod-b", ["ip", "link"]).stdout
    assert not Path(cni.data_dir(r.prefix)).exists()


def test_teardown_after_failure_and_stale_runs(no_leftovers):
    with pytest.raises(RuntimeError), FlannelCluster() as f:
        names, prefix = list(f.ns.values()), f.prefix
        raise RuntimeError("test body failed")
    assert not any(os.path.exists(netns_path(n)) for n in names)
    assert not Path(cni.data_dir(prefix)).exists()
    # A run that died without teardown: its namespaces and leases are reaped by cleanup_stale().
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = RoutingLab(prefix=f"skbt{gone.pid}-0").up()
    removed = cleanup_stale()
    assert set(dead.ns.values()) <= set(removed) and dead.prefix in removed
    assert not Path(cni.data_dir(dead.prefix)).exists()
