"""Turning decoded events into the original tool's text rows."""

import time

from .events import KIND_IPTABLE, KIND_DROP

HEADER_FORMAT = "%-10s %-12s %-12s %-12s %-40s %s"
ROW_FORMAT = "[%-8s][%-10s] %-12s %-12s %-40s %s"
HEADER = HEADER_FORMAT % ("time", "NETWORK_NS", "INTERFACE", "DEST_MAC", "PKT_INFO", "TRACE_INFO")

# TCP flags in the original's order, CWR first
_TCP_FLAG_NAMES = [(0x80, "CWR"), (0x40, "ECE"), (0x20, "URG"), (0x10, "ACK"),
                   (0x08, "PSH"), (0x04, "RST"), (0x02, "SYN"), (0x01, "FIN")]
TCP_FLAGS = [",".join(name for bit, name in _TCP_FLAG_NAMES if value & bit)
             for value in range(256)]


def pkt_info(e):
    """PKT_INFO column: T_<FLAGS>:/U:/I_request:/... src->dst."""
    if e.l4proto == 6:
        return "T_%s:%s:%d->%s:%d" % (TCP_FLAGS[e.tcp_flags], e.saddr, e.sport, e.daddr, e.dport)
    if e.l4proto == 17:
        return "U:%s:%d->%s:%d" % (e.saddr, e.sport, e.daddr, e.dport)
    if e.is_icmp:
        kind = e.icmp_kind
        return "I%s:%s->%s" % ("_" + kind if kind else "", e.saddr, e.daddr)
    return "%d:%s->%s" % (e.l4proto, e.saddr, e.daddr)


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

    def trace_info(self, e):
        prefix = "%x.%d:" % (e.skb, e.pkt_type)
        if e.kind == KIND_IPTABLE:
            return prefix + "%d.%s.%s.%s" % (e.pf, e.table or "?", e.hook_name, e.verdict_name)
        if e.kind == KIND_DROP:
            text = prefix + self.probe_names[e.probe]
            if self.reasons is not None and self.reasons.names:
                text += " reason=%s" % self.reasons.name(e.drop_reason)
            if e.location:
                text += " location=%s" % self.symbolize(e.location)
            return text
        return prefix + self.probe_names[e.probe]

    def row(self, e):
        return ROW_FORMAT % (self.clock.column(e.ts_ns), e.netns, e.ifname, e.dmac.hex(),
                             pkt_info(e), self.trace_info(e))

    def _named_row(self, e):
        return ROW_FORMAT % (self.clock.column(e.ts_ns), self.names.label(e.netns), e.ifname,
                             e.dmac.hex(), pkt_info(e), self.trace_info(e))

    @staticmethod
    def stack_lines(symbols):
        return ["    %s" % s for s in symbols]
