"""Features that had no end-to-end test on real traffic: --callstack,
--proto any, --backend forced either way, -o to a FIFO and to /dev/null
while tracing, --layout headers.

Runs on: host (tracepoints) and guest-6.1 (kprobes). Three tracer starts on
each, one per group of cases, the first two side by side: (1) this kernel's backend forced, --proto any
-P, --callstack; (2) the tracepoint backend forced (the other one in a
guest; on the host kprobes are refused: test_runtime.py), rows into a FIFO;
(3) rows to /dev/null beside --json, with --layout headers in the guest (the
host's headers are 6.1's, not its kernel's: there BTF layouts)."""

import json
import os
import re
import socket
import threading

import pytest

from conftest import BACKEND, GUEST, TRACEPOINTS
from test_filters import icmp_echo
from testbed.topology import SeedCluster
from testbed.tracer import StderrReadyRun, TracerRun, parse_rows, tracing_together

# the host's headers are 6.1's, not its kernel's: --layout headers in a guest only
LAYOUT = "headers" if GUEST else "btf"
COLLIDED = "[stack unavailable: -17, its slot in the stack map holds another stack]"
EXIT_LINE = r"^skbtracer: (\d+) rows printed, 0 events lost$"
PORT, OTHER_PORT = 9000, 9001
SPORT = 43501
# where a tracepoint fires: a function its stack must show
TRACEPOINT_CALLERS = {"net_dev_queue": "__dev_queue_xmit", "net_dev_start_xmit": "dev_hard_start_xmit",
                      "netif_receive_skb": "__netif_receive_skb", "netif_rx": "netif_rx",
                      "consume_skb": "consume_skb", "skb_copy_datagram_iovec": "skb_copy_datagram_iter"}


@pytest.fixture(scope="module")
def cluster():
    with SeedCluster(promisc=False) as c:
        c.start_udp_receiver("server")
        c.start_udp_receiver("server", port=OTHER_PORT)
        c.start_tcp_listener("server")
        yield c


def traffic(c, settle):
    """UDP and TCP to PORT, UDP to OTHER_PORT, one echo: from the client."""
    server = c.ip["server"]
    c.reset_counts()
    c.send_udp("client", server, PORT, sport=SPORT)
    c.send_udp("client", server, OTHER_PORT, sport=SPORT + 1)
    c.send_tcp("client", server, PORT, sport=SPORT + 2)
    icmp_echo(c, "client", server, 4545)
    assert c.received("server", settle=settle) == 1


def ours(c, rows):
    """Rows of this cluster's namespaces (other runs may use the same addresses)."""
    inodes = set(c.ns_inode.values())
    return [r for r in rows if r.netns in inodes]


def exit_rows(run):
    match = re.search(EXIT_LINE, run.stderr, re.M)
    assert match, run.stderr
    return int(match.group(1))


@pytest.fixture(scope="module")
def traced(cluster, settle, tmp_path_factory):
    """The three groups' tracers: two at a time over one traffic each (their
    compiles overlap), the FIFO's reader and the JSON file ready."""
    where = tmp_path_factory.mktemp("features")
    fifo, saved = str(where / "rows"), str(where / "events.json")
    os.mkfifo(fifo)
    read = []

    def reader():
        with open(fifo) as f:       # blocks until skbtracer opens it
            read.append(f.read())
    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    client = cluster.ip["client"]
    runs = {
        "stacks": TracerRun(["--backend", BACKEND, "--proto", "any", "-P", str(PORT), "-H", client,
                             "--callstack", "-v"]),
        "fifo": StderrReadyRun(["--backend", "tracepoint", "-o", fifo, "-v", "-H", client,
                                "--proto", "udp"]),
        "null": StderrReadyRun(["-o", "/dev/null", "--json=" + saved, "--layout", LAYOUT, "-v",
                                "-H", client, "--proto", "udp", "-P", str(PORT)], ready_timeout=600),
    }
    for group in (["stacks", "fifo"], ["null"]):
        with tracing_together(runs[name] for name in group):
            traffic(cluster, settle)
    thread.join(30)
    assert read, "the FIFO's reader saw no end of file"
    with open(saved) as f:
        lines = [json.loads(line) for line in f]
    return {"stacks": runs["stacks"], "fifo": (runs["fifo"], fifo, read[0]),
            "null": (runs["null"], lines)}


@pytest.fixture(scope="module")
def stacks_and_any(traced):
    return traced["stacks"]


def test_backend_forced_is_the_one_used(stacks_and_any):
    run = stacks_and_any
    assert run.returncode == 0, run.stderr
    assert re.search(r"^skbtracer: backend %s;" % BACKEND, run.stderr, re.M), run.stderr
    assert "using tracepoints" not in run.stderr            # forced: nothing to say


