"""Ground truth of the seed case on the host kernel, from the namespace test bed alone (no tracer).

Run as root:  /usr/bin/python3 -m pytest tests/host/test_topology.py
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root, wherever pytest is started

from testbed.topology import (  # noqa: E402
    IP,
    MAC,
    ROLES,
    SCENARIOS,
    SERVER_PORT,
    SERVICE_PORT,
    SeedCluster,
    cleanup_stale,
    netns_path,
    pids_in_netns,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

OUR_PREFIX = f"skbt{os.getpid()}-"


def our_netns() -> list[str]:
    return [n for n in os.listdir("/run/netns") if n.startswith(OUR_PREFIX)] if os.path.isdir("/run/netns") else []


@pytest.fixture(scope="module", autouse=True)
def no_leftovers():
    cleanup_stale()  # namespaces of earlier runs that died before their teardown
    yield
    assert our_netns() == []


# One cluster per iptables flavour; promisc is toggled on the live bridge between scenarios.
@pytest.fixture(scope="module", params=["nft", "legacy"])
def cluster(request, no_leftovers):  # depends on it, so it is torn down first
    with SeedCluster(promisc=True, iptables=request.param) as c:
        c.start_udp_receiver("server")
        c.start_udp_receiver("server2")
        yield c


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: f"s{s.number}-{'promisc' if s.promisc else 'nopromisc'}-{s.target}")
def test_udp_scenario(cluster, scenario):
    assert cluster.run_scenario(scenario, count=1) == scenario.expected
    assert cluster.get_promisc() == scenario.promisc


def test_duplicate_is_the_routed_copy(cluster):
    cluster.set_promisc(True)
    assert cluster.run_udp("service", count=3) == 6
    recs = cluster.records("server")
    # Bridged copy keeps TTL 64; the copy that went br_pass_frame_up -> ip_forward has TTL 63.
    assert sorted(r.ttl for r in recs) == [63, 63, 63, 64, 64, 64]
    assert {r.src for r in recs} == {IP["client"]}


def test_send_udp_from_a_process(cluster):
    cluster.set_promisc(True)
    cluster.reset_counts()
    sport = cluster.send_udp("client", IP["service"], SERVICE_PORT, count=2, payload=b"x", sport=40000, process=True)
    assert sport == 40000
    assert cluster.received("server") == 4
    assert {(r.sport, r.payload) for r in cluster.records("server")} == {(40000, b"x")}


def test_dedup_rule(cluster):
    cluster.set_promisc(True)
    cluster.set_dedup(True)
    try:
        assert cluster.run_udp("service") == 1
        assert cluster.records("server")[0].ttl == 64
        assert cluster.run_udp("service2") == 1  # the rule leaves other traffic alone
        assert cluster.run_udp("direct") == 1
    finally:
        cluster.set_dedup(False)
    assert cluster.run_udp("service") == 2


def test_tcp_helpers(cluster):
    cluster.set_promisc(True)
    cluster.start_tcp_listener("server")
    cluster.start_tcp_listener("server2")
    cluster.reset_counts()
    assert cluster.send_tcp("client", IP["server"], SERVER_PORT, b"direct")
    assert cluster.send_tcp("client", IP["service"], SERVICE_PORT, b"via-service")
    assert cluster.send_tcp("client", IP["service2"], SERVICE_PORT, b"via-service2")
    # TCP drops the duplicated segments: one line each.
    assert cluster.received("server", proto="tcp") == 2
    assert cluster.received("server2", proto="tcp") == 1
    assert [r.payload for r in cluster.records("server", proto="tcp")] == [b"direct", b"via-service"]
    assert [r.payload for r in cluster.records("server2", proto="tcp")] == [b"via-service2"]
    assert not cluster.send_tcp("client", IP["server"], SERVER_PORT + 1, timeout=1)  # refused


def test_icmp_helper(cluster):
    for dst in (IP["server"], IP["cbr0"], IP["node2"], IP["server2"]):
        assert cluster.ping("client", dst), dst
    assert not cluster.ping("client", "10.244.1.99")  # nobody there (ARP on cbr0 only)


def test_attributes(cluster):
    for role in ROLES:
        name = cluster.ns[role]
        assert os.path.exists(netns_path(name))
        assert cluster.ns_inode[role] == os.stat(netns_path(name)).st_ino
        assert cluster.exec(role, ["readlink", "/proc/self/ns/net"]).stdout.strip() == f"net:[{cluster.ns_inode[role]}]"
    assert len(set(cluster.ns_inode.values())) == len(ROLES)
    link = cluster.exec("node1", ["ip", "-o", "link", "show", "cbr0"]).stdout
    assert MAC["cbr0"] in link
    assert MAC["server"] in cluster.exec("server", ["ip", "-o", "link", "show", "eth0"]).stdout
    assert cluster.ifindex("node1", "cbr0") > 0
    assert cluster.exec("node1", ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"


def test_br_netfilter_sysctl_is_per_netns(cluster):
    key = "net.bridge.bridge-nf-call-iptables"
    read = lambda ns: cluster.exec(ns, ["sysctl", "-n", key]).stdout.strip()  # noqa: E731
    assert read("node1") == "1"
    cluster.exec("client", ["sysctl", "-w", f"{key}=0"])
    try:
        assert read("client") == "0" and read("node1") == "1"
    finally:
        cluster.exec("client", ["sysctl", "-w", f"{key}=1"])


def test_teardown_after_exception_leaves_nothing():
    with pytest.raises(RuntimeError):
        with SeedCluster(promisc=False) as c:
            names = list(c.ns.values())
            pids = [c.start_udp_receiver("server").pid, c.start_tcp_listener("server2").pid]
            sleeper = c.popen("client", ["sleep", "60"])
            pids.append(sleeper.pid)
            raise RuntimeError("test body failed")
    assert not any(os.path.exists(netns_path(n)) for n in names)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_setup_is_idempotent_after_crash():
    prefix = f"{OUR_PREFIX}crash"
    SeedCluster(prefix=prefix).up()  # never torn down, as if the run had died
    with SeedCluster(prefix=prefix, promisc=True) as c:
        assert c.run_udp("service") == 2
    assert not any(os.path.exists(netns_path(f"{prefix}-{r}")) for r in ROLES)


def test_cleanup_stale_only_removes_dead_runs():
    gone = subprocess.Popen(["true"])  # its PID names a run that is dead
    gone.wait()
    stale = SeedCluster(prefix=f"skbt{gone.pid}-0")
    stale.up()
    with SeedCluster() as live:
        removed = cleanup_stale()  # may also reap other dead runs on this machine
        assert set(stale.ns.values()) <= set(removed)
        assert not set(live.ns.values()) & set(removed)
        assert all(os.path.exists(netns_path(n)) for n in live.ns.values())
    stale.down()  # nothing left to remove; must not fail


def test_receiver_exits_when_owner_dies():
    script = (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from testbed.topology import SeedCluster\n"
        "c = SeedCluster(prefix=%r).up()\n"
        "print(c.start_udp_receiver('server').pid, flush=True)\n"
        "time.sleep(60)\n"
    ) % (str(Path(__file__).resolve().parents[2]), f"{OUR_PREFIX}orphan")
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        rx_pid = int(owner.stdout.readline())
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 3
    while os.path.exists(f"/proc/{rx_pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{rx_pid}")  # stdin EOF ended it
    assert pids_in_netns(f"{OUR_PREFIX}orphan-server") == []
    with SeedCluster(prefix=f"{OUR_PREFIX}orphan"):  # a re-run with the same prefix clears it
        pass
