"""The text row: the original tool's columns for a decoded event (the
reference), and the same rows made in C (_rows.c) where it is built. The C
copy is told the row's format and vocabulary when it is made (c_spec): the
widths, words and numbers of a row are written here only."""

import functools
import os
import re
import time
from collections import namedtuple

from . import conntrack, fields, ipvs, neighbours, reader, routing, tunnel
from ..nftrace.decisions import row_suffix as nftrace_suffix
from .decode import EVENT_SIZE, Event, c_string
from .vocabulary import (ICMP_PROTOCOLS, KIND_DROP, KIND_IPTABLE, KIND_WHY, PORTED, TCP,
                         TCP_FLAGS, UDP, icmp_kind, is_icmp, probe_name, why_mtu,
                         why_trace_info)

HEADER_FORMAT = "%-10s %-12s %-12s %-12s %-40s %s"
ROW_FORMAT = "[%-8s][%-10s] %-12s %-12s %-40s %s"
HEADER = HEADER_FORMAT % ("time", "NETWORK_NS", "INTERFACE", "DEST_MAC", "PKT_INFO", "TRACE_INFO")

# ROW_FORMAT's columns: the text before each, and the padded ones' widths
_COLUMN = re.compile(r"%(?:-(\d+))?s")
_ROW_LITERALS = tuple(_COLUMN.split(ROW_FORMAT)[::2])
_ROW_WIDTHS = tuple(int(w) for w in _COLUMN.findall(ROW_FORMAT) if w)
# row_of_raw's pieces of it: the time column, then what follows it but TRACE_INFO
_TIME_END = _COLUMN.search(ROW_FORMAT).end()
_MIDDLE_FORMAT = ROW_FORMAT[_TIME_END:ROW_FORMAT.rindex("%s")]
_CACHED_ROW = ROW_FORMAT[:_TIME_END] + "%s%x%s"    # time, the middle, skb, TRACE_INFO's rest

# A row's columns, for the compact rows (compact.py) made of them: skb is the
# address's hex digits, trace TRACE_INFO after them
RowColumns = namedtuple("RowColumns", "time netns ifname dmac pkt_info skb trace")


def full_row(c):
    """The row (ROW_FORMAT) of RowColumns."""
    return ROW_FORMAT % (c.time, c.netns, c.ifname, c.dmac, c.pkt_info, c.skb + c.trace)


class Row(str):
    """A row in the original format that keeps its columns: the sinks that
    take text (-w's comments) take it as it is, the compact rows are made
    of its columns."""

    def __new__(cls, columns):
        row = str.__new__(cls, full_row(columns))
        row.columns = columns
        return row


# PKT_INFO: the protocol's prefix, the addresses, and the ports of TCP and UDP
PORTS_INFO = "%s%s:%d->%s:%d"        # prefix, source, its port, destination, its port
ADDRESSES_INFO = "%s%s->%s"          # prefix, source, destination


# The row's columns, for a decoded event and for a saved one (jsonl.text_row)

def protocol_prefix(family, l4proto, tcp_flags, icmp_type):
    """PKT_INFO before the addresses: T_<FLAGS>:, U:, I_request:, I_reply:,
    I: (other ICMP messages) or the protocol's number."""
    if l4proto == TCP:
        return "T_%s:" % TCP_FLAGS[tcp_flags]
    if l4proto == UDP:
        return "U:"
    if is_icmp(family, l4proto):
        kind = icmp_kind(family, icmp_type)
        return "I_%s:" % kind if kind else "I:"
    return "%d:" % l4proto


# protocol_prefix of TCP and UDP (most rows) by their flags, made once; the
# rows in C are handed the same tables
PORTED_PREFIXES = {l4: tuple(protocol_prefix(0, l4, flags, 0) for flags in range(256))
                   for l4 in PORTED}


def pkt_info(e):
    """PKT_INFO column: T_<FLAGS>:/U:/I_request:/... src->dst. e: an Event,
    or anything with its header fields (l4proto, tcp_flags as a number...)."""
    prefixes = PORTED_PREFIXES.get(e.l4proto)
    if prefixes is not None:
        return PORTS_INFO % (prefixes[e.tcp_flags], e.saddr, e.sport, e.daddr, e.dport)
    return ADDRESSES_INFO % (protocol_prefix(e.family, e.l4proto, e.tcp_flags, e.icmp_type),
                             e.saddr, e.daddr)


