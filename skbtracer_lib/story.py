"""The packet's story at exit: which packets were traced, the interfaces
each crossed, its netfilter verdicts, where each copy ended, and copies of
one packet that reached the same place more than once (duplicates).

While tracing, StoryBook.add() only keeps the decoded event (O(1)); the
grouping runs once, at exit (build()).

Grouping
  - A *copy* is one skb address from its first event until it is freed
    (consume_skb row, kfree_skb drop row). An address seen again after a
    free, after a long pause, with an unrelated packet, back where it
    started, or in another namespace without being received there is a new
    copy: slab objects are reused, and not every free is seen (6.x frees
    many skbs through paths without the consume_skb tracepoint).
  - A *packet* is the copies that carried the same IP packet. A new copy
    joins a packet that has shown the same header (addresses, protocol,
    ports, IP id, TCP sequence and flags, ICMP type and id; not the TTL,
    which routing changes), or that header with its source or its
    destination NATed, within JOIN_WINDOW_NS, in a namespace where a copy of
    that packet is (copies are made where the packet is), preferring the
    packet whose skb was touched last. A copy that first appears where the packet itself
    first appeared is a new packet, unless the IPv4 id is non-zero: UDP
    senders with DF set send id 0, so equal headers there mean "same flow",
    not "same packet". Within one copy NAT may change the source or the
    destination between two rows, not both.
  - A copy's *parent* is the copy of the same packet touched last before
    it appeared. A parent that was not delivered or dropped, travelled no
    more after the child appeared, and was last seen in the namespace the
    child appeared in handed the packet over (skb copied or unshared)
    rather than branching.
"""

import bisect
from dataclasses import dataclass, field

from .events import KIND_DROP, KIND_IPTABLE, NF_PROTOCOLS, Event, probe_name as _probe_name

MAX_EVENTS = 100_000            # events kept for the story; beyond that it is partial
JOIN_WINDOW_NS = 1_000_000_000
REUSE_GAP_NS = 1_000_000_000
LATE_VERDICT_NS = 10_000_000    # a verdict row reported just after its skb was freed
HANDOVER_NS = 50_000_000        # a freed skb's namespace still counts for a new copy
MAX_COPIES = 64                 # copies per packet (a flood to 64 bridge ports); then a new one
MAX_FLAG_LINES = 20             # per kind (DUPLICATE, DROPPED, VANISHED)
MAX_TABLE_PACKETS = 200

# Probe points by what they mean for the story (kprobe function names and
# tracepoint names; whichever the backend has).
SOCKET_POINTS = {"skb_copy_datagram_iovec": "copied to a socket",
                 "__udp_enqueue_schedule_skb": "queued to a UDP socket"}
LOCAL_POINTS = {"ip_local_deliver", "udp_rcv", "tcp_v4_rcv", "icmp_rcv", "ip6_input",
                "udpv6_rcv", "tcp_v6_rcv", "icmpv6_rcv"}
FREE_POINTS = {"consume_skb"}
TAP_POINTS = {"packet_rcv", "tpacket_rcv"}
RX_POINTS = {"netif_rx", "netif_receive_skb", "__netif_receive_skb", "napi_gro_receive",
             "napi_gro_receive_entry", "netif_receive_skb_entry", "br_handle_frame",
             "ip_rcv", "ipv6_rcv"}
TX_POINTS = {"net_dev_queue", "net_dev_start_xmit", "__dev_queue_xmit", "dev_queue_xmit",
             "dev_hard_start_xmit", "br_dev_xmit"}
CROSS_POINTS = RX_POINTS | TX_POINTS
LANDMARKS = {"br_forward", "__br_forward", "br_pass_frame_up", "ip_rcv", "ipv6_rcv",
             "ip_forward", "ip6_forward", "ip_output", "ip6_output",
             "netif_receive_skb", "net_dev_queue"}
FORWARD_POINTS = {"ip_forward", "ip6_forward"}
# every name above: an --all/--func function of one of these names is told as
# name() (a plain path row), so the story means the same with --all as without
STORY_POINTS = (set(SOCKET_POINTS) | LOCAL_POINTS | FREE_POINTS | TAP_POINTS | CROSS_POINTS
                | LANDMARKS)
BRIDGE_POINTS = {"br_forward", "__br_forward"}

PROTO_LETTERS = {6: "T", 17: "U"}


