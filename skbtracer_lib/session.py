"""The run loop: one source of events, the sinks they go to, the story at
exit and the exit lines. Live tracing and -r are the same loop over two
sources (live.LiveEvents, replay.session.SavedEvents), which have:

    attach(session)        the session it hands its events to (what its sinks
                           need of an event: session.writers' needs)
    read(session)          start the sinks (session.start) once events can
                           come, hand every event to session.show() (or its
                           ready-made rows to the text rows sink) until the
                           end, session.done or a stop; then ended_ns, lost
    loaded, names, reasons the run's probes and symbols (runinfo), its
                           namespace labels and drop reason names: the story's
    clock                  textrow.Clock: the events' times (the sinks')
    caveats(book)          what the run could not see
    stopped_by             what stopped it, as the source knows (a signal; the
                           saved runs' end objects), or None
    story_extras()         story.build's arguments only this source has
    end_object(caveats, stopped_by)   the JSON end object, or None
    exit_line(), failure_note   what is said at exit, and after a failed write
"""

import gc

from . import story
from .outputs.files import OutputError
from .outputs.sinks import SINK_ERRORS
from .story import latency
from .story.fit import terminal_width

SLOW_STORY_EVENTS = 20000  # say so before grouping more events than this at exit


class Session:
    """Events from source to sinks (outputs.sinks), the story kept in book
    (a story.StoryBook, None with --no-summary) and told at exit."""

    def __init__(self, cfg, source, sinks, book, err):
        self.cfg = cfg
        self.source = source
        self.sinks = sinks
        self.writers = [sink for sink in sinks if sink.needs]   # event() per event
        self.book = book
        self.err = err
        self.started = False
        self.done = False          # no more events: -c reached or an output failed
        self.failed = None         # the OutputError that ended the trace
        self.last_story = None
        self.stopped_by = None      # what ended the trace: "-c", "Ctrl-C", "SIGTERM" ...
        source.attach(self)

    def run(self):
        """Read, tell, end; the exit status."""
        self.source.read(self)
        if not self.started:       # a sink could not start: why, and nothing else
            self._say(*[sink.failure for sink in self.sinks if sink.failure])
            return 1
        return self.finish()

    def start(self, start_object):
        """The sinks' beginnings (header row, JSON start object, pcapng
        section), flushed; False when a sink failed to start."""
        for sink in self.sinks:
            if not self._call(sink, sink.start, start_object):
                return False
        self.started = True
        self.flush()
        return True

    def show(self, event, raw, row, stack, line):
        """One event to the book and to every sink (Sink.event's arguments);
        False when a sink failed (the event is not counted)."""
        if self.book is not None:
            self.book.add(event, raw)
        for sink in self.writers:       # (per event: _call's work inlined)
            if sink.closed:
                continue
            try:
                sink.event(event, raw, row, stack, line)
            except SINK_ERRORS as e:
                self.broke(sink, e)
                return False
        return True

    def flush(self):
        """What the sinks hold, written (between polls); the book trimmed."""
        if self.failed is None:
            for sink in self.sinks:
                if not sink.closed:
                    self._call(sink, sink.flush)
        if self.book is not None:
            self.book.trim()

    def _call(self, sink, method, *args):
        """method(*args) of sink; False when it failed (see broke())."""
        try:
            method(*args)
        except SINK_ERRORS as e:
            self.broke(sink, e)
            return False
        return True

    def broke(self, sink, error):
        """A write to sink failed: the trace stops. BrokenPipeError: its
        reader went (`| head`), quietly; OutputError: the rows cannot be
        written, the run fails; SinkFailed: that sink says why at exit."""
        sink.closed = True
        if isinstance(error, OutputError):
            self.failed = error
        self.stop_by("an output error" if self.failed is not None else "the output closed")

    def stop_by(self, what):
        """The trace ends (-c reached, an output gone): print no more; the
        story says what the stop cut off."""
        if self.stopped_by is None:
            self.stopped_by = what
        self.done = True

    # -- at exit

    def finish(self):
        """After the last event: the story, the end objects, the exit lines."""
        if self.failed is not None:
            for sink in self.sinks:      # the ones that still work
                try:
                    sink.flush()
                except (OSError, *SINK_ERRORS):
                    pass
            self._say("%s%s" % (self.failed, self.source.failure_note))
            return 1
        if self.book is not None:
            self.tell_story()
        if self.failed is not None:
            self._say("%s (the story at exit)" % self.failed)
            return 1
        self.end()
        self._say(self.source.exit_line(), *[sink.exit_line() for sink in self.sinks])
        return 1 if any(sink.failure for sink in self.sinks) else 0

    def end(self):
        """The sinks' ends: the JSON end object, the last flush."""
        caveats = self.source.caveats(self.book) if self.book is not None else []
        end_object = self.source.end_object(caveats, self.how_it_stopped())
        for sink in self.sinks:
            if sink.closed:
                continue
            try:
                sink.end(end_object)
            except BrokenPipeError:
                sink.closed = True
            except OutputError as e:
                self._say("%s (the end object)" % e)
            except SINK_ERRORS:
                pass                # said by its exit line

    def _say(self, *lines):
        for line in lines:
            if line:
                self.err.write("skbtracer: %s\n" % line)
        self.err.flush()

    # -- the packets' story

    def tell_story(self):
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
            told = self.build_story()
            self.last_story = told
            if not told.packets:
                self._say("no packets to tell about")
                return
            book = self.book
            width = self.cfg.width or terminal_width(self.err)
            lines = story.exit_lines(told, len(book), book.beyond, book.limit, width,
                                     self.cfg.story_per_packet)
            lines += latency.story_lines(told, self.cfg.latency, width)
            for sink in self.sinks:
                if not sink.closed:
                    self._call(sink, sink.story, told, lines)
        except KeyboardInterrupt:
            self._say("story interrupted")
        except Exception as e:  # a bug here must not cost the rows or the exit line
            self._say("cannot tell the packets' story: %s: %s" % (type(e).__name__, e))

    def build_story(self):
        """The story of the events in the book (story.build)."""
        book, source = self.book, self.source
        book.trim()
        if len(book) > SLOW_STORY_EVENTS:
            self._say("grouping %d events into packets (--no-summary skips this)" % len(book))
        source.names.retry(force=True)
        info = source.loaded.info
        names, visible, extra = info.story_probes()
        return story.build(
            book.events, names, visible=visible, extra=extra, label=source.names.label,
            symbolize=source.loaded.symbolize, reasons=source.reasons,
            caveats=source.caveats(book), routes_traced="route" in self.cfg.modes,
            iptable_traced=info.iptable_traced, ended_ns=source.ended_ns,
            stopped_by=self.how_it_stopped(), **source.story_extras())

    def how_it_stopped(self):
        """-c or an output (the loop's), else what the source says (a signal,
        the saved runs' end objects)."""
        return self.stopped_by or self.source.stopped_by