def verdict_info(prefix, pf, table, hook, verdict):
    """TRACE_INFO of a netfilter verdict row."""
    return prefix + "%d.%s.%s.%s" % (pf, table or "?", hook, verdict)


def drop_info(text, reason, location):
    """TRACE_INFO of a drop row: the function, its reason and location (texts or None)."""
    if reason:
        text += " reason=%s" % reason
    if location:
        text += " location=%s" % location
    return text


class Clock:
    """Event times: bpf_ktime_get_ns() is CLOCK_MONOTONIC; rows show the
    wall-clock time of the event, or seconds since the first event.
    offset_ns: what to add to a time to make it wall-clock time (None:
    measured now; 0: the times are wall-clock times already, as -r's)."""

    WALL_FORMAT = "%H:%M:%S"        # strftime's
    RELATIVE_DIGITS = 6             # -t: seconds with microseconds

    def __init__(self, relative, offset_ns=None):
        self.relative = relative
        if offset_ns is None:
            offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.offset_ns = offset_ns
        self.first_ns = None
        self._second = None
        self._text = ""
        self._relative_format = "%%.%df" % self.RELATIVE_DIGITS

    def wall_ns(self, ts_ns):
        return ts_ns + self.offset_ns

    def column(self, ts_ns):
        if self.relative:
            if self.first_ns is None:
                self.first_ns = ts_ns
            return self._relative_format % ((ts_ns - self.first_ns) / 1e9)
        second = (ts_ns + self.offset_ns) // 1_000_000_000
        if second != self._second:   # strftime once per second, not per row
            self._second = second
            self._text = time.strftime(self.WALL_FORMAT, time.localtime(second))
        return self._text


# The fields TRACE_INFO shows after the skb address (the rows in C make each
# distinct one once), and all that a row shows but its time and skb address
# (row_of_raw's key: rows of the same flow at the same point share it; ip_id,
# tcp_seq, len, ttl, pid and the like are left out: no row shows them).
# tests/unit/test_event_fields.py checks that no other field changes a row.
TRACE_FIELDS = ("pkt_type", "kind", "probe", "pf", "hook", "verdict", "table", "drop_reason",
                "location", "why", "why_type", "why_code", "why_info", "route_known",
                "route_table", "route_err", "route_type", "route_gw_family", "route_gw",
                "route_dev", "route_prefix_len", "route_prefix", "neigh_family", "neigh_state",
                "neigh_addr", "neigh_waited_us", "ipvs_known", "ipvs_fwd", "ipvs_daf", "ipvs_rport",
                "ipvs_raddr", "ipvs_sched", "tunnel", "tunnel_id", "tunnel_saddr", "tunnel_daddr",
                "unkept")
ROW_FIELDS = ("netns", "ifname", "dmac", "family", "l4proto", "tcp_flags", "icmp_type", "saddr",
              "sport", "daddr", "dport") + TRACE_FIELDS
_ROW_KEY = fields.key_of([fields.at(name) for name in ROW_FIELDS])
_TIME_SKB = fields.struct_of([fields.at("ts_ns"), fields.at("skb")])
ROW_CACHE_LIMIT = 8192
ROW_CACHE_WINDOW = 2048     # rows over which the cache's hit rate is judged
ROW_CACHE_PAUSE = 65536     # rows made without it after a window of mostly misses

# The same rows made in C (skbtracer_lib/events/_rows.c), where scripts/build-rows.sh
# built it: a ring buffer's batch in one call. SKBTRACER_PYTHON_ROWS=1 makes
# them in Python all the same (how the tests compare the two).
PYTHON_ROWS_ENV = "SKBTRACER_PYTHON_ROWS"
ROWS_ABI = 5                # _rows.c's ROWS_ABI: a stale build is not used


def rows_in_c():
    """The _rows module when it is built, current and wanted, else None."""
    if os.environ.get(PYTHON_ROWS_ENV) == "1":
        return None
    try:
        from . import _rows
    except ImportError:
        return None
    if getattr(_rows, "ABI", None) != ROWS_ABI:
        return None
    return _rows


