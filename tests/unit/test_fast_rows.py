"""The text rows in C (skbtracer_lib/_rows.c) are the Python rows, byte for
byte: on the golden corpus's raw streams through a ring buffer laid out as
the kernel lays it out (rows and story against the recorded output and
against the Python path), on random and hostile events one by one, and at
the ring's edges (busy, discarded and short records, -c, -t's first event).

Skipped where _rows is not built, unless SKBTRACER_REQUIRE_C_ROWS=1 (the
test command builds it and sets that: CI never silently tests only Python)."""

import io
import mmap
import os
import random
import struct
import sys
import tempfile

import pytest
import skbt_unit_helpers  # noqa: F401  (repository on sys.path)

from skbtracer_lib import config
from skbtracer_lib.events import decode, fields, textrow
from skbtracer_lib.events.decode import EVENT_SIZE
from skbtracer_lib.events.reader import (
    PAGE_SIZE,
    RINGBUF_BUSY,
    RINGBUF_DISCARD,
    STOP_BUSY,
    STOP_COUNT,
    STOP_END,
    STOP_SLOW,
    RingBufferReader,
)
from skbtracer_lib.events.textrow import Clock, RowFormatter
from skbtracer_lib.live import live_session
from skbtracer_lib.outputs import files
from skbtracer_lib.program import probes

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
import goldens  # noqa: E402

ROWS = textrow.rows_in_c()
if ROWS is None and os.environ.get("SKBTRACER_REQUIRE_C_ROWS") == "1":
    raise RuntimeError("skbtracer_lib.events._rows is not built (scripts/build-rows.sh)")
pytestmark = pytest.mark.skipif(ROWS is None, reason="skbtracer_lib.events._rows not built")
SPAN = {f.name: f.span for f in fields.FIELDS}      # where each field is in the bytes


class Ring:
    """A BPF ring buffer in a memory file: consumer page, producer page,
    the data pages twice. Records are laid out once, in one write."""

    def __init__(self, records, pages=None):
        body = b"".join(struct.pack("<II", length, 0) + payload.ljust((len(payload) + 7) // 8 * 8,
                                                                       b"\0")
                        for payload, length in records)
        size = PAGE_SIZE
        while size < len(body) + 8 or (pages and size < pages * PAGE_SIZE):
            size *= 2
        self.size = size
        self.fd = os.memfd_create("rows-ring")
        os.ftruncate(self.fd, 2 * PAGE_SIZE + 2 * size)
        self.map = mmap.mmap(self.fd, 2 * PAGE_SIZE + 2 * size)
        for copy in (0, size):
            self.map[2 * PAGE_SIZE + copy:2 * PAGE_SIZE + copy + len(body)] = body
        struct.pack_into("<Q", self.map, PAGE_SIZE, len(body))

    @classmethod
    def of(cls, raws):
        return cls([(raw, len(raw)) for raw in raws])

    def reader(self, handle, batch=None):
        return RingBufferReader(self.fd, self.size, handle, batch)

    def close(self):
        self.map.close()
        os.close(self.fd)


class StackedLoaded(goldens.GoldenLoaded):
    """Stacks as program.KernelSymbols words them: a few frames per id."""

    def stack(self, stack_id):
        if stack_id < 0:
            return ["[stack unavailable: %d]" % stack_id]
        return ["frame_%d_%d+0x%x" % (stack_id, k, 16 * k) for k in range(stack_id % 5)]


def golden_session(meta, argv, c_rows):
    """A live session for a recorded probe plan, text rows to a StringIO;
    c_rows: the rows in C, or Python's."""
    cfg = config.parse_args(["-t"] + argv)
    out, err = io.StringIO(), io.StringIO()
    session = live_session(cfg, StackedLoaded(meta), out=out, err=err,
                           names=goldens.fixed_names(tempfile.mkdtemp()),
                           reasons=goldens.golden_reasons())
    session.source.clock.offset_ns = 1_700_000_000_000_000_000
    if not c_rows:
        session.source.records.rows_in_c = None
    assert (session.source.records.rows_in_c is not None) == c_rows
    return session, out, err


def trace(session, ring):
    """What a live run does with the ring's records: read, story, exit lines."""
    records = session.source.records
    batch = records.ring_batch if records.rows_in_c is not None else None
    rb = ring.reader(records.on_raw, batch)
    try:
        rb.read()
    finally:
        rb.close()
    session.flush()
    session.source.ended_ns = 0
    session.finish()


