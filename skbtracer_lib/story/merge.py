"""Several nodes' saved traces on one clock.

Node clocks differ by seconds, so events are never matched by time alone.
A packet both nodes saw is found by its header (addresses and ports after
NAT, IPv4 id, TCP sequence and flags, ICMP type and id): only headers that
name one packet (a non-zero IPv4 id, or TCP) count. Its direction comes
from the TTL (the upstream node saw the larger one: routing lowers it).

For node B against the reference node A (the first file's):
  forward  (A -> B): B's first sighting - A's last = offset + wire delay
  backward (B -> A): A's first sighting - B's last = -offset + wire delay
With both directions offset = (min forward - min backward) / 2 (the delays
cancel, as in NTP); with one, the smallest delta (off by one wire delay).
"""

import statistics

from ..events.vocabulary import TCP
from .points import FREE_POINTS, RX_POINTS

NS = 1_000_000_000


def _key(o):
    family, l4 = o["family"], o["l4proto"]
    if not ((family == 4 and o.get("ip_id")) or l4 == TCP):
        return None
    return (family, l4, o["saddr"], o.get("sport"), o["daddr"], o.get("dport"), o.get("ip_id"),
            o.get("tcp_seq"), o.get("tcp_flags"), o.get("icmp_type"), o.get("icmp_id"))


def sightings(objects):
    """header key -> [first wall ns, last wall ns, largest TTL] on one node."""
    seen = {}
    for o in objects:
        if o["func"] in FREE_POINTS or o["kind"] != "route":
            continue
        key = _key(o)
        if key is None:
            continue
        t = o["time_ns"]
        s = seen.get(key)
        if s is None:
            seen[key] = [t, t, o["ttl"]]
        else:
            s[0] = min(s[0], t)
            s[1] = max(s[1], t)
            s[2] = max(s[2], o["ttl"])
    return seen


class Offset:
    """Node B's clock against the reference node's: B's time - reference time."""

    def __init__(self, node, forward, backward):
        self.node = node
        self.forward = forward          # B first - A last, A upstream
        self.backward = backward        # A first - B last, B upstream
        if forward and backward:
            self.ns = (min(forward) - min(backward)) // 2
        elif forward:           # B's first sighting 1 ns after A's last
            self.ns = min(forward) - 1
        elif backward:
            self.ns = 1 - min(backward)
        else:
            self.ns = 0

    @property
    def matched(self):
        return len(self.forward) + len(self.backward)

    def spread_ns(self):
        """How much the single estimates disagree (median distance)."""
        values = [d - self.ns for d in self.forward] + [self.ns + d for d in self.backward]
        if not values:
            return 0
        middle = statistics.median(values)
        return int(statistics.median(abs(v - middle) for v in values))


def estimate(reference, other, node):
    """Offset of the node whose sightings are other, against reference."""
    forward, backward = [], []
    for key, (a_first, a_last, a_ttl) in reference.items():
        b = other.get(key)
        if b is None:
            continue
        b_first, b_last, b_ttl = b
        if a_ttl > b_ttl:
            forward.append(b_first - a_last)
        elif b_ttl > a_ttl:
            backward.append(a_first - b_last)
    return Offset(node, forward, backward)


class Merged:
    """offsets: node -> ns to subtract from its wall times (reference: 0)."""

    def __init__(self, reference, estimates):
        self.reference = reference
        self.estimates = estimates
        self.offsets = {reference: 0}
        self.offsets.update({node: est.ns for node, est in estimates.items()})

    def report_lines(self):
        lines = []
        for node, est in self.estimates.items():
            if not est.matched:
                lines.append("warning: no packet both %s and %s saw: %s's clock is taken as "
                             "%s's" % (self.reference, node, node, self.reference))
                continue
            how = ("both directions" if est.forward and est.backward
                   else "one direction: includes one wire delay")
            lines.append("clock offset of %s against %s: %+.6f s (from %d packet%s, %s)"
                         % (node, self.reference, est.ns / NS, est.matched,
                            "" if est.matched == 1 else "s", how))
        return lines


def place_on_one_clock(runs):
    """Merged offsets for SavedRuns of several nodes; the first run's node is the reference."""
    by_node = {}
    for run in runs:
        by_node.setdefault(run.node, []).extend(run.objects)
    nodes = list(by_node)
    seen = {node: sightings(objects) for node, objects in by_node.items()}
    reference = nodes[0]
    return Merged(reference, {node: estimate(seen[reference], seen[node], node)
                              for node in nodes[1:]})


class Wire:
    """story.group()'s enters: a copy received (an RX point) on a node other
    than the one where the packet was touched last came over the wire, and
    took over from the copy that left there."""

    def __init__(self, node_of):
        self.node_of = node_of

    def may_enter(self, e, name, packet):
        if name not in RX_POINTS:
            return False
        latest = max(packet.copies, key=lambda c: c.last_ts)
        return self.node_of(latest.netns) != self.node_of(e.netns)

    def crosses(self, copy, child):
        return self.node_of(copy.netns) != self.node_of(child.events[0].netns)
