"""-w FILE: every row as a packet in a pcapng file, for Wireshark.

The section and interface blocks are python3-dpkt's (its pcapng module,
with their options). Its Writer is not used: it writes every interface up
front, and skbtracer meets its interfaces while tracing. The packet blocks,
one per row on the per-event path, are packed by packet_block() in the
layout of dpkt's EnhancedPacketBlockLE (tests check they are the same
bytes): building dpkt's object per row cost 9 us, four times the rest of a
row; and dpkt records the captured length as the packet's own.

  - one Interface Description Block per (network namespace, device, link
    type), named "<netns label>/<ifname>" like the rows, if_tsresol 9 (ns);
  - one Enhanced Packet Block per row: the bytes the kernel copied (from the
    Ethernet header, or raw IP when the skb had none), the row's text as its
    comment, inbound/outbound in its flags where the probe point says so;
  - the section's comment: space reserved when the file is created, filled
    with the packets' story (DUPLICATE / DROPPED / VANISHED and the table) at
    exit, in place, so that a full disk cannot cost it.

Blocks are written once per poll batch; a write that fails (a full disk)
is cut back to the last whole block, so the file stays readable.
"""

import os
import platform
import struct

from dpkt import pcapng

from ..events.decode import EVENT_SIZE, KIND_DROP, KIND_IPTABLE, BoundedCache
from .. import story
from .files import FileError, fill

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101              # raw IPv4 or IPv6, by the version nibble
CAPTURE_HEAD = struct.Struct("<IHH")    # struct capture_head in skbtracer.c
TSRESOL_NS = 9                  # if_tsresol: 10^-9 s
STORY_SPACE = 32768             # bytes of section comment kept for the story
SHB_OPTIONS_AT = 24             # after the section block's fixed head
# the story's space is a comment and a custom option (not copied by editors)
# that pads it: PEN 32473 is IANA's example enterprise number (RFC 5612)
OPT_CUSTOM_BINARY_NOCOPY = 19373
PADDING_PEN = struct.pack("<I", 32473)
STORY_PLACEHOLDER = ("skbtracer: the packets' story (DUPLICATE / DROPPED / VANISHED) is "
                     "written here when tracing ends")

EPB_TYPE = struct.pack("<I", pcapng.PCAPNG_BT_EPB)
IDB_TYPE = struct.pack("<I", pcapng.PCAPNG_BT_IDB)
OPT_EPB_FLAGS = 2
DIRECTION_IN, DIRECTION_OUT = 1, 2
# epb_flags bits 2-4, for inbound packets, from skb->pkt_type
RECEPTION = {0: 1 << 2, 1: 3 << 2, 2: 2 << 2, 3: 4 << 2}   # unicast, broadcast, multicast, promisc
PKT_TYPE_OUTGOING = 4
NF_INBOUND_HOOKS, NF_OUTBOUND_HOOKS = (0, 1), (3, 4)      # PRE_ROUTING, LOCAL_IN / LOCAL_OUT, POST_ROUTING
NF_IP_FAMILIES = (2, 7, 10)                               # ipv4, bridge, ipv6


class CaptureError(Exception):
    """The file cannot be written (a full disk, an I/O error)."""


def _option(code, data):
    return pcapng.PcapngOptionLE(code=code, data=data)


def _comment(text):
    return pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_COMMENT, text=text)


_END = pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_ENDOFOPT)


def _packet_layout(key):
    """struct.Struct of a packet block with this captured length, comment
    length and flags option or not ('s' fields pad with zeros to 4)."""
    caplen, comment_len, flagged = key
    pad = lambda n: (n + 3) // 4 * 4    # noqa: E731
    fmt = "<7I %ds HH %ds %s HH I" % (pad(caplen), pad(comment_len), "HHI" if flagged else "")
    return struct.Struct(fmt)


_PACKET_LAYOUTS = BoundedCache(_packet_layout, limit=4096)


def packet_block(iface, ts, data, wire_len, comment, flags=0):
    """An Enhanced Packet Block: the bytes, the original length (at least
    the captured one), the comment (bytes, UTF-8) and epb_flags (if any)."""
    caplen = len(data)
    layout = _PACKET_LAYOUTS[(caplen, len(comment), bool(flags))]
    total = layout.size
    head = (pcapng.PCAPNG_BT_EPB, total, iface, ts >> 32, ts & 0xFFFFFFFF, caplen,
            max(wire_len, caplen), data, pcapng.PCAPNG_OPT_COMMENT, len(comment), comment)
    if flags:
        return layout.pack(*head, OPT_EPB_FLAGS, 4, flags, 0, 0, total)
    return layout.pack(*head, 0, 0, total)