class RowFormatter:
    """Formats events as text rows.

    probe_names: probe id -> function/tracepoint name
    reasons: probes.DropReasons; symbolize: address -> 'func+0xoff'
    names: names.NetnsNames for --names (NETWORK_NS shows the namespace's
    name instead of its inode), else None
    ct: --ct, TRACE_INFO ends in the skb's conntrack state (conntrack.row_suffix)
    """

    def __init__(self, probe_names, reasons, symbolize, clock, names=None, ct=False,
                 rules=None):
        self.probe_names = probe_names
        self.reasons = reasons
        self.symbolize = symbolize
        self.clock = clock
        self.names = names
        self.ct = ct
        if names is not None:
            self.row = self._named_row
        self._parts = {}        # row_of_raw: what the row shows but time and skb, by key
        self._looked_up = self._misses = 0
        self._uncached = 0      # rows to make without the cache
        if ct:      # the ct fields are no part of row_of_raw's key nor of the rows in C
            self.trace_after_skb = self._trace_after_skb_with_ct
            self._uncached = float("inf")
        self.rules = rules      # --nftrace: verdict and netfilter drop rows end in ' rule=...'
        if rules is not None:
            self._without_rule = self.trace_after_skb
            self.trace_after_skb = self._trace_after_skb_with_rule
            self._uncached = float("inf")

    def row_of_raw(self, raw):
        """(row, netns) of raw event bytes, the same text as row(Event(raw)).
        Rows of one flow at one probe differ only in time and skb address:
        the rest is formatted once per distinct key. Where keys hardly
        repeat (every packet a new flow) the cache only costs, so it is
        left off for a while when fewer than half the rows found their key.
        Not for --names (a label may change while tracing)."""
        if self._uncached or len(raw) != EVENT_SIZE:
            if self._uncached:
                self._uncached -= 1
            e = Event(raw)      # -w's longer records and garbage too
            return self.row(e), e.netns
        key = _ROW_KEY.unpack_from(raw)
        parts = self._parts.get(key)
        if parts is None:
            e = Event(raw)
            parts = (_MIDDLE_FORMAT % (e.netns, e.ifname, e.dmac.hex(), pkt_info(e)),
                     self.trace_after_skb(e), e.netns)
            if len(self._parts) >= ROW_CACHE_LIMIT:
                self._parts.clear()
            self._parts[key] = parts
            self._misses += 1
        self._looked_up += 1
        if self._looked_up == ROW_CACHE_WINDOW:
            if 2 * self._misses > ROW_CACHE_WINDOW:
                self._uncached = ROW_CACHE_PAUSE
            self._looked_up = self._misses = 0
        ts_ns, skb = _TIME_SKB.unpack_from(raw)
        return _CACHED_ROW % (self.clock.column(ts_ns), parts[0], skb, parts[1]), parts[2]

    def in_c(self, stack=None, all_stacks=False):
        """A _rows.Formatter making the rows row() makes, or None (not
        built, or --names: its labels are Python's). stack: stack id ->
        its symbols, for rows with their stacks (all_stacks: --callstack,
        a line for "no stack" too), as Session._show writes them."""
        rows = rows_in_c()
        if rows is None or self.names is not None or self.ct:
            return None
        stack_text = None
        if stack is not None:
            def stack_text(stack_id):
                return "".join(line + "\n" for line in self.stack_lines(stack(stack_id)))
        return rows.Formatter(c_spec(), lambda raw: self.trace_after_skb(Event(raw)),
                              self.clock, stack_text, all_stacks)

    def probe_name(self, index):
        return probe_name(self.probe_names, index)

    def trace_info(self, e):
        return "%x" % e.skb + self.trace_after_skb(e)

    def trace_after_skb(self, e):
        """TRACE_INFO after the skb address; --iptable: IPVS's choice
        (ipvs.row_suffix); --why: the neighbour it waited for and the routing
        decision the row took after it; an encapsulated packet's ends in its
        tunnel (tunnel.row_suffix); --on-trouble's first row told of a path
        longer than its record in what it could not keep (unkept_suffix)."""
        text = self._trace_after_skb(e)
        if e.ipvs_known:
            text += ipvs.row_suffix(e)
        if e.neigh_family:
            text += neighbours.row_suffix(e)
        if e.route_known:
            text += routing.row_suffix(e)
        if e.tunnel:
            text += tunnel.row_suffix(e)
        return text + unkept_suffix(e.unkept) if e.unkept else text

    def _trace_after_skb(self, e):
        prefix = ".%d:" % e.pkt_type
        if e.kind == KIND_IPTABLE:
            return verdict_info(prefix, e.pf, e.table, e.hook_name, e.verdict_name)
        if e.kind == KIND_DROP:
            reasons = self.reasons
            return drop_info(prefix + self.probe_name(e.probe),
                             reasons.name(e.drop_reason) if reasons is not None and reasons.names
                             else None,
                             self.symbolize(e.location) if e.location else None)
        if e.kind == KIND_WHY:
            return prefix + self.probe_name(e.probe) + why_trace_info(
                e.why, e.why_type, e.why_code,
                why_mtu(e.family, e.why, e.why_type, e.why_code, e.why_info))
        return prefix + self.probe_name(e.probe)

    def rule_of(self, e):
        """--nftrace: the decision of a verdict or netfilter drop row, or
        None (nftrace.Nftrace.of_row)."""
        reasons = self.reasons
        reason = (reasons.name(e.drop_reason) if reasons is not None and reasons.names
                  else None)
        location = self.symbolize(e.location) if e.location else None
        return self.rules.of_row(e, reason, location)

    def _trace_after_skb_with_rule(self, e):
        return self._without_rule(e) + nftrace_suffix(self.rule_of(e))

    def _trace_after_skb_with_ct(self, e):
        return RowFormatter.trace_after_skb(self, e) + conntrack.row_suffix(e)

    def row(self, e):
        return ROW_FORMAT % (self.clock.column(e.ts_ns), e.netns, e.ifname, e.dmac.hex(),
                             pkt_info(e), self.trace_info(e))

    def _named_row(self, e):
        return full_row(self.columns(e))

    def columns(self, e):
        """The RowColumns of an Event."""
        return RowColumns(self.clock.column(e.ts_ns),
                          e.netns if self.names is None else self.names.label(e.netns),
                          e.ifname, e.dmac.hex(), pkt_info(e), "%x" % e.skb,
                          self.trace_after_skb(e))

    def row_with_columns(self, e):
        """row(e) as a Row: what the compact rows are made of."""
        return Row(self.columns(e))

    @staticmethod
    def stack_lines(symbols):
        return ["    %s" % s for s in symbols]