class StoryBook:
    """Collects events while tracing; add() is on the per-event path.

    It keeps the raw bytes when it gets them (bytes are not tracked by
    Python's cyclic garbage collector, decoded Event objects are: a hundred
    thousand of them kept alive make every full collection walk them all)
    and decodes them again at exit.
    """

    def __init__(self, names=None, limit=MAX_EVENTS):
        self.kept = []                  # raw bytes (or Event objects)
        self.limit = limit
        self.beyond = 0                 # events not kept (limit reached)
        self.names = names
        self._labels = names.labels if names is not None else _Everything()

    def add(self, event, raw=None):
        self.add_raw(event if raw is None else raw, event.netns)

    def add_raw(self, raw, netns):
        """raw bytes (or an Event) of an event in namespace netns."""
        self.kept.append(raw)
        if netns not in self._labels:
            self.names.label(netns)   # name a new namespace while it exists

    def trim(self):
        """Drop what is beyond the limit (called between polls, not per event)."""
        extra = len(self.kept) - self.limit
        if extra > 0:
            self.beyond += extra
            del self.kept[self.limit:]

    def __len__(self):
        return len(self.kept)

    @property
    def events(self):
        """The kept events, decoded."""
        self.trim()
        return [Event(x) if isinstance(x, bytes) else x for x in self.kept]


class _Everything:
    """A set that holds everything (no namespace names to look up)."""

    def __contains__(self, _item):
        return True


# ---------------------------------------------------------------- grouping

def view_of(e):
    """The packet header as the event saw it, minus the TTL."""
    return (e.family, e.l4proto, e.saddr, e.sport, e.daddr, e.dport, e.ip_id,
            e.tcp_seq, e.tcp_flags, e.icmp_type, e.icmp_id)


def strong_id(view):
    """Does the header identify one packet rather than a flow? (IPv4 id != 0)"""
    return view[0] == 4 and view[6] != 0


def identity(view):
    """What NAT and routing leave alone: family, protocol, IP id, TCP/ICMP fields."""
    return view[:2] + view[6:]


def nat_related(v, u):
    """Could one skb have carried header u, then v (SNAT or DNAT in between)?
    One side must be unchanged: IP ids alone are too small to tell flows apart."""
    if v[0] != u[0] or v[1] != u[1] or v[6:] != u[6:]:
        return False
    return (v[2] == u[2] and v[3] == u[3]) or (v[4] == u[4] and v[5] == u[5])


class Copy:
    """One skb address between its first event and its free."""

    __slots__ = ("skb", "events", "names", "packet", "parent", "children", "birth",
                 "last_ts", "first_loc", "last_loc", "first_view", "last_view",
                 "freed", "dropped", "continued", "end", "netns")

    def __init__(self, e, name, view, loc):
        self.skb = e.skb
        self.events = [e]
        self.names = [name]
        self.packet = None
        self.parent = None
        self.children = []
        self.birth = self.last_ts = e.ts_ns
        self.first_loc = self.last_loc = loc
        self.first_view = self.last_view = view
        self.freed = self.dropped = None
        self.continued = False
        self.end = None
        self.netns = e.netns            # the last namespace it was seen in

    def continues(self, e, name, view, loc, extra=False):
        """extra: an --all/--func function's row. Those are everywhere on the
        way (skb_scrub_packet and eth_type_trans before the peer's netif_rx,
        helpers called twice at one place): they neither enter a namespace
        nor mark a reused address."""
        if self.freed is not None or self.dropped is not None:
            return False
        if e.ts_ns - self.last_ts > REUSE_GAP_NS and not (
                name in FREE_POINTS and view == self.last_view and e.netns in (0, self.netns)):
            return False          # (frees can come late: 6.x defers many to another CPU)
        if view != self.last_view and not nat_related(view, self.last_view):
            return False
        if extra:
            return True
        if (e.kind != KIND_IPTABLE and loc == self.first_loc and loc != self.last_loc
                and view == self.first_view):
            return False          # back where it started: the address was reused
        if (e.netns and self.netns and e.netns != self.netns and name not in RX_POINTS
                and name not in FREE_POINTS and e.kind != KIND_DROP):
            return False          # skbs enter a namespace by being received there
        return True

    def add(self, e, name, view, loc):
        self.events.append(e)
        self.names.append(name)
        self.last_ts = e.ts_ns
        self.last_loc = loc
        self.last_view = view
        if e.netns:
            self.netns = e.netns

    @property
    def travelled(self):
        """Did this skb go anywhere of its own (not only a tap's copy that was freed)?"""
        return any(n not in FREE_POINTS and n not in TAP_POINTS for n in self.names)

    def last_event_at_or_before(self, ts):
        """ts of this copy's last event at or before ts, or None."""
        stamps = [e.ts_ns for e in self.events]
        i = bisect.bisect_right(stamps, ts)
        return stamps[i - 1] if i else None


class Packet:
    __slots__ = ("number", "copies", "first_ts", "last_ts", "origins", "views", "_viewset")

    def __init__(self, number, copy):
        self.number = number
        self.copies = [copy]
        self.first_ts = self.last_ts = copy.birth
        # where it first appeared, and first went somewhere (a tap's copy freed
        # before the packet itself shows up can come first)
        self.origins = [copy.first_loc]
        self.views = []
        self._viewset = set()
        copy.packet = self

    def add_copy(self, copy):
        self.copies.append(copy)
        copy.packet = self

    @property
    def events(self):
        return sorted((e for c in self.copies for e in c.events), key=lambda e: e.ts_ns)

    def is_in(self, netns, ts):
        """Is a copy of this packet in netns now (alive there, or freed there just now)?"""
        for c in self.copies:
            if c.netns == netns and ((c.freed is None and c.dropped is None)
                                     or ts - c.last_ts <= HANDOVER_NS):
                return True
        return False


