"""-r with a filter expression: rebuild a packet from a saved event's
header fields and let libpcap's own interpreter judge it (raw-IP view).

Only what an event saves exists in the rebuilt packet: addresses, protocol,
ports, TTL, IPv4 id, TCP sequence and flags, ICMP type and id, the length.
Payload bytes, checksums and the MACs read as zeros (man page, CAVEATS).
An encapsulated event is judged as the live program judges it: its inner
packet, else its outer one (rebuild_outer), the tunnel's header between.
"""

import socket
import struct

from ..events import tunnel
from ..program import pcapfilter
from ..events.vocabulary import ICMP_PROTOCOLS, TCP, TCP_FLAG_BITS, UDP


def rebuild(o):
    """Raw IPv4/IPv6 bytes for a saved event object."""
    l4, family = o["l4proto"], o["family"]
    if l4 == TCP:
        body = struct.pack(">HHIIBBHHH", o.get("sport") or 0, o.get("dport") or 0,
                           o.get("tcp_seq") or 0, 0, 5 << 4,
                           TCP_FLAG_BITS.get(o.get("tcp_flags") or "", 0), 0, 0, 0)
    elif l4 == UDP:
        body = struct.pack(">HHHH", o.get("sport") or 0, o.get("dport") or 0, 8, 0)
    elif l4 in ICMP_PROTOCOLS.values():
        body = struct.pack(">BBHHH", o.get("icmp_type") or 0, 0, 0, o.get("icmp_id") or 0, 0)
    else:
        body = b""
    if family == 4:
        total = max(o.get("len") or 0, 20 + len(body))
        header = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, o.get("ip_id") or 0, 0,
                             o["ttl"], l4, 0, socket.inet_pton(socket.AF_INET, o["saddr"]),
                             socket.inet_pton(socket.AF_INET, o["daddr"]))
    else:
        header = struct.pack(">IHBB16s16s", 6 << 28, len(body), l4, o["ttl"],
                             socket.inet_pton(socket.AF_INET6, o["saddr"]),
                             socket.inet_pton(socket.AF_INET6, o["daddr"]))
    return header + body


ETHERTYPES = {4: 0x0800, 6: 0x86DD}
GENEVE_TEB = 0x6558     # Geneve's protocol type: Ethernet


def rebuild_outer(o, inner):
    """Raw IPv4 bytes of a saved encapsulated event's outer packet around its
    rebuilt inner one: UDP, the VXLAN or Geneve header (no options) and an
    Ethernet header of zero MACs, or (IPIP, SIT) nothing between."""
    t = o["tunnel"]
    kind = t.get("type")
    between = b""
    if kind in ("vxlan", "geneve"):
        vni = (t.get("vni") or 0) << 8
        header = (struct.pack(">BBHI", 0x08, 0, 0, vni) if kind == "vxlan"
                  else struct.pack(">BBHI", 0, 0, GENEVE_TEB, vni))
        frame = header + bytes(12) + struct.pack(">H", ETHERTYPES[o["family"]]) + inner
        between = struct.pack(">HHHH", t.get("sport") or 0, t.get("dport") or 0, 8 + len(frame), 0)
        between += frame[:len(frame) - len(inner)]
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(between) + len(inner), 0, 0, 0,
                       tunnel.OUTER_PROTOCOL.get(kind, 0), 0,
                       socket.inet_aton(t.get("saddr") or "0.0.0.0"),
                       socket.inet_aton(t.get("daddr") or "0.0.0.0")) + between + inner


class ExpressionJudge:
    """o -> does the expression match the rebuilt packet?"""

    def __init__(self, expression):
        view = next((v for v in expression.views if v.name == "l3"), None)
        self.insns = view.insns if view is not None else None

    def __call__(self, o):
        if self.insns is None:
            return False
        inner = rebuild(o)
        if pcapfilter.libpcap_verdict(self.insns, inner):
            return True
        return bool(o.get("tunnel")) and pcapfilter.libpcap_verdict(self.insns, rebuild_outer(o, inner))
