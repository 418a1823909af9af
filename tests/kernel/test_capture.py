"""-w FILE against real traffic (host: tracepoints; guest: kprobes): the
seed's scenario 1 as pcapng, read back with tshark and capinfos; the file
complete after SIGINT, -c N and SIGTERM; a full disk (a small tmpfs mounted
here) ends the trace with one line and a readable file.

Four tracer starts on the host; one in the guest (how a -w trace ends
involves no probes: -c, SIGTERM and the full disk are host only)."""

import os
import re
import shutil
import subprocess
from collections import Counter

import pytest

from conftest import BACKEND, mounted_tmpfs
from testbed.topology import SeedCluster
from testbed.tracer import TracerRun

TSHARK = shutil.which("tshark")
CAPINFOS = shutil.which("capinfos")
SPORT = 41101
MODES = ["--route", "--drop"] + (["--iptable"] if BACKEND == "kprobe" else [])

pytestmark = pytest.mark.skipif(TSHARK is None or CAPINFOS is None,
                                reason="tshark/capinfos are not installed (scripts/deps.sh)")


def tshark(path, *fields, where=None):
    argv = ["tshark", "-r", path, "-T", "fields", "-E", "separator=|"]
    if where:
        argv += ["-Y", where]
    argv += [a for f in fields for a in ("-e", f)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return [line.split("|") for line in result.stdout.splitlines()]


def capinfos(path):
    """capinfos' report; it fails on a cut or damaged file."""
    result = subprocess.run(["capinfos", path], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def packet_count(path):
    match = re.search(r"^Number of packets:\s+(\d+)", capinfos(path), re.M)
    return int(match.group(1)) if match else 0


def exit_rows(run):
    match = re.search(r"^skbtracer: (\d+) rows printed, 0 events lost$", run.stderr, re.M)
    assert match, run.stderr
    return int(match.group(1))


@pytest.fixture(scope="module")
def cluster():
    with SeedCluster(promisc=True) as c:
        c.start_udp_receiver("server")
        yield c


@pytest.fixture(scope="module")
def scenario1(cluster, tmp_path_factory, settle):
    """Scenario 1 (service -> server on the same node, promisc bridge) under
    one traced run with -w, stopped with SIGINT."""
    path = str(tmp_path_factory.mktemp("capture") / "scenario1.pcapng")
    args = ["-H", cluster.ip["client"], "--proto", "udp", "--names", "-w", path] + MODES
    pod, dst_ip, dst_port = cluster.targets["service"]
    with TracerRun(args) as run:
        cluster.reset_counts()
        cluster.send_udp("client", dst_ip, dst_port, sport=SPORT)
        received = cluster.received(pod, settle=settle)
    rows = [r for r in run.rows if ":%d->" % SPORT in r.pkt]
    yield path, run, rows, received


FIELDS = ("frame.interface_name", "frame.comment", "ip.ttl", "ip.dst", "udp.dstport")


def ours(path):
    return [dict(zip(FIELDS, f)) for f in tshark(path, *FIELDS, where="udp.srcport == %d" % SPORT)]


def test_sigint_leaves_a_complete_file_with_a_packet_per_row(scenario1):
    path, run, rows, received = scenario1
    assert run.returncode == 0, run.stderr
    assert received == 2
    assert rows
    assert packet_count(path) == exit_rows(run) == len(run.rows)
    assert "%d packets written to %s" % (len(run.rows), path) in run.stderr


def test_an_interface_for_every_place_the_rows_name(scenario1, cluster):
    path, _run, rows, _received = scenario1
    frames = ours(path)
    assert len(frames) == len(rows)
    assert {f["frame.interface_name"] for f in frames} == {"%s/%s" % (r.netns, r.ifname or "-")
                                                           for r in rows}
    server_eth0 = "%s/eth0" % cluster.ns["server"]
    assert server_eth0 in {f["frame.interface_name"] for f in frames}


def test_comments_are_the_rows(scenario1):
    """Each packet's comment is its row, then, where its skb had a conntrack entry, the entry
    (" ct=STATE ... id=... mark=... zone=...": no --ct here, so the rows have none of it)."""
    path, _run, rows, _received = scenario1
    frames = ours(path)
    split = [f["frame.comment"].partition(" ct=") for f in frames]
    assert Counter(row for row, _sep, _entry in split) == Counter(r.line for r in rows)
    entries = [entry for _row, sep, entry in split if sep]
    assert all(re.match(r"(NEW|EST|REL|EST,R|REL,R|UNTR)( |$)", e) for e in entries), entries
    functions = {r.function for r in rows if not r.is_verdict}
    assert any(fn in f["frame.comment"] for f in frames for fn in functions)


def test_both_copies_reach_the_server_with_ttl_64_and_63(scenario1, cluster):
    path, _run, _rows, _received = scenario1
    at_server = [f for f in ours(path)
                 if f["frame.interface_name"] == "%s/eth0" % cluster.ns["server"]]
    assert {f["ip.ttl"] for f in at_server} == {"64", "63"}, at_server


def test_the_natted_copy_shows_the_new_destination(scenario1, cluster):
    path, _run, _rows, _received = scenario1
    frames = ours(path)
    _pod, service_ip, service_port = cluster.targets["service"]
    before = [f for f in frames if f["ip.dst"] == service_ip]
    after = [f for f in frames if f["ip.dst"] == cluster.ip["server"]]
    assert before and after
    assert {f["udp.dstport"] for f in before} == {str(service_port)}
    assert {f["udp.dstport"] for f in after} == {"9000"}
    # DNAT happens on node1: the client never sends the new destination
    assert not any(f["frame.interface_name"].startswith(cluster.ns["client"] + "/") for f in after)


def test_the_story_is_in_the_file(scenario1, cluster):
    path, run, _rows, _received = scenario1
    report = capinfos(path)
    assert "Capture comment:     skbtracer: the story of" in report
    duplicate = [line for line in run.stderr.splitlines()
                 if line.startswith("DUPLICATE: ") and ":%d->" % SPORT in line]
    assert duplicate, run.stderr
    assert duplicate[0] in report


# how a -w trace ends involves no probes: three starts saved in the guest
host_only = pytest.mark.skipif(BACKEND == "kprobe", reason="host only: how -w ends involves no "
                               "probes, and a tracer start costs a compile in the guest")


@host_only
def test_count_stops_with_a_complete_file(cluster, tmp_path):
    path = str(tmp_path / "count.pcapng")
    _pod, dst_ip, dst_port = cluster.targets["service"]
    run = TracerRun(["-H", cluster.ip["client"], "--proto", "udp", "-c", "5", "-w", path,
                     "--snaplen", "1500"])
    run.start()
    try:
        cluster.send_udp("client", dst_ip, dst_port, count=3, sport=SPORT + 1)
        assert run.wait(timeout=120) == 0, run.stderr     # by itself: a timeout raises
    finally:
        run.stop()
    assert packet_count(path) == 5 == len(run.rows) == exit_rows(run)
    assert run.left_behind() == {}
    lengths = tshark(path, "frame.len", "frame.cap_len")
    assert all(cap == wire for wire, cap in lengths)     # whole packets below the snap length


@host_only
def test_sigterm_leaves_a_complete_file(cluster, tmp_path, settle):
    path = str(tmp_path / "term.pcapng")
    _pod, dst_ip, dst_port = cluster.targets["direct"]
    run = TracerRun(["-H", cluster.ip["client"], "--proto", "udp", "-w", path])
    run.start()
    try:
        cluster.reset_counts()
        cluster.send_udp("client", dst_ip, dst_port, count=2, sport=SPORT + 2)
        assert cluster.received("server", settle=settle) == 2
        run.terminate()
        assert run.wait(timeout=120) == 0, run.stderr     # its own exit: a timeout raises
    finally:
        run.stop()
    assert run.rows
    assert packet_count(path) == len(run.rows) == exit_rows(run)
    assert run.left_behind() == {}


@pytest.fixture
def small_tmpfs():
    with mounted_tmpfs("256k") as where:
        yield where


@host_only
def test_full_disk_is_one_line_exit_1_and_a_readable_file(cluster, small_tmpfs):
    path = os.path.join(small_tmpfs, "full.pcapng")
    _pod, dst_ip, dst_port = cluster.targets["direct"]
    run = TracerRun(["-H", cluster.ip["client"], "--proto", "udp", "-w", path,
                     "--snaplen", "1500", "--no-summary"])
    run.start()
    try:
        for _ in range(20):
            cluster.send_udp("client", dst_ip, dst_port, count=25, payload=b"x" * 1200,
                             sport=SPORT + 3)
            if run.proc.poll() is not None:
                break
        returncode = run.wait(timeout=120)
    finally:
        run.stop()
    errors = [line for line in run.stderr.splitlines() if "-w/--write" in line]
    assert returncode == 1, run.stderr
    assert len(errors) == 1 and "No space left on device" in errors[0], run.stderr
    assert "Traceback" not in run.stderr
    kept = packet_count(path)            # capinfos reads it to the end
    assert kept > 0
    assert "the first %d packets" % kept in errors[0]
