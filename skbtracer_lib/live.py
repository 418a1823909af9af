"""Live tracing as a source of events for the run loop (session.Session):
the loaded program's ring buffer or perf buffer (events.reader), polled
until Ctrl-C, SIGTERM, -c or a failed output ends the trace, the namespace
names and probed modules looked after between polls.

Each event (Records) is decoded, and its row and JSON line are made where
the sinks need them, then handed to the sinks (session.Session.show). Where the text
rows are the only output (and not --names), the rows are made straight from
the raw bytes instead and written to the text rows sink as they come: in C
(_rows.c: a ring buffer's batch per call, ring_batch, or one record), else
in Python (RowFormatter.row_of_raw).
"""

import ctypes
import signal
import sys
import time

from . import story
from .events.decode import Event, netns_of
from .events.reader import STOP_COUNT, STOP_SLOW
from .events.textrow import Clock, RowFormatter
from .outputs import jsonl, names as netns_names, services
from .outputs.sinks import SINK_ERRORS, TextRows, make_sinks, wants_columns
from .program import probes, recorder
from .session import Session
from .story.points import DURATION_STOP
from .story.fit import is_terminal

POLL_TIMEOUT_MS = 200    # how often the loop looks at the stop flag
MODULE_CHECK_SECONDS = 1.0  # how often probed modules are looked for (unloaded, back)


def live_session(cfg, loaded, out=None, err=None, files=None, names=None, reasons=None,
                 rules=None):
    """The run loop over a loaded program (program.Loaded, or what runinfo
    describes). out: the rows' stream (stdout); files: {Config attribute:
    file} of the other outputs (sinks.open_outputs); names: the namespace
    names (default: this machine's); reasons: the drop reason names
    (default: the running kernel's); rules: --nftrace's Nftrace."""
    err = err or sys.stderr
    if names is None:
        names = netns_names.NetnsNames()     # looks nothing up until asked
    if reasons is None:
        reasons = probes.drop_reasons()
    out = out or sys.stdout
    source = LiveEvents(cfg, loaded, err, names, reasons, Clock(relative=cfg.timestamp),
                        rows_on_terminal=is_terminal(out), rules=rules)
    sinks = make_sinks(cfg, out, err, files or {}, source)
    book = story.StoryBook(names) if cfg.summary else None
    return Session(cfg, source, sinks, book, err)


class Records:
    """The records the reader hands over (the raw events), made into what
    the session's sinks take and handed to them, counted (-c)."""

    def __init__(self, cfg, loaded, err, formatter):
        self.cfg = cfg
        self.loaded = loaded
        self.err = err
        self.formatter = formatter
        self.all_stacks = cfg.stacks == "all"
        self.count = cfg.count
        self.rows = 0
        self.bad_events = 0         # events that raised while being shown
        self.session = self.book = self.json = None

    def attach(self, session, json):
        """Hand the records to session; json: the JSON lines' formatter, or
        None. What its sinks need of an event decides what is made of it."""
        self.session = session
        self.book = session.book
        self.json = json
        self.make_row = any("row" in sink.needs for sink in session.writers)
        columns = wants_columns(session.writers)
        self.row_of = self.formatter.row_with_columns if columns else self.formatter.row
        self._choose_row_path(session.writers, columns)

    def _choose_row_path(self, writers, columns):
        """Where the text rows are the only output (not --names: its labels
        are Python's; not compact rows: made of their columns in Python),
        rows from the raw bytes: in C where _rows is built (stacks too),
        else in Python (no stacks)."""
        self.rows_sink = self.rows_in_c = None
        self.raw_rows = False
        if (len(writers) != 1 or not isinstance(writers[0], TextRows) or self.cfg.names
                or columns or self.cfg.nftrace):   # --nftrace: a rule suffix made in Python
            return
        self.rows_sink = writers[0]
        self.write_text, self.write_bytes = self.rows_sink.write_text, self.rows_sink.write_bytes
        self.raw_rows = not self.cfg.stacks
        self.rows_in_c = self.formatter.in_c(self.loaded.stack if self.cfg.stacks else None,
                                             self.all_stacks)

    # -- per event (the reader's callbacks)

    def on_event(self, _cpu, data, size):
        """An event as bcc's perf reader hands it over (a ctypes callback)."""
        self.on_raw(ctypes.string_at(data, size))

    def on_raw(self, raw):
        # Called by the reader once per event: exceptions must not escape
        # (they would end the batch), so failures become flags.
        session = self.session
        if session.done:
            return
        try:
            # the rows in C, one at a time: the perf buffer's records, and
            # the ring buffer's that its batch left to Python
            made = self.rows_in_c.row(raw) if self.rows_in_c is not None else None
            if made is not None:
                if self.book is not None:
                    self.book.add_raw(raw, netns_of(raw))
                self.write_bytes(made)
            elif self.raw_rows:
                row, netns = self.formatter.row_of_raw(raw)
                if self.book is not None:
                    self.book.add_raw(raw, netns)
                self.write_text(row + "\n")
            else:
                # what the sinks need of the event, all made before any is
                # written: a failure leaves neither a row nor its JSON line
                # half done (inline: the per-event path)
                event = Event(raw)
                stack = None
                if event.stack_id != -1 or self.all_stacks:
                    stack = self.loaded.stack(event.stack_id)
                line = self.json.line(event, stack) if self.json is not None else None
                row = self.row_of(event) if self.make_row else None
                if not session.show(event, raw, row, stack, line):
                    return
        except SINK_ERRORS as e:        # the rows' own writes, above
            session.broke(self.rows_sink, e)
            return
        except Exception as e:  # garbage from the kernel or a bug: not the end of the trace
            self._bad_event(e)
            return
        self.rows += 1
        if self.count is not None and self.rows >= self.count:
            session.stop_by("-c")

    def ring_batch(self, data, base, mask, position, producer, max_records):
        """The text rows of many ring buffer records at once, in C (the
        reader's batch: reader.RingBufferReader); what on_raw does for one."""
        session = self.session
        if session.done:
            wanted = 0                  # records are passed over
        elif self.count is not None:
            wanted = self.count - self.rows
        else:
            wanted = -1
        try:
            position, records, rows, text, raws, netns, stop = self.rows_in_c.ring(
                data, base, mask, position, producer, wanted, max_records, self.book is not None)
        except Exception:   # (only MemoryError is raised there) Python's path
            return position, 0, STOP_SLOW           # shows the record, or counts it
        if raws:
            self.book.add_batch(raws, netns)
        try:
            if text:
                self.write_bytes(text)
        except SINK_ERRORS as e:
            session.broke(self.rows_sink, e)
        self.rows += rows
        if stop == STOP_COUNT:
            session.stop_by("-c")
        return position, records, stop

    def _bad_event(self, error):
        self.bad_events += 1
        if self.bad_events == 1:
            self.err.write("skbtracer: cannot show an event (%s: %s); tracing goes on, "
                           "the count of such events is at exit\n"
                           % (type(error).__name__, error))
            self.err.flush()


