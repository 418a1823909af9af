"""Encapsulated packets: the tunnels skbtracer.c's find_inner recognises in
an IPv4 outer header (whose row then shows the inner packet, and these
fields the outer header), the UDP ports it knows them by, and how a row, a
JSON event object and -r show them. One place for all of it: the C gets
the numbers and ports from defines()."""

import socket
from types import SimpleNamespace

from ..program import macros

VXLAN, GENEVE, IPIP, SIT = 1, 2, 3, 4
NAMES = {VXLAN: "vxlan", GENEVE: "geneve", IPIP: "ipip", SIT: "sit"}
NUMBERS = {name: number for number, name in NAMES.items()}
# UDP destination ports: IANA's VXLAN port and flannel's (Linux's old default)
VXLAN_PORTS = (4789, 8472)
GENEVE_PORTS = (6081,)
WITH_ID = (VXLAN, GENEVE)       # a VNI and outer UDP ports
OUTER_PROTOCOL = {"vxlan": 17, "geneve": 17, "ipip": 4, "sit": 41}     # the outer header's


def _port_test(ports):
    """A C expression: is p (network byte order, loaded little-endian) one of ports?"""
    return "(%s)" % " || ".join("(p) == %d" % ((port & 0xFF) << 8 | port >> 8) for port in ports)


def defines():
    """The #defines find_inner needs: the type numbers and the port sets."""
    return {macros.TUNNEL_VXLAN: VXLAN, macros.TUNNEL_GENEVE: GENEVE, macros.TUNNEL_IPIP: IPIP,
            macros.TUNNEL_SIT: SIT,
            "%s(p)" % macros.VXLAN_PORT: _port_test(VXLAN_PORTS),
            "%s(p)" % macros.GENEVE_PORT: _port_test(GENEVE_PORTS)}


def _address(raw):
    return socket.inet_ntoa(bytes(raw))


def row_suffix(e):
    """What TRACE_INFO gets after it for an encapsulated packet (" vxlan vni 1
    192.168.0.1->192.168.0.2", " ipip 192.168.0.1->192.168.0.2"); "" else."""
    if not e.tunnel:
        return ""
    name = NAMES.get(e.tunnel, str(e.tunnel))
    vni = " vni %d" % e.tunnel_id if e.tunnel in WITH_ID else ""
    return " %s%s %s->%s" % (name, vni, _address(e.tunnel_saddr), _address(e.tunnel_daddr))


def json_object(e):
    """The event object's "tunnel": the outer header; None when not encapsulated."""
    if not e.tunnel:
        return None
    with_id = e.tunnel in WITH_ID
    return {"type": NAMES.get(e.tunnel, str(e.tunnel)), "vni": e.tunnel_id if with_id else None,
            "saddr": _address(e.tunnel_saddr), "daddr": _address(e.tunnel_daddr),
            "sport": e.tunnel_sport if with_id else None,
            "dport": e.tunnel_dport if with_id else None}


def fields_of(obj):
    """The event's tunnel fields from a saved "tunnel" object (or None)."""
    if not isinstance(obj, dict):
        return {"tunnel": 0, "tunnel_id": 0, "tunnel_sport": 0, "tunnel_dport": 0,
                "tunnel_saddr": bytes(4), "tunnel_daddr": bytes(4)}
    return {"tunnel": NUMBERS.get(obj.get("type"), 0), "tunnel_id": obj.get("vni") or 0,
            "tunnel_sport": obj.get("sport") or 0, "tunnel_dport": obj.get("dport") or 0,
            "tunnel_saddr": socket.inet_aton(obj.get("saddr") or "0.0.0.0"),
            "tunnel_daddr": socket.inet_aton(obj.get("daddr") or "0.0.0.0")}


def saved_row_suffix(obj):
    """row_suffix of a saved "tunnel" object (or None)."""
    return row_suffix(SimpleNamespace(**fields_of(obj))) if obj else ""


def outer_tuple(obj):
    """A saved event object's outer header as the -r filters take a tuple:
    (source, destination, protocol number, (sport, dport)); None when the
    event is not encapsulated."""
    t = obj.get("tunnel")
    if not t:
        return None
    return (t.get("saddr"), t.get("daddr"), OUTER_PROTOCOL.get(t.get("type"), 0),
            (t.get("sport"), t.get("dport")))
