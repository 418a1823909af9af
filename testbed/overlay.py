"""Flannel-like overlay: two nodes, pods on a `cni0` bridge made by the CNI bridge plugin, and a
VXLAN device `flannel.1` per node programmed the way flanneld programs it (no learning; a static
FDB entry, ARP entry and onlink route per peer).  The underlay is a veth `eth0` between the nodes.

    node1 (192.168.0.1)                                          node2 (192.168.0.2)
    pod-a 10.244.1.2 ─┐                                        ┌─ pod-b 10.244.2.2
                      cni0 10.244.1.1 ── flannel.1 10.244.1.0   cni0 10.244.2.1
    pod-big (MTU 1500)┘         vxlan 1, dstport 8472  ═ eth0 ══ eth0 ═ flannel.1 10.244.2.0

    with FlannelCluster() as f:
        outcome, caps = f.run(f.scenario("udp"), watch=f.scenario("udp").path)
        outcome.received == 1; caps[("node1", "eth0")].packets[0].tunnel.vni == 1

Works on the host (VXLAN is built in) and in the guests.  The shared pieces (underlay, a VXLAN
mesh, the pods' scenario list) are used by calico.py too.
"""

from __future__ import annotations

import os

from . import cni
from .shape import Scenario, Shape
from .topology import netns_path

UNDERLAY = {"node1": "192.168.0.1", "node2": "192.168.0.2"}
UNDERLAY6 = {"node1": "fd00:192:168::1", "node2": "fd00:192:168::2"}
UNDERLAY_MAC = {"node1": "02:00:c0:a8:00:01", "node2": "02:00:c0:a8:00:02"}
POD_SUBNET = {"node1": "10.244.1.0/24", "node2": "10.244.2.0/24"}
POD_SUBNET6 = {"node1": "fd00:244:1::/64", "node2": "fd00:244:2::/64"}
CLUSTER_CIDR = "10.244.0.0/16"
NODE_OF = {"node1": "node2", "node2": "node1"}  # each node's peer
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
UDP_PORT = 9000
PING_IDENT = 4242  # the pods' echo id (ping -e): what --icmpid is tested with
IFF_UP = 1
RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80


def _node_index(node: str) -> int:
    return int(node[-1])


def build_underlay(shape, ipv6: bool = False) -> None:
    """A veth `eth0` between node1 and node2 with the underlay addresses (a /24, and a /64 with
    ipv6); the nodes forward IPv4, and IPv6 too when the shape has it on."""
    def node1(ipr, peer_fd):
        ipr.link("add", ifname="eth0", kind="veth", address=UNDERLAY_MAC["node1"],
                 peer={"ifname": "eth0", "address": UNDERLAY_MAC["node2"], "net_ns_fd": peer_fd})

    fd = os.open(netns_path(shape.ns["node2"]), os.O_RDONLY)
    try:
        shape.netlink("node1", node1, fd)
    finally:
        os.close(fd)
    for node in ("node1", "node2"):
        def configure(ipr, node=node):
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=UNDERLAY[node], prefixlen=24)
            if ipv6:
                ipr.addr("add", index=eth0, address=UNDERLAY6[node], prefixlen=64)
            ipr.link("set", index=eth0, state="up")
        shape.netlink(node, configure)
        shape.sysctl(node, "net.ipv4.ip_forward", 1)
        if shape.ipv6:
            shape.sysctl(node, "net.ipv6.conf.all.forwarding", 1)


def vxlan_mac(ifname: str, node: str) -> str:
    return f"02:{0xf1 if ifname == 'flannel.1' else 0xca:02x}:00:00:00:{_node_index(node):02x}"


def build_vxlan_mesh(shape, ifname: str, vni: int, port: int, mtu: int, subnet: dict) -> None:
    """One VXLAN device per node and, for the peer, what flanneld (and Calico's VXLAN mode) program:
    the device's own address <subnet>.0/32, ARP entry <peer subnet>.0 -> peer MAC, FDB entry
    peer MAC -> peer node address, route <peer subnet> via <peer subnet>.0 onlink."""
    for node in ("node1", "node2"):
        peer = NODE_OF[node]
        peer_gw = subnet[peer].split("/")[0]

        def program(ipr, node=node, peer=peer, peer_gw=peer_gw):
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.link("add", ifname=ifname, kind="vxlan", vxlan_id=vni, vxlan_local=UNDERLAY[node], vxlan_link=eth0,
                     vxlan_port=port, vxlan_learning=0, address=vxlan_mac(ifname, node), mtu=mtu)
            dev = ipr.link_lookup(ifname=ifname)[0]
            ipr.addr("add", index=dev, address=subnet[node].split("/")[0], prefixlen=32)
            ipr.link("set", index=dev, state="up")
            ipr.neigh("add", dst=peer_gw, lladdr=vxlan_mac(ifname, peer), ifindex=dev, state=NUD_PERMANENT)
            ipr.fdb("append", ifindex=dev, lladdr=vxlan_mac(ifname, peer), dst=UNDERLAY[peer])
            ipr.route("add", dst=subnet[peer], gateway=peer_gw, oif=dev, flags=RTNH_F_ONLINK)
        shape.netlink(node, program)


