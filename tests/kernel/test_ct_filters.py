"""--ct-mark and --ct-zone (issue 23) on real connections, and -w's packet comments carrying the
conntrack entry without --ct, on a kube-proxy node in iptables mode (testbed/conntrack.py
ConntrackLab): three UDP exchanges through the ClusterIP service 10.96.0.10:53, told apart by
the client's source port. node1 CONNMARKs one connection 0x12a and puts another in conntrack
zone 7 (`-j CT --zone 7`); the third is left alone.

Runs on: host (tracepoints) and guest-6.1 (kprobes; it runs all of tests/kernel). Not on 5.10:
without module BTF --ct-mark/--ct-zone refuse to start (tests/unit/test_conntrack.py). Three
tracer starts, compiled side by side (one compile's time), on the same traffic:
  --ct-mark 0x2a/0xff       must show exactly the marked connection's rows: those of the
                            unfiltered run whose entry has that mark (by the mask);
  --ct-zone 7 -w FILE       exactly the zoned connection's rows; tshark reads every packet's
                            comment: the row, then the entry (state, NAT, id, status, mark,
                            zone) though --ct was not given;
  unfiltered                the positive control (all three connections' rows, what conntrack
                            -L says of their mark and zone) and the file `-r --ct-mark` /
                            `-r --ct-zone` select the same rows from.
"""

import json
import os
import re
import subprocess
from collections import Counter

import pytest

from testbed.conntrack import ConntrackLab
from testbed.topology import IP, cleanup_stale, netns_path
from testbed.tracer import PYTHON, SKBTRACER, TracerRun

MARKED, ZONED, PLAIN = 47211, 47212, 47213      # the client's source ports
MARK, MARK_FILTER, ZONE = 0x12A, ("0x2a", 0xFF), 7
TSHARK = "tshark"


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    where = tmp_path_factory.mktemp("ct_filters")
    paths = {name: str(where / ("%s.jsonl" % name)) for name in ("mark", "zone", "all")}
    pcap = str(where / "zone.pcapng")
    cleanup_stale()
    with ConntrackLab() as lab:
        lab.connmark(MARKED, MARK)
        lab.ct_zone(ZONED, ZONE)
        node1 = os.stat(netns_path(lab.node.cluster.ns["node1"])).st_ino
        common = ["--route", "-H", IP["client"], "--no-summary"]
        runs = {"mark": TracerRun(common + ["--ct-mark", "%s/%#x" % MARK_FILTER, "-v",
                                            "--json=" + paths["mark"]]),
                "zone": TracerRun(common + ["--ct-zone", str(ZONE), "-w", pcap,
                                            "--json=" + paths["zone"]]),
                "all": TracerRun(common + ["--json=" + paths["all"]])}
        try:
            for run in runs.values():       # the compiles side by side
                run.launch()
            for run in runs.values():
                run.wait_ready()
            exchanges = {sport: lab.udp_exchange(sport=sport, count=2)
                         for sport in (MARKED, ZONED, PLAIN)}
        finally:
            for run in runs.values():
                if run.proc is not None:
                    run.stop()
        entries = {sport: lab.entry("udp", sport) for sport in (MARKED, ZONED, PLAIN)}
    events = {}
    for name, path in paths.items():
        with open(path) as f:
            events[name] = [json.loads(line) for line in f if '"type": "event"' in line]
    yield dict(runs=runs, events=events, paths=paths, pcap=pcap, node1=node1,
               exchanges=exchanges, entries=entries)


def ours(events):
    """Our three connections' events (the client's port on either end)."""
    return [o for o in events if o["l4proto"] == 17
            and {o["sport"], o["dport"]} & {MARKED, ZONED, PLAIN}]


def connection(o):
    return MARKED if MARKED in (o["sport"], o["dport"]) else \
        ZONED if ZONED in (o["sport"], o["dport"]) else PLAIN


def key(o):
    """An event as both programs saw it (their timestamps differ)."""
    return (o["netns"], o["ifname"], o["func"], o["saddr"], o["sport"], o["daddr"], o["dport"],
            o["ip_id"])


def test_runs_and_ground_truth(traced):
    for name, run in traced["runs"].items():
        assert run.returncode == 0, (name, run.stderr)
        assert "Traceback" not in run.stderr, run.stderr
        assert re.search(r"^skbtracer: \d+ rows printed, 0 events lost$", run.stderr, re.M), \
            (name, run.stderr)
    # -v: the kernel reads the mark and the zone (the filter would refuse to start otherwise)
    assert re.search(r"^skbtracer: conntrack on the events: state, id, status and tuples, mark, "
                     r"zone ", traced["runs"]["mark"].stderr, re.M), traced["runs"]["mark"].stderr
    for sport, exchange in traced["exchanges"].items():
        assert exchange.replies == 2, sport
    # conntrack -L: the rules did what they say
    entries = traced["entries"]
    assert entries[MARKED].extra.get("mark") == str(MARK), entries[MARKED]
    assert entries[ZONED].extra.get("zone") == str(ZONE), entries[ZONED]
    assert entries[PLAIN].extra.get("mark") in (None, "0") and "zone" not in entries[PLAIN].extra
    assert "zone" not in entries[MARKED].extra and entries[ZONED].extra.get("mark") in (None, "0")


