"""Events from the kernel to the rows, on both buffers (the BPF ring buffer,
with its rows made in C where skbtracer_lib/_rows is built and in Python
with SKBTRACER_PYTHON_ROWS=1, and the perf buffer that 5.4 and older
kernels get, forced here with SKBTRACER_PERF_BUFFER=1): N datagrams of a matching flow make exactly N
times the rows of one, none out of order; with a deliberately tiny buffer
and the tracer stopped, rows + the exit line's lost count = what the
kernel made."""

import os
import re
import signal
import time

import pytest

from testbed.topology import SeedCluster, netns_inode
from testbed.tracer import TracerRun

DATAGRAMS = 100
FIRST_SPORT = 42000
TINY_PAGES = "2"      # the ring buffer's pages, or each CPU's perf ring: ~40 events
EXIT_LINE = re.compile(r"skbtracer: (\d+) rows printed, (\d+) events lost")
CPU = 0               # sender and receiver: every event comes from one CPU


@pytest.fixture(scope="module")
def cluster():
    with SeedCluster(promisc=False) as c:
        receiver = c.start_udp_receiver("server")
        os.sched_setaffinity(receiver.pid, {CPU})
        yield c


@pytest.fixture(params=["ring", "ring-python-rows", "perf"])
def buffer(request, monkeypatch):
    monkeypatch.delenv("SKBTRACER_BUFFER_PAGES", raising=False)
    monkeypatch.delenv("SKBTRACER_PYTHON_ROWS", raising=False)
    if request.param == "perf":
        monkeypatch.setenv("SKBTRACER_PERF_BUFFER", "1")
    else:
        monkeypatch.delenv("SKBTRACER_PERF_BUFFER", raising=False)
    if request.param == "ring-python-rows":
        monkeypatch.setenv("SKBTRACER_PYTHON_ROWS", "1")
    return request.param


def send(cluster, count, first_sport):
    """count datagrams client -> server, one source port each, from CPU 0."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CPU})
    try:
        for n in range(count):
            cluster.send_udp("client", cluster.ip["server"], 9000, sport=first_sport + n)
    finally:
        os.sched_setaffinity(0, allowed)


def wait_rows(run, at_least=1, quiet=1.0, limit=60):
    """Until the tracer has printed at_least rows and then nothing for quiet s."""
    deadline = time.monotonic() + limit
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = run.stdout.count("\n")
        if count != seen:
            seen, since = count, time.monotonic()
        elif count >= at_least and time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)


def tracer_args(cluster):
    """The client pod's rows of its datagrams: -N leaves out copies other
    programs on the machine may make of them (taps: consume_skb rows of
    other skbs, with no device, come and go with what else runs here)."""
    send(cluster, 1, FIRST_SPORT - 1)   # untraced: the first one waits for ARP (other rows)
    return ["-t", "--proto", "udp", "-H", cluster.ip["client"], "--no-summary",
            "-N", str(netns_inode(cluster.netns_name("client")))]


def by_sport(rows):
    groups = {}
    for row in rows:
        sport = int(row.pkt.split("->")[0].rsplit(":", 1)[1])
        groups.setdefault(sport, []).append(row.function)
    return groups


def exit_counts(run):
    match = EXIT_LINE.search(run.stderr)
    assert match, run.stderr
    return int(match.group(1)), int(match.group(2))


def test_n_datagrams_make_n_times_the_rows_of_one_in_order(cluster, buffer):
    with TracerRun(tracer_args(cluster)) as run:
        send(cluster, 1, FIRST_SPORT)
        wait_rows(run)
        one = by_sport(run.rows)[FIRST_SPORT]
        send(cluster, DATAGRAMS, FIRST_SPORT + 1)
        wait_rows(run, at_least=len(one) * (DATAGRAMS + 1))
    rows = run.rows
    assert exit_counts(run) == (len(rows), 0), run.stderr
    groups = by_sport(rows)
    assert sorted(groups) == list(range(FIRST_SPORT, FIRST_SPORT + DATAGRAMS + 1))
    assert all(functions == one for functions in groups.values()), (one, groups)
    times = [float(r.time) for r in rows]
    assert times == sorted(times)        # one CPU: the order the kernel made them


def test_lost_count_is_exact_with_a_tiny_buffer(cluster, buffer, monkeypatch):
    monkeypatch.setenv("SKBTRACER_BUFFER_PAGES", TINY_PAGES)
    with TracerRun(tracer_args(cluster)) as run:
        send(cluster, 1, FIRST_SPORT)
        wait_rows(run)
        per_datagram = len(run.rows)
        run.proc.send_signal(signal.SIGSTOP)      # nobody reads: the buffer fills
        try:
            send(cluster, DATAGRAMS, FIRST_SPORT + 1)
        finally:
            run.proc.send_signal(signal.SIGCONT)
        wait_rows(run)
    printed, lost = exit_counts(run)
    assert printed == len(run.rows)
    assert lost > 0, run.stderr
    assert printed + lost == per_datagram * (DATAGRAMS + 1), (printed, lost, per_datagram)


TIME_AND_SKB = re.compile(r"^\[[^\]]*\]|(?<= )[0-9a-f]+(?=\.\d+:)")


def test_rows_in_c_are_python_s_on_real_traffic(cluster, monkeypatch):
    """The same datagrams traced twice, rows in C and in Python: the same
    rows but for their times and skb addresses (source ports numbered from
    each run's first)."""
    monkeypatch.delenv("SKBTRACER_BUFFER_PAGES", raising=False)
    monkeypatch.delenv("SKBTRACER_PERF_BUFFER", raising=False)
    texts = []
    for python_rows, first in (("0", FIRST_SPORT + 200), ("1", FIRST_SPORT + 300)):
        monkeypatch.setenv("SKBTRACER_PYTHON_ROWS", python_rows)
        with TracerRun(tracer_args(cluster)) as run:
            send(cluster, 20, first)
            wait_rows(run, at_least=20)
        lines = [TIME_AND_SKB.sub("", line) for line in run.stdout.splitlines()[1:]]
        texts.append([line.replace(":%d->" % sport, ":SPORT%d->" % (sport - first))
                      for line in lines for sport in [int(line.split("->")[0].rsplit(":", 1)[1])]])
        assert exit_counts(run) == (len(lines), 0), run.stderr
    assert texts[0] == texts[1]
    assert len(texts[0]) >= 20
