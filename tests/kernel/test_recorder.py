"""--on-trouble, the flight recorder, on real traffic: UDP is recorded (no
-H: the background is recorded too) and only trouble is printed.

One run under a steady background of ~2,000 normal datagrams/s (node2 ->
server2, all received): the seed's scenario 1 (promisc on, a Service, the
same node: the server gets the datagram twice), a datagram an iptables DROP
rule in server2 drops, and one held back past --slow by a token bucket (tc
tbf: the host has no netem) on server2's eth0 that one datagram just before
it emptied. Each trouble's whole path is printed (its first rows are in the
sender's namespace), nothing of the background. And a stuck skb with no
later row: the token bucket's datagram is told by --slow's sweep while tc
still holds it (backlog 1p), and its later rows follow, none twice. A
datagram to an address in node2's pod range that no pod has waits in
node2's ARP queue until the neighbour fails (~3 s): with kprobes the sweep
tells it while ip neigh says INCOMPLETE; on tracepoints its last row is a
receive point (where a socket's queue looks alike), told at its drop. And a path
longer than the record keeps: a datagram along a chain of namespaces,
dropped at its end; its first row told says how many were not kept. A second run with a tiny
--recorder-size and hundreds of skbs held in the token bucket's queue: the skbs the
recorder forgot are counted and said at exit.

Runs on: host (tracepoints), guest-6.1 and guest-6.12 (kprobes; 6.12 with
kprobe-multi links). Two tracer starts on each."""

import re
import time

import pytest

from conftest import ARRIVAL, HAVE_DROP_REASONS
from testbed.shapes import Chain
from testbed.topology import IP, SeedCluster
from testbed.tracer import TracerRun

BACKGROUND_SPORT, BACKGROUND_PORT = 41500, 9100
DROPPED_PORT, SLOW_PORT, FORGET_PORT = 9101, 9102, 9103
DUPLICATE_SPORT, DROPPED_SPORT, SLOW_SPORT, FORGET_SPORT = 41401, 41402, 41403, 41404
FILLER_SPORT, STUCK_SPORT, STUCK_PORT = 41405, 41406, 9104
LONG_SPORT, LONG_PORT = 41407, 9105     # along the Chain: dropped at its end
SIGHTINGS = 32                          # recorder.SIGHTINGS: an skb's rows kept
UNANSWERED = "10.244.2.77"      # in node2's pod range, no pod has it: ARP never answered
RATE = 2000             # background datagrams per second
# not 100ms: on tracepoints a background datagram's last row is its receive
# point while it waits in the sink's socket queue, which the sweep cannot
# tell from a stuck skb; a sink stalled that long on a loaded CPU is rarer
SLOW = "500ms"
STUCK_TOLD_WITHIN = 2.5         # s: before the neighbour fails (3 probes, 1 s apart)
HELD_TOLD_WITHIN = 1.1          # s: before the token bucket lets it go (~1.3 s)
# 1,000 bytes/s after a 1,600-byte bucket: a 1,400-byte datagram right after
# another waits ~1.3 s
SLOW_BUCKET = ["rate", "8kbit", "burst", "1600", "limit", "100000"]
BIG = b"x" * 1400
# 12.5 kB/s: HELD small datagrams drain in ~2 s, all in flight at once at first
HOLD_BUCKET = ["rate", "100kbit", "burst", "1600", "limit", "200000"]
TINY_RECORDER, HELD = 16, 400   # recorder size; skbs held in the queue at once

# a UDP sink that reads whatever arrives (a full socket buffer would be a drop: trouble)
SINK = ("import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)\n"
        "s.bind(('0.0.0.0', int(sys.argv[1])))\n"
        "while True:\n"
        "    s.recv(65536)\n")
