"""Ground truth from the wire: tcpdump captures of the shapes, read with dpkt.

`Capture` runs tcpdump (the judge) inside a namespace and keeps the pcap it writes to a pipe;
`decode()` turns one captured frame into a `Packet`: the outer IP header and, when the frame is
a tunnel packet (VXLAN, Geneve, IPIP, SIT, IP6IP6), the tunnel and the inner IP header.  dpkt parses
Ethernet, IPv4, IPv6 with its extension headers, UDP, TCP and ICMP; the VXLAN (RFC 7348) and Geneve
(RFC 8926) headers are decoded here, dpkt 1.9 has neither.
"""

from __future__ import annotations

import io
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field

import dpkt

LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 1, 101, 113, 276
# The UDP ports the tunnels of the shapes use (IANA VXLAN, Linux/flannel VXLAN, Geneve).
VXLAN_PORTS = (4789, 8472)
GENEVE_PORT = 6081
ETH_P_TEB = 0x6558  # Geneve's protocol type for an inner Ethernet frame


@dataclass
class Header:
    """One IP header and what it carries, flattened: addresses, upper protocol, ports, ICMP."""

    version: int
    src: str
    dst: str
    proto: int  # upper protocol after any IPv6 extension headers
    ttl: int
    df: bool = False
    length: int = 0  # IPv4 total length / IPv6 payload length + 40
    sport: int | None = None
    dport: int | None = None
    tcp_flags: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_mtu: int | None = None  # "frag needed" (v4) / "packet too big" (v6)
    ext_headers: list = field(default_factory=list)  # IPv6: next-header numbers, in order
    fragment: tuple | None = None  # (offset, more-fragments, id) of a fragment


@dataclass
class Tunnel:
    kind: str  # vxlan | geneve | ipip | sit | ip6ip6
    vni: int | None = None
    options: list = field(default_factory=list)  # Geneve TLVs: (class, type, data)


@dataclass
class Packet:
    outer: Header
    tunnel: Tunnel | None = None
    inner: Header | None = None
    raw: bytes = b""

    @property
    def flow(self) -> Header:
        """The packet a pod sent: the inner header of a tunnel packet, else the only one."""
        return self.inner or self.outer


def _header(ip) -> tuple[Header, object]:
    """A Header for a dpkt IP/IP6 object, and the upper-layer dpkt object (or bytes)."""
    if isinstance(ip, dpkt.ip.IP):
        h = Header(4, socket.inet_ntop(socket.AF_INET, ip.src), socket.inet_ntop(socket.AF_INET, ip.dst),
                   ip.p, ip.ttl, df=bool(ip.df), length=ip.len)
        if ip.mf or ip.offset:
            h.fragment = (ip.offset, bool(ip.mf), ip.id)
    else:
        h = Header(6, socket.inet_ntop(socket.AF_INET6, ip.src), socket.inet_ntop(socket.AF_INET6, ip.dst),
                   ip.p, ip.hlim, length=ip.plen + 40)
        h.ext_headers = [n for n, _ in _ext_chain(ip)]
        frag = ip.extension_hdrs.get(dpkt.ip.IP_PROTO_FRAGMENT)
        if frag is not None:
            h.fragment = (frag.frag_off * 8, bool(frag.m_flag), frag.id)
    upper = ip.data
    if isinstance(upper, (dpkt.udp.UDP, dpkt.tcp.TCP)):
        h.sport, h.dport = upper.sport, upper.dport
        if isinstance(upper, dpkt.tcp.TCP):
            h.tcp_flags = upper.flags
    elif isinstance(upper, (dpkt.icmp.ICMP, dpkt.icmp6.ICMP6)):
        h.icmp_type, h.icmp_code = upper.type, upper.code
        unreach = upper.data
        if isinstance(unreach, dpkt.icmp.ICMP.Unreach) and h.icmp_type == 3 and h.icmp_code == 4:
            h.icmp_mtu = unreach.mtu
        elif h.version == 6 and h.icmp_type == 2:  # packet too big: MTU in the 32 bits after the code
            h.icmp_mtu = struct.unpack("!I", bytes(upper)[4:8])[0]
    return h, upper


