"""The tracing loop: read the perf buffer, print rows (text or JSON), stop
on -c, Ctrl-C or SIGTERM, tell the packets' story, and say at exit how many
rows were printed and lost."""

import ctypes
import gc
import signal
import sys
import time

from .events import Event
from .output import HEADER, Clock, RowFormatter
from . import jsonout, names, probes, story

PERF_PAGES = 64          # per CPU; 256 KiB with 4 KiB pages
POLL_TIMEOUT_MS = 200    # how often the loop looks at the stop flag
SLOW_STORY_EVENTS = 20000  # say so before grouping more events than this at exit


class Session:
    def __init__(self, cfg, loaded, out=None, err=None, json_out=None):
        self.cfg = cfg
        self.loaded = loaded
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.json_out = json_out            # --json=FILE: JSON lines beside the rows
        self.clock = Clock(relative=cfg.timestamp)
        need_names = cfg.names or cfg.json or cfg.summary
        self.names = names.NetnsNames() if need_names else None
        probe_names = loaded.program.probe_names
        self.formatter = RowFormatter(probe_names, probes.drop_reasons(), loaded.symbolize,
                                      self.clock, names=self.names if cfg.names else None)
        self.json = None
        if cfg.json:
            self.json = jsonout.JsonFormatter(self.formatter, self.names)
        self.json_rows = cfg.json == "-"     # JSON instead of the text rows
        self.book = story.StoryBook(self.names) if cfg.summary else None
        self.rows = 0
        self.lost = 0
        self.stopping = False      # leave the poll loop
        self.done = False          # -c reached or the pipe closed: print no more
        self.pipe_closed = False

    def _on_event(self, _cpu, data, size):
        # Runs as a ctypes callback: exceptions must not escape (bcc would
        # print and swallow them), so failures become flags.
        if self.done:
            return
        try:
            raw = ctypes.string_at(data, size)
            event = Event(raw)
            if self.book is not None:
                self.book.add(event, raw)
            stack = None
            if event.stack_id != -1 or self.cfg.stacks == "all":
                stack = self.loaded.stack(event.stack_id)
            if self.json is not None:
                line = self.json.line(event, stack) + "\n"
                if self.json_out is not None:
                    self.json_out.write(line)
            if self.json_rows:
                self.out.write(line)
            elif stack is None:
                self.out.write(self.formatter.row(event) + "\n")
            else:
                lines = [self.formatter.row(event)] + self.formatter.stack_lines(stack)
                self.out.write("\n".join(lines) + "\n")
        except BrokenPipeError:
            self.pipe_closed = self.stopping = self.done = True
            return
        self.rows += 1
        if self.cfg.count is not None and self.rows >= self.cfg.count:
            self.stopping = self.done = True

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
            if not self.json_rows:
                self._write(HEADER + "\n")
            if self.json is not None:
                start = jsonout.dumps(jsonout.start_object(self.loaded.program.backend)) + "\n"
                if self.json_out is not None:
                    self.json_out.write(start)
                if self.json_rows:
                    self._write(start)
            if self.json_rows or self.cfg.output:
                where = self.cfg.output or "stdout"
                self.err.write("skbtracer: tracing, %s to %s; Ctrl-C to stop\n"
                               % ("JSON lines" if self.json_rows else "rows", where))
                self.err.flush()
            while not self.stopping:
                bpf.perf_buffer_poll(timeout=POLL_TIMEOUT_MS)
                self._write("")
                if self.json_out is not None:
                    self.json_out.flush()
                if self.names is not None:
                    self.names.retry()
                if self.book is not None:
                    self.book.trim()
            if not self.done:
                bpf.perf_buffer_poll(timeout=0)   # what is still in the ring
                self._write("")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.lost = max(self.lost, self.loaded.lost_events())
        self.ended_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if self.book is not None:
            self._tell_story()
        self.err.write("skbtracer: %d rows printed, %d events lost\n" % (self.rows, self.lost))
        if self.cfg.output:
            self.err.write("skbtracer: rows written to %s\n" % self.cfg.output)
        if self.json_out is not None:
            self.err.write("skbtracer: JSON lines written to %s\n" % self.cfg.json)
        return 0

    # -- the packets' story, at exit

    def caveats(self):
        """What this run could not see, for "vanished" verdicts."""
        cfg = self.cfg
        attached = {probe.name for probe, _type, _target in self.loaded.attached}
        notes = []
        if "kfree_skb" not in attached or "drop" not in cfg.modes:
            notes.append("drops (not traced without --drop)")
        if "consume_skb" not in attached:
            notes.append("normal frees (no consume_skb probe)")
        queue_points = set(story.SOCKET_POINTS) - {"skb_copy_datagram_iovec"}
        if not attached & (story.LOCAL_POINTS | queue_points):
            notes.append("local delivery after a device's receive point (no ip_local_deliver, "
                         "udp_rcv ... probes on the %s backend)"
                         % getattr(self.loaded.program, "backend", "?"))
        elif not attached & queue_points:
            notes.append("datagrams queued to a socket and not yet read (no socket-queue probe)")
        if (cfg.addr is not None or cfg.port is not None) and not cfg.keep:
            notes.append("packets NAT moved out of the -H/-P filters (--keep follows them)")
        if cfg.netns is not None:
            notes.append("other namespaces (-N)")
        if cfg.pid is not None:
            notes.append("events outside process %d's context (-p)" % cfg.pid)
        if self.lost:
            notes.append("%d lost events" % self.lost)
        if self.book.beyond:
            notes.append("%d events after the story's first %d" % (self.book.beyond,
                                                                  self.book.limit))
        return notes

    def _tell_story(self):
        # Grouping makes many small linked objects; the cyclic collector would
        # walk them again and again while nothing here is garbage.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._story()
        finally:
            if collecting:
                gc.enable()

    def _story(self):
        try:
            self.book.trim()
            if len(self.book) > SLOW_STORY_EVENTS:
                self.err.write("skbtracer: grouping %d events into packets (--no-summary "
                               "skips this)\n" % len(self.book))
                self.err.flush()
            self.names.retry(force=True)
            planned = self.loaded.program.plan.probes
            told = story.build(
                self.book.events, [story.story_name(p.name, p.extra) for p in planned],
                visible={story.story_name(p.name, p.extra) for p, _t, _x in self.loaded.attached},
                extra={story.story_name(p.name, True) for p in planned if p.extra},
                label=self.names.label, symbolize=self.loaded.symbolize,
                reasons=probes.drop_reasons(), caveats=self.caveats(),
                routes_traced="route" in self.cfg.modes,
                iptable_traced=any(p.kind == "iptable" for p, _t, _x in self.loaded.attached),
                ended_ns=self.ended_ns)
            if not told.packets:
                self.err.write("skbtracer: no packets to tell about\n")
                return
            say = ["skbtracer: the story of %d packet%s in %d events (--no-summary turns it off)"
                   % (len(told.packets), "" if len(told.packets) == 1 else "s",
                      len(self.book))]
            if self.book.beyond:
                say.append("skbtracer: the story covers the first %d events; %d more were "
                           "not kept" % (self.book.limit, self.book.beyond))
            say += told.flag_lines()
            say.append(told.table())
            footnote = told.footnote()
            if footnote:
                say.append("skbtracer: " + footnote)
            if len(told.packets) > story.MAX_TABLE_PACKETS:
                say.append("skbtracer: %d more packets not in the table (--json has them all)"
                           % (len(told.packets) - story.MAX_TABLE_PACKETS))
            self.err.write("\n".join(say) + "\n")
            stream = self.out if self.json_rows else self.json_out
            if stream is not None and not self.pipe_closed:
                lines = [jsonout.dumps(obj) for obj in jsonout.story_objects(told)]
                stream.write("\n".join(lines) + "\n")
                stream.flush()
        except KeyboardInterrupt:
            self.err.write("skbtracer: story interrupted\n")
        except BrokenPipeError:
            self.pipe_closed = True
        except Exception as e:  # a bug here must not cost the rows or the exit line
            self.err.write("skbtracer: cannot tell the packets' story: %s: %s\n"
                           % (type(e).__name__, e))

    def _write(self, text):
        if self.pipe_closed:
            return
        try:
            if text:
                self.out.write(text)
            self.out.flush()   # rows reach `| grep` promptly
        except BrokenPipeError:
            self.pipe_closed = self.stopping = self.done = True
