"""The packet's story at exit: which packets were traced, the interfaces
each crossed, its netfilter verdicts, where each copy ended, and copies of
one packet that reached the same place more than once (duplicates).

While tracing, StoryBook.add() only keeps the event (O(1)); the grouping
runs once, at exit (build()).

The modules:
  points        probe points by what they mean for the story; its limits
  model         Header, Place, End/EndKind, Copy, Packet, Duplicate/Route, StoryModel
  book          StoryBook: the events kept while tracing
  grouping      events -> copies -> packets; parents, hand-overs, ends
  ends          how one copy ended
  duplicates    places a packet reached more than once, and the routes
  paths         a packet's path as a tree of places and forks
  render_text   Story: the model in words; the table and the exit lines
  render_json   the story as JSON objects

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

from .book import StoryBook
from .duplicates import find_duplicates
from .ends import mark_cut
from .grouping import group
from .model import EndKind, Header, Place, SocketPlace
from .points import (CROSS_POINTS, FREE_POINTS, LOCAL_POINTS, MAX_EVENTS, MAX_FLAG_LINES,
                     MAX_TABLE_PACKETS, QUEUE_POINTS, RX_POINTS, SOCKET_POINTS, STORY_POINTS,
                     TAP_POINTS, TX_POINTS, story_name)
from .fit import table as format_table
from .render_json import story_objects
from .render_text import Story, duration_text
from .tell import exit_lines

__all__ = ["CROSS_POINTS", "EndKind", "FREE_POINTS", "Header", "LOCAL_POINTS", "MAX_EVENTS",
           "MAX_FLAG_LINES", "MAX_TABLE_PACKETS", "Place", "QUEUE_POINTS", "RX_POINTS",
           "SOCKET_POINTS", "STORY_POINTS", "SocketPlace", "Story", "StoryBook", "TAP_POINTS",
           "TX_POINTS", "build", "duration_text", "exit_lines", "format_table", "group",
           "story_name", "story_objects"]


def build(events, probe_names, visible=None, enters=None, extra=(), **story_args):
    """Events (any order) -> Story; story_args: StoryModel's."""
    packets = group(events, probe_names, visible, enters, extra)
    mark_cut(packets, story_args.get("stopped_by"), story_args.get("ended_ns"))
    duplicates = [d for p in packets for d in find_duplicates(p)]
    return Story(packets, duplicates, **story_args)