def both(name, argv):
    meta, raws = goldens.read_raw(name)
    texts = []
    for c_rows in (True, False):
        ring = Ring.of(raws)
        session, out, err = golden_session(meta, argv, c_rows)
        trace(session, ring)
        ring.close()
        texts.append((out.getvalue(), err.getvalue()))
    return texts


GOLDEN_TEXT_CASES = [(case, raw, argv) for case, raw, argv, _lost, _attached in goldens.RAW_CASES
                     if "--names" not in argv]


@pytest.mark.parametrize("case,raw,argv", GOLDEN_TEXT_CASES, ids=[c[0] for c in GOLDEN_TEXT_CASES])
def test_rows_in_c_are_the_recorded_rows_and_python_s(case, raw, argv):
    (c_out, c_err), (py_out, py_err) = both(raw, argv)
    assert c_out == py_out
    assert c_err == py_err
    # the corpus's recorded rows (made with --json beside them, which changes no row)
    assert c_out == goldens.expected(case)["out"]


@pytest.mark.parametrize("flag", ["--callstack", "--dropstack"])
def test_rows_with_their_stacks_in_c_are_python_s(flag):
    meta, raws = goldens.read_raw("mixed")
    stacked = []
    for k, raw in enumerate(raws):
        b = bytearray(raw)
        b[SPAN["stack_id"]] = (k % 40 - 2).to_bytes(4, "little", signed=True)  # -2, -1 (none), 0..37
        stacked.append(bytes(b))
    texts = []
    for c_rows in (True, False):
        ring = Ring.of(stacked)
        session, out, err = golden_session(meta, [flag, "--route", "--iptable", "--drop"], c_rows)
        trace(session, ring)
        ring.close()
        texts.append((out.getvalue(), err.getvalue()))
    assert texts[0] == texts[1]
    assert "    frame_3_2+0x20\n" in texts[0][0]
    assert ("[stack unavailable: -1]" in texts[0][0]) == (flag == "--callstack")


def formatters(probe_names=("ip_rcv", "kfree_skb", "nf_hook_slow"), relative=False):
    clock = Clock(relative=relative)
    fmt = RowFormatter(list(probe_names), probes.DropReasons({2: "NOT_SPECIFIED", 77: "X"}, "t"),
                       lambda a: "sym\\x+0x%x" % (a & 0xFFF), clock)
    return fmt, fmt.in_c()


def hostile(rng, n):
    """Events with every field random, then made a little more likely to
    be valid (known kinds, families, protocols, probes), names with
    control characters, spaces, backslashes and bytes over 0x7f."""
    def put(raw, name, value):
        size = fields.at(name).size
        raw[SPAN[name]] = value.ljust(size, b"\0")[:size]

    for _ in range(n):
        raw = bytearray(rng.randbytes(EVENT_SIZE))
        if rng.random() < 0.9:
            raw[SPAN["ts_ns"]] = rng.randrange(1 << 50).to_bytes(8, "little")   # ktime, not noise
        if rng.random() < 0.7:
            raw[SPAN["kind"]] = bytes([rng.choice((1, 2, 3, 4))])
        if rng.random() < 0.5:      # --why rows: an ICMP error or a reset, frag needed's MTU
            raw[SPAN["why"]] = bytes([rng.choice((1, 2))])
            raw[SPAN["why_type"]] = bytes([rng.choice((3, 11))])
            raw[SPAN["why_code"]] = bytes([rng.choice((3, 4, 0))])
        if rng.random() < 0.7:
            raw[SPAN["family"]] = bytes([rng.choice((4, 6))])
        if rng.random() < 0.7:
            raw[SPAN["l4proto"]] = bytes([rng.choice((6, 17, 1, 58, 0, 132))])
        if rng.random() < 0.5:
            raw[SPAN["icmp_type"]] = bytes([rng.choice((0, 8, 128, 129, 3))])
        if rng.random() < 0.7:
            raw[SPAN["probe"]] = rng.randrange(4).to_bytes(2, "little")
        if rng.random() < 0.5:
            put(raw, "ifname", rng.choice((b"eth0", b"a b\\c\n", b"\xff\xfe\x80x",
                                           b"veth1234567890ab", b"", b"\x7f\x01")))
        if rng.random() < 0.5:
            put(raw, "table", rng.choice((b"filter", b"nat\x1b[31m", b"", b"\xc3\xa9t")))
        if rng.random() < 0.3:
            raw[SPAN["drop_reason"]] = rng.choice((0, 2, 77, 999)).to_bytes(4, "little")
        if rng.random() < 0.3:
            raw[SPAN["location"]] = bytes(8)
        yield bytes(raw)


