"""Calico-like nodes: routed veths, no bridge, and a tunnel between the nodes.

Each pod's interface is made as Calico's CNI plugin makes it: a veth `cali<11 hex>` whose node end
has MAC ee:ee:ee:ee:ee:ee, no address and proxy ARP on, a /32 (/128) route to the pod through it;
in the pod a /32 (/128) address and a default route via the link-local gateway 169.254.1.1
(fe80::ecee:eeff:feee:eeee, the node end's own link-local).  Addresses come from the real
`host-local` IPAM plugin (Calico can use host-local too).  Between the nodes, one of:

    ipip    tunl0, the ipip module's catch-all device (Calico's default)        guests only
    vxlan   vxlan.calico, VNI 4096, dstport 4789 (Calico's VXLAN mode)           host and guests
    geneve  geneve0, collect_md ("external"), VNI and a TLV option set per
            route by lwtunnel (`ip route ... encap ip id .. geneve_opts ..`)    guests only
    ip6ip6  ip6tnl1 over an IPv6 underlay, IPv6 pod traffic                     guests only
    sit     sit1, IPv6 pod traffic over the IPv4 underlay                       guests only

    with CalicoCluster("vxlan") as c:
        outcome, caps = c.run(c.scenario("udp"), watch=c.scenario("udp").path)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass

from . import cni
from .overlay import (NODE_OF, POD_SUBNET, POD_SUBNET6, UDP_PORT, UNDERLAY, UNDERLAY6,
                      _node_index, build_underlay, build_vxlan_mesh, pod_scenarios)
from .shape import Scenario, Shape
from .topology import netns_path

GATEWAY4, GATEWAY6 = "169.254.1.1", "fe80::ecee:eeff:feee:eeee"
CALI_MAC = "ee:ee:ee:ee:ee:ee"
UPLINK = "192.168.0.254"  # the nodes' default gateway: nobody has it
GENEVE_OPTION = (0x0100, 0x01, bytes.fromhex("736b6274"))  # class (Linux), type, data ("skbt")


@dataclass(frozen=True)
class TunnelKind:
    device: str
    mtu: int  # of the tunnel device, over a 1500-byte underlay
    family: int  # of the pod traffic it carries here
    module: str | None  # kernel module the host lacks (None: works on the host)
    vni: int | None = None
    port: int | None = None


TUNNELS = {
    "ipip": TunnelKind("tunl0", 1480, 4, "ipip"),
    "vxlan": TunnelKind("vxlan.calico", 1450, 4, None, vni=4096, port=4789),
    "geneve": TunnelKind("geneve0", 1442, 4, "geneve", vni=4097, port=6081),  # 50 + an 8-byte option
    "ip6ip6": TunnelKind("ip6tnl1", 1452, 6, "ip6_tunnel"),  # 40 + the encapsulation-limit option
    "sit": TunnelKind("sit1", 1480, 6, "sit"),
}


def tunnel_unavailable(tunnel: str) -> str | None:
    """Why this kernel cannot build `tunnel` (a skip reason), or None.  Loads the module if it can
    (the guests' kernels have them all as modules; the host's has none of them)."""
    module = TUNNELS[tunnel].module
    if module is None or os.path.isdir(f"/sys/module/{module}"):
        return None
    subprocess.run(["modprobe", module], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return None if os.path.isdir(f"/sys/module/{module}") else f"needs the {module} module (guest)"


class CalicoCluster(Shape):
    ROLES = ("node1", "node2", "pod-a", "pod-big", "pod-b")

    def __init__(self, tunnel: str = "ipip", **kw):
        if tunnel not in TUNNELS:
            raise ValueError(f"tunnel must be one of {', '.join(TUNNELS)}")
        super().__init__(**kw)
        self.tunnel, self.kind = tunnel, TUNNELS[tunnel]
        self.ipv6 = self.kind.family == 6

    def _build(self) -> None:
        reason = tunnel_unavailable(self.tunnel)
        if reason:
            raise RuntimeError(reason)
        build_underlay(self, ipv6=self.tunnel == "ip6ip6")
        for node in ("node1", "node2"):
            # Proxy ARP answers only for addresses routed out of *another* device: like a real node,
            # each has a default route (to an uplink router that is not there).
            self.netlink(node, lambda ipr: ipr.route("add", dst="0.0.0.0/0", gateway=UPLINK,
                                                     oif=ipr.link_lookup(ifname="eth0")[0]))
        getattr(self, f"_build_{self.tunnel}")()
        subnets = POD_SUBNET6 if self.ipv6 else POD_SUBNET
        for node, pods in (("node1", ("pod-a", "pod-big")), ("node2", ("pod-b",))):
            ipam = cni.CniNetwork("k8s-pod-network", "host-local", [subnets[node]], cni.data_dir(self.prefix) +
                                  f"/{node}", routes=[])
            for pod in pods:
                mtu = 1500 if pod == "pod-big" else self.kind.mtu
                self.pods[pod] = self._add_calico_pod(ipam, node, pod, mtu)
        self.scenarios = self._scenarios()

    # -- the pods, as Calico's CNI plugin makes them

    def _add_calico_pod(self, ipam: cni.CniNetwork, node: str, pod: str, mtu: int) -> cni.PodInterface:
        iface = ipam.add(self.ns[node], self.ns[pod], container_id=pod)
        iface.host_ifname = "cali" + hashlib.sha1(f"{self.prefix}/{pod}".encode()).hexdigest()[:11]
        address = iface.ips[0].ip
        bits = 32 if address.version == 4 else 128

        def node_end(ipr, fd):
            ipr.link("add", ifname=iface.host_ifname, kind="veth", address=CALI_MAC, mtu=mtu,
                     peer={"ifname": "eth0", "net_ns_fd": fd, "mtu": mtu})
            idx = ipr.link_lookup(ifname=iface.host_ifname)[0]
            ipr.link("set", index=idx, state="up")
            ipr.route("add", dst=f"{address}/{bits}", oif=idx, scope=253)  # scope link

        fd = os.open(netns_path(self.ns[pod]), os.O_RDONLY)
        try:
            self.netlink(node, node_end, fd)
        finally:
            os.close(fd)
        if bits == 32:
            self.sysctl(node, f"net.ipv4.conf.{iface.host_ifname}.proxy_arp", 1)
            self.sysctl(node, f"net.ipv4.neigh.{iface.host_ifname}.proxy_delay", 0)
        self.netlink(pod, _pod_end, str(address), bits)
        iface.mac = self.netlink(pod, lambda ipr: ipr.get_links(ipr.link_lookup(ifname="eth0")[0])[0]
                                 .get_attr("IFLA_ADDRESS"))
        iface.ifname = "eth0"
        return iface

    # -- the node links

    def _build_vxlan(self) -> None:
        build_vxlan_mesh(self, self.kind.device, self.kind.vni, self.kind.port, self.kind.mtu, POD_SUBNET)

    def _build_ipip(self) -> None:
        for node in ("node1", "node2"):
            peer = NODE_OF[node]

            def program(ipr, node=node, peer=peer):
                found = ipr.link_lookup(ifname="tunl0")
                if not found:
                    raise RuntimeError("no tunl0 in a new namespace (net.core.fb_tunnels_only_for_init_net set?)")
                ipr.link("set", index=found[0], mtu=self.kind.mtu, state="up")
                ipr.addr("add", index=found[0], address=POD_SUBNET[node].split("/")[0], prefixlen=32)
                ipr.route("add", dst=POD_SUBNET[peer], gateway=UNDERLAY[peer], oif=found[0], flags=4)  # onlink
            self.netlink(node, program)

    def _build_geneve(self) -> None:
        cls, typ, data = GENEVE_OPTION
        for node in ("node1", "node2"):
            peer = NODE_OF[node]
            mac = f"02:9e:00:00:00:{_node_index(node):02x}"
            peer_gw = POD_SUBNET[peer].split("/")[0]

            def program(ipr, node=node, peer=peer, mac=mac, peer_gw=peer_gw):
                ipr.link("add", ifname=self.kind.device, kind="geneve", geneve_collect_metadata=True,
                         address=mac, mtu=self.kind.mtu)
                dev = ipr.link_lookup(ifname=self.kind.device)[0]
                ipr.addr("add", index=dev, address=POD_SUBNET[node].split("/")[0], prefixlen=32)
                ipr.link("set", index=dev, state="up")
                ipr.neigh("add", dst=peer_gw, lladdr=f"02:9e:00:00:00:{_node_index(peer):02x}", ifindex=dev,
                          state=0x80)
            self.netlink(node, program)
            # pyroute2 0.7 cannot say "encap ip ... geneve_opts": one `ip` exec per node.  Class and
            # type with 0x: iproute2 6.1 reads them with strtoul base 0 ("0100" would be octal, 64).
            self.exec(node, ["ip", "route", "add", POD_SUBNET[peer], "encap", "ip", "id", str(self.kind.vni),
                             "dst", UNDERLAY[peer], "ttl", "64", "geneve_opts", f"{cls:#06x}:{typ:#04x}:{data.hex()}",
                             "via", peer_gw, "dev", self.kind.device, "onlink"])

    def _build_ip6ip6(self) -> None:
        self._build_p2p("ip6tnl", local=UNDERLAY6, remote=UNDERLAY6, proto=41)

    def _build_sit(self) -> None:
        self._build_p2p("sit", local=UNDERLAY, remote=UNDERLAY)

    def _build_p2p(self, kind: str, local: dict, remote: dict, proto: int | None = None) -> None:
        for node in ("node1", "node2"):
            peer = NODE_OF[node]

            def program(ipr, node=node, peer=peer):
                attrs = {f"{kind}_local": local[node], f"{kind}_remote": remote[peer], f"{kind}_ttl": 64}
                if proto is not None:
                    attrs[f"{kind}_proto"] = proto
                ipr.link("add", ifname=self.kind.device, kind=kind, mtu=self.kind.mtu, **attrs)
                dev = ipr.link_lookup(ifname=self.kind.device)[0]
                ipr.link("set", index=dev, state="up")
                ipr.route("add", dst=POD_SUBNET6[peer], oif=dev)
            self.netlink(node, program)

    # -- scenarios

    def _scenarios(self) -> list[Scenario]:
        a, b, big = self.pods["pod-a"], self.pods["pod-b"], self.pods["pod-big"]
        dev = self.kind.device
        path = (("pod-a", "eth0"), ("node1", a.host_ifname), ("node1", dev), ("node1", "eth0"),
                ("node2", "eth0"), ("node2", dev), ("node2", b.host_ifname), ("pod-b", "eth0"))
        what = {"vxlan": f"vxlan {self.kind.vni} dstport {self.kind.port}",
                "geneve": f"geneve {self.kind.vni} with option {GENEVE_OPTION[0]:#06x}:{GENEVE_OPTION[1]:#04x}"
                }.get(self.tunnel, self.tunnel)
        kernel = (f"routed from {a.host_ifname} (proxy ARP for {GATEWAY4}) to {dev} ({what}), sent "
                  f"node1->node2 on eth0, decapsulated by node2's {dev}, routed to {b.host_ifname}")
        family = self.kind.family
        dst = b.ip4 if family == 4 else b.ip6
        too_big = ("icmp", 3, 4) if family == 4 else ("icmp6", 2, 0)
        counters = ({"IpFragFails": 1, "IcmpOutDestUnreachs": 1} if family == 4 else
                    {"Ip6FragFails": 1, "Icmp6OutPktTooBigs": 1})
        over = Scenario(
            "over-mtu", "pod-big", dst, "udp", UDP_PORT, options={"size": 1500 - 28 - 20 * (family == 6), "df": True},
            path=(("pod-big", "eth0"), ("node1", big.host_ifname)),
            kernel=(f"node1 forwards a 1500-byte datagram towards {dev} (MTU {self.kind.mtu}): dropped as too "
                    f"big, ICMP{'v6 packet too big' if family == 6 else ' frag needed'} with mtu {self.kind.mtu} "
                    f"sent back to pod-big"),
            reply=too_big, mtu=self.kind.mtu, counters={"node1": counters})
        return pod_scenarios(self, "pod-a", "pod-b", family, path=path, kernel=kernel) + [over]


def _pod_end(ipr, address: str, bits: int) -> None:
    """In the pod: eth0 up with a /32 (/128) address, default route via the link-local gateway."""
    eth0 = ipr.link_lookup(ifname="eth0")[0]
    ipr.link("set", index=eth0, state="up")
    ipr.addr("add", index=eth0, address=address, prefixlen=bits)
    if bits == 32:
        ipr.route("add", dst=f"{GATEWAY4}/32", oif=eth0, scope=253)
        ipr.route("add", dst="0.0.0.0/0", gateway=GATEWAY4, oif=eth0)
    else:
        ipr.route("add", dst="::/0", gateway=GATEWAY6, oif=eth0)
