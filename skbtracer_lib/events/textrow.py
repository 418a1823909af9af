"""The text row: the original tool's columns for a decoded event (the
reference), and the same rows made in C (_rows.c) where it is built."""

import os
import struct
import time

from .decode import EVENT_SIZE, Event
from .vocabulary import KIND_DROP, KIND_IPTABLE, TCP_FLAGS, icmp_kind, is_icmp, probe_name

HEADER_FORMAT = "%-10s %-12s %-12s %-12s %-40s %s"
ROW_FORMAT = "[%-8s][%-10s] %-12s %-12s %-40s %s"
_MIDDLE_FORMAT = "][%-10s] %-12s %-12s %-40s "    # ROW_FORMAT between time and TRACE_INFO
HEADER = HEADER_FORMAT % ("time", "NETWORK_NS", "INTERFACE", "DEST_MAC", "PKT_INFO", "TRACE_INFO")


# The row's columns, for a decoded event and for a saved one (jsonout.text_row)

def pkt_info(e):
    """PKT_INFO column: T_<FLAGS>:/U:/I_request:/... src->dst. e: an Event,
    or anything with its header fields (l4proto, tcp_flags as a number...)."""
    l4 = e.l4proto
    if l4 == 6:
        return "T_%s:%s:%d->%s:%d" % (TCP_FLAGS[e.tcp_flags], e.saddr, e.sport, e.daddr, e.dport)
    if l4 == 17:
        return "U:%s:%d->%s:%d" % (e.saddr, e.sport, e.daddr, e.dport)
    if is_icmp(e.family, l4):
        kind = icmp_kind(e.family, e.icmp_type)
        return "I%s:%s->%s" % ("_" + kind if kind else "", e.saddr, e.daddr)
    return "%d:%s->%s" % (l4, e.saddr, e.daddr)


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
    wall-clock time of the event, or seconds since the first event."""

    def __init__(self, relative):
        self.relative = relative
        self.offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        self.first_ns = None
        self._second = None
        self._text = ""

    def wall_ns(self, ts_ns):
        return ts_ns + self.offset_ns

    def column(self, ts_ns):
        if self.relative:
            if self.first_ns is None:
                self.first_ns = ts_ns
            return "%.6f" % ((ts_ns - self.first_ns) / 1e9)
        second = (ts_ns + self.offset_ns) // 1_000_000_000
        if second != self._second:   # strftime once per second, not per row
            self._second = second
            self._text = time.strftime("%H:%M:%S", time.localtime(second))
        return self._text


# What a text row shows of an event, but its time and skb address: location,
# netns; drop_reason, verdict; probe; sport, dport; kind .. icmp_type; pf ..
# dmac; saddr .. table (struct event_t offsets 16, 36, 56, 60, 66, 73, 104).
# Rows of the same flow at the same point share it (ip_id, tcp_seq, len,
# ttl, pid and the like are left out: no row shows them).
_ROW_KEY = struct.Struct("<16x 12s 8x 8s 12x 2s 2x 4s 2x 6s x 25s 6x 64s")
_TIME_SKB = struct.Struct("<QQ")
ROW_CACHE_LIMIT = 8192
ROW_CACHE_WINDOW = 2048     # rows over which the cache's hit rate is judged
ROW_CACHE_PAUSE = 65536     # rows made without it after a window of mostly misses

# The same rows made in C (skbtracer_lib/events/_rows.c), where scripts/build-rows.sh
# built it: a ring buffer's batch in one call. SKBTRACER_PYTHON_ROWS=1 makes
# them in Python all the same (how the tests compare the two).
PYTHON_ROWS_ENV = "SKBTRACER_PYTHON_ROWS"
ROWS_ABI = 1                # _rows.c's ROWS_ABI: a stale build is not used


def rows_in_c():
    """The _rows module when it is built, current and wanted, else None."""
    if os.environ.get(PYTHON_ROWS_ENV) == "1":
        return None
    try:
        from . import _rows
    except ImportError:
        return None
    if getattr(_rows, "ABI", None) != ROWS_ABI or _rows.EVENT_SIZE != EVENT_SIZE:
        return None
    return _rows


class RowFormatter:
    """Formats events as text rows.

    probe_names: probe id -> function/tracepoint name
    reasons: probes.DropReasons; symbolize: address -> 'func+0xoff'
    names: names.NetnsNames for --names (NETWORK_NS shows the namespace's
    name instead of its inode), else None
    """

    def __init__(self, probe_names, reasons, symbolize, clock, names=None):
        self.probe_names = probe_names
        self.reasons = reasons
        self.symbolize = symbolize
        self.clock = clock
        self.names = names
        if names is not None:
            self.row = self._named_row
        self._parts = {}        # row_of_raw: what the row shows but time and skb, by key
        self._looked_up = self._misses = 0
        self._uncached = 0      # rows to make without the cache

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
        return "[%-8s%s%x%s" % (self.clock.column(ts_ns), parts[0], skb, parts[1]), parts[2]

    def in_c(self, stack=None, all_stacks=False):
        """A _rows.Formatter making the rows row() makes, or None (not
        built, or --names: its labels are Python's). stack: stack id ->
        its symbols, for rows with their stacks (all_stacks: --callstack,
        a line for "no stack" too), as Session._show writes them."""
        rows = rows_in_c()
        if rows is None or self.names is not None:
            return None
        stack_text = None
        if stack is not None:
            def stack_text(stack_id):
                return "".join(line + "\n" for line in self.stack_lines(stack(stack_id)))
        return rows.Formatter(lambda raw: self.trace_after_skb(Event(raw)), self.clock,
                              stack_text, all_stacks)

    def probe_name(self, index):
        return probe_name(self.probe_names, index)

    def trace_info(self, e):
        return "%x" % e.skb + self.trace_after_skb(e)

    def trace_after_skb(self, e):
        """TRACE_INFO after the skb address."""
        prefix = ".%d:" % e.pkt_type
        if e.kind == KIND_IPTABLE:
            return verdict_info(prefix, e.pf, e.table, e.hook_name, e.verdict_name)
        if e.kind == KIND_DROP:
            reasons = self.reasons
            return drop_info(prefix + self.probe_name(e.probe),
                             reasons.name(e.drop_reason) if reasons is not None and reasons.names
                             else None,
                             self.symbolize(e.location) if e.location else None)
        return prefix + self.probe_name(e.probe)

    def row(self, e):
        return ROW_FORMAT % (self.clock.column(e.ts_ns), e.netns, e.ifname, e.dmac.hex(),
                             pkt_info(e), self.trace_info(e))

    def _named_row(self, e):
        return ROW_FORMAT % (self.clock.column(e.ts_ns), self.names.label(e.netns), e.ifname,
                             e.dmac.hex(), pkt_info(e), self.trace_info(e))

    @staticmethod
    def stack_lines(symbols):
        return ["    %s" % s for s in symbols]