@pytest.mark.parametrize("relative", [False, True])
def test_every_random_event_s_row_is_python_s_row(relative):
    rng = random.Random(21)
    fmt, fast = formatters(relative=relative)
    left = 0
    for raw in hostile(rng, 20000):
        made = fast.row(raw)
        if made is None:        # a time no clock holds: Python's turn (and its error)
            assert decode.Event(raw).ts_ns >= 1 << 62
            left += 1
            continue
        assert made.decode("utf-8") == fmt.row(decode.Event(raw)) + "\n", raw.hex()
    assert left < 20000 * 0.1


def test_longer_records_are_their_first_200_bytes_and_shorter_ones_python_s():
    fmt, fast = formatters()
    raw = decode.encode(ifname="eth0", saddr="10.0.0.1", daddr="10.0.0.2", sport=1, dport=2)
    assert fast.row(raw + b"packet bytes") == fast.row(raw)
    assert fast.row(raw[:-1]) is None


def test_a_trace_info_python_cannot_make_is_left_to_python():
    fmt, _ = formatters()
    fast = textrow.rows_in_c().Formatter(textrow.c_spec(), lambda raw: 1 / 0, fmt.clock)
    assert fast.row(decode.encode()) is None


def test_relative_times_start_at_the_first_event_whoever_shows_it():
    fmt, fast = formatters(relative=True)
    first = decode.encode(ts_ns=5_000_000_000)
    later = decode.encode(ts_ns=6_250_000_001)
    assert fmt.row(decode.Event(first)).startswith("[0.000000")
    assert fast.row(later).startswith(b"[1.250000")
    fmt2, fast2 = formatters(relative=True)
    assert fast2.row(first).startswith(b"[0.000000")
    assert fmt2.clock.first_ns == 5_000_000_000
    assert fmt2.row(decode.Event(later)).startswith("[1.250000")


def raws_of(n, **fields):
    return [decode.encode(ts_ns=k, skb=0x1000 + k, ifname="eth0", saddr="10.0.0.1",
                          daddr="10.0.0.2", sport=k + 1, dport=9, **fields) for k in range(n)]


def test_the_walk_stops_at_a_busy_record_passes_over_discarded_ones_and_leaves_short_ones():
    fmt, fast = formatters()
    good = raws_of(4)
    ring = Ring([(good[0], EVENT_SIZE), (good[1], EVENT_SIZE | RINGBUF_DISCARD),
                 (b"short", 5), (good[2], EVENT_SIZE), (good[3], EVENT_SIZE | RINGBUF_BUSY)])
    rb = ring.reader(None)          # the pages as the reader maps them
    data, base, mask, producer = rb.data, PAGE_SIZE, rb.mask, rb.producer_word[0]
    position, records, rows, text, raws, netns, stop = fast.ring(data, base, mask, 0, producer,
                                                                  -1, 100, True)
    assert (records, rows, stop) == (2, 1, STOP_SLOW)       # the discarded one, then "short"
    assert text.decode() == fmt.row(decode.Event(good[0])) + "\n"
    assert raws == [good[0]] and netns == {0}
    at = position + (5 + 8 + 7) // 8 * 8                     # Python's turn for "short"
    position, records, rows, text, raws, netns, stop = fast.ring(data, base, mask, at, producer,
                                                                  -1, 100, False)
    assert (records, rows, stop, raws, netns) == (1, 1, STOP_BUSY, None, None)
    assert text.decode() == fmt.row(decode.Event(good[2])) + "\n"
    rb.close()
    ring.close()


def test_the_walk_stops_at_the_count_and_then_only_passes_over():
    fmt, fast = formatters()
    ring = Ring.of(raws_of(10))
    rb = ring.reader(None)
    data, mask, producer = rb.data, rb.mask, rb.producer_word[0]
    position, records, rows, text, _r, _n, stop = fast.ring(data, PAGE_SIZE, mask, 0,
                                                             producer, 3, 100, False)
    assert (records, rows, stop, text.count(b"\n")) == (3, 3, STOP_COUNT, 3)
    position, records, rows, text, _r, _n, stop = fast.ring(data, PAGE_SIZE, mask,
                                                             position, producer, 0, 4, False)
    assert (records, rows, stop, text) == (4, 0, STOP_END, b"")
    assert position == 7 * (EVENT_SIZE + 8)
    rb.close()
    ring.close()


