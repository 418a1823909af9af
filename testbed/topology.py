"""Namespace test bed that reproduces the seed case: duplicated UDP over a promiscuous bridge.

Layout (every name below lives in a network namespace this module creates)::

    client 10.244.1.2 --veth--+                                  +--veth-- server2 10.244.2.3
                               cbr0 10.244.1.1  (node1)  (node2)  cbr0 10.244.2.1
    server 10.244.1.3 --veth--+     eth0 10.250.0.1 <-> 10.250.0.2 eth0

node1 DNATs the "services" 10.96.0.10:53 -> server:9000 and 10.96.0.20:53 -> server2:9000
(nat PREROUTING, seen on the bridge path because bridge-nf-call-iptables=1).

Namespaces, links, addresses and routes are made with pyroute2 (imported lazily).  Work *inside* a namespace is done by a short-lived thread
that setns()es into it: netlink sockets, UDP/TCP sockets and child processes created by that
thread belong to the namespace, which saves the proxy process of pyroute2's NetNS and the extra
exec of `ip netns exec` (each exec costs ~0.1 s in the TCG guest).  Child processes started this
way see the host's /sys (no remount, unlike `ip netns exec`); netlink and /proc/sys/net are per-netns.

CLI::

    /usr/bin/python3 -m testbed.topology up [--no-promisc] [--iptables legacy] [--dedup] [--prefix P]
    /usr/bin/python3 -m testbed.topology down [--prefix P | --stale]     (P defaults to skbtbed)
    /usr/bin/python3 -m testbed.topology check [--iptables legacy] [--count N]
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
IFF_PROMISC = 0x100
ROLES = ("node1", "client", "server", "node2", "server2")
PODS = ("client", "server", "server2")
DEFAULT_PREFIX = "skbt"
CLI_PREFIX = "skbtbed"  # what `up`/`down` use when no --prefix is given
# Names made by default prefixes: skbt<pid>-<n>-<role>.  Only these are touched by cleanup_stale().
STALE_RE = re.compile(r"^skbt(\d+)-(\d+)-(%s)$" % "|".join(ROLES))
# Roles of the other shapes' namespaces (overlay.py, routing.py, ...), added by register_roles().
_extra_roles: set[str] = set()


def register_roles(roles) -> None:
    """Let cleanup_stale() reap namespaces skbt<pid>-<n>-<role> of another shape's roles too."""
    _extra_roles.update(roles)


def _stale_re() -> re.Pattern:
    if not _extra_roles:
        return STALE_RE
    roles = sorted(set(ROLES) | _extra_roles, key=len, reverse=True)
    return re.compile(r"^skbt(\d+)-(\d+)-(%s)$" % "|".join(map(re.escape, roles)))

SERVICE_PORT = 53
SERVER_PORT = 9000

# Every address in the bed, by name.  All of them live only inside our namespaces.
IP = {
    "cbr0": "10.244.1.1",  # node1 bridge = pods' gateway
    "client": "10.244.1.2",
    "server": "10.244.1.3",
    "node1": "10.250.0.1",  # node1 eth0, routed link to node2
    "node2": "10.250.0.2",
    "node2_cbr0": "10.244.2.1",
    "server2": "10.244.2.3",
    "service": "10.96.0.10",  # ClusterIP -> server:9000
    "service2": "10.96.0.20",  # ClusterIP -> server2:9000
}
POD_CIDR = {"node1": "10.244.1.0/24", "node2": "10.244.2.0/24"}
NODE_LINK_PREFIXLEN = 30

# Fixed MACs: which MAC cbr0 has decides pkt_type on the bridge (HOST vs OTHERHOST), so pin them.
MAC = {
    "cbr0": "02:00:00:00:01:01",
    "node2_cbr0": "02:00:00:00:02:01",
    "node1_eth0": "02:00:00:00:00:01",
    "node2_eth0": "02:00:00:00:00:02",
    "client": "02:00:00:01:00:02",  # pod eth0
    "server": "02:00:00:01:00:03",
    "server2": "02:00:00:02:00:03",
    "vethclient": "02:00:00:01:01:02",  # node side of the pod veth
    "vethserver": "02:00:00:01:01:03",
    "vethserver2": "02:00:00:02:01:03",
}