# RATE datagrams/s (fewer where the CPU cannot), each payload its own number, until stdin
# closes; then the count and the seconds
BACKGROUND = ("import os, socket, sys, threading, time\n"
              "dst, port, sport, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), "
              "int(sys.argv[4])\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "s.bind(('0.0.0.0', sport))\n"
              "done = threading.Event()\n"
              "threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()\n"
              "n, start = 0, time.monotonic()\n"
              "while not done.is_set():\n"
              "    due = int((time.monotonic() - start) * rate)\n"
              "    for _ in range(min(due - n, 100)):    # behind on a starved CPU: stays behind\n"
              "        s.sendto(n.to_bytes(8, 'big') + b'background', (dst, port))\n"
              "        n += 1\n"
              "    time.sleep(0.005)\n"
              "print(n, time.monotonic() - start)\n")


def start_sink(cluster, ns, port):
    import subprocess
    import sys
    return cluster.popen(ns, [sys.executable, "-c", SINK, str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def marked(rows, sport):
    return [r for r in rows if ":%d->" % sport in r.pkt]


def counts(stderr):
    """The exit line's recorder counts: {drops, duplicates, slow, forgotten}."""
    match = re.search(r"^skbtracer: \d+ rows printed, \d+ events lost, \d+ troubles told "
                      r"\((\d+) drops, (\d+) duplicates, (\d+) slow\), (\d+) skbs forgotten, "
                      r"(\d+) places forgotten$", stderr, re.M)
    assert match, stderr
    return dict(zip(("drops", "duplicates", "slow", "forgotten", "places_forgotten"),
                    map(int, match.groups())))


@pytest.fixture(scope="module")
def cluster():
    with SeedCluster(promisc=True) as c:
        yield c


@pytest.fixture(scope="module")
def chain():
    with Chain() as c:
        yield c


@pytest.fixture(scope="module")
def trouble(cluster, chain, settle):
    import subprocess
    import sys
    tables = "iptables-%s" % cluster.iptables
    cluster.exec("server2", [tables, "-w", "-A", "INPUT", "-p", "udp", "--dport",
                             str(DROPPED_PORT), "-j", "DROP"])
    cluster.start_udp_receiver("server")
    for ns, port in (("server2", BACKGROUND_PORT), ("node2", SLOW_PORT)):
        start_sink(cluster, ns, port)
    with TracerRun(["--proto", "udp", "--on-trouble", "--slow", SLOW, "--interval", "1", "-t"]) as run:
        background = cluster.popen("node2", [sys.executable, "-c", BACKGROUND, IP["server2"],
                                             str(BACKGROUND_PORT), str(BACKGROUND_SPORT),
                                             str(RATE)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        time.sleep(2)       # the background is steady before the troubles
        pod, dst_ip, dst_port = cluster.targets["service"]
        cluster.reset_counts()
        cluster.send_udp("client", dst_ip, dst_port, sport=DUPLICATE_SPORT)
        received = cluster.received(pod, settle=settle)
        cluster.send_udp("node2", IP["server2"], DROPPED_PORT, sport=DROPPED_SPORT)
        cluster.exec("server2", ["tc", "qdisc", "add", "dev", "eth0", "root", "tbf"] + SLOW_BUCKET)
        cluster.send_udp("server2", IP["node2"], SLOW_PORT, sport=FILLER_SPORT, payload=BIG)
        cluster.send_udp("server2", IP["node2"], SLOW_PORT, sport=SLOW_SPORT, payload=BIG)
        held = told_while(run, SLOW_SPORT, HELD_TOLD_WITHIN,
                          lambda: cluster.exec("server2", ["tc", "-s", "qdisc", "show", "dev",
                                                           "eth0"]).stdout)
        time.sleep(2.5)
        cluster.exec("server2", ["tc", "qdisc", "del", "dev", "eth0", "root"])
        stuck = stuck_told(run, cluster)
        chain.send_udp("hop0", Chain.FAR, LONG_PORT, sport=LONG_SPORT)
        time.sleep(1)
        sent, seconds = map(float, background.communicate("", timeout=30)[0].split())
    yield run, received, (sent, seconds), stuck, held


def told_while(run, sport, within, fact):
    """(seconds until the first row of sport was printed, fact() then), or
    (None, None) if not within that many seconds."""
    sent = time.monotonic()
    while time.monotonic() - sent < within:
        if any(":%d->" % sport in line for line in run.output_so_far()):
            return time.monotonic() - sent, fact()
        time.sleep(0.02)
    return None, None


def stuck_told(run, cluster):
    """Send the stuck datagram; (seconds until its first row was printed,
    node2's neighbour entry then), then wait for the neighbour to fail."""
    cluster.send_udp("client", UNANSWERED, STUCK_PORT, sport=STUCK_SPORT)
    sent = time.monotonic()
    told_after, neighbour = told_while(run, STUCK_SPORT, STUCK_TOLD_WITHIN, lambda: cluster.exec(
        "node2", ["ip", "neigh", "show", UNANSWERED]).stdout)
    deadline = sent + 6
    while time.monotonic() < deadline and "FAILED" not in cluster.exec(
            "node2", ["ip", "neigh", "show", UNANSWERED]).stdout:
        time.sleep(0.2)
    time.sleep(0.5)     # the drop's row
    return told_after, neighbour


def test_exit_and_interval_lines(trouble):
    run, *_ = trouble
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    said = counts(run.stderr)
    assert said["duplicates"] >= 1 and said["drops"] >= 1 and said["slow"] >= 1, said
    assert re.search(r"^skbtracer: \d\d:\d\d:\d\d: .* troubles told \(\+\d+\) .* skbs forgotten "
                     r"\(\+\d+\), \d+ places forgotten \(\+\d+\)$", run.stderr, re.M), run.stderr


def test_nothing_of_the_background(trouble):
    run, _received, (sent, seconds), *_ = trouble
    # a guest sharing a loaded host's CPUs may not keep the full rate; thousands all the same
    assert sent >= 2 * RATE, (sent, seconds)
    told = marked(run.rows, BACKGROUND_SPORT)
    assert not told, "%s\n%s" % (counts(run.stderr), "\n".join(r.line for r in told[:40]))


def test_duplicate_whole_path(trouble, cluster):
    run, received, *_ = trouble
    assert received == 2
    rows = marked(run.rows, DUPLICATE_SPORT)
    server = cluster.ns_inode["server"]
    reaching = {r.skb for r in rows if r.netns == server and r.ifname == "eth0"
                and r.function in ARRIVAL}
    assert len(reaching) == 2, "\n".join(r.line for r in rows)
    # from the start: the client sent it (the copies' rows come one copy after the other)
    assert any(r.netns == cluster.ns_inode["client"] for r in rows), "\n".join(r.line for r in rows)
    assert "DUPLICATE" in run.stderr, run.stderr


def test_drop_path(trouble, cluster):
    run, *_ = trouble
    rows = marked(run.rows, DROPPED_SPORT)
    drops = [r for r in rows if r.function == "kfree_skb"]
    assert len(drops) == 1, "\n".join(r.line for r in rows)
    if HAVE_DROP_REASONS:
        assert drops[0].reason == "NETFILTER_DROP", drops[0].line
    path = [r for r in rows if r.skb == drops[0].skb]
    assert path[0].netns == cluster.ns_inode["node2"], "\n".join(r.line for r in rows)
    assert any(r.netns == cluster.ns_inode["server2"] and r.function in ARRIVAL for r in path)


def test_slow_path(trouble, cluster):
    run, *_, (told_after, qdisc) = trouble
    rows = marked(run.rows, SLOW_SPORT)
    # told by the sweep while the token bucket still held it (no later row yet), once --slow old
    assert told_after is not None, "not told within %g s:\n%s" % (
        HELD_TOLD_WITHIN, "\n".join(r.line for r in rows))
    assert re.search(r"backlog \d+b [1-9]\d*p", qdisc), qdisc
    assert told_after >= 0.5, told_after
    # its rows after the bucket let it go follow, none twice
    assert len({r.line for r in rows}) == len(rows), "\n".join(r.line for r in rows)
    assert rows, run.stdout[-3000:]
    assert rows[0].netns == cluster.ns_inode["server2"], "\n".join(r.line for r in rows)
    assert any(r.netns == cluster.ns_inode["node2"] for r in rows), "\n".join(r.line for r in rows)
    assert not any(r.function == "kfree_skb" for r in rows)
    assert not marked(run.rows, FILLER_SPORT), "\n".join(r.line for r in run.rows[:20])


def test_stuck_skb_waiting_for_its_neighbour(trouble, cluster, backend):
    run, _received, _sent, (told_after, neighbour), _held = trouble
    rows = marked(run.rows, STUCK_SPORT)
    if backend == "tracepoint":
        # its last row before the queue is a receive point, where the sweep cannot tell a
        # stuck skb from one waiting for its socket's reader: told at its drop
        assert told_after is None, told_after
    else:
        assert told_after is not None, "not told within %g s:\n%s" % (
            STUCK_TOLD_WITHIN, "\n".join(r.line for r in rows))
        # the kernel still had it queued for its neighbour when its path was printed
        assert "INCOMPLETE" in neighbour, neighbour
        assert told_after >= 0.5, told_after        # not before --slow
    assert rows[0].netns == cluster.ns_inode["client"], "\n".join(r.line for r in rows)
    node2 = cluster.ns_inode["node2"]
    assert any(r.netns == node2 and r.function in ARRIVAL for r in rows)
    # the drop that ended it (the neighbour failed) adds its row only: no row twice
    drops = [r for r in rows if r.function == "kfree_skb"]
    assert len(drops) == 1 and drops[0].netns == node2, "\n".join(r.line for r in rows)
    if HAVE_DROP_REASONS:
        assert drops[0].reason == "NEIGH_FAILED", drops[0].line
    assert len({r.line for r in rows}) == len(rows), "\n".join(r.line for r in rows)


def test_a_path_longer_than_the_record_says_what_was_not_kept(trouble, chain):
    run = trouble[0]
    rows = marked(run.rows, LONG_SPORT)
    lines = "\n".join(r.line for r in rows)
    assert rows and rows[-1].function == "kfree_skb", lines
    assert rows[-1].netns == chain.ns_inode["hop%d" % (Chain.HOPS - 1)], lines
    # the drop row and the 31 before it the record kept; the first says how many went before
    assert len(rows) == SIGHTINGS, lines
    unkept = re.search(r" \((\d+) more sightings not kept\)$", rows[0].line)
    assert unkept, lines
    assert not any("not kept" in r.line for r in rows[1:]), lines
    # at least 4 rows a forwarding hop (received, sent), 2 for the first and the last
    assert int(unkept.group(1)) + SIGHTINGS - 1 >= 4 * (Chain.HOPS - 2) + 4, lines
    assert rows[0].netns != chain.ns_inode["hop0"], lines


def test_tiny_recorder_forgets_and_says_so(cluster):
    start_sink(cluster, "node2", FORGET_PORT)
    cluster.exec("server2", ["tc", "qdisc", "add", "dev", "eth0", "root", "tbf"] + HOLD_BUCKET)
    try:
        with TracerRun(["--proto", "udp", "--on-trouble", "--recorder-size",
                        str(TINY_RECORDER)]) as run:
            cluster.send_udp("server2", IP["node2"], FORGET_PORT, count=HELD, sport=FORGET_SPORT)
            time.sleep(3)
    finally:
        cluster.exec("server2", ["tc", "qdisc", "del", "dev", "eth0", "root"])
    assert run.returncode == 0, run.stderr
    said = counts(run.stderr)
    assert said["forgotten"] >= HELD - 2 * TINY_RECORDER, run.stderr
    # each datagram's arrival at node2 is a new place; the duplicate check keeps TINY_RECORDER
    assert said["places_forgotten"] >= HELD - TINY_RECORDER, run.stderr
    assert not marked(run.rows, FORGET_SPORT), run.stdout[-2000:]
