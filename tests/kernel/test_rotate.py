"""A run meant to last for days, shortened: real UDP traffic (client ->
server on one node) traced with -o, --json=FILE and -w all under a tiny
--rotate, --rotate-files 6 and --interval 1, ended by SIGTERM as a service
manager ends it. Every file of each set is whole on its own (text header,
JSON start object, pcapng read by tshark), no set holds more than 6 files,
-r over the JSON set gives the rows of the events it kept, and SIGTERM ends
the run with exit 0, the story and the exit lines.

Host stage: one tracer start; skipped in the guests (rotation, --interval and
SIGTERM involve no probes, and a start costs a compile there)."""

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter

import pytest

from conftest import BACKEND
from testbed.topology import SeedCluster
from testbed.tracer import HEADER_START, PYTHON, SKBTRACER, StderrReadyRun, parse_rows

SPORT = 41301
ROTATE, FILES = "64k", 6
TSHARK = shutil.which("tshark")

pytestmark = pytest.mark.skipif(BACKEND == "kprobe", reason="host only: rotating files and "
                                "--interval involve no probes, and a tracer start costs a "
                                "compile in the guest")


def story_of(stderr):
    """The story -r told, without the exit line naming the file read."""
    return stderr[stderr.index("skbtracer: the story of"):stderr.rindex("\nskbtracer: ")]


def rotated_set(path):
    """FILE.N ... FILE.1, FILE: what exists, oldest first (as the tracer names them)."""
    numbers = sorted((int(name.rsplit(".", 1)[1]) for name in os.listdir(os.path.dirname(path))
                      if name.startswith(os.path.basename(path) + ".")
                      and name.rsplit(".", 1)[1].isdigit()), reverse=True)
    return ["%s.%d" % (path, n) for n in numbers] + [path]


@pytest.fixture(scope="module")
def long_run(tmp_path_factory, settle):
    where = str(tmp_path_factory.mktemp("rotate"))
    rows, jsonl, pcap = where + "/rows.txt", where + "/t.jsonl", where + "/t.pcapng"
    with SeedCluster(promisc=True) as cluster:
        cluster.start_udp_receiver("server")
        _pod, dst_ip, dst_port = cluster.targets["direct"]
        run = StderrReadyRun(["-H", cluster.ip["client"], "--proto", "udp", "-o", rows,
                              "--json=" + jsonl, "-w", pcap, "--rotate", ROTATE,
                              "--rotate-files", str(FILES), "--interval", "1"])
        run.start()
        try:
            cluster.reset_counts()
            sent = 0
            # until the JSON set has passed its bound and the rows have rotated
            deadline = time.monotonic() + 180
            past_bound = "%s.%d" % (jsonl, FILES - 1)
            while not (os.path.exists(past_bound) and os.path.exists(rows + ".1")):
                assert time.monotonic() < deadline, run.stderr
                cluster.send_udp("client", dst_ip, dst_port, count=10, sport=SPORT)
                sent += 10
                time.sleep(0.3)
            cluster.send_udp("client", dst_ip, dst_port, count=5, sport=SPORT)
            sent += 5
            received = cluster.received("server", settle=settle)
            time.sleep(1.5)          # an --interval line after the last traffic
            run.terminate()
            status = run.wait(timeout=120)      # its own exit: a timeout raises
        finally:
            run.stop()
        yield run, status, sent, received, rows, jsonl, pcap


def test_sigterm_ends_with_exit_0_the_story_and_the_exit_lines(long_run):
    run, status, sent, received, rows, jsonl, pcap = long_run
    assert status == 0, run.stderr
    assert received == sent
    assert re.search(r"^skbtracer: \d+ rows printed, 0 events lost$", run.stderr, re.M), run.stderr
    assert "skbtracer: the story of " in run.stderr
    assert re.search(r"^skbtracer: rows written to %s( \(and \d older files?, .*\))?$"
                     % re.escape(rows), run.stderr, re.M), run.stderr
    assert re.search(r"^skbtracer: JSON lines written to %s \(and %d older files, %s.1 ... %s.%d\)$"
                     % (re.escape(jsonl), FILES - 1, re.escape(jsonl), re.escape(jsonl),
                        FILES - 1), run.stderr, re.M), run.stderr
    assert run.left_behind() == {}
    end = json.loads(open(jsonl).read().splitlines()[-1])
    assert end["type"] == "end" and end["stopped_by"] == "SIGTERM"


