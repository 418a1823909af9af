"""Run skbtracer.py as a user would (a subprocess), wait until it is
attached, stop it with SIGINT, and parse its rows.

Used by the end-to-end tests and the README's demo."""

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

# Every start of this process, for the suite's cost table (tests/kernel/
# conftest.py prints it): (test id, seconds to the header, seconds running).
STARTS = []

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKBTRACER = os.path.join(REPO, "skbtracer.py")
PYTHON = "/usr/bin/python3"      # Debian's python, the one bcc is built for
HEADER_START = "time       NETWORK_NS"

ROW = re.compile(r"^\[(?P<time>[^\]]*)\]\[(?P<netns>[^\]]*)\] (?P<ifname>.{12}) "
                 r"(?P<dmac>.{12}) (?P<pkt>\S+)\s+(?P<skb>[0-9a-f]+)\.(?P<pkt_type>\d+):"
                 r"(?P<trace>.*)$")


@dataclass
class Row:
    time: str
    netns: int
    ifname: str
    dmac: str
    pkt: str
    skb: str
    pkt_type: int
    trace: str            # function, or pf.table.HOOK.VERDICT, or kfree_skb reason=...
    stack: list = field(default_factory=list)
    line: str = ""

    @property
    def function(self):
        return self.trace.split()[0]

    @property
    def is_verdict(self):
        return bool(re.match(r"^\d+\.\S*\.[A-Z]+\.[A-Z]+$", self.trace))

    @property
    def reason(self):
        match = re.search(r"reason=(\S+)", self.trace)
        return match.group(1) if match else None


def parse_rows(text):
    rows = []
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            d = match.groupdict()
            netns = d["netns"].strip()
            rows.append(Row(d["time"].strip(), int(netns) if netns.isdigit() else netns,
                            d["ifname"].strip(), d["dmac"], d["pkt"], d["skb"],
                            int(d["pkt_type"]), d["trace"].strip(), line=line))
        elif line.startswith("    ") and rows:
            rows[-1].stack.append(line.strip())
    return rows


class TracerError(AssertionError):
    """skbtracer did not do what the test waited for: start, exit by itself
    (-c, a full disk, a signal the test sent) or stop on SIGINT in time."""


class TracerRun:
    """skbtracer.py in the background:

        with TracerRun(["-H", "10.244.1.2", "--proto", "udp"]) as run:
            ... make traffic ...
        run.rows, run.stderr, run.returncode

    Every wait has a timeout, and running out of it is a failure
    (TracerError), never an exit code: the tracer is then killed.
    """

    def __init__(self, args, ready_timeout=300, python=PYTHON, command=None, stop_timeout=30,
                 env=None):
        self.args = list(args)
        self.env = dict(env or {})     # on top of ours: SKBTRACER_PERF_BUFFER=1 and the like
        # command: an installed skbtracer (["/usr/sbin/skbtracer"]) instead of the checkout's
        self.command = list(command) if command else [python, SKBTRACER]
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout     # --all: detaching 1,500 kprobes under TCG takes a minute
        self.proc = None
        self._out = []
        self._err = []
        self._ready = threading.Event()
        self.returncode = None
        self.startup_seconds = None
        self.held = {}           # {"prog": ids, "link": ids} the tracer held once tracing
        self._account = []

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, exc_type, *exc):
        try:
            self.stop()
        except TracerError:
            if exc_type is None:      # else the test's own failure is the one to see
                raise

    def start(self):
        self.launch()
        self.wait_ready()

    def launch(self):
        """Start the process; wait_ready() waits for its header."""
        self._launched = time.monotonic()
        self.proc = subprocess.Popen(self.command + self.args, env=dict(os.environ, **self.env),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, self._out, True)),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self._err, False))]
        for t in self._threads:
            t.daemon = True
            t.start()

    def wait_ready(self):
        """Until the tracer is tracing (its header), or TracerError."""
        deadline = self._launched + self.ready_timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._end()
                raise TracerError("skbtracer did not start in %g s (rc=%s):\n%s"
                                  % (self.ready_timeout, self.returncode, self.stderr))
        self.startup_seconds = time.monotonic() - self._launched
        self.held = bpf_objects_of(self.proc.pid)
        self._started_at = time.monotonic()
        self._account[:] = [os.environ.get("PYTEST_CURRENT_TEST", "?"), self.startup_seconds, 0.0]
        STARTS.append(self._account)

    def _pump(self, stream, sink, watch_header):
        for line in stream:
            sink.append(line)
            if watch_header and line.startswith(HEADER_START):
                self._ready.set()

    def output_so_far(self):
        """The lines of stdout read so far, while it runs."""
        return list(self._out)

    def terminate(self):
        """SIGTERM, as a service manager ends it; then wait() for its exit."""
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout=60):
        """skbtracer's own exit code, once it exits by itself (-c, a full
        disk) or after a signal the test sent. Not exiting within timeout
        is a failure: it is killed and TracerError raised."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._end()
            raise TracerError("skbtracer did not exit within %g s (killed):\n%s"
                              % (timeout, self.stderr)) from None
        self._finish()
        return self.returncode

    def stop(self, settle=0.5):
        """Ctrl-C (SIGINT) after settle seconds for the last events; a
        tracer still there after stop_timeout is killed and TracerError
        raised."""
        if self.proc is None or self.returncode is not None:
            return
        if self.proc.poll() is None:
            time.sleep(settle)           # let the last events drain
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self._end()
                raise TracerError("skbtracer did not stop within %g s of SIGINT (killed):\n%s"
                                  % (self.stop_timeout, self.stderr)) from None
        self._finish()

    def _end(self):
        """Kill it (our own child, by PID) without asking: a failure path."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._finish()

    def _finish(self):
        for t in self._threads:
            t.join(5)
        self.returncode = self.proc.returncode
        if self._account:
            self._account[2] = time.monotonic() - self._started_at

    def left_behind(self, timeout=10):
        """The BPF programs and links this tracer held that still exist
        after its exit (bpftool's view; the kernel frees them a moment
        after the last fd closes, so this waits up to timeout for that)."""
        deadline = time.monotonic() + timeout
        while True:
            present = bpftool_ids()
            left = {kind: sorted(set(ids) & present[kind]) for kind, ids in self.held.items()}
            left = {kind: ids for kind, ids in left.items() if ids}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.2)

    @property
    def stdout(self):
        return "".join(self._out)

    @property
    def stderr(self):
        return "".join(self._err)

    @property
    def rows(self):
        return parse_rows(self.stdout)


