"""-r FILE ...: read saved JSON lines (--json) back, print their rows and
tell the packets' story exactly as the live run over the same events would:
the events become the same Event objects the live session feeds its
StoryBook with, and the story is told by the same Session code.

No root, no bcc, no kernel: nothing here loads BPF or reads the running
kernel (drop reason names and symbols come from the saved events).

Several files (nodes) make one story: merge.py estimates each node's clock
offset from packets both nodes saw and puts every event on the first
node's clock; a packet that left one node and arrived on another is one
packet (matched by its headers, see merge.py).
"""

import json
import os
import re
import sys
import time

from . import jsonout, merge, story
from .events import Event
from .output import HEADER, FileError, open_new_file
from .probes import DropReasons
from .runinfo import ProbeInfo, RunInfo, beyond_note
from .session import Session
from .vocabulary import KIND_NUMBERS, KIND_ROUTE, L4_NUMBERS, TCP_FLAG_BITS, hook_number


class ReadError(Exception):
    """Bad input: one line naming the file (and line), exit 2."""


class SavedRun:
    """One tracer run in a file: its start object, its end object, its node."""

    def __init__(self, path, line, start):
        self.path = path
        self.line = line
        self.start = start
        self.node = start.get("node") or os.path.basename(path)
        self.run_id = start.get("run_id") or "%s:%d" % (path, line)
        self.end = None
        self.objects = []         # event objects, in file order
        self.wall_minus_ktime = None


def read_files(paths, warn):
    """[SavedRun] from the files, in order; ReadError on bad input; warn(text)
    for a truncated last line (skipped)."""
    runs = []
    for path in paths:
        runs += _read_file(path, warn)
    if not any(r.objects for r in runs):
        warn("%s: no events" % ", ".join(paths))
    return runs


def _read_file(path, warn):
    try:
        f = open(path, encoding="utf-8", errors="strict")
    except OSError as e:
        raise ReadError("%s: cannot read: %s" % (path, e.strerror)) from None
    runs = []
    with f:
        try:
            lines = f.read().split("\n")
        except (UnicodeDecodeError, OSError):
            raise ReadError("%s: not skbtracer JSON lines (not UTF-8 text)" % path) from None
    complete = lines[-1] == ""          # a file cut off mid-line ends without "\n"
    if complete:
        lines.pop()
    run = None
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            if number == len(lines) and run is not None:
                warn("%s:%d: truncated last line skipped" % (path, number))
                break
            raise ReadError("%s:%d: not skbtracer JSON lines%s" % (
                path, number, "" if run is not None else " (no start object)"))
        kind = obj["type"]
        if kind == "start":
            version = obj.get("format", 1)
            if not isinstance(version, int) or version > jsonout.FORMAT:
                raise ReadError("%s:%d: format version %s is newer than this skbtracer reads "
                                "(%d); use a newer skbtracer" % (path, number, version,
                                                                  jsonout.FORMAT))
            run = SavedRun(path, number, obj)
            runs.append(run)
        elif run is None:
            raise ReadError("%s:%d: not skbtracer JSON lines (no start object)" % (path, number))
        elif kind == "event":
            try:
                _check_event(obj)
            except (KeyError, TypeError, ValueError) as e:
                if number == len(lines) and not complete:
                    warn("%s:%d: truncated last line skipped" % (path, number))
                    break
                raise ReadError("%s:%d: not an skbtracer event (%s)" % (path, number, e)) from None
            run.objects.append(obj)
        elif kind == "end":
            run.end = obj
    if not runs:
        raise ReadError("%s: not skbtracer JSON lines (no start object)" % path)
    return runs


# What an event object holds, as jsonout writes it: every value is checked
# before anything is rebuilt from it, so garbage is one line naming the line.
_INT, _STR, _HEX = "an integer", "a string", "a hex string"
EVENT_FIELDS = {"ktime_ns": _INT, "time_ns": _INT, "netns": _INT, "ifname": _STR,
                "saddr": _STR, "daddr": _STR, "skb": _HEX, "func": _STR, "family": _INT,
                "l4proto": _INT, "ttl": _INT, "kind": _STR}
OPTIONAL_FIELDS = {"ifindex": _INT, "pid": _INT, "len": _INT, "pkt_type": _INT, "sport": _INT,
                   "dport": _INT, "ip_id": _INT, "tcp_seq": _INT, "icmp_type": _INT,
                   "icmp_id": _INT, "tcp_flags": _STR, "netns_name": _STR, "dmac": _STR,
                   "smac": _STR}
