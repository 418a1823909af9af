"""Tracepoints as tp_btf (the skb's fields by plain loads) and as raw
tracepoints (read with bpf_probe_read_kernel) make the same rows: two
tracers at once over the same datagrams, one as the kernel allows (tp_btf
here), one with SKBTRACER_TP_BTF=0, print the same rows, skb addresses
included (they see the same skbs), for -H with route and drop rows and for
a tcpdump expression.

Runs on: host only. The guests' kprobe backend has two tracepoints
(kfree_skb, consume_skb) running the same C; two starts there cost a
minute of compiles."""

import os
import time

import pytest
from conftest import GUEST, TRACEPOINTS

from testbed.topology import SeedCluster
from testbed.tracer import TracerRun, tracing_together

from skbtracer_lib.program import tp_btf

pytestmark = pytest.mark.skipif(bool(GUEST), reason="host only: tp_btf and raw tracepoints run "
                                "the same C, and a tracer start costs a compile in the guest")

DROPPED_PORT = 9100      # an iptables DROP rule in the server pod
CLOSED_PORT = 9200       # nobody listens
DELIVERED_PORT = 9000
CPU = 0                  # one sender CPU: both tracers' rows in one order


def rows_settled(runs, at_least, quiet=1.0, limit=60):
    """Until every run has at_least rows and none printed more for quiet s."""
    deadline = time.monotonic() + limit
    seen, since = None, time.monotonic()
    while time.monotonic() < deadline:
        counts = [run.stdout.count("\n") for run in runs]
        if counts != seen:
            seen, since = counts, time.monotonic()
        elif min(counts) >= at_least and time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)


def comparable(run):
    """A run's rows without their clock time: the rest is the kernel's."""
    return [(r.netns, r.ifname, r.dmac, r.pkt, r.skb, r.pkt_type, r.trace, r.stack)
            for r in run.rows]


@pytest.fixture(scope="module")
def cluster():
    with SeedCluster(promisc=False) as c:
        c.exec("server", ["iptables-nft", "-w", "-A", "INPUT", "-p", "udp",
                          "--dport", str(DROPPED_PORT), "-j", "DROP"])
        c.start_udp_receiver("server")
        c.send_udp("client", c.ip["server"], DELIVERED_PORT)   # untraced: ARP resolved first
        yield c


def both_ways(cluster, args):
    """(tp_btf run, raw run) over the same datagrams: delivered, dropped
    by a rule, to a closed port."""
    runs = [TracerRun(["-v"] + args), TracerRun(["-v"] + args, env={tp_btf.FORCE_RAW_ENV: "0"})]
    allowed = os.sched_getaffinity(0)
    with tracing_together(runs):
        os.sched_setaffinity(0, {CPU})
        try:
            for n, port in enumerate((DELIVERED_PORT, DROPPED_PORT, CLOSED_PORT)):
                cluster.send_udp("client", cluster.ip["server"], port, sport=42301 + n)
        finally:
            os.sched_setaffinity(0, allowed)
        rows_settled(runs, at_least=3)
    return runs


@pytest.mark.parametrize("filters", [["--route", "--drop", "-H", "CLIENT", "--proto", "udp"],
                                     ["--route", "--drop", "--", "udp and host CLIENT"]],
                         ids=["address", "expression"])
def test_tp_btf_and_raw_tracepoints_make_the_same_rows(cluster, filters):
    if TRACEPOINTS != tp_btf.TP_BTF:
        pytest.fail("this host's kernel should run tp_btf: %s" % tp_btf.check()[1])
    args = [a.replace("CLIENT", cluster.ip["client"]) for a in filters]
    direct, raw = both_ways(cluster, args)
    assert "skbtracer: tracepoints as tp_btf " in direct.stderr, direct.stderr
    assert "tracepoints as raw tracepoints (not tp_btf: %s=0" % tp_btf.FORCE_RAW_ENV \
        in raw.stderr, raw.stderr
    rows = comparable(direct)
    drops = [r for r in rows if r[6].startswith("kfree_skb")]
    assert drops and len(drops) < len(rows), direct.stdout     # drop rows and route rows
    assert rows == comparable(raw), "\n--- tp_btf\n%s\n--- raw\n%s" % (direct.stdout, raw.stdout)
