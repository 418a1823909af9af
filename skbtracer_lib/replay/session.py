"""-r: the saved runs told as the live run would tell them: a source of
events for the run loop (session.Session), feeding the same sinks."""

import os
import sys

from .. import story
from ..events import conntrack, tunnel
from ..events.textrow import Clock, Row, full_row
from ..nftrace.decisions import row_suffix as nftrace_suffix
from ..nftrace.saved import SavedRules
from ..events.vocabulary import ICMP, ICMPV6, L4_NUMBERS, PORTED
from ..outputs import jsonl, rotate
from ..outputs.files import FileError
from ..outputs.sinks import make_sinks, open_outputs, wants_columns
from ..program.probes import DropReasons
from ..runinfo import beyond_note
from ..session import Session
from ..story import merge
from ..story.render_json import service_key
from .read import ReadError, read_files
from .rebuild import Rebuilder, SavedLoaded, SavedNames


def saved_session(cfg, runs, out=None, err=None, files=None):
    """The run loop over saved runs (read.read_files); out: the rows' stream
    (stdout); files: {Config attribute: file} of the other outputs
    (sinks.open_outputs)."""
    err = err or sys.stderr
    source = SavedEvents(cfg, runs, err)
    sinks = make_sinks(cfg, out or sys.stdout, err, files or {}, source)
    book = story.StoryBook(source.names) if cfg.summary else None
    return Session(cfg, source, sinks, book, err)


def event_filter(cfg):
    """The filter flags as a test on saved event objects (-H, --proto, -P,
    --icmpid, -N, --ct-state, --ct-mark, --ct-zone, the filter expression);
    -H, --proto and -P as the kernel program asks them: of the headers, else
    (no --header-only) of the connection's original tuple (its "ct" object's
    "orig")."""
    tests = []
    on_inner = connection_test(cfg, lambda o: (o["saddr"], o["daddr"], o["l4proto"],
                                               (o.get("sport"), o.get("dport"))))
    on_outer = connection_test(cfg, tunnel.outer_tuple)
    on_headers = on_inner
    if on_inner is not None:    # an encapsulated packet's inner or outer header, as live
        def on_headers(o):
            return on_inner(o) or (bool(o.get("tunnel")) and on_outer(o))
    on_conn = connection_test(cfg, _orig_tuple) if cfg.matches_connection else None
    if on_headers is not None:
        tests.append(on_headers if on_conn is None else ConnectionMatch(on_headers, on_conn))
    if cfg.icmpid is not None:
        tests.append(lambda o: o.get("icmp_id") == cfg.icmpid)
    if cfg.netns_all:
        wanted = set(cfg.netns_all)
        tests.append(lambda o: str(o["netns"]) in wanted or o.get("netns_name") in wanted)
    if cfg.ct_states:
        wanted_states = set(cfg.ct_states)
        tests.append(lambda o: conntrack.state_word(conntrack.fields_of(o.get("ct"))["ct"])
                     in wanted_states)
    if cfg.ct_mark is not None or cfg.ct_zone is not None:
        tests.append(lambda o: conntrack.mark_zone_match(conntrack.fields_of(o.get("ct")),
                                                         cfg.ct_mark, cfg.ct_zone))
    if cfg.expression is not None:
        from . import packets
        judge = packets.ExpressionJudge(cfg.expression)
        tests.append(judge)
    return (lambda o: all(t(o) for t in tests)) if tests else None


class ConnectionMatch:
    """-H, --proto and -P of the headers, else of the connection's original
    tuple, else of a translated tuple learned from an earlier event whose
    connection matched (the kernel program's learned tuples: a packet that
    crossed into a pod's namespace has lost its entry). Called in time order.
    The kernel keeps the last few; this keeps every one, so no row the live
    run printed is filtered out."""

    def __init__(self, on_headers, on_conn):
        self.on_headers, self.on_conn = on_headers, on_conn
        self.learned = set()

    def __call__(self, o):
        if self.on_headers(o):
            return True
        ends = ((o["saddr"], o.get("sport")), (o["daddr"], o.get("dport")))
        if self.on_conn(o):
            self.learned.add((o["l4proto"],) + ends)
            return True
        return ((o["l4proto"],) + ends in self.learned
                or (o["l4proto"],) + ends[::-1] in self.learned)


