"""Ground truth from the kernel's own tools, read inside a namespace: which rule matched, what
conntrack holds and counted, what IPVS chose.  The judges of the kube-proxy and conntrack shapes.

    iptables_state(run, "nft")     `iptables-nft-save -c`: every rule with its counters and number
    nft_ruleset(netns)             python3-nftables JSON: rules with handles, comments, counters
    NftTrace(shape, "node1")       `nft monitor trace`: the rules each traced packet went through
    conntrack_entries(run)         `conntrack -L -o id`: tuples, state, flags, id
    conntrack_stats(run)           `conntrack -S`: found, invalid, insert_failed, drop, clash_resolve...
    ConntrackEvents(shape, ns)     `conntrack -E -o id`: [NEW] / [UPDATE] / [DESTROY] as they happen
    ipvs_stats(run), ipvs_connections(run)   `ipvsadm -Ln --stats --exact`, `ipvsadm -Lnc`

`run` is a callable taking an argv and returning its stdout, run in the namespace (a shape's
`node_run`); readers of files the kernel prints are parsed here, nothing is guessed.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

from .topology import run_in_netns

# ---------------------------------------------------------------- iptables


@dataclass(frozen=True)
class IptRule:
    table: str
    chain: str
    number: int  # 1-based position in its chain, as `iptables -L --line-numbers` counts
    spec: str  # the rule as `iptables -S` prints it, without "-A CHAIN "
    packets: int
    bytes: int

    @property
    def comment(self) -> str | None:
        words = shlex.split(self.spec)
        for i, word in enumerate(words[:-1]):
            if word == "--comment":
                return words[i + 1]
        return None

    @property
    def target(self) -> str | None:
        words = shlex.split(self.spec)
        return words[words.index("-j") + 1] if "-j" in words else None


@dataclass(frozen=True)
class IptChain:
    table: str
    name: str
    policy: str | None  # None for user chains
    packets: int
    bytes: int


@dataclass
class IptablesState:
    rules: list[IptRule] = field(default_factory=list)
    chains: dict[tuple[str, str], IptChain] = field(default_factory=dict)

    def find(self, table: str | None = None, chain: str | None = None, comment: str | None = None,
             contains: str | None = None) -> list[IptRule]:
        return [r for r in self.rules
                if (table is None or r.table == table) and (chain is None or r.chain == chain)
                and (comment is None or r.comment == comment) and (contains is None or contains in r.spec)]

    def rule(self, **match) -> IptRule:
        """The one rule that matches (ValueError when none or several do)."""
        found = self.find(**match)
        if len(found) != 1:
            raise ValueError(f"{len(found)} rules match {match}")
        return found[0]

    def hits(self, before: "IptablesState | None" = None) -> dict[tuple[str, str, int], int]:
        """(table, chain, number) -> packets counted since `before` (rules that counted any)."""
        old = {(r.table, r.chain, r.number): r.packets for r in (before.rules if before else [])}
        out = {}
        for r in self.rules:
            delta = r.packets - old.get((r.table, r.chain, r.number), 0)
            if delta:
                out[(r.table, r.chain, r.number)] = delta
        return out

    def policy_hits(self, before: "IptablesState | None" = None) -> dict[tuple[str, str], int]:
        """(table, chain) -> packets the built-in chain's policy decided since `before`."""
        out = {}
        for key, c in self.chains.items():
            if c.policy is None:
                continue
            delta = c.packets - (before.chains[key].packets if before and key in before.chains else 0)
            if delta:
                out[key] = delta
        return out


_COUNTED_RULE = re.compile(r"^\[(\d+):(\d+)\] -A (\S+) ?(.*)$")
_CHAIN = re.compile(r"^:(\S+) (\S+) \[(\d+):(\d+)\]$")