def _location(e, name):
    if e.kind == KIND_IPTABLE:
        return (e.netns, e.ifname, name, e.pf, e.hook, e.table, e.chain)
    return (e.netns, e.ifname, name)


def story_name(name, extra):
    """The name the story knows a probe by: extra (--all/--func) functions
    named like one of its points are only path rows."""
    return name + "()" if extra and name in STORY_POINTS else name


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
    extra = set(extra)
    events = sorted(events, key=lambda e: e.ts_ns)
    live = {}          # skb address -> Copy
    ended = {}         # skb address -> Copy freed or dropped last at that address
    shown = {}         # (identity, one endpoint) of a header -> [Packet] that showed it
    packets = []
    for e in events:
        name = _probe_name(probe_names, e.probe)
        view = view_of(e)
        loc = _location(e, name)
        copy = live.get(e.skb)
        if copy is None and name in extra:
            gone = ended.get(e.skb)
            end = gone.dropped or gone.freed if gone is not None else None
            if (end is not None and e.ts_ns - end.ts_ns <= LATE_VERDICT_NS
                    and view == gone.last_view):
                continue
        if copy is None and e.kind == KIND_IPTABLE:
            # The verdict is read when the netfilter call returns: a table that
            # dropped the skb itself (nf_tables' bridge family) reports after
            # the free. That row still belongs to the freed copy.
            gone = ended.get(e.skb)
            end = gone.dropped or gone.freed if gone is not None else None
            if (end is not None and e.ts_ns - end.ts_ns <= LATE_VERDICT_NS
                    and view == gone.last_view):
                gone.events.append(e)
                gone.names.append(name)
                gone.last_ts = e.ts_ns
                continue
        if copy is not None and copy.continues(e, name, view, loc, name in extra):
            copy.add(e, name, view, loc)
        else:
            copy = Copy(e, name, view, loc)
            packet = _choose_packet(_candidates(shown, view, e.ts_ns), e, view, loc,
                                    name, enters)
            if packet is None:
                packet = Packet(len(packets) + 1, copy)
                packets.append(packet)
            else:
                packet.add_copy(copy)
            live[e.skb] = copy
        packet = copy.packet
        packet.last_ts = e.ts_ns
        if (len(packet.origins) == 1 and e.kind != KIND_IPTABLE and name not in FREE_POINTS
                and name not in TAP_POINTS and loc != packet.origins[0]):
            packet.origins.append(loc)
        if view not in packet._viewset:
            packet._viewset.add(view)
            packet.views.append(view)
            for key in _index_keys(view):
                found = shown.setdefault(key, [])
                if not found or found[-1] is not packet:
                    found.append(packet)
        if e.kind == KIND_DROP:
            copy.dropped = e
            ended[e.skb] = live.pop(e.skb)
        elif name in FREE_POINTS:
            copy.freed = e
            ended[e.skb] = live.pop(e.skb)
    for packet in packets:
        _link(packet, visible, enters)
    return packets


def _index_keys(view):
    """A NATed header keeps its source or its destination: index by each."""
    ident = identity(view)
    return (ident, "s", view[2], view[3]), (ident, "d", view[4], view[5])


def _candidates(shown, view, ts, recent=16):
    """Packets that showed a header this one may be a copy or NAT of, lately:
    the last `recent` of each index entry (a busy flow with IP id 0 shows the
    same header in thousands of packets a second; its copies are made while
    the packet they copy is among the latest)."""
    out = []
    for key in _index_keys(view):
        found = shown.get(key)
        if not found:
            continue
        if len(found) > 256:            # forget packets gone quiet (amortized)
            found[:] = [p for p in found if ts - p.last_ts <= JOIN_WINDOW_NS][-256:]
        for packet in found[-recent:]:
            if packet not in out:
                out.append(packet)
    return out


def _choose_packet(candidates, e, view, loc, name=None, enters=None):
    """The packet a new copy belongs to, or None. Same header first, then a
    NATed one; where the packet itself first appeared only the same header
    with a non-zero IPv4 id (several copies first seen at one place when a
    filter hides where they came from)."""
    exact = nated = None
    for packet in candidates or ():
        if e.ts_ns - packet.last_ts > JOIN_WINDOW_NS or len(packet.copies) >= MAX_COPIES:
            continue
        if e.netns and not packet.is_in(e.netns, e.ts_ns) and not (
                enters is not None and enters.may_enter(e, name, packet)):
            continue          # copies are made where the packet is
        at_origin = loc in packet.origins
        if view in packet._viewset:
            if at_origin and not strong_id(view):
                continue
            if exact is None or packet.last_ts > exact.last_ts:
                exact = packet
        elif not at_origin and any(nat_related(view, u) for u in packet.views):
            if nated is None or packet.last_ts > nated.last_ts:
                nated = packet
    return exact or nated


