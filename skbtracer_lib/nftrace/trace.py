"""The kernel's nftables trace messages (NFT_MSG_TRACE on the netlink
group NFNLGRP_NFTRACE of NETLINK_NETFILTER), read and parsed by hand:
Debian 12 has no library that parses them (nft 1.0.6 prints `-j monitor
trace` as text, libnftnl has no Python binding), and the attributes are
few (include/uapi/linux/netfilter/nf_tables.h, enum nft_trace_attributes).

The socket is non-blocking and drained when a row needs a decision: the
kernel queues a trace message while nft_do_chain runs, before the hook's
verdict takes effect, so the messages of a packet are on the socket before
any event the packet makes after that hook."""

import errno
import ipaddress
import socket
import struct
from typing import NamedTuple

from ..events.vocabulary import PORTED      # ports as the rows have them (TCP, UDP)

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTRACE = 9
NFT_MSG_TRACE = (10 << 8) | 17          # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_TRACE
SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 8 << 20                # bursts of traced packets: 4-10 messages each

# enum nft_trace_attributes
TABLE, CHAIN, RULE_HANDLE, TYPE, VERDICT, ID = 1, 2, 3, 4, 5, 6
NETWORK_HEADER, TRANSPORT_HEADER, IIF, OIF, NFPROTO, POLICY = 8, 9, 10, 12, 15, 16
# enum nft_trace_types
TYPE_POLICY, TYPE_RETURN, TYPE_RULE = 1, 2, 3
# NFTA_VERDICT_* inside NFTA_TRACE_VERDICT
VERDICT_CODE, VERDICT_CHAIN = 1, 2

FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat",
            -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}
# verdicts that end a base chain's traversal (the hook's answer for that chain)
FINAL = ("drop", "accept", "stolen", "queue", "repeat")


class PacketHeader(NamedTuple):
    """What a trace shows of the packet, as skbtracer's rows show it."""
    family: int             # 4 or 6
    saddr: str
    daddr: str
    l4proto: int
    ip_id: int              # IPv4; 0 for IPv6
    sport: int              # PORTED protocols'; 0 otherwise
    dport: int

    def key(self):
        return (self.family, self.saddr, self.daddr, self.l4proto, self.ip_id,
                self.sport, self.dport)


class TraceMessage(NamedTuple):
    family: str             # the table's: ip, ip6, inet, bridge ...
    table: str
    chain: str
    handle: int             # the rule's; None for a policy
    kind: int               # TYPE_*
    verdict: str            # a VERDICTS name; for a policy, the policy's
    jump_to: str            # jump/goto: the chain
    trace_id: int
    nfproto: int            # the packet's protocol family (2, 10)
    iif: int
    oif: int
    packet: PacketHeader    # on the first message of each base chain's traversal


def _attributes(data, offset, end):
    """{type: payload} of the netlink attributes in data[offset:end]."""
    found = {}
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


def _be32(payload, signed=False):
    return struct.unpack(">i" if signed else ">I", payload[:4])[0]


def _text(payload):
    return payload.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def packet_header(network, transport):
    """PacketHeader from the network and transport header bytes; None when
    they are not an IP header."""
    if not network:
        return None
    version = network[0] >> 4
    if version == 4 and len(network) >= 20:
        family, l4proto = 4, network[9]
        ip_id = struct.unpack_from(">H", network, 4)[0]
        saddr, daddr = network[12:16], network[16:20]
    elif version == 6 and len(network) >= 40:
        family, l4proto, ip_id = 6, network[6], 0
        saddr, daddr = network[8:24], network[24:40]
    else:
        return None
    sport = dport = 0
    if l4proto in PORTED and transport and len(transport) >= 4:
        sport, dport = struct.unpack_from(">HH", transport, 0)
    return PacketHeader(family, str(ipaddress.ip_address(bytes(saddr))),
                        str(ipaddress.ip_address(bytes(daddr))), l4proto, ip_id, sport, dport)


def parse(data):
    """The TraceMessages in a netlink datagram."""
    messages, offset = [], 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16 or offset + length > len(data):
            break
        if kind == NFT_MSG_TRACE and length >= 20:
            family = data[offset + 16]
            found = _attributes(data, offset + 20, offset + length)
            messages.append(_message(family, found))
        offset += (length + 3) & ~3
    return messages


def _message(family, found):
    kind = _be32(found[TYPE]) if TYPE in found else 0
    verdict, jump_to = None, None
    if kind == TYPE_POLICY and POLICY in found:
        verdict = VERDICTS.get(_be32(found[POLICY], signed=True))
    elif VERDICT in found:
        nested = _attributes(found[VERDICT], 0, len(found[VERDICT]))
        if VERDICT_CODE in nested:
            code = _be32(nested[VERDICT_CODE], signed=True)
            # NF_DROP_ERR() keeps an errno in the upper bits: the verdict is the low byte
            verdict = VERDICTS.get(code if -5 <= code < 0 else code & 0xFF, str(code))
        if VERDICT_CHAIN in nested:
            jump_to = _text(nested[VERDICT_CHAIN])
    handle = struct.unpack(">Q", found[RULE_HANDLE][:8])[0] if RULE_HANDLE in found else None
    return TraceMessage(
        FAMILIES.get(family, str(family)), _text(found.get(TABLE, b"")),
        _text(found.get(CHAIN, b"")), handle, kind, verdict, jump_to,
        _be32(found[ID]) if ID in found else 0,
        _be32(found[NFPROTO]) if NFPROTO in found else family,
        _be32(found[IIF]) if IIF in found else 0, _be32(found[OIF]) if OIF in found else 0,
        packet_header(found.get(NETWORK_HEADER), found.get(TRANSPORT_HEADER)))


class TraceSocket:
    """The trace group of the namespace the socket is made in."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                  | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            # root may pass net.core.rmem_max (SO_RCVBUFFORCE); else what it allows
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self.sock.bind((0, 0))
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTRACE)
        except OSError:
            self.sock.close()
            raise
        self.overflows = 0      # times the kernel could not queue a message (ENOBUFS)

    def drain(self):
        """The messages queued now."""
        messages = []
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return messages
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overflows += 1
                    continue
                raise
            messages += parse(data)

    def close(self):
        self.sock.close()
