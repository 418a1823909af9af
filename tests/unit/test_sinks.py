"""The outputs as sinks (outputs/sinks.py) and the run loop (session.py):
live tracing and -r hand the same events to the same sinks, in the same
order of calls; a sink that fails ends the trace as its kind of failure
says (SinkFailed: the story is still told, its line last, exit 1;
OutputError: the rows before it kept, no story, exit 1; a closed pipe:
quietly, the other outputs finished)."""

import io
import os
import sys
import tempfile

import skbt_unit_helpers  # noqa: F401  (repository on sys.path)

from skbtracer_lib import config, story
from skbtracer_lib.events.textrow import Clock
from skbtracer_lib.live import LiveEvents
from skbtracer_lib.outputs.files import OutputError
from skbtracer_lib.outputs.sinks import Sink, SinkFailed, make_sinks
from skbtracer_lib.replay import read as replay_read
from skbtracer_lib.replay.session import SavedEvents
from skbtracer_lib.session import Session

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
import goldens  # noqa: E402


class Recorder(Sink):
    """Every call it gets, in order; fail: the method that raises SinkFailed
    (on its nth call)."""

    needs = frozenset({"row"})

    def __init__(self, fail=None, nth=1):
        self.calls = []
        self.fail, self.nth = fail, nth

    def _record(self, call, *what):
        if call == self.fail and 1 + sum(c[0] == call for c in self.calls) == self.nth:
            self.failure = "recorder: cannot %s" % call
            raise SinkFailed(self.failure)
        self.calls.append((call,) + what)

    def start(self, start_object):
        self._record("start")

    def event(self, event, raw, row, stack, line):
        self._record("event", event.probe, event.skb & 0xFFFFFFFF, row)

    def flush(self):
        self._record("flush")

    def story(self, told, lines):
        self._record("story", len(told.packets), lines[0])

    def end(self, end_object):
        self._record("end")

    def exit_line(self):
        return self.failure or "recorder: %d calls" % len(self.calls)


class Feeder:
    """The reader of a live run, fed from a list: everything on the first
    poll, then the stop Ctrl-C would give."""

    def __init__(self, raws, handle, stop):
        self.raws, self.handle, self.stop = list(raws), handle, stop

    def wait(self, _timeout):
        if not self.raws:
            self.stop()

    def read(self):
        while self.raws:
            self.handle(self.raws.pop(0))

    def close(self):
        pass


class FedLoaded(goldens.GoldenLoaded):
    def __init__(self, meta, raws):
        super().__init__(meta)
        self.raws = raws
        self.source = None

    def open_reader(self, handle, on_lost, batch=None):
        return Feeder(self.raws, handle, self.source.stop)


def live(argv, extra, out, err, files=None, case="kprobe-seed"):
    """A live session over a raw corpus case, the extra sinks after the
    flags' own ones."""
    meta, raws = goldens.read_raw(case)
    cfg = config.parse_args(["-t", "--node", "unit"] + argv)
    loaded = FedLoaded(meta, raws)
    names = goldens.fixed_names(tempfile.mkdtemp())
    source = LiveEvents(cfg, loaded, err, names, goldens.golden_reasons(), Clock(relative=True))
    loaded.source = source
    sinks = make_sinks(cfg, out, err, files or {}, source) + extra
    book = story.StoryBook(names) if cfg.summary else None
    return Session(cfg, source, sinks, book, err)


def saved(paths, argv, extra, out, err):
    """An -r session over the files, the extra sinks after the flags' own ones."""
    cfg = config.parse_args(["-t", "-r"] + paths + argv)
    runs = replay_read.read_files(cfg.read, lambda text: None)
    source = SavedEvents(cfg, runs, err)
    sinks = make_sinks(cfg, out, err, {}, source) + extra
    book = story.StoryBook(source.names) if cfg.summary else None
    return Session(cfg, source, sinks, book, err)


def order(calls):
    """The calls' kinds, repeats folded: start, event, flush, ..."""
    kinds = []
    for call in calls:
        if not kinds or kinds[-1] != call[0]:
            kinds.append(call[0])
    return kinds


def live_then_saved(tmp_path, argv, saved_argv=()):
    """A live session with argv and --json=FILE, then -r of that file with
    saved_argv, each with a Recorder: (live's, its stdout, its stderr, -r's,
    its stdout, its stderr, the file)."""
    json_file = io.StringIO()
    live_rec, out, err = Recorder(), io.StringIO(), io.StringIO()
    session = live(argv + ["--json=unit.jsonl"], [live_rec], out, err, files={"json": json_file})
    assert session.run() == 0, err.getvalue()
    path = tmp_path / "live.jsonl"
    path.write_text(json_file.getvalue())
    saved_rec, saved_out, saved_err = Recorder(), io.StringIO(), io.StringIO()
    assert saved([str(path)], list(saved_argv), [saved_rec], saved_out, saved_err).run() == 0
    return live_rec, out, err, saved_rec, saved_out, saved_err, path