def _link(packet, visible, enters=None):
    """Parents, children, hand-overs and the end of every copy."""
    copies = sorted(packet.copies, key=lambda c: c.birth)
    packet.copies = copies
    for i, child in enumerate(copies[1:], 1):
        best, best_ts = None, None
        for other in copies[:i] + copies[i + 1:]:
            if other.birth > child.birth or other is child:
                continue
            if other.dropped is not None and other.dropped.ts_ns <= child.birth:
                continue
            ts = other.last_event_at_or_before(child.birth)
            if ts is not None and (best_ts is None or ts > best_ts):
                best, best_ts = other, ts
        if best is None:
            best = copies[0]
        child.parent = best
        best.children.append(child)
    queue_points = set(SOCKET_POINTS) - {"skb_copy_datagram_iovec"}
    after_receive = bool(visible & (LOCAL_POINTS | queue_points))
    for copy in copies:
        copy.end = _end_of(copy, after_receive)
        if copy.end.kind in ("delivered", "local", "dropped"):
            continue
        last_netns = _last_interface(copy)[0]
        if any(_no_travel_after(copy, child.birth) and (
                child.events[0].netns == last_netns
                or (enters is not None and copy.end.kind == "left"
                    and enters.crosses(copy, child)))
               for child in copy.children):
            copy.continued = True
            copy.end = End("continued", ts_ns=copy.last_ts)


def _no_travel_after(copy, ts):
    """Has copy no event after ts other than its free?"""
    return all(e.ts_ns <= ts or n in FREE_POINTS for e, n in zip(copy.events, copy.names))


# ---------------------------------------------------------------- ends

@dataclass
class End:
    kind: str                # delivered, local, freed, arrived, left, dropped, vanished,
                             # continued (handed over to a new skb), tap (a copy that went nowhere)
    netns: int = 0
    ifname: str = ""
    func: str = ""
    reason: str = None       # drop reason (name) and location (symbol), set at render time
    reason_code: int = None
    location: int = 0
    ts_ns: int = 0
    socket: tuple = None     # (netns, l4proto, daddr, dport) for socket deliveries

    @property
    def place(self):
        return (self.netns, self.ifname)


def _last_interface(copy, upto=None):
    """(netns, ifname) of the last event with a device, before index upto."""
    events = copy.events if upto is None else copy.events[:upto]
    for e in reversed(events):
        if e.ifname and e.netns:
            return e.netns, e.ifname
    for e in reversed(copy.events):
        if e.netns:
            return e.netns, e.ifname
    return 0, ""


def _end_of(copy, after_receive=True):
    """after_receive: can this run see what happens after a device receives a
    packet (local delivery points)? If not, a copy last seen at a receive point
    "arrived" there rather than vanished."""
    if not copy.travelled and copy.dropped is None:
        netns, ifname = _last_interface(copy)
        return End("tap", netns, ifname, copy.names[-1], ts_ns=copy.last_ts)
    if copy.dropped is not None:
        e = copy.dropped
        netns, ifname = (e.netns, e.ifname) if e.ifname else _last_interface(copy)
        return End("dropped", netns or _last_interface(copy)[0], ifname, copy.names[-1],
                   reason_code=e.drop_reason, location=e.location, ts_ns=e.ts_ns)
    travel = [(e, n) for e, n in zip(copy.events, copy.names) if n not in FREE_POINTS]
    for e, n in travel:
        if n in SOCKET_POINTS:
            netns, ifname = e.netns, e.ifname
            if not netns:
                netns, ifname = _last_interface(copy)
            return End("delivered", netns, ifname, n, ts_ns=e.ts_ns,
                       socket=(netns, e.l4proto, e.daddr, e.dport))
    for e, n in travel:
        if n in LOCAL_POINTS:
            return End("local", e.netns, e.ifname, n, ts_ns=e.ts_ns)
    last, last_name = travel[-1]
    netns, ifname = (last.netns, last.ifname) if last.ifname else _last_interface(copy)
    if last_name in TX_POINTS:
        return End("left", netns, ifname, last_name, ts_ns=last.ts_ns)
    if copy.freed is not None:
        return End("freed", netns, ifname, last_name, ts_ns=last.ts_ns)
    if last_name in RX_POINTS and not after_receive:
        return End("arrived", netns, ifname, last_name, ts_ns=last.ts_ns)
    return End("vanished", netns, ifname, last_name, ts_ns=last.ts_ns)


# ---------------------------------------------------------------- the story