def _ext_chain(ip6) -> list[tuple[int, object]]:
    """(next-header number, header) of each IPv6 extension header, in wire order."""
    chain, nxt = [], ip6.nxt
    for ext in getattr(ip6, "all_extension_headers", []):
        chain.append((nxt, ext))
        nxt = ext.nxt
    return chain


def vxlan_header(payload: bytes) -> int | None:
    """The VNI of a VXLAN header (flags 0x08 = VNI valid), or None."""
    if len(payload) < 8 or not payload[0] & 0x08:
        return None
    return int.from_bytes(payload[4:7], "big")


def geneve_header(payload: bytes) -> tuple[int, int, list, int] | None:
    """(vni, protocol, [(class, type, data)], header length) of a Geneve header, or None."""
    if len(payload) < 8 or payload[0] >> 6 != 0:
        return None
    opt_len = (payload[0] & 0x3F) * 4
    proto = struct.unpack("!H", payload[2:4])[0]
    vni = int.from_bytes(payload[4:7], "big")
    options, pos, end = [], 8, 8 + opt_len
    while pos + 4 <= end:
        cls, typ, ln = struct.unpack("!HBB", payload[pos:pos + 4])
        size = (ln & 0x1F) * 4
        options.append((cls, typ, payload[pos + 4:pos + 4 + size]))
        pos += 4 + size
    return vni, proto, options, end


def _ip_of(frame: bytes, linktype: int):
    if linktype == LINKTYPE_ETHERNET:
        eth = dpkt.ethernet.Ethernet(frame)
        return eth.data if isinstance(eth.data, (dpkt.ip.IP, dpkt.ip6.IP6)) else None
    if linktype == LINKTYPE_LINUX_SLL:
        frame = frame[16:]
    elif linktype == LINKTYPE_LINUX_SLL2:
        frame = frame[20:]
    elif linktype != LINKTYPE_RAW:
        return None
    if not frame:
        return None
    return dpkt.ip.IP(frame) if frame[0] >> 4 == 4 else dpkt.ip6.IP6(frame) if frame[0] >> 4 == 6 else None


