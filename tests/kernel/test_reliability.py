"""skbtracer on a node in trouble: things vanish while it traces, its
output fails, it is killed with -9, two of it run at once.

Traffic is ping between network namespaces made here (addresses in
10.216.0.0/24, which exist only inside them). Every test that involves
probes runs on the host (tracepoints) and in the 6.1 guest (kprobes); the
failing-output tests are host only (no probes involved, and each tracer
start costs a compile in the guest)."""

import json
import os
import re
import signal
import subprocess
import tempfile
import time
import uuid

import pytest
from conftest import BACKEND, mounted_tmpfs

from skbtracer_lib.program import kernel
from testbed import topology
from testbed.tracer import PYTHON, SKBTRACER, StderrReadyRun, TracerRun, parse_rows

NET = "10.216.0."
HERE = NET + "1"           # netns a: the filter's address, never changes

host_only = pytest.mark.skipif(BACKEND == "kprobe", reason="host only: output faults involve "
                               "no probes, and a tracer start costs a compile in the guest")


def ip(*args, check=True):
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


class Namespaces:
    """Network namespaces skbt-rel-<id>-<role>, made on demand, all
    removed at the end (the tests delete some of them on purpose)."""

    def __init__(self):
        self.prefix = "skbtrel%s" % uuid.uuid4().hex[:6]

    def name(self, role):
        return "%s-%s" % (self.prefix, role)

    def add(self, role):
        name = self.name(role)
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
        return name

    def inode(self, role):
        return topology.netns_inode(self.name(role))

    def link(self, role_a, role_b, peer):
        """veth va in role_a (HERE) <-> vb in role_b (NET + peer)."""
        a, b = self.name(role_a), self.name(role_b)
        # a deleted namespace takes its end of an old pair away asynchronously
        deadline = time.monotonic() + 30
        while ip("-n", a, "link", "show", "va", check=False).returncode == 0:
            assert time.monotonic() < deadline, "the old va is still in %s" % a
            time.sleep(0.1)
        ip("-n", a, "link", "add", "va", "type", "veth", "peer", "vb", "netns", b)
        ip("-n", a, "addr", "add", HERE + "/24", "dev", "va")
        ip("-n", b, "addr", "add", NET + "%d/24" % peer, "dev", "vb")
        ip("-n", a, "link", "set", "va", "up")
        ip("-n", b, "link", "set", "vb", "up")

    def ping(self, role, peer, count=2):
        return subprocess.run(["ip", "netns", "exec", self.name(role), "ping", "-n", "-q",
                               "-c", str(count), "-i", "0.2", "-W", "2", NET + "%d" % peer],
                              capture_output=True, text=True).returncode == 0

    def remove_all(self):
        for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
            if name.startswith(self.prefix + "-"):
                topology.remove_netns(name)


@pytest.fixture
def spaces():
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.remove_all()


def rows_to(rows, peer):
    """Rows of ICMP between HERE and NET+peer."""
    address = NET + "%d" % peer
    return [r for r in rows if re.search(r"[:>]%s(->|$)" % re.escape(address), r.pkt)]


def summary_rows(stderr):
    match = re.search(r"skbtracer: (\d+) rows printed, (\d+) events lost", stderr)
    assert match, stderr
    return int(match.group(1)), int(match.group(2))


# ------------------------------------------------------------ things vanish