def parse_iptables_save(text: str) -> IptablesState:
    """`iptables-save -c` output -> rules numbered per chain, chain policies with their counters."""
    state, table, numbers = IptablesState(), None, {}
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif m := _CHAIN.match(line):
            policy = None if m.group(2) == "-" else m.group(2)
            state.chains[(table, m.group(1))] = IptChain(table, m.group(1), policy, int(m.group(3)), int(m.group(4)))
        elif m := _COUNTED_RULE.match(line):
            chain = m.group(3)
            numbers[(table, chain)] = numbers.get((table, chain), 0) + 1
            state.rules.append(IptRule(table, chain, numbers[(table, chain)], m.group(4),
                                       int(m.group(1)), int(m.group(2))))
    return state


def iptables_state(run, flavour: str) -> IptablesState:
    return parse_iptables_save(run([f"iptables-{flavour}-save", "-c"]))


# ---------------------------------------------------------------- nftables


def nft_ruleset(netns: str) -> list[dict]:
    """`nft -a list ruleset` as python3-nftables' JSON objects (the "nftables" list), read in netns."""
    def read():
        import nftables  # Debian's python3-nftables (libnftables); its netlink socket joins our netns

        nft = nftables.Nftables()
        nft.set_json_output(True)
        nft.set_handle_output(True)
        rc, out, err = nft.cmd("list ruleset")
        if rc != 0:
            raise RuntimeError(f"nft list ruleset: {err.strip()}")
        import json

        return json.loads(out)["nftables"]

    return run_in_netns(netns, read)


def nft_rules(ruleset: list[dict], table: str | None = None) -> list[dict]:
    """The rule objects of a JSON ruleset (each with family, table, chain, handle, expr, comment?)."""
    return [o["rule"] for o in ruleset if "rule" in o and (table is None or o["rule"]["table"] == table)]


def nft_counter(rule: dict) -> int | None:
    """Packets of the rule's `counter` statement, None when it has none."""
    for stmt in rule.get("expr", []):
        if "counter" in stmt and isinstance(stmt["counter"], dict):
            return stmt["counter"].get("packets")
    return None


@dataclass(frozen=True)
class TraceLine:
    trace_id: str
    family: str
    table: str
    chain: str
    kind: str  # "packet", "rule", "policy", "verdict"
    text: str  # the rule as nft prints it (kind "rule"), else the rest of the line
    handle: int | None
    verdict: str | None  # "continue", "accept", "drop", "jump X", "goto X", ...


_TRACE = re.compile(r"^trace id (\S+) (\S+) (\S+) (\S+) (packet|rule|policy|verdict|unknown)\b:? ?(.*)$")


def parse_trace(line: str) -> TraceLine | None:
    m = _TRACE.match(line.strip())
    if not m:
        return None
    tid, family, table, chain, kind, rest = m.groups()
    handle = verdict = None
    if kind == "rule":
        if v := re.search(r" \(verdict ([^)]*)\)$", rest):
            verdict, rest = v.group(1), rest[: v.start()]
        if h := re.search(r" # handle (\d+)$", rest):
            handle, rest = int(h.group(1)), rest[: h.start()]
    elif kind in ("policy", "verdict"):
        verdict = rest.strip()
    return TraceLine(tid, family, table, chain, kind, rest, handle, verdict)


TRACE_TABLE = "skbt-trace"