NF_FIELDS = {"pf": _INT, "hook": _STR, "verdict_code": _INT, "table": _STR, "chain": _STR}
DROP_FIELDS = {"reason_code": _INT, "reason": _STR, "location_addr": _HEX, "location": _STR}
LIMIT = 1 << 64


def _check_value(key, value, kind):
    if kind == _INT:
        ok = type(value) is int and -LIMIT < value < LIMIT
    else:
        ok = isinstance(value, str)
        if ok and kind == _HEX:
            ok = re.fullmatch(r"(0x)?[0-9a-fA-F]{1,16}", value) is not None
    if not ok:
        raise ValueError("%s is not %s" % (key, kind))


def _check_fields(obj, fields, optional=False):
    for key, kind in fields.items():
        if key not in obj:
            if optional:
                continue
            raise KeyError(key)
        if optional and obj[key] is None:
            continue
        _check_value(key, obj[key], kind)


def _check_event(obj):
    _check_fields(obj, EVENT_FIELDS)
    _check_fields(obj, OPTIONAL_FIELDS, optional=True)
    for key in ("dmac", "smac"):
        if obj.get(key) and not re.fullmatch(r"[0-9a-fA-F]{2}(:?[0-9a-fA-F]{2}){5}", obj[key]):
            raise ValueError("%s is not a MAC address" % key)
    for key, fields in (("nf", NF_FIELDS), ("drop", DROP_FIELDS)):
        part = obj.get(key)
        if part is None:
            continue
        if not isinstance(part, dict):
            raise ValueError("%s is not an object" % key)
        _check_fields(part, fields, optional=True)
    stack = obj.get("stack")
    if stack is not None and not (isinstance(stack, list) and all(isinstance(s, str) for s in stack)):
        raise ValueError("stack is not a list of strings")
    try:        # what the rows and the story make of it must be makeable
        jsonout.text_row(obj, "")
        _CHECKER.event(_CHECK_RUN, obj, obj["ktime_ns"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise ValueError("%s: %s" % (type(e).__name__, e)) from None


# ---------------------------------------------------------------- events

def _mac(text):
    return bytes.fromhex(text.replace(":", "")) if text else bytes(6)


class _CheckRun:
    node = "check"


_CHECK_RUN = _CheckRun()


class Rebuilder:
    """Saved event objects -> Event objects (the live decoder's), with one
    probe number per function name, a namespace key per (node, inode), an
    skb address per node and the saved drop reason names and symbols."""

    def __init__(self, several_nodes):
        self.several = several_nodes
        self.probe_names = []
        self._probe = {}
        self.netns_keys = {}           # (node, inode) -> netns number in the story
        self.netns_info = {}           # netns number -> (node, label)
        self.reason_names = {}
        self.symbols = {}
        self.node_index = {}

    def probe(self, name):
        number = self._probe.get(name)
        if number is None:
            number = self._probe[name] = len(self.probe_names)
            self.probe_names.append(name)
        return number

    def netns(self, node, obj):
        inode = obj["netns"]
        if not inode:
            return 0
        key = (node, inode)
        number = self.netns_keys.get(key)
        if number is None:
            # one node: the inode itself (rows and story read as live); several:
            # inodes of different nodes may collide, so each gets its own number
            number = len(self.netns_keys) + 1 if self.several else inode
            self.netns_keys[key] = number
        label = obj.get("netns_name") or str(inode)
        if number not in self.netns_info or obj.get("netns_name"):
            self.netns_info[number] = (node, label)
        return number

    def event(self, run, obj, ts_ns):
        e = Event.__new__(Event)
        node = self.node_index.setdefault(run.node, len(self.node_index))
        e.ts_ns = ts_ns
        # skb addresses of different nodes are different skbs
        e.skb = int(obj["skb"], 16) + (node << 64 if self.several else 0)
        e.netns = self.netns(run.node, obj)
        e.ifindex = obj.get("ifindex") or 0
        e.pid = obj.get("pid") or 0
        e.stack_id = -1
        e.len = obj.get("len") or 0
        e.probe = self.probe(obj["func"])
        e.kind = KIND_NUMBERS.get(obj["kind"], KIND_ROUTE)
        e.pkt_type = obj.get("pkt_type") or 0
        e.family = obj["family"]
        e.l4proto = obj["l4proto"]
        e.ttl = obj["ttl"]
        e.ifname = obj["ifname"] or ""
        e.dmac = _mac(obj.get("dmac"))
        e.smac = _mac(obj.get("smac"))
        e.saddr, e.daddr = obj["saddr"], obj["daddr"]
        e.sport = obj.get("sport") or 0
        e.dport = obj.get("dport") or 0
        e.ip_id = obj.get("ip_id") or 0
        e.tcp_seq = obj.get("tcp_seq") or 0
        e.tcp_flags = TCP_FLAG_BITS.get(obj.get("tcp_flags") or "", 0)
        e.icmp_type = obj.get("icmp_type") or 0
        e.icmp_id = obj.get("icmp_id") or 0
        e.pf = e.hook = e.verdict = 0
        e.table = e.chain = ""
        e.drop_reason = e.location = 0
        nf = obj.get("nf")
        if nf:
            e.pf = nf.get("pf") or 0
            e.hook = hook_number(e.pf, nf.get("hook"))
            e.verdict = nf.get("verdict_code") or 0
            e.table = nf.get("table") or ""
            e.chain = nf.get("chain") or ""
        drop = obj.get("drop")
        if drop:
            if drop.get("reason_code") is not None:
                e.drop_reason = drop["reason_code"]
                self.reason_names[e.drop_reason] = drop.get("reason")
            if drop.get("location_addr"):
                e.location = int(drop["location_addr"], 16)
                self.symbols[e.location] = drop.get("location") or "%#x" % e.location
        return e


_CHECKER = Rebuilder(False)     # rebuilds each event once while reading, to refuse garbage


class SavedNames:
    """The namespace labels the events were saved with (names.NetnsNames'
    interface); with several nodes each label says its node: node1:client."""

    def __init__(self, rebuilder):
        self.rebuilder = rebuilder
        self.labels = self

    def __contains__(self, _netns):
        return True

    def label(self, netns):
        node, label = self.rebuilder.netns_info.get(netns, (None, str(netns)))
        if not self.rebuilder.several or node is None:
            return label
        return node if label == node else "%s:%s" % (node, label)

    def node(self, netns):
        return self.rebuilder.netns_info.get(netns, (None, None))[0]

    def retry(self, force=False):
        pass


# ---------------------------------------------------------------- filters

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


# ---------------------------------------------------------------- the run

def saved_names(start, key):
    """A start object's list of probe names; [] when absent or not one."""
    names = start.get(key)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return []
    return names


class SavedLoaded:
    """What Session reads of a loaded program (runinfo), from the start objects."""

    def __init__(self, runs, rebuilder):
        attached = []
        extra = set()      # --all/--func functions of any run
        for run in runs:
            names = saved_names(run.start, "attached") or sorted(
                {o["func"] for o in run.objects if o["kind"] == "route"})
            for name in names:
                if name not in attached:
                    attached.append(name)
            extra.update(saved_names(run.start, "functions"))
        probes = [ProbeInfo(n, "route") for n in attached]
        if any(r.start.get("iptable_traced") for r in runs):
            probes.append(ProbeInfo("nf_hook_slow", "iptable"))
        backends = sorted({r.start.get("backend") or "?" for r in runs})
        # probe names grow as the events are rebuilt: the story reads them at exit
        self.info = RunInfo("/".join(backends), rebuilder.probe_names, attached=probes,
                            saved_extra=frozenset(extra))
        self.rebuilder = rebuilder

    def symbolize(self, address):
        return self.rebuilder.symbols.get(address, "%#x" % address)

    def stack(self, _stack_id):
        return None

    def lost_events(self):
        return 0


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
        first_wall = timeline[0][1] if timeline else 0
        second, clock_text = None, ""
        for ts, wall, run, obj in timeline:
            event = self.rebuilder.event(run, obj, ts)
            if self.book is not None:
                self.book.add(event)
            if json_rows:
                self._write(jsonout.dumps(obj) + "\n")
            else:
                if self.cfg.timestamp:
                    column = "%.6f" % ((wall - first_wall) / 1e9)
                else:
                    if wall // 1_000_000_000 != second:
                        second = wall // 1_000_000_000
                        clock_text = time.strftime("%H:%M:%S", time.localtime(second))
                    column = clock_text
                netns = self.names.label(event.netns) if self.cfg.names else None
                text = jsonout.text_row(obj, column, netns)
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

