"""--drop: packets freed as drops, with the kernel's reason and location;
normal frees (consume_skb) are not drops."""

import pytest

from conftest import HAVE_DROP_REASONS
from testbed.topology import SeedCluster
from testbed.tracer import TracerRun

DROPPED_PORT = 9100      # an iptables DROP rule in the server pod
CLOSED_PORT = 9200       # nobody listens
SPORTS = {"dropped": 42101, "closed": 42102, "delivered": 42103}


@pytest.fixture(scope="module")
def drop_run(settle):
    with SeedCluster(promisc=False) as cluster:
        cluster.exec("server", ["iptables-nft", "-w", "-A", "INPUT", "-p", "udp",
                                "--dport", str(DROPPED_PORT), "-j", "DROP"])
        cluster.start_udp_receiver("server")
        server = cluster.ip["server"]
        with TracerRun(["--drop", "--dropstack", "-H", cluster.ip["client"], "--proto", "udp"]) as run:
            cluster.send_udp("client", server, DROPPED_PORT, sport=SPORTS["dropped"])
            cluster.send_udp("client", server, CLOSED_PORT, sport=SPORTS["closed"])
            cluster.send_udp("client", server, 9000, sport=SPORTS["delivered"])
            assert cluster.received("server", settle=settle) == 1
        yield cluster, run


def rows_of(run, flow):
    return [r for r in run.rows if ":%d->" % SPORTS[flow] in r.pkt]


def test_netfilter_drop_has_reason_and_location(drop_run):
    cluster, run = drop_run
    rows = rows_of(run, "dropped")
    assert rows, run.stdout
    row = rows[0]
    assert row.function == "kfree_skb"
    assert row.reason == ("NETFILTER_DROP" if HAVE_DROP_REASONS else None), row.line
    assert "location=" in row.trace and "+0x" in row.trace
    assert row.netns == cluster.ns_inode["server"]


def test_closed_port_has_its_reason(drop_run):
    rows = rows_of(drop_run[1], "closed")
    assert rows and rows[0].reason == ("NO_SOCKET" if HAVE_DROP_REASONS else None), drop_run[1].stdout


def test_delivered_datagram_is_not_a_drop(drop_run):
    assert rows_of(drop_run[1], "delivered") == []


def test_dropstack_prints_symbols_under_drop_rows(drop_run):
    rows = rows_of(drop_run[1], "dropped")
    stack = rows[0].stack
    assert stack, drop_run[1].stdout
    assert all("+0x" in line or line.startswith("[") for line in stack)
    assert "b'" not in drop_run[1].stdout
    assert any("nf_hook_slow" in line or "ip_local_deliver" in line for line in stack), stack
