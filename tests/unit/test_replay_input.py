"""-r and bad input: missing and foreign files, bad and truncated lines,
newer formats, live-only flags, and saved event objects with impossible
values (fixed-seed fuzz); on event streams built by test_replay_unit."""

import io
import json
import random
import re

from skbt_unit_helpers import run_cli
from test_replay_unit import BASE_WALL, request, write_run

from skbtracer_lib import config
from skbtracer_lib.outputs import jsonl
from skbtracer_lib.replay import read as replay_read
from skbtracer_lib.replay import rebuild
from skbtracer_lib.replay import session as replay_session


def one_line(result, status, *words):
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_missing_file(tmp_path):
    one_line(run_cli("-r", str(tmp_path / "nope.jsonl")), 2, "nope.jsonl",
             "No such file or directory")


def test_not_skbtracer_json(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("hello world\n")
    one_line(run_cli("-r", str(path)), 2, "x.jsonl:1:", "not skbtracer JSON")
    path.write_text('{"type": "event"}\n')
    one_line(run_cli("-r", str(path)), 2, "x.jsonl:1:", "no start object")
    path.write_bytes(b"\xff\xfe\x00binary\n")
    one_line(run_cli("-r", str(path)), 2, "x.jsonl", "not skbtracer JSON")


def test_bad_line_in_the_middle(tmp_path):
    one, _ = request(1000, 41000, 1_000_000_000)
    path = write_run(tmp_path / "a.jsonl", "node1", one)
    lines = path.read_text().splitlines()
    lines[3] = lines[3][:40]
    path.write_text("\n".join(lines) + "\n")
    one_line(run_cli("-r", str(path)), 2, "a.jsonl:4:")


def test_truncated_last_line_is_a_warning(tmp_path):
    one, _ = request(1000, 41000, 1_000_000_000)
    path = write_run(tmp_path / "a.jsonl", "node1", one, end=False)
    text = path.read_text()
    path.write_text(text[:-60])                   # cut off mid-line, as by a crash
    result = run_cli("-r", str(path))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^skbtracer: warning: \S+a\.jsonl:6: truncated last line skipped$",
                     result.stderr, re.M), result.stderr
    assert len(result.stdout.splitlines()) == 1 + 4


def test_newer_format_version(tmp_path):
    one, _ = request(1000, 41000, 1_000_000_000)
    path = write_run(tmp_path / "a.jsonl", "node1", one)
    lines = path.read_text().splitlines()
    start = json.loads(lines[0])
    start["format"] = jsonl.FORMAT + 1
    lines[0] = json.dumps(start)
    path.write_text("\n".join(lines) + "\n")
    one_line(run_cli("-r", str(path)), 2, "a.jsonl:1:", "format version 2 is newer")


def test_read_needs_no_root_nor_bcc(tmp_path):
    """-r never imports bcc or the program builder."""
    one, _ = request(1000, 41000, 1_000_000_000)
    path = write_run(tmp_path / "a.jsonl", "node1", one)
    import subprocess
    import sys
    code = ("import sys; sys.argv=['skbtracer', '-r', %r]; sys.path.insert(0, %r)\n"
            "import runpy\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "assert 'bcc' not in sys.modules, 'bcc imported'\n"
            % (str(path), str(replay_session.__file__.rsplit('/', 3)[0]),
               replay_session.__file__.rsplit('/', 3)[0] + "/skbtracer.py"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_live_only_flags_are_refused_with_read(tmp_path):
    result = run_cli("-r", str(tmp_path / "a.jsonl"), "-p", "1", "--keep")
    one_line(result, 2, "-r reads saved events", "-p/--pid, --keep")


def test_rows_to_a_file(tmp_path):
    one, _ = request(1000, 41000, 1_000_000_000)
    path = write_run(tmp_path / "a.jsonl", "node1", one)
    rows = tmp_path / "rows.txt"
    result = run_cli("-r", str(path), "-o", str(rows))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and len(rows.read_text().splitlines()) == 1 + 5


def test_node_name_is_checked():
    result = run_cli("--ebpf", "--node", "bad name;")
    one_line(result, 2, "--node")


# --- garbage in: saved JSON with impossible values --------------------------

GARBAGE = [None, True, -1, 0, 2**70, -2**70, 1.5, float("nan"), "", "x", "zz:zz", "0x",
           "ffffffffffffffffffffffff", "10.0.0.1", "\x00\x1b[31m", [], [1, "a"], {}, {"a": 1},
           {"pf": "x", "hook": 3}, {"reason_code": "no", "location_addr": "zz"}]


def test_saved_events_with_impossible_values_never_raise(tmp_path):
    """A fixed-seed fuzz over saved event objects: one field of one event
    gets a garbage value (or goes missing). Reading and telling either work
    or say so in one line (ReadError, exit 2); nothing else escapes."""
    one, two = request(17, 43001, BASE_WALL)
    good = write_run(tmp_path / "good.jsonl", "node1", one + two).read_text().splitlines()
    rng = random.Random(20261201)
    path = tmp_path / "fuzz.jsonl"
    cfg = config.parse_args(["-r", str(path), "--latency"])
    refused = told = 0
    for case in range(2000):
        lines = list(good)
        n = rng.randrange(1, len(lines) - 1)             # an event line
        obj = json.loads(lines[n])
        for _ in range(rng.randrange(1, 4)):
            key = rng.choice(sorted(obj))
            if rng.random() < 0.15:
                del obj[key]
            else:
                obj[key] = rng.choice(GARBAGE)
            if key == "type":
                obj["type"] = "event"
        lines[n] = json.dumps(obj)
        path.write_text("\n".join(lines) + "\n")
        try:
            runs = replay_read.read_files(cfg.read, lambda text: None)
        except replay_read.ReadError as e:
            assert "fuzz.jsonl:%d" % (n + 1) in str(e), (case, str(e))
            refused += 1
            continue
        out, err = io.StringIO(), io.StringIO()
        assert replay_session.saved_session(cfg, runs, out=out, err=err).run() == 0, (case, obj)
        told += 1
    assert refused and told


def test_100k_garbage_event_objects_are_accepted_whole_or_refused(tmp_path):
    """The read path alone over 100,000 mutated event objects (fixed seed):
    _check_event refuses with ValueError/KeyError, or the event rebuilds and
    renders."""
    one, _two = request(17, 43001, BASE_WALL)
    lines = write_run(tmp_path / "good.jsonl", "node1", one).read_text().splitlines()
    events = [json.loads(line) for line in lines if '"type": "event"' in line]
    rng = random.Random(100_000)
    rebuilder, run = rebuild.Rebuilder(False), replay_read.SavedRun("x", 1, {"node": "n"})
    accepted = 0
    for _ in range(100_000):
        obj = dict(rng.choice(events))
        for _ in range(rng.randrange(1, 3)):
            key = rng.choice(sorted(obj))
            obj[key] = rng.choice(GARBAGE)
        try:
            replay_read._check_event(obj)
        except (KeyError, ValueError):
            continue
        rebuilder.event(run, obj, obj["ktime_ns"])
        jsonl.text_row(obj, "")
        accepted += 1
    assert 0 < accepted < 100_000
