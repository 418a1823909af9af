"""Routing decisions, neighbours and the errors the stack sends back (issue 26), plus IPv6
extension headers (issue 24), in one node that routes between two pod networks:

    pod-a 10.244.1.2  fd00:244:1::2 ─┐                        (CNI bridge, dual stack)
    pod-b 10.244.1.3  fd00:244:1::3 ─┴ cni0 10.244.1.1  router ── veth (CNI ptp, MTU 1280) ── pod-c 10.245.0.2

In the router: `ip rule from <pod-b> lookup 100` (pref 100); table 100 routes 10.245.0.0/24 to
pod-c's veth and prohibits 10.96.67.0/24; main has a blackhole (10.96.66.0/24), an unreachable
route (10.96.68.0/24) and no default route; pod-c's veth has rp_filter=1.

    with RoutingLab() as lab:
        outcome, caps = lab.run(lab.scenario("ttl-exceeded"))
        outcome.replies[0].outer.icmp_type == 11
        lab.route_get("10.245.0.2", src=lab.pods["pod-b"].ip4)["table"] == "100"

Everything here works on the host and in the guests.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

from . import cni
from .shape import Scenario, Shape
from .topology import read_sysctl, run_in_netns

SUBNET, SUBNET6, FAR_SUBNET = "10.244.1.0/24", "fd00:244:1::/64", "10.245.0.0/24"
FAR_MTU = 1280
POLICY_TABLE, POLICY_PREF = 100, 100
BLACKHOLE, PROHIBIT, UNREACHABLE, NO_ROUTE = "10.96.66.0/24", "10.96.67.0/24", "10.96.68.0/24", "10.96.69.0/24"
BLACKHOLE6, PROHIBIT6 = "fd00:96:66::/64", "fd00:96:67::/64"  # the router's IPv6 error routes (main)
SPOOFED = "10.244.1.77"  # pod-c's second address: in pod-a's subnet, so its reverse path is cni0
NOBODY, NOBODY6, NOBODY_QUEUED = "10.244.1.99", "fd00:244:1::99", "10.244.1.98"  # addresses nobody has
NEIGH_RETRANS_MS = 200  # ARP/ND probe interval in pod-a: failure after 3 probes, 0.6 s (default 3 s)
PORT, CLOSED_PORT = 9000, 9999
CNI0_MAC = "02:00:0a:f4:01:01"
MLD_GROUP = "ff02::1:3"
# What `ip route get` says when the matching route is an error route (fib_props[type].error).
ROUTE_ERRORS = {"Invalid argument": "blackhole", "No route to host": "unreachable",
                "Permission denied": "prohibit", "Network is unreachable": "no route"}
IPV6_RTHDR, IPV6_DSTOPTS = 57, 59

# A sender pinned to one CPU: waits for a line on stdin, then sends COUNT datagrams 1 ms apart.
_PINNED_SENDER = r"""
import os, socket, sys, time
dst, port, count, cpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.sched_setaffinity(0, {cpu})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
for i in range(count):
    s.sendto(b"pinned-%d" % i, (dst, port))
    time.sleep(0.001)