class _Monitor:
    """A netlink monitor (`nft monitor trace`, `conntrack -E`) running in a namespace while a block
    runs.  Ready and drained are known, not guessed: a canary datagram from the namespace to
    CANARY_IP is sent until the monitor prints it (on entry: subscribed; on exit: everything
    before it printed), so a slow TCG guest loses no line."""

    argv: list[str] = []

    def __init__(self, shape, ns: str):
        self.shape, self.ns = shape, ns
        self.raw: list[str] = []
        self._port = CANARY_PORT

    def __enter__(self):
        self.proc = self.shape.popen(self.ns, self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._canary()
        return self

    def __exit__(self, *exc):
        try:
            self._canary()
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self._reader.join(timeout=10)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.raw.append(line.rstrip("\n"))

    def _canary(self, timeout: float = 20.0) -> None:
        self._port += 1
        deadline = time.monotonic() + timeout
        while not any(self._is_canary(line, self._port) for line in list(self.raw)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} in {self.ns} printed no canary (port {self._port})")
            # A new socket (source port) each time: one sent before the monitor listened made a
            # conntrack entry whose NEW event is gone, and its repeats would make no new one.
            with self.shape.socket(self.ns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"canary", (CANARY_IP, self._port))
            time.sleep(0.1)

    @staticmethod
    def _is_canary(line: str, port: int) -> bool:
        raise NotImplementedError


CANARY_IP, CANARY_PORT = "127.0.0.127", 40000


class NftTrace(_Monitor):
    """`nft -a monitor trace` in a namespace while the body runs, with a table of its own
    (priority -500 on prerouting and output) that sets nftrace on packets matching `match`.
    kube-proxy's table is left as it is; leaving the block removes the trace table.
    lines() -> TraceLine for every rule, policy and verdict the kernel reported (the canaries'
    left out).  Only rules that matched are reported: a rule whose match failed has no line."""

    argv = ["nft", "-a", "monitor", "trace"]

    def __init__(self, shape, ns: str, match: str = "meta l4proto { tcp, udp }"):
        super().__init__(shape, ns)
        self.match = match

    def __enter__(self) -> "NftTrace":
        t = f"ip {TRACE_TABLE}"
        rules = [f"add table {t}", f"delete table {t}", f"add table {t}",
                 f"add chain {t} pre {{ type filter hook prerouting priority -500 ; }}",
                 f"add chain {t} out {{ type filter hook output priority -500 ; }}",
                 f"add rule {t} pre {self.match} meta nftrace set 1",
                 f"add rule {t} out {self.match} meta nftrace set 1",
                 f"add rule {t} out ip daddr {CANARY_IP} meta nftrace set 1"]
        self.shape.exec(self.ns, ["nft", "-f", "-"], input="\n".join(rules) + "\n")
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            super().__exit__(*exc)
        finally:
            self.shape.exec(self.ns, ["nft", "delete", "table", "ip", TRACE_TABLE], check=False)

    @staticmethod
    def _is_canary(line: str, port: int) -> bool:
        return f"ip daddr {CANARY_IP} " in line and f"udp dport {port} " in line

    def lines(self, table: str | None = None) -> list[TraceLine]:
        parsed = [p for p in map(parse_trace, self.raw) if p]
        canaries = {p.trace_id for p in parsed if p.kind == "packet" and f"ip daddr {CANARY_IP} " in p.text}
        return [p for p in parsed if p.trace_id not in canaries and (table is None or p.table == table)]


# ---------------------------------------------------------------- conntrack


@dataclass(frozen=True)
class CtEntry:
    proto: str
    state: str | None  # TCP state (ESTABLISHED, SYN_SENT, ...), None for UDP
    orig: dict  # src, dst, sport, dport (ICMP: type, code, id)
    reply: dict
    flags: tuple[str, ...]  # ASSURED, UNREPLIED, ...
    extra: dict  # mark, zone, use, id

    @property
    def assured(self) -> bool:
        return "ASSURED" in self.flags


_TUPLE_KEYS = ("src", "dst", "sport", "dport", "type", "code")  # and "id" for ICMP
_EVENT = re.compile(r"^\s*\[(NEW|UPDATE|DESTROY)\]\s+(.*)$")


def parse_conntrack_line(line: str) -> CtEntry | None:
    words = line.split()
    if len(words) < 3 or "=" in words[0]:
        return None
    proto, state, groups, flags, extra = words[0], None, [{}, {}], [], {}
    side = 0  # 0: original tuple, 1: reply tuple, 2: past both (mark=, use=, zone=, id=...)
    for word in words[3:]:
        if word.startswith("[") and word.endswith("]"):
            flags.append(word.strip("[]"))
        elif "=" in word:
            key, value = word.split("=", 1)
            tuple_key = key in _TUPLE_KEYS or (key == "id" and proto.startswith("icmp"))
            if side < 2 and tuple_key and not (key != "src" and key in groups[side]):
                if key == "src" and groups[side]:
                    side += 1
                if side < 2:
                    groups[side][key] = value
                    continue
            side = 2
            extra[key] = value
        elif word.isupper():
            state = word
    if not groups[0]:
        return None
    return CtEntry(proto, state, groups[0], groups[1], tuple(flags), extra)


def conntrack_entries(run, *args: str) -> list[CtEntry]:
    out = run(["conntrack", "-L", "-o", "id", *args])
    return [e for e in map(parse_conntrack_line, out.splitlines()) if e]


def conntrack_stats(run) -> dict[str, int]:
    """`conntrack -S` summed over CPUs (fields differ between kernels: whatever the kernel gives)."""
    total: dict[str, int] = {}
    for line in run(["conntrack", "-S"]).splitlines():
        for key, value in re.findall(r"(\w+)=(\d+)", line):
            if key != "cpu":
                total[key] = total.get(key, 0) + int(value)
    return total


def udp_counters(netns: str) -> dict[str, int]:
    """The Udp: line of the namespace's /proc/net/snmp (InDatagrams, NoPorts, InErrors, RcvbufErrors...):
    what reached UDP there, whether or not a slow listener read it in time."""
    def read():
        with open("/proc/thread-self/net/snmp") as f:  # the thread's netns, not the process's
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:])}

    return run_in_netns(netns, read)


