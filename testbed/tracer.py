"""Run skbtracer.py as a user would (a subprocess), wait until it is
attached, stop it with SIGINT, and parse its rows.

Used by the end-to-end tests and the README's demo."""

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

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


class TracerRun:
    """skbtracer.py in the background:

        with TracerRun(["-H", "10.244.1.2", "--proto", "udp"]) as run:
            ... make traffic ...
        run.rows, run.stderr, run.returncode
    """

    def __init__(self, args, ready_timeout=300, python=PYTHON, command=None, stop_timeout=30):
        self.args = list(args)
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

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        started = time.monotonic()
        self.proc = subprocess.Popen(self.command + self.args,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, self._out, True)),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self._err, False))]
        for t in self._threads:
            t.daemon = True
            t.start()
        deadline = started + self.ready_timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("skbtracer did not start (rc=%s):\n%s" % (self.returncode, self.stderr))
        self.startup_seconds = time.monotonic() - started

    def _pump(self, stream, sink, watch_header):
        for line in stream:
            sink.append(line)
            if watch_header and line.startswith(HEADER_START):
                self._ready.set()

    def wait(self, timeout=60):
        """Wait for skbtracer to exit by itself (-c)."""
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
        for t in self._threads:
            t.join(5)
        return self.returncode

    def stop(self, settle=0.5):
        if self.proc is None or self.returncode is not None:
            return
        if self.proc.poll() is None:
            time.sleep(settle)           # let the last events drain
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(5)
        self.returncode = self.proc.returncode

    @property
    def stdout(self):
        return "".join(self._out)

    @property
    def stderr(self):
        return "".join(self._err)

    @property
    def rows(self):
        return parse_rows(self.stdout)


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