"""


class RoutingLab(Shape):
    ROLES = ("router", "pod-a", "pod-b", "pod-c")
    ipv6 = True

    def _build(self) -> None:
        lan = cni.CniNetwork("lan", "bridge", [SUBNET, SUBNET6], cni.data_dir(self.prefix), bridge="cni0",
                             isGateway=True, ipMasq=False)
        far = cni.CniNetwork("far", "ptp", [FAR_SUBNET], cni.data_dir(self.prefix), ipMasq=False, mtu=FAR_MTU)
        self.networks = {"lan": lan, "far": far}
        for pod in ("pod-a", "pod-b"):
            self.add_pod(lan, "router", pod)
        self.add_pod(far, "router", "pod-c")
        self.pin_mac("router", "cni0", CNI0_MAC)
        for key, value in (("net.ipv4.ip_forward", 1), ("net.ipv6.conf.all.forwarding", 1),
                           (f"net.ipv4.conf.{self.pods['pod-c'].host_ifname}.rp_filter", 1)):
            self.sysctl("router", key, value)
        # every scenario's ICMP error comes back: the per-peer limit (1/s after a burst) let a
        # 6.12 guest's router send no "net unreachable" after four other errors to pod-a. An
        # empty icmp_ratemask keeps ICMP off the peer's tokens, which ip_error's own limit
        # (route.error_cost, not per namespace before 6.x) shares: icmp_ratelimit 0 alone
        # zeroed them at each error, and a 6.1 guest's router, its error routes' scenarios
        # less than a second apart, sent no "net unreachable" (ip_error: no token)
        for role in ("router", "pod-b"):
            self.sysctl(role, "net.ipv4.icmp_ratelimit", 0)
            self.sysctl(role, "net.ipv4.icmp_ratemask", 0)
        for family in ("ipv4", "ipv6"):
            self.sysctl("pod-a", f"net.{family}.neigh.eth0.retrans_time_ms", NEIGH_RETRANS_MS)
        self.netlink("router", self._routes)
        for kind, prefix in (("blackhole", BLACKHOLE6), ("prohibit", PROHIBIT6)):
            self.exec("router", ["ip", "-6", "route", "add", kind, prefix])
        self.netlink("pod-c", lambda ipr: ipr.addr("add", index=1, address=SPOOFED, prefixlen=32))
        for key in ("all", "eth0"):  # pod-b accepts a segment routing header (the one routing header Linux sends)
            self.sysctl("pod-b", f"net.ipv6.conf.{key}.seg6_enabled", 1)
        self.scenarios = self._scenarios()

    def _routes(self, ipr) -> None:
        far_dev = ipr.link_lookup(ifname=self.pods["pod-c"].host_ifname)[0]
        ipr.rule("add", table=POLICY_TABLE, priority=POLICY_PREF, src=self.pods["pod-b"].ip4, src_len=32)
        ipr.route("add", dst=FAR_SUBNET, oif=far_dev, table=POLICY_TABLE)
        ipr.route("add", dst=PROHIBIT, type="prohibit", table=POLICY_TABLE)
        ipr.route("add", dst=BLACKHOLE, type="blackhole")
        ipr.route("add", dst=UNREACHABLE, type="unreachable")

    def _scenarios(self) -> list[Scenario]:
        return self._route_scenarios() + self._route6_scenarios() + self._neighbour_scenarios() + \
            self._error_scenarios() + self._ipv6_scenarios()

    def _route_scenarios(self) -> list[Scenario]:
        """The routing decision: main, a policy rule's table, error routes, no route, rp_filter."""
        a, b, c = (self.pods[p] for p in ("pod-a", "pod-b", "pod-c"))
        far_veth = c.host_ifname
        unreach = {"router": {"IcmpOutDestUnreachs": 1}}
        return [
            Scenario("route-main", "pod-a", c.ip4, "udp", PORT, to="pod-c",
                     facts={"route": {"table": "main", "type": "unicast", "oif": far_veth, "prefix": c.ip4}},
                     kernel=f"routed by table main ({c.ip4}/32 dev {far_veth}, added by the ptp plugin)"),
            Scenario("route-policy", "pod-b", c.ip4, "udp", PORT, to="pod-c",
                     facts={"route": {"table": str(POLICY_TABLE), "type": "unicast", "oif": far_veth,
                                      "prefix": FAR_SUBNET},
                            "rule": f"{POLICY_PREF}: from {b.ip4} lookup {POLICY_TABLE}"},
                     kernel=f"rule {POLICY_PREF} (from {b.ip4}) picks table {POLICY_TABLE}: {FAR_SUBNET} dev {far_veth}"),
            Scenario("blackhole", "pod-a", _host(BLACKHOLE), "udp", PORT,
                     facts={"route": {"type": "blackhole"}, "table": "main"},
                     kernel=f"blackhole route {BLACKHOLE} in main: dropped, nothing sent back"),
            Scenario("prohibit", "pod-b", _host(PROHIBIT), "udp", PORT, reply=("icmp", 3, 13), counters=unreach,
                     facts={"route": {"type": "prohibit"}, "table": str(POLICY_TABLE)},
                     kernel=f"rule {POLICY_PREF} -> table {POLICY_TABLE}: prohibit {PROHIBIT}; ICMP admin prohibited"),
            Scenario("unreachable", "pod-a", _host(UNREACHABLE), "udp", PORT, reply=("icmp", 3, 1), counters=unreach,
                     facts={"route": {"type": "unreachable"}, "table": "main"},
                     kernel=f"unreachable route {UNREACHABLE} in main: ICMP host unreachable"),
            Scenario("no-route", "pod-a", _host(NO_ROUTE), "udp", PORT, reply=("icmp", 3, 0),
                     counters={"router": {"IcmpOutDestUnreachs": 1, "IpExtInNoRoutes": 1}},
                     facts={"route": {"type": "no route"}},
                     kernel="no route (the router has no default route): ICMP net unreachable"),
            Scenario("rp-filter", "pod-c", a.ip4, "udp", PORT, options={"src_ip": SPOOFED},
                     counters={"router": {"TcpExtIPReversePathFilter": 1}},
                     kernel=f"from {SPOOFED} on {far_veth}, whose reverse path is cni0: rp_filter=1 drops it"),
            Scenario("two-flows-one-cpu", "pod-a", c.ip4, "udp", PORT, to="pod-c",
                     options={"sender": "send_pinned", "count": 20, "cpu": 0, "with": "pod-b"},
                     facts={"routes": {a.ip4: "main", b.ip4: str(POLICY_TABLE)}},
                     kernel="pod-a and pod-b send to pod-c at once from one CPU: each datagram its own "
                            f"decision (pod-a's by main, pod-b's by table {POLICY_TABLE})"),
        ]

    def _route6_scenarios(self) -> list[Scenario]:
        """IPv6 routing decisions: pod-a's own (its subnet, its default route) and the router's error routes."""
        b6 = self.pods["pod-b"].ip6
        return [
            Scenario("route6-main", "pod-a", b6, "udp", PORT, reply=("icmp6", 1, 4),
                     facts={"route": {"table": "main", "type": "unicast", "prefix": SUBNET6, "oif": "eth0"}},
                     kernel=f"pod-a routes {b6} by its subnet's route {SUBNET6} dev eth0 (table main)"),
            Scenario("blackhole6", "pod-a", _host6(BLACKHOLE6), "udp", PORT,
                     facts={"route": {"type": "blackhole", "prefix": BLACKHOLE6}, "table": "main"},
                     kernel=f"pod-a's default route to the router, whose blackhole route {BLACKHOLE6} drops it"),
            Scenario("prohibit6", "pod-a", _host6(PROHIBIT6), "udp", PORT, reply=("icmp6", 1, 1),
                     facts={"route": {"type": "prohibit", "prefix": PROHIBIT6}, "table": "main"},
                     kernel=f"the router's prohibit route {PROHIBIT6}: ICMPv6 admin prohibited"),
        ]

    def _neighbour_scenarios(self) -> list[Scenario]:
        """ARP and ND that nobody answers, and a full queue of packets waiting for ARP."""
        failed_after = {"wait": 3 * NEIGH_RETRANS_MS / 1000 + 0.6}
        return [
            Scenario("neigh-failed", "pod-a", NOBODY, "udp", PORT, options=failed_after,
                     facts={"neighbour": NOBODY, "state": "FAILED", "probes": 3},
                     kernel=f"pod-a ARPs for {NOBODY} on eth0 3 times, nobody answers: NEIGH_FAILED, dropped"),
            Scenario("neigh-failed6", "pod-a", NOBODY6, "udp", PORT, options=failed_after,
                     facts={"neighbour": NOBODY6, "state": "FAILED", "probes": 3},
                     kernel=f"pod-a sends 3 neighbour solicitations for {NOBODY6}, no advertisement: FAILED, dropped"),
            Scenario("neigh-queuefull", "pod-a", NOBODY_QUEUED, "udp", PORT,
                     options={"sender": "send_unresolved", "count": 5},
                     facts={"neighbour": NOBODY_QUEUED, "state": "FAILED", "queuefull": 4},
                     kernel="5 datagrams to an unresolved neighbour with a 1-byte ARP queue: 4 dropped "
                            "NEIGH_QUEUEFULL as the next arrives, the last NEIGH_FAILED"),
        ]

    def _error_scenarios(self) -> list[Scenario]:
        """ICMP errors and a TCP reset the stack sends because of a packet."""
        b, c = self.pods["pod-b"], self.pods["pod-c"]
        return [
            Scenario("port-unreachable", "pod-a", b.ip4, "udp", CLOSED_PORT, reply=("icmp", 3, 3),
                     counters={"pod-b": {"UdpNoPorts": 1, "IcmpOutDestUnreachs": 1}},
                     kernel=f"no socket on {b.ip4}:{CLOSED_PORT}: pod-b sends ICMP port unreachable"),
            Scenario("frag-needed", "pod-a", c.ip4, "udp", PORT, options={"size": 1400, "df": True},
                     reply=("icmp", 3, 4), mtu=FAR_MTU, counters={"router": {"IpFragFails": 1, "IcmpOutDestUnreachs": 1}},
                     kernel=f"1428-byte DF datagram towards {c.host_ifname} (MTU {FAR_MTU}): ICMP frag needed, "
                            f"mtu {FAR_MTU}"),
            Scenario("ttl-exceeded", "pod-a", c.ip4, "udp", PORT, options={"ttl": 1}, reply=("icmp", 11, 0),
                     counters={"router": {"IcmpOutTimeExcds": 1}},
                     kernel="TTL 1 reaches the router: not forwarded, ICMP time exceeded"),
            Scenario("tcp-reset", "pod-a", b.ip4, "tcp", CLOSED_PORT, reply=("rst",),
                     counters={"pod-b": {"TcpOutRsts": 1}},
                     kernel=f"SYN to {b.ip4}:{CLOSED_PORT}, nobody listens: pod-b answers RST"),
        ]

    def _ipv6_scenarios(self) -> list[Scenario]:
        """IPv6 extension headers between pod-a and pod-b: facts name the chain and the upper protocol."""
        b6 = self.pods["pod-b"].ip6
        return [
            Scenario("mld-hop-by-hop", "pod-a", "ff02::16", "icmp6", options={"sender": "join_group"},
                     facts={"ext_headers": [0], "upper": 58, "icmp6_type": 143},
                     kernel=f"joining {MLD_GROUP} on eth0 sends an MLDv2 report: hop-by-hop (router alert) + ICMPv6"),
            Scenario("ipv6-fragments", "pod-a", b6, "udp", PORT, to="pod-b", options={"size": 3000},
                     facts={"ext_headers": [44], "upper": 17, "fragments": 3},
                     counters={"pod-a": {"Ip6FragCreates": 3}, "pod-b": {"Ip6ReasmOKs": 1}},
                     kernel="a 3000-byte datagram over a 1500 MTU: pod-a sends 3 fragments, pod-b reassembles"),
            Scenario("ipv6-dstopts", "pod-a", b6, "udp", PORT, to="pod-b", options={"ext": "dstopts"},
                     facts={"ext_headers": [60], "upper": 17},
                     kernel="a destination options header (PadN) before UDP, skipped by pod-b"),
            Scenario("ipv6-routing", "pod-a", b6, "udp", PORT, to="pod-b", options={"ext": "srh"},
                     facts={"ext_headers": [43], "upper": 17},
                     kernel="a segment routing header (type 4, segments left 0) before UDP, accepted by pod-b"),
        ]

    # -- senders of the scenarios that need more than one datagram

    def send_unresolved(self, pod: str, dst: str, port: int, count: int = 5, **_) -> tuple[int, list]:
        """`count` datagrams to an unresolved neighbour with the ARP queue at 1 byte (a full queue)."""
        key = "net.ipv4.neigh.eth0.unres_qlen_bytes"
        old = run_in_netns(self.ns[pod], read_sysctl, key)
        self.sysctl(pod, key, 1)
        try:
            return self.send_udp(pod, dst, port, count=count)
        finally:
            time.sleep(3 * NEIGH_RETRANS_MS / 1000 + 0.6)  # until the neighbour FAILED
            self.sysctl(pod, key, old)

    def send_pinned(self, pod: str, dst: str, port: int, count: int = 20, cpu: int = 0, **options) -> dict:
        """Two senders (`pod` and options["with"]) pinned to one CPU, started together."""
        senders = [self.popen(p, [sys.executable, "-c", _PINNED_SENDER, dst, str(port), str(count), str(cpu)],
                              stdin=-1, stdout=-1, text=True) for p in (pod, options["with"])]
        for s in senders:
            if s.stdout.readline().strip() != "ready":
                raise RuntimeError("pinned sender did not start")
        for s in senders:
            s.stdin.write("go\n")
            s.stdin.flush()
        for s in senders:
            s.wait(timeout=60)
        return {"cpu": cpu, "count": count}

    def join_group(self, pod: str, dst: str = "", port: int = 0, group: str = MLD_GROUP, **_) -> bool:
        """Join `group` on eth0: the kernel sends an MLD report with a hop-by-hop header."""
        sock = self.socket(pod, socket.AF_INET6, socket.SOCK_DGRAM)
        ifindex = self.netlink(pod, lambda ipr: ipr.link_lookup(ifname="eth0")[0])
        mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", ifindex)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        time.sleep(0.1)
        sock.close()  # leaving sends an MLD report (change to exclude-nothing) too
        return True

    def send_udp(self, pod: str, dst: str, port: int, ext: str | None = None, **kw):
        if ext is None:
            return super().send_udp(pod, dst, port, **kw)
        option, value = {"dstopts": (IPV6_DSTOPTS, _dstopts()), "srh": (IPV6_RTHDR, _srh(dst))}[ext]
        sock = self.socket(pod, socket.AF_INET6, socket.SOCK_DGRAM)
        with sock:
            sock.setsockopt(socket.IPPROTO_IPV6, option, value)
            sock.sendto(b"skbtracer-probe", (dst, port))
            return sock.getsockname()[1], []

    # -- ground truth of the routing decision

    def route_get(self, dst: str, src: str, iif: str = "cni0") -> dict:
        """The router's decision for a packet src->dst arriving on `iif`, from `ip route get fibmatch`:
        the matching route's prefix, table, type and device.  Blackhole, unreachable and prohibit
        routes answer with an error instead; its errno names the type (the table is not reported)."""
        proc = self.exec("router", ["ip", "-j", "route", "get", "fibmatch", dst, "from", src, "iif", iif], check=False)
        if proc.returncode != 0:
            error = proc.stderr.strip().rsplit(": ", 1)[-1]
            return {"type": ROUTE_ERRORS.get(error, error)}
        route = json.loads(proc.stdout)[0]
        return {"prefix": route["dst"], "table": route.get("table", "main"), "type": route.get("type", "unicast"),
                "oif": route.get("dev")}


def _host(subnet: str) -> str:
    return subnet.rsplit(".", 1)[0] + ".1"


def _host6(prefix: str) -> str:
    return prefix.split("/")[0] + "1"


def _dstopts() -> bytes:
    """A destination options header: next header (filled by the kernel), length 0, PadN of 4."""
    return bytes([0, 0, 1, 4, 0, 0, 0, 0])


def _srh(dst: str) -> bytes:
    """A segment routing header (RFC 8754) whose one segment is the destination, segments left 0."""
    return bytes([0, 2, 4, 0, 0, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, dst)
