"""Events -> copies -> packets (see the package's docstring for the rules),
then each copy's parent and end."""

from ..events.vocabulary import KIND_DROP, KIND_IPTABLE, probe_name
from .ends import end_of, last_interface
from .model import Copy, End, EndKind, Header, Packet
from .points import (FREE_POINTS, JOIN_WINDOW_NS, LATE_VERDICT_NS, MAX_COPIES, REUSE_GAP_NS,
                     RX_POINTS, TAP_POINTS, sees_after_receive)


def group(events, probe_names, visible=None, enters=None, extra=()):
    """Events -> [Packet] in order of their first event. visible: names of the
    probe points that were attached (default: all of probe_names); enters:
    None, or (-r over several nodes, merge.Wire) enters.may_enter(e, name,
    packet): may a new copy at e join packet although no copy of it is in
    e's namespace (it came over the wire from another node)? and
    enters.crosses(copy, child): did child take over from copy there?
    extra: names of --all/--func functions; their rows of an skb just freed
    (the free's own functions: skb_release_data, kfree_skbmem...) tell
    nothing more."""
    visible = set(probe_names if visible is None else visible)
    grouping = _Grouping(probe_names, set(extra), enters)
    for e in sorted(events, key=lambda e: e.ts_ns):
        grouping.add(e)
    after_receive = sees_after_receive(visible)
    for packet in grouping.packets:
        _link(packet, after_receive, enters)
    return grouping.packets


def location(e, name):
    """Where an event was, as far as telling copies apart goes."""
    if e.kind == KIND_IPTABLE:
        return (e.netns, e.ifname, name, e.pf, e.hook, e.table, e.chain)
    return (e.netns, e.ifname, name)


class _Grouping:
    def __init__(self, probe_names, extra, enters):
        self.probe_names = probe_names
        self.extra = extra
        self.enters = enters
        self.live = {}      # skb address -> Copy
        self.ended = {}     # skb address -> Copy freed or dropped last at that address
        self.shown = {}     # (identity, one endpoint) of a header -> [Packet] that showed it
        self.packets = []

    def add(self, e):
        name = probe_name(self.probe_names, e.probe)
        header = Header.of(e)
        loc = location(e, name)
        copy = self.live.get(e.skb)
        if copy is None and self._late_row(e, name, header):
            return
        if copy is not None and continues(copy, e, name, header, loc, name in self.extra):
            copy.add(e, name, header, loc)
        else:
            copy = self._new_copy(e, name, header, loc)
        packet = copy.packet
        packet.last_ts = e.ts_ns
        if (len(packet.origins) == 1 and e.kind != KIND_IPTABLE and name not in FREE_POINTS
                and name not in TAP_POINTS and loc != packet.origins[0]):
            packet.origins.append(loc)
        if header not in packet.header_set:
            self._shows(packet, header)
        if e.kind == KIND_DROP:
            copy.dropped = e
            self.ended[e.skb] = self.live.pop(e.skb)
        elif name in FREE_POINTS:
            copy.freed = e
            self.ended[e.skb] = self.live.pop(e.skb)

    def _late_row(self, e, name, header):
        """Is e a row of the copy freed at its address just before (and used up)?
        --all/--func rows of the free's own functions tell nothing more; a
        verdict is read when the netfilter call returns, so a table that
        dropped the skb itself (nf_tables' bridge family) reports after the
        free: that row still belongs to the freed copy."""
        if name not in self.extra and e.kind != KIND_IPTABLE:
            return False
        gone = self.ended.get(e.skb)
        end = gone.ended_by if gone is not None else None
        if (end is None or e.ts_ns - end.ts_ns > LATE_VERDICT_NS
                or header != gone.last_header):
            return False
        if name not in self.extra:
            gone.add_late(e, name)
        return True

    def _new_copy(self, e, name, header, loc):
        copy = Copy(e, name, header, loc)
        packet = choose_packet(candidates(self.shown, header, e.ts_ns), e, header, loc,
                               name, self.enters)
        if packet is None:
            self.packets.append(Packet(len(self.packets) + 1, copy))
        else:
            packet.add_copy(copy)
        self.live[e.skb] = copy
        return copy

    def _shows(self, packet, header):
        packet.header_set.add(header)
        packet.headers.append(header)
        for key in index_keys(header):
            found = self.shown.setdefault(key, [])
            if not found or found[-1] is not packet:
                found.append(packet)