def test_the_unfiltered_run_sees_all_three_with_their_mark_and_zone(traced):
    """The positive control: every connection has rows, and node1's rows with an entry carry the
    mark and zone conntrack -L shows."""
    events, node1 = ours(traced["events"]["all"]), traced["node1"]
    assert {connection(o) for o in events} == {MARKED, ZONED, PLAIN}
    for sport, mark, zone in ((MARKED, MARK, 0), (ZONED, 0, ZONE), (PLAIN, 0, 0)):
        in_node1 = [o for o in events if connection(o) == sport and o["netns"] == node1
                    and o["ct"] is not None]
        assert in_node1, sport
        assert {(o["ct"]["mark"], o["ct"]["zone"]) for o in in_node1} == {(mark, zone)}, sport
        # both directions: requests and the replies conntrack matched to the entry
        assert {o["sport"] == sport for o in in_node1} == {True, False}, sport
        assert any(o["ct"] is None for o in events if connection(o) == sport)   # before conntrack


def _expected(events, wanted):
    return Counter(key(o) for o in ours(events) if o["ct"] is not None and wanted(o["ct"]))


def test_ct_mark_shows_exactly_the_marked_connections_rows(traced):
    got = traced["events"]["mark"]
    assert got and {connection(o) for o in ours(got)} == {MARKED}
    assert len(ours(got)) == len(got)           # nothing but our marked connection
    assert all(o["ct"]["mark"] & MARK_FILTER[1] == int(MARK_FILTER[0], 16) for o in got)
    want = _expected(traced["events"]["all"],
                     lambda ct: ct["mark"] is not None
                     and ct["mark"] & MARK_FILTER[1] == int(MARK_FILTER[0], 16))
    assert Counter(key(o) for o in got) == want
    # the text rows are those events', one each
    assert len(traced["runs"]["mark"].rows) == len(got)


def test_ct_zone_shows_exactly_the_zoned_connections_rows(traced):
    got = traced["events"]["zone"]
    assert got and {connection(o) for o in ours(got)} == {ZONED}
    assert len(ours(got)) == len(got)
    assert {o["ct"]["zone"] for o in got} == {ZONE}
    want = _expected(traced["events"]["all"], lambda ct: ct["zone"] == ZONE)
    assert Counter(key(o) for o in got) == want


@pytest.mark.parametrize("flag, value, run", [
    ("--ct-mark", "%s/%#x" % MARK_FILTER, "mark"), ("--ct-zone", str(ZONE), "zone")])
def test_read_back_selects_what_the_kernel_selected(traced, flag, value, run):
    """-r FILE --ct-mark/--ct-zone on the unfiltered run's file (no compile): the same events
    the kernel filter let through."""
    done = subprocess.run([PYTHON, SKBTRACER, "-r", traced["paths"]["all"], flag, value, "--json",
                           "--no-summary"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    kept = [json.loads(line) for line in done.stdout.splitlines() if '"type": "event"' in line]
    assert kept and Counter(map(key, kept)) == Counter(map(key, traced["events"][run]))


def test_pcapng_comments_carry_the_entry_without_ct(traced):
    """-w without --ct: the text rows have no ct=, every packet's comment is its row and then
    the entry (state, NAT, id, status, mark and zone), read by tshark."""
    run, events = traced["runs"]["zone"], traced["events"]["zone"]
    assert run.rows and not any(" ct=" in r.line for r in run.rows)
    done = subprocess.run([TSHARK, "-r", traced["pcap"], "-T", "fields", "-e", "frame.comment"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    comments = done.stdout.splitlines()
    assert len(comments) == len(run.rows) == len(events)
    service, endpoint = "%s:53" % IP["service"], traced["entries"][ZONED].reply
    for row, comment, o in zip(run.rows, comments, events):
        ct = o["ct"]
        assert comment.startswith(row.line + " ct="), (row.line, comment)
        assert comment.endswith(" id=%s status=%s mark=0x0 zone=%d"
                                % (ct["id"], ",".join(ct["status"]), ZONE)), comment
        assert " dnat %s=>%s:%s " % (service, endpoint["src"], endpoint["sport"]) in comment
    states = {c.split(" ct=", 1)[1].split()[0] for c in comments}
    assert {"NEW", "EST", "EST,R"} <= states, states
