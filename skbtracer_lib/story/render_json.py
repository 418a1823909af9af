"""The story as JSON-ready dicts: per packet a "summary", per flow, path and
end a "flow" (the text table's rows), per Service a "service", --nftrace:
per NAT change whose rule is known a "nat_rule", then the
"duplicate", "dropped" and "vanished" flags (README.md "JSON output").
Structure comes from the model; the "text", "flow", "path" and "end"
fields are the text renderer's words for the same things."""

from ..events.vocabulary import KIND_IPTABLE, L4_NAMES
from .flows import group_flows
from .model import EndKind, FLAGGED_ENDS, SocketPlace


def story_objects(story):
    """[dict] for a render_text.Story."""
    objects = [_summary(story, packet) for packet in story.packets]
    objects += [_flow(group) for group in group_flows(story)]
    objects += [_service(story, service, name) for service, name in story.services]
    if story.rules is not None:     # --nftrace: the NAT rules, for -r to tell again
        objects += [{"type": "nat_rule", "packet": packet.number, "header": _header(before),
                     "rule": decision.json()}
                    for packet in story.packets for before, _change in story.nat_steps(packet)
                    for decision in [story.rules.nat_decision(None, before)] if decision]
    objects += [_duplicate(story, dup) for dup in story.duplicates]
    for packet, text in story.drop_flags():
        objects.append({"type": "dropped", "packet": packet.number, "text": text})
    for packet, text in story.vanished_flags():
        objects.append({"type": "vanished", "packet": packet.number, "text": text})
    return objects


def _place(story, netns, ifname):
    return {"netns": netns, "netns_name": story.label(netns) if netns else None,
            "ifname": ifname or None}


def _end(story, end):
    obj = {"kind": end.kind.value, "text": story.end_text(end), "func": end.func or None}
    obj.update(_place(story, end.netns, end.ifname))
    if end.kind == EndKind.DROPPED:
        obj["reason"] = story.reason_text(end) or None
        obj["reason_code"] = end.reason_code
        obj["location"] = story.symbolize(end.location) if end.location else None
        obj["conntrack"] = story.conntrack_text(end, obj["reason"]) or None
    if end.sent_back:       # --why: the key only where something was sent back
        obj["sent_back"] = end.sent_back
    if end.routed:          # --why: only where a routing decision was seen
        obj["routed"] = end.routed
    if end.balanced:        # --iptable: only where IPVS chose (or found no real server)
        obj["ipvs"] = end.balanced
    if end.neighbour:       # --why: only where the copy waited for a neighbour
        obj["neighbour"] = end.neighbour
    return obj


def _header(header):
    ported = header.ported
    return {"family": header.family, "l4proto": header.l4proto,
            "proto": L4_NAMES.get(header.l4proto, str(header.l4proto)),
            "saddr": header.saddr, "sport": header.sport if ported else None,
            "daddr": header.daddr, "dport": header.dport if ported else None,
            "ip_id": header.ip_id if header.family == 4 else None}


def _copy(story, copy):
    obj = {
        "skb": "%x" % copy.skb,
        "parent": "%x" % copy.parent.skb if copy.parent is not None else None,
        "first_ktime_ns": copy.birth,
        "rows": len(copy.events),
        "ttl": [copy.events[0].ttl, copy.events[-1].ttl],
        "interfaces": [_place(story, *hop) for hop in story.hops(copy)],
        "end": _end(story, copy.end),
    }
    unkept = sum(getattr(e, "unkept", 0) for e in copy.events)
    if unkept:              # --on-trouble: a path longer than its record's sightings
        obj["unkept"] = unkept
    return obj


def _summary(story, packet):
    netfilter = [{"pf": e.pf, "table": e.table or None, "chain": e.chain or None,
                  "hook": e.hook_name, "verdict": e.verdict_name}
                 for e in packet.events if e.kind == KIND_IPTABLE]
    flags = ["DUPLICATE"] if story.has_duplicate(packet) else []
    kinds = {e.kind for e in packet.ends()}
    flags += [k.value.upper() for k in FLAGGED_ENDS if k in kinds]
    return {
        "type": "summary",
        "packet": packet.number,
        "flow": story.flow_text(packet),
        "headers": [_header(h) for h in packet.headers],
        "path": story.path_text(packet),
        "netfilter": netfilter if story.iptable_traced else None,
        "ct": _ct(story.ct_text(packet)),
        "end": story.packet_end_text(packet),
        "skbs": len(packet.copies),
        "rows": sum(len(c.events) for c in packet.copies),
        "first_ktime_ns": packet.first_ts,
        "copies": [_copy(story, c) for c in packet.copies],
        "flags": flags,
    }


def _ct(text):
    """The story's conntrack words; null where no row saw an entry."""
    return None if text == "-" else text


def _flow(group):
    spans = group.spans()
    return {
        "type": "flow",
        "packets": [p.number for p in group.packets],
        "count": group.count,
        "flow": group.flow,
        "path": group.path,
        "netfilter": group.netfilter,
        "ct": _ct(group.ct),
        "end": group.end,
        "ends": [{"end": text, "packets": n} for text, n in group.ends.items()],
        "skbs": group.skbs,
        "first_ktime_ns": group.first_ts,
        "last_ktime_ns": group.last_ts,
        "network_ns": {"min": spans[0], "median": spans[len(spans) // 2], "max": spans[-1]}
        if spans else None,
    }


def _duplicate(story, dup):
    place = dup.place
    if isinstance(place, SocketPlace):
        where = {"socket": {"netns": place.netns, "netns_name": story.label(place.netns),
                            "l4proto": place.l4proto, "daddr": place.daddr,
                            "dport": place.dport}}
    else:
        where = _place(story, *place)
    routes = [{"skb": "%x" % copy.skb, "label": route.label, "ttl": route.ttl,
               "steps": story.steps_text(route.steps), "end": route.end_kind.value}
              for copy, route in zip(dup.copies, dup.routes)]
    return {"type": "duplicate", "packet": dup.packet.number,
            "flow": story.final_flow(dup.copies[0]), "place": where,
            "times": len(dup.copies), "routes": routes, "text": story.duplicate_text(dup)}


def service_key(service):
    """A service object's (proto, address, port): what -r finds its name by."""
    return (L4_NAMES.get(service.l4proto, str(service.l4proto)), service.address,
            service.port if service.ported else None)


def _service(story, service, name):
    """A SERVICE line: the Service's address, port and protocol, its name
    (--names; null where unknown) and the endpoints conntrack chose, each
    with its connections."""
    proto, address, port = service_key(service)
    endpoints = [{"address": ep_address, "port": ep_port if service.ported else None,
                  "connections": len(conns)}
                 for (ep_address, ep_port), conns in service.endpoints.items()]
    return {"type": "service", "name": name, "proto": proto, "family": service.family,
            "address": address, "port": port, "endpoints": endpoints,
            "connections": sum(e["connections"] for e in endpoints),
            "text": story.service_text(service, name)}
