"""Decoding the raw events that skbtracer.c writes into the ring: bytes ->
Event, the layout from fields.FIELDS (struct event_t)."""

import socket
import struct

from . import fields
from .fields import ADDRESS, BYTES, EVENT_SIZE, NETWORK, TEXT
from .vocabulary import (  # noqa: F401  (the kinds and names are imported from here too)
    KIND_DROP, KIND_IPTABLE, KIND_ROUTE, NF_HOOKS, NF_HOOKS_BY_PF, NF_PROTOCOLS, PKT_TYPES,
    hook_name, icmp_kind, is_icmp, probe_name, verdict_name)

# struct event_t as one unaligned little-endian struct (encode() packs it)
EVENT = fields.struct_of(fields.DECODED, size=EVENT_SIZE)

# Decoding reads the same bytes through two structs: the host-order fields,
# and the header fields the kernel copied in network byte order (one
# big-endian struct over them). Cheaper than swapping in Python.
_HOST_FIELDS = tuple(f for f in fields.DECODED if f.seen != NETWORK)
_NET_FIELDS = tuple(f for f in fields.DECODED if f.seen == NETWORK)
_HOST_ORDER = fields.struct_of(_HOST_FIELDS, size=EVENT_SIZE)   # too short: an error
_NET_ORDER = fields.struct_of(_NET_FIELDS, ">")

_NETNS = fields.struct_of([fields.at("netns")])


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


def c_string(raw):
    """A NUL-terminated (or unterminated, at most the field's size) name, as
    a row shows it."""
    return printable(raw.split(b"\0", 1)[0].decode("ascii", "replace"))


_IPV4 = BoundedCache(lambda raw: socket.inet_ntop(socket.AF_INET, raw[:4]))
_IPV6 = BoundedCache(lambda raw: socket.inet_ntop(socket.AF_INET6, raw))
_STRINGS = BoundedCache(c_string)


def _decoder_source():
    """Event.__init__, written out from the table: the two unpacks into the
    attributes, then the fields Python sees as other than numbers or bytes.
    (Generated as namedtuple and dataclasses do: one tuple assignment is
    what makes decoding cheap.)"""
    def target(f):
        direct = f.seen not in (TEXT, ADDRESS) and f.mask is None
        return "self." + f.name if direct else f.name
    lines = ["def __init__(self, raw):"]
    for fields_, unpack in ((_HOST_FIELDS, "_HOST_ORDER"), (_NET_FIELDS, "_NET_ORDER")):
        if fields_:
            lines.append("    (%s,) = %s.unpack_from(raw)" % (", ".join(map(target, fields_)), unpack))
    if any(f.seen == ADDRESS for f in fields.DECODED):
        lines.append("    addresses = _IPV4 if self.family == 4 else _IPV6")
    for f in fields.DECODED:
        if f.seen == TEXT:
            lines.append("    self.%s = _STRINGS[%s]" % (f.name, f.name))
        elif f.seen == ADDRESS:
            lines.append("    self.%s = addresses[%s]" % (f.name, f.name))
        elif f.mask is not None:
            lines.append("    self.%s = %s & %#x" % (f.name, f.name, f.mask))
    return "\n".join(lines) + "\n"


DECODER_SOURCE = _decoder_source()


def _decoder():
    namespace = {"_HOST_ORDER": _HOST_ORDER, "_NET_ORDER": _NET_ORDER, "_IPV4": _IPV4,
                 "_IPV6": _IPV6, "_STRINGS": _STRINGS}
    exec(compile(DECODER_SOURCE, "<decode.Event.__init__>", "exec"), namespace)
    return namespace["__init__"]


class Event:
    """One decoded event: an attribute per field of struct event_t
    (fields.FIELDS, but its padding), 16-bit and 32-bit header fields in
    host order. __init__(raw) is made from the table (DECODER_SOURCE)."""

    __slots__ = tuple(f.name for f in fields.DECODED)
    __init__ = _decoder()

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


# What encode() gives a field it is not told (others: zero, empty)
_ENCODE_DEFAULTS = {"stack_id": -1, "kind": KIND_ROUTE, "family": 4, "l4proto": 17, "ttl": 64}


def _packed(f, value, family):
    """A field's value for EVENT.pack, from what encode() was given."""
    if f.seen == NETWORK:
        return int.from_bytes(value.to_bytes(f.size, "big"), "little")
    if f.seen == ADDRESS:
        if isinstance(value, str):
            value = socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, value)
        return value.ljust(f.size, b"\0")
    if f.seen == BYTES and isinstance(value, str):
        return bytes.fromhex(value)
    if f.seen == TEXT and isinstance(value, str):
        return value.encode()
    return value


def encode(**values):
    """Raw event bytes from keyword fields, as the kernel would write them.
    For tests and benchmarks: numbers in host order (ports too), addresses
    and names as text or bytes, MACs as hex or bytes; any other field's
    value is zero (or _ENCODE_DEFAULTS')."""
    unknown = set(values) - set(Event.__slots__)
    if unknown:
        raise TypeError("encode(): no field %s" % ", ".join(sorted(unknown)))
    family = values.get("family", _ENCODE_DEFAULTS["family"])
    packed = []
    for f in fields.DECODED:
        value = values.get(f.name, _ENCODE_DEFAULTS.get(f.name))
        if value is None:
            value = b"" if f.seen in (TEXT, ADDRESS, BYTES) else 0
        packed.append(_packed(f, value, family))
    return EVENT.pack(*packed)


def encode_event(e):
    """encode() of a decoded Event's (or any such object's) fields."""
    return encode(**{name: getattr(e, name) for name in Event.__slots__})
