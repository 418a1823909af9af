"""--rotate SIZE / --rotate-files N (outputs/rotate.py): sizes and names,
whole rows and blocks in files that each begin as a file of their own, at
most N files, -r FILE reading the set as one file; --interval's line."""

import io
import json
import os
import subprocess
import tempfile

import pytest
from skbt_unit_helpers import assert_usage_error, run_cli
from test_capture import TSHARK, Rows, blocks, ethernet, udp_packet
from test_sinks import FedLoaded, goldens

from skbtracer_lib import config, story
from skbtracer_lib.events.textrow import HEADER, Clock
from skbtracer_lib.live import IntervalSummary, LiveEvents
from skbtracer_lib.outputs import capture, rotate
from skbtracer_lib.outputs.files import LineSink, OutputError, open_new_file
from skbtracer_lib.outputs.sinks import make_sinks, open_outputs
from skbtracer_lib.replay.session import read_paths
from skbtracer_lib.session import Session


@pytest.mark.parametrize("text, size", [("4096", 4096), ("10k", 10240), ("10K", 10240),
                                        ("100M", 100 << 20), ("1G", 1 << 30), ("2MiB", 2 << 20),
                                        ("3kb", 3072)])
def test_sizes(text, size):
    assert rotate.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "0k", "1.5M", "10q", "-1", "M", "1T"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        rotate.parse_size(text)


@pytest.mark.parametrize("argv, mention", [
    (["--rotate", "10k"], "--rotate applies only with"),
    (["--json", "--rotate", "10k"], "--rotate applies only with"),
    (["-o", "{d}/rows", "--rotate", "10q"], "--rotate must be a size"),
    (["-o", "{d}/rows", "--rotate", "0"], "more than 0 bytes"),
    (["-o", "{d}/rows", "--rotate-files", "3"], "--rotate-files applies only with --rotate"),
    (["-o", "{d}/rows", "--rotate", "1k", "--rotate-files", "0"], "--rotate-files must be"),
    (["-o", "{d}/rows", "--rotate", "1k", "--rotate-files", "x"], "--rotate-files must be"),
    (["-o", "/dev/null", "--rotate", "1M"], "not a regular file"),
    (["-w", "{d}/t.pcapng", "--rotate", "63k"], "--rotate with -w: at least 64k, not 63k"),
    (["--interval", "0"], "--interval must be more than 0"),
    (["--interval", "5x"], "--interval must be a time"),
    (["-r", "{d}/a.jsonl", "--interval", "5"], "--interval applies only while tracing"),
])
def test_bad_rotation_flags(argv, mention, tmp_path):
    assert_usage_error(run_cli(*[a.format(d=tmp_path) for a in argv]), mention)


def test_an_older_runs_rotated_file_needs_force(tmp_path):
    (tmp_path / "rows.1").write_text("old\n")
    assert_usage_error(run_cli("-o", str(tmp_path / "rows"), "--rotate", "1k"),
                       "'%s' exists (an older run's); add --force" % (tmp_path / "rows.1"))


def test_rotation_flags_parsed(tmp_path):
    cfg = config.parse_args(["-o", str(tmp_path / "rows"), "--rotate", "10k",
                             "--rotate-files", "3", "--interval", "1m"])
    assert (cfg.rotate, cfg.rotate_files, cfg.interval) == (10240, 3, 60)
    cfg = config.parse_args(["-w", str(tmp_path / "t.pcapng"), "--rotate", "1M"])
    assert (cfg.rotate, cfg.rotate_files, cfg.interval) == (1 << 20, 10, None)
    assert config.parse_args(["--interval", "90"]).interval == 90
    assert config.parse_args(["--interval", "2h"]).interval == 7200


