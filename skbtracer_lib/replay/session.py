"""-r: the saved runs told as the live run would tell them."""

import sys

from .. import story
from ..events.vocabulary import L4_NUMBERS
from ..outputs import jsonl
from ..outputs.files import FileError, open_new_file
from ..events.textrow import HEADER, Clock
from ..program.probes import DropReasons
from ..runinfo import beyond_note
from ..session import Session
from ..story import merge
from .read import ReadError, read_files
from .rebuild import Rebuilder, SavedLoaded, SavedNames


def event_filter(cfg):
    """The filter flags as a test on saved event objects (-H, --proto, -P,
    --icmpid, -N, the filter expression)."""
    tests = []
    if cfg.addr is not None:
        addr = str(cfg.addr)
        tests.append(lambda o: o["saddr"] == addr or o["daddr"] == addr)
    if cfg.proto == "icmp":
        tests.append(lambda o: o["proto"] in ("icmp", "icmpv6"))
    elif cfg.proto in L4_NUMBERS:
        number = L4_NUMBERS[cfg.proto]
        tests.append(lambda o: o["l4proto"] == number)
    if cfg.port is not None:
        tests.append(lambda o: cfg.port in (o.get("sport"), o.get("dport")))
    if cfg.icmpid is not None:
        tests.append(lambda o: o.get("icmp_id") == cfg.icmpid)
    if cfg.netns_all:
        wanted = set(cfg.netns_all)
        tests.append(lambda o: str(o["netns"]) in wanted or o.get("netns_name") in wanted)
    if cfg.expression is not None:
        from . import packets
        judge = packets.ExpressionJudge(cfg.expression)
        tests.append(judge)
    return (lambda o: all(t(o) for t in tests)) if tests else None


class ReplaySession(Session):
    """Session over saved events: the same rows, story and summary."""

    def __init__(self, cfg, runs, out=None, err=None):
        several = len({r.node for r in runs}) > 1
        self.rebuilder = Rebuilder(several)
        self.runs = runs
        self.merged = merge.place_on_one_clock(runs) if several else None
        super().__init__(cfg, SavedLoaded(runs, self.rebuilder), out=out, err=err)
        self.names = SavedNames(self.rebuilder)
        self.book = story.StoryBook(self.names) if cfg.summary else None
        self.saved_caveats = []
        for run in runs:
            for note in (run.end or {}).get("caveats") or []:
                if note not in self.saved_caveats:
                    self.saved_caveats.append(note)
        self.lost = sum((r.end or {}).get("lost") or 0 for r in runs)

    def drop_reasons(self):
        return DropReasons(dict(self.rebuilder.reason_names), "the saved events")

    def caveats(self):
        notes = list(self.saved_caveats)
        if self.book is not None and self.book.beyond:
            notes.append(beyond_note(self.book.beyond, self.book.limit))
        return notes

    def story_arguments(self):
        if self.merged is None:
            return {}
        return {"enters": merge.Wire(self.names.node),
                "node_of": self.names.node}

    def timeline(self):
        """(ts_ns in the story, wall ns, run, object) of every kept event, in time order."""
        keep = event_filter(self.cfg)
        rows = []
        for run in self.runs:
            shift = self.merged.offsets[run.node] if self.merged else 0
            for obj in run.objects:
                if keep is not None and not keep(obj):
                    continue
                wall = obj["time_ns"] - shift
                ts = wall if self.merged else obj["ktime_ns"]
                rows.append((ts, wall, run, obj))
        rows.sort(key=lambda r: r[0])
        return rows

    def run(self):
        if self.merged is not None:
            for line in self.merged.report_lines():
                self.err.write("skbtracer: %s\n" % line)
        timeline = self.timeline()
        json_rows = self.json_rows
        if not json_rows:
            self._write(HEADER + "\n")
        clock = Clock(self.cfg.timestamp, offset_ns=0)    # the saved times are wall-clock times
        for ts, wall, run, obj in timeline:
            event = self.rebuilder.event(run, obj, ts)
            if self.book is not None:
                self.book.add(event)
            if json_rows:
                self._write(jsonl.dumps(obj) + "\n")
            else:
                netns = self.names.label(event.netns) if self.cfg.names else None
                text = jsonl.text_row(obj, clock.column(wall), netns)
                for symbol in obj.get("stack") or ():
                    text += "\n    " + symbol
                self._write(text + "\n")
            if self.failed is not None:
                break
            self.rows += 1
            if self.pipe_closed or (self.cfg.count is not None and self.rows >= self.cfg.count):
                break
        self.ended_ns = self._ended_ns(timeline)
        if self.failed is not None:
            self.err.write("skbtracer: %s\n" % self.failed)
            return 1
        if self.book is not None:
            self._tell_story()
        self.err.write("skbtracer: %d rows read from %s, %d events lost while tracing\n"
                       % (self.rows, ", ".join(self.cfg.read), self.lost))
        return 0

    def _ended_ns(self, timeline):
        """When tracing stopped, on the story's clock (the end objects; else
        the last event)."""
        ends = []
        for run in self.runs:
            end = (run.end or {}).get("ended_ktime_ns")
            if end is None or not run.objects:
                continue
            if self.merged is None:
                ends.append(end)
            else:
                o = run.objects[-1]
                ends.append(end - o["ktime_ns"] + o["time_ns"] - self.merged.offsets[run.node])
        last = timeline[-1][0] if timeline else 0
        return max(ends + [last])


def main(cfg):
    err = sys.stderr

    def warn(text):
        err.write("skbtracer: warning: %s\n" % text)

    try:
        runs = read_files(cfg.read, warn)
    except ReadError as e:
        err.write("skbtracer: %s\n" % e)
        return 2
    if not cfg.output:
        return ReplaySession(cfg, runs).run()
    try:        # -o FILE: opened as for a live run (no symlinks, --force to overwrite)
        out = open_new_file("-o/--output", cfg.output, cfg.force)
    except FileError as e:
        err.write("skbtracer: %s\n" % e)
        return 1
    with out:
        return ReplaySession(cfg, runs, out=out).run()
