"""JSON lines: a "start" object (version, kernel, backend), one object per
event (--json), the story at exit as "summary", "duplicate", "dropped",
"vanished" objects (story.render_json), and an "end" object (what the run could not see; -r
reads it back). Every object of a run carries "node" and "run_id", so
files from several nodes and runs can be told apart and merged.

The schema is documented in README.md ("JSON output") and man/skbtracer.8.
Every event object has every key; keys that do not apply are null.
"""

import json
import os
import time
import uuid

from .. import __version__
from ..events import conntrack, fields, ipvs, neighbours, routing, tunnel
from ..events.fields import JSON_FIELDS
from ..events.textrow import (RowColumns, drop_info, full_row, pkt_info, unkept_suffix,
                              verdict_info)
from ..events.vocabulary import (KIND_DROP, KIND_IPTABLE, KIND_ROUTE, KIND_WHY, KINDS, L4_NAMES,
                                 NF_PROTOCOLS, PKT_TYPES, PORTED, TCP, TCP_FLAG_BITS, TCP_FLAGS,
                                 WHY_ICMP, WHY_NAMES, WHY_NEIGH, WHY_NUMBERS, sent_back_words, why_mtu,
                                 why_trace_info)

FORMAT = 1          # the JSON lines' format version; -r refuses newer ones

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
_string = json.encoder.encode_basestring     # "text" with JSON escapes (C)

# A route row's object as JsonFormatter.event() builds it, key for key
_EVENT_LINE = ('{"type": "event", "time_ns": %d, "time": "%s", "ktime_ns": %d, "netns": %d, '
               '"netns_name": %s, "container_id": %s, "pod_uid": %s, "ifname": %s, '
               '"ifindex": %d, "dmac": "%s", "smac": "%s", "family": %d, "l4proto": %d, '
               '"proto": "%s", "saddr": "%s", "daddr": "%s", "sport": %s, "ttl": %d, '
               '"ip_id": %s, "tcp_seq": %s, "icmp_type": %s, "len": %d, "skb": "%x", '
               '"pkt_type": %d, "pkt_type_name": "%s", "kind": "route", "func": %s, "pid": %d, '
               '%s"nf": null, "drop": null, "ct": %s, "node": %s, '   # %s: _table_keys()
               '"run_id": "%s"}')


def mac_text(raw):
    return raw.hex(":")


def _json_value(f, value):
    """A value of the event object's table fields (fields.JSON_FIELDS)."""
    return value.hex() if f.seen == fields.BYTES else value


def _table_keys(e):
    """The table's fields that are shown as they are (fields.JSON_FIELDS:
    none by hand) as JSON text, each followed by ", "."""
    return "".join("%s: %s, " % (_string(f.json), _dumps(_json_value(f, getattr(e, f.name))))
                   for f in JSON_FIELDS)


def why_object(e):
    """A --why row's "why": what was sent back because of the packet."""
    return {"sent": WHY_NAMES.get(e.why, str(e.why)),
            "icmp_type": e.why_type if e.why == WHY_ICMP else None,
            "icmp_code": e.why_code if e.why == WHY_ICMP else None,
            "mtu": why_mtu(e.family, e.why, e.why_type, e.why_code, e.why_info),
            "text": neighbours.words(e) if e.why == WHY_NEIGH else
            sent_back_words(e.family, e.why, e.why_type, e.why_code, e.why_info)}


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

    def __init__(self, rows, names=None, node=None, run_id=None, rules=None):
        self.node = node if node is not None else os.uname().nodename
        self.run_id = run_id or new_run_id()
        self.probe_names = rows.probe_names
        self._probe_name = rows.probe_name
        self.reasons = rows.reasons
        self.symbolize = rows.symbolize
        self.clock = rows.clock
        self.names = names
        self.iso = IsoClock()
        self.rule_of = rows.rule_of if rules is not None else None    # --nftrace

    def event(self, e, stack=None):
        """The dict for one event; stack: list of symbols or None."""
        wall = self.clock.wall_ns(e.ts_ns)
        tcp = e.l4proto == TCP
        ported = e.l4proto in PORTED
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
        }
        for f in JSON_FIELDS:       # the table's fields not shown by hand above
            obj[f.json] = _json_value(f, getattr(e, f.name))
        obj["nf"] = obj["drop"] = None
        obj["ct"] = conntrack.json_object(e)
        obj["node"] = self.node
        obj["run_id"] = self.run_id
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
                           "location_addr": "%x" % e.location if e.location else None,
                           "conntrack": conntrack.fault_name(e.ct_fault)}
        elif e.kind == KIND_WHY:    # only these rows have the key: the others are as before
            obj["why"] = why_object(e)
        if e.route_known:           # --why: only rows that took a routing decision
            obj["route"] = routing.json_object(e)
        if e.ipvs_known:            # --iptable: only rows with IPVS's choice
            obj["ipvs"] = ipvs.json_object(e)
        if e.tunnel:                # only an encapsulated packet's rows have the key
            obj["tunnel"] = tunnel.json_object(e)
        if self.rule_of is not None and e.kind in (KIND_IPTABLE, KIND_DROP):
            decision = self.rule_of(e)      # --nftrace: verdict and netfilter drop rows
            if decision is not None:
                obj["rule"] = decision.json()
        if e.neigh_family:          # --why: only rows that tell a neighbour
            obj["neigh"] = neighbours.json_object(e)
        if e.unkept:                # --on-trouble: a path longer than its record's sightings
            obj["unkept"] = e.unkept
        if stack is not None:
            obj["stack"] = list(stack)
        return obj

    def line(self, e, stack=None):
        """dumps(self.event(e, stack)), written out by hand: the per-event path
        of --json. Text that is not ours (names, functions, tables) goes
        through json's own string encoder."""
        if (e.kind != KIND_ROUTE or stack is not None or e.route_known or e.ipvs_known
                or e.tunnel or e.neigh_family or e.unkept):
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
        if l4 in PORTED:
            ports = "%d, \"dport\": %d" % (e.sport, e.dport)
        else:
            ports = "null, \"dport\": null"
        if l4 == TCP:
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
            e.pid, _table_keys(e) if JSON_FIELDS else "",
            _dumps(conntrack.json_object(e)) if e.ct else "null", _string(self.node), self.run_id)


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