@dataclass
class Duplicate:
    packet: object
    place: tuple              # (netns, ifname) or ("socket", netns, proto, daddr, dport)
    copies: list              # Copy, in order of arrival
    routes: list = field(default_factory=list)   # [(label, ttl, steps, end kind)]


class Story:
    """The grouped trace, ready to print.

    label(inode) -> namespace text; symbolize(address) -> 'func+0x..';
    reasons: probes.DropReasons or None.
    """

    def __init__(self, packets, label=str, symbolize=None, reasons=None,
                 caveats=(), routes_traced=True, iptable_traced=False, ended_ns=None,
                 node_of=None):
        """caveats: what this run could not see (said with vanished verdicts);
        node_of(netns) -> node name, when the events come from several nodes
        (a path crossing to another node shows "=>")."""
        self.packets = packets
        self.node_of = node_of
        self.label = label
        self.symbolize = symbolize or (lambda address: "%#x" % address)
        self.reasons = reasons
        self.caveats = list(caveats)
        self.routes_traced = routes_traced
        self.iptable_traced = iptable_traced
        self.ended_ns = ended_ns if ended_ns is not None else max(
            (p.last_ts for p in packets), default=0)
        self.duplicates = [d for p in packets for d in find_duplicates(p)]
        self._dup_packets = {id(d.packet) for d in self.duplicates}

    # -- text pieces

    def place_text(self, netns, ifname, previous_netns=None):
        if not netns and not ifname:
            return "?"
        if netns == previous_netns and ifname:
            return ifname
        ns = self.label(netns) if netns else "?"
        return "%s/%s" % (ns, ifname) if ifname else ns

    def reason_text(self, end):
        """The drop reason's name; "" where the kernel gives none (before 5.17)."""
        if end.reason_code is None or self.reasons is None or not self.reasons.names:
            return ""
        return self.reasons.name(end.reason_code)

    def end_text(self, end):
        where = self.place_text(end.netns, end.ifname)
        if end.kind == "delivered":
            return "%s in %s" % (SOCKET_POINTS[end.func], self.label(end.netns))
        if end.kind == "local":
            return "delivered to the local stack in %s (%s)" % (self.label(end.netns), end.func)
        if end.kind == "freed":
            return "reached %s, freed" % where
        if end.kind == "arrived":
            return "reached %s (not seen after %s)" % (where, end.func)
        if end.kind == "left":
            return "left via %s" % where
        if end.kind == "dropped":
            reason = self.reason_text(end)
            text = "dropped at %s" % where
            if reason:
                text += ": %s" % reason
            if end.location:
                text += " (%s)" % self.symbolize(end.location)
            return text
        if end.kind == "vanished":
            return "vanished after %s (%s)" % (where, end.func)
        if end.kind == "tap":
            return "a copy freed at %s" % where
        return end.kind

    def flow_text(self, packet):
        """'U 10.0.0.1:5->10.96.0.10:53 (DNAT ->10.0.0.3:9000)'."""
        views = packet.views
        first = views[0]
        text = "%s %s" % (_proto_letter(first), _endpoints(first))
        previous = first
        for view in views[1:]:
            change = _nat_change(previous, view)
            if change:
                text += " (%s)" % change
                previous = view
        return text

    def final_flow(self, copy):
        return "%s %s" % (_proto_letter(copy.last_view), _endpoints(_travel_view(copy)))

    def hops(self, copy, start=None, stop=None):
        """(netns, ifname) crossed by copy between start and stop (ns), in order."""
        out = []
        for e, n in zip(copy.events, copy.names):
            if start is not None and e.ts_ns < start:
                continue
            if stop is not None and e.ts_ns >= stop:
                break
            if n in CROSS_POINTS and e.ifname:
                hop = (e.netns, e.ifname)
                if not out or out[-1] != hop:
                    out.append(hop)
        return out

    def path_text(self, packet):
        tree = self._path_tree(packet.copies[0], packet.copies[0].birth)
        return _render(tree, self) or "-"

    def _path_tree(self, copy, start, skip=0):
        """[hop, ..., {'branches': [tree, tree], 'labels': [...]}] of copy from start
        on, its children after the first `skip` branching off in order of birth."""
        kids = sorted(copy.children, key=lambda c: c.birth)[skip:]
        if not kids:
            return self._leaf(copy, start)
        kid = kids[0]
        trunk = self.hops(copy, start, kid.birth)
        own = self._path_tree(copy, kid.birth, skip + 1)
        theirs = self._path_tree(kid, kid.birth)
        if copy.end.kind == "continued" and not self.hops(copy, kid.birth) and (
                len(kids) == 1 or (self.node_of is not None and not _has_hops(own))):
            return trunk + theirs          # handed over to the new skb
        if not _has_hops(theirs) and kid.end.kind in ("continued", "tap"):
            return trunk + own
        labels = [self._branch_label(copy, kid.birth), self._branch_label(kid, kid.birth)]
        branches = [own, theirs]
        if _end_ts(kid) < _end_ts(copy):       # the copy that got there first first
            branches, labels = branches[::-1], labels[::-1]
        return trunk + [{"branches": branches, "labels": labels}]

    def _leaf(self, copy, start):
        hops = self.hops(copy, start)
        end = copy.end
        if end.kind == "dropped" and end.ifname and (not hops or hops[-1] != end.place):
            hops.append(end.place)
        marker = {"dropped": "(dropped)", "vanished": "(vanished)"}.get(end.kind)
        return hops + ([marker] if marker else [])

    def _branch_label(self, copy, start):
        names = {n for e, n in zip(copy.events, copy.names) if e.ts_ns >= start}
        ttls = [e.ttl for e in copy.events if e.ts_ns >= start]
        parent = copy.parent
        if parent is not None and copy.birth == start:
            names |= {n for e, n in zip(parent.events, parent.names) if e.ts_ns <= start}
            names.discard("ip_forward")   # the parent's history is not this branch's
            names.discard("ip6_forward")
        if (names & FORWARD_POINTS and any(e.ts_ns >= start and n in FORWARD_POINTS
                                           for e, n in zip(copy.events, copy.names))) \
                or (ttls and ttls[-1] < ttls[0]):
            return "routed"
        if names & BRIDGE_POINTS:
            return "bridged"
        return ""

    def netfilter_text(self, packet):
        if not self.iptable_traced:
            return "(not traced)"
        seen = []
        for e in packet.events:
            if e.kind == KIND_IPTABLE:
                text = "%s%s %s %s" % (_pf_prefix(e.pf), e.table or "?", e.hook_name,
                                       e.verdict_name)
                if not seen or seen[-1] != text:
                    seen.append(text)
        return ", ".join(seen) if seen else "-"

    def ends(self, packet):
        return [c.end for c in packet.copies if c.end.kind not in ("continued", "tap")]

    def packet_end_text(self, packet):
        texts = []
        counts = {}
        for end in self.ends(packet):
            text = self.end_text(end)
            if text not in counts:
                texts.append(text)
            counts[text] = counts.get(text, 0) + 1
        if not texts:
            return "-"
        return "; ".join(("%dx %s" % (counts[t], t)) if counts[t] > 1 else t for t in texts)

    # -- flags

    def steps_text(self, steps):
        """[(function, (netns, ifname), show place)] -> ['ip_rcv(node1/cbr0)', 'ip_forward']."""
        out = []
        previous_netns = None
        for name, (netns, ifname), show in steps:
            if show and ifname:
                out.append("%s(%s)" % (name, self.place_text(netns, ifname, previous_netns)))
                previous_netns = netns
            else:
                out.append(name)
        return out

    def duplicate_lines(self):
        return [self.duplicate_text(d) for d in self.duplicates]

    def duplicate_text(self, dup):
        if dup.place[0] == "socket":
            _s, netns, _proto, daddr, dport = dup.place
            where = "a socket %s:%d in %s" % (daddr, dport, self.label(netns))
        else:
            where = self.place_text(*dup.place)
        parts = []
        for i, (label, ttl, steps, end_kind) in enumerate(dup.routes, 1):
            route = " → ".join(self.steps_text(steps) + [where])
            if end_kind == "delivered":
                route += ", delivered to a socket"
            desc = "%s, TTL %d" % (label, ttl) if label else "TTL %d" % ttl
            parts.append("(%d) %s: %s" % (i, desc, route))
        return "DUPLICATE: %s reached %s %d times (%s apart): %s" % (
            self.final_flow(dup.copies[0]), where, len(dup.copies),
            _duration_text(dup.copies[-1].end.ts_ns - dup.copies[0].end.ts_ns), "; ".join(parts))

    def drop_lines(self):
        return [text for _packet, text in self.drop_flags()]

    def vanished_lines(self):
        return [text for _packet, text in self.vanished_flags()]

    def drop_flags(self):
        """[(packet, 'DROPPED: ...')]"""
        lines = []
        for packet in self.packets:
            ends = self.ends(packet)
            dropped = [e for e in ends if e.kind == "dropped"]
            if not dropped:
                continue
            others = [e for e in ends if e.kind != "dropped"]
            text = "DROPPED: %s %s" % (self.flow_text(packet),
                                       "; ".join(self.end_text(e) for e in dropped))
            if others:
                text += " (another copy: %s)" % "; ".join(self.end_text(e) for e in others)
            lines.append((packet, text))
        return lines

    def vanished_flags(self):
        """[(packet, 'VANISHED: ...')]"""
        if not self.routes_traced:
            return []
        lines = []
        for packet in self.packets:
            for end in self.ends(packet):
                if end.kind != "vanished":
                    continue
                notes = list(self.caveats)
                gap = (self.ended_ns - end.ts_ns) / 1e9
                if gap < 1.0:
                    notes.append("it was last seen %.3f s before tracing stopped and may "
                                 "have been in flight" % gap)
                text = "VANISHED: %s last seen at %s (%s): no delivery, drop, free or exit seen" % (
                    self.flow_text(packet), self.place_text(end.netns, end.ifname), end.func)
                if notes:
                    text += "; not visible here: " + "; ".join(notes)
                lines.append((packet, text))
        return lines

    def footnote(self):
        """What this run could not see, when a copy's end depends on it."""
        kinds = {c.end.kind for p in self.packets for c in p.copies}
        if self.caveats and kinds & {"arrived", "vanished"}:
            return "not visible in this run: " + "; ".join(self.caveats)
        return None

    def flag_lines(self):
        lines = []
        for found in (self.duplicate_lines(), self.drop_lines(), self.vanished_lines()):
            lines += found[:MAX_FLAG_LINES]
            if len(found) > MAX_FLAG_LINES:
                kind = found[0].split(":", 1)[0]
                lines.append("%s: ... and %d more" % (kind, len(found) - MAX_FLAG_LINES))
        return lines

    # -- the table

    HEADERS = ["#", "FLOW", "PATH", "NETFILTER", "END", "SKBS"]

    def table_rows(self, limit=MAX_TABLE_PACKETS):
        chosen = self.packets
        if len(chosen) > limit:
            flagged = [p for p in chosen if self._flagged(p)]
            rest = [p for p in chosen if not self._flagged(p)]
            chosen = sorted((flagged + rest)[:limit], key=lambda p: p.number)
        return [[p.number, self.flow_text(p), self.path_text(p), self.netfilter_text(p),
                 self.packet_end_text(p), len(p.copies)] for p in chosen]

    def has_duplicate(self, packet):
        return id(packet) in self._dup_packets

    def _flagged(self, packet):
        return id(packet) in self._dup_packets or any(
            e.kind in ("dropped", "vanished") for e in self.ends(packet))

    def table(self, limit=MAX_TABLE_PACKETS):
        return format_table(self.HEADERS, self.table_rows(limit))