def connection_test(cfg, tuple_of):
    """-H, --proto and -P together as one test of tuple_of(o): (source,
    destination, protocol number, (sport, dport)); None without them."""
    tests = []
    if cfg.addr is not None:
        addr = str(cfg.addr)
        tests.append(lambda t: addr in (t[0], t[1]))
    if cfg.proto == "icmp":
        tests.append(lambda t: t[2] in (ICMP, ICMPV6))
    elif cfg.proto in L4_NUMBERS:
        number = L4_NUMBERS[cfg.proto]
        tests.append(lambda t: t[2] == number)
    if cfg.port is not None:
        tests.append(lambda t: t[2] in PORTED and cfg.port in t[3])
    if not tests:
        return None
    return lambda o: all(test(tuple_of(o)) for test in tests)


def _orig_tuple(o):
    """A saved event's connection's original tuple, as connection_test takes
    it; all empty without an entry or its tuples, and for a RELATED packet (an
    ICMP error, a helper's data: not the connection's own, as in the kernel)."""
    ct = conntrack.fields_of(o.get("ct"))
    if conntrack.state_word(ct["ct"]) not in ("new", "est"):
        return ("", "", 0, (None, None))
    return (ct["ct_orig_saddr"], ct["ct_orig_daddr"], ct["ct_l4proto"],
            (ct["ct_orig_sport"], ct["ct_orig_dport"]))


