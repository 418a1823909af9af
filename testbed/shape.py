"""What every node shape of the test bed shares (overlay.py, routing.py): namespaces per role with
a per-process prefix, CNI pods, traffic from inside the pods, and ground truth from the kernel
(tcpdump captures, nstat counters, link statistics, neighbour states).

A shape subclass names its namespaces in ROLES, builds them in _build(), and lists its
`scenarios`: what to send, what the kernel does with it and what ground truth shows it.
`run(scenario)` sends one and returns the `Outcome` the tests (and later the tracer's tests)
compare against.  Namespace plumbing comes from topology.py (run_in_netns, Receiver, stale cleanup).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field

from . import cni
from .packets import Capture, stop_all
from .topology import (DEFAULT_PREFIX, Receiver, _iproute, _pr_netns, netns_inode, register_roles, remove_netns,
                       run_in_netns, stop_processes, write_sysctl)
from .topology import cleanup_stale as _cleanup_ns

NUD_STATES = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY", 0x10: "PROBE",
              0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT"}
IP_MTU_DISCOVER, IPV6_MTU_DISCOVER = 10, 23
# DF without fragmenting to a learnt path MTU: the same datagram leaves every time, a frag-needed
# from an earlier run notwithstanding.  DONT: the kernel fragments as needed, no DF.
PMTUDISC_DONT, PMTUDISC_PROBE = 0, 3
_counter = itertools.count()


@dataclass(frozen=True)
class Scenario:
    """One packet (or flow) a shape sends, what the kernel does with it, and how to tell."""

    name: str
    src: str  # pod role that sends
    dst: str  # address it sends to
    proto: str  # udp | tcp | icmp | icmp6
    port: int = 0
    # Keywords of the sender (send_udp/send_tcp/ping, or the shape method named by "sender"):
    # size, df, ttl, src_ip, count, ...; "wait": seconds to wait after sending.
    options: dict = field(default_factory=dict)
    to: str | None = None  # pod role that must receive it (None: nobody does)
    kernel: str = ""  # what the kernel does with it, in words: the "why" a tracer should name
    reply: tuple | None = None  # what the sender gets back: ("icmp", type, code) / ("icmp6", ..) / ("rst",)
    mtu: int | None = None  # the MTU the ICMP error carries
    counters: dict = field(default_factory=dict)  # role -> {nstat name: minimum increase}
    path: tuple = ()  # (role, ifname) the packet crosses, in order (tcpdump sees it on each)
    facts: dict = field(default_factory=dict)  # more ground truth, the shape's own (route, neighbour, ...)


@dataclass
class Outcome:
    """What happened when a scenario ran: receptions, what came back, counter increases."""

    scenario: Scenario
    received: int
    replies: list  # packets.Packet seen on the sender's eth0 coming back from the stack
    counters: dict  # role -> {name: increase} for the roles of scenario.counters
    result: object = None  # send_*()'s return value (source port, connect result, ping ok)

    def mismatches(self) -> list[str]:
        """How what happened differs from what the scenario says the kernel does ([] if it does not)."""
        sc, problems = self.scenario, []
        expected = sc.options.get("count", 1) * (2 if "with" in sc.options else 1) if sc.to else 0
        if self.received != expected:
            problems.append(f"{sc.to or 'nobody'} received {self.received}, expected {expected}")
        matching = [p for p in self.replies if _reply_kind(p.outer) == sc.reply and (sc.mtu is None or
                    p.outer.icmp_mtu == sc.mtu)]
        if sc.reply and not matching:
            problems.append(f"no {sc.reply} (mtu {sc.mtu}) came back: {[_reply_kind(p.outer) for p in self.replies]}")
        if not sc.reply and self.replies:
            problems.append(f"unexpected errors came back: {[_reply_kind(p.outer) for p in self.replies]}")
        for role, wanted in sc.counters.items():
            for name, minimum in wanted.items():
                if self.counters[role][name] < minimum:
                    problems.append(f"{role} {name} rose by {self.counters[role][name]}, expected >= {minimum}")
        return problems


class Shape:
    ROLES: tuple[str, ...] = ()  # namespaces, <prefix>-<role>, made in this order
    ipv6 = False  # IPv6 on in every namespace (else disabled: no DAD/RS/MLD chatter in traces)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        register_roles(cls.ROLES)  # so cleanup_stale() reaps a crashed run's namespaces

    def __init__(self, prefix: str | None = None, settle: float = 0.2, receive_timeout: float = 2.0):
        self.prefix = prefix or f"{DEFAULT_PREFIX}{os.getpid()}-{next(_counter)}"
        self.settle, self.receive_timeout = settle, receive_timeout
        self.ns = {role: f"{self.prefix}-{role}" for role in self.ROLES}
        self.ns_inode: dict[str, int] = {}
        self.pods: dict[str, cni.PodInterface] = {}
        self.receivers: dict[tuple, Receiver] = {}
        self._procs: list[subprocess.Popen] = []
        self._up = False
        self.build_seconds = 0.0
        self.scenarios: list[Scenario] = []  # filled by _build()

    # -- lifecycle

    def __enter__(self):
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self):
        started = time.monotonic()
        self.remove_namespaces()  # idempotent: leftovers of a crashed run with this prefix
        self._up = True
        try:
            for role in self.ROLES:
                _pr_netns().create(self.ns[role])
                self.ns_inode[role] = netns_inode(self.ns[role])
                run_in_netns(self.ns[role], self._base_sysctls)
            self._build()
        except BaseException:
            self.down()
            raise
        self.build_seconds = time.monotonic() - started
        return self

    def down(self) -> None:
        """Stop receivers and started processes (by PID), delete the namespaces and CNI leases."""
        stop_processes(self.receivers, self._procs)
        if self._up:
            self.remove_namespaces()
        self._up = False

    close = down

    def remove_namespaces(self) -> None:
        """Delete this prefix's namespaces (ending what runs in them) and CNI leases, built or not."""
        for role in reversed(self.ROLES):
            remove_netns(self.ns[role])
        cni.remove_data_dir(self.prefix)

    def _base_sysctls(self) -> None:
        if os.path.exists("/proc/sys/net/ipv6"):
            # Before any link exists, so "default" covers every link made later.
            off = 0 if self.ipv6 else 1
            for key in ("all", "default"):
                write_sysctl(f"net.ipv6.conf.{key}.disable_ipv6", off)
                write_sysctl(f"net.ipv6.conf.{key}.accept_dad", 0)  # addresses usable at once
                write_sysctl(f"net.ipv6.conf.{key}.router_solicitations", 0)  # no RS chatter in traces
        for key in ("all", "default"):  # not whatever the host's init_net has: new namespaces copy it
            write_sysctl(f"net.ipv4.conf.{key}.rp_filter", 0)
        # Every ICMP error a scenario causes is sent, however often a test repeats it (per-destination
        # rate limits off; ip_error()'s own limit for unreachable routes stays: 5, then 1/s).
        write_sysctl("net.ipv4.icmp_ratelimit", 0)
        if self.ipv6:
            write_sysctl("net.ipv6.icmp.ratelimit", 0)
        with _iproute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def _build(self) -> None:
        raise NotImplementedError

    # -- running things inside a namespace

    def netlink(self, role: str, fn, *args):
        """fn(ipr, *args) with a pyroute2 IPRoute of the role's namespace."""
        def call():
            with _iproute() as ipr:
                return fn(ipr, *args)
        return run_in_netns(self.ns[role], call)

    def sysctl(self, role: str, key: str, value) -> None:
        run_in_netns(self.ns[role], write_sysctl, key, value)

    def exec(self, role: str, argv: list[str], check: bool = True, timeout: float = 60.0,
             input: str | None = None) -> subprocess.CompletedProcess:
        proc = run_in_netns(self.ns[role], subprocess.run, argv, input=input, capture_output=True, text=True,
                            timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {role}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def popen(self, role: str, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start argv in the role's namespace; ended by PID at teardown if still running."""
        proc = run_in_netns(self.ns[role], subprocess.Popen, argv, **kwargs)
        self._procs.append(proc)
        return proc

    def socket(self, role: str, family=socket.AF_INET, type=socket.SOCK_DGRAM, proto: int = 0) -> socket.socket:
        return run_in_netns(self.ns[role], socket.socket, family, type, proto)

    def pin_mac(self, role: str, ifname: str, mac: str) -> None:
        """A fixed MAC (a bridge otherwise takes a port's, which changes pkt_type from run to run)."""
        self.netlink(role, lambda ipr: ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], address=mac))

    def add_pod(self, network: cni.CniNetwork, node: str, pod: str, **overrides) -> cni.PodInterface:
        self.pods[pod] = network.add(self.ns[node], self.ns[pod], container_id=pod, **overrides)
        return self.pods[pod]

    # -- traffic

    def start_receiver(self, pod: str, proto: str = "udp", port: int = 9000, family: int = 4) -> Receiver:
        key = (pod, proto, port, family)
        if key not in self.receivers:
            self.receivers[key] = Receiver(self.ns[pod], pod, proto, port, family=family)
        return self.receivers[key]

    def send_udp(self, pod: str, dst: str, port: int, size: int | None = None, payload: bytes = b"skbtracer-probe",
                 df: bool | None = None, ttl: int | None = None, src_ip: str | None = None, sport: int = 0,
                 count: int = 1, **_) -> tuple[int, list[str]]:
        """Send `count` datagrams (`size` bytes of payload, or `payload`) from the pod; returns the
        source port and the errno names of sends that failed (EMSGSIZE after a frag-needed, ...)."""
        v6 = ":" in dst
        sock = self.socket(pod, socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        data = payload if size is None else (payload * (size // len(payload) + 1))[:size]
        errors = []
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if df is not None:
                sock.setsockopt(*((socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER) if v6 else (socket.IPPROTO_IP, IP_MTU_DISCOVER)),
                                PMTUDISC_PROBE if df else PMTUDISC_DONT)
            if ttl is not None:
                sock.setsockopt(*((socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS) if v6 else
                                  (socket.IPPROTO_IP, socket.IP_TTL)), ttl)
            sock.bind((src_ip or ("::" if v6 else "0.0.0.0"), sport))
            for _ in range(count):
                try:
                    sock.sendto(data, (dst, port))
                except OSError as exc:
                    errors.append(errno.errorcode.get(exc.errno, str(exc.errno)))
            return sock.getsockname()[1], errors

    def send_tcp(self, pod: str, dst: str, port: int, line: bytes = b"skbtracer-probe", timeout: float = 3.0,
                 sport: int = 0, **_) -> str:
        """Connect and send a line: "sent", "refused" (a RST came back), "timeout" or an errno name."""
        sock = self.socket(pod, socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(timeout)
            if sport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("::" if ":" in dst else "0.0.0.0", sport))
            try:
                sock.connect((dst, port))
                sock.sendall(line + b"\n")
                sock.shutdown(socket.SHUT_WR)
                sock.recv(1)  # the listener's close: the line has arrived
            except ConnectionRefusedError:
                return "refused"
            except TimeoutError:
                return "timeout"
            except OSError as exc:
                return errno.errorcode.get(exc.errno, str(exc))
        return "sent"

    def ping(self, pod: str, dst: str, port: int = 0, count: int = 1, timeout: int = 1, size: int | None = None,
             ttl: int | None = None, df: bool | None = None, ident: int | None = None, **_) -> bool:
        argv = ["ping", "-n", "-c", str(count), "-W", str(timeout)]
        argv += ["-e", str(ident)] if ident is not None else []
        argv += ["-s", str(size)] if size is not None else []
        argv += ["-t", str(ttl)] if ttl is not None else []
        argv += ["-M", "do" if df else "dont"] if df is not None else []
        return self.exec(pod, argv + [dst], check=False, timeout=count * timeout + 10).returncode == 0

    def received(self, rx: Receiver, timeout: float | None = None) -> int:
        """Receptions so far, once nothing new arrived for `settle` s (waiting up to `timeout` for the first)."""
        deadline = time.monotonic() + (self.receive_timeout if timeout is None else timeout)
        count = -1
        while True:
            time.sleep(self.settle)
            now = len(rx.snapshot())
            if now == count and (now > 0 or time.monotonic() >= deadline):
                return now
            count = now

    # -- ground truth

    def capture(self, role: str, ifname: str, expression: str = "") -> Capture:
        """tcpdump on `ifname` in the role's namespace, until .stop() (or the `with` block ends)."""
        return Capture(lambda argv, **kw: self.popen(role, argv, **kw), ifname, expression)

    def captures(self, where) -> dict:
        """{(role, ifname): Capture} for each place, the tcpdumps started together (each start costs
        a second or more in a TCG guest), returned once all of them listen."""
        caps = {}
        for role, ifname in where:
            if (role, ifname) not in caps:
                caps[(role, ifname)] = Capture(lambda argv, r=role, **kw: self.popen(r, argv, **kw), ifname, wait=False)
        try:
            for cap in caps.values():
                cap.wait_listening()
        except BaseException:
            stop_all(caps.values(), timeout=0)
            raise
        return caps

    def counters(self, role: str) -> dict[str, int]:
        """The role's SNMP/netstat counters under nstat's names (IpFragFails, TcpExtIPReversePathFilter, ...)."""
        return run_in_netns(self.ns[role], read_counters)

    def link_stats(self, role: str, ifname: str) -> dict[str, int]:
        def stats(ipr):
            link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
            return dict(link.get_attr("IFLA_STATS64") or {})
        return self.netlink(role, stats)

    def neighbour(self, role: str, address: str) -> str | None:
        """NUD state of `address` in the role's neighbour table (FAILED, REACHABLE, ...), or None."""
        def state(ipr):
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            for n in ipr.get_neighbours(family=family):
                if n.get_attr("NDA_DST") == address:
                    return NUD_STATES.get(n["state"], hex(n["state"]))
            return None
        return self.netlink(role, state)

    def run(self, sc: Scenario, watch: tuple = ()) -> tuple[Outcome, dict]:
        """Send one scenario with a capture on the sender's eth0 (for what comes back) and on each
        (role, ifname) of `watch`; returns the Outcome and {(role, ifname): Capture}."""
        family = 6 if ":" in sc.dst else 4
        rx = self.start_receiver(sc.to, sc.proto, sc.port, family) if sc.to and sc.proto != "icmp" else None
        if rx:
            rx.reset()
        before = {role: self.counters(role) for role in sc.counters}
        caps = self.captures(((sc.src, "eth0"), *watch))
        options = dict(sc.options)
        sender = getattr(self, options.pop("sender", None) or {"udp": "send_udp", "tcp": "send_tcp"}.get(sc.proto, "ping"))
        wait = options.pop("wait", 0)
        try:
            result = sender(sc.src, sc.dst, sc.port, **options)
            received = self.received(rx) if rx else 0
            time.sleep(max(self.settle, wait))  # let ICMP errors, neighbour states and counters land
        finally:
            stop_all(caps.values())
        if sc.proto == "icmp" and sc.to:
            received = int(bool(result))
        mine = {i.split("/")[0] for i in self.pod_addresses(sc.src)} | {sc.options.get("src_ip")}
        replies = [p for p in caps[(sc.src, "eth0")].packets if p.outer.dst in mine and is_error(p.outer)]
        deltas = {role: _delta(before[role], self.counters(role), sc.counters[role]) for role in sc.counters}
        return Outcome(sc, received, replies, deltas, result), caps

    def pod_addresses(self, pod: str) -> list[str]:
        return [str(i) for i in self.pods[pod].ips] if pod in self.pods else []

    def scenario(self, name: str) -> Scenario:
        return next(s for s in self.scenarios if s.name == name)

    def describe(self) -> dict:
        """Names and addresses of the live shape (for a human or a JSON dump)."""
        return {"prefix": self.prefix, "ns": self.ns, "ns_inode": self.ns_inode,
                "pods": {p: {"ips": [str(i) for i in v.ips], "host_ifname": v.host_ifname, "mac": v.mac}
                         for p, v in self.pods.items()},
                "scenarios": [s.name for s in self.scenarios]}


def read_counters() -> dict[str, int]:
    """Counters of the calling thread's namespace, named as nstat names them (thread-self: the
    thread may have setns()ed away from the rest of the process)."""
    out: dict[str, int] = {}
    for name in ("snmp", "netstat"):
        with open(f"/proc/thread-self/net/{name}") as f:
            lines = f.read().splitlines()
        for head, values in zip(lines[::2], lines[1::2]):
            group, names = head.split(":", 1)
            out.update({group + n: int(v) for n, v in zip(names.split(), values.split(":", 1)[1].split())})
    if os.path.exists("/proc/thread-self/net/snmp6"):
        with open("/proc/thread-self/net/snmp6") as f:
            out.update({n: int(v) for n, v in (line.split() for line in f if line.strip())})
    return out


def is_error(h) -> bool:
    """An ICMP error (unreachable, time exceeded, parameter problem; v6: also packet too big) or a TCP RST."""
    if h.tcp_flags is not None:
        return bool(h.tcp_flags & 0x04)
    return h.icmp_type in ((3, 11, 12) if h.version == 4 else (1, 2, 3, 4))


def _reply_kind(h) -> tuple:
    if h.tcp_flags is not None:
        return ("rst",) if h.tcp_flags & 0x04 else ("tcp", h.tcp_flags)
    return ("icmp" if h.version == 4 else "icmp6", h.icmp_type, h.icmp_code)


def _delta(before: dict, after: dict, names) -> dict[str, int]:
    return {n: after.get(n, 0) - before.get(n, 0) for n in names}


def cleanup_stale() -> list[str]:
    """Namespaces and CNI lease directories of dead runs (this module's shapes and the seed's)."""
    return _cleanup_ns() + cni.remove_stale_data_dirs()