def test_proto_any_with_a_port_is_udp_and_tcp_of_that_port(stacks_and_any, cluster):
    rows = ours(cluster, stacks_and_any.rows)
    kinds = {r.pkt.split(":")[0][:1] for r in rows}
    assert kinds == {"U", "T"}, [r.pkt for r in rows]
    assert all(":%d" % PORT in r.pkt for r in rows), [r.pkt for r in rows]
    assert any(":%d->" % (SPORT + 2) in r.pkt for r in rows)        # the SYN
    assert any("->%s:%d" % (cluster.ip["client"], SPORT + 2) in r.pkt for r in rows)   # its answer


def test_callstack_under_every_row_shows_where_it_fired(stacks_and_any, cluster):
    rows = ours(cluster, stacks_and_any.rows)
    assert rows
    # a stack whose hash slot another stack took first is said so, never
    # shown wrong (16384 slots: a few in a hundred runs see one)
    collided = [row for row in rows if row.stack == [COLLIDED]]
    assert len(collided) <= len(rows) // 4, collided
    for row in rows:
        assert row.stack, row.line
        if row in collided:
            continue
        # symbol+offset, "[module]" after a module's (veth, bridge in a guest)
        assert all(re.fullmatch(r"\S+\+0x[0-9a-f]+( \[\w+\])?|\[unknown\]", line)
                   for line in row.stack), row.stack
        symbols = [line.split("+")[0] for line in row.stack]
        # a tracepoint's row (the kprobe backend uses some too) names the
        # tracepoint: its stack shows the function that fires it
        wanted = TRACEPOINT_CALLERS.get(row.function,
                                        row.function if BACKEND == "kprobe" else None)
        assert wanted is None or any(s.startswith(wanted) for s in symbols), (
            row.line, row.stack)


# ------------------------------------------------------------ rows into a FIFO


@pytest.fixture(scope="module")
def into_fifo(traced):
    return traced["fifo"]


def test_tracepoint_backend_forced(into_fifo):
    run, _fifo, _text = into_fifo
    assert run.returncode == 0, run.stderr
    assert re.search(r"^skbtracer: backend tracepoint;", run.stderr, re.M), run.stderr
    assert re.search(r"^skbtracer: attached %s netif_receive_skb " % TRACEPOINTS, run.stderr, re.M)
    assert not re.search(r"^skbtracer: attached kprobe", run.stderr, re.M), run.stderr


def test_rows_through_a_fifo_while_tracing(into_fifo, cluster):
    run, fifo, text = into_fifo
    assert run.stdout == ""
    assert text.startswith("time ")
    rows = parse_rows(text)
    assert exit_rows(run) == len(rows) > 0
    assert "skbtracer: rows written to %s" % fifo in run.stderr
    mine = ours(cluster, rows)
    assert {r.function for r in mine} <= set(TRACEPOINT_CALLERS), mine
    server_eth0 = [r for r in mine if r.netns == cluster.ns_inode["server"] and r.ifname == "eth0"
                   and r.function == "netif_receive_skb"]
    assert {r.pkt for r in server_eth0} >= {"U:%s:%d->%s:%d" % (cluster.ip["client"], SPORT,
                                                                 cluster.ip["server"], PORT)}


# ------------------------------------------------------------ rows to /dev/null, --json beside


@pytest.fixture(scope="module")
def into_null(traced):
    return traced["null"]


def test_rows_to_dev_null_are_counted_as_printed(into_null):
    run, lines = into_null
    assert run.returncode == 0, run.stderr
    events = [e for e in lines if e["type"] == "event"]
    assert exit_rows(run) == len(events) > 0
    assert "skbtracer: rows written to /dev/null" in run.stderr


def test_layout_reads_the_right_fields(into_null, cluster):
    """The events' interface, namespace, addresses and ports are those of
    the traffic: the struct offsets (headers in the guest) are right."""
    run, lines = into_null
    described = "the installed kernel headers" if LAYOUT == "headers" else "BTF (/sys/kernel/btf)"
    assert "struct layouts from %s" % described in run.stderr, run.stderr
    inodes = set(cluster.ns_inode.values())
    events = [e for e in lines if e["type"] == "event" and e["netns"] in inodes]
    at_server = [e for e in events if e["netns"] == cluster.ns_inode["server"]
                 and e["ifname"] == "eth0"]
    assert at_server, events
    for e in at_server:
        assert (e["saddr"], e["sport"], e["daddr"], e["dport"], e["family"], e["l4proto"]) == (
            cluster.ip["client"], SPORT, cluster.ip["server"], PORT, 4, socket.IPPROTO_UDP), e
        assert e["ifindex"] == cluster.ifindex("server", "eth0"), e