def session_of(argv, raws, c_rows):
    meta = {"backend": "kprobe", "probes": [["ip_rcv", "route", False]]}
    session, out, err = golden_session(meta, argv, c_rows)
    ring = Ring([(raw, len(raw)) for raw in raws])
    trace(session, ring)
    ring.close()
    return out.getvalue(), err.getvalue(), session.source.records


def test_a_live_session_counts_garbage_and_stops_at_c_alike():
    good = raws_of(50)
    stream = good[:10] + [b"x" * 13] + good[10:]
    for argv, rows, bad in (([], 50, 1), (["-c", "25"], 25, 1),
                            (["--no-summary", "-c", "7"], 7, 0)):
        c = session_of(argv, stream, True)
        py = session_of(argv, stream, False)
        assert c[:2] == py[:2], argv
        assert (c[2].rows, c[2].bad_events) == (py[2].rows, py[2].bad_events) == (rows, bad)


def test_rows_pass_the_python_path_s_pending_text_in_order():
    sink_file = tempfile.TemporaryFile("w+")
    sink = files.LineSink(sink_file, "test")
    sink.write("header\n")
    sink.write_bytes(b"row \xc3\xa9\n")
    sink.write("after\n")
    sink.flush()
    sink_file.seek(0)
    assert sink_file.read() == "header\nrow \u00e9\nafter\n"


@pytest.mark.parametrize("change", [
    lambda s: s.pop("udp_prefixes"),
    lambda s: s["fields"].update(sport=(60, 2, False)),             # host order: not what C reads
    lambda s: s["fields"].update(netns=(EVENT_SIZE - 2, 4, False)),  # past the event's end
    lambda s: s.update(row_widths=(8, 10, 12, 12)),
    lambda s: s.update(tcp_prefixes=s["tcp_prefixes"][:255]),
    lambda s: s.update(trace_fields=s["trace_fields"] + ((0, 64),)),  # a key over 64 bytes
    lambda s: s.update(other_prefixes=(b"bytes",) * 256),
], ids=["missing", "byte-order", "outside", "widths", "short-table", "key-size", "not-text"])
def test_a_spec_the_c_rows_cannot_follow_is_refused(change):
    spec = dict(textrow.c_spec(), fields=dict(textrow.c_spec()["fields"]))
    change(spec)
    fmt, _ = formatters()
    with pytest.raises(ValueError, match="rows spec"):
        textrow.rows_in_c().Formatter(spec, fmt.trace_after_skb, fmt.clock)
    assert textrow.rows_in_c().Formatter(textrow.c_spec(), fmt.trace_after_skb, fmt.clock)


def test_a_stack_the_kernel_did_not_store_says_why():
    from skbtracer_lib.program.load import KernelSymbols
    symbols = KernelSymbols(bpf=None)
    assert symbols.stack(-17) == ["[stack unavailable: -17, its slot in the stack map holds another stack]"]
    assert symbols.stack(-12) == ["[stack unavailable: -12, the stack map is full]"]
    assert symbols.stack(-22) == ["[stack unavailable: -22]"]


def test_the_trace_info_key_fits_the_c_rows_limits():
    """Checked without the build (a work tree without _rows would skip the tests above): the
    TRACE_INFO fields fit _rows.h's TRACE_FIELDS_MAX and TAIL_KEY_SIZE, which _rows_spec.c
    enforces by refusing the spec (the tracer would not start)."""
    import re
    header = os.path.join(os.path.dirname(textrow.__file__), "_rows.h")
    with open(header) as f:
        limits = dict(re.findall(r"^#define (TRACE_FIELDS_MAX|TAIL_KEY_SIZE|ROWS_ABI) (\d+)",
                                 f.read(), re.M))
    assert len(textrow.TRACE_FIELDS) <= int(limits["TRACE_FIELDS_MAX"])
    assert sum(fields.at(n).size for n in textrow.TRACE_FIELDS) <= int(limits["TAIL_KEY_SIZE"])
    assert textrow.ROWS_ABI == int(limits["ROWS_ABI"])
