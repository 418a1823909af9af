"""Copies of one packet that ended at the same place (an interface, or a
socket) more than once, and the route each took there from where their
lineages parted."""

from ..events.vocabulary import L4_NUMBERS
from .flows import APPLICATION_POINTS
from .model import Duplicate, EndKind, Place, Route, Step
from .points import BRIDGE_POINTS, FORWARD_POINTS, FREE_POINTS, LANDMARKS

# ends that do not reach a place: handed over, a tap's, dropped on the way
NOT_REACHING = (EndKind.CONTINUED, EndKind.TAP, EndKind.DROPPED)


def made_by_its_socket(copy):
    """A TCP skb first seen as it is copied to the application: one the
    socket made itself, out of skbs it had queued (tcp_collapse copies the
    first one's headers into a new skb under memory pressure), not a copy
    that reached the socket by a route of its own."""
    return copy.events[0].l4proto == L4_NUMBERS["tcp"] and copy.names[0] in APPLICATION_POINTS


def find_duplicates(packet):
    """[Duplicate] of packet: by interface first, then by socket for the
    deliveries not counted at an interface."""
    by_place = {}
    for copy in packet.copies:
        end = copy.end
        if end.kind in NOT_REACHING or made_by_its_socket(copy):
            continue
        if end.netns or end.ifname:
            by_place.setdefault(end.place, []).append(copy)
    found = []
    counted = set()
    for place, copies in by_place.items():
        if len(copies) > 1:
            found.append(_duplicate(packet, place, copies))
            counted.update(id(c) for c in copies)
    by_socket = {}
    for copy in packet.copies:
        if (copy.end.kind == EndKind.DELIVERED and id(copy) not in counted
                and not made_by_its_socket(copy)):
            by_socket.setdefault(copy.end.socket, []).append(copy)
    for place, copies in by_socket.items():
        if len(copies) > 1:
            found.append(_duplicate(packet, place, copies))
    return found


def _duplicate(packet, place, copies):
    copies = sorted(copies, key=lambda c: c.end.ts_ns)
    routes = [_route(copy, [c for c in copies if c is not copy], place) for copy in copies]
    return Duplicate(packet, place, copies, routes)


def chain(copy):
    """copy's ancestors, oldest first, ending with copy."""
    out = [copy]
    while out[-1].parent is not None and out[-1].parent not in out:
        out.append(out[-1].parent)
    return out[::-1]


def _lineage_events(copy):
    """(event, name) along copy's ancestry: each ancestor until it branched to the next."""
    lineage = chain(copy)
    out = []
    for here, there in zip(lineage, lineage[1:] + [None]):
        for e, n in here.rows:
            if there is None or e.ts_ns < there.birth:
                out.append((e, n))
    return out


def _separation(c, d):
    """When the lineages of copies c and d parted (birth of the first copy not shared)."""
    a, b = chain(c), chain(d)
    i = 0
    while i < len(a) and i < len(b) and a[i] is b[i]:
        i += 1
    births = [x[i].birth for x in (a, b) if i < len(x)]
    return min(births) if births else c.birth


def _route(copy, others, place):
    """copy's Route to place from where it parted from the others."""
    lineage = _lineage_events(copy)
    start = max((_separation(copy, d) for d in others), default=copy.birth)
    born_there = any(x.birth == start for x in chain(copy)[1:])
    segment = [(e, n) for e, n in lineage if e.ts_ns >= start]
    before = [(e, n) for e, n in lineage if e.ts_ns < start and n in LANDMARKS]
    if born_there and before and segment:
        (landmark, _name), (first, _first_name) = before[-1], segment[0]
        if landmark.netns == first.netns:     # the landmark it was born at
            segment = [before[-1]] + segment
    steps = _steps(segment, place.netns)
    names = {n for _e, n in segment}
    ttls = [e.ttl for e, n in segment if n not in FREE_POINTS]
    routed = bool(names & FORWARD_POINTS) or (len(ttls) > 1 and ttls[-1] < ttls[0])
    label = "routed" if routed else ("bridged" if names & BRIDGE_POINTS else "not routed")
    end_ttl = ttls[-1] if ttls else copy.events[-1].ttl
    return Route(label, end_ttl, steps, copy.end.kind)


def _steps(segment, dest_netns):
    """[Step] of the landmarks outside the destination's namespace, each
    place said when it changes."""
    steps = []
    previous = None
    for e, n in segment:
        if n not in LANDMARKS or e.netns == dest_netns:
            continue
        here = Place(e.netns, e.ifname)
        if steps and steps[-1].func == n and steps[-1].place == here:
            continue
        steps.append(Step(n, here, previous is None or here != previous))
        previous = here
    return steps