def test_names_and_the_set_in_time_order(tmp_path):
    path = str(tmp_path / "t.jsonl")
    assert rotate.rotated_set(path) == [path]
    for name in ("t.jsonl", "t.jsonl.1", "t.jsonl.2", "t.jsonl.10", "t.jsonl.01", "t.jsonl.x",
                 "t.jsonl.1.gz", "t.jsonl2"):
        (tmp_path / name).write_text("")
    assert rotate.rotated_set(path) == [path + ".10", path + ".2", path + ".1", path]
    # named twice (the set and one of it): read once
    assert read_paths([path, path + ".1"], io.StringIO()) == rotate.rotated_set(path)
    assert read_paths([path + ".2"], io.StringIO()) == [path + ".2"]


def test_at_most_n_files_the_oldest_removed(tmp_path):
    path = str(tmp_path / "rows")
    first = open_new_file("-o", path, False)
    rotation = rotate.Rotation("-o", path, 10, 3, False, first)
    for n in range(5):
        rotation.file.write("file %d\n" % n)
        rotation.next_file()
    rotation.file.write("file 5\n")
    rotation.close()
    assert sorted(os.listdir(tmp_path)) == ["rows", "rows.1", "rows.2"]
    assert [open(name).read() for name in rotate.rotated_set(path)] == [
        "file 3\n", "file 4\n", "file 5\n"]
    assert rotation.said() == " (and 2 older files, %s.1 ... %s.2)" % (path, path)
    one = rotate.Rotation("-o", path, 10, 1, False, open_new_file("-o", path, True))
    one.next_file()
    one.close()
    assert os.listdir(tmp_path) == ["rows"]       # --rotate-files 1: FILE only, renewed


def test_lines_are_whole_and_each_file_begins_with_its_preamble(tmp_path):
    path = str(tmp_path / "rows")
    first = open_new_file("-o", path, False)
    sink = LineSink(first, "-o", rotate.Rotation("-o", path, 100, 1000, False, first))
    sink.preamble = b"HEADER\n"
    sink.write("HEADER\n")
    lines = ["row %d %s\n" % (n, "x" * (n % 37)) for n in range(300)]
    for n, line in enumerate(lines):
        sink.write(line)
        if n % 50 == 0:
            sink.flush()
    sink.write_bytes(b"".join(line.encode() for line in lines[:40]))      # a batch of rows (C's)
    sink.write("%s\n" % ("y" * 150))         # longer than a file: a file of its own
    sink.flush()
    sink.rotation.close()
    files = [open(name).read() for name in rotate.rotated_set(path)]
    assert len(files) > 20
    assert all(text.startswith("HEADER\n") and text.endswith("\n") for text in files)
    assert all(len(text) <= 100 for text in files[:-1] if "y" * 150 not in text)
    rows = [line + "\n" for text in files for line in text.splitlines()[1:]]
    assert rows == lines + lines[:40] + ["y" * 150 + "\n"]


def rotating_live(tmp_path, argv, case="keep-thousand"):
    """A live session over a raw corpus case with argv's files opened as
    skbtracer opens them (open_outputs); its exit status, stderr and the files."""
    meta, raws = goldens.read_raw(case)
    cfg = config.parse_args(["-t", "--node", "unit"] + argv)
    files = []
    opened = open_outputs(cfg, files)
    loaded = FedLoaded(meta, raws)
    err = io.StringIO()
    names = goldens.fixed_names(tempfile.mkdtemp())
    source = LiveEvents(cfg, loaded, err, names, goldens.golden_reasons(), Clock(relative=True))
    loaded.source = source
    out = opened.get("output") or io.StringIO()
    sinks = make_sinks(cfg, out, err, opened, source)
    session = Session(cfg, source, sinks, story.StoryBook(names), err)
    try:
        return session.run(), err.getvalue(), len(raws)
    finally:
        for f in files:
            f.close()