def _duration_text(ns):
    if ns >= 1_000_000_000:
        return "%.3f s" % (ns / 1e9)
    if ns >= 1_000_000:
        return "%.3f ms" % (ns / 1e6)
    return "%.1f us" % (ns / 1e3)


def format_table(headers, rows):
    try:
        from tabulate import tabulate
    except ImportError:     # python3-tabulate missing: plain columns
        widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
        lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip(),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()
                  for row in rows]
        return "\n".join(lines)
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def _has_hops(tree):
    return any(isinstance(x, tuple) or isinstance(x, dict) for x in tree)


def _render(tree, story, previous_netns=None):
    parts = []
    for item in tree:
        if isinstance(item, tuple):
            text = story.place_text(item[0], item[1], previous_netns)
            if (story.node_of is not None and previous_netns is not None
                    and story.node_of(item[0]) != story.node_of(previous_netns)):
                text = NODE_CROSSING + text
            parts.append(text)
            previous_netns = item[0]
        elif isinstance(item, str):
            if parts:
                parts[-1] += " " + item
            else:
                parts.append(item)
        else:
            branches = item["branches"]
            rendered, suffix = _factor_suffix(branches)
            alternatives = []
            for branch, label in zip(rendered, item["labels"]):
                text = _render(branch, story) or "-"
                alternatives.append("%s: %s" % (label, text) if label else text)
            parts.append("{%s}" % " | ".join(alternatives))
            if suffix:
                parts.append(_render(suffix, story))
                last = [x for x in suffix if isinstance(x, tuple)]
                previous_netns = last[-1][0] if last else None
            else:
                previous_netns = None
    return " > ".join(p for p in parts if p).replace(" > " + NODE_CROSSING, " => ")