@contextlib.contextmanager
def tracing_together(runs):
    """Several TracerRuns over the same traffic: launched at once, so their
    compiles overlap (a guest has two CPUs), all tracing inside the block,
    all stopped after it (a failure stops the others first)."""
    runs = list(runs)
    try:
        for run in runs:
            run.launch()
        for run in runs:
            run.wait_ready()
        yield runs
    except BaseException:
        for run in runs:
            if run.proc is not None and run.returncode is None:
                run._end()
        raise
    failed = []
    for run in runs:
        try:
            run.stop()
        except TracerError as e:
            failed.append(e)
    if failed:
        raise failed[0]


def readline_within(stream, timeout):
    """stream.readline(), or TracerError once timeout seconds pass without
    a line (the reading thread stays blocked until the writer is killed)."""
    line = []
    reader = threading.Thread(target=lambda: line.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not line:
        raise TracerError("no line within %g s" % timeout)
    return line[0]


def bpf_objects_of(pid):
    """{"prog": [ids], "link": [ids]} of the BPF objects a process holds
    open (its fds' fdinfo)."""
    held = {"prog": [], "link": []}
    fd_dir = "/proc/%d/fdinfo" % pid
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return held
    for name in names:
        try:
            with open(os.path.join(fd_dir, name)) as f:
                text = f.read()
        except OSError:
            continue
        for kind in held:
            match = re.search(r"^%s_id:\s+(\d+)$" % kind, text, re.M)
            if match:
                held[kind].append(int(match.group(1)))
    return held


def bpftool_ids():
    """{"prog": ids, "link": ids} the kernel has now, by bpftool."""
    found = {}
    for kind in ("prog", "link"):
        out = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True,
                             timeout=60)
        if out.returncode != 0:
            raise TracerError("bpftool %s show failed: %s" % (kind, out.stderr.strip()))
        found[kind] = {entry["id"] for entry in json.loads(out.stdout or "[]")}
    return found


KPROBE_LIST = "/sys/kernel/debug/kprobes/list"
ENABLED_FUNCTIONS = "/sys/kernel/tracing/enabled_functions"


def probe_points():
    """(kprobes registered, functions with an ftrace hook): single kprobes
    are in the first; kprobe-multi links (fprobe) only in the second. Read
    where the kernel has kprobes (the guests mount debugfs and tracefs)."""
    counts = []
    for path in (KPROBE_LIST, ENABLED_FUNCTIONS):
        with open(path) as f:
            counts.append(len(f.read().splitlines()))
    return tuple(counts)


class StderrReadyRun(TracerRun):
    """Rows go to a file: ready when skbtracer says it is tracing (stderr)."""

    def _pump(self, stream, sink, watch_header):
        for line in stream:
            sink.append(line)
            if line.startswith("skbtracer: tracing"):
                self._ready.set()


def skb_paths(rows):
    """{skb address: [rows in order]} (an address can be reused after a free;
    the tests look at short bursts where that does not matter)."""
    paths = {}
    for row in rows:
        paths.setdefault(row.skb, []).append(row)
    return paths


def is_subsequence(wanted, functions):
    """Do the wanted functions appear in this order (not necessarily adjacent)?"""
    it = iter(functions)
    return all(any(f == w for f in it) for w in wanted)