def pod_scenarios(shape, src: str, dst: str, family: int = 4, path: tuple = (), kernel: str = "") -> list:
    """UDP, TCP and ping from pod `src` to pod `dst`, each delivered along `path`."""
    ip = shape.pods[dst].ip4 if family == 4 else shape.pods[dst].ip6
    suffix = "" if family == 4 else "6"
    return [
        Scenario(f"udp{suffix}", src, ip, "udp", UDP_PORT, to=dst, path=path, kernel=kernel),
        Scenario(f"tcp{suffix}", src, ip, "tcp", UDP_PORT, to=dst, path=path, kernel=kernel),
        Scenario(f"ping{suffix}", src, ip, "icmp", options={"ident": PING_IDENT}, to=dst, path=path,
                 kernel=kernel),
    ]


class FlannelCluster(Shape):
    """flannel's VXLAN backend between two nodes (see the module's docstring)."""

    ROLES = ("node1", "node2", "pod-a", "pod-big", "pod-b")
    TUNNEL = "flannel.1"

    def __init__(self, vni: int = 1, port: int = 8472, mtu: int = 1500, **kw):
        super().__init__(**kw)
        self.vni, self.port = vni, port
        self.tunnel_mtu = mtu - VXLAN_OVERHEAD
        self.networks: dict[str, cni.CniNetwork] = {}

    def _build(self) -> None:
        build_underlay(self)
        build_vxlan_mesh(self, self.TUNNEL, self.vni, self.port, self.tunnel_mtu, POD_SUBNET)
        for node in ("node1", "node2"):
            # flannel's CNI config ("delegate" to bridge): hairpin on, the bridge is the default gateway.
            self.networks[node] = cni.CniNetwork(
                "cbr0", "bridge", [POD_SUBNET[node]], cni.data_dir(self.prefix) + f"/{node}",
                routes=[{"dst": CLUSTER_CIDR}], bridge="cni0", isGateway=True, isDefaultGateway=True,
                hairpinMode=True, ipMasq=False, mtu=self.tunnel_mtu)
        self.add_pod(self.networks["node1"], "node1", "pod-a")
        # A pod whose MTU is the underlay's, not the tunnel's: the overlay black hole's victim.
        self.add_pod(self.networks["node1"], "node1", "pod-big", mtu=self.tunnel_mtu + VXLAN_OVERHEAD)
        self.add_pod(self.networks["node2"], "node2", "pod-b")
        for node in ("node1", "node2"):
            self.pin_mac(node, "cni0", f"02:00:0a:f4:0{_node_index(node)}:01")
        self.scenarios = self._scenarios()

    def _scenarios(self) -> list[Scenario]:
        a, b, big = self.pods["pod-a"], self.pods["pod-b"], self.pods["pod-big"]
        path = (("pod-a", "eth0"), ("node1", a.host_ifname), ("node1", "cni0"), ("node1", self.TUNNEL),
                ("node1", "eth0"), ("node2", "eth0"), ("node2", self.TUNNEL), ("node2", "cni0"),
                ("node2", b.host_ifname), ("pod-b", "eth0"))
        kernel = (f"bridged into cni0, routed to {self.TUNNEL} (vxlan {self.vni}, dstport {self.port}), "
                  f"sent {UNDERLAY['node1']}->{UNDERLAY['node2']} on eth0, decapsulated by node2's "
                  f"{self.TUNNEL}, routed to cni0 and bridged to pod-b")
        over = Scenario(
            "over-mtu", "pod-big", b.ip4, "udp", UDP_PORT, options={"size": self.tunnel_mtu + 22, "df": True},
            path=(("pod-big", "eth0"), ("node1", big.host_ifname), ("node1", "cni0")),
            kernel=(f"node1 forwards the {self.tunnel_mtu + 50}-byte DF datagram towards {self.TUNNEL} "
                    f"(MTU {self.tunnel_mtu}): ip_forward drops it (too big) and sends ICMP frag needed "
                    f"with mtu {self.tunnel_mtu} back to pod-big; nothing reaches the underlay"),
            reply=("icmp", 3, 4), mtu=self.tunnel_mtu,
            counters={"node1": {"IpFragFails": 1, "IcmpOutDestUnreachs": 1}})
        return pod_scenarios(self, "pod-a", "pod-b", path=path, kernel=kernel) + [over]

