"""A packet's path as a tree: the places its copies crossed, in order, with
a fork where a copy branched off (bridged or routed), and the markers of
how a branch ended. render_text writes it as one line.

A tree is a list of Place (a hop), str (a marker: "(dropped)"), and
Fork (two branches, each a tree, with their labels)."""

from typing import NamedTuple

from .model import EndKind, Place
from .points import BRIDGE_POINTS, CROSS_POINTS, FORWARD_POINTS

_new_tuple = tuple.__new__
MARKERS = {EndKind.DROPPED: "(dropped)", EndKind.VANISHED: "(vanished)"}


class Fork(NamedTuple):
    branches: list              # [tree, tree], the copy that got there first first
    labels: list                # ["routed" / "bridged" / "", ...]


def hops(copy, start=None, stop=None):
    """[Place] crossed by copy between start and stop (ns), in order."""
    out = []
    for e, n in copy.rows:
        if start is not None and e.ts_ns < start:
            continue
        if stop is not None and e.ts_ns >= stop:
            break
        if n in CROSS_POINTS and e.ifname:
            hop = _new_tuple(Place, (e.netns, e.ifname))   # Place(), the fast way
            if not out or out[-1] != hop:
                out.append(hop)
    return out


def packet_tree(packet, several_nodes=False):
    first = packet.copies[0]
    return _tree(first, first.birth, several_nodes)


def _tree(copy, start, several_nodes, skip=0):
    """The tree of copy from start on, its children after the first `skip`
    branching off in order of birth."""
    kids = sorted(copy.children, key=lambda c: c.birth)[skip:]
    if not kids:
        return _leaf(copy, start)
    kid = kids[0]
    trunk = hops(copy, start, kid.birth)
    own = _tree(copy, kid.birth, several_nodes, skip + 1)
    theirs = _tree(kid, kid.birth, several_nodes)
    if copy.end.kind == EndKind.CONTINUED and not hops(copy, kid.birth) and (
            len(kids) == 1 or (several_nodes and not has_hops(own))):
        return trunk + theirs          # handed over to the new skb
    if not has_hops(theirs) and kid.end.kind in (EndKind.CONTINUED, EndKind.TAP):
        return trunk + own
    labels = [_branch_label(copy, kid.birth), _branch_label(kid, kid.birth)]
    branches = [own, theirs]
    if _end_ts(kid) < _end_ts(copy):       # the copy that got there first first
        branches, labels = branches[::-1], labels[::-1]
    return trunk + [Fork(branches, labels)]


def _leaf(copy, start):
    found = hops(copy, start)
    end = copy.end
    if end.kind == EndKind.DROPPED and end.ifname and (not found or found[-1] != end.place):
        found.append(end.place)
    marker = MARKERS.get(end.kind)
    return found + ([marker] if marker else [])


def _branch_label(copy, start):
    names = {n for e, n in copy.rows if e.ts_ns >= start}
    ttls = [e.ttl for e in copy.events if e.ts_ns >= start]
    parent = copy.parent
    if parent is not None and copy.birth == start:
        names |= {n for e, n in parent.rows if e.ts_ns <= start}
        names -= FORWARD_POINTS     # the parent's history is not this branch's
    if (names & FORWARD_POINTS and any(e.ts_ns >= start and n in FORWARD_POINTS
                                       for e, n in copy.rows)) \
            or (ttls and ttls[-1] < ttls[0]):
        return "routed"
    if names & BRIDGE_POINTS:
        return "bridged"
    return ""


def has_hops(tree):
    return any(isinstance(x, (Place, Fork)) for x in tree)


def _end_ts(copy):
    """When the copy's story ended (its own, or its descendants')."""
    return max([copy.end.ts_ns or copy.last_ts] + [_end_ts(c) for c in copy.children])


def factor_suffix(branches):
    """Branches without their common trailing items (each keeps a hop), and those items."""
    a, b = branches
    if any(isinstance(x, Fork) for x in a + b):
        return branches, []
    n = 0
    while n < len(a) and n < len(b) and a[-1 - n] == b[-1 - n]:
        n += 1
    while n and not (any(isinstance(x, Place) for x in a[:-n])
                     and any(isinstance(x, Place) for x in b[:-n])):
        n -= 1
    if n == 0:
        return branches, []
    return [a[:-n], b[:-n]], a[-n:]

