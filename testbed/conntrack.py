"""Conntrack scenarios (issue 23) on a kube-proxy node (testbed/kubeproxy.py, iptables mode):
what conntrack decides for each packet, and the drops it causes.

    with ConntrackLab() as lab:
        ex = lab.udp_exchange(sport=42001)          # NEW -> DNAT -> reply (ESTABLISHED REPLY)
        ex.entry.reply["src"] == "10.244.1.3"
        inv = lab.invalid_tcp(sport=42002)          # ACK nobody knows, tcp_loose=0: INVALID, dropped
        race = lab.dns_race(rounds=400)             # the A/AAAA race through a two-endpoint service
        snat = lab.snat_race(rounds=400)            # the SNAT port race: insert_failed
        full = lab.fill_table(spare=3)              # guests only: "table full, dropping packet"
        stale = lab.stale_endpoint(sport=42003)     # an entry still DNATing to a dead endpoint
        lab.connmark(sport=42004, mark=0x2a)        # that connection's conntrack mark (CONNMARK)
        lab.ct_zone(port=42005, zone=7)             # that connection in conntrack zone 7 (-j CT)
        helper = lab.helper_drop(sport=42006)       # conntrack's ftp helper refuses a segment

Each scenario returns a result holding its ground truth: conntrack -S deltas, conntrack -L
entries, rule counters, what the endpoints echoed.  Echo servers (UDP and TCP, port 9000) run on
server and server2, so every request has a reply.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios
import time
from dataclasses import dataclass, field, replace

from . import groundtruth
from .echo import EchoServer, tcp_exchange, udp_exchange
from .kubeproxy import PAIR_IP, SERVER, SERVER2, KubeProxyNode
from .kuberules import ClusterConfig
from .race import run_batch
from .topology import IP, SERVER_PORT, _iproute, netns_path, read_sysctl, run_in_netns, write_sysctl

# The CNI's masquerade for pod traffic leaving the cluster (kubenet's rule), without --random-fully:
# what the SNAT race needs.
POD_MASQUERADE = ('-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -m comment --comment '
                  '"kubenet: SNAT for outbound traffic from cluster" -j MASQUERADE')
OUTSIDE_DNS = (IP["node2"], 53)  # "outside the cluster" for node1's pods: node2's link address
CT_MAX = "net.netfilter.nf_conntrack_max"
RACE_SPORTS = (20000, 40000)  # source ports of the races' rounds; scenarios' own ports lie above


@dataclass
class Exchange:
    replies: int  # replies the client got
    entry: groundtruth.CtEntry | None  # the connection's conntrack entry afterwards
    events: list[groundtruth.CtEvent]  # conntrack -E for it: NEW, UPDATE...


@dataclass
class InvalidResult:
    stats: dict[str, int]  # conntrack -S delta (invalid moves)
    rule_packets: int  # packets the KUBE-FORWARD --ctstate INVALID -j DROP rule counted
    echoed: int  # what the server saw (0: dropped before it)


@dataclass
class RaceResult:
    kernel: str
    rounds: int
    sent: int
    delivered: int  # datagrams the endpoints received
    stats: dict[str, int]  # conntrack -S delta: clash_resolve, insert_failed, drop...
    seconds: float
    batches: list = field(default_factory=list)

    @property
    def insert_failed(self) -> int:
        return self.stats.get("insert_failed", 0)

    @property
    def clashes(self) -> int:
        return self.stats.get("clash_resolve", 0) + self.insert_failed

    def describe(self) -> str:
        return (f"{self.kernel}: {self.rounds} rounds in {self.seconds:.1f} s, {self.sent} sent, "
                f"{self.delivered} delivered, conntrack -S moved {self.stats or 'nothing'}")


@dataclass
class TableFullResult:
    max: int
    established: int  # connections that fit
    refused: str  # how the next connect ended ("timeout": its SYN was dropped)
    stats: dict[str, int]  # drop moves; early_drop does not (all entries ASSURED)
    count: int  # nf_conntrack_count when full


@dataclass
class StaleResult:
    first: bytes | None  # reply before the endpoint moved (from the old endpoint)
    stale_entry: groundtruth.CtEntry | None  # still DNATing to the old endpoint after the move
    during: bytes | None  # reply while the entry is stale (None: lost at the dead endpoint)
    new_endpoint_saw: int  # datagrams the new endpoint got while the entry was stale
    after_flush: bytes | None  # reply after `conntrack -D` (kube-proxy's cleanup)


@dataclass
class HelperResult:
    entry: groundtruth.CtEntry | None  # the control connection's entry (helper=ftp)
    echoed: list[bytes]  # the lines the server got: the first command only
    unacked: int  # bytes the client still had unacknowledged at the end: the refused segment's


FTP_PORT = 21
PARTIAL_COMMAND = b"POR"  # the start of "PORT": the ftp helper's partial match


class ConntrackLab:
    """A KubeProxyNode in iptables mode, promisc off (no duplicates), echo servers on the endpoints."""

    def __init__(self, iptables: str = "nft", prefix: str | None = None):
        self.node = KubeProxyNode(mode="iptables", iptables=iptables, promisc=False, prefix=prefix, echo=True,
                                  config=ClusterConfig(extra_nat=(POD_MASQUERADE,)))
        self.echo = self.node.echo
        self._next_sport = RACE_SPORTS[0]

    def __enter__(self) -> "ConntrackLab":
        self.node.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def down(self) -> None:
        self.node.down()

    # -- helpers

    def client_socket(self, kind=socket.SOCK_DGRAM, sport: int = 0) -> socket.socket:
        sock = self.node.cluster.socket("client", socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", sport))
        return sock

    def entry(self, proto: str, sport: int) -> groundtruth.CtEntry | None:
        found = self.node.conntrack("-p", proto, "--orig-port-src", str(sport))
        return found[0] if found else None

    def echoed(self, pod: str, proto: str = "udp") -> int:
        return len(self.echo[(pod, proto)].records())

    # -- rules that put a connection's mark and zone (for --ct-mark, --ct-zone)

    def connmark(self, sport: int, mark: int, proto: str = "udp") -> None:
        """node1 sets the conntrack mark of the client's connections from source port sport:
        CONNMARK in mangle PREROUTING (after conntrack's hook), so the first packet's entry gets
        it there and every later packet of the connection, either way, carries it."""
        self._node1_rule("mangle", "PREROUTING", "-p", proto, "--sport", str(sport),
                         "-j", "CONNMARK", "--set-mark", "%#x" % mark)

    def ct_zone(self, port: int, zone: int, proto: str = "udp") -> None:
        """node1's conntrack keeps the connections with the client's port `port` in zone `zone`:
        `-j CT --zone` in raw PREROUTING (before conntrack's hook), for either port (the replies
        must look the entry up in the same zone)."""
        self._node1_rule("raw", "PREROUTING", "-p", proto, "-m", "multiport", "--ports", str(port),
                         "-j", "CT", "--zone", str(zone))

    def _node1_rule(self, table: str, chain: str, *spec: str) -> None:
        # tables kube-proxy's ruleset (apply()) does not restore: the rule stays until down()
        self.node.exec("node1", [f"iptables-{self.node.iptables_flavour}", "-w", "-t", table,
                                 "-A", chain, *spec])

    # -- scenarios

    def udp_exchange(self, sport: int, dst: tuple[str, int] = (IP["service"], 53), count: int = 2) -> Exchange:
        """count request/reply pairs through the service from one socket: the first request NEW (a
        DNAT reply tuple), its reply ESTABLISHED in the reply direction, later ones ESTABLISHED."""
        with self.node.conntrack_events() as ev, self.client_socket(sport=sport) as sock:
            replies = sum(udp_exchange(sock, dst, b"q%d" % i) is not None for i in range(count))
        mine = [e for e in ev.events() if e.entry.orig.get("sport") == str(sport)]
        return Exchange(replies, self.entry("udp", sport), mine)

    def tcp_exchange(self, sport: int, dst: tuple[str, int] = (IP["service"], 53), lines: int = 2) -> Exchange:
        with self.node.conntrack_events() as ev, self.client_socket(socket.SOCK_STREAM, sport) as sock:
            got = tcp_exchange(sock, dst, [b"line%d" % i for i in range(lines)])
        mine = [e for e in ev.events() if e.entry.orig.get("sport") == str(sport)]
        return Exchange(len(got), self.entry("tcp", sport), mine)

    def invalid_tcp(self, sport: int) -> InvalidResult:
        """A bare ACK from the client to the server pod that no connection knows, with
        nf_conntrack_tcp_loose=0 in node1: conntrack calls it INVALID (no entry), and kube-proxy's
        KUBE-FORWARD rule `--ctstate INVALID -j DROP` drops it (bridged, via br_netfilter)."""
        ns = self.node.cluster.ns["node1"]
        run_in_netns(ns, write_sysctl, "net.netfilter.nf_conntrack_tcp_loose", 0)
        rule = dict(table="filter", chain="KUBE-FORWARD", contains="--ctstate INVALID -j DROP")
        before_rule, before = self.node.iptables().rule(**rule).packets, self.node.conntrack_stats()
        self.echo[("server", "tcp")].reset()
        segment = tcp_segment(IP["client"], IP["server"], sport, SERVER_PORT, seq=1000, ack=2000, flags=0x10)
        raw = self.node.cluster.socket("client", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        with raw:
            raw.sendto(segment, (IP["server"], 0))
        time.sleep(self.node.cluster.settle)
        stats = groundtruth.stats_delta(self.node.conntrack_stats(), before)
        packets = self.node.iptables().rule(**rule).packets - before_rule
        run_in_netns(ns, write_sysctl, "net.netfilter.nf_conntrack_tcp_loose", 1)
        return InvalidResult(stats, packets, self.echoed("server", "tcp"))

    def dns_race(self, rounds: int = 400, batch: int = 200, seconds: float = 60.0,
                 until_insert_failed: bool = True) -> RaceResult:
        """The A/AAAA race: two datagrams at once from ONE client socket, CPUs 0 and 1, to the
        dns-pair service (two endpoints, random DNAT), `rounds` times in batches, stopping early
        once insert_failed moves (until_insert_failed) or after `seconds`."""
        client = netns_path(self.node.cluster.ns["client"])
        return self._race([(client, 0), (client, 1)], (PAIR_IP, 53), True, ("server", "server2"),
                          rounds, batch, seconds, until_insert_failed)

    def snat_race(self, rounds: int = 400, batch: int = 200, seconds: float = 60.0,
                  until_insert_failed: bool = True) -> RaceResult:
        """The SNAT race: the client and server pods send at once from the same source port to an
        address outside the cluster; node1 masquerades both to 10.250.0.1 and that port."""
        cluster = self.node.cluster
        cluster.start_udp_receiver("node2", OUTSIDE_DNS[1])  # answers nothing; counted by its UDP layer
        senders = [(netns_path(cluster.ns["client"]), 0), (netns_path(cluster.ns["server"]), 1)]
        return self._race(senders, OUTSIDE_DNS, False, ("node2",), rounds, batch, seconds, until_insert_failed)

    def _race(self, senders, dst, shared, receivers, rounds, batch, seconds, until_insert_failed) -> RaceResult:
        def arrived():  # at the receivers' UDP layer: a slow Python listener may drop some itself
            return sum(groundtruth.udp_arrived(self.node.cluster.ns[pod]) for pod in receivers)
        start_rx, before = arrived(), self.node.conntrack_stats()
        result = RaceResult(os.uname().release, 0, 0, 0, {}, 0.0)
        start = time.monotonic()
        while result.rounds < rounds and time.monotonic() - start < seconds:
            n = min(batch, rounds - result.rounds)
            b = run_batch(senders, dst, n, self._race_sports(n), shared,
                          seconds=max(1.0, seconds - (time.monotonic() - start)))
            result.rounds += n
            result.sent += b.sent
            result.batches.append(b)
            result.stats = groundtruth.stats_delta(self.node.conntrack_stats(), before)
            if until_insert_failed and result.insert_failed:
                break
        time.sleep(max(self.node.cluster.settle, 0.5))
        result.delivered = arrived() - start_rx
        result.stats = groundtruth.stats_delta(self.node.conntrack_stats(), before)
        result.seconds = time.monotonic() - start
        return result

    def _race_sports(self, n: int) -> int:
        """First of n source ports no earlier race used (a reused port finds last round's entry)."""
        if self._next_sport + n > RACE_SPORTS[1]:
            self._next_sport = RACE_SPORTS[0]
        first, self._next_sport = self._next_sport, self._next_sport + n
        return first

    def fill_table(self, spare: int = 3, sport: int = 43000) -> TableFullResult:
        """nf_conntrack_max set to what node1 holds + spare, `spare` TCP connections established and
        kept open (ASSURED, so early drop cannot evict them), then one more: its SYN is dropped with
        "nf_conntrack: table full, dropping packet".  nf_conntrack_max is global (read-only in a
        namespace on newer kernels): only done inside a throwaway guest, where it is restored after."""
        if not os.environ.get("TESTBED_GUEST"):
            raise RuntimeError("conntrack table full needs the global nf_conntrack_max (guest)")
        ns = self.node.cluster.ns["node1"]
        self.node.exec("node1", ["conntrack", "-F"], check=False)
        old_max = int(read_sysctl(CT_MAX))
        count = int(run_in_netns(ns, read_sysctl, "net.netfilter.nf_conntrack_count"))
        socks, before = [], self.node.conntrack_stats()
        try:
            write_sysctl(CT_MAX, count + spare)  # our own namespace: the guest's init_net
            for i in range(spare):
                sock = self.client_socket(socket.SOCK_STREAM, sport + i)
                if tcp_exchange(sock, (IP["service"], 53), [b"hold"]):
                    socks.append(sock)
                else:
                    sock.close()
            with self.client_socket(socket.SOCK_STREAM, sport + spare) as extra:
                extra.settimeout(1.5)
                try:
                    extra.connect((IP["service"], 53))
                    refused = "connected"
                except OSError as e:
                    refused = "timeout" if isinstance(e, (socket.timeout, TimeoutError)) else type(e).__name__
            full = int(run_in_netns(ns, read_sysctl, "net.netfilter.nf_conntrack_count"))
            stats = groundtruth.stats_delta(self.node.conntrack_stats(), before)
        finally:
            for sock in socks:
                sock.close()
            write_sysctl(CT_MAX, old_max)
        return TableFullResult(count + spare, len(socks), refused, stats, full)

    def stale_endpoint(self, sport: int) -> StaleResult:
        """A UDP flow to ubuntu-server:dns, then the endpoint "restarts" elsewhere: kube-proxy's rules
        now send the service to server2 and the old pod's address is gone, but the flow's conntrack
        entry still DNATs to it; `conntrack -D` (what kube-proxy runs for UDP) ends it."""
        svc = self.node.service("ubuntu-server:dns")
        moved = [replace(s, endpoints=(SERVER2,)) if s == svc else s for s in self.node.services]
        original = list(self.node.services)
        dst = (IP["service"], 53)
        with self.client_socket(sport=sport) as sock:
            first = udp_exchange(sock, dst, b"before")
            self.node.apply(moved)
            self._server_address("del")
            try:
                before_new = self.echoed("server2")
                stale = self.entry("udp", sport)
                during = udp_exchange(sock, dst, b"during", timeout=1.0)
                saw = self.echoed("server2") - before_new
                self.node.exec("node1", ["conntrack", "-D", "-p", "udp", "--orig-dst", IP["service"]], check=False)
                after = udp_exchange(sock, dst, b"after")
            finally:
                self._server_address("add")
                self.node.apply(original)
        return StaleResult(first, stale, during, saw, after)

    def helper_drop(self, sport: int, seconds: float = 1.5) -> HelperResult:
        """An FTP control connection from the client to the server pod, conntrack's ftp helper
        assigned to it (raw PREROUTING -j CT --helper ftp: since 4.7 helpers are not assigned by
        port). After a first command line, a segment that holds only the start of a command
        ("POR") is a partial match the helper refuses (nf_ct_helper_log "partial matching"):
        it is dropped, and so is every retransmission of it, and no conntrack -S counter moves.
        The client's unacknowledged bytes at the end say it never arrived."""
        rule = ["-t", "raw", "PREROUTING", "-p", "tcp", "-d", SERVER.ip, "--dport", str(FTP_PORT),
                "-j", "CT", "--helper", "ftp"]
        iptables = f"iptables-{self.node.iptables_flavour}"
        self.node.exec("node1", [iptables, "-w", rule[0], rule[1], "-A", *rule[2:]])
        server = EchoServer(self.node.netns_name("server"), "tcp", FTP_PORT)
        try:
            with self.client_socket(socket.SOCK_STREAM, sport) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                first = tcp_exchange(sock, (SERVER.ip, FTP_PORT), [b"USER skbtracer\r"])
                sock.send(PARTIAL_COMMAND)
                time.sleep(seconds)  # retransmitted, refused each time
                unacked = struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]
                entry = self.entry("tcp", sport)
                # closed with a reset: an orphan would go on retransmitting "POR" after we are done
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            echoed = [d.payload for d in server.records()]
            assert first, "the ftp control connection did not get its first line through"
        finally:
            server.stop()
            self.node.exec("node1", [iptables, "-w", rule[0], rule[1], "-D", *rule[2:]])
        return HelperResult(entry, echoed, unacked)

    def _server_address(self, how: str) -> None:
        def change():
            with _iproute() as ipr:
                idx = ipr.link_lookup(ifname="eth0")[0]
                ipr.addr(how, index=idx, address=SERVER.ip, prefixlen=24)
                if how == "add":
                    ipr.route("replace", dst="0.0.0.0/0", gateway=IP["cbr0"])
        run_in_netns(self.node.cluster.ns["server"], change)


def tcp_segment(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    """A 20-byte TCP header with its checksum (the kernel adds the IP header on a raw socket)."""
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
    data = pseudo + header
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return header[:16] + struct.pack("!H", ~total & 0xFFFF) + header[18:]