def test_rotated_json_and_rows_read_back_as_one_file(tmp_path):
    d = str(tmp_path)
    status, err, events = rotating_live(tmp_path, [
        "-o", d + "/rows", "--json=%s/t.jsonl" % d, "--rotate", "32k", "--rotate-files", "1000"])
    assert status == 0, err
    assert "JSON lines written to %s/t.jsonl (and " % d in err
    json_set = rotate.rotated_set(d + "/t.jsonl")
    assert len(json_set) > 3
    counted = 0
    for name in json_set:
        objects = [json.loads(line) for line in open(name)]
        assert objects[0]["type"] == "start"
        assert os.path.getsize(name) <= 32768 or name == json_set[-1]     # the story's file
        counted += sum(o["type"] == "event" for o in objects)
    assert counted == events
    assert [o["type"] for o in map(json.loads, open(json_set[-1]))][-1] == "end"
    rows = [line for name in rotate.rotated_set(d + "/rows") for line in open(name)]
    assert rows.count(HEADER + "\n") == len(rotate.rotated_set(d + "/rows")) > 3
    assert len(rows) - rows.count(HEADER + "\n") == events

    # -r over the set: the same rows and story as an unrotated file gives
    status, plain_err, _ = rotating_live(tmp_path, ["--json=%s/one.jsonl" % d])
    assert status == 0
    whole = run_cli("-t", "-r", d + "/one.jsonl")
    rotated = run_cli("-t", "-r", d + "/t.jsonl")
    assert whole.returncode == rotated.returncode == 0, rotated.stderr
    assert rotated.stdout == whole.stdout and len(whole.stdout.splitlines()) == events + 1
    assert "reading its rotated set, %s.%d ... %s/t.jsonl" % (
        json_set[0].rsplit(".", 1)[0], len(json_set) - 1, d) in rotated.stderr
    story_of = lambda text: text[text.index("the story"):text.rindex("\nskbtracer: ")]  # noqa
    assert story_of(rotated.stderr) == story_of(whole.stderr)


def test_pcapng_rotation_size_holds_the_section_twice():
    assert rotate.MIN_PCAPNG_ROTATE == 2 * capture.STORY_SPACE