def test_interval_lines(long_run):
    run = long_run[0]
    lines = re.findall(r"^skbtracer: \d\d:\d\d:\d\d: (\d+) rows printed \(\+(\d+) in 1 s\), "
                       r"(\d+) events lost \(\+\d+\)$", run.stderr, re.M)
    assert len(lines) >= 2, run.stderr
    totals = [int(total) for total, _since, _lost in lines]
    assert totals == sorted(totals) and totals[-1] > 0
    assert sum(int(since) for _total, since, _lost in lines) == totals[-1]
    total = int(re.search(r"^skbtracer: (\d+) rows printed, 0 events lost$", run.stderr,
                          re.M).group(1))
    assert totals[-1] == total           # the last line came after the last traffic


def test_each_set_is_bounded_and_every_file_whole(long_run):
    run, _status, _sent, _received, rows, jsonl, pcap = long_run
    for path in (rows, jsonl, pcap):
        assert 2 <= len(rotated_set(path)) <= FILES, rotated_set(path)
    assert len(rotated_set(jsonl)) == FILES    # past the bound
    for name in rotated_set(rows):
        text = open(name).read()
        assert text.startswith(HEADER_START) and text.endswith("\n")
        assert os.path.getsize(name) <= 64 * 1024
    for name in rotated_set(jsonl):
        objects = [json.loads(line) for line in open(name)]      # every line parses
        assert objects[0]["type"] == "start"
        assert any(o["type"] == "event" for o in objects)
    assert TSHARK, "tshark is not installed (scripts/deps.sh)"
    for name in rotated_set(pcap):
        result = subprocess.run([TSHARK, "-r", name, "-T", "fields", "-e", "frame.comment"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and result.stdout.strip(), (name, result.stderr)


def test_read_of_the_json_set_gives_the_rows_of_its_events(long_run):
    run, _status, _sent, _received, rows, jsonl, _pcap = long_run
    total = int(re.search(r"^skbtracer: (\d+) rows printed, 0 events lost$", run.stderr,
                          re.M).group(1))
    text_rows = [r.line for name in rotated_set(rows) for r in parse_rows(open(name).read())]
    if len(rotated_set(rows)) < FILES:
        assert len(text_rows) == total          # the rows' set lost nothing
    kept = sum(1 for name in rotated_set(jsonl) for line in open(name) if '"type": "event"' in line)
    assert 0 < kept < total                 # the oldest JSON files were removed
    read = subprocess.run([PYTHON, SKBTRACER, "-r", jsonl], capture_output=True, text=True,
                          timeout=300)
    assert read.returncode == 0, read.stderr
    assert "reading its rotated set, %s.%d ... %s" % (jsonl, FILES - 1, jsonl) in read.stderr
    assert "%d rows read from %s" % (kept, jsonl) in read.stderr
    read_rows = [r.line for r in parse_rows(read.stdout)]
    assert len(read_rows) == kept
    # the rows printed of the events kept (in time order, not the ring's: compared as sets)
    assert not Counter(read_rows) - Counter(text_rows)

    # the same rows and story as the kept events in one file (one start object)
    one = os.path.join(os.path.dirname(jsonl), "one.jsonl")
    with open(one, "w") as f:
        for n, name in enumerate(rotated_set(jsonl)):
            lines = open(name).read().splitlines(True)
            f.writelines(lines if n == 0 else lines[1:])
    whole = subprocess.run([PYTHON, SKBTRACER, "-r", one], capture_output=True, text=True,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout == read.stdout
    assert story_of(whole.stderr) == story_of(read.stderr)
