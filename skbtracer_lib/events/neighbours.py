"""--why: the neighbour a packet waited for (skbtracer.c why_neigh,
neigh_take): its row when it was queued for ARP/ND resolution (WHY_NEIGH)
and, on its drop row, the neighbour's address and state then and how long
it waited; in words for the row, the story and JSON, and back from JSON
for -r.

The queued skb is read from the neighbour's queue (its tail, right after
__neigh_event_send queued it): no guess. The drop row takes it by the skb's
address and header; README.md ("Neighbours") says how far that holds. The
device is the row's own: the skb's device is the neighbour's.
"""

import socket

from .routing import AF_INET, AF_INET6
from .vocabulary import WHY_NEIGH

# include/uapi/linux/neighbour.h NUD_*, as `ip neigh` names them
NUD_NAMES = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY",
             0x10: "PROBE", 0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT"}
NUD_NUMBERS = {name: number for number, name in NUD_NAMES.items()}
PROTOCOLS = {AF_INET: "ARP", AF_INET6: "ND"}


def state_name(state):
    """'FAILED', 'INCOMPLETE'...; 'NONE' for 0, the bits in hex for a mix."""
    return NUD_NAMES.get(state) or ("NONE" if not state else "%#x" % state)


def address(e):
    """The neighbour's address as text."""
    if e.neigh_family == AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, bytes(e.neigh_addr[:16]))
    return socket.inet_ntop(socket.AF_INET, bytes(e.neigh_addr[:4]))


def protocol(e):
    return PROTOCOLS.get(e.neigh_family, "neighbour")


def wait_text(us):
    """'3.0 s', '12.5 ms', '80 us'."""
    if us >= 1000000:
        return "%.1f s" % (us / 1e6)
    if us >= 1000:
        return "%.1f ms" % (us / 1e3)
    return "%d us" % us


def words(e, until_next_us=None):
    """The story's words. A drop row's: 'waited 3.0 s for ARP 10.244.1.9 on
    cbr0: FAILED' (the wait and the state then); a queueing row's: 'queued
    for ARP 10.244.1.9 on cbr0', or with until_next_us (the time to the
    packet's next row: it went on) 'waited 12 us for ARP 10.244.1.9 on cbr0'."""
    on = " on %s" % e.ifname if e.ifname else ""
    neighbour = "%s %s%s" % (protocol(e), address(e), on)
    if e.why != WHY_NEIGH:
        return "waited %s for %s: %s" % (wait_text(e.neigh_waited_us), neighbour,
                                         state_name(e.neigh_state))
    if until_next_us:
        return "waited %s for %s" % (wait_text(until_next_us), neighbour)
    return "queued for %s" % neighbour


def row_suffix(e):
    """What TRACE_INFO ends in on a row that tells a neighbour:
    ' neigh=10.244.1.9:INCOMPLETE', ' neigh=10.244.1.9:FAILED waited=3.0s'."""
    text = " neigh=%s:%s" % (address(e), state_name(e.neigh_state))
    if e.neigh_waited_us:
        text += " waited=" + wait_text(e.neigh_waited_us).replace(" ", "")
    return text


def json_object(e):
    """A row's "neigh" (only on rows that tell one)."""
    return {"protocol": protocol(e), "address": address(e), "dev": e.ifname or None,
            "state": state_name(e.neigh_state), "state_code": e.neigh_state,
            "waited_us": e.neigh_waited_us or None, "text": words(e)}


ZERO = {"neigh_family": 0, "neigh_state": 0, "neigh_waited_us": 0, "neigh_addr": bytes(16)}


def fields_of(obj):
    """The event's neigh_* fields from a saved "neigh" (json_object's inverse)."""
    if not obj:
        return dict(ZERO)
    text = obj.get("address") or ""
    family = AF_INET6 if ":" in text else AF_INET
    packed = socket.inet_pton(socket.AF_INET6 if family == AF_INET6 else socket.AF_INET, text)
    return {"neigh_family": family, "neigh_state": obj.get("state_code") or 0,
            "neigh_waited_us": obj.get("waited_us") or 0,
            "neigh_addr": packed + bytes(16 - len(packed))}
