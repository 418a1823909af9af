"""The story's model: what a packet's header is, where a copy was (a
place), how it ended (End, EndKind), the copies of one packet (Copy,
Packet), the places a packet reached more than once by different routes
(Duplicate, Route, Step), and the whole grouped trace (StoryModel).

grouping.group() builds packets from events, ends.end_of() decides how
each copy ended, duplicates.find_duplicates() finds the duplicates;
render_text and render_json only read what is here.
"""

import bisect
import enum
import functools
from typing import NamedTuple

from ..events import conntrack
from ..events.vocabulary import PORTED
from .points import FREE_POINTS, HANDOVER_NS, TAP_POINTS


_new_tuple = tuple.__new__


class Header(NamedTuple):
    """The packet header as an event saw it, minus the TTL (routing changes it)."""
    family: int
    l4proto: int
    saddr: str
    sport: int
    daddr: str
    dport: int
    ip_id: int
    tcp_seq: int
    tcp_flags: int
    icmp_type: int
    icmp_id: int

    @classmethod
    def of(cls, e):
        # tuple.__new__: once per event at exit, without NamedTuple's own __new__
        return _new_tuple(cls, (e.family, e.l4proto, e.saddr, e.sport, e.daddr, e.dport,
                                e.ip_id, e.tcp_seq, e.tcp_flags, e.icmp_type, e.icmp_id))

    @property
    def identity(self):
        """What NAT and routing leave alone: family, protocol, IP id, TCP/ICMP fields."""
        return (self.family, self.l4proto, self.ip_id, self.tcp_seq, self.tcp_flags,
                self.icmp_type, self.icmp_id)

    @property
    def strong_id(self):
        """Does the header identify one packet rather than a flow? (IPv4 id != 0)"""
        return self.family == 4 and self.ip_id != 0

    @property
    def source(self):
        return self.saddr, self.sport

    @property
    def destination(self):
        return self.daddr, self.dport

    @property
    def ported(self):
        return self.l4proto in PORTED

    def nat_related(self, other):
        """Could one skb have carried header other, then this one (SNAT or DNAT
        in between)? One side must be unchanged: IP ids alone are too small to
        tell flows apart."""
        if self.identity != other.identity:
            return False
        return self.source == other.source or self.destination == other.destination


class Place(NamedTuple):
    """A network namespace and a device in it ("" when the event had none)."""
    netns: int
    ifname: str


class SocketPlace(NamedTuple):
    """A socket a copy was delivered to."""
    netns: int
    l4proto: int
    daddr: str
    dport: int


class EndKind(enum.Enum):
    DELIVERED = "delivered"     # to a socket
    LOCAL = "local"             # to the local stack (no socket point seen)
    FREED = "freed"
    ARRIVED = "arrived"         # at a receive point, and this run cannot see further
    LEFT = "left"               # through a device's transmit point
    DROPPED = "dropped"
    VANISHED = "vanished"
    CONTINUED = "continued"     # handed over to a new skb
    TAP = "tap"                 # a copy that went nowhere (a packet tap's, freed)
    CUT = "cut"                 # still on its way when tracing stopped (-c, Ctrl-C)


NOT_AN_END = (EndKind.CONTINUED, EndKind.TAP)   # copies whose end is not the packet's
FLAGGED_ENDS = (EndKind.DROPPED, EndKind.VANISHED)
# a copy that ended so got the packet somewhere: a drop of another copy is a note
THROUGH_ENDS = (EndKind.DELIVERED, EndKind.LOCAL, EndKind.FREED, EndKind.ARRIVED, EndKind.LEFT)
# ends a copy has when its last sighting was all this run saw of it
OPEN_ENDS = (EndKind.LEFT, EndKind.ARRIVED, EndKind.VANISHED)


class End(NamedTuple):
    kind: EndKind
    netns: int = 0
    ifname: str = ""
    func: str = ""
    reason_code: int = None     # drop reason and location
    location: int = 0
    ts_ns: int = 0
    socket: SocketPlace = None  # for socket deliveries
    # drops: conntrack's part (conntrack.drop_words): the drop event's
    # ct_fault and _nfct, and the table of the copy's DROP verdict row
    # (None: no such row)
    ct_fault: int = 0
    nfct: int = 0
    nf_table: str = None
    # --why: what the stack sent back because of the copy, in words
    # ("ICMP port unreachable sent back"; "": nothing seen)
    sent_back: str = ""
    # --why: the routing decisions the copy's rows took, in words ("routed
    # by table main dev veth1"; "": none seen)
    routed: str = ""
    # --iptable: IPVS's choices for the copy's connection, in words ("IPVS
    # 10.96.0.10:53/udp rr -> 10.244.1.3:5353 (masq)"; "": none seen)
    balanced: str = ""
    skb: int = 0                # drops: the drop row's skb (with ts_ns: its --nftrace rule)
    # --why: the neighbour the copy waited for ("waited 3.0 s for ARP
    # 10.244.1.9 on cbr0: FAILED"; "": none seen)
    neighbour: str = ""

    @property
    def place(self):
        return Place(self.netns, self.ifname)