def udp_arrived(netns: str) -> int:
    c = udp_counters(netns)
    return c["InDatagrams"] + c["InErrors"] + c["NoPorts"]


def stats_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


@dataclass(frozen=True)
class CtEvent:
    kind: str  # NEW, UPDATE, DESTROY
    entry: CtEntry


class ConntrackEvents(_Monitor):
    """`conntrack -E -o id` in a namespace while the body runs; events() afterwards (the canaries'
    entries, to 127.0.0.127, left out)."""

    argv = ["conntrack", "-E", "-o", "id"]

    @staticmethod
    def _is_canary(line: str, port: int) -> bool:
        return f"dst={CANARY_IP} " in line and f"dport={port} " in line

    def events(self) -> list[CtEvent]:
        out = []
        for line in self.raw:
            if (m := _EVENT.match(line)) and (entry := parse_conntrack_line(m.group(2))):
                if entry.orig.get("dst") != CANARY_IP:
                    out.append(CtEvent(m.group(1), entry))
        return out


# ---------------------------------------------------------------- IPVS


@dataclass
class IpvsService:
    proto: str  # TCP / UDP
    vip: str  # "10.96.0.10:53"
    scheduler: str | None
    conns: int
    inpkts: int
    outpkts: int
    reals: dict[str, dict[str, int]] = field(default_factory=dict)  # "ip:port" -> conns/inpkts/outpkts


def ipvs_stats(run) -> dict[str, IpvsService]:
    """`ipvsadm -Ln --stats --exact` -> "UDP 10.96.0.10:53" -> service with per-real-server counters."""
    services: dict[str, IpvsService] = {}
    current = None
    for line in run(["ipvsadm", "-Ln", "--stats", "--exact"]).splitlines():
        words = line.split()
        if len(words) == 7 and words[0] in ("TCP", "UDP", "SCTP"):
            current = IpvsService(words[0], words[1], None, *map(int, words[2:5]))
            services[f"{words[0]} {words[1]}"] = current
        elif len(words) == 7 and words[0] == "->" and current is not None and words[1][0].isdigit():
            current.reals[words[1]] = dict(zip(("conns", "inpkts", "outpkts"), map(int, words[2:5])))
    for line in run(["ipvsadm", "-Ln"]).splitlines():
        words = line.split()
        if len(words) >= 3 and f"{words[0]} {words[1]}" in services:
            services[f"{words[0]} {words[1]}"].scheduler = words[2]
    return services


@dataclass(frozen=True)
class IpvsConn:
    proto: str
    state: str
    source: str
    virtual: str
    destination: str


def ipvs_connections(run) -> list[IpvsConn]:
    out = []
    for line in run(["ipvsadm", "-Lnc"]).splitlines():
        words = line.split()
        if len(words) == 6 and words[0] in ("TCP", "UDP", "SCTP"):
            out.append(IpvsConn(words[0], words[2], words[3], words[4], words[5]))
    return out