# Node-side interface of each pod.  Names start with "veth" because kubenet's dedup rule says "-o veth+".
POD_VETH = {"client": "vethclient", "server": "vethserver", "server2": "vethserver2"}
POD_NODE = {"client": "node1", "server": "node1", "server2": "node2"}

# Where a UDP "target" of a scenario lands: (pod that receives, destination ip, destination port).
TARGETS = {
    "service": ("server", IP["service"], SERVICE_PORT),
    "service2": ("server2", IP["service2"], SERVICE_PORT),
    "direct": ("server", IP["server"], SERVER_PORT),
}


@dataclass(frozen=True)
class Scenario:
    number: int
    promisc: bool
    target: str  # key of TARGETS
    expected: int  # datagrams the server receives per datagram sent (host kernel 6.18, Debian 6.1)
    description: str


SCENARIOS = (
    Scenario(1, True, "service", 2, "promisc on, service -> pod on same node (the duplicate)"),
    Scenario(2, True, "service2", 1, "promisc on, service -> pod on other node"),
    Scenario(3, True, "direct", 1, "promisc on, direct to pod on same node"),
    Scenario(4, False, "service", 1, "promisc off, service -> pod on same node"),
    Scenario(5, False, "service2", 1, "promisc off, service -> pod on other node"),
    Scenario(6, False, "direct", 1, "promisc off, direct to pod on same node"),
)


# ---------------------------------------------------------------- namespace plumbing

_libc = ctypes.CDLL(None, use_errno=True)


# pyroute2 is imported on first use: the import costs ~0.5 s here and 15-40 s in the TCG guest
# (it loads all its entry points), and the constants and helpers here are useful without it.
def _iproute():
    from pyroute2 import IPRoute

    return IPRoute()


def _pr_netns():
    from pyroute2 import netns

    return netns


def netns_path(name: str) -> str:
    return name if name.startswith("/") else f"{NETNS_DIR}/{name}"