def test_namespaces_and_devices_vanish_while_tracing(spaces, settle):
    """One tracer through: devices deleted and re-created with the same
    names, a device moved to another netns, namespaces deleted (one while
    its events are still unread: shown by inode)."""
    a, b = spaces.add("a"), spaces.add("b")
    spaces.link("a", "b", 2)
    with TracerRun(["--names", "-H", HERE, "--proto", "icmp"]) as run:
        assert spaces.ping("a", 2)                       # 1: as built
        ip("-n", a, "link", "del", "va")                 # 2: the pair re-created
        spaces.link("a", "b", 3)
        assert spaces.ping("a", 3)
        c = spaces.add("c")                              # 3: vb moved to c
        ip("-n", b, "link", "set", "vb", "netns", c)
        ip("-n", c, "addr", "add", NET + "4/24", "dev", "vb")
        ip("-n", c, "link", "set", "vb", "up")
        assert spaces.ping("a", 4)
        ip("netns", "delete", b)                         # b is gone, c still there
        d = spaces.add("d")                              # 4: d deleted before its
        ip("-n", c, "link", "set", "vb", "netns", d)     #    events are read
        ip("-n", d, "addr", "add", NET + "5/24", "dev", "vb")
        ip("-n", d, "link", "set", "vb", "up")
        d_inode = spaces.inode("d")
        time.sleep(settle)
        os.kill(run.proc.pid, signal.SIGSTOP)
        try:
            assert spaces.ping("a", 5, count=1)
            ip("netns", "delete", d)                     # takes vb and va with it
        finally:
            os.kill(run.proc.pid, signal.SIGCONT)
        spaces.link("a", "c", 6)                         # 5: tracing goes on
        assert spaces.ping("a", 6)
        time.sleep(settle)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    rows = run.rows
    printed, _lost = summary_rows(run.stderr)
    assert printed == len(rows)
    for peer in (2, 3, 4, 5, 6):
        assert rows_to(rows, peer), "no rows for phase %d:\n%s" % (peer, run.stdout)
    for row in rows:
        assert re.fullmatch(r"I_(request|reply):10\.216\.0\.\d->10\.216\.0\.\d", row.pkt), row.line
        assert row.ifname in ("va", "vb", ""), row.line   # "": read from a socket
    labels = {}
    for peer in (2, 3, 4, 5, 6):
        for ifname in ("va", "vb"):
            labels[peer, ifname] = {r.netns for r in rows_to(rows, peer) if r.ifname == ifname}
    assert labels[2, "va"] == labels[5, "va"] == {a}
    assert labels[2, "vb"] == labels[3, "vb"] == {b}
    assert labels[4, "vb"] == labels[6, "vb"] == {c}
    assert labels[5, "vb"] == {d_inode}, run.stdout      # gone before it was named


# ------------------------------------------------------------ output that fails

@pytest.fixture
def small_tmpfs():
    with mounted_tmpfs("64k") as where:
        yield where


