"""JSON lines: a "start" object (version, kernel, backend), one object per
event (--json), and the story at exit as "summary", "duplicate", "dropped",
"vanished" objects, and an "end" object (what the run could not see; -r
reads it back). Every object of a run carries "node" and "run_id", so
files from several nodes and runs can be told apart and merged.

The schema is documented in README.md ("JSON output") and man/skbtracer.8.
Every event object has every key; keys that do not apply are null.
"""

import json
import os
import time
import uuid

from . import __version__
from .events import KIND_DROP, KIND_IPTABLE, KIND_ROUTE, NF_PROTOCOLS, PKT_TYPES
from .output import ROW_FORMAT, TCP_FLAGS

FORMAT = 1          # the JSON lines' format version; -r refuses newer ones
KINDS = {1: "route", 2: "iptable", 3: "drop"}
L4_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
_string = json.encoder.encode_basestring     # "text" with JSON escapes (C)

# A route row's object as JsonFormatter.event() builds it, key for key
_EVENT_LINE = ('{"type": "event", "time_ns": %d, "time": "%s", "ktime_ns": %d, "netns": %d, '
               '"netns_name": %s, "container_id": %s, "pod_uid": %s, "ifname": %s, '
               '"ifindex": %d, "dmac": "%s", "smac": "%s", "family": %d, "l4proto": %d, '
               '"proto": "%s", "saddr": "%s", "daddr": "%s", "sport": %s, "ttl": %d, '
               '"ip_id": %s, "tcp_seq": %s, "icmp_type": %s, "len": %d, "skb": "%x", '
               '"pkt_type": %d, "pkt_type_name": "%s", "kind": "route", "func": %s, "pid": %d, '
               '"nf": null, "drop": null, "node": %s, "run_id": "%s"}')


def mac_text(raw):
    return raw.hex(":")