NODE_CROSSING = "\0=>"     # marks a hop on another node than the one before


def _factor_suffix(branches):
    """Branches without their common trailing items (each keeps a hop), and those items."""
    a, b = branches
    if any(isinstance(x, dict) for x in a + b):
        return branches, []
    n = 0
    while n < len(a) and n < len(b) and a[-1 - n] == b[-1 - n]:
        n += 1
    while n and not (any(isinstance(x, tuple) for x in a[:-n])
                     and any(isinstance(x, tuple) for x in b[:-n])):
        n -= 1
    if n == 0:
        return branches, []
    return [a[:-n], b[:-n]], a[-n:]


def _end_ts(copy):
    """When the copy's story ended (its own, or its descendants')."""
    return max([copy.end.ts_ns or copy.last_ts] + [_end_ts(c) for c in copy.children])


def _proto_letter(view):
    family, l4 = view[0], view[1]
    if l4 in PROTO_LETTERS:
        return PROTO_LETTERS[l4]
    if (family == 4 and l4 == 1) or (family == 6 and l4 == 58):
        return "I"
    return str(l4)


def _endpoint(addr, port, ported, family):
    if not ported:
        return addr
    return "[%s]:%d" % (addr, port) if family == 6 else "%s:%d" % (addr, port)


def _endpoints(view):
    ported = view[1] in (6, 17)
    return "%s->%s" % (_endpoint(view[2], view[3], ported, view[0]),
                       _endpoint(view[4], view[5], ported, view[0]))