def test_rotated_pcapng_files_are_each_whole(tmp_path):
    path = str(tmp_path / "t.pcapng")
    rows = Rows()
    for n in range(60):
        ip = udp_packet("10.244.1.2", "10.244.1.%d" % (3 + n % 5), 64, payload=b"p" * 200)
        rows.add(ethernet(ip), capture.LINKTYPE_ETHERNET, ts_ns=10**18 + n, netns=4026532001,
                 ifname="eth%d" % (n // 20), ifindex=2, probe=1, pkt_type=0, len=len(ip))
    first = open_new_file("-w", path, False, binary=True)
    rotation = rotate.Rotation("-w", path, capture.STORY_SPACE + 2000, 1000, True, first)
    writer = capture.PcapngWriter(first, 256, ["a", "b"], rotation=rotation)
    writer.start()
    for n, (e, raw, comment) in enumerate(rows.items):
        writer.add(e, raw, comment)
        if n % 7 == 0:
            writer.flush()
    writer.flush()
    writer.write_story(["skbtracer: the story"])
    rotation.close()
    names = rotate.rotated_set(path)
    assert len(names) > 5 and writer.packets == 60
    packets = 0
    for name in names:
        kinds = [kind for kind, _block in blocks(name)]
        assert kinds[0] == 0x0A0D0D0A and kinds.count(0x0A0D0D0A) == 1
        assert os.path.getsize(name) <= capture.STORY_SPACE + 2000
        packets += kinds.count(6)
        if TSHARK and name in (names[0], names[1], names[-1]):
            result = subprocess.run([TSHARK, "-r", name, "-T", "fields", "-e",
                                     "frame.interface_name", "-e", "frame.comment"],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0 and "row " in result.stdout, result.stderr
    assert packets == 60


def test_interval_line_counts_so_far_and_since():
    meta, raws = goldens.read_raw("kprobe-seed")
    cfg = config.parse_args(["-t", "--interval", "60"])
    loaded = FedLoaded(meta, raws)
    err = io.StringIO()
    source = LiveEvents(cfg, loaded, err, goldens.fixed_names(tempfile.mkdtemp()),
                        goldens.golden_reasons(), Clock(relative=True))
    loaded.source = source
    sinks = make_sinks(cfg, io.StringIO(), err, {}, source)
    session = Session(cfg, source, sinks, story.StoryBook(), err)
    source.summary.due = 0
    assert session.run() == 0
    said = [line for line in err.getvalue().splitlines() if "rows printed (+" in line]
    assert len(said) == 1
    assert said[0].endswith(": %d rows printed (+%d in 60 s), 0 events lost (+0)"
                            % (len(raws), len(raws))), said
    summary = IntervalSummary(60, io.StringIO())
    summary.rows = len(raws) - 2
    assert "rows printed (+2 in 60 s)" in summary.line(source)


def test_completion_offers_the_flags_and_no_guess_for_their_values():
    from test_version import complete
    assert {"--rotate", "--rotate-files"} <= set(complete("skbtracer", "-o", "f", "--rot"))
    assert complete("skbtracer", "--inter") == ["--interval"]
    assert complete("skbtracer", "--rotate", "") == []      # a size: nothing to guess


def test_read_rows_rotate_and_force_removes_an_older_set(tmp_path):
    """-r with -o FILE --rotate: the rows rotate as a live run's; --force
    first removes the FILE.N an older run left."""
    rows = tmp_path / "rows"
    for name in ("rows", "rows.1", "rows.7"):
        (tmp_path / name).write_text("older run\n")
    result = run_cli("-r", goldens.corpus("scenarios-tracepoint.jsonl"), "-o", str(rows),
                     "--rotate", "2k", "--rotate-files", "3", "--force")
    assert result.returncode == 0, result.stderr
    names = rotate.rotated_set(str(rows))
    assert names == [str(rows) + ".2", str(rows) + ".1", str(rows)]
    assert all(open(name).readline() == HEADER + "\n" for name in names)
    assert "rows written to %s (and 2 older files, " % rows in result.stderr


def test_a_file_that_cannot_be_put_aside_ends_the_rows_whole(tmp_path):
    """The oldest file cannot be removed (a directory stands in its name):
    OutputError naming the output, the rows written so far whole."""
    path = str(tmp_path / "rows")
    (tmp_path / "rows.2").mkdir()
    (tmp_path / "rows.2" / "x").write_text("")
    first = open_new_file("-o", path, False)
    sink = LineSink(first, "-o/--output: cannot write %r" % path,
                    rotate.Rotation("-o", path, 100, 3, False, first))
    with pytest.raises(OutputError, match=r"^-o/--output: cannot write '.*': cannot rotate: "):
        for n in range(100):
            sink.write("row %d %s\n" % (n, "x" * 20))
        sink.flush()
    sink.rotation.close()
    text = open(path).read()
    assert text.startswith("row 0 ") and text.endswith("\n") and len(text) <= 100


def test_a_row_and_its_stack_stay_in_one_file(tmp_path):
    """--callstack: the stack lines under a row (indented) go with it."""
    path = str(tmp_path / "rows")
    first = open_new_file("-o", path, False)
    sink = LineSink(first, "-o", rotate.Rotation("-o", path, 120, 1000, False, first))
    rows = []
    for n in range(60):
        rows.append("row %d\n" % n + "".join("    frame_%d_%d+0x1f\n" % (n, k)
                                             for k in range(n % 9)))
        sink.write(rows[-1])
        if n % 13 == 0:
            sink.flush()
    sink.flush()
    sink.rotation.close()
    files = [open(name).read() for name in rotate.rotated_set(path)]
    assert len(files) > 10 and "".join(files) == "".join(rows)
    assert all(text.startswith("row ") for text in files)
