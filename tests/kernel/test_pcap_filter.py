"""tcpdump filter expressions against tcpdump itself, on real traffic.

Several flows run at once between namespaces (UDP to two ports, TCP, ICMP,
IPv6, and UDP over an 802.1Q VLAN). For each expression, one skbtracer and
one tcpdump per watched device see the same traffic in the same run; the
flows skbtracer's rows show on a device must be the flows tcpdump captures
there with the same expression. All tracers start before the traffic, a
few at a time (every start is a bcc compile: seconds in the TCG guest).
Host: 13 expressions; guest-6.1: 8 of them, one of each kind (EXPRESSIONS).

The seed's scenario 1 traced with 'udp and host <client>' tells the same
story as with -H <client> --proto udp."""

import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import BACKEND
from test_filters import _add_ipv6, icmp_echo
from testbed.topology import SeedCluster, remove_netns
from testbed.tracer import TracerRun

scapy = pytest.importorskip("scapy.all")

CLIENT, SERVER = "10.244.1.2", "10.244.1.3"
CLIENT6, SERVER6 = "fd00:beef::2", "fd00:beef::3"
VLAN_A, VLAN_B, VLAN_ID = "10.253.0.1", "10.253.0.2", 100

# Flows, by the keys both sides reduce packets to
UDP_SMALL = ("U", CLIENT, 44001, SERVER, 9000)
UDP_BIG = ("U", CLIENT, 44002, SERVER, 9001)
TCP_OUT = ("T", CLIENT, 44003, SERVER, 9000)
TCP_BACK = ("T", SERVER, 9000, CLIENT, 44003)
ECHO = ("I", CLIENT, SERVER, "request")
ECHO_REPLY = ("I", SERVER, CLIENT, "reply")
UDP6 = ("U", CLIENT6, 44005, SERVER6, 9000)
UDP_VLAN = ("U", VLAN_A, 44006, VLAN_B, 9000)
FLOWS = {UDP_SMALL, UDP_BIG, TCP_OUT, TCP_BACK, ECHO, ECHO_REPLY, UDP6, UDP_VLAN}

# With kprobes, what differs from the tracepoints is where each probe finds the packet's
# headers, not how libpcap's primitives compile: the guest traces one expression of each kind
# (True below: addresses, TCP flags and ICMP type by offset, IPv6, negation, length, VLAN, link
# layer), between them every flow, and leaves the net/port/portrange/boolean variants (False) to
# the host: every start is a compile, about 40 s of TCG each.
EXPRESSIONS = [
    ("host %s" % SERVER, True),
    ("net 10.244.1.0/24", False),
    ("udp port 9001", False),
    ("portrange 9000-9001", False),
    ("src host %s and udp" % CLIENT, False),
    ("tcp[tcpflags] & tcp-syn != 0", True),
    ("icmp[icmptype] == icmp-echo", True),
    ("ip6", True),
    ("not udp", True),
    ("(udp and dst port 9000) or (tcp and src port 9000)", False),
    ("len < 100", True),
    ("vlan %d and udp port 9000" % VLAN_ID, True),
    ("ether src 02:00:00:01:00:02 and not icmp", True),
]
TRACED = [expression for expression, in_guest in EXPRESSIONS
          if in_guest or BACKEND != "kprobe"]
# tracers compiling at once: the guest has two CPUs and 2 GiB
PARALLEL = 2 if BACKEND == "kprobe" else 4


def packet_key(packet):
    """A captured packet as a flow key (None: not one of the kinds above)."""
    from scapy.all import ICMP, IP, TCP, UDP, ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    ip = packet.getlayer(IP) or packet.getlayer(IPv6)
    if ip is None:
        return None
    l4 = ip.payload
    if isinstance(l4, (TCP, UDP)):
        return ("T" if isinstance(l4, TCP) else "U", ip.src, l4.sport, ip.dst, l4.dport)
    if isinstance(l4, ICMP) and l4.type in (0, 8):
        return ("I", ip.src, ip.dst, "request" if l4.type == 8 else "reply")
    if isinstance(l4, (ICMPv6EchoRequest, ICMPv6EchoReply)):
        return ("I", ip.src, ip.dst, "request" if isinstance(l4, ICMPv6EchoRequest) else "reply")
    return None


