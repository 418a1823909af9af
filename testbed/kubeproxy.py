"""The seed's node1 as a kube-proxy node: kube-proxy's own rules (testbed/kuberules.py) in iptables
mode (iptables-nft or iptables-legacy), nftables mode or IPVS mode, and the flows that show which
rule decided.

    with KubeProxyNode(mode="iptables", iptables="legacy") as node:
        svc = node.service("ubuntu-server:dns")            # kube-proxy's names: svc.svc_chain, svc.sep_chain(SERVER)
        before = node.iptables()
        outcome = node.send(FLOWS["service"], sport=41001)  # outcome.received == {"server": 1, "server2": 0}
        after = node.iptables()
        dnat = after.rule(table="nat", chain=svc.sep_chain(SERVER), contains="DNAT")
        after.hits(before)[("nat", dnat.chain, dnat.number)] == 1    # the rule that decided, by number

    nft mode:   with node.nft_trace(f"ip saddr {IP['client']}") as trace: node.send(...)
                trace.lines() -> chain, handle, verdict of every rule that matched; node.nft_ruleset()
    IPVS mode:  node.ipvs()[f"UDP {PAIR_IP}:53"].reals (per real server), node.ipvs_connections()

The cluster is the seed's (testbed/topology.py, built with services=False so only these rules are
in node1); node1 also gets a default route towards node2, as a real node has, so traffic to a
LoadBalancer IP or an unallocated ClusterIP reaches the filter rules that drop it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass

from . import groundtruth
from .echo import EchoServer
from .ipvsrules import ipvs_ipset, ipvs_iptables, ipvs_services
from .kuberules import (NFT_TABLE, NODE_FIREWALL_TABLE, ClusterConfig, Endpoint, ServicePort, iptables_ruleset,
                        nft_node_firewall, nft_ruleset)
from .topology import IP, SERVER_PORT, SeedCluster, _iproute, run_in_netns, write_sysctl

SERVER = Endpoint(IP["server"], SERVER_PORT)
SERVER2 = Endpoint(IP["server2"], SERVER_PORT)
PAIR_IP = "10.96.0.30"
LB_CLUSTER_IP, LB_IP = "10.96.0.40", "10.250.1.40"  # LB_IP: routed towards node2, never answered
NO_ENDPOINTS_IP = "10.96.0.50"
UNALLOCATED_IP = "10.96.0.99"  # in the service CIDR, no Service
ENDPOINT_PODS = ("server", "server2")
NOOP_SOURCE, NOOP_COMMENT = "192.0.2.1", "inserted while tracing"  # a rule that never matches
NOOP_SPEC = ("-s", f"{NOOP_SOURCE}/32", "-m", "comment", "--comment", NOOP_COMMENT, "-j", "RETURN")


def default_services() -> list[ServicePort]:
    """The seed's two services as kube-proxy names them, a service with two endpoints, a firewalled
    LoadBalancer (only node2's link may use it) and a service without endpoints."""
    both = (SERVER, SERVER2)
    return [
        ServicePort("default", "ubuntu-server", "dns", "udp", IP["service"], 53, (SERVER,)),
        ServicePort("default", "ubuntu-server", "dns-tcp", "tcp", IP["service"], 53, (SERVER,)),
        ServicePort("default", "ubuntu-server2", "dns", "udp", IP["service2"], 53, (SERVER2,)),
        ServicePort("default", "ubuntu-server2", "dns-tcp", "tcp", IP["service2"], 53, (SERVER2,)),
        ServicePort("default", "dns-pair", "dns", "udp", PAIR_IP, 53, both),
        ServicePort("default", "dns-pair", "dns-tcp", "tcp", PAIR_IP, 53, both),
        ServicePort("default", "lb-firewalled", "http", "tcp", LB_CLUSTER_IP, 80, (SERVER,),
                    lb_ip=LB_IP, lb_source_ranges=("10.250.0.0/30",)),
        ServicePort("default", "no-endpoints", "http", "tcp", NO_ENDPOINTS_IP, 80, ()),
    ]


@dataclass(frozen=True)
class Flow:
    """What a test sends from the client pod, and what the kernel does with it under these rules."""

    name: str
    proto: str
    dst: str
    port: int
    expect: str  # "delivered", "rejected" (ICMP port unreachable), "dropped"
    modes: tuple[str, ...]  # the proxy modes whose rules decide it this way
    description: str


FLOWS = {f.name: f for f in (
    Flow("service", "udp", IP["service"], 53, "delivered", ("iptables", "nft", "ipvs"),
         "seed scenario 1: DNAT 10.96.0.10:53 -> server:9000 (KUBE-SEP-*/endpoint-* rule); with promisc on, "
         "the routed copy is dropped by KUBE-FORWARD's INVALID rule (iptables modes, drop_invalid=True), "
         "else delivered twice"),
    Flow("pair", "udp", PAIR_IP, 53, "delivered", ("iptables", "nft", "ipvs"),
         "two endpoints: statistic random 0.5 / numgen random mod 2 / rr picks server or server2"),
    Flow("pair-tcp", "tcp", PAIR_IP, 53, "delivered", ("iptables", "nft", "ipvs"), "the same over TCP"),
    Flow("no-endpoints", "tcp", NO_ENDPOINTS_IP, 80, "rejected", ("iptables", "nft"),
         "filter KUBE-SERVICES REJECT '... has no endpoints' / no-endpoint-services -> reject-chain"),
    Flow("lb-firewalled", "tcp", LB_IP, 80, "dropped", ("iptables", "nft"),
         "loadBalancerSourceRanges: KUBE-PROXY-FIREWALL DROP / firewall-* chain drop"),
    Flow("node-policy", "udp", IP["cbr0"], 9999, "dropped", ("iptables", "nft"),
         "to the node itself with node_firewall=True: policy DROP of filter/INPUT (nft: node-firewall input)"),
    Flow("unallocated", "udp", UNALLOCATED_IP, 53, "dropped", ("nft",),
         "nft mode only: cluster-ips-check 'Drop traffic to unallocated ClusterIPs'"),
    Flow("ipvs-filter", "tcp", IP["service"], 9999, "rejected", ("ipvs",),
         "IPVS mode: a ClusterIP on a port that is no service: KUBE-IPVS-FILTER REJECT"),
)}


@dataclass
class Outcome:
    received: dict[str, int]  # pod -> datagrams or TCP lines its listener got
    connect: str | None  # TCP: "connected", "refused", "timeout"; UDP: None


def ipvs_missing() -> str | None:
    """Why IPVS cannot run here (None when it can): the host kernel has no ip_vs and loads no modules."""
    if os.path.exists("/proc/net/ip_vs"):
        return None
    subprocess.run(["modprobe", "ip_vs"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # guests can
    return None if os.path.exists("/proc/net/ip_vs") else "needs ip_vs (guest)"


class KubeProxyNode:
    """The seed cluster with kube-proxy's rules in node1 (see module doc).  A context manager;
    pass cluster= to put the rules on a cluster you own (down() then only removes the rules)."""

    MODES = ("iptables", "nft", "ipvs")

    def __init__(self, mode: str = "iptables", iptables: str = "nft", promisc: bool = False,
                 config: ClusterConfig | None = None, services: list[ServicePort] | None = None,
                 cluster: SeedCluster | None = None, vs_conntrack: bool = True, prefix: str | None = None,
                 echo: bool = False):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}")
        self.mode, self.config = mode, config or ClusterConfig()
        self.services = list(default_services() if services is None else services)
        self.vs_conntrack = vs_conntrack  # IPVS: net.ipv4.vs.conntrack (kube-proxy sets 1)
        self._own = cluster is None
        self.cluster = cluster or SeedCluster(promisc=promisc, iptables=iptables, services=False, prefix=prefix)
        self.iptables_flavour = self.cluster.iptables
        self.load_seconds: float | None = None
        # echo=True: echo servers (UDP and TCP, port 9000) on server and server2 instead of the
        # seed's receivers, so every request has a reply (conntrack sees both directions).
        self.use_echo = echo
        self.echo: dict[tuple[str, str], EchoServer] = {}

    # -- lifecycle

    def __enter__(self) -> "KubeProxyNode":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> "KubeProxyNode":
        if self.mode == "ipvs" and (why := ipvs_missing()):
            raise RuntimeError(why)
        if self._own:
            self.cluster.up()
        try:
            self.exec("node1", ["ip", "route", "replace", "default", "via", IP["node2"]])
            self.apply()
            if self.use_echo:
                for pod in ENDPOINT_PODS:
                    for proto in ("udp", "tcp"):
                        self.echo[(pod, proto)] = EchoServer(self.netns_name(pod), proto, SERVER_PORT)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        for server in self.echo.values():
            server.stop()
        self.echo.clear()
        if self._own:
            self.cluster.down()  # the rules die with node1's namespace
        else:
            self.clear()

    def apply(self, services: list[ServicePort] | None = None) -> float:
        """(Re)write the whole ruleset, as one kube-proxy sync does; returns the seconds it took."""
        if services is not None:
            self.services = list(services)
        start = time.monotonic()
        if self.mode == "iptables":
            self.exec("node1", [f"iptables-{self.iptables_flavour}-restore", "-w"],
                      input=iptables_ruleset(self.services, self.config))
        elif self.mode == "nft":
            text = nft_ruleset(self.services, self.config)
            if self.config.node_firewall:
                text += nft_node_firewall()
            self.exec("node1", ["nft", "-f", "-"], input=text)
        else:
            self._apply_ipvs()
        self.load_seconds = time.monotonic() - start
        return self.load_seconds

    def _apply_ipvs(self) -> None:
        vips = sorted({s.cluster_ip for s in self.services})
        run_in_netns(self.cluster.ns["node1"], self._ipvs_links_and_sysctls, vips)
        self.exec("node1", ["ipset", "restore", "-exist"], input=ipvs_ipset(self.services))
        self.exec("node1", ["ipvsadm", "-C"])
        self.exec("node1", ["ipvsadm", "-R"], input=ipvs_services(self.services))
        self.exec("node1", [f"iptables-{self.iptables_flavour}-restore", "-w"], input=ipvs_iptables(self.config))

    def _ipvs_links_and_sysctls(self, vips: list[str]) -> None:
        # kube-proxy: a dummy kube-ipvs0 (left down) holding every ClusterIP, so they are local.
        with _iproute() as ipr:
            if not ipr.link_lookup(ifname="kube-ipvs0"):
                ipr.link("add", ifname="kube-ipvs0", kind="dummy")
            idx = ipr.link_lookup(ifname="kube-ipvs0")[0]
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx)}
            for vip in vips:
                if vip not in have:
                    ipr.addr("add", index=idx, address=vip, prefixlen=32)
        write_sysctl("net.ipv4.vs.conntrack", int(self.vs_conntrack))
        write_sysctl("net.ipv4.vs.expire_nodest_conn", 1)
        write_sysctl("net.ipv4.vs.expire_quiescent_template", 1)
        write_sysctl("net.ipv4.conf.all.arp_ignore", 1)
        write_sysctl("net.ipv4.conf.all.arp_announce", 2)

    def clear(self) -> None:
        """Remove every rule, set, virtual service and link this shape put in node1 (idempotent)."""
        if not self.cluster._up:
            return
        flav = self.iptables_flavour
        empty = "*filter\nCOMMIT\n*nat\nCOMMIT\n"
        self.exec("node1", [f"iptables-{flav}-restore", "-w"], input=empty, check=False)
        for table in (NFT_TABLE, NODE_FIREWALL_TABLE, groundtruth.TRACE_TABLE):
            self.exec("node1", ["nft", "delete", "table", "ip", table], check=False)
        if self.mode == "ipvs":
            self.exec("node1", ["ipvsadm", "-C"], check=False)
            self.exec("node1", ["ipset", "destroy"], check=False)
            self.exec("node1", ["ip", "link", "del", "kube-ipvs0"], check=False)

    # -- a rule changed while tracing

    def insert_noop_rule(self, chain: str, table: str = "nat") -> str | None:
        """Insert, at the top of `chain`, a rule that never matches (source 192.0.2.1, TEST-NET-1):
        in iptables modes the rules below move down one number, in nft mode a new handle appears
        above them.  Returns the nft handle (None in iptables modes), for delete_noop_rule()."""
        if self.mode == "nft":
            out = self.exec("node1", ["nft", "--echo", "--handle", "insert", "rule", "ip", NFT_TABLE, chain,
                                      "ip", "saddr", NOOP_SOURCE, "return", "comment", f'"{NOOP_COMMENT}"']).stdout
            return out.rsplit("# handle", 1)[1].split()[0]
        self.exec("node1", [f"iptables-{self.iptables_flavour}", "-w", "-t", table, "-I", chain, "1", *NOOP_SPEC])
        return None

    def delete_noop_rule(self, chain: str, handle: str | None = None, table: str = "nat") -> None:
        if self.mode == "nft":
            self.exec("node1", ["nft", "delete", "rule", "ip", NFT_TABLE, chain, "handle", handle])
        else:
            self.exec("node1", [f"iptables-{self.iptables_flavour}", "-w", "-t", table, "-D", chain, *NOOP_SPEC])

    # -- the cluster's plumbing, for the judges and the tests

    def exec(self, ns, argv, **kw):
        return self.cluster.exec(ns, argv, **kw)

    def popen(self, ns, argv, **kw):
        return self.cluster.popen(ns, argv, **kw)

    def netns_name(self, ns: str) -> str:
        return self.cluster.netns_name(ns)

    def socket(self, ns, *args):
        return self.cluster.socket(ns, *args)

    def node_run(self, argv: list[str], input: str | None = None) -> str:
        """stdout of argv run in node1 (what the groundtruth readers take)."""
        return self.exec("node1", argv, input=input).stdout

    def service(self, name: str, protocol: str | None = None) -> ServicePort:
        """A service by "ns/name:port", "name:port" or cluster IP (with protocol when IPs repeat)."""
        found = [s for s in self.services if name in (s.port_name_string, s.port_name_string.split("/", 1)[1],
                                                       s.cluster_ip) and protocol in (None, s.protocol)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} services match {name!r} {protocol or ''}")
        return found[0]

    # -- ground truth

    def iptables(self) -> groundtruth.IptablesState:
        return groundtruth.iptables_state(self.node_run, self.iptables_flavour)

    def nft_ruleset(self) -> list[dict]:
        return groundtruth.nft_ruleset(self.cluster.ns["node1"])

    def nft_trace(self, match: str = "meta l4proto { tcp, udp }") -> groundtruth.NftTrace:
        return groundtruth.NftTrace(self, "node1", match)

    def conntrack(self, *args: str) -> list[groundtruth.CtEntry]:
        return groundtruth.conntrack_entries(self.node_run, *args)

    def conntrack_stats(self) -> dict[str, int]:
        return groundtruth.conntrack_stats(self.node_run)

    def conntrack_events(self) -> groundtruth.ConntrackEvents:
        return groundtruth.ConntrackEvents(self, "node1")

    def ipvs(self) -> dict[str, groundtruth.IpvsService]:
        return groundtruth.ipvs_stats(self.node_run)

    def ipvs_connections(self) -> list[groundtruth.IpvsConn]:
        return groundtruth.ipvs_connections(self.node_run)

    # -- traffic

    def listen(self) -> None:
        """UDP receivers and TCP listeners on server and server2 port 9000 (the endpoints), unless
        echo servers listen there."""
        if self.use_echo:
            return
        for pod in ENDPOINT_PODS:
            self.cluster.start_udp_receiver(pod)
            self.cluster.start_tcp_listener(pod)

    def received_now(self, pod: str, proto: str = "udp") -> list:
        """What the endpoint pod got so far (Datagram records: src, sport, payload)."""
        if self.use_echo:
            return self.echo[(pod, proto)].records()
        return self.cluster.records(pod, proto=proto)

    def reset_received(self) -> None:
        for server in self.echo.values():
            server.reset()
        self.cluster.reset_counts()

    def send(self, flow: Flow, sport: int, count: int = 1, timeout: float = 2.0) -> Outcome:
        """Send the flow from the client pod (UDP: count datagrams; TCP: one connection and one
        line); returns what each endpoint received and how the TCP connect ended."""
        self.listen()
        self.reset_received()
        connect = None
        if flow.proto == "udp":
            self.cluster.send_udp("client", flow.dst, flow.port, count=count, sport=sport)
        else:
            connect = self._connect(flow.dst, flow.port, sport, timeout)
        received = self._wait_received(flow.proto, patient=flow.expect == "delivered")
        return Outcome(received, connect)

    def _wait_received(self, proto: str, patient: bool) -> dict[str, int]:
        """What each endpoint got, once nothing new arrived for `settle` seconds; patient: keep
        waiting up to receive_timeout while nothing has arrived at all (a slow TCG guest)."""
        c = self.cluster
        deadline = time.monotonic() + (c.receive_timeout if patient else 0.0)
        last = None
        while True:
            time.sleep(c.settle)
            now = {pod: len(self.received_now(pod, proto)) for pod in ENDPOINT_PODS}
            if now == last and (sum(now.values()) or time.monotonic() >= deadline):
                return now
            last = now

    def _connect(self, ip: str, port: int, sport: int, timeout: float) -> str:
        sock = self.cluster.socket("client", socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", sport))
            sock.settimeout(timeout)
            try:
                sock.connect((ip, port))
                sock.sendall(b"skbtracer-probe\n")
                sock.shutdown(socket.SHUT_WR)
                sock.recv(1)
                return "connected"
            except ConnectionRefusedError:
                return "refused"
            except (socket.timeout, TimeoutError):
                return "timeout"
