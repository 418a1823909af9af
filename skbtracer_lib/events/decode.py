"""Decoding the raw events that skbtracer.c writes into the perf buffer."""

import socket
import struct

from .vocabulary import (  # noqa: F401  (the kinds and names are imported from here too)
    KIND_DROP, KIND_IPTABLE, KIND_ROUTE, NF_HOOKS, NF_HOOKS_BY_PF, NF_PROTOCOLS, PKT_TYPES,
    hook_name, icmp_kind, is_icmp, probe_name, verdict_name)

# Mirrors struct event_t in skbtracer.c (little-endian, 200 bytes).
EVENT = struct.Struct("<QQQ IIIIIiII HHHHH BBBBBBBBB x 16s 6s 6s 16s 16s 32s 32s")
EVENT_SIZE = EVENT.size


# Decoding reads the same bytes through two structs: the host-order fields,
# and the header fields the kernel copied in network byte order (tcp_seq at
# 48; ip_id, sport, dport, icmp_id at 58). Cheaper than swapping in Python.
_HOST_ORDER = struct.Struct("<QQQ IIIIIi 4x I H 8x BBBBBBBBB x 16s 6s 6s 16s 16s 32s 32s")
_NET_ORDER = struct.Struct(">I 6x HHHH")
_NET_ORDER_AT = 48


_NETNS = struct.Struct("<24x I")


def netns_of(raw):
    """The namespace inode of raw event bytes, without decoding the rest."""
    return _NETNS.unpack_from(raw)[0]


def swap16(value):
    """A 16-bit value in the other byte order (network <-> this host)."""
    return ((value & 0xFF) << 8) | (value >> 8)


class BoundedCache(dict):
    """key -> convert(key) for the few distinct addresses, names and kernel
    symbols a trace sees; emptied when it grows, so a long run's memory
    stays bounded."""

    def __init__(self, convert, limit=4096):
        super().__init__()
        self.convert = convert
        self.limit = limit

    def __missing__(self, key):
        if len(self) >= self.limit:
            self.clear()
        value = self[key] = self.convert(key)
        return value


# Control characters, whitespace and backslash as \xNN: a string from the
# kernel or from /proc is data and must not break a row into columns or lines
_ESCAPES = {c: "\\x%02x" % c for c in list(range(0x21)) + [0x5C, 0x7F]}


def printable(text):
    """text with control characters, whitespace and backslashes escaped."""
    return text.translate(_ESCAPES)


def _c_string(raw):
    """A NUL-terminated (or unterminated, at most the field's size) name."""
    return printable(raw.split(b"\0", 1)[0].decode("ascii", "replace"))


_IPV4 = BoundedCache(lambda raw: socket.inet_ntop(socket.AF_INET, raw[:4]))
_IPV6 = BoundedCache(lambda raw: socket.inet_ntop(socket.AF_INET6, raw))
_STRINGS = BoundedCache(_c_string)


class Event:
    """One decoded event; 16-bit and 32-bit header fields in host order."""

    __slots__ = ("ts_ns", "skb", "location", "netns", "ifindex", "pid", "drop_reason",
                 "verdict", "stack_id", "tcp_seq", "len", "probe", "ip_id", "sport",
                 "dport", "icmp_id", "kind", "pkt_type", "family", "l4proto", "tcp_flags",
                 "icmp_type", "ttl", "pf", "hook", "ifname", "dmac", "smac", "saddr",
                 "daddr", "table", "chain")

    def __init__(self, raw):
        (self.ts_ns, self.skb, self.location, self.netns, self.ifindex, self.pid,
         self.drop_reason, verdict, self.stack_id, self.len, self.probe,
         self.kind, self.pkt_type, self.family, self.l4proto, self.tcp_flags,
         self.icmp_type, self.ttl, self.pf, self.hook,
         ifname, self.dmac, self.smac, saddr, daddr, table, chain) = _HOST_ORDER.unpack_from(raw)
        self.tcp_seq, self.ip_id, self.sport, self.dport, self.icmp_id = \
            _NET_ORDER.unpack_from(raw, _NET_ORDER_AT)
        strings = _STRINGS
        self.ifname = strings[ifname]
        addresses = _IPV4 if self.family == 4 else _IPV6
        self.saddr = addresses[saddr]
        self.daddr = addresses[daddr]
        self.table = strings[table]
        self.chain = strings[chain]
        self.verdict = verdict & 0xFF   # NF_DROP_ERR() keeps an errno in the upper bits

    @property
    def hook_name(self):
        return hook_name(self.pf, self.hook)

    @property
    def verdict_name(self):
        return verdict_name(self.verdict)

    @property
    def is_icmp(self):
        return is_icmp(self.family, self.l4proto)

    @property
    def icmp_kind(self):
        """'request', 'reply' or '' for other ICMP messages."""
        return icmp_kind(self.family, self.icmp_type)


def encode(**fields):
    """Raw event bytes from keyword fields, as the kernel would write them.
    For tests and benchmarks; addresses are strings, ports host order."""
    family = fields.get("family", 4)
    af = socket.AF_INET if family == 4 else socket.AF_INET6

    def addr(text):
        return socket.inet_pton(af, text).ljust(16, b"\0")

    def be16(value):
        return swap16(value)

    return EVENT.pack(
        fields.get("ts_ns", 0), fields.get("skb", 0), fields.get("location", 0),
        fields.get("netns", 0), fields.get("ifindex", 0), fields.get("pid", 0),
        fields.get("drop_reason", 0), fields.get("verdict", 0), fields.get("stack_id", -1),
        int.from_bytes(fields.get("tcp_seq", 0).to_bytes(4, "big"), "little"),
        fields.get("len", 0), fields.get("probe", 0), be16(fields.get("ip_id", 0)),
        be16(fields.get("sport", 0)), be16(fields.get("dport", 0)),
        be16(fields.get("icmp_id", 0)), fields.get("kind", KIND_ROUTE),
        fields.get("pkt_type", 0), family, fields.get("l4proto", 17),
        fields.get("tcp_flags", 0), fields.get("icmp_type", 0), fields.get("ttl", 64),
        fields.get("pf", 0), fields.get("hook", 0), fields.get("ifname", "").encode(),
        bytes.fromhex(fields.get("dmac", "000000000000")),
        bytes.fromhex(fields.get("smac", "000000000000")),
        addr(fields.get("saddr", "0.0.0.0" if family == 4 else "::")),
        addr(fields.get("daddr", "0.0.0.0" if family == 4 else "::")),
        fields.get("table", "").encode(), fields.get("chain", "").encode())
