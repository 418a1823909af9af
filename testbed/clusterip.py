"""Shapes for tracing a Service by its ClusterIP (issue 28).

LocalDnat: pwru's own CI case rebuilt on the seed's node1: a hostNetwork process (a socket in
node1) connects to 10.10.20.99:80, and nat OUTPUT DNATs it to 10.10.14.2:8080 before any
tracepoint sees the packet.  10.10.14.2 is a second address of the server pod (echo servers on
8080), 10.10.14.1 one of node1's cbr0; traffic stays on the seed's bridge.

    with LocalDnat(iptables="nft") as dnat:
        echoes = dnat.tcp(sport=45001)            # [b"line0", b"line1"]: both directions
        dnat.rule("tcp").packets                   # the DNAT rule counted the connection's first packet
        dnat.entry("tcp", 45001).reply["src"]      # "10.10.14.2"

open_connections(): several connections to one service of a KubeProxyNode(echo=True), each with
its own source port, and what conntrack says each one's endpoint was:

    with KubeProxyNode(echo=True) as node:
        conns = open_connections(node, "10.96.0.30", 53, "udp", count=4, first_sport=46001)
        other = open_connections(node, "10.96.0.20", 53, "udp", count=2, first_sport=46101)
        {c.endpoint for c in conns}               # e.g. {"10.244.1.3:9000", "10.244.2.3:9000"}
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from . import groundtruth
from .echo import EchoServer, tcp_exchange, udp_exchange
from .topology import SeedCluster, _iproute, run_in_netns

VIP = "10.10.20.99"
VIP_TCP_PORT, VIP_UDP_PORT = 80, 53
BACKEND, BACKEND_PORT = "10.10.14.2", 8080
NODE_ADDR = "10.10.14.1"
VIP_NET = "10.10.20.0/24"  # node1 routes it via the backend: the lookup before DNAT needs a route
PREFIXLEN = 24
# pwru's CI rule, word for word (iptables -t nat -I OUTPUT 1 ...), and its UDP twin.
DNAT_RULES = {
    "tcp": f"-d {VIP}/32 -p tcp -m tcp --dport {VIP_TCP_PORT} -j DNAT --to-destination {BACKEND}:{BACKEND_PORT}",
    "udp": f"-d {VIP}/32 -p udp -m udp --dport {VIP_UDP_PORT} -j DNAT --to-destination {BACKEND}:{BACKEND_PORT}",
}


class LocalDnat:
    """The local OUTPUT DNAT case on a seed cluster (its own, or one passed in: then down()
    removes only what this added)."""

    def __init__(self, cluster: SeedCluster | None = None, iptables: str = "nft"):
        self._own = cluster is None
        self.cluster = cluster or SeedCluster(promisc=False, iptables=iptables)
        self.echo: dict[str, EchoServer] = {}
        self._added = False

    def __enter__(self) -> "LocalDnat":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> "LocalDnat":
        if self._own:
            self.cluster.up()
        try:
            self._added = True
            run_in_netns(self.cluster.ns["node1"], _address, "cbr0", NODE_ADDR, "add", (VIP_NET, BACKEND))
            run_in_netns(self.cluster.ns["server"], _address, "eth0", BACKEND, "add", None)
            lines = [f"-I OUTPUT {n} {rule}" for n, rule in enumerate(DNAT_RULES.values(), 1)]
            self._restore(["*nat", *lines, "COMMIT"])
            for proto in ("tcp", "udp"):
                self.echo[proto] = EchoServer(self.cluster.netns_name("server"), proto, BACKEND_PORT)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for server in self.echo.values():
            server.stop()
        self.echo.clear()
        if self._own:
            self.cluster.down()
        elif self._added and self.cluster._up:
            for rule in DNAT_RULES.values():
                self.cluster.exec("node1", [f"iptables-{self.cluster.iptables}", "-w", "-t", "nat", "-D", "OUTPUT",
                                            *rule.split()], check=False)
            run_in_netns(self.cluster.ns["node1"], _address, "cbr0", NODE_ADDR, "del", (VIP_NET, BACKEND))
            run_in_netns(self.cluster.ns["server"], _address, "eth0", BACKEND, "del", None)
        self._added = False

    def _restore(self, lines: list[str]) -> None:
        self.cluster.exec("node1", [f"iptables-{self.cluster.iptables}-restore", "-w", "--noflush"],
                          input="\n".join(lines) + "\n")

    # -- traffic from the hostNetwork process (a socket in node1)

    def _socket(self, kind, sport: int) -> socket.socket:
        sock = self.cluster.socket("node1", socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", sport))
        return sock

    def tcp(self, sport: int, lines: int = 2) -> list[bytes]:
        """Connect to 10.10.20.99:80, send `lines` lines, read each echo, close."""
        with self._socket(socket.SOCK_STREAM, sport) as sock:
            return tcp_exchange(sock, (VIP, VIP_TCP_PORT), [b"line%d" % i for i in range(lines)])

    def udp(self, sport: int, count: int = 2) -> list[bytes]:
        with self._socket(socket.SOCK_DGRAM, sport) as sock:
            replies = [udp_exchange(sock, (VIP, VIP_UDP_PORT), b"q%d" % i) for i in range(count)]
        return [r for r in replies if r is not None]

    # -- ground truth

    def node_run(self, argv: list[str], input: str | None = None) -> str:
        return self.cluster.exec("node1", argv, input=input).stdout

    def rule(self, proto: str) -> groundtruth.IptRule:
        state = groundtruth.iptables_state(self.node_run, self.cluster.iptables)
        return state.rule(table="nat", chain="OUTPUT", contains=f"-p {proto} ")

    def entry(self, proto: str, sport: int) -> groundtruth.CtEntry | None:
        found = groundtruth.conntrack_entries(self.node_run, "-p", proto, "--orig-port-src", str(sport))
        return found[0] if found else None


def _address(ifname: str, address: str, how: str, route: tuple[str, str] | None) -> None:
    """Add or delete a /24 address on ifname (and a route dst via gateway), in the calling netns."""
    with _iproute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx)}
        if (how == "add") != (address in have):
            ipr.addr(how, index=idx, address=address, prefixlen=PREFIXLEN)
        if route:
            ipr.route("replace" if how == "add" else "del", dst=route[0], gateway=route[1])


# ---------------------------------------------------------------- several connections to a service


@dataclass(frozen=True)
class Connection:
    proto: str
    sport: int
    service: str  # "10.96.0.30:53"
    endpoint: str | None  # "10.244.1.3:9000" from conntrack's reply tuple (None: no entry)
    sent: int
    replies: int


def open_connections(node, service_ip: str, port: int, proto: str, count: int, first_sport: int,
                     messages: int = 2, endpoints: int = 0, most: int = 24) -> list[Connection]:
    """count connections from the client pod to service_ip:port, source ports first_sport, +1, ...;
    each sends `messages` requests and reads their echoes (node: a KubeProxyNode with echo=True).
    endpoints=N: go on (up to `most` connections) until N distinct endpoints were chosen."""
    out = []
    for sport in range(first_sport, first_sport + most):
        if len(out) >= count and len({c.endpoint for c in out}) >= endpoints:
            break
        sock = node.cluster.socket("client", socket.AF_INET, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", sport))
            if proto == "udp":
                replies = sum(udp_exchange(sock, (service_ip, port), b"m%d" % i) is not None for i in range(messages))
            else:
                replies = len(tcp_exchange(sock, (service_ip, port), [b"m%d" % i for i in range(messages)]))
        found = node.conntrack("-p", proto, "--orig-port-src", str(sport), "--orig-dst", service_ip)
        endpoint = f"{found[0].reply['src']}:{found[0].reply['sport']}" if found else None
        out.append(Connection(proto, sport, f"{service_ip}:{port}", endpoint, messages, replies))
    return out