def test_live_and_saved_events_reach_the_same_sinks_alike(tmp_path):
    live_rec, out, err, saved_rec, saved_out, saved_err, path = live_then_saved(
        tmp_path, ["--route", "--iptable", "--drop"])

    live_events = [c for c in live_rec.calls if c[0] == "event"]
    saved_events = [c for c in saved_rec.calls if c[0] == "event"]
    assert len(live_events) == len(goldens.read_raw("kprobe-seed")[1])
    # the same rows (probe numbers are each run's own: compared by the rows)
    assert [c[2:] for c in live_events] == [c[2:] for c in saved_events]
    assert out.getvalue() == saved_out.getvalue()
    story_of = [c for c in live_rec.calls if c[0] == "story"]
    assert story_of == [c for c in saved_rec.calls if c[0] == "story"] and story_of[0][1] == 4
    for rec in (live_rec, saved_rec):
        assert order(rec.calls)[:3] == ["start", "flush", "event"]   # the header, flushed
        assert order(rec.calls)[-3:] == ["flush", "story", "end"]
    assert err.getvalue().endswith("skbtracer: %d rows printed, 0 events lost\n"
                                   "skbtracer: JSON lines written to unit.jsonl\n"
                                   "skbtracer: recorder: %d calls\n"
                                   % (len(live_events), len(live_rec.calls)))
    assert saved_err.getvalue().endswith(
        "skbtracer: %d rows read from %s, 0 events lost while tracing\n"
        "skbtracer: recorder: %d calls\n" % (len(saved_events), path, len(saved_rec.calls)))


def test_a_sink_that_fails_stops_the_trace_and_says_why_last():
    for session_of in (
            lambda extra, out, err: live(["--route", "--drop"], extra, out, err),
            lambda extra, out, err: saved([goldens.corpus("drops-tracepoint.jsonl")], [],
                                          extra, out, err)):
        # the flush after the header's goes, the one after the events fails
        failing, out, err = Recorder(fail="flush", nth=2), io.StringIO(), io.StringIO()
        assert session_of([failing], out, err).run() == 1
        said = err.getvalue().splitlines()
        assert "the story of" in err.getvalue()          # the others finish
        assert said[-1] == "skbtracer: recorder: cannot flush", said[-3:]
        assert "rows" in said[-2]
        assert "Traceback" not in err.getvalue()


def test_a_sink_that_cannot_start_is_the_only_thing_said():
    failing, out, err = Recorder(fail="start"), io.StringIO(), io.StringIO()
    assert live([], [failing], out, err).run() == 1
    assert err.getvalue() == "skbtracer: recorder: cannot start\n"
    assert failing.calls == []


class FailingStream(io.StringIO):
    """Rows that stop being written after a few flushes."""

    def __init__(self, error, flushes=1):
        super().__init__()
        self.error, self.flushes = error, flushes

    def flush(self):
        self.flushes -= 1
        if self.flushes < 0:
            raise self.error


def test_rows_that_cannot_be_written_end_the_run_without_a_story():
    full = OutputError("-o/--output: cannot write 'rows.txt': No space left on device")
    out, err = FailingStream(full), io.StringIO()
    assert live(["--route", "--drop"], [], out, err).run() == 1
    assert err.getvalue() == ("skbtracer: %s; tracing stopped, the complete rows before it "
                              "are kept\n" % full)
    out, err = FailingStream(full, flushes=0), io.StringIO()
    assert saved([goldens.corpus("drops-tracepoint.jsonl")], [], [], out, err).run() == 1
    assert err.getvalue() == "skbtracer: %s\n" % full


def test_a_closed_pipe_is_quiet_and_the_json_file_is_finished():
    out, err, json_file = FailingStream(BrokenPipeError()), io.StringIO(), io.StringIO()
    session = live(["--route", "--drop", "--json=unit.jsonl"], [], out, err,
                   files={"json": json_file})
    assert session.run() == 0
    kinds = [line.split('"', 4)[3] for line in json_file.getvalue().splitlines()]
    assert kinds[0] == "start" and kinds[-1] == "end" and "summary" in kinds
    assert "Traceback" not in err.getvalue() and "Broken pipe" not in err.getvalue()
    assert "the story of" in err.getvalue()


def test_read_refuses_the_live_outputs(tmp_path):
    for flag in ("-w", "--json=%s" % (tmp_path / "x.jsonl")):
        argv = ["-r", str(tmp_path / "a.jsonl")] + (
            [flag, str(tmp_path / "x.pcapng")] if flag == "-w" else [flag])
        result = skbt_unit_helpers.run_cli(*argv)
        skbt_unit_helpers.assert_usage_error(result, "applies only while tracing")


def test_compact_rows_live_and_saved_and_the_other_sinks_get_the_original(tmp_path):
    """--compact: the text rows sink writes the compact layout, live (its
    rows made in Python, of their columns) and -r alike, while another sink
    taking the row (-w's comments) gets the original row."""
    compact = ["--compact", "--width", "100"]
    live_rec, out, _err, _saved_rec, saved_out, _saved_err, _path = live_then_saved(
        tmp_path, compact, compact)
    assert out.getvalue() == saved_out.getvalue()
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["time", "NETWORK_NS", "INTERFACE", "PKT_INFO"] and len(lines) > 20
    assert max(len(line) for line in lines) <= 100
    rows = [c[3] for c in live_rec.calls if c[0] == "event"]
    assert rows and all(row.startswith("[") and "DEST_MAC" not in row for row in rows)
    plain_out = io.StringIO()
    assert live(["--json=unit.jsonl"], [], plain_out, io.StringIO(),
                files={"json": io.StringIO()}).run() == 0
    assert plain_out.getvalue().splitlines()[1:] == rows      # the original rows, as without
