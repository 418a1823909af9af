"""The packet's story at exit, --json, -o and --names, against real traffic in
namespaces (host: tracepoints; guest: kprobes).

One tracer run covers the seed's scenarios 1-6 (and 7, scenario 1 with
kubenet's dedup rule): its stderr tells the story (a row per packet, one
line each: --story-per-packet --width 1000), its stdout has the text rows
and --json=FILE the same events as JSON lines. A second run starts
before its namespaces exist and writes to an existing file with -o --force.
"""

import json
import os
import re
import subprocess
import time

import pytest
from conftest import BACKEND

from skbtracer_lib import __version__
from skbtracer_lib.outputs import jsonl
from testbed.scenarios import run_scenarios
from testbed.topology import SeedCluster
from testbed.tracer import PYTHON, SKBTRACER, StderrReadyRun, TracerRun

MODES = ["--route", "--drop"] + (["--iptable"] if BACKEND == "kprobe" else [])


@pytest.fixture(scope="module")
def traced(tmp_path_factory, settle):
    json_path = str(tmp_path_factory.mktemp("story") / "events.jsonl")
    with SeedCluster(promisc=True) as cluster:
        results, run = run_scenarios(cluster, MODES + ["--json=" + json_path,
                                                       "--story-per-packet", "--width", "1000"],
                                     settle=settle)
        with open(json_path) as f:
            lines = f.read().splitlines()
        yield cluster, results, run, lines


def ours(line, cluster):
    """Does a story line speak of this cluster's namespaces (other test beds
    may be running on the same host with the same addresses)?"""
    return any(cluster.ns[role] + "/" in line for role in ("client", "node1", "server", "node2",
                                                           "server2"))


def foreign(line, cluster):
    """Does a story line name namespaces of another test bed (and none of ours)?"""
    named = set(re.findall(r"([A-Za-z0-9_.@-]+)/[A-Za-z0-9]", line))
    return bool(named) and not named & set(cluster.ns.values())


def duplicate_lines(run, cluster):
    return [line for line in run.stderr.splitlines()
            if line.startswith("DUPLICATE: ") and ours(line, cluster)]


def table_line(run, results, number, cluster):
    """The summary table's line for a scenario's datagram (by its source port;
    one line: the story found one packet)."""
    marker = re.compile(r"^\s*\d+\s+U 10\.244\.1\.2:%d->" % results[number].sport)
    # a line naming no namespace at all (an skb seen only as it was freed,
    # e.g. a late free of another test bed's datagram) is not ours either
    found = [line for line in run.stderr.splitlines()
             if marker.match(line) and ours(line, cluster)]
    assert len(found) == 1, run.stderr
    return found[0]


def test_run_ok(traced):
    _cluster, results, run, _lines = traced
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "cannot tell" not in run.stderr, run.stderr
    assert re.search(r"^skbtracer: \d+ rows printed, 0 events lost$", run.stderr, re.M), run.stderr
    assert results[1].received == 2 and all(results[n].received == 1 for n in range(2, 8))


def test_duplicate_in_scenario_1_and_no_other(traced):
    cluster, results, run, _lines = traced
    found = duplicate_lines(run, cluster)
    assert len(found) == 1, run.stderr
    line = found[0]
    server = cluster.ns["server"]
    assert re.match(r"DUPLICATE: U 10\.244\.1\.2:%d->10\.244\.1\.3:9000 reached %s/eth0 2 times "
                    r"\([0-9.]+ (us|ms|s) apart\): \(1\) " % (results[1].sport, re.escape(server)),
                    line), line
    first, second = line.split("; (2) ")
    if BACKEND == "kprobe":
        assert "(1) bridged, TTL 64: br_forward(" in first and "→ __br_forward →" in first, line
        assert re.match(r"routed, TTL 63: br_pass_frame_up\(\S+\) → ip_rcv\(cbr0\) → "
                        r"ip_forward → ip_output → ", second), line
    else:
        assert "TTL 64" in first and "net_dev_queue(vethserver)" in first, line
        assert second.startswith("routed, TTL 63: netif_receive_skb(%s/cbr0)"
                                 % cluster.ns["node1"]), line
    assert second.endswith("%s/eth0" % server) or second.endswith("delivered to a socket"), line


def test_summary_path_of_scenario_1_names_both_routes(traced):
    cluster, results, run, _lines = traced
    line = table_line(run, results, 1, cluster)
    branches = re.search(r"\{(.*?)\}", line)
    assert branches, line
    routes = branches.group(1).split(" | ")
    assert len(routes) == 2, line
    assert routes[1].startswith("routed: %s/cbr0" % cluster.ns["node1"]), line
    assert routes[0].split(": ")[-1] == "%s/vethserver" % cluster.ns["node1"], line
    if BACKEND == "kprobe":
        assert routes[0].startswith("bridged: "), line
    assert "} > %s/eth0" % cluster.ns["server"] in line
    assert "(DNAT ->10.244.1.3:9000)" in line


