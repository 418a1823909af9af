"""Garbage in: events with impossible values never raise out of the
per-event path, an exception there is reported once and counted without
ending the trace, strings from the kernel and from /proc cannot break a
row, and a sink that fails keeps only whole lines."""

import ctypes
import io
import json
import os
import random
import re
import subprocess
import sys

from skbt_unit_helpers import REPO, SYSTEM_PYTHON

from skbtracer_lib import config
from skbtracer_lib.events import decode, fields
from skbtracer_lib.outputs import names
from skbtracer_lib.live import live_session
from skbtracer_lib.runinfo import RunInfo

FUZZ_SEED = 16
FUZZ_INPUTS = 100_000
# a text row: time, netns, ifname (may be empty), dmac, PKT_INFO, TRACE_INFO
ROW = re.compile(r"^\[[0-9:]{8}\]\[\S+ *\] +\S* +[0-9a-f]{12} \S+ +[0-9a-f]+\.\d+:\S+"
                 r"( reason=\S+)?( location=\S+)?( type=\d+ code=\d+( mtu=\d+)?)?"
                 r"( ipvs=\S+)?( neigh=\S+:\S+( waited=\S+)?)?"
                 r"( (rpf_)?route=\S+:\S+( dst=\S+)?( via=\S+)?( dev=\S+)?)?"
                 r"( \S+( vni \d+)? [0-9.]+->[0-9.]+)?"    # a tunnel's outer header
                 r"( \(\d+ more sightings not kept\))?$")   # --on-trouble
IFNAME = fields.at("ifname").span


class StandInLoaded:
    """What the live source needs of program.Loaded (runinfo), without bcc."""

    def __init__(self, bpf=None):
        self.bpf = bpf
        self.info = RunInfo("tracepoint", ["ip_rcv", "kfree_skb", "nf_hook_slow"])

    def stack(self, stack_id):
        return ["func_%d+0x10" % stack_id]

    def symbolize(self, address):
        return "sym+0x%x" % (address & 0xFFF)

    def lost_events(self):
        return 0

    def open_reader(self, handle, on_lost, batch=None):
        return self.bpf.open_reader(handle)


def session(argv, out, err, bpf=None, proc=None):
    # garbage carries a new netns inode in nearly every event: each would
    # be a scan of the host's /proc, seconds per thousand events
    fixed = names.NetnsNames(proc=proc, netns_dirs=()) if proc is not None else None
    return live_session(config.parse_args(argv), StandInLoaded(bpf), out=out, err=err,
                        names=fixed)


