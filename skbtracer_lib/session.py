"""The tracing loop: read the events (reader.py), print rows (text or JSON), stop
on -c, Ctrl-C or SIGTERM, tell the packets' story, and say at exit how many
rows were printed and lost."""

import ctypes
import gc
import signal
import sys
import time

from . import story
from .events.decode import Event, netns_of
from .events.reader import STOP_COUNT, STOP_SLOW
from .events.textrow import HEADER, Clock, RowFormatter
from .outputs import capture, jsonl, names
from .outputs.files import OutputError, bytes_writer, line_sink
from .program import probes
from .story import latency
from .story.fit import terminal_width

POLL_TIMEOUT_MS = 200    # how often the loop looks at the stop flag
SLOW_STORY_EVENTS = 20000  # say so before grouping more events than this at exit
MODULE_CHECK_SECONDS = 1.0  # how often probed modules are looked for (unloaded, back)


class Session:
    def __init__(self, cfg, loaded, out=None, err=None, json_out=None, capture_file=None):
        self.cfg = cfg
        self.loaded = loaded
        where = ("-o/--output: cannot write %r" % cfg.output if cfg.output
                 else "cannot write to stdout")
        self.out = line_sink(out or sys.stdout, where)
        self._write_rows = bytes_writer(self.out)
        self.err = err or sys.stderr
        self.json_out = None                # --json=FILE: JSON lines beside the rows
        if json_out is not None:
            self.json_out = line_sink(json_out, "--json: cannot write %r" % cfg.json)
        self.clock = Clock(relative=cfg.timestamp)
        need_names = cfg.names or cfg.json or cfg.summary or capture_file is not None
        self.names = names.NetnsNames() if need_names else None
        info = loaded.info
        probe_names = info.probe_names
        self.formatter = RowFormatter(probe_names, self.drop_reasons(), loaded.symbolize,
                                      self.clock, names=self.names if cfg.names else None)
        self.json = None
        if cfg.json:
            self.json = jsonl.JsonFormatter(self.formatter, self.names, node=cfg.node)
        self.json_rows = cfg.json == "-"     # JSON instead of the text rows
        self.book = story.StoryBook(self.names) if cfg.summary else None
        self.capture = None                 # -w: pcapng beside the rows
        self.capture_error = None
        if capture_file is not None:
            self.capture = capture.PcapngWriter(
                capture_file, info.capture_bytes, probe_names,
                label=self.names.label, wall_ns=self.clock.wall_ns)
        # plain text rows (the default): made from the raw bytes, no Event
        text_only = self.json is None and capture_file is None and not cfg.names
        self.raw_rows = text_only and not cfg.stacks
        # ... and where _rows.c is built, a ring buffer's batch in one call,
        # stacks too
        self.rows_in_c = None
        if text_only:
            self.rows_in_c = self.formatter.in_c(loaded.stack if cfg.stacks else None,
                                                 cfg.stacks == "all")
        self.rows = 0
        self.lost = 0
        self.stopping = False      # leave the poll loop
        self.done = False          # -c reached or the pipe closed: print no more
        self.pipe_closed = False
        self.failed = None         # the OutputError that ended the trace
        self.bad_events = 0        # events that raised while being shown
        self.modules_checked = time.monotonic()
        self.stopped_by = None     # what ended the trace: "-c", "Ctrl-C", "SIGTERM" ...

    def _on_event(self, _cpu, data, size):
        """An event as bcc's perf reader hands it over (a ctypes callback)."""
        self._on_raw(ctypes.string_at(data, size))

    def _on_raw(self, raw):
        # Called by the reader once per event: exceptions must not escape
        # (they would end the batch), so failures become flags.
        if self.done:
            return
        try:
            # the rows in C, one at a time: the perf buffer's records, and
            # the ring buffer's that its batch left to Python
            made = self.rows_in_c.row(raw) if self.rows_in_c is not None else None
            if made is not None:
                if self.book is not None:
                    self.book.add_raw(raw, netns_of(raw))
                self._write_rows(made)
            elif self.raw_rows:
                row, netns = self.formatter.row_of_raw(raw)
                if self.book is not None:
                    self.book.add_raw(raw, netns)
                self.out.write(row + "\n")
            else:
                self._show(raw)
        except (BrokenPipeError, OutputError) as e:
            self._output_stopped(e)
            return
        except Exception as e:  # garbage from the kernel or a bug: not the end of the trace
            self._bad_event(e)
            return
        self.rows += 1
        if self.cfg.count is not None and self.rows >= self.cfg.count:
            self._stopped_by("-c")

    def ring_batch(self, data, base, mask, position, producer, max_records):
        """The text rows of many ring buffer records at once, in C (the
        reader's batch: reader.RingBufferReader); what _on_raw does for one."""
        if self.done:
            wanted = 0                  # records are passed over
        elif self.cfg.count is not None:
            wanted = self.cfg.count - self.rows
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
                self._write_rows(text)
        except (BrokenPipeError, OutputError) as e:
            self._output_stopped(e)
        self.rows += rows
        if stop == STOP_COUNT:
            self._stopped_by("-c")
        return position, records, stop

    def _show(self, raw):
        """The event's row or JSON line, its stack, -w's packet, the story's copy."""
        event = Event(raw)
        stack = None
        if event.stack_id != -1 or self.cfg.stacks == "all":
            stack = self.loaded.stack(event.stack_id)
        # every line is made before any is written: a failure leaves
        # neither the row nor its JSON line half done
        line = None
        if self.json is not None:
            line = self.json.line(event, stack) + "\n"
        row = None
        if self.capture is not None:
            row = self.formatter.row(event)
        if self.json_rows:
            text = line
        elif stack is None:
            text = (row or self.formatter.row(event)) + "\n"
        else:
            text = "\n".join([row or self.formatter.row(event)]
                             + self.formatter.stack_lines(stack)) + "\n"
        if self.book is not None:
            self.book.add(event, raw)
        if self.json_out is not None:
            self.json_out.write(line)
        if self.capture is not None:
            self.capture.add(event, raw, row)
        self.out.write(text)

    def _bad_event(self, error):
        self.bad_events += 1
        if self.bad_events == 1:
            self.err.write("skbtracer: cannot show an event (%s: %s); tracing goes on, "
                           "the count of such events is at exit\n"
                           % (type(error).__name__, error))
            self.err.flush()

    def _watch_modules(self):
        now = time.monotonic()
        if now - self.modules_checked < MODULE_CHECK_SECONDS:
            return
        self.modules_checked = now
        for line in self.loaded.watch_modules():
            self.err.write("skbtracer: %s\n" % line)
            self.err.flush()

    def _on_lost(self, count):
        self.lost += count

    def _stop(self, signum, _frame):
        if self.stopped_by is None:
            self.stopped_by = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        self.stopping = True

    def _stopped_by(self, what):
        """-c reached: print no more; the story says what it cut off."""
        if self.stopped_by is None:
            self.stopped_by = what
        self.stopping = self.done = True

    def run(self):
        if self.capture is not None:
            self._flush_capture(self.capture.start)
            if self.capture_error:
                return self._capture_failed()
        self._trace()
        self.lost = max(self.lost, self.loaded.lost_events())
        self.ended_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if self.failed is not None:
            for sink in (self.out, self.json_out):   # the one that still works
                try:
                    if sink is not None:
                        sink.flush()
                except (OSError, OutputError):
                    pass
            self.err.write("skbtracer: %s; tracing stopped, the complete rows before it "
                           "are kept\n" % self.failed)
            return 1
        if self.book is not None:
            self._tell_story()
        if self.failed is not None:
            self.err.write("skbtracer: %s (the story at exit)\n" % self.failed)
            return 1
        self._write_end_object()
        return self._say_where_it_went()

    def _trace(self):
        """Read events until Ctrl-C/SIGTERM, -c or -T/-t end the trace."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        events = None
        try:
            batch = self.ring_batch if self.rows_in_c is not None else None
            events = self.loaded.open_reader(self._on_raw, self._on_lost, batch=batch)
            self._write_heads()
            while not self.stopping:
                events.poll(POLL_TIMEOUT_MS)
                self._between_polls()
            if not self.done:
                events.poll(0)   # what is still in the ring
                self._write("")
            if self.capture is not None:
                self._flush_capture(self.capture.flush)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if events is not None:
                events.close()

    def _write_heads(self):
        """The header row or the JSON start object, and where the rows go."""
        if not self.json_rows:
            self._write(HEADER + "\n")
        if self.json is not None:
            start = jsonl.dumps(self._start_object()) + "\n"
            if self.json_out is not None:
                self.json_out.write(start)
            if self.json_rows:
                self._write(start)
        if self.json_rows or self.cfg.output:
            where = self.cfg.output or "stdout"
            self.err.write("skbtracer: tracing, %s to %s; Ctrl-C to stop\n"
                           % ("JSON lines" if self.json_rows else "rows", where))
            self.err.flush()

    def _between_polls(self):
        """Flush what the poll wrote; the work that is not per event."""
        self._write("")
        if self.capture is not None:
            self._flush_capture(self.capture.flush)
        if self.names is not None:
            self.names.retry()
        self._watch_modules()
        if self.book is not None:
            self.book.trim()

    def _say_where_it_went(self):
        """The exit lines: rows printed and lost, the files written."""
        unshown = ", %d events could not be shown" % self.bad_events if self.bad_events else ""
        self.err.write("skbtracer: %d rows printed, %d events lost%s\n"
                       % (self.rows, self.lost, unshown))
        if self.cfg.output:
            self.err.write("skbtracer: rows written to %s\n" % self.cfg.output)
        if self.json_out is not None:
            self.err.write("skbtracer: JSON lines written to %s\n" % self.cfg.json)
        if self.capture is not None:
            if self.capture_error:
                return self._capture_failed()
            self.err.write("skbtracer: %d packets written to %s\n"
                           % (self.capture.packets, self.cfg.write))
        return 0

    # -- -w

    def _flush_capture(self, write):
        """Write what the capture holds; a failure ends the trace (the file
        keeps the blocks written before)."""
        if self.capture_error:
            return
        try:
            write()
        except capture.CaptureError as e:
            self.capture_error = e
            self.stopping = self.done = True

    def _capture_failed(self):
        self.err.write("skbtracer: -w/--write: cannot write %r: %s; it holds the first %d "
                       "packets, complete\n" % (self.cfg.write, self.capture_error,
                                                self.capture.packets))
        return 1

    # -- where -r (replay.ReplaySession) tells the story from saved events

    def drop_reasons(self):
        return probes.drop_reasons()

    def story_arguments(self):
        return {}

    def story_probes(self):
        """(probe names, the names attached, --all/--func names), as the
        story knows them."""
        return self.loaded.info.story_probes()

    # -- what -r needs to tell the same story later

    def _start_object(self):
        info = self.loaded.info
        return jsonl.start_object(
            info.backend, node=self.json.node, run_id=self.json.run_id,
            probes=list(info.probe_names), attached=sorted(info.attached_names),
            modes=sorted(self.cfg.modes), iptable_traced=info.iptable_traced,
            # --all/--func: which probes are extra functions, so that -r tells
            # their rows as this run does (absent without them)
            **({"functions": info.extra_names} if info.extra_names else {}))

    def _write_end_object(self):
        if self.json is None or self.pipe_closed:
            return
        caveats = self.caveats() if self.book is not None else []
        line = jsonl.dumps(jsonl.end_object(self.json.node, self.json.run_id, self.ended_ns,
                                            self.lost, caveats, self.stopped_by)) + "\n"
        try:
            for stream in ((self.out,) if self.json_rows else ()) + (
                    (self.json_out,) if self.json_out is not None else ()):
                stream.write(line)
                stream.flush()
        except BrokenPipeError:
            self.pipe_closed = True
        except OutputError as e:
            self.err.write("skbtracer: %s (the end object)\n" % e)

    # -- the packets' story, at exit

    def caveats(self):
        """What this run could not see, for "vanished" verdicts."""
        return self.loaded.info.unseen(self.cfg, self.lost, self.book.beyond, self.book.limit)

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
            names, visible, extra = self.story_probes()
            told = story.build(
                self.book.events, names, visible=visible, extra=extra,
                label=self.names.label, symbolize=self.loaded.symbolize,
                reasons=self.drop_reasons(), caveats=self.caveats(),
                routes_traced="route" in self.cfg.modes,
                iptable_traced=self.loaded.info.iptable_traced,
                ended_ns=self.ended_ns, stopped_by=self.stopped_by, **self.story_arguments())
            self.last_story = told
            if not told.packets:
                self.err.write("skbtracer: no packets to tell about\n")
                return
            width = self.cfg.width or terminal_width(self.err)
            say = story.exit_lines(told, len(self.book), self.book.beyond, self.book.limit,
                                   width, self.cfg.story_per_packet)
            say += latency.story_lines(told, self.cfg.latency, width)
            self.err.write("\n".join(say) + "\n")
            if self.capture is not None:
                self._flush_capture(lambda: self.capture.write_story(say))
            stream = self.out if self.json_rows else self.json_out
            if stream is not None and not self.pipe_closed:
                lines = [jsonl.dumps(latency.with_hops(obj, told))
                         for obj in story.story_objects(told)]
                stream.write("\n".join(lines) + "\n")
                stream.flush()
        except KeyboardInterrupt:
            self.err.write("skbtracer: story interrupted\n")
        except BrokenPipeError:
            self.pipe_closed = True
        except OutputError as e:
            self.failed = e
        except Exception as e:  # a bug here must not cost the rows or the exit line
            self.err.write("skbtracer: cannot tell the packets' story: %s: %s\n"
                           % (type(e).__name__, e))

    def _write(self, text):
        """text (may be empty) to the rows, then both sinks flushed: rows
        reach `| grep` promptly."""
        if self.failed is not None:
            return
        try:
            if self.json_out is not None:
                self.json_out.flush()
            if self.pipe_closed:
                return
            if text:
                self.out.write(text)
            self.out.flush()
        except (BrokenPipeError, OutputError) as e:
            self._output_stopped(e)

    def _output_stopped(self, error):
        """Rows cannot be written any more: the reader went (`| head`,
        BrokenPipeError) or the file failed (OutputError, kept for exit)."""
        if isinstance(error, BrokenPipeError):
            self.pipe_closed = True
        else:
            self.failed = error
        self._stopped_by("the output closed" if self.pipe_closed else "an output error")