def end_object(node, run_id, ended_ktime_ns, lost, caveats, stopped_by=None):
    """The stream's last object: when tracing stopped, what stopped it (-c,
    Ctrl-C, SIGTERM...) and what it could not see."""
    return {"type": "end", "node": node, "run_id": run_id, "ended_ktime_ns": ended_ktime_ns,
            "lost": lost, "caveats": list(caveats), "stopped_by": stopped_by}


class _SavedHeader:
    """A saved event object's header fields as output.pkt_info() reads them."""

    __slots__ = ("l4proto", "family", "tcp_flags", "saddr", "sport", "daddr", "dport",
                 "icmp_type")

    def __init__(self, obj):
        self.l4proto, self.family = obj["l4proto"], obj["family"]
        self.tcp_flags = TCP_FLAG_BITS.get(obj.get("tcp_flags") or "", 0)
        self.saddr, self.daddr = obj["saddr"], obj["daddr"]
        self.sport, self.dport = obj.get("sport"), obj.get("dport")
        self.icmp_type = obj.get("icmp_type")


class SavedFields:
    """A saved event's "ipvs", "route" and "neigh" as ipvs.row_suffix,
    routing.row_suffix and neighbours.row_suffix read an event's ipvs_*,
    route_* and neigh_* fields."""

    def __init__(self, obj):
        self.__dict__.update(ipvs.fields_of(obj.get("ipvs")))
        self.__dict__.update(routing.fields_of(obj.get("route")))
        self.__dict__.update(neighbours.fields_of(obj.get("neigh")))
        self.family, self.ifname = obj.get("family"), obj.get("ifname")


def text_row(obj, time_column, netns_column=None):
    """The text row an event object stands for (e.g. to turn saved JSON lines
    back into the classic rows), with the live rows' column builders;
    time_column: the row's time text."""
    return full_row(row_columns(obj, time_column, netns_column))


def row_columns(obj, time_column, netns_column=None, trace_suffix=""):
    """The textrow.RowColumns of an event object (text_row's); trace_suffix:
    what TRACE_INFO ends in (--ct's)."""
    prefix = ".%d:" % obj["pkt_type"]
    nf, drop = obj["nf"], obj["drop"]
    if nf:
        trace = verdict_info(prefix, nf["pf"], nf["table"], nf["hook"], nf["verdict"])
    elif drop:
        trace = drop_info(prefix + obj["func"], drop["reason"], drop["location"])
    elif obj.get("why"):
        why = obj["why"]
        trace = prefix + obj["func"] + why_trace_info(
            WHY_NUMBERS.get(why["sent"], 0), why["icmp_type"], why["icmp_code"], why["mtu"])
    else:
        trace = prefix + obj["func"]
    if obj.get("ipvs") or obj.get("neigh") or obj.get("route"):
        saved = SavedFields(obj)
        trace += ipvs.row_suffix(saved) if obj.get("ipvs") else ""
        trace += neighbours.row_suffix(saved) if obj.get("neigh") else ""
        trace += routing.row_suffix(saved) if obj.get("route") else ""
    netns = obj["netns"] if netns_column is None else netns_column
    trace += tunnel.saved_row_suffix(obj.get("tunnel"))
    if obj.get("unkept"):
        trace += unkept_suffix(obj["unkept"])
    return RowColumns(time_column, netns, obj["ifname"], obj["dmac"].replace(":", ""),
                      pkt_info(_SavedHeader(obj)), obj["skb"], trace + trace_suffix)
