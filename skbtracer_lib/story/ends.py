"""How each copy ended: delivered to a socket or the local stack, freed,
left through a device, dropped, or last seen somewhere (arrived where the
run cannot see further, or vanished)."""

from ..events import ipvs, neighbours, routing
from ..events.vocabulary import (KIND_IPTABLE, KIND_WHY, PORTED, WHY_NEIGH, endpoint_text,
                                 sent_back_words)
from .model import OPEN_ENDS, End, EndKind, Place, SocketPlace
from .points import (CUT_WINDOW_NS, FREE_POINTS, LOCAL_POINTS, RX_POINTS, SOCKET_POINTS,
                     STOP_WINDOW_NS, TX_POINTS)


def last_interface(copy):
    """The Place of the copy's last event with a device (else with a namespace)."""
    for e in reversed(copy.events):
        if e.ifname and e.netns:
            return Place(e.netns, e.ifname)
    for e in reversed(copy.events):
        if e.netns:
            return Place(e.netns, e.ifname)
    return Place(0, "")


def end_of(copy, after_receive=True):
    """How the copy ended, with IPVS's choice for it (--iptable), the
    routing decisions it took, the neighbour it waited for and what the
    stack sent back because of it (--why)."""
    end = _end_of(copy, after_receive)
    sent = [sent_back_words(e.family, e.why, e.why_type, e.why_code, e.why_info)
            for e in copy.events if e.kind == KIND_WHY and e.why != WHY_NEIGH]
    routed = [routing.words(e) for e in copy.events if e.route_known]
    balanced = [ipvs.words(e, endpoint_text(e.daddr, e.dport, e.l4proto in PORTED, e.family))
                for e in copy.events if e.ipvs_known]
    if balanced:
        end = end._replace(balanced=", ".join(dict.fromkeys(balanced)))
    if sent:
        end = end._replace(sent_back=", ".join(dict.fromkeys(sent)))
    if routed:
        end = end._replace(routed=", ".join(dict.fromkeys(routed)))
    waited = neighbour_waits(copy.events)
    if waited:
        end = end._replace(neighbour=", ".join(dict.fromkeys(waited)))
    return end


def neighbour_waits(events):
    """The words of each wait for a neighbour among a copy's events (in time
    order): a drop row's (its wait measured in the kernel, the state then),
    else a queueing row's, waited until the copy's next row (resolved), or
    'queued for ...' when nothing came after it."""
    waits = []
    for i, e in enumerate(events):
        if not e.neigh_family:
            continue
        if e.kind != KIND_WHY:
            waits.append(neighbours.words(e))
            continue
        later = [a for a in events[i + 1:] if a.kind != KIND_WHY]   # not an ICMP error's row
        if any(a.neigh_family for a in later):
            continue        # the drop row tells this wait
        waits.append(neighbours.words(e, (later[0].ts_ns - e.ts_ns) // 1000 if later else None))
    return waits


def _end_of(copy, after_receive):
    """after_receive: can this run see what happens after a device receives a
    packet (local delivery points)? If not, a copy last seen at a receive point
    "arrived" there rather than vanished."""
    if not copy.travelled and copy.dropped is None:
        netns, ifname = last_interface(copy)
        return End(EndKind.TAP, netns, ifname, copy.names[-1], ts_ns=copy.last_ts)
    if copy.dropped is not None:
        return _dropped(copy)
    # a --why row is no place the copy went to but what it caused (end_of);
    # the end's place where there is nothing else (--why alone)
    travel = [(e, n) for e, n in copy.rows if n not in FREE_POINTS]
    travel = [(e, n) for e, n in travel if e.kind != KIND_WHY] or travel
    delivered = _delivered(copy, travel)
    if delivered is not None:
        return delivered
    last, last_name = travel[-1]
    netns, ifname = (last.netns, last.ifname) if last.ifname else last_interface(copy)
    if last_name in TX_POINTS:
        kind = EndKind.LEFT
    elif copy.freed is not None:
        kind = EndKind.FREED
    elif last_name in RX_POINTS and not after_receive:
        kind = EndKind.ARRIVED
    else:
        kind = EndKind.VANISHED
    return End(kind, netns, ifname, last_name, ts_ns=last.ts_ns)


NF_DROP = 0      # a netfilter verdict's low byte


def _dropped(copy):
    e = copy.dropped
    netns, ifname = (e.netns, e.ifname) if e.ifname else last_interface(copy)
    verdicts = [v for v in copy.events if v.kind == KIND_IPTABLE and v.verdict & 0xFF == NF_DROP]
    return End(EndKind.DROPPED, netns or last_interface(copy).netns, ifname, copy.names[-1],
               reason_code=e.drop_reason, location=e.location, ts_ns=e.ts_ns,
               ct_fault=e.ct_fault, nfct=e.ct, skb=e.skb,
               nf_table=(verdicts[-1].table or "") if verdicts else None)


def _delivered(copy, travel):
    """A socket delivery, else a local one, else None."""
    for e, n in travel:
        if n in SOCKET_POINTS:
            netns, ifname = e.netns, e.ifname
            if not netns:
                netns, ifname = last_interface(copy)
            return End(EndKind.DELIVERED, netns, ifname, n, ts_ns=e.ts_ns,
                       socket=SocketPlace(netns, e.l4proto, e.daddr, e.dport))
    for e, n in travel:
        if n in LOCAL_POINTS:
            return End(EndKind.LOCAL, e.netns, e.ifname, n, ts_ns=e.ts_ns)
    return None


def mark_cut(packets, stopped_by, ended_ns=None):
    """Copies the end of tracing cut off: an open end (left, arrived,
    vanished) seen just before the trace stopped. -c stops at its last row
    (what followed was never read: CUT_WINDOW_NS before it); a signal or a
    time limit stops at ended_ns, after the ring was read empty
    (STOP_WINDOW_NS before it)."""
    if not stopped_by or not packets:
        return
    if stopped_by == "-c" or ended_ns is None:
        stop, window = max(p.last_ts for p in packets), CUT_WINDOW_NS
    else:
        stop, window = ended_ns, STOP_WINDOW_NS
    for packet in packets:
        for copy in packet.copies:
            end = copy.end
            if end.kind in OPEN_ENDS and stop - end.ts_ns <= window:
                copy.end = end._replace(kind=EndKind.CUT)