class IsoClock:
    """Event time -> ISO 8601 UTC with nanoseconds; strftime once per second."""

    def __init__(self):
        self._second = None
        self._text = ""

    def iso(self, wall_ns):
        second, ns = divmod(wall_ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return "%s.%09dZ" % (self._text, ns)


class JsonFormatter:
    """Events -> JSON lines.

    rows: the output.RowFormatter of the run (probe names, drop reasons,
    symbolizer and clock come from it); names: names.NetnsNames or None.
    """

    def __init__(self, rows, names=None, node=None, run_id=None):
        self.node = node if node is not None else os.uname().nodename
        self.run_id = run_id or new_run_id()
        self.probe_names = rows.probe_names
        self._probe_name = rows.probe_name
        self.reasons = rows.reasons
        self.symbolize = rows.symbolize
        self.clock = rows.clock
        self.names = names
        self.iso = IsoClock()

    def event(self, e, stack=None):
        """The dict for one event; stack: list of symbols or None."""
        wall = self.clock.wall_ns(e.ts_ns)
        tcp = e.l4proto == 6
        ported = e.l4proto in (6, 17)
        icmp = e.is_icmp
        info = self.names.lookup(e.netns) if self.names is not None and e.netns else None
        obj = {
            "type": "event",
            "time_ns": wall,
            "time": self.iso.iso(wall),
            "ktime_ns": e.ts_ns,
            "netns": e.netns,
            "netns_name": info.label if info is not None else None,
            "container_id": info.container_id if info is not None else None,
            "pod_uid": info.pod_uid if info is not None else None,
            "ifname": e.ifname,
            "ifindex": e.ifindex,
            "dmac": mac_text(e.dmac),
            "smac": mac_text(e.smac),
            "family": e.family,
            "l4proto": e.l4proto,
            "proto": L4_NAMES.get(e.l4proto, str(e.l4proto)),
            "saddr": e.saddr,
            "daddr": e.daddr,
            "sport": e.sport if ported else None,
            "dport": e.dport if ported else None,
            "ttl": e.ttl,
            "ip_id": e.ip_id if e.family == 4 else None,
            "tcp_seq": e.tcp_seq if tcp else None,
            "tcp_flags": TCP_FLAGS[e.tcp_flags] if tcp else None,
            "icmp_type": e.icmp_type if icmp else None,
            "icmp_id": e.icmp_id if icmp else None,
            "len": e.len,
            "skb": "%x" % e.skb,
            "pkt_type": e.pkt_type,
            "pkt_type_name": PKT_TYPES.get(e.pkt_type, str(e.pkt_type)),
            "kind": KINDS.get(e.kind, str(e.kind)),
            "func": self._probe_name(e.probe),
            "pid": e.pid,
            "nf": None,
            "drop": None,
            "node": self.node,
            "run_id": self.run_id,
        }
        if e.kind == KIND_IPTABLE:
            obj["nf"] = {"pf": e.pf, "pf_name": NF_PROTOCOLS.get(e.pf, str(e.pf)),
                         "table": e.table or None, "chain": e.chain or None,
                         "hook": e.hook_name, "verdict": e.verdict_name,
                         "verdict_code": e.verdict}
        elif e.kind == KIND_DROP:
            have_names = self.reasons is not None and bool(self.reasons.names)
            obj["drop"] = {"reason": self.reasons.name(e.drop_reason) if have_names else None,
                           "reason_code": e.drop_reason if have_names else None,
                           "location": self.symbolize(e.location) if e.location else None,
                           "location_addr": "%x" % e.location if e.location else None}
        if stack is not None:
            obj["stack"] = list(stack)
        return obj

    def line(self, e, stack=None):
        """dumps(self.event(e, stack)), written out by hand: the per-event path
        of --json. Text that is not ours (names, functions, tables) goes
        through json's own string encoder."""
        if e.kind != KIND_ROUTE or stack is not None:
            return _dumps(self.event(e, stack))
        wall = self.clock.wall_ns(e.ts_ns)
        l4 = e.l4proto
        info = self.names.lookup(e.netns) if self.names is not None and e.netns else None
        if info is not None:
            label = info.label
            name = _string(label) if label is not None else "null"
            container = _string(info.container_id) if info.container_id else "null"
            pod = _string(info.pod_uid) if info.pod_uid else "null"
        else:
            name = container = pod = "null"
        if l4 == 6 or l4 == 17:
            ports = "%d, \"dport\": %d" % (e.sport, e.dport)
        else:
            ports = "null, \"dport\": null"
        if l4 == 6:
            tcp = "%d, \"tcp_flags\": \"%s\"" % (e.tcp_seq, TCP_FLAGS[e.tcp_flags])
        else:
            tcp = "null, \"tcp_flags\": null"
        if e.is_icmp:
            icmp = "%d, \"icmp_id\": %d" % (e.icmp_type, e.icmp_id)
        else:
            icmp = "null, \"icmp_id\": null"
        return _EVENT_LINE % (
            wall, self.iso.iso(wall), e.ts_ns, e.netns, name, container, pod,
            _string(e.ifname), e.ifindex, e.dmac.hex(":"), e.smac.hex(":"), e.family, l4,
            L4_NAMES.get(l4) or str(l4), e.saddr, e.daddr, ports, e.ttl,
            e.ip_id if e.family == 4 else "null", tcp, icmp, e.len, e.skb, e.pkt_type,
            PKT_TYPES.get(e.pkt_type) or str(e.pkt_type), _string(self._probe_name(e.probe)),
            e.pid, _string(self.node), self.run_id)


def dumps(obj):
    return _dumps(obj)


def new_run_id():
    return uuid.uuid4().hex


def boot_id():
    """The kernel's boot id: events with one boot id share one ktime clock."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


def start_object(backend, node=None, run_id=None, **run):
    """The stream's first object: which skbtracer wrote it, on which kernel
    and node; run: what -r needs to tell the story as this run would
    (probes attached, modes)."""
    obj = {"type": "start", "version": __version__, "kernel": os.uname().release,
           "backend": backend, "format": FORMAT,
           "node": node if node is not None else os.uname().nodename,
           "boot_id": boot_id(), "run_id": run_id}
    obj.update(run)
    return obj


def end_object(node, run_id, ended_ktime_ns, lost, caveats):
    """The stream's last object: when tracing stopped and what it could not see."""
    return {"type": "end", "node": node, "run_id": run_id, "ended_ktime_ns": ended_ktime_ns,
            "lost": lost, "caveats": list(caveats)}


def text_row(obj, time_column, netns_column=None):
    """The text row an event object stands for (e.g. to turn saved JSON lines
    back into the classic rows); time_column: the row's time text."""
    proto = obj["proto"]
    if proto == "tcp":
        pkt = "T_%s:%s:%d->%s:%d" % (obj["tcp_flags"], obj["saddr"], obj["sport"],
                                     obj["daddr"], obj["dport"])
    elif proto == "udp":
        pkt = "U:%s:%d->%s:%d" % (obj["saddr"], obj["sport"], obj["daddr"], obj["dport"])
    elif obj["icmp_type"] is not None:
        kind = {8: "_request", 0: "_reply"} if obj["family"] == 4 else {128: "_request",
                                                                       129: "_reply"}
        pkt = "I%s:%s->%s" % (kind.get(obj["icmp_type"], ""), obj["saddr"], obj["daddr"])
    else:
        pkt = "%d:%s->%s" % (obj["l4proto"], obj["saddr"], obj["daddr"])
    trace = "%s.%d:" % (obj["skb"], obj["pkt_type"])
    nf, drop = obj["nf"], obj["drop"]
    if nf:
        trace += "%d.%s.%s.%s" % (nf["pf"], nf["table"] or "?", nf["hook"], nf["verdict"])
    else:
        trace += obj["func"]
        if drop and drop["reason"]:
            trace += " reason=%s" % drop["reason"]
        if drop and drop["location"]:
            trace += " location=%s" % drop["location"]
    netns = obj["netns"] if netns_column is None else netns_column
    return ROW_FORMAT % (time_column, netns, obj["ifname"], obj["dmac"].replace(":", ""),
                         pkt, trace)


# ---------------------------------------------------------------- the story

def _place(story, netns, ifname):
    return {"netns": netns, "netns_name": story.label(netns) if netns else None,
            "ifname": ifname or None}


def _end(story, end):
    obj = {"kind": end.kind, "text": story.end_text(end), "func": end.func or None}
    obj.update(_place(story, end.netns, end.ifname))
    if end.kind == "dropped":
        obj["reason"] = story.reason_text(end) or None
        obj["reason_code"] = end.reason_code
        obj["location"] = story.symbolize(end.location) if end.location else None
    return obj


def _view(view):
    family, l4proto, saddr, sport, daddr, dport = view[:6]
    ported = l4proto in (6, 17)
    return {"family": family, "l4proto": l4proto, "proto": L4_NAMES.get(l4proto, str(l4proto)),
            "saddr": saddr, "sport": sport if ported else None,
            "daddr": daddr, "dport": dport if ported else None,
            "ip_id": view[6] if family == 4 else None}


def story_objects(story):
    """The story as JSON-ready dicts: per packet a "summary", then the flags."""
    objects = []
    for packet in story.packets:
        copies = []
        for copy in packet.copies:
            copies.append({
                "skb": "%x" % copy.skb,
                "parent": "%x" % copy.parent.skb if copy.parent is not None else None,
                "first_ktime_ns": copy.birth,
                "rows": len(copy.events),
                "ttl": [copy.events[0].ttl, copy.events[-1].ttl],
                "interfaces": [_place(story, n, i) for n, i in story.hops(copy)],
                "end": _end(story, copy.end),
            })
        netfilter = [{"pf": e.pf, "table": e.table or None, "chain": e.chain or None,
                      "hook": e.hook_name, "verdict": e.verdict_name}
                     for e in packet.events if e.kind == KIND_IPTABLE]
        flags = []
        if story.has_duplicate(packet):
            flags.append("DUPLICATE")
        kinds = {e.kind for e in story.ends(packet)}
        flags += [k.upper() for k in ("dropped", "vanished") if k in kinds]
        objects.append({
            "type": "summary",
            "packet": packet.number,
            "flow": story.flow_text(packet),
            "headers": [_view(v) for v in packet.views],
            "path": story.path_text(packet),
            "netfilter": netfilter if story.iptable_traced else None,
            "end": story.packet_end_text(packet),
            "skbs": len(packet.copies),
            "rows": sum(len(c.events) for c in packet.copies),
            "first_ktime_ns": packet.first_ts,
            "copies": copies,
            "flags": flags,
        })
    for dup in story.duplicates:
        if dup.place[0] == "socket":
            _s, netns, proto, daddr, dport = dup.place
            where = {"socket": {"netns": netns, "netns_name": story.label(netns),
                                "l4proto": proto, "daddr": daddr, "dport": dport}}
        else:
            where = _place(story, *dup.place)
        routes = []
        for copy, (label, ttl, steps, end_kind) in zip(dup.copies, dup.routes):
            routes.append({"skb": "%x" % copy.skb, "label": label, "ttl": ttl,
                           "steps": story.steps_text(steps), "end": end_kind})
        objects.append({"type": "duplicate", "packet": dup.packet.number,
                        "flow": story.final_flow(dup.copies[0]), "place": where,
                        "times": len(dup.copies), "routes": routes,
                        "text": story.duplicate_text(dup)})
    for packet, text in story.drop_flags():
        objects.append({"type": "dropped", "packet": packet.number, "text": text})
    for packet, text in story.vanished_flags():
        objects.append({"type": "vanished", "packet": packet.number, "text": text})
    return objects
