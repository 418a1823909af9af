"""Packets told together: those of one flow that took the same path and
passed the same netfilter verdicts are one row of the story's table, with a
count, how they ended (counted by end), their first and last sighting and
the spread of their times through the network. A busy flow is one line,
not one per packet; a packet whose story differs (a duplicate, a copy
dropped or vanished on the way) has a row of its own, as its path differs."""

from typing import NamedTuple

from .points import FREE_POINTS, SOCKET_POINTS, TAP_POINTS

# the application reading a socket: after the packet's way through the network
APPLICATION_POINTS = {"skb_copy_datagram_iovec"}


class FlowGroup(NamedTuple):
    flow: str
    path: str
    netfilter: str
    packets: list           # Packet, in order
    ends: dict              # end text -> packets that ended so, in order of first seen
    cts: dict               # conntrack text (Story.ct_text) -> packets, in order of first seen

    @property
    def count(self):
        return len(self.packets)

    @property
    def end(self):
        """How they ended; where they ended differently, how many ended each way."""
        return _counted(self.ends)

    @property
    def ct(self):
        """The connections as they went; where packets differ (the first
        NEW, the rest ESTABLISHED), how many went each way."""
        return _counted(self.cts)

    @property
    def skbs(self):
        """The skbs a packet took: '1', or the range ('1-2')."""
        counts = sorted({len(p.copies) for p in self.packets})
        return str(counts[0]) if len(counts) == 1 else "%d-%d" % (counts[0], counts[-1])

    @property
    def first_ts(self):
        return self.packets[0].first_ts

    @property
    def last_ts(self):
        return max(p.last_ts for p in self.packets)

    def spans(self):
        """The network spans of its packets that were seen more than once, sorted."""
        return sorted(s for s in (network_span(p) for p in self.packets) if s is not None)


def _counted(texts):
    """One text, or each with its count, the commonest first."""
    if len(texts) == 1:
        return next(iter(texts))
    ranked = sorted(texts.items(), key=lambda item: -item[1])
    return "; ".join("%d %s" % (n, text) for text, n in ranked)


def group_flows(story, packets=None):
    """[FlowGroup] of story's packets (or of packets), in order of their first packet."""
    groups = {}
    for packet in story.packets if packets is None else packets:
        key = (story.flow_text(packet), story.path_text(packet), story.netfilter_text(packet))
        found = groups.get(key)
        if found is None:
            found = groups[key] = FlowGroup(*key, [], {}, {})
        found.packets.append(packet)
        end = story.packet_end_text(packet)
        found.ends[end] = found.ends.get(end, 0) + 1
        ct = story.ct_text(packet)
        found.cts[ct] = found.cts.get(ct, 0) + 1
    return list(groups.values())


def network_sightings(packet):
    """The timestamps of a packet's sightings on its way through the network:
    not its frees, not a packet tap's copy, not the application's read."""
    return sorted(e.ts_ns for c in packet.copies for e, n in c.rows
                  if n not in FREE_POINTS and n not in TAP_POINTS
                  and n not in APPLICATION_POINTS)


def network_span(packet):
    """First to last network sighting (ns), or None when seen only once."""
    stamps = network_sightings(packet)
    if len(stamps) < 2:
        return None
    return stamps[-1] - stamps[0]


def socket_wait(packet):
    """How long the packet waited in a socket for the application to read it
    (its last network sighting to the read), or None."""
    reads = [e.ts_ns for c in packet.copies for e, n in c.rows
             if n in APPLICATION_POINTS and n in SOCKET_POINTS]
    if not reads:
        return None
    read = min(reads)
    before = [s for s in network_sightings(packet) if s <= read]
    return read - before[-1] if before else None