def run_in_netns(name: str, fn, *args, **kwargs):
    """Call fn(*args, **kwargs) in a fresh thread that has joined netns `name`; return its result.

    setns(CLONE_NEWNET) only moves the calling thread, so the rest of the process stays put, and
    anything the thread creates (sockets, netlink sockets, children) stays in that namespace.
    """
    result: dict = {}

    def target():
        try:
            fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({name}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"netns:{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def write_sysctl(key: str, value) -> None:
    """Write net.* sysctl `key` for the calling thread's netns (/proc/sys/net is per-netns)."""
    with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(str(value))


def read_sysctl(key: str) -> str:
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def ensure_br_netfilter() -> None:
    """br_netfilter is built in on the host but a module on Debian's 6.1 kernel."""
    if os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        return
    # Failure is fine when it is built in or already loaded; the check below decides.
    subprocess.run(["modprobe", "br_netfilter"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        raise RuntimeError("br_netfilter not available (modprobe br_netfilter failed)")


def netns_inode(name: str) -> int:
    return os.stat(netns_path(name)).st_ino


def pids_in_netns(name: str) -> list[int]:
    """PIDs whose network namespace is `name` (our own process excluded)."""
    try:
        st = os.stat(netns_path(name))
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            pst = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (pst.st_dev, pst.st_ino) == (st.st_dev, st.st_ino):
            pids.append(int(entry))
    return pids


def _kill_pids(pids, grace: float = 1.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _pid_alive(p)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"  # a zombie child of ours is dead for our purposes


def remove_netns(name: str, kill: bool = True) -> None:
    """Delete netns `name`; with kill=True first end the processes still inside it
    (only ever called on namespaces this module created)."""
    if not os.path.exists(netns_path(name)):
        return
    if kill:
        _kill_pids(pids_in_netns(name))
    try:
        _pr_netns().remove(name)
    except FileNotFoundError:
        pass


def _process_start_time(pid: int) -> float | None:
    """Wall-clock start time of pid, to tell a live owner from a recycled PID."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def cleanup_stale() -> list[str]:
    """Remove namespaces of dead runs that used the default prefix (skbt<pid>-<n>-<role>).

    A run is dead when its PID is gone, or the PID now belongs to a process that started after
    the namespace was made (PID reuse).  Custom prefixes are never touched here; `down --prefix`.
    Shapes with roles of their own name them with register_roles() first.
    """
    removed = []
    stale_re = _stale_re()
    for name in sorted(os.listdir(NETNS_DIR) if os.path.isdir(NETNS_DIR) else []):
        m = stale_re.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        started = _process_start_time(pid) if _pid_alive(pid) else None
        try:
            created = os.stat(netns_path(name)).st_mtime
        except FileNotFoundError:
            continue
        if started is not None and started <= created + 1.0:
            continue  # owner still running
        remove_netns(name)
        removed.append(name)
    return removed


def remove_prefix(prefix: str) -> list[str]:
    """Remove every namespace <prefix>-<role> (leftovers of a crashed or `up` run)."""
    removed = []
    for role in ROLES:
        name = f"{prefix}-{role}"
        if os.path.exists(netns_path(name)):
            remove_netns(name)
            removed.append(name)
    return removed


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message carries the command's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}: {(self.stderr or '').strip()}"


# ---------------------------------------------------------------- receivers

# Runs in a pod netns.  Prints one line per UDP datagram ("src sport ttl payloadhex") or per TCP line
# ("src sport - linehex"); exits when stdin hits EOF, i.e. when the process that owns it dies.
_RECEIVER_SCRIPT = r"""
import os, select, socket, sys
proto, port = sys.argv[1], int(sys.argv[2])
v6 = len(sys.argv) > 3 and sys.argv[3] == "6"
family = socket.AF_INET6 if v6 else socket.AF_INET
out = sys.stdout
if proto == "udp":
    s = socket.socket(family, socket.SOCK_DGRAM)
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
    else:
        s.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_RECVTTL", 12), 1)  # Python lacks the name
else:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if v6 else "0.0.0.0", port))
if proto == "tcp":
    s.listen(64)
out.write("READY\n"); out.flush()
conns = {}
while True:
    ready, _, _ = select.select([0, s, *conns], [], [])
    for r in ready:
        if r == 0:
            if not os.read(0, 4096):
                sys.exit(0)
        elif r is s and proto == "udp":
            data, anc, _, addr = s.recvmsg(65535, socket.CMSG_SPACE(4))
            ttl = int.from_bytes(anc[0][2][:4], sys.byteorder) if anc else -1
            out.write("%s %d %d %s\n" % (addr[0], addr[1], ttl, data.hex())); out.flush()
        elif r is s:
            c, addr = s.accept()
            conns[c] = [addr, b""]
        else:
            addr, buf = conns[r]
            data = r.recv(65535)
            buf += data
            lines = buf.split(b"\n")
            buf = b"" if not data else lines.pop()
            for line in lines:
                if line:
                    out.write("%s %d - %s\n" % (addr[0], addr[1], line.hex())); out.flush()
            if data:
                conns[r][1] = buf
            else:
                r.close(); del conns[r]
"""


_SENDER_SCRIPT = r"""
import socket, sys
dst, port, count, payload, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), bytes.fromhex(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", sport))
for _ in range(count):
    s.sendto(payload, (dst, port))
print(s.getsockname()[1])
"""


@dataclass(frozen=True)
class Datagram:
    """One datagram (UDP) or one line (TCP, ttl None) as seen by a receiver."""

    src: str
    sport: int
    ttl: int | None
    payload: bytes


class Receiver:
    """A background listener process in a pod netns, plus a thread that collects what it prints."""

    def __init__(self, netns: str, pod: str, proto: str, port: int, timeout: float = 30.0, family: int = 4):
        self.pod, self.proto, self.port, self.family = pod, proto, port, family
        self.records: list[Datagram] = []
        self._lock = threading.Lock()
        self.proc = run_in_netns(
            netns,
            subprocess.Popen,
            [sys.executable, "-c", _RECEIVER_SCRIPT, proto, str(port), str(family)],
            stdin=subprocess.PIPE,  # our end closing (we die) = EOF = receiver exits
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        # Wait for the bind; under TCG starting Python takes seconds, hence the long timeout.
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "READY":
            self.stop()
            raise RuntimeError(f"{proto} receiver in {pod}:{port} did not start: {line!r} {self._stderr!r}")
        self._thread = threading.Thread(target=self._collect, name=f"rx:{pod}:{proto}:{port}", daemon=True)
        self._thread.start()

    def _collect(self):
        for line in self.proc.stdout:
            src, sport, ttl, payload = line.split(" ")
            rec = Datagram(src, int(sport), None if ttl == "-" else int(ttl), bytes.fromhex(payload.strip()))
            with self._lock:
                self.records.append(rec)

    def snapshot(self) -> list[Datagram]:
        with self._lock:
            return list(self.records)

    def reset(self) -> None:
        with self._lock:
            self.records.clear()

    def stop(self) -> None:
        self._stderr = ""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                _kill_pids([self.pid], grace=0.5)
                self.proc.wait()
        if not self.proc.stderr.closed:
            self._stderr = self.proc.stderr.read()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


def stop_processes(receivers: dict, procs: list) -> None:
    """Stop the receivers, end the started processes by PID and reap them; empties both."""
    for rx in receivers.values():
        rx.stop()
    receivers.clear()
    _kill_pids([p.pid for p in procs if p.poll() is None], grace=0.5)
    for p in procs:
        try:
            p.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
    procs.clear()


# ---------------------------------------------------------------- the cluster

_counter = itertools.count()


class SeedCluster:
    """Two "nodes" and three "pods" in network namespaces, as in the seed case.

    Use as a context manager; teardown (receivers killed by PID, namespaces deleted) also runs when
    the body raises.  Attributes: ns[role] -> netns name, ns_inode[role] -> inode of /run/netns/<name>,
    ip / mac dicts (module IP / MAC), ports (SERVICE_PORT, SERVER_PORT), ifindex(role, ifname).
    """

    SERVICE_PORT = SERVICE_PORT
    SERVER_PORT = SERVER_PORT

    def __init__(
        self,
        promisc: bool = True,
        iptables: str = "nft",
        dedup_rule: bool = False,
        prefix: str | None = None,
        ebtables: str | None = None,
        settle: float = 0.2,
        receive_timeout: float = 2.0,
        disable_ipv6: bool = True,
        services: bool = True,
    ):
        if iptables not in ("nft", "legacy"):
            raise ValueError("iptables must be 'nft' or 'legacy'")
        self.promisc = promisc
        self.iptables = iptables
        # ebtables-nft is Debian's default and the only one the host kernel supports
        # (CONFIG_BRIDGE_NF_EBTABLES_LEGACY is off on 6.18: "doesn't support the ebtables 'filter' table").
        self.ebtables = ebtables or "nft"
        if self.ebtables not in ("nft", "legacy"):
            raise ValueError("ebtables must be 'nft' or 'legacy'")
        self.dedup_rule = dedup_rule
        self.prefix = prefix or f"{DEFAULT_PREFIX}{os.getpid()}-{next(_counter)}"
        self.settle = settle
        self.receive_timeout = receive_timeout
        self.disable_ipv6 = disable_ipv6  # no IPv6 DAD/RS/MLD chatter in traces
        # False: node1 gets no DNAT rules of ours (a shape that writes kube-proxy's own rules, e.g.
        # testbed/kubeproxy.py, then owns netfilter in node1 alone).
        self.services = services
        self.ns = {role: f"{self.prefix}-{role}" for role in ROLES}
        self.ns_inode: dict[str, int] = {}
        self.ip = dict(IP)
        self.mac = dict(MAC)
        self.targets = dict(TARGETS)
        self.receivers: dict[tuple[str, str, int], Receiver] = {}
        self._procs: list[subprocess.Popen] = []
        self._ifindex: dict[tuple[str, str], int] = {}
        self._dedup_jump = False
        self._up = False

    # -- lifecycle

    def __enter__(self) -> "SeedCluster":
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> "SeedCluster":
        ensure_br_netfilter()
        remove_prefix(self.prefix)  # idempotent: clear leftovers of a crashed run with this prefix
        self._up = True  # from here on down() has something to clean
        self._dedup_jump = False
        try:
            for role in ROLES:
                _pr_netns().create(self.ns[role])
                self.ns_inode[role] = netns_inode(self.ns[role])
                run_in_netns(self.ns[role], self._base_sysctls)
            run_in_netns(self.ns["node1"], self._build_node, "node1", "cbr0", ("client", "server"), True)
            run_in_netns(self.ns["node2"], self._build_node, "node2", "node2_cbr0", ("server2",), False)
            for pod in PODS:
                gw = IP["cbr0"] if POD_NODE[pod] == "node1" else IP["node2_cbr0"]
                run_in_netns(self.ns[pod], self._build_pod, pod, gw)
            if self.services:
                self._install_services()
            if self.dedup_rule:
                self.set_dedup(True)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Kill receivers and popen()ed processes by PID, then delete our namespaces."""
        stop_processes(self.receivers, self._procs)
        if self._up:
            for role in ROLES:
                remove_netns(self.ns[role], kill=False)
        self._up = False

    close = down

    # -- building blocks (run inside the target netns)

    def _base_sysctls(self):
        if self.disable_ipv6 and os.path.exists("/proc/sys/net/ipv6"):
            # Before any link exists, so "default" covers the veths and bridges too.
            write_sysctl("net.ipv6.conf.all.disable_ipv6", 1)
            write_sysctl("net.ipv6.conf.default.disable_ipv6", 1)
        with _iproute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def _build_node(self, node: str, bridge_key: str, pods: tuple[str, ...], create_node_link: bool):
        with _iproute() as ipr:
            ipr.link("add", ifname="cbr0", kind="bridge", address=MAC[bridge_key])
            cbr0 = ipr.link_lookup(ifname="cbr0")[0]
            ipr.addr("add", index=cbr0, address=IP[bridge_key], prefixlen=24)
            for pod in pods:
                fd = os.open(netns_path(self.ns[pod]), os.O_RDONLY)
                try:
                    # The pod end is born in the pod netns as eth0: no temporary name, no move.
                    ipr.link(
                        "add",
                        ifname=POD_VETH[pod],
                        kind="veth",
                        address=MAC[POD_VETH[pod]],
                        peer={"ifname": "eth0", "address": MAC[pod], "net_ns_fd": fd},
                    )
                finally:
                    os.close(fd)
                veth = ipr.link_lookup(ifname=POD_VETH[pod])[0]
                ipr.link("set", index=veth, master=cbr0)
                ipr.link("set", index=veth, state="up")
            if create_node_link:
                fd = os.open(netns_path(self.ns["node2"]), os.O_RDONLY)
                try:
                    ipr.link(
                        "add",
                        ifname="eth0",
                        kind="veth",
                        address=MAC["node1_eth0"],
                        peer={"ifname": "eth0", "address": MAC["node2_eth0"], "net_ns_fd": fd},
                    )
                finally:
                    os.close(fd)
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=IP[node], prefixlen=NODE_LINK_PREFIXLEN)
            ipr.link("set", index=eth0, state="up")
            ipr.link("set", index=cbr0, state="up")
            ipr.link("set", index=cbr0, flags=IFF_PROMISC if (self.promisc and node == "node1") else 0, change=IFF_PROMISC)
            other = "node2" if node == "node1" else "node1"
            ipr.route("add", dst=POD_CIDR[other], gateway=IP[other])
            for link in ipr.get_links():
                self._ifindex[(node, link.get_attr("IFLA_IFNAME"))] = link["index"]
        write_sysctl("net.ipv4.ip_forward", 1)
        # Per-netns since Linux 5.3 (checked on 6.18: changing it in a netns leaves init_net alone).
        write_sysctl("net.bridge.bridge-nf-call-iptables", 1)

    def _build_pod(self, pod: str, gateway: str):
        with _iproute() as ipr:
            eth0 = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=eth0, address=IP[pod], prefixlen=24)
            ipr.link("set", index=eth0, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=gateway)
            for link in ipr.get_links():
                self._ifindex[(pod, link.get_attr("IFLA_IFNAME"))] = link["index"]

    # Rules go in through the *-restore CLIs: one exec per change instead of one per rule
    # (each exec costs ~0.1 s in the TCG guest).  --noflush keeps what is there; declaring a
    # chain (":NAME ...") creates it, or flushes it if it exists.

    def _install_services(self) -> None:
        # kube-proxy (iptables mode) in miniature: ClusterIP:53 -> pod:9000, UDP and TCP.
        lines = ["*nat", ":KUBE-SERVICES - [0:0]", "-A PREROUTING -j KUBE-SERVICES"]
        for svc, pod in (("service", "server"), ("service2", "server2")):
            for proto in ("udp", "tcp"):
                lines.append(f"-A KUBE-SERVICES -d {IP[svc]}/32 -p {proto} --dport {SERVICE_PORT} "
                             f"-j DNAT --to-destination {IP[pod]}:{SERVER_PORT}")
        lines.append("COMMIT")
        self.exec("node1", [f"iptables-{self.iptables}-restore", "-w", "--noflush"], input="\n".join(lines) + "\n")

    # -- knobs that tests flip on a live cluster

    def set_promisc(self, on: bool) -> None:
        def flip():
            with _iproute() as ipr:
                idx = ipr.link_lookup(ifname="cbr0")[0]
                ipr.link("set", index=idx, flags=IFF_PROMISC if on else 0, change=IFF_PROMISC)

        run_in_netns(self.ns["node1"], flip)
        self.promisc = on

    def get_promisc(self) -> bool:
        def flags():
            with _iproute() as ipr:
                return ipr.get_links(ipr.link_lookup(ifname="cbr0")[0])[0]["flags"]

        return bool(run_in_netns(self.ns["node1"], flags) & IFF_PROMISC)

    def set_dedup(self, on: bool) -> None:
        """kubenet's dedup rule: drop frames leaving cbr0 (bridge OUTPUT) towards pod veths that carry
        cbr0's source MAC and a pod source IP, i.e. the routed copy; the gateway's own IP is allowed."""
        common = f"-p IPv4 -s {MAC['cbr0']} -o veth+"
        rules = [f"-A KUBE-DEDUP {common} --ip-src {IP['cbr0']} -j ACCEPT",
                 f"-A KUBE-DEDUP {common} --ip-src {POD_CIDR['node1']} -j DROP"] if on else []
        if self.ebtables == "nft":
            lines = ["*filter", ":KUBE-DEDUP RETURN"]  # created, or flushed when it exists
            if not self._dedup_jump:
                lines.append("-A OUTPUT -j KUBE-DEDUP")
            lines += rules + ["COMMIT"]
            self.exec("node1", ["ebtables-nft-restore", "--noflush"], input="\n".join(lines) + "\n")
        else:
            # ebtables-legacy-restore has no usable --noflush semantics for this; one command each.
            cmds = [] if self._dedup_jump else ["-N KUBE-DEDUP -P RETURN", "-A OUTPUT -j KUBE-DEDUP"]
            for cmd in cmds + ["-F KUBE-DEDUP"] + rules:
                self.exec("node1", ["ebtables-legacy", "-t", "filter", *cmd.split()])
        self._dedup_jump = True
        self.dedup_rule = on

    # -- running things inside a namespace

    def netns_name(self, ns: str) -> str:
        """Accept a role ("node1", "client", ...) or a full netns name."""
        return self.ns.get(ns, ns)

    def exec(self, ns: str, argv: list[str], check: bool = True, timeout: float = 60.0,
             input: str | None = None) -> subprocess.CompletedProcess:
        """Run argv inside netns `ns` and wait; text stdout/stderr captured."""
        proc = run_in_netns(
            self.netns_name(ns), subprocess.Popen, argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise
        res = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and res.returncode != 0:
            raise CommandError(res.returncode, argv, out, err)
        return res

    def popen(self, ns: str, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start argv inside netns `ns` in the background; killed by PID at teardown if still running."""
        proc = run_in_netns(self.netns_name(ns), subprocess.Popen, argv, **kwargs)
        self._procs.append(proc)
        return proc

    def socket(self, ns: str, family=socket.AF_INET, type=socket.SOCK_DGRAM, proto: int = 0) -> socket.socket:
        """A socket that belongs to netns `ns` (usable from any thread afterwards)."""
        return run_in_netns(self.netns_name(ns), socket.socket, family, type, proto)

    def ifindex(self, ns: str, ifname: str) -> int:
        return self._ifindex[(ns, ifname)]

    # -- traffic helpers

    def start_udp_receiver(self, pod: str, port: int = SERVER_PORT) -> Receiver:
        return self._start_receiver(pod, "udp", port)

    def start_tcp_listener(self, pod: str, port: int = SERVER_PORT) -> Receiver:
        return self._start_receiver(pod, "tcp", port)

    def _start_receiver(self, pod: str, proto: str, port: int) -> Receiver:
        key = (pod, proto, port)
        if key not in self.receivers:
            self.receivers[key] = Receiver(self.netns_name(pod), pod, proto, port)
        return self.receivers[key]

    def send_udp(self, from_pod: str, dst_ip: str, dst_port: int, count: int = 1,
                 payload: bytes = b"skbtracer-probe", sport: int | None = None, process: bool = False) -> int:
        """Send `count` datagrams from a socket in `from_pod`; returns the source port used.

        By default the socket is ours (sent by this PID); process=True sends from a short-lived
        child process in the pod instead, for tests that look at the sending task (pid/comm)."""
        if process:
            argv = [sys.executable, "-c", _SENDER_SCRIPT, dst_ip, str(dst_port), str(count), payload.hex(), str(sport or 0)]
            return int(self.exec(from_pod, argv).stdout)
        sock = self.socket(from_pod, socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", sport or 0))
            for _ in range(count):
                sock.sendto(payload, (dst_ip, dst_port))
            return sock.getsockname()[1]

    def send_tcp(self, from_pod: str, dst_ip: str, dst_port: int, line: bytes = b"skbtracer-probe",
                 sport: int | None = None, timeout: float = 3.0) -> bool:
        """Connect, send one line, close.  True if the connection was established and the data sent."""
        sock = self.socket(from_pod, socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(timeout)
            if sport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", sport))
            try:
                sock.connect((dst_ip, dst_port))
                sock.sendall(line.rstrip(b"\n") + b"\n")
                sock.shutdown(socket.SHUT_WR)
                sock.recv(1)  # wait for the listener's close, so the line has arrived
            except OSError:
                return False
        return True

    def ping(self, from_pod: str, dst_ip: str, count: int = 1, timeout: int = 1) -> bool:
        """ICMP echo with ping -c N -W T in the pod netns (busybox ping when iputils is absent)."""
        argv = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
        argv += ["-c", str(count), "-W", str(timeout), dst_ip]
        return self.exec(from_pod, argv, check=False, timeout=count * timeout + 10).returncode == 0

    def records(self, pod: str, port: int = SERVER_PORT, proto: str = "udp") -> list[Datagram]:
        return self.receivers[(pod, proto, port)].snapshot()

    def received(self, pod: str, port: int = SERVER_PORT, proto: str = "udp", settle: float | None = None,
                 timeout: float | None = None, late: float | None = None) -> int:
        """Datagrams (or TCP lines) the pod's receiver got since the last reset.

        Returns once nothing new arrived for `settle` seconds (default self.settle) and at least
        `late` seconds (default 2 x settle, at least 1 s) passed since the first one, so that a late
        duplicate (the routed copy, slower than the bridged one) is counted. While nothing at all
        has arrived it keeps waiting up to `timeout` (default self.receive_timeout), because a
        loaded host or the TCG guest can take longer than `settle` to deliver the first one.
        """
        settle = self.settle if settle is None else settle
        late = max(2 * settle, 1.0) if late is None else late
        deadline = time.monotonic() + (self.receive_timeout if timeout is None else timeout)
        count = -1
        first = None
        while True:
            time.sleep(settle)
            now = len(self.records(pod, port, proto))
            if now > 0 and first is None:
                first = time.monotonic()
            quiet = now == count
            if quiet and now > 0 and time.monotonic() - first >= late:
                return now
            if quiet and now == 0 and time.monotonic() >= deadline:
                return now
            count = now

    def reset_counts(self) -> None:
        for rx in self.receivers.values():
            rx.reset()

    def run_udp(self, target: str, count: int = 1, payload: bytes = b"skbtracer-probe") -> int:
        """Send `count` datagrams from client to a TARGETS entry; return what the target pod received."""
        pod, dst_ip, dst_port = self.targets[target]
        self.start_udp_receiver(pod, SERVER_PORT)
        self.reset_counts()
        self.send_udp("client", dst_ip, dst_port, count=count, payload=payload)
        return self.received(pod, SERVER_PORT)

    def run_scenario(self, scenario: Scenario, count: int = 1) -> int:
        if self.get_promisc() != scenario.promisc:
            self.set_promisc(scenario.promisc)
        return self.run_udp(scenario.target, count=count)

    def describe(self) -> dict:
        return {
            "prefix": self.prefix,
            "promisc": self.promisc,
            "iptables": self.iptables,
            "ebtables": self.ebtables,
            "dedup_rule": self.dedup_rule,
            "ns": self.ns,
            "ns_inode": self.ns_inode,
            "ip": self.ip,
            "mac": self.mac,
            "ports": {"service": SERVICE_PORT, "server": SERVER_PORT},
            "ifindex": {f"{ns}/{ifname}": idx for (ns, ifname), idx in sorted(self._ifindex.items())},
        }


# ---------------------------------------------------------------- CLI


def _check(args) -> int:
    ok = True
    print(f"{'#':>2} {'promisc':7} {'target':9} {'sent':>4} {'recv':>4} {'expect':>6}  description")
    for promisc in (True, False):
        with SeedCluster(promisc=promisc, iptables=args.iptables, ebtables=args.ebtables) as c:
            for sc in (s for s in SCENARIOS if s.promisc == promisc):
                got = c.run_scenario(sc, count=args.count)
                want = sc.expected * args.count
                ok &= got == want
                mark = "" if got == want else "  <-- MISMATCH"
                print(f"{sc.number:>2} {str(sc.promisc):7} {sc.target:9} {args.count:>4} {got:>4} {want:>6}  "
                      f"{sc.description}{mark}", flush=True)
            if promisc:
                c.set_dedup(True)
                got = c.run_udp("service", count=args.count)
                ok &= got == args.count
                print(f"1d {'True':7} {'service':9} {args.count:>4} {got:>4} {args.count:>6}  "
                      f"scenario 1 + kubenet ebtables dedup rule{'' if got == args.count else '  <-- MISMATCH'}")
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m testbed.topology", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the bed and leave it running (prints JSON)")
    up.add_argument("--no-promisc", action="store_true")
    up.add_argument("--iptables", choices=("nft", "legacy"), default="nft")
    up.add_argument("--ebtables", choices=("nft", "legacy"), default=None)
    up.add_argument("--dedup", action="store_true", help="install kubenet's ebtables dedup rule")
    # A fixed default (not skbt<pid>-<n>, which cleanup_stale() would reap once `up` exits).
    up.add_argument("--prefix", default=CLI_PREFIX, help=f"netns names are <prefix>-<role> (default {CLI_PREFIX})")
    down = sub.add_parser("down", help="delete the namespaces of a prefix, killing what runs in them")
    grp = down.add_mutually_exclusive_group()
    grp.add_argument("--prefix", default=CLI_PREFIX, help=f"default {CLI_PREFIX}")
    grp.add_argument("--stale", action="store_true", help="remove namespaces of dead default-prefix runs")
    chk = sub.add_parser("check", help="run the 6 scenarios (+ dedup rule) and print sent vs received")
    chk.add_argument("--iptables", choices=("nft", "legacy"), default="nft")
    chk.add_argument("--ebtables", choices=("nft", "legacy"), default=None)
    chk.add_argument("--count", type=int, default=1)
    args = ap.parse_args(argv)

    if args.cmd == "up":
        c = SeedCluster(promisc=not args.no_promisc, iptables=args.iptables, ebtables=args.ebtables,
                        dedup_rule=args.dedup, prefix=args.prefix)
        c.up()
        print(json.dumps(c.describe(), indent=2))
        return 0
    if args.cmd == "down":
        removed = cleanup_stale() if args.stale else remove_prefix(args.prefix)
        print("\n".join(removed) if removed else "nothing to remove")
        return 0
    return _check(args)


if __name__ == "__main__":
    sys.exit(main())