def flood(spaces, seconds):
    """A few thousand pings a second from a to b, for at most seconds."""
    return subprocess.Popen(["ip", "netns", "exec", spaces.name("a"), "ping", "-n", "-q",
                             "-f", "-w", str(seconds), NET + "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def flood_until_exit(spaces, run):
    """Flood until the tracer ends by itself; its exit status."""
    pinger = flood(spaces, 30)
    try:
        return run.wait(60)
    finally:
        pinger.kill()
        pinger.wait()


def assert_whole_lines(path, parse):
    with open(path) as f:
        data = f.read()
    assert data.endswith("\n"), data[-200:]
    lines = data.splitlines()
    for line in lines:
        parse(line)
    return lines


def parse_row_line(line):
    if line.startswith("time "):
        return
    assert parse_rows(line), line


def assert_one_failure_line(proc_stderr, returncode, text):
    assert returncode == 1, proc_stderr
    failures = [line for line in proc_stderr.splitlines() if text in line]
    assert len(failures) == 1, proc_stderr
    assert "tracing stopped" in failures[0], proc_stderr
    assert "Traceback" not in proc_stderr


@host_only
def test_full_filesystem_keeps_whole_lines(spaces, small_tmpfs):
    spaces.add("a"), spaces.add("b")
    spaces.link("a", "b", 2)
    rows_path = os.path.join(small_tmpfs, "rows.txt")
    json_path = os.path.join(small_tmpfs, "rows.jsonl")
    run = StderrReadyRun(["-H", HERE, "--proto", "icmp", "-o", rows_path,
                          "--json=" + json_path])
    run.start()
    rc = flood_until_exit(spaces, run)
    assert_one_failure_line(run.stderr, rc, "No space left on device")
    rows = assert_whole_lines(rows_path, parse_row_line)
    objects = assert_whole_lines(json_path, json.loads)
    assert len(rows) > 10 and len(objects) > 10


@host_only
def test_file_that_cannot_grow_keeps_whole_lines(spaces, tmp_path):
    """The file stops taking writes while the tracer runs (its size limit
    is lowered under it, as a quota would): EFBIG."""
    spaces.add("a"), spaces.add("b")
    spaces.link("a", "b", 2)
    rows_path = str(tmp_path / "rows.txt")
    run = StderrReadyRun(["-H", HERE, "--proto", "icmp", "-o", rows_path])
    run.start()
    assert spaces.ping("a", 2)
    time.sleep(0.5)
    written = os.path.getsize(rows_path)
    assert written > 0
    subprocess.run(["prlimit", "--pid", str(run.proc.pid), "--fsize=%d" % (written + 3000)],
                   check=True)
    rc = flood_until_exit(spaces, run)
    assert_one_failure_line(run.stderr, rc, "File too large")
    lines = assert_whole_lines(rows_path, parse_row_line)
    assert len(lines) > 3 and os.path.getsize(rows_path) <= written + 3000


@host_only
def test_closed_pipe_with_json_rows_is_quiet(spaces):
    spaces.add("a"), spaces.add("b")
    spaces.link("a", "b", 2)
    proc = subprocess.Popen(["sh", "-c", "%s %s --json -H %s --proto icmp | head -n 3"
                             % (PYTHON, SKBTRACER, HERE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pinger = flood(spaces, 20)      # outlasts the attach, until head has its lines
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        pinger.kill()
        pinger.wait()
    assert proc.returncode == 0, err
    assert len(out.splitlines()) == 3 and all(json.loads(line) for line in out.splitlines())
    assert "Traceback" not in err and "Broken pipe" not in err and "BrokenPipe" not in err


@host_only
def test_closed_pipe_of_rows_and_stderr_is_status_0(spaces):
    """`2>&1 | head`: the tracer's own status is that of `| head`."""
    spaces.add("a"), spaces.add("b")
    spaces.link("a", "b", 2)
    proc = subprocess.Popen(["bash", "-c", "%s %s -H %s --proto icmp 2>&1 | head -n 3; "
                             "exit ${PIPESTATUS[0]}" % (PYTHON, SKBTRACER, HERE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pinger = flood(spaces, 20)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        pinger.kill()
        pinger.wait()
    assert (proc.returncode, err) == (0, ""), out
    assert len(out.splitlines()) == 3 and "Traceback" not in out


# ------------------------------------------------------------ kill -9, two at once

def bpf_ids(pid):
    """(prog ids, link ids) held by process pid's file descriptors."""
    progs, links = set(), set()
    fdinfo = "/proc/%d/fdinfo" % pid
    for fd in os.listdir(fdinfo):
        try:
            with open(os.path.join(fdinfo, fd)) as f:
                text = f.read()
        except OSError:
            continue
        progs.update(int(x) for x in re.findall(r"^prog_id:\s+(\d+)", text, re.M))
        links.update(int(x) for x in re.findall(r"^link_id:\s+(\d+)", text, re.M))
    return progs, links


def bpftool_ids(kind):
    out = subprocess.run(["bpftool", kind, "show", "-j"], check=True, capture_output=True,
                         text=True).stdout
    return {entry["id"] for entry in json.loads(out or "[]")}


KPROBES_LIST = "/sys/kernel/debug/kprobes/list"


def kprobes_listed():
    """Lines of the kernel's kprobe list (kprobe backend only; debugfs is
    mounted in the guest, which is ours, when it is not yet)."""
    if BACKEND != "kprobe":
        return []
    if not os.path.exists(KPROBES_LIST):
        subprocess.run(["mount", "-t", "debugfs", "debugfs", "/sys/kernel/debug"], check=True)
    with open(KPROBES_LIST) as f:
        return sorted(f.read().splitlines())


def wait_until_gone(progs, links, seconds=15):
    """Programs and links are freed asynchronously after the last fd closes."""
    deadline = time.monotonic() + seconds
    while True:
        left_progs = progs & bpftool_ids("prog")
        left_links = links & bpftool_ids("link")
        if not (left_progs or left_links) or time.monotonic() > deadline:
            return left_progs, left_links
        time.sleep(0.2)


def start_and_kill(args, when):
    """Start skbtracer, SIGKILL it once it holds a BPF program ("attaching")
    or once it prints its header ("attached"); (its pid, (prog ids, link ids) it held)."""
    proc = subprocess.Popen([PYTHON, SKBTRACER] + args, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    held = (set(), set())
    try:
        if when == "attached":
            assert proc.stdout.readline().startswith("time"), "no header"
            held = bpf_ids(proc.pid)
        else:
            deadline = time.monotonic() + 300
            while not held[0] and proc.poll() is None and time.monotonic() < deadline:
                held = bpf_ids(proc.pid)
                time.sleep(0.01)
        assert proc.poll() is None, "skbtracer ended before it was killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    return proc.pid, held


def header_farms_of(pids):
    """Merged header trees (kernel.find_header_tree) left by these pids."""
    return [entry for entry in os.listdir(tempfile.gettempdir())
            for pid in pids if entry.startswith("%s%d-" % (kernel.FARM_PREFIX, pid))]


def test_kill9_leaves_nothing_behind_and_two_tracers_run_after(spaces, settle):
    spaces.add("a"), spaces.add("b")
    spaces.link("a", "b", 2)
    kprobes_before = kprobes_listed()
    killed = []
    for when in ("attaching", "attached"):
        pid, (progs, links) = start_and_kill(["-H", HERE, "--proto", "icmp", "--drop"], when)
        killed.append(pid)
        assert progs, "held no BPF program when killed %s" % when
        assert wait_until_gone(progs, links) == (set(), set()), when
        assert kprobes_listed() == kprobes_before, when
    # the next runs start normally; two at once, each sees only its own
    ip("-n", spaces.name("b"), "addr", "add", NET + "3/24", "dev", "vb")
    with TracerRun(["-H", NET + "2", "--proto", "icmp"]) as first, \
            TracerRun(["-H", NET + "3", "--proto", "icmp"]) as second:
        assert spaces.ping("a", 2) and spaces.ping("a", 3)
        time.sleep(settle)
    for run, mine, theirs in ((first, 2, 3), (second, 3, 2)):
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
        assert rows_to(run.rows, mine), run.stdout
        assert not rows_to(run.rows, theirs), run.stdout
        assert summary_rows(run.stderr) == (len(run.rows), 0)
    assert kprobes_listed() == kprobes_before
    assert header_farms_of(killed) == []      # the next run removed them


# ------------------------------------------------------------ modules and tables (guest)

guest_only = pytest.mark.skipif(BACKEND != "kprobe", reason="guest only: module probes and "
                                "their removal need kprobes and a kernel of our own")


def modprobe(*args):
    subprocess.run(["modprobe", *args], check=True, capture_output=True, text=True)


def bridged(spaces, peer):
    """va in a <-> vb enslaved to bridge br0 in b, which has NET+peer."""
    a, b = spaces.name("a"), spaces.name("b")
    ip("-n", a, "link", "add", "va", "type", "veth", "peer", "vb", "netns", b)
    ip("-n", a, "addr", "add", HERE + "/24", "dev", "va")
    ip("-n", b, "link", "add", "br0", "type", "bridge")
    ip("-n", b, "link", "set", "vb", "master", "br0")
    ip("-n", b, "addr", "add", NET + "%d/24" % peer, "dev", "br0")
    for ns, dev in ((a, "va"), (b, "vb"), (b, "br0")):
        ip("-n", ns, "link", "set", dev, "up")


def in_netns(spaces, role, *argv, stdin=None):
    subprocess.run(["ip", "netns", "exec", spaces.name(role), *argv], input=stdin, check=True,
                   capture_output=True, text=True)


NFT_RULESET = """table inet skbt {
    chain in {
        type filter hook input priority 0;
        ip protocol icmp accept
    }
}
"""
IPTABLES_LEGACY = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p icmp -j ACCEPT
COMMIT
"""


@guest_only
def test_modules_removed_and_loaded_again_tables_replaced(spaces, settle):
    """bridge and veth unloaded and loaded again while tracing: the bridge's
    probes are said to be gone in one line, then re-attached; the nft
    ruleset flushed and the iptables-legacy filter table replaced."""
    br_netfilter = os.path.isdir("/sys/module/br_netfilter")
    if br_netfilter:
        modprobe("-r", "br_netfilter")      # holds bridge; not needed here
    modprobe("bridge")
    modprobe("veth")
    spaces.add("a"), spaces.add("b")
    bridged(spaces, 2)
    in_netns(spaces, "a", "nft", "-f", "-", stdin=NFT_RULESET)
    in_netns(spaces, "a", "iptables-legacy-restore", stdin=IPTABLES_LEGACY)
    try:
        with TracerRun(["-H", HERE, "--proto", "icmp", "--route", "--iptable"]) as run:
            assert spaces.ping("a", 2)
            in_netns(spaces, "a", "nft", "flush", "ruleset")
            in_netns(spaces, "a", "iptables-legacy-restore", stdin=IPTABLES_LEGACY)
            assert spaces.ping("a", 2)
            ip("netns", "delete", spaces.name("b"))   # its veth and bridge go with it
            time.sleep(0.5)                           # netns cleanup is asynchronous
            modprobe("-r", "bridge", "veth")
            time.sleep(2.5)                           # the tracer looks every second
            modprobe("bridge")
            modprobe("veth")
            time.sleep(2.5)
            spaces.add("b")
            bridged(spaces, 3)
            assert spaces.ping("a", 3)
            time.sleep(settle)
    finally:
        if br_netfilter:
            modprobe("br_netfilter")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    said = [line for line in run.stderr.splitlines() if "module bridge" in line]
    assert len(said) == 2, run.stderr
    assert said[0].startswith("skbtracer: module bridge was unloaded: br_handle_frame")
    assert re.match(r"skbtracer: module bridge is loaded again: re-attached (\d+) of its \1 "
                    r"probes$", said[1]), said[1]
    before, after = rows_to(run.rows, 2), rows_to(run.rows, 3)
    for rows in (before, after):
        functions = {r.function for r in rows}
        assert "br_handle_frame" in functions, run.stdout
        assert "ip_rcv" in functions, run.stdout
    verdicts = [r for r in before if r.is_verdict]
    assert any(".filter.INPUT." in r.trace for r in verdicts), run.stdout   # legacy table
    assert summary_rows(run.stderr)[0] == len(run.rows)