def test_other_scenarios_tell_one_route(traced):
    cluster, results, run, _lines = traced
    for number in (2, 4, 5, 6):
        line = table_line(run, results, number, cluster)
        assert "{" not in line and "2x" not in line, line
    # the copy passed up (3: OTHERHOST) or routed (7: the dedup rule) dies; the
    # bridged one reaches the server: a note on a packet that got through
    for number, reason in ((3, "OTHERHOST"), (7, "NETFILTER_DROP")):
        line = table_line(run, results, number, cluster)
        assert "(dropped)" in line and "; a copy dropped at %s/" % cluster.ns["node1"] in line
        assert re.search(r"a copy dropped at \S+: %s" % reason, line), line
    drops = [line for line in run.stderr.splitlines()
             if line.startswith("DROPPED: ") and ours(line, cluster)]
    assert drops == [], drops


def test_json_lines_parse_and_carry_the_text_rows_events(traced):
    _cluster, _results, run, lines = traced
    objects = [json.loads(line) for line in lines]
    events = [o for o in objects if o["type"] == "event"]
    rows = run.rows
    assert rows and len(events) == len(rows)
    for obj, row in zip(events, rows):
        clock = time.strftime("%H:%M:%S", time.localtime(obj["time_ns"] // 1_000_000_000))
        assert jsonl.text_row(obj, clock) == row.line
        assert obj["netns_name"] or obj["netns"] == 0
    assert {o["type"] for o in objects} >= {"event", "summary", "flow", "duplicate"}
    # the stream says first which skbtracer wrote it, on which kernel and backend
    expected = jsonl.start_object(BACKEND, run_id=objects[0]["run_id"])
    assert {k: objects[0][k] for k in expected} == expected
    # every event says which node and run it came from
    assert {(o["node"], o["run_id"]) for o in events} == {(expected["node"],
                                                           expected["run_id"])}
    assert objects[-1]["type"] == "end" and objects[-1]["run_id"] == expected["run_id"]
    assert objects[0]["version"] == __version__ and [o["type"] for o in objects].count("start") == 1


def test_json_story_objects_match_stderr(traced):
    cluster, _results, run, lines = traced
    objects = [json.loads(line) for line in lines]
    duplicates = [o for o in objects if o["type"] == "duplicate" and ours(o["text"], cluster)]
    assert [o["text"] for o in duplicates] == duplicate_lines(run, cluster)
    assert duplicates[0]["times"] == 2
    summaries = [o for o in objects if o["type"] == "summary" and "DUPLICATE" in o["flags"]
                 and ours(o["path"], cluster)]
    assert len(summaries) == 1 and summaries[0]["skbs"] >= 2


# ---------------------------------------------------------------- -o and --names

@pytest.fixture(scope="module")
def named(tmp_path_factory, settle):
    """skbtracer started before the namespaces exist, writing over an existing
    file with -o --force and printing names (--names)."""
    path = str(tmp_path_factory.mktemp("names") / "rows.txt")
    with open(path, "w") as f:
        f.write("an old trace\n")
    run = StderrReadyRun(["--names", "-o", path, "--force", "-H", "10.244.1.2", "--proto", "udp"])
    run.start()
    try:
        with SeedCluster(promisc=False) as cluster:
            cluster.start_udp_receiver("server")
            cluster.send_udp("client", cluster.ip["server"], cluster.SERVER_PORT)
            assert cluster.received("server", settle=settle) == 1
            run.stop()
    finally:
        run.stop()
    with open(path) as f:
        text = f.read()
    yield cluster, run, path, text


def test_o_writes_the_rows_to_the_file(named):
    _cluster, run, path, text = named
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert "an old trace" not in text
    assert text.startswith("time       NETWORK_NS")
    assert "skbtracer: rows written to %s\n" % path in run.stderr
    assert "skbtracer: tracing, rows to %s; Ctrl-C to stop\n" % path in run.stderr


def test_names_of_namespaces_made_after_start(named):
    cluster, _run, _path, text = named
    from testbed.tracer import parse_rows
    rows = parse_rows(text)
    shown = {r.netns for r in rows}
    for role in ("client", "node1", "server"):
        assert cluster.ns[role] in shown, text
        assert cluster.ns_inode[role] not in shown and str(cluster.ns_inode[role]) not in text


def test_o_refuses_to_overwrite(named):
    _cluster, _run, path, text = named
    proc = subprocess.run([PYTHON, SKBTRACER, "-o", path, "--proto", "udp"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == ("skbtracer: error: -o/--output: %r exists; add --force to "
                           "overwrite it\n" % path)
    with open(path) as f:
        assert f.read() == text
    assert os.path.getsize(path) > 0


# ---------------------------------------------------------------- -r: the saved events, read back

def test_read_back_tells_the_same_duplicate(traced, tmp_path):
    cluster, _results, run, lines = traced
    saved = tmp_path / "saved.jsonl"
    saved.write_text("\n".join(lines) + "\n")
    read = subprocess.run([PYTHON, SKBTRACER, "-r", str(saved), "--width", "1000"],
                          capture_output=True, text=True, timeout=300)
    assert read.returncode == 0, read.stderr
    replayed = [line for line in read.stderr.splitlines()
                if line.startswith("DUPLICATE: ") and ours(line, cluster)]
    assert replayed == duplicate_lines(run, cluster)
    # the same rows as the live run printed
    assert [r for r in read.stdout.splitlines()[1:]] == [r.line for r in run.rows]