def inputs(rng):
    """Random events: whole-size noise, odd sizes, and real events with a
    few bytes overwritten (impossible lengths, probes, protocols, names
    without a NUL)."""
    base = [decode.encode(kind=k, family=f, l4proto=p, ifname="eth0", saddr=a, daddr=a,
                          table="filter", chain="INPUT")
            for k in (1, 2, 3) for p in (6, 17, 1, 58, 250)
            for f, a in ((4, "10.0.0.1"), (6, "fd00::1"))]
    for i in range(FUZZ_INPUTS):
        choice = i % 10
        if choice < 5:
            yield rng.randbytes(decode.EVENT_SIZE)
        elif choice == 5:
            yield rng.randbytes(rng.randrange(0, 2 * decode.EVENT_SIZE))
        else:
            raw = bytearray(rng.choice(base))
            for _ in range(rng.randrange(1, 8)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            yield bytes(raw)


def feed(on_event, raw):
    buffer = ctypes.create_string_buffer(raw, max(len(raw), 1))
    on_event(0, ctypes.addressof(buffer), len(raw))


def test_fuzz_decoder_never_raises_and_rows_stay_rows(tmp_path):
    rng = random.Random(FUZZ_SEED)
    text, js = io.StringIO(), io.StringIO()
    err = io.StringIO()
    rows = session(["--callstack"], text, err, proc=str(tmp_path)).source.records
    json_rows = session(["--json", "--no-summary"], js, err, proc=str(tmp_path)).source.records
    short = 0
    for raw in inputs(rng):
        short += len(raw) < decode.EVENT_SIZE
        feed(rows.on_event, raw)         # an exception here fails the test
        feed(json_rows.on_event, raw)
    assert rows.rows + rows.bad_events == FUZZ_INPUTS
    assert rows.bad_events == short == json_rows.bad_events
    lines = text.getvalue().splitlines()
    row_lines = [line for line in lines if not line.startswith("    ")]
    assert len(row_lines) == rows.rows
    for line in row_lines:
        assert ROW.match(line), repr(line)
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", text.getvalue())
    objects = [json.loads(line) for line in js.getvalue().splitlines()]
    assert len(objects) == json_rows.rows
    assert all(o["type"] == "event" for o in objects)
    assert err.getvalue().count("cannot show an event") == 2   # once per session


class StandInBPF(dict):
    """The event reader, fed from a list: one event per poll, then Ctrl-C."""

    def __init__(self, raws, stop):
        super().__init__(events=self)
        self.raws = list(raws)
        self.stop = stop

    def open_reader(self, handle):
        self.handle = handle
        return self

    def wait(self, timeout):
        if not self.raws and timeout:
            self.stop()

    def read(self):
        if self.raws:
            self.handle(self.raws.pop(0))

    def close(self):
        pass


def test_exception_in_event_handling_is_reported_once_counted_and_tracing_goes_on():
    good = decode.encode(ifname="eth0", saddr="10.0.0.1", daddr="10.0.0.2", sport=1, dport=2)
    out, err = io.StringIO(), io.StringIO()
    bpf = StandInBPF([good, good, good, good], stop=lambda: None)
    s = session(["--no-summary"], out, err, bpf)
    bpf.stop = s.source.stop
    real_row = s.source.records.formatter.row_of_raw   # rows made from the raw bytes
    calls = []

    def row_that_fails_twice(raw):
        calls.append(raw)
        if len(calls) in (2, 3):
            raise RuntimeError("a bug in formatting")
        return real_row(raw)

    s.source.records.formatter.row_of_raw = row_that_fails_twice
    s.source.records.rows_in_c = None      # Python's rows (the C ones: test_fast_rows.py)
    assert s.run() == 0
    assert len([line for line in out.getvalue().splitlines() if "eth0" in line]) == 2
    report = err.getvalue()
    assert report.count("cannot show an event (RuntimeError: a bug in formatting)") == 1
    assert "2 rows printed, 0 events lost, 2 events could not be shown" in report
    assert "Traceback" not in report


def test_names_from_proc_and_netns_dirs_are_data(tmp_path):
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    hostile = netns_dir / "pod\n[00:00:00][1] eth0 x"
    hostile.write_text("")
    table = names.NetnsNames(proc=str(tmp_path / "no-proc"), netns_dirs=[str(netns_dir)])
    label = table.label(os.stat(hostile).st_ino)
    assert "\n" not in label and " " not in label
    assert label == "pod\\x0a[00:00:00][1]\\x20eth0\\x20x"


def test_kernel_strings_are_escaped():
    raw = decode.encode(ifname="a\nb c\\", table="t\x1b[31m")
    e = decode.Event(raw)
    assert e.ifname == "a\\x0ab\\x20c\\x5c" and e.table == "t\\x1b[31m"
    unterminated = bytearray(raw)
    unterminated[IFNAME] = b"x" * fields.at("ifname").size
    assert len(decode.Event(bytes(unterminated)).ifname) == fields.at("ifname").size


SINK_CHILD = r"""
import os, resource, sys
sys.path.insert(0, %(repo)r)
from skbtracer_lib.outputs.files import LineSink, OutputError
f = open(%(path)r, "w")
sink = LineSink(f, "cannot write")
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))   # Python ignores SIGXFSZ
try:
    for i in range(100):
        sink.write("row %%03d %%s\n" %% (i, "x" * 20))
        if i %% 7 == 0:
            sink.flush()
    sink.flush()
except OutputError as e:
    print(e)
"""


def test_line_sink_keeps_only_whole_lines_when_the_file_cannot_grow(tmp_path):
    path = tmp_path / "rows.txt"
    child = SINK_CHILD % {"repo": str(REPO), "path": str(path)}
    proc = subprocess.run([SYSTEM_PYTHON, "-c", child], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip() == "cannot write: File too large", proc.stdout + proc.stderr
    data = path.read_text()
    assert data and data.endswith("\n") and len(data) <= 1000
    lines = data.splitlines()
    assert lines == ["row %03d %s" % (i, "x" * 20) for i in range(len(lines))]
    assert sys.platform == "linux"
