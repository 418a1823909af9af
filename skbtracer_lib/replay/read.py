"""Saved JSON lines read and checked: runs (start, events, end) per file;
garbage is one line naming the file and line."""

import json
import os
import re

from ..events import fields
from ..outputs import jsonl
from .rebuild import Rebuilder


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
        self.service_names = {}   # (proto, address, port) -> the saved story's Service name
        self.nat_rules = []       # --nftrace: the saved story's "nat_rule" objects
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
            if not isinstance(version, int) or version > jsonl.FORMAT:
                raise ReadError("%s:%d: format version %s is newer than this skbtracer reads "
                                "(%d); use a newer skbtracer" % (path, number, version,
                                                                  jsonl.FORMAT))
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
        elif kind == "service":
            _keep_service_name(run, obj)
        elif kind == "nat_rule":
            run.nat_rules.append(obj)
    if not runs:
        raise ReadError("%s: not skbtracer JSON lines (no start object)" % path)
    return runs


def _keep_service_name(run, obj):
    """A saved SERVICE line's name (--names), for -r's story to tell again;
    an object without one, or not of this shape, is left out."""
    name, key = obj.get("name"), (obj.get("proto"), obj.get("address"), obj.get("port"))
    if isinstance(name, str) and name and all(isinstance(k, (str, int)) or k is None for k in key):
        run.service_names[key] = name


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
OPTIONAL_FIELDS.update((f.json, _INT if f.seen in (fields.NUMBER, fields.NETWORK) else _STR)
                       for f in fields.JSON_FIELDS)       # the table's own (jsonl._table_keys)
NF_FIELDS = {"pf": _INT, "hook": _STR, "verdict_code": _INT, "table": _STR, "chain": _STR}
DROP_FIELDS = {"reason_code": _INT, "reason": _STR, "location_addr": _HEX, "location": _STR,
               "conntrack": _STR}
WHY_FIELDS = {"sent": _STR, "icmp_type": _INT, "icmp_code": _INT, "mtu": _INT, "text": _STR}
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
    for key, fields in (("nf", NF_FIELDS), ("drop", DROP_FIELDS), ("why", WHY_FIELDS)):
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
        jsonl.text_row(obj, "")
        _CHECKER.event(_CHECK_RUN, obj, obj["ktime_ns"])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise ValueError("%s: %s" % (type(e).__name__, e)) from None

class _CheckRun:
    node = "check"


_CHECK_RUN = _CheckRun()

_CHECKER = Rebuilder(False)     # rebuilds each event once while reading, to refuse garbage