def split(raw):
    """(linktype, original length, packet bytes) after the event in a -w event."""
    if len(raw) < EVENT_SIZE + CAPTURE_HEAD.size:
        return LINKTYPE_RAW, 0, b""
    wire_len, length, linktype = CAPTURE_HEAD.unpack_from(raw, EVENT_SIZE)
    start = EVENT_SIZE + CAPTURE_HEAD.size
    return linktype, wire_len, raw[start:start + length]


def pack(linktype, data, wire_len=None):
    """The bytes skbtracer.c appends to an event (for tests and benchmarks)."""
    wire = len(data) if wire_len is None else wire_len
    return CAPTURE_HEAD.pack(wire, len(data), linktype) + data


def directions(probe_names):
    """Probe id -> epb_flags direction of a route row, or 0 (unknown)."""
    return [DIRECTION_IN if name in story.RX_POINTS
            else DIRECTION_OUT if name in story.TX_POINTS else 0
            for name in probe_names]


class PcapngWriter:
    """Writes the events of one session to an open file.

    label: netns inode -> the NETWORK_NS text of the rows; wall_ns: event
    time (CLOCK_MONOTONIC ns) -> ns since the epoch; rotation: a
    rotate.Rotation (--rotate): a file that would pass its size is put
    aside between blocks, and the new one begins with its own section
    header and the interfaces met so far (same ids, so the packet blocks
    stay as they are)."""

    def __init__(self, file, snaplen, probe_names, label=str, wall_ns=lambda ns: ns,
                 rotation=None):
        self.file = file
        self.rotation = rotation
        self.interface_blocks = []      # every IDB, by interface id
        self.interfaces_written = 0     # of them, in the files so far
        self.fd = file.fileno()
        self.snaplen = snaplen
        self.label = label
        self.wall_ns = wall_ns
        self.route_directions = directions(probe_names)
        self.interfaces = {}            # (netns, ifname, linktype) -> interface id
        self.pending = []               # whole blocks not yet written
        self.written = 0                # bytes in the file, all of them whole blocks
        self.packets = 0                # packet blocks written (--rotate: in all the files)
        self.story_at = None            # file offset of the reserved section comment
        self.head = 0                   # bytes of section and interfaces a new file begins with

    def start(self):
        """The section header, with the story's space reserved."""
        self.story_at = SHB_OPTIONS_AT
        self.pending.append(self._section_header())
        self.flush()
        self.head = self.written

    def _section_header(self):
        return bytes(pcapng.SectionHeaderBlockLE(
            opts=self._story_options([STORY_PLACEHOLDER]) + [
                _option(pcapng.PCAPNG_OPT_SHB_OS, ("%s %s" % (platform.system(),
                                                              platform.release())).encode()),
                _option(pcapng.PCAPNG_OPT_SHB_USERAPPL, b"skbtracer"),
                _END]))

    # -- per event (the perf callback)

    def add(self, event, raw, comment):
        linktype, wire_len, data = split(raw)
        key = (event.netns, event.ifname, linktype)
        iface = self.interfaces.get(key)
        if iface is None:
            iface = self._add_interface(event, linktype)
        self.pending.append(packet_block(iface, self.wall_ns(event.ts_ns), data, wire_len,
                                         comment.encode(), self.flags(event)))

    def flags(self, e):
        """epb_flags: direction where the probe point tells it, and for
        inbound packets the reception type from skb->pkt_type."""
        direction = 0
        if e.kind == KIND_IPTABLE:
            if e.pf in NF_IP_FAMILIES:
                direction = (DIRECTION_IN if e.hook in NF_INBOUND_HOOKS
                             else DIRECTION_OUT if e.hook in NF_OUTBOUND_HOOKS else 0)
        elif e.kind != KIND_DROP and e.probe < len(self.route_directions):
            direction = self.route_directions[e.probe]
        if e.pkt_type == PKT_TYPE_OUTGOING:
            direction = DIRECTION_OUT
        if direction == DIRECTION_IN:
            return direction | RECEPTION.get(e.pkt_type, 0)
        return direction

    def _add_interface(self, e, linktype):
        iface = len(self.interfaces)
        self.interfaces[(e.netns, e.ifname, linktype)] = iface
        name = "%s/%s" % (self.label(e.netns), e.ifname or "-")
        description = "network namespace inode %d, %s" % (
            e.netns, "device %s (ifindex %d)" % (e.ifname, e.ifindex) if e.ifname else "no device")
        idb = pcapng.InterfaceDescriptionBlockLE(linktype=linktype, snaplen=self.snaplen, opts=[
            _option(pcapng.PCAPNG_OPT_IF_NAME, name.encode()),
            _option(pcapng.PCAPNG_OPT_IF_DESCRIPTION, description.encode()),
            _option(pcapng.PCAPNG_OPT_IF_TSRESOL, bytes([TSRESOL_NS])),
            _END])
        self.interface_blocks.append(bytes(idb))
        self.pending.append(self.interface_blocks[-1])
        return iface

    # -- per poll batch, and at exit

    def flush(self):
        """Write the pending blocks; CaptureError when the file cannot take
        them all (it is cut back to the last whole block written)."""
        if not self.pending:
            return
        blocks, self.pending = self.pending, []
        if self.rotation is not None:
            blocks = self._rotate_as_needed(blocks)
        self._write(blocks)

    def _rotate_as_needed(self, blocks):
        """The blocks that fit the file written, in as many files as they
        take; what is left for the last one."""
        return fill(blocks, lambda rest: self.written + sum(map(len, rest)) <= self.rotation.size,
                    self._blocks_that_fit, self._write, self._next_file)

    def _blocks_that_fit(self, blocks):
        fit, size = 0, self.written
        while fit < len(blocks) and size + len(blocks[fit]) <= self.rotation.size:
            size += len(blocks[fit])
            fit += 1
        if fit == 0 and self.written == self.head:
            fit = 1                 # a file holds a block past its head at least
        return fit

    def _next_file(self):
        """The file put aside (its story space says where the story is),
        a new one begun as a file of its own."""
        self.write_story(["skbtracer: the packets' story is written in the newest file, "
                          "%s, when tracing ends" % self.rotation.path])
        try:
            self.file = self.rotation.next_file()
        except OSError as e:
            raise CaptureError("cannot rotate: %s" % e.strerror) from None
        except FileError as e:      # the new file cannot be opened: its one line
            raise CaptureError("cannot rotate: %s" % e) from None
        self.fd = self.file.fileno()
        self.written = 0
        known = self.interfaces_written
        self._write([self._section_header()] + self.interface_blocks[:known])
        self.interfaces_written = known      # not met again: written again
        self.head = self.written

    def _write(self, blocks):
        if not blocks:
            return
        data = b"".join(blocks)
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.write(self.fd, view[done:])
        except OSError as e:
            self._keep_whole_blocks(blocks, done)
            raise CaptureError(e.strerror) from None
        self.written += len(data)
        self._count(blocks)

    def _count(self, blocks):
        """Packets and interfaces in blocks, just written."""
        for block in blocks:
            kind = block[:4]
            if kind == EPB_TYPE:
                self.packets += 1
            elif kind == IDB_TYPE:
                self.interfaces_written += 1

    def _keep_whole_blocks(self, blocks, done):
        whole = 0
        for block in blocks:
            if whole + len(block) > done:
                break
            whole += len(block)
            self._count([block])
        self.written += whole
        try:
            os.ftruncate(self.fd, self.written)
            os.lseek(self.fd, self.written, os.SEEK_SET)
        except OSError:
            pass

    def write_story(self, lines):
        """The story into the section comment reserved by start()."""
        if self.story_at is None or self.written < self.story_at + STORY_SPACE:
            return
        try:
            region = b"".join(bytes(o) for o in self._story_options(lines))
            os.pwrite(self.fd, region, self.story_at)
        except OSError as e:
            raise CaptureError(e.strerror) from None

    @staticmethod
    def _story_options(lines):
        """Options of exactly STORY_SPACE bytes: a comment with the lines
        that fit, and the padding option."""
        room = STORY_SPACE - 4 - 8 - 3      # option heads, the PEN, alignment
        text = b""
        for i, line in enumerate(lines):
            more = b"skbtracer: %d more lines on stderr" % (len(lines) - i)
            candidate = text + line.encode() + b"\n"
            if len(candidate) + len(more) > room:
                text += more
                break
            text = candidate
        comment = _comment(text.rstrip(b"\n"))
        padding = STORY_SPACE - len(bytes(comment)) - 4 - len(PADDING_PEN)
        return [comment, _option(OPT_CUSTOM_BINARY_NOCOPY, PADDING_PEN + bytes(padding))]
