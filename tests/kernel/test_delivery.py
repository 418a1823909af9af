"""Events from the kernel to the rows, on both buffers (the BPF ring buffer,
with its rows made in C where skbtracer_lib/_rows is built and in Python
with SKBTRACER_PYTHON_ROWS=1, and the perf buffer that 5.4 and older
kernels get, forced here with SKBTRACER_PERF_BUFFER=1): N datagrams of a matching flow make exactly N
times the rows of one, none out of order; with a deliberately tiny buffer
and the tracer stopped, rows + the exit line's lost count = what the
kernel made.

Runs on: host only. How events reach userspace is the same C after every
probe, tracepoint or kprobe; its six starts cost over three minutes of
compiles in the 6.1 guest."""

import os
import re
import signal
import time

import pytest
from conftest import GUEST

from testbed.topology import SeedCluster, netns_inode
from testbed.tracer import TracerRun, tracing_together

pytestmark = pytest.mark.skipif(bool(GUEST), reason="host only: how events reach userspace is "
                                "the same for every probe, and a tracer start costs a compile in the guest")

DATAGRAMS = 100
FIRST_SPORT = 42000
TINY_PAGES = "2"      # the ring buffer's pages, or each CPU's perf ring: ~40 events
EXIT_LINE = re.compile(r"^skbtracer: (\d+) rows printed, (\d+) events lost$", re.M)
CPU = 0               # sender and receiver: every event comes from one CPU


@pytest.fixture(scope="module")
def cluster():
    with SeedCluster(promisc=False) as c:
        receiver = c.start_udp_receiver("server")
        os.sched_setaffinity(receiver.pid, {CPU})
        yield c


# the buffers, by the environment that picks each
BUFFERS = {"ring": {}, "ring-python-rows": {"SKBTRACER_PYTHON_ROWS": "1"},
           "perf": {"SKBTRACER_PERF_BUFFER": "1"}}
# tracers compiling at once: the guest has two CPUs and 2 GiB
PARALLEL = 2 if os.environ.get("TESTBED_GUEST") else 3


@pytest.fixture(autouse=True, scope="module")
def our_environment():
    """The buffers' variables are set per tracer (BUFFERS), none inherited."""
    saved = {k: os.environ.pop(k) for k in ("SKBTRACER_BUFFER_PAGES", "SKBTRACER_PYTHON_ROWS",
                                            "SKBTRACER_PERF_BUFFER") if k in os.environ}
    yield
    os.environ.update(saved)


def traced_together(cluster, extra_env, traffic):
    """{buffer: TracerRun}: one tracer per buffer, PARALLEL started at once,
    traffic(runs) made under each group."""
    runs = {}
    names = list(BUFFERS)
    for first in range(0, len(names), PARALLEL):
        group = names[first:first + PARALLEL]
        started = [TracerRun(tracer_args(cluster), env=dict(BUFFERS[name], **extra_env))
                   for name in group]
        with tracing_together(started):
            traffic(started)
        runs.update(zip(group, started))
    return runs


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


@pytest.fixture(scope="module")
def in_order(cluster):
    """One datagram, then DATAGRAMS more, under a tracer per buffer."""
    def traffic(runs):
        send(cluster, 1, FIRST_SPORT)
        for run in runs:
            wait_rows(run)
        send(cluster, DATAGRAMS, FIRST_SPORT + 1)
        for run in runs:
            one = by_sport(run.rows)[FIRST_SPORT]
            wait_rows(run, at_least=len(one) * (DATAGRAMS + 1))
    return traced_together(cluster, {}, traffic)


@pytest.mark.parametrize("buffer", list(BUFFERS))
def test_n_datagrams_make_n_times_the_rows_of_one_in_order(in_order, buffer):
    run = in_order[buffer]
    rows = run.rows
    assert exit_counts(run) == (len(rows), 0), run.stderr
    groups = by_sport(rows)
    one = groups[FIRST_SPORT]
    assert sorted(groups) == list(range(FIRST_SPORT, FIRST_SPORT + DATAGRAMS + 1))
    assert all(functions == one for functions in groups.values()), (one, groups)
    times = [float(r.time) for r in rows]
    assert times == sorted(times)        # one CPU: the order the kernel made them


@pytest.fixture(scope="module")
def tiny(cluster):
    """A tiny buffer per tracer, nobody reading while DATAGRAMS are sent:
    {buffer: (run, rows of one datagram)}."""
    per_datagram = {}

    def traffic(runs):
        send(cluster, 1, FIRST_SPORT)
        for run in runs:
            wait_rows(run)
            per_datagram[run] = len(run.rows)
        for run in runs:
            run.proc.send_signal(signal.SIGSTOP)      # nobody reads: the buffers fill
        try:
            send(cluster, DATAGRAMS, FIRST_SPORT + 1)
        finally:
            for run in runs:
                run.proc.send_signal(signal.SIGCONT)
        for run in runs:
            wait_rows(run)
    runs = traced_together(cluster, {"SKBTRACER_BUFFER_PAGES": TINY_PAGES}, traffic)
    return {name: (run, per_datagram[run]) for name, run in runs.items()}


@pytest.mark.parametrize("buffer", list(BUFFERS))
def test_lost_count_is_exact_with_a_tiny_buffer(tiny, buffer):
    run, per_datagram = tiny[buffer]
    printed, lost = exit_counts(run)
    assert printed == len(run.rows)
    assert lost > 0, run.stderr
    assert printed + lost == per_datagram * (DATAGRAMS + 1), (printed, lost, per_datagram)


TIME_AND_SKB = re.compile(r"^\[[^\]]*\]|(?<= )[0-9a-f]+(?=\.\d+:)")


def test_rows_in_c_are_python_s_on_real_traffic(in_order):
    """The same datagrams traced side by side, rows in C and in Python: the
    same rows but for their times and skb addresses."""
    texts = [[TIME_AND_SKB.sub("", line) for line in in_order[name].stdout.splitlines()[1:]]
             for name in ("ring", "ring-python-rows")]
    assert texts[0] == texts[1]
    assert len(texts[0]) >= DATAGRAMS + 1