def continues(copy, e, name, header, loc, extra=False):
    """Is e a row of copy (rather than of a new copy at a reused address)?
    extra: an --all/--func function's row. Those are everywhere on the
    way (skb_scrub_packet and eth_type_trans before the peer's netif_rx,
    helpers called twice at one place): they neither enter a namespace
    nor mark a reused address."""
    if not copy.alive:
        return False
    if e.ts_ns - copy.last_ts > REUSE_GAP_NS and not (
            name in FREE_POINTS and header == copy.last_header and e.netns in (0, copy.netns)):
        return False          # (frees can come late: 6.x defers many to another CPU)
    if header != copy.last_header and not header.nat_related(copy.last_header):
        return False
    if extra:
        return True
    if (e.kind != KIND_IPTABLE and loc == copy.first_loc and loc != copy.last_loc
            and header == copy.first_header):
        return False          # back where it started: the address was reused
    if (e.netns and copy.netns and e.netns != copy.netns and name not in RX_POINTS
            and name not in FREE_POINTS and e.kind != KIND_DROP):
        return False          # skbs enter a namespace by being received there
    return True


def index_keys(header):
    """A NATed header keeps its source or its destination: index by each."""
    ident = header.identity
    return (ident, "s", header.saddr, header.sport), (ident, "d", header.daddr, header.dport)


def candidates(shown, header, ts, recent=16):
    """Packets that showed a header this one may be a copy or NAT of, lately:
    the last `recent` of each index entry (a busy flow with IP id 0 shows the
    same header in thousands of packets a second; its copies are made while
    the packet they copy is among the latest)."""
    out = []
    for key in index_keys(header):
        found = shown.get(key)
        if not found:
            continue
        if len(found) > 256:            # forget packets gone quiet (amortized)
            found[:] = [p for p in found if ts - p.last_ts <= JOIN_WINDOW_NS][-256:]
        for packet in found[-recent:]:
            if packet not in out:
                out.append(packet)
    return out


def choose_packet(found, e, header, loc, name=None, enters=None):
    """The packet a new copy belongs to, or None. Same header first, then a
    NATed one; where the packet itself first appeared only the same header
    with a non-zero IPv4 id (several copies first seen at one place when a
    filter hides where they came from)."""
    exact = nated = None
    for packet in found or ():
        if e.ts_ns - packet.last_ts > JOIN_WINDOW_NS or len(packet.copies) >= MAX_COPIES:
            continue
        if e.netns and not packet.is_in(e.netns, e.ts_ns) and not (
                enters is not None and enters.may_enter(e, name, packet)):
            continue          # copies are made where the packet is
        at_origin = loc in packet.origins
        if header in packet.header_set:
            if at_origin and not header.strong_id:
                continue
            if exact is None or packet.last_ts > exact.last_ts:
                exact = packet
        elif not at_origin and any(header.nat_related(u) for u in packet.headers):
            if nated is None or packet.last_ts > nated.last_ts:
                nated = packet
    return exact or nated


def _link(packet, after_receive, enters=None):
    """Parents, children, hand-overs and the end of every copy."""
    copies = sorted(packet.copies, key=lambda c: c.birth)
    packet.copies = copies
    for i, child in enumerate(copies[1:], 1):
        parent = _parent(copies, i, child)
        child.parent = parent
        parent.children.append(child)
    for copy in copies:
        copy.end = end_of(copy, after_receive)
        if copy.end.kind in (EndKind.DELIVERED, EndKind.LOCAL, EndKind.DROPPED):
            continue
        if any(_handed_over(copy, child, enters) for child in copy.children):
            copy.end = End(EndKind.CONTINUED, ts_ns=copy.last_ts)


def _parent(copies, i, child):
    """The copy of the packet touched last before child appeared (else the first)."""
    best, best_ts = None, None
    for other in copies[:i] + copies[i + 1:]:
        if other.birth > child.birth or other is child:
            continue
        if other.dropped is not None and other.dropped.ts_ns <= child.birth:
            continue
        ts = other.last_event_at_or_before(child.birth)
        if ts is not None and (best_ts is None or ts > best_ts):
            best, best_ts = other, ts
    return best if best is not None else copies[0]


def _handed_over(copy, child, enters):
    """Did copy hand the packet over to child (skb copied or unshared) rather
    than branch: it travelled no more after the child appeared, where the
    child appeared (or, -r over several nodes, it left and child arrived)?"""
    if not _no_travel_after(copy, child.birth):
        return False
    if child.events[0].netns == last_interface(copy).netns:
        return True
    return enters is not None and copy.end.kind == EndKind.LEFT and enters.crosses(copy, child)


def _no_travel_after(copy, ts):
    """Has copy no event after ts other than its free?"""
    return all(e.ts_ns <= ts or n in FREE_POINTS for e, n in copy.rows)
