"""Ctrl-C and SIGTERM at any moment of skbtracer's start: one line and the
documented status (130, 143) before tracing started, the clean stop (the
exit lines, 0) after; never a traceback. And the line that says tracing
started, on a terminal only (rows to a pipe keep the original's stderr).

Runs on the host only: no probe is involved (the filter is a documentation
address no packet has, and no traffic is made), and in a guest each start
costs a compile. The signal is sent a few moments after skbtracer's own
handlers are in place (seen in /proc/PID/status), so that the moments do not
depend on how fast the interpreter starts."""

import os
import pty
import signal
import subprocess
import time

import pytest
from conftest import GUEST

from testbed.tracer import HEADER_START, PYTHON, SKBTRACER, readline_within

COMPACT_HEADER = "time     NETWORK_NS INTERFACE    PKT_INFO" + " " * 42 + "TRACE_INFO\n"

pytestmark = pytest.mark.skipif(bool(GUEST), reason="host only: start-up signals involve no "
                                "probes, and a tracer start costs a compile in the guest")

NOBODY = "192.0.2.77"       # TEST-NET-1 (RFC 5737): no packet matches
STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}
BEFORE = "skbtracer: interrupted before tracing started"


def start(**streams):
    return subprocess.Popen([PYTHON, SKBTRACER, "-H", NOBODY], text=True, **streams)


def wait_for_handlers(proc, timeout=10):
    """Until proc catches SIGTERM (Python alone does not: skbtracer's main()
    has begun)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/%d/status" % proc.pid) as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.005)
    raise AssertionError("skbtracer installed no SIGTERM handler within %d s" % timeout)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("delay", [0.0, 0.1, 0.4])
def test_signal_while_starting(sig, delay):
    proc = start(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_handlers(proc)
    time.sleep(delay)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines and all(line.startswith("skbtracer: ") for line in lines), err
    if BEFORE in lines or delay == 0.0:     # nothing compiles that fast
        assert (proc.returncode, lines[-1], out) == (STATUS[sig], BEFORE, "")
        assert lines.count(BEFORE) == 1
    else:                                   # a fast start: tracing had begun
        assert proc.returncode == 0 and out.startswith(HEADER_START), (proc.returncode, err)
    if delay == 0.0:
        assert lines == [BEFORE]            # before any notice: the one line alone


def stop_after_header(proc, rows, sig=signal.SIGINT, header_start=HEADER_START):
    """Send sig once the header row came on rows; (status, stderr)."""
    header = readline_within(rows, 60)
    assert header.startswith(header_start), header
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_tracing_line_on_a_terminal():
    controller, terminal = pty.openpty()
    try:
        proc = start(stdout=terminal, stderr=subprocess.PIPE)
        os.close(terminal)
        with open(controller, "r", closefd=False) as rows:
            # a terminal of unknown size: the compact rows, 120 columns
            status, err = stop_after_header(proc, rows, header_start=COMPACT_HEADER)
    finally:
        os.close(controller)
    assert status == 0 and "Traceback" not in err
    assert "skbtracer: tracing, rows to stdout; Ctrl-C to stop" in err.splitlines()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_tracing_to_a_pipe(sig):
    """The clean stop; and rows to a pipe: no line about tracing."""
    proc = start(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    status, err = stop_after_header(proc, proc.stdout, sig)
    assert status == 0 and "Traceback" not in err
    assert "tracing," not in err and err.splitlines()[-1].startswith("skbtracer: 0 rows printed")