def row_key(pkt):
    """A row's PKT_INFO (T_SYN:a:1->b:2, U:..., I_request:a->b) as a flow key."""
    kind, _, addresses = pkt.partition(":")
    src, _, dst = addresses.partition("->")
    if kind == "U" or kind.startswith("T_"):
        (s, sport), (d, dport) = src.rsplit(":", 1), dst.rsplit(":", 1)
        return ("U" if kind == "U" else "T", s, int(sport), d, int(dport))
    if kind in ("I_request", "I_reply"):
        return ("I", src, dst, kind[2:])
    return None


class Capture:
    """tcpdump -i DEVICE EXPRESSION in a namespace, to a pcap file."""

    def __init__(self, cluster, netns, device, expression, directory):
        self.path = os.path.join(directory, "%s-%d.pcap" % (device, abs(hash(expression))))
        self.proc = cluster.popen(netns, ["tcpdump", "-n", "-U", "-Z", "root", "-i", device,
                                          "-w", self.path, expression],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.stderr = self.proc.stderr.readline()        # "listening on ..." once ready
        assert "listening on" in self.stderr, self.stderr

    def stop(self):
        time.sleep(0.3)
        self.proc.send_signal(2)
        self.proc.wait(30)
        from scapy.all import rdpcap
        return {packet_key(p) for p in rdpcap(self.path)} & FLOWS


@pytest.fixture(scope="module")
def cluster():
    with SeedCluster(promisc=False, disable_ipv6=False) as c:
        c.start_udp_receiver("server")
        c.start_udp_receiver("server", port=9001)
        c.start_tcp_listener("server")
        _add_ipv6(c)
        va, vb = c.ns["node1"] + "-va", c.ns["node1"] + "-vb"
        try:
            _add_vlan_pair(c, va, vb)
            c.ns["va"], c.ns["vb"] = va, vb
            yield c
        finally:
            for name in (va, vb):
                remove_netns(name)


def _add_vlan_pair(c, va, vb):
    """Two namespaces joined by a veth pair carrying VLAN 100. With VLAN
    devices (8021q) the tag stays offloaded in the skb's metadata, as veth
    allows; a kernel without 8021q (this host) gets the tagged frame from a
    packet socket instead, the tag in the frame. tcpdump shows both."""
    for name in (va, vb):
        subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "link", "add", "va0", "netns", va, "type", "veth",
                    "peer", "name", "vb0", "netns", vb], check=True)
    c.vlan_devices = True
    for name, dev, addr in ((va, "va0", VLAN_A), (vb, "vb0", VLAN_B)):
        c.exec(name, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        c.exec(name, ["ip", "link", "set", dev, "up"])
        vlan = "%s.%d" % (dev, VLAN_ID)
        if c.exec(name, ["ip", "link", "add", "link", dev, "name", vlan, "type", "vlan",
                         "id", str(VLAN_ID)], check=False).returncode:
            c.vlan_devices = False
            continue
        c.exec(name, ["ip", "addr", "add", addr + "/24", "dev", vlan])
        c.exec(name, ["ip", "link", "set", vlan, "up"])
    deadline = time.monotonic() + 10
    while c.vlan_devices and c.exec(va, ["ping", "-c", "1", "-W", "1", VLAN_B],
                                    check=False).returncode:
        assert time.monotonic() < deadline, "the VLAN between the namespaces did not come up"


def send_vlan_udp(c):
    if c.vlan_devices:
        with c.socket(c.ns["va"], socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("0.0.0.0", 44006))
            sock.sendto(b"vlan", (VLAN_B, 9000))
        return
    from scapy.all import IP, UDP, Dot1Q, Ether
    frame = (Ether(src="02:00:00:0a:00:01", dst="02:00:00:0a:00:02") / Dot1Q(vlan=VLAN_ID) /
             IP(src=VLAN_A, dst=VLAN_B) / UDP(sport=44006, dport=9000) / b"vlan")
    with c.socket(c.ns["va"], socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.bind(("va0", 0x8100))
        sock.send(bytes(frame))


def flows(c):
    """One of each flow, at once."""
    c.send_udp("client", SERVER, 9000, sport=44001, payload=b"s" * 20)
    c.send_udp("client", SERVER, 9001, sport=44002, payload=b"b" * 300)
    c.send_tcp("client", SERVER, 9000, sport=44003)
    icmp_echo(c, "client", SERVER, 4545)
    with c.socket("client", socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::", 44005))
        sock.sendto(b"v6", (SERVER6, 9000))
    send_vlan_udp(c)


def start_tracers(argvs):
    """TracerRuns of argvs, attached; PARALLEL of them compiling at a time."""
    runs = [TracerRun(argv) for argv in argvs]
    with ThreadPoolExecutor(PARALLEL) as pool:
        started = list(pool.map(lambda run: _try_start(run), runs))
    failed = [run for run, error in zip(runs, started) if error]
    if failed:
        for run in runs:
            run.stop()
        raise AssertionError("tracers did not start: %s" % [str(e) for e in started if e])
    return runs


def _try_start(run):
    try:
        run.start()
    except RuntimeError as e:
        return e
    return None


@pytest.fixture(scope="module")
def compared(cluster):
    """{expression: {device: (flows skbtracer shows, flows tcpdump captured)}}"""
    devices = {"client/eth0": (cluster.ns["client"], "eth0"), "va/va0": (cluster.ns["va"], "va0")}
    inodes = {label: os.stat("/run/netns/" + ns).st_ino for label, (ns, _dev) in devices.items()}
    runs = start_tracers([["--route", expression] for expression in TRACED])
    with tempfile.TemporaryDirectory() as directory:
        try:
            captures = {(expression, label): Capture(cluster, ns, dev, expression, directory)
                        for expression in TRACED for label, (ns, dev) in devices.items()}
            flows(cluster)
            time.sleep(1.0 if BACKEND == "kprobe" else 0.3)
        finally:
            threads = [threading.Thread(target=run.stop) for run in runs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        result = {}
        for expression, run in zip(TRACED, runs):
            assert run.returncode == 0, run.stderr
            assert "Traceback" not in run.stderr, run.stderr
            per_device = {}
            for label, (_ns, dev) in devices.items():
                shown = {row_key(r.pkt) for r in run.rows
                         if r.netns == inodes[label] and r.ifname == dev} & FLOWS
                per_device[label] = (shown, captures[(expression, label)].stop())
            result[expression] = per_device
    return result


@pytest.mark.parametrize("expression", TRACED)
def test_flows_equal_tcpdumps(compared, expression):
    for device, (shown, captured) in compared[expression].items():
        assert shown == captured, "%s on %s: skbtracer %s, tcpdump %s" % (
            expression, device, sorted(shown), sorted(captured))


def test_every_flow_was_captured_by_some_expression(compared):
    """The comparison is not vacuous: every flow matched somewhere, and no
    expression matched everything."""
    seen = set()
    for expression, per_device in compared.items():
        captured = set().union(*(c for _s, c in per_device.values()))
        assert captured, "%r matched no flow at all" % expression
        assert captured != FLOWS, "%r matched every flow" % expression
        seen |= captured
    assert seen == FLOWS


# --- the seed's story -------------------------------------------------------

def test_scenario_1_story_is_the_same_with_an_expression(settle):
    """Two tracers at once over the seed's scenario 1 (service to a pod on
    the same node, promiscuous bridge): one with the expression, one with
    the flags. They see the same skbs, so they tell the same story."""
    with SeedCluster(promisc=True) as c:
        c.start_udp_receiver("server")
        pod, dst_ip, dst_port = c.targets["service"]
        runs = start_tracers([["--route", "--drop", "udp and host %s" % CLIENT],
                              ["--route", "--drop", "-H", CLIENT, "--proto", "udp"]])
        try:
            c.send_udp("client", dst_ip, dst_port, sport=44101)
            assert c.received(pod, settle=settle) == 2
        finally:
            for run in runs:
                run.stop()
        stories = [_story_of(run, 44101, c) for run in runs]
        assert stories[0] == stories[1]
        assert any(line.startswith("DUPLICATE: U %s:44101->" % CLIENT) for line in stories[0])


def _story_of(run, sport, cluster):
    """The story's lines about our datagram (DUPLICATE/DROPPED lines and its
    table row; the table's row number may differ)."""
    assert run.returncode == 0, run.stderr
    ours = [line for line in run.stderr.splitlines()
            if ":%d->" % sport in line and any(ns + "/" in line for ns in cluster.ns.values())]
    # durations (DUPLICATE's "apart", TIME lines) are each tracer's own measurement
    return [re.sub(r"\b\d+\.\d+ (us|ms|s)\b", "D", re.sub(r"^\s*\d+\s+", "", line))
            for line in ours]