def decode(frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> Packet | None:
    """The outer header, tunnel and inner header of one frame; None for non-IP frames (ARP, ...)."""
    try:
        ip = _ip_of(frame, linktype)
        if ip is None:
            return None
        outer, upper = _header(ip)
        pkt = Packet(outer, raw=frame)
        if outer.proto in (dpkt.ip.IP_PROTO_IPIP, dpkt.ip.IP_PROTO_IP6) and not outer.fragment:
            kind = {(4, 4): "ipip", (4, 41): "sit", (6, 41): "ip6ip6", (6, 4): "ip4ip6"}[(outer.version, outer.proto)]
            pkt.tunnel = Tunnel(kind)
            pkt.inner, _ = _header(upper if not isinstance(upper, bytes) else _ip_of(upper, LINKTYPE_RAW))
        elif isinstance(upper, dpkt.udp.UDP) and not outer.fragment:
            _decap_udp(pkt, bytes(upper.data))
        return pkt
    except (dpkt.UnpackError, KeyError, IndexError, ValueError, struct.error):
        return None


def _decap_udp(pkt: Packet, payload: bytes) -> None:
    if pkt.outer.dport in VXLAN_PORTS:
        vni = vxlan_header(payload)
        if vni is not None:
            pkt.tunnel = Tunnel("vxlan", vni)
            inner = _ip_of(payload[8:], LINKTYPE_ETHERNET)
            pkt.inner = _header(inner)[0] if inner is not None else None
    elif pkt.outer.dport == GENEVE_PORT:
        gnv = geneve_header(payload)
        if gnv is not None:
            vni, proto, options, length = gnv
            pkt.tunnel = Tunnel("geneve", vni, options)
            inner = _ip_of(payload[length:], LINKTYPE_ETHERNET if proto == ETH_P_TEB else LINKTYPE_RAW)
            pkt.inner = _header(inner)[0] if inner is not None else None


def arp(frame: bytes, linktype: int = LINKTYPE_ETHERNET) -> tuple[str, str, str] | None:
    """("request"|"reply", sender IP, target IP) of an ARP frame, else None."""
    if linktype != LINKTYPE_ETHERNET:
        return None
    eth = dpkt.ethernet.Ethernet(frame)
    if not isinstance(eth.data, dpkt.arp.ARP):
        return None
    op = {dpkt.arp.ARP_OP_REQUEST: "request", dpkt.arp.ARP_OP_REPLY: "reply"}.get(eth.data.op, str(eth.data.op))
    return op, socket.inet_ntoa(eth.data.spa), socket.inet_ntoa(eth.data.tpa)


class Capture:
    """tcpdump -i IFNAME in a namespace, writing pcap to a pipe this object reads.

    Start it (the constructor returns once tcpdump says it is listening), make traffic, then
    stop(); `packets` are the decoded IP frames, `frames` all (linktype, bytes) captured.
    """

    def __init__(self, popen, ifname: str, expression: str = "", wait: bool = True):
        self.ifname = ifname
        argv = ["tcpdump", "-i", ifname, "-nn", "-U", "-s", "0", "--immediate-mode", "-w", "-"]
        self.proc = popen(argv + ([expression] if expression else []),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._pcap = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"tcpdump:{ifname}")
        self._reader.start()
        self.frames: list[tuple[int, bytes]] = []
        self.linktype = None
        self._seen = -1
        self._stopped = False
        if wait:
            self.wait_listening()

    def wait_listening(self, timeout: float = 30.0) -> None:
        """Return once tcpdump says it is listening (its filter is attached: nothing is missed after)."""
        ready, _, _ = select.select([self.proc.stderr], [], [], timeout)
        line = self.proc.stderr.readline().decode(errors="replace") if ready else ""
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"tcpdump -i {self.ifname} did not start: {line.strip()!r}")

    def _read(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
            self._pcap += chunk

    def drained(self) -> bool:
        """True once tcpdump has read everything the kernel queued for it: it sleeps in poll()
        (its ring is empty) and nothing more came down the pipe since the last look.  A SIGINT
        before that loses the packets still in the ring (likely on a loaded machine or in TCG)."""
        seen, self._seen = self._seen, len(self._pcap)
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{self.proc.pid}/wchan") as f:
                waiting = "poll" in f.read()
        except OSError:  # gone already
            return True
        return self.proc.poll() is not None or (state == "S" and waiting and seen == self._seen)

    def stop(self) -> "Capture":
        stop_all([self])
        return self

    def _collect(self) -> None:
        """Wait for tcpdump to exit (after its SIGINT) and read the pcap it wrote."""
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        self.proc.stderr.close()
        if self._pcap:
            reader = dpkt.pcap.Reader(io.BytesIO(bytes(self._pcap)))
            self.linktype = reader.datalink()
            self.frames = [(self.linktype, bytes(buf)) for _, buf in reader]

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def arp(self) -> list[tuple[str, str, str]]:
        return [a for a in (arp(f, lt) for lt, f in self.frames) if a is not None]

    @property
    def packets(self) -> list[Packet]:
        return [p for p in (decode(f, lt) for lt, f in self.frames) if p is not None]


def stop_all(captures, timeout: float = 10.0) -> None:
    """Stop captures once each has drained (see Capture.drained), waiting for all at once."""
    pending = [c for c in captures if not c._stopped]
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        pending = [c for c in pending if not c.drained()]
    stopping = [c for c in captures if not c._stopped]
    for c in stopping:
        c._stopped = True
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGINT)  # tcpdump flushes and exits
    for c in stopping:
        c._collect()