def _nat_change(u, v):
    ported = v[1] in (6, 17)
    parts = []
    if (u[2], u[3]) != (v[2], v[3]):
        parts.append("SNAT %s->" % _endpoint(v[2], v[3], ported, v[0]))
    if (u[4], u[5]) != (v[4], v[5]):
        parts.append("DNAT ->%s" % _endpoint(v[4], v[5], ported, v[0]))
    return ", ".join(parts)


def _travel_view(copy):
    for e, n in zip(reversed(copy.events), reversed(copy.names)):
        if n not in FREE_POINTS:
            return view_of(e)
    return copy.last_view


def _pf_prefix(pf):
    return "" if pf == 2 else "%s " % NF_PROTOCOLS.get(pf, str(pf)).lower()


# ---------------------------------------------------------------- duplicates

def find_duplicates(packet):
    """Copies of packet that ended at the same interface (or socket) more than once."""
    by_place = {}
    for copy in packet.copies:
        end = copy.end
        if end.kind in ("continued", "tap", "dropped"):
            continue
        if end.netns or end.ifname:
            by_place.setdefault((end.netns, end.ifname), []).append(copy)
    found = []
    counted = set()
    for place, copies in by_place.items():
        if len(copies) > 1:
            found.append(_duplicate(packet, place, copies))
            counted.update(id(c) for c in copies)
    by_socket = {}
    for copy in packet.copies:
        if copy.end.kind == "delivered" and id(copy) not in counted:
            by_socket.setdefault(("socket",) + copy.end.socket, []).append(copy)
    for place, copies in by_socket.items():
        if len(copies) > 1:
            found.append(_duplicate(packet, place, copies))
    return found


def _duplicate(packet, place, copies):
    copies = sorted(copies, key=lambda c: c.end.ts_ns)
    dup = Duplicate(packet, place, copies)
    for copy in copies:
        dup.routes.append(_route(copy, [c for c in copies if c is not copy], place))
    return dup


def _chain(copy):
    chain = [copy]
    while chain[-1].parent is not None and chain[-1].parent not in chain:
        chain.append(chain[-1].parent)
    return chain[::-1]


def _lineage_events(copy):
    """(event, name) along copy's ancestry: each ancestor until it branched to the next."""
    chain = _chain(copy)
    out = []
    for here, there in zip(chain, chain[1:] + [None]):
        for e, n in zip(here.events, here.names):
            if there is None or e.ts_ns < there.birth:
                out.append((e, n))
    return out


def _separation(c, d):
    """When the lineages of copies c and d parted (birth of the first copy not shared)."""
    a, b = _chain(c), _chain(d)
    i = 0
    while i < len(a) and i < len(b) and a[i] is b[i]:
        i += 1
    births = [x[i].birth for x in (a, b) if i < len(x)]
    return min(births) if births else c.birth


def _route(copy, others, place):
    """(label, ttl at the end, [steps], end kind) of copy from where it parted from others."""
    lineage = _lineage_events(copy)
    start = max((_separation(copy, d) for d in others), default=copy.birth)
    chain = _chain(copy)
    born_there = any(x.birth == start for x in chain[1:])
    segment = [(e, n) for e, n in lineage if e.ts_ns >= start]
    before = [(e, n) for e, n in lineage if e.ts_ns < start and n in LANDMARKS]
    dest_netns = place[0] if place[0] != "socket" else place[1]
    steps = []
    if born_there and before and before[-1][0].netns == (segment[0][0].netns if segment else None):
        segment = [before[-1]] + segment
    previous = None
    for e, n in segment:
        if n not in LANDMARKS or e.netns == dest_netns:
            continue
        here = (e.netns, e.ifname)
        if steps and steps[-1][0] == n and steps[-1][1] == here:
            continue
        steps.append((n, here, previous is None or here != previous))
        previous = here
    names = {n for _e, n in segment}
    ttls = [e.ttl for e, n in segment if n not in FREE_POINTS]
    routed = bool(names & FORWARD_POINTS) or (len(ttls) > 1 and ttls[-1] < ttls[0])
    label = "routed" if routed else ("bridged" if names & BRIDGE_POINTS else "not routed")
    end_ttl = ttls[-1] if ttls else copy.events[-1].ttl
    return label, end_ttl, steps, copy.end.kind


def build(events, probe_names, visible=None, enters=None, extra=(), **story_args):
    """Events (any order) -> Story."""
    return Story(group(events, probe_names, visible, enters, extra), **story_args)
