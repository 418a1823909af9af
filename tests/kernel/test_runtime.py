"""How skbtracer behaves as a running program: signals, pipes, -v, clocks,
backend choice."""

import re
import subprocess
import time

import pytest

from conftest import BACKEND, TRACEPOINTS
from testbed.topology import SeedCluster
from testbed.tracer import PYTHON, SKBTRACER, TracerRun, readline_within, tracing_together

EXIT_LINE = r"^skbtracer: (\d+) rows printed, (\d+) events lost$"


@pytest.fixture(scope="module")
def cluster():
    with SeedCluster(promisc=False) as c:
        c.start_udp_receiver("server")
        yield c


def test_sigterm_detaches_and_prints_summary(cluster):
    """SIGTERM ends the trace as Ctrl-C does: the tracer's own exit 0 (not a
    kill after a timeout), the exit line, nothing left in the kernel."""
    run = TracerRun(["--proto", "udp", "-H", cluster.ip["client"]])
    run.start()
    cluster.send_udp("client", cluster.ip["server"], 9000)
    time.sleep(0.5)
    run.terminate()
    assert run.wait(30) == 0, run.stderr
    exit_line = re.search(EXIT_LINE, run.stderr, re.M)
    assert exit_line and int(exit_line.group(1)) == len(run.rows) > 0, run.stderr
    assert "Traceback" not in run.stderr
    assert run.held["prog"] and run.left_behind() == {}


def test_closed_pipe_exits_quietly(cluster):
    """`skbtracer.py | head -n 2`: no traceback, no BrokenPipeError."""
    proc = subprocess.Popen([PYTHON, SKBTRACER, "--proto", "udp"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        header = readline_within(proc.stdout, 300)        # a compile in the guest
        assert header.startswith("time"), header
        cluster.send_udp("client", cluster.ip["server"], 9000, count=5)
        assert readline_within(proc.stdout, 30)
        proc.stdout.close()                       # what head does after its lines
        cluster.send_udp("client", cluster.ip["server"], 9000, count=5)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert rc == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


@pytest.fixture(scope="module")
def verbose():
    """-v with the backend left to skbtracer (auto)."""
    with TracerRun(["-v", "--route", "--drop"]) as run:
        pass
    return run


def test_verbose_lists_probes(verbose):
    run = verbose
    assert re.search(r"^skbtracer: backend %s; struct layouts from BTF" % BACKEND, run.stderr,
                     re.M), run.stderr
    if BACKEND == "kprobe":
        assert "attached kprobe ip_rcv" in run.stderr
        assert re.search(r"skipped deliver_clone: ", run.stderr), run.stderr
    else:
        assert "attached %s netif_receive_skb" % TRACEPOINTS in run.stderr
    assert "attached %s kfree_skb" % TRACEPOINTS in run.stderr
    if TRACEPOINTS == "tp_btf":
        assert re.search(r"^skbtracer: tracepoints as tp_btf ", run.stderr, re.M), run.stderr


def test_auto_backend_says_which(verbose):
    if BACKEND == "tracepoint":
        assert "using tracepoints" in verbose.stderr
    else:
        assert "using tracepoints" not in verbose.stderr


def test_event_clock_and_relative_timestamps(cluster):
    """-t and -T side by side over the same datagram (their compiles overlap)."""
    args = ["--proto", "udp", "-H", cluster.ip["client"]]
    with tracing_together([TracerRun(["-t"] + args), TracerRun(["-T"] + args)]) as (relative, clock):
        cluster.send_udp("client", cluster.ip["server"], 9000)
        time.sleep(0.3)
    # seconds since the first event: never negative, more than one, not the clock's
    assert all(re.fullmatch(r"\d+\.\d{6}", r.time) for r in relative.rows), relative.stdout
    times = [float(r.time) for r in relative.rows]
    assert len(times) > 1 and times[0] == 0.0 and len(set(times)) > 1 and max(times) < 30, times
    assert clock.rows and all(re.fullmatch(r"\d\d:\d\d:\d\d", r.time) for r in clock.rows)


@pytest.mark.skipif(BACKEND == "kprobe", reason="this kernel has kprobes")
def test_kprobe_backend_refused_without_kprobes():
    proc = subprocess.run([PYTHON, SKBTRACER, "--backend", "kprobe"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "kprobes are unavailable" in proc.stderr


@pytest.mark.skipif(BACKEND == "kprobe", reason="this kernel has kprobes")
def test_iptable_alone_needs_kprobes():
    proc = subprocess.run([PYTHON, SKBTRACER, "--iptable"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "need kprobes" in proc.stderr and "Traceback" not in proc.stderr