def unkept_suffix(unkept):
    """--on-trouble: what the first row told of a record that outgrew its
    sightings ends in: the sightings before it that were not kept."""
    return " (%d more sightings not kept)" % unkept


_ARGUMENT = re.compile(r"%[sd]")


@functools.lru_cache(maxsize=1)
def c_spec():
    """What _rows.Formatter is told when it is made, so that the C copy
    writes nothing of its own: where the fields are (fields.FIELDS), the
    row's format and widths, the words of PKT_INFO (protocol_prefix for
    every value of the byte it depends on), how names are escaped (each
    byte as decode.c_string shows it), the clock's formats and the numbers
    it shares with reader.py."""
    u8 = range(256)
    assert PORTED == (TCP, UDP), "the rows in C show the ports of TCP and UDP only"
    return {
        "event_size": EVENT_SIZE,
        "fields": fields.c_offsets(),
        "trace_fields": tuple((fields.at(name).offset, fields.at(name).size)
                              for name in TRACE_FIELDS),
        "row_literals": _ROW_LITERALS,
        "row_widths": _ROW_WIDTHS,
        "ports_literals": tuple(_ARGUMENT.split(PORTS_INFO)),
        "addresses_literals": tuple(_ARGUMENT.split(ADDRESSES_INFO)),
        "tcp": TCP, "udp": UDP, "icmp4": ICMP_PROTOCOLS[4], "icmp6": ICMP_PROTOCOLS[6],
        "tcp_prefixes": PORTED_PREFIXES[TCP], "udp_prefixes": PORTED_PREFIXES[UDP],
        "icmp4_prefixes": tuple(protocol_prefix(4, ICMP_PROTOCOLS[4], 0, t) for t in u8),
        "icmp6_prefixes": tuple(protocol_prefix(6, ICMP_PROTOCOLS[6], 0, t) for t in u8),
        "other_prefixes": tuple(protocol_prefix(0, l4, 0, 0) for l4 in u8),
        "name_bytes": tuple(c_string(bytes([b])) for b in u8),
        "wall_format": Clock.WALL_FORMAT, "relative_digits": Clock.RELATIVE_DIGITS,
        "stop_end": reader.STOP_END, "stop_busy": reader.STOP_BUSY,
        "stop_slow": reader.STOP_SLOW, "stop_count": reader.STOP_COUNT,
        "ringbuf_busy": reader.RINGBUF_BUSY, "ringbuf_discard": reader.RINGBUF_DISCARD,
        "ringbuf_header": reader.RINGBUF_HEADER,
    }
