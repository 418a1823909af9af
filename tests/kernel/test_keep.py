"""--keep: once a packet matches, follow its skb (and its clones) past NAT."""

import pytest

from conftest import BACKEND
from testbed.topology import SeedCluster
from testbed.tracer import TracerRun


@pytest.fixture(scope="module")
def cluster():
    with SeedCluster(promisc=True) as c:
        c.start_udp_receiver("server")
        yield c


def trace_service(cluster, settle, extra):
    service = cluster.ip["service"]
    with TracerRun(["-H", service, "--proto", "udp"] + extra) as run:
        cluster.reset_counts()
        cluster.send_udp("client", service, cluster.SERVICE_PORT)
        cluster.received("server", settle=settle)
    return run


def test_header_only_without_keep_rows_stop_at_the_address_change(cluster, settle):
    """--header-only: the headers alone decide (by default the connection's original tuple
    matches too: tests/kernel/test_clusterip.py)."""
    run = trace_service(cluster, settle, ["--header-only"])
    assert run.rows, run.stdout + run.stderr
    assert all("->%s:" % cluster.ip["service"] in r.pkt for r in run.rows)


def test_keep_follows_the_dnated_skb_and_its_clones(cluster, settle):
    """--header-only: what --keep alone follows (the connection would match more copies)."""
    run = trace_service(cluster, settle, ["--keep", "--header-only"])
    after_nat = [r for r in run.rows if "->%s:9000" % cluster.ip["server"] in r.pkt]
    assert after_nat, run.stdout
    before = {r.skb for r in run.rows if "->%s:" % cluster.ip["service"] in r.pkt}
    assert before & {r.skb for r in after_nat}, "the same skb is followed across DNAT"
    server = cluster.ns_inode["server"]
    reaching = {r.skb for r in after_nat if r.netns == server and r.ifname == "eth0"}
    # tracepoints cannot follow clones: only the routed copy is kept there
    assert len(reaching) == (2 if BACKEND == "kprobe" else 1), run.stdout


def test_keep_with_an_expression_follows_past_nat(cluster, settle):
    """The expression selects the first sighting (the service address); with
    --keep the skb is followed after DNAT made it stop matching."""
    service = cluster.ip["service"]
    expression = "udp and dst host %s and dst port %d" % (service, cluster.SERVICE_PORT)
    with TracerRun(["--keep", expression]) as run:
        cluster.reset_counts()
        cluster.send_udp("client", service, cluster.SERVICE_PORT, sport=41555)
        cluster.received("server", settle=settle)
    rows = [r for r in run.rows if ":41555->" in r.pkt]
    assert any("->%s:%d" % (service, cluster.SERVICE_PORT) in r.pkt for r in rows), run.stdout
    after_nat = [r for r in rows if "->%s:9000" % cluster.ip["server"] in r.pkt]
    server = cluster.ns_inode["server"]
    assert any(r.netns == server and r.ifname == "eth0" for r in after_nat), run.stdout
