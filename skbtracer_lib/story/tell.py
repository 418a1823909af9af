"""The story as the session writes it at exit, on stderr, fitted to a width:
the headline, what cut the trace short, the DUPLICATE / DROPPED / VANISHED
lines, the table (one row per flow, path and end: flows.py; one row per
packet with --story-per-packet), what the run could not see, and the
slowest packets' times through the network."""

from .fit import DEFAULT_WIDTH, table, wrap, wrap_lines
from .flows import group_flows, network_span, socket_wait
from .model import EndKind
from .points import MAX_TABLE_PACKETS, stopped_after
from .render_text import duration_text

MAX_TIME_LINES = 1           # the table's TIME column has every row's spread


def exit_lines(story, events, beyond=0, limit=0, width=DEFAULT_WIDTH, per_packet=False):
    """What the session writes at exit. events: how many were grouped;
    beyond: how many were not kept (limit: the story's event limit)."""
    count = len(story.packets)
    lines = ["skbtracer: the story of %d packet%s in %d events (--no-summary turns it off)"
             % (count, "" if count == 1 else "s", events)]
    if beyond:
        lines.append("skbtracer: the story covers the first %d events; %d more were "
                     "not kept" % (limit, beyond))
    cut = cut_line(story)
    if cut:
        lines.append(cut)
    lines += story.flag_lines()
    rows, left_out = packet_table(story, width) if per_packet else flow_table(story, width)
    notes = []
    footnote = story.footnote()
    if footnote:
        notes.append("skbtracer: " + footnote)
    if left_out:
        notes.append("skbtracer: %d more %s not in the table (--json has them all)"
                     % (left_out, "packets" if per_packet else "rows"))
    return wrap_lines(lines, width) + rows + wrap_lines(notes, width)


def cut_line(story):
    """How many packets the end of tracing cut off, and by what."""
    cut = [p for p in story.packets if any(e.kind == EndKind.CUT for e in p.ends())]
    if not cut:
        return None
    after = stopped_after(story.stopped_by)
    if story.stopped_by == "-c":
        how = "-c stopped the trace"
    elif after:
        how = "tracing stopped after %s (--duration)" % after
    else:
        how = "the end of tracing (%s) stopped the trace" % story.stopped_by
    one = len(cut) == 1
    return ("skbtracer: %d packet%s still on %s way when %s: told as far as %s seen"
            % (len(cut), "" if one else "s", "its" if one else "their", how,
               "it was" if one else "they were"))


def _columns(headers, rows, story):
    """Leave out the columns that say nothing in this run: NETFILTER when no
    verdict was traced or seen, SKBS when every packet was one skb, CT when
    no row saw a conntrack entry."""
    drop = set()
    if all(r[headers.index("CT")] == "-" for r in rows):
        drop.add("CT")
    if not story.iptable_traced or all(r[headers.index("NETFILTER")] == "-" for r in rows):
        drop.add("NETFILTER")
    if all(str(r[headers.index("SKBS")]) == "1" for r in rows):       # flows: '1', '1-2'...
        drop.add("SKBS")
    if "TIME" in headers and all(r[headers.index("TIME")] == "-" for r in rows):
        drop.add("TIME")
    keep = [i for i, h in enumerate(headers) if h not in drop]
    return [headers[i] for i in keep], [[r[i] for i in keep] for r in rows]


def _render(headers, rows, story, width):
    """A table when its rows fit width, else a block of lines per row."""
    headers, rows = _columns(headers, rows, story)
    lines = table(headers, rows).split("\n")
    if max(len(line) for line in lines) <= width:
        return lines
    out = []
    for row in rows:
        out += _block(dict(zip(headers, (str(x) for x in row))), width)
    return out


