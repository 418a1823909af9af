"""Where the time went: per packet, its first to last sighting and its
slowest hop; over all packets (--latency), the hop-to-hop delays between
consecutive probe points (count, median, p99, max).

A hop is two consecutive rows of one skb, or a copy's first row and the
row of its parent just before it was made (the copy's birth). Frees and
packet-socket taps are not on the packet's way: they are left out.
"""

from typing import NamedTuple

from .fit import DEFAULT_WIDTH, table, wrap
from .flows import APPLICATION_POINTS
from .points import FREE_POINTS, TAP_POINTS
from .render_text import duration_text
from .tell import time_lines


def point_text(story, e, name):
    if e.ifname or e.netns:
        return "%s(%s)" % (name, story.place_text(e.netns, e.ifname))
    return name


class Hop(NamedTuple):
    source: str             # the probe point and place it went from
    target: str
    ns: int
    at: int                 # when it left (ktime ns)
    to_point: str = ""      # the probe point it went to


def _on_the_way(copy):
    return [(e, n) for e, n in copy.rows if n not in FREE_POINTS and n not in TAP_POINTS]


def hops(story, packet):
    """[Hop] of packet, in time order."""
    out = []
    for copy in packet.copies:
        rows = _on_the_way(copy)
        parent = copy.parent
        if parent is not None and rows:
            first, _name = rows[0]
            before = [(e, n) for e, n in _on_the_way(parent) if e.ts_ns <= first.ts_ns]
            if before:
                rows.insert(0, before[-1])
        for (a, an), (b, bn) in zip(rows, rows[1:]):
            out.append(Hop(point_text(story, a, an), point_text(story, b, bn),
                           b.ts_ns - a.ts_ns, a.ts_ns, bn))
    out.sort(key=lambda hop: hop.at)
    return out


def packet_time(story, packet):
    """(first to last sighting ns, slowest Hop or None)."""
    found = hops(story, packet)
    slowest = max(found, key=lambda hop: hop.ns) if found else None
    return packet.last_ts - packet.first_ts, slowest


def slowest_network_hop(story, packet):
    """The slowest hop on the packet's way through the network (not the wait
    for the application to read its socket), or None."""
    found = [h for h in hops(story, packet) if h.to_point not in APPLICATION_POINTS]
    return max(found, key=lambda hop: hop.ns) if found else None


def percentile(values, fraction):
    """values sorted; nearest-rank percentile."""
    if not values:
        return 0
    rank = max(1, -(-len(values) * fraction // 1))
    return values[int(rank) - 1]


def hop_table_rows(story):
    """[(from, to, count, median ns, p99 ns, max ns)] over every packet's hops."""
    delays = {}
    for packet in story.packets:
        for hop in hops(story, packet):
            delays.setdefault((hop.source, hop.target), []).append(hop.ns)
    rows = []
    for (a, b), values in delays.items():
        values.sort()
        rows.append((a, b, len(values), percentile(values, 0.5), percentile(values, 0.99),
                     values[-1]))
    rows.sort(key=lambda r: -r[4])
    return rows


def hop_table(story, width=None):
    rows = [[a, b, n, duration_text(med), duration_text(p99), duration_text(top)]
            for a, b, n, med, p99, top in hop_table_rows(story)]
    return table(["FROM", "TO", "COUNT", "MEDIAN", "P99", "MAX"], rows, width, (0, 1))


def story_lines(story, with_table=False, width=DEFAULT_WIDTH):
    """TIME lines for the slowest packets; with --latency the hop table."""
    lines = time_lines(story, width, lambda packet: slowest_network_hop(story, packet))
    if with_table:
        count = len(story.packets)
        lines += wrap("skbtracer: hop-to-hop delays over %d packet%s (--latency)"
                      % (count, "" if count == 1 else "s"), width)
        lines.append(hop_table(story, width))
    return lines


def with_hops(obj, story):
    """A "summary" object with its per-hop deltas and span; others as they are."""
    if obj.get("type") != "summary":
        return obj
    packet = story.packets[obj["packet"] - 1]
    span, slowest = packet_time(story, packet)
    obj["span_ns"] = span
    obj["hops"] = [{"from": h.source, "to": h.target, "ns": h.ns} for h in hops(story, packet)]
    obj["slowest_hop"] = ({"from": slowest.source, "to": slowest.target, "ns": slowest.ns}
                          if slowest else None)
    return obj