class IntervalSummary:
    """--interval: every so many seconds one line on stderr of what the
    run has done so far, and since the last line."""

    def __init__(self, interval, err):
        self.interval = interval
        self.err = err
        self.due = time.monotonic() + interval
        self.rows = self.lost = 0
        self.recorded = None        # --on-trouble: the recorder's counts at the last line

    def tick(self, source):
        now = time.monotonic()
        if now < self.due:
            return
        self.due += self.interval
        if self.due <= now:             # no burst of lines after a stall
            self.due = now + self.interval
        self.err.write("skbtracer: %s\n" % self.line(source))
        self.err.flush()

    def line(self, source):
        rows = source.records.rows
        lost = max(source.lost, source.loaded.lost_events())
        parts = ["%s: %d rows printed (+%d in %g s)" % (
                     time.strftime("%H:%M:%S"), rows, rows - self.rows, self.interval),
                 "%d events lost (+%d)" % (lost, lost - self.lost)]
        self.rows, self.lost = rows, lost
        if source.cfg.on_trouble:
            recorded = source.loaded.recorder_counts()
            parts.append(recorder.summary(recorded, self.recorded or dict.fromkeys(recorded, 0)))
            self.recorded = recorded
        bad = source.records.bad_events
        if bad:
            parts.append("%d events could not be shown" % bad)
        book = source.session.book
        if book is not None and book.beyond:
            parts.append("%d events past the story's limit of %d" % (book.beyond, book.limit))
        return ", ".join(parts)