def _block(cells, width):
    """A row as lines: what and how many, then its path, verdicts and end,
    each wrapped under its label."""
    first = cells.get("PACKETS") or "#" + cells["#"]
    if first.startswith("#"):
        head = "%s %s" % (first, cells["FLOW"])
    else:
        head = "%s packets %s" % (first, cells["FLOW"])
    if "SEEN" in cells:
        head += " at " + cells["SEEN"]
    facts = []
    if cells.get("TIME", "-") != "-":
        facts.append("took " + cells["TIME"])
    if "SKBS" in cells:
        facts.append("%s skb%s" % (cells["SKBS"], "" if cells["SKBS"] == "1" else "s"))
    if facts:
        head += ": " + ", ".join(facts)
    lines = wrap(head, width)
    for label in ("PATH", "NETFILTER", "CT", "END"):
        if label in cells:
            tag = "    %s: " % label.lower()
            lines += wrap(tag + cells[label], width, len(tag))
    return lines


def _chosen(items, flagged, limit):
    """items in order, at most limit, flagged ones first; and how many were left out."""
    if len(items) <= limit:
        return items, 0
    first = [x for x in items if flagged(x)]
    rest = [x for x in items if not flagged(x)]
    keep = {id(x) for x in (first + rest)[:limit]}
    return [x for x in items if id(x) in keep], len(items) - limit


def flow_table(story, width, limit=MAX_TABLE_PACKETS):
    """(lines, rows left out): one row per flow, path, verdicts and end; a row
    of one packet shows its number (#7), a busier one how many packets."""
    groups, left_out = _chosen(group_flows(story),
                               lambda g: any(story.flagged(p) for p in g.packets), limit)
    start = min((p.first_ts for p in story.packets), default=0)
    rows = []
    for g in groups:
        spans = g.spans()
        rows.append(["#%d" % g.packets[0].number if g.count == 1 else "{:,}".format(g.count),
                     g.flow, g.path, g.netfilter, g.ct, g.end, g.skbs,
                     _seen_text(g, start), _spread_text(spans)])
    headers = ["PACKETS", "FLOW", "PATH", "NETFILTER", "CT", "END", "SKBS", "SEEN", "TIME"]
    return _render(headers, rows, story, width), left_out


def packet_table(story, width, limit=MAX_TABLE_PACKETS):
    """(lines, packets left out): today's detail, one row per packet."""
    packets, left_out = _chosen(story.packets, story.flagged, limit)
    rows = [[p.number, story.flow_text(p), story.path_text(p), story.netfilter_text(p),
             story.ct_text(p), story.packet_end_text(p), len(p.copies)] for p in packets]
    headers = ["#", "FLOW", "PATH", "NETFILTER", "CT", "END", "SKBS"]
    return _render(headers, rows, story, width), left_out


def _seen_text(group, start):
    """When the group's packets were seen, in seconds since the story's first."""
    first = (group.first_ts - start) / 1e9
    if group.count == 1:
        return "%.3f s" % first
    return "%.3f-%.3f s" % (first, (group.last_ts - start) / 1e9)


def _spread_text(spans):
    """A packet's time through the network; for several, the median and the
    largest ("-": seen once)."""
    if not spans:
        return "-"
    median, largest = duration_text(spans[len(spans) // 2]), duration_text(spans[-1])
    return median if median == largest else "%s (max %s)" % (median, largest)


def time_lines(story, width=DEFAULT_WIDTH, slowest_hop=None):
    """A TIME line for the slowest packet seen more than once on its way: its
    time through the network and its slowest hop (slowest_hop(packet) ->
    latency.Hop or None), then any wait in a socket for the application."""
    timed = [(network_span(p), p) for p in story.packets]
    timed = sorted(((s, p) for s, p in timed if s is not None),
                   key=lambda sp: sp[0], reverse=True)
    lines = []
    for span, packet in timed[:MAX_TIME_LINES]:
        text = "TIME: the slowest, packet #%d, %s in the network" % (packet.number,
                                                                   duration_text(span))
        hop = slowest_hop(packet) if slowest_hop is not None else None
        if hop is not None:
            text += "; slowest hop %s -> %s, %s" % (hop.source, hop.target,
                                                     duration_text(hop.ns))
        wait = socket_wait(packet)
        if wait:
            text += "; then %s in a socket until the application read it" % duration_text(wait)
        lines += wrap(text, width)
    return lines
