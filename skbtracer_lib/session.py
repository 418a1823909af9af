"""The tracing loop: read the perf buffer, print rows, stop on -c, Ctrl-C
or SIGTERM, and say at exit how many rows were printed and lost."""

import ctypes
import signal
import sys

from .events import Event
from .output import HEADER, Clock, RowFormatter
from . import probes

PERF_PAGES = 64          # per CPU; 256 KiB with 4 KiB pages
POLL_TIMEOUT_MS = 200    # how often the loop looks at the stop flag


class Session:
    def __init__(self, cfg, loaded, out=None, err=None):
        self.cfg = cfg
        self.loaded = loaded
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.clock = Clock(relative=cfg.timestamp)
        self.formatter = RowFormatter(loaded.program.probe_names, probes.drop_reasons(),
                                      loaded.symbolize, self.clock)
        self.rows = 0
        self.lost = 0
        self.stopping = False
        self.pipe_closed = False

    def _on_event(self, _cpu, data, size):
        # Runs as a ctypes callback: exceptions must not escape (bcc would
        # print and swallow them), so failures become flags.
        if self.stopping:
            return
        try:
            event = Event(ctypes.string_at(data, size))
            lines = [self.formatter.row(event)]
            if event.stack_id != -1 or self.cfg.stacks == "all":
                lines += self.formatter.stack_lines(self.loaded.stack(event.stack_id))
            self.out.write("\n".join(lines) + "\n")
        except BrokenPipeError:
            self.pipe_closed = self.stopping = True
            return
        self.rows += 1
        if self.cfg.count is not None and self.rows >= self.cfg.count:
            self.stopping = True

    def _on_lost(self, count):
        self.lost += count

    def _stop(self, _signum, _frame):
        self.stopping = True

    def run(self):
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        bpf = self.loaded.bpf
        try:
            bpf["events"].open_perf_buffer(self._on_event, page_cnt=PERF_PAGES,
                                           lost_cb=self._on_lost)
            self._write(HEADER + "\n")
            while not self.stopping:
                bpf.perf_buffer_poll(timeout=POLL_TIMEOUT_MS)
                self._write("")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.err.write("skbtracer: %d rows printed, %d events lost\n" % (self.rows, self.lost))
        return 0

    def _write(self, text):
        if self.pipe_closed:
            return
        try:
            if text:
                self.out.write(text)
            self.out.flush()   # rows reach `| grep` promptly
        except BrokenPipeError:
            self.pipe_closed = self.stopping = True