class Copy:
    """One skb address between its first event and its free."""

    __slots__ = ("skb", "events", "names", "packet", "parent", "children", "birth",
                 "last_ts", "first_loc", "last_loc", "first_header", "last_header",
                 "freed", "dropped", "end", "netns")

    def __init__(self, e, name, header, loc):
        self.skb = e.skb
        self.events = [e]
        self.names = [name]             # the story's name of each event's probe
        self.packet = None
        self.parent = None
        self.children = []
        self.birth = self.last_ts = e.ts_ns
        self.first_loc = self.last_loc = loc
        self.first_header = self.last_header = header
        self.freed = self.dropped = None    # the event that ended it
        self.end = None
        self.netns = e.netns            # the last namespace it was seen in

    def add(self, e, name, header, loc):
        self.events.append(e)
        self.names.append(name)
        self.last_ts = e.ts_ns
        self.last_loc = loc
        self.last_header = header
        if e.netns:
            self.netns = e.netns

    def add_late(self, e, name):
        """A row reported after the free (a verdict read when its hook returned)."""
        self.events.append(e)
        self.names.append(name)
        self.last_ts = e.ts_ns

    @property
    def ended_by(self):
        return self.dropped or self.freed

    @property
    def alive(self):
        return self.freed is None and self.dropped is None

    @property
    def rows(self):
        """(event, name) in order."""
        return zip(self.events, self.names)

    @property
    def travelled(self):
        """Did this skb go anywhere of its own (not only a tap's copy that was freed)?"""
        return any(n not in FREE_POINTS and n not in TAP_POINTS for n in self.names)

    def last_event_at_or_before(self, ts):
        """ts of this copy's last event at or before ts, or None."""
        stamps = [e.ts_ns for e in self.events]
        i = bisect.bisect_right(stamps, ts)
        return stamps[i - 1] if i else None

    def travel_header(self):
        """The header of its last row on the way (not its free)."""
        for e, n in zip(reversed(self.events), reversed(self.names)):
            if n not in FREE_POINTS:
                return Header.of(e)
        return self.last_header


class Packet:
    """The copies that carried one IP packet."""

    __slots__ = ("number", "copies", "first_ts", "last_ts", "origins", "headers", "header_set")

    def __init__(self, number, copy):
        self.number = number
        self.copies = [copy]
        self.first_ts = self.last_ts = copy.birth
        # where it first appeared, and first went somewhere (a tap's copy freed
        # before the packet itself shows up can come first)
        self.origins = [copy.first_loc]
        self.headers = []               # every header it showed, in order
        self.header_set = set()
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
            if c.netns == netns and (c.alive or ts - c.last_ts <= HANDOVER_NS):
                return True
        return False

    def ends(self):
        """The ends of its copies that are ends of the packet."""
        return [c.end for c in self.copies if c.end.kind not in NOT_AN_END]


class Step(NamedTuple):
    """A landmark on a duplicate's route: the function, where, whether to say where."""
    func: str
    place: Place
    show: bool


class Route(NamedTuple):
    label: str                  # routed, bridged, not routed
    ttl: int                    # at the end
    steps: list                 # [Step] from where it parted from the other copies
    end_kind: EndKind


class Duplicate(NamedTuple):
    packet: Packet
    place: object               # Place or SocketPlace
    copies: list                # Copy, in order of arrival
    routes: list                # Route of each copy


class StoryModel:
    """The grouped trace and what the run could see.

    label(inode) -> namespace text; symbolize(address) -> 'func+0x..';
    reasons: probes.DropReasons or None; conntrack_read: the events say
    what conntrack entry their skb had (false: files saved before issue 23
    did not); caveats: what this run could not
    see (said with vanished verdicts); node_of(netns) -> node name, when the
    events come from several nodes; stopped_by: what ended the trace ("-c",
    "a signal", "--duration" ...; None: not said), for the copies it cut off;
    service_name(conntrack.Service) -> its name ('default/dns-pair:dns') or
    None (--names: outputs/services.py; -r: the saved service objects');
    rules: --nftrace's nftrace.Nftrace (the rules behind drops and NAT), or None.
    """

    def __init__(self, packets, duplicates, label=str, symbolize=None, reasons=None,
                 caveats=(), routes_traced=True, iptable_traced=False, ended_ns=None,
                 node_of=None, stopped_by=None, conntrack_read=True, service_name=None,
                 rules=None):
        self.packets = packets
        self.duplicates = duplicates
        self.node_of = node_of
        self.label = label
        self.symbolize = symbolize or (lambda address: "%#x" % address)
        self.reasons = reasons
        self.caveats = list(caveats)
        self.routes_traced = routes_traced
        self.iptable_traced = iptable_traced
        self.ended_ns = ended_ns if ended_ns is not None else max(
            (p.last_ts for p in packets), default=0)
        self._dup_packets = {id(d.packet) for d in duplicates}
        self.stopped_by = stopped_by
        self.conntrack_read = conntrack_read
        self.service_name = service_name or (lambda service: None)
        self.rules = rules

    def ends(self, packet):
        return packet.ends()

    @functools.cached_property
    def conntrack_netns(self):
        """The namespaces where some row carried a conntrack entry (where
        conntrack is at work)."""
        return {e.netns for p in self.packets for c in p.copies for e in c.events if e.ct}

    @functools.cached_property
    def services(self):
        """[conntrack.Service] the packets' connections went to, with their names."""
        events = (e for packet in self.packets for e in packet.events)
        found = list(conntrack.services(events).values())
        return [(service, self.service_name(service)) for service in found]

    def has_duplicate(self, packet):
        return id(packet) in self._dup_packets

    def flagged(self, packet):
        return self.has_duplicate(packet) or any(
            e.kind in FLAGGED_ENDS for e in packet.ends())

    @staticmethod
    def got_through(packet):
        """Did a copy of packet get somewhere (delivered, freed where it went,
        arrived, left)? Then a drop of another copy is a note, not its end."""
        return any(e.kind in THROUGH_ENDS for e in packet.ends())

    def end_kinds(self):
        return {c.end.kind for p in self.packets for c in p.copies}