class SavedEvents:
    """The saved runs' events, rebuilt as the live decoder's Events, in time
    order on one clock (several nodes: merge.py's offsets), filtered by the
    flags; their rows and JSON lines are the saved objects'."""

    failure_note = ""

    def __init__(self, cfg, runs, err):
        several = len({r.node for r in runs}) > 1
        self.cfg = cfg
        self.runs = runs
        self.err = err
        self.rebuilder = Rebuilder(several)
        self.merged = merge.place_on_one_clock(runs) if several else None
        self.loaded = SavedLoaded(runs, self.rebuilder)
        self.names = SavedNames(self.rebuilder)
        self.session = None
        self.make_row = self.make_line = self.columns = False
        self.clock = Clock(cfg.timestamp, offset_ns=0)    # the saved times are wall-clock times
        self.saved_caveats = []
        for run in runs:
            for note in (run.end or {}).get("caveats") or []:
                if note not in self.saved_caveats:
                    self.saved_caveats.append(note)
        self.lost = sum((r.end or {}).get("lost") or 0 for r in runs)
        # what stopped the saved runs (-c, Ctrl-C ...): the story tells what it cut off
        stops = [(r.end or {}).get("stopped_by") for r in runs]
        self.stopped_by = next((s for s in stops if isinstance(s, str) and s), None)
        self.rows = 0
        self.ended_ns = None
        # --nftrace runs: the rules they saved (rows' "rule", the story's "nat_rule")
        self.rules = None
        if any(r.start.get("nftrace") for r in runs):
            self.rules = SavedRules([o for r in runs for o in r.nat_rules])

    def attach(self, session):
        """Hand the events to session, with the texts its sinks need."""
        self.session = session
        needs = set().union(*(sink.needs for sink in session.writers))
        self.make_row, self.make_line = "row" in needs, "line" in needs
        self.columns = wants_columns(session.writers)

    @property
    def reasons(self):
        """The drop reason names the saved events carry (read as they are rebuilt)."""
        return DropReasons(dict(self.rebuilder.reason_names), "the saved events")

    def read(self, session):
        if self.merged is not None:
            for line in self.merged.report_lines():
                self.err.write("skbtracer: %s\n" % line)
        timeline = self.timeline()
        if session.start(None):         # the saved start objects are not written again
            for ts, wall, run, obj in timeline:
                if not session.show(*self.shown(ts, wall, run, obj)):
                    break
                self.rows += 1
                if self.cfg.count is not None and self.rows >= self.cfg.count:
                    session.stop_by("-c")
                if session.done:
                    break
            session.flush()
        self.ended_ns = self._ended_ns(timeline)

    def shown(self, ts, wall, run, obj):
        """(event, raw, row, stack, line) of a saved object, as the sinks
        take them: the rebuilt Event, no raw bytes, the saved object's row
        and JSON line where a sink needs them."""
        event = self.rebuilder.event(run, obj, ts)
        decision = self.rules.keep_row(event, obj) if self.rules is not None else None
        row = line = None
        if self.make_row:
            netns = self.names.label(event.netns) if self.cfg.names else None
            suffix = conntrack.row_suffix(event) if self.cfg.ct else ""
            suffix += nftrace_suffix(decision)
            columns = jsonl.row_columns(obj, self.clock.column(wall), netns, suffix)
            row = Row(columns) if self.columns else full_row(columns)
        if self.make_line:
            line = jsonl.dumps(obj)
        return event, None, row, obj.get("stack"), line

    def timeline(self):
        """(ts_ns in the story, wall ns, run, object) of every kept event, in time order."""
        keep = event_filter(self.cfg)
        rows = []
        for run in self.runs:
            shift = self.merged.offsets[run.node] if self.merged else 0
            for obj in run.objects:
                wall = obj["time_ns"] - shift
                ts = wall if self.merged else obj["ktime_ns"]
                rows.append((ts, wall, run, obj))
        rows.sort(key=lambda r: r[0])
        # filtered in time order: a learned tuple is learned before it is asked for
        return rows if keep is None else [r for r in rows if keep(r[3])]

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

    # -- what the loop asks at exit

    def caveats(self, book):
        notes = list(self.saved_caveats)
        if book.beyond:
            notes.append(beyond_note(book.beyond, book.limit))
        return notes

    def story_extras(self):
        extras = {"conntrack_read": self.rebuilder.conntrack_saved}
        if self.rules is not None:
            extras["rules"] = self.rules
        names = {key: name for run in self.runs for key, name in run.service_names.items()}
        if names:
            extras["service_name"] = lambda service: names.get(service_key(service))
        if self.merged is not None:
            extras.update(enters=merge.Wire(self.names.node), node_of=self.names.node)
        return extras

    def end_object(self, caveats, stopped_by=None):
        return None                     # the saved end objects are not written again

    def exit_line(self):
        return "%d rows read from %s, %d events lost while tracing" % (
            self.rows, ", ".join(self.cfg.read), self.lost)


def read_paths(paths, err):
    """-r's files: each FILE with its rotated files (--rotate: FILE.N ...
    FILE.1, oldest first, then FILE), said on err; a file named twice
    (FILE and FILE.1 both given) read once."""
    seen, files = set(), []
    for path in paths:
        rotated = rotate.rotated_set(path)
        if len(rotated) > 1:
            err.write("skbtracer: %s: reading its rotated set, %s ... %s\n"
                      % (path, rotated[0], path))
        for name in rotated:
            if os.path.realpath(name) not in seen:
                seen.add(os.path.realpath(name))
                files.append(name)
    return files


def main(cfg):
    err = sys.stderr

    def warn(text):
        err.write("skbtracer: warning: %s\n" % text)

    try:
        runs = read_files(read_paths(cfg.read, err), warn)
    except ReadError as e:
        err.write("skbtracer: %s\n" % e)
        return 2
    files = []
    try:        # -o FILE: opened as for a live run (no symlinks, --force to overwrite)
        opened = open_outputs(cfg, files)
        return saved_session(cfg, runs, out=opened.get("output"), files=opened).run()
    except FileError as e:
        err.write("skbtracer: %s\n" % e)
        return 1
    finally:
        for f in files:
            f.close()