class LiveEvents:
    """The events of a loaded program, read until the trace ends: the
    source of a live session (see session.py); records: what is made of
    each event."""

    failure_note = "; tracing stopped, the complete rows before it are kept"

    def __init__(self, cfg, loaded, err, names, reasons, clock, rows_on_terminal=False,
                 rules=None):
        self.cfg = cfg
        self.loaded = loaded
        self.err = err
        self.names = names
        self.reasons = reasons
        self.clock = clock
        formatter = RowFormatter(loaded.info.probe_names, reasons, loaded.symbolize, clock,
                                 names=names if cfg.names else None, ct=cfg.ct, rules=rules)
        self.rules = rules
        self.records = Records(cfg, loaded, err, formatter)
        self.session = self.json = None
        self.lost = 0
        self.stopping = False       # leave the poll loop
        self.stopped_by = None      # the signal that did: "Ctrl-C", "SIGTERM"; or --duration
        self.rows_on_terminal = rows_on_terminal  # say when tracing starts (the header comes late)
        self.ended_ns = None
        self.modules_checked = time.monotonic()
        self.summary = IntervalSummary(cfg.interval, err) if cfg.interval else None
        self.sweep = None           # --slow: the recorder's sweep of stuck skbs
        self.poll_ms = POLL_TIMEOUT_MS

    def attach(self, session):
        """Hand the events to session (its sinks: JSON lines or not)."""
        self.session = session
        if any("line" in sink.needs for sink in session.writers):
            self.json = jsonl.JsonFormatter(self.records.formatter, self.names,
                                            node=self.cfg.node, rules=self.rules)
        self.records.attach(session, self.json)

    def on_lost(self, count):
        self.lost += count

    # -- the poll loop

    def read(self, session):
        """Read events until Ctrl-C/SIGTERM, -c, --duration or a failed
        output ends the trace."""
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        reader = None
        try:
            records = self.records
            batch = records.ring_batch if records.rows_in_c is not None else None
            reader = self.loaded.open_reader(records.on_raw, self.on_lost, batch=batch)
            if self.cfg.on_trouble and self.cfg.slow_ns is not None:
                self.sweep = self.loaded.recorder_sweep(self.cfg.slow_ns, records.on_raw)
                self.poll_ms = min(POLL_TIMEOUT_MS, max(1, self.sweep.period_ns // 10**6))
            if session.start(self.start_object()):
                self._say_tracing()
                self._poll(reader, session)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if reader is not None:
                reader.close()
        self.lost = max(self.lost, self.loaded.lost_events())
        self.ended_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)

    def _poll(self, reader, session):
        duration = self.cfg.duration
        deadline = None if duration is None else time.monotonic() + duration
        while not self.stopping and not session.done:
            timeout = self.poll_ms
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:       # as a signal stops it: what is in the ring is read
                    self.stopped_by = self.stopped_by or DURATION_STOP % duration
                    break
                timeout = min(timeout, max(1, int(left * 1000)))
            reader.wait(timeout)
            self._read(reader)
            self._between_polls()
        if not session.done:
            self._read(reader)    # what is still in the ring
        session.flush()

    def _read(self, reader):
        """What the ring holds, named as namespaces are now (a namespace
        deleted while the loop waited may have left its number to another)."""
        self.names.forget_if_changed()
        reader.read()

    def _between_polls(self):
        """Flush what the poll (and --slow's sweep) wrote; the work that is
        not per event."""
        if self.sweep is not None:
            self.sweep.tick()
        self.session.flush()
        self.names.retry()
        self._watch_modules()
        if self.summary is not None:
            self.summary.tick(self)

    def _watch_modules(self):
        now = time.monotonic()
        if now - self.modules_checked < MODULE_CHECK_SECONDS:
            return
        self.modules_checked = now
        for line in self.loaded.watch_modules():
            self.err.write("skbtracer: %s\n" % line)
            self.err.flush()

    def stop(self):
        """Leave the poll loop (what Ctrl-C and SIGTERM do)."""
        self.stopping = True

    def _on_signal(self, signum, _frame):
        if self.stopped_by is None:
            self.stopped_by = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        self.stop()

    def _say_tracing(self):
        """That tracing started, and where the rows go: to a file, as JSON
        lines, or to a terminal (text rows to a pipe or a file: nothing, as
        the original tool)."""
        json_rows = self.cfg.json == "-"
        if json_rows or self.cfg.output or self.rows_on_terminal:
            until = "" if self.cfg.duration is None else " (or after %g s)" % self.cfg.duration
            self.err.write("skbtracer: tracing, %s to %s; Ctrl-C to stop%s\n"
                           % ("JSON lines" if json_rows else "rows", self.cfg.output or "stdout",
                              until))
            self.err.flush()

    # -- what the loop asks at exit

    def caveats(self, book):
        """What this run could not see, for "vanished" verdicts."""
        return self.loaded.info.unseen(self.cfg, self.lost, book.beyond, book.limit)

    def story_extras(self):
        """--names: the Services' names from kube-proxy's rules (read at exit);
        --nftrace: the rules that decided (nftrace.Nftrace)."""
        extras = {} if self.rules is None else {"rules": self.rules}
        if self.cfg.names:
            extras["service_name"] = services.ServiceNames(self.names.path, self._verbose_note)
        return extras

    def _verbose_note(self, text):
        if self.cfg.verbose:
            self.err.write("skbtracer: note: %s\n" % text)

    def start_object(self):
        """The JSON start object: what -r needs to tell the same story later."""
        if self.json is None:
            return None
        info = self.loaded.info
        return jsonl.start_object(
            info.backend, node=self.json.node, run_id=self.json.run_id,
            probes=list(info.probe_names), attached=sorted(info.attached_names),
            modes=sorted(self.cfg.modes), iptable_traced=info.iptable_traced,
            **({"nftrace": True} if self.rules is not None else {}),   # -r: rules saved
            # --all/--func: which probes are extra functions, so that -r tells
            # their rows as this run does (absent without them)
            **({"functions": info.extra_names} if info.extra_names else {}))

    def end_object(self, caveats, stopped_by=None):
        if self.json is None:
            return None
        return jsonl.end_object(self.json.node, self.json.run_id, self.ended_ns, self.lost,
                                caveats, stopped_by)

    def exit_line(self):
        bad = self.records.bad_events
        unshown = ", %d events could not be shown" % bad if bad else ""
        told = ", " + recorder.summary(self.loaded.recorder_counts()) if self.cfg.on_trouble else ""
        return "%d rows printed, %d events lost%s%s" % (self.records.rows, self.lost, told, unshown)
