"""Part 1: userspace throughput of the per-event path, ours vs the original's.

Ours is skbtracer's real perf callback, live.Records.on_event, of a live
session (live.live_session) built from the product's own
config.parse_args() (so its defaults, e.g. the story at exit, are what a
user gets), with a stand-in for the loaded bcc module:
program.KernelSymbols' stack() and symbolize() (what Loaded uses) run on
top of workload.FakeBPF. Theirs is original.OriginalPrinter.event_printer. Both get
the same raw bytes, from one ctypes buffer, as (cpu, address, size), and
write to the same kind of sink: a text file on /dev/null (what sys.stdout is
when redirected, without the disk).
"""

import cProfile
import ctypes
import gc
import io
import os
import pstats
import re
import statistics
import time

import original
import workload
from rings import KernelRings

from skbtracer_lib import config
from skbtracer_lib.events import fields, textrow
from skbtracer_lib.events.decode import Event
from skbtracer_lib.program import probes
from skbtracer_lib.program.load import KernelSymbols
from skbtracer_lib.live import live_session
from skbtracer_lib.runinfo import RunInfo

_TIME_COLUMN = re.compile(r"^\[[^\]]*\]")


class BenchLoaded:
    """What the live source reads of a loaded program (runinfo), without compiling or
    attaching: the product's stack() and symbolize() (program.KernelSymbols)
    over a fake bcc module."""

    def __init__(self, bpf, probe_names):
        self.bpf = bpf
        self.info = RunInfo("kprobe", list(probe_names))
        symbols = KernelSymbols(bpf)
        self.symbolize, self.stack = symbols.symbolize, symbols.stack

    def lost_events(self):
        return 0

    def watch_modules(self):
        return []

    def close(self):
        pass


def devnull_sink():
    return open(os.devnull, "w")


def make_ours(argv, bpf, out, python_rows=False):
    """A live session's per-event half (live.Records) and its callback;
    python_rows: without the rows in C (as SKBTRACER_PYTHON_ROWS=1 or no
    build of skbtracer_lib/_rows)."""
    cfg = config.parse_args(argv)
    session = live_session(cfg, BenchLoaded(bpf, workload.PROBE_NAMES), out=out,
                           err=io.StringIO())
    records = session.source.records
    if python_rows:
        records.rows_in_c = None
    return records, records.on_event


def make_theirs(bpf, out, timestamp=False):
    reasons = dict(probes.drop_reasons().names)
    printer = original.OriginalPrinter(bpf, workload.PROBE_NAMES, reasons, out,
                                       timestamp=timestamp)
    return printer, printer.event_printer


def same_rows(ring, argv, bpf, n):
    """Do both paths print the same text for the first n events (time column aside)?"""
    ours_out, theirs_out = io.StringIO(), io.StringIO()
    _s, ours = make_ours(argv, bpf, ours_out)
    _p, theirs = make_theirs(bpf, theirs_out)
    ring.feed(ours, n)
    ring.feed(theirs, n)
    a = [_TIME_COLUMN.sub("[]", line) for line in ours_out.getvalue().splitlines()]
    b = [_TIME_COLUMN.sub("[]", line) for line in theirs_out.getvalue().splitlines()]
    if a == b:
        return True, ""
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return False, "line %d differs:\n  ours:   %s\n  theirs: %s" % (k, x, y)
    return False, "ours printed %d lines, theirs %d" % (len(a), len(b))


def rate(callback, ring, n):
    """(events per CPU-second, events per wall-second) through callback, n
    events. CPU time is this thread's (time.thread_time): other load on the
    machine slows the wall clock far more than it inflates CPU time."""
    gc.collect()
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    ring.feed(callback, n)
    cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
    return n / cpu, n / wall


def compare(ring, argv, bpf, n, repeats):
    """Best-of-repeats events/s of ours and theirs, measured alternately,
    each on a fresh session/printer (the story book starts empty)."""
    ours, theirs = [], []
    for _ in range(repeats):
        with devnull_sink() as out:
            _s, cb = make_ours(argv, bpf, out)
            ring.feed(cb, min(2000, ring.count))        # warm: netns lookups, caches
            ours.append(rate(cb, ring, n))
        with devnull_sink() as out:
            _p, cb = make_theirs(bpf, out)
            ring.feed(cb, min(2000, ring.count))
            theirs.append(rate(cb, ring, n))
    best = {"ours_eps": max(r[0] for r in ours), "theirs_eps": max(r[0] for r in theirs),
            "ours_eps_wall": max(r[1] for r in ours), "theirs_eps_wall": max(r[1] for r in theirs),
            "ours_eps_median": statistics.median(r[0] for r in ours),
            "theirs_eps_median": statistics.median(r[0] for r in theirs)}
    best["ratio"] = best["ours_eps"] / best["theirs_eps"]
    best["ratio_wall"] = best["ours_eps_wall"] / best["theirs_eps_wall"]
    return best


def compare_readers(ring, argv, bpf, n, repeats):
    """Best-of-repeats events/s of both tools through their real readers
    (KernelRings), alternating, each on a fresh session/printer. Ours twice:
    as a run makes its rows (in C where skbtracer_lib/_rows is built), and
    with Python's rows (what SKBTRACER_PYTHON_ROWS=1 or no build gives)."""
    raws = [ctypes.string_at(a, workload.EVENT_SIZE) for a in ring.addresses]
    rings = KernelRings(raws, n)
    ours, ours_python, theirs = [], [], []
    rows_in_c = None

    def read_ours(python_rows):
        with devnull_sink() as out:
            source, on_event = make_ours(argv, bpf, out, python_rows)
            ring.feed(on_event, min(2000, ring.count))     # warm, as compare()
            gc.collect()
            started = time.thread_time()
            rings.ours(source.on_raw, source.ring_batch
                       if source.rows_in_c is not None else None)
            return n / (time.thread_time() - started), source.rows_in_c is not None

    try:
        for _ in range(repeats):
            eps, rows_in_c = read_ours(python_rows=False)
            ours.append(eps)
            ours_python.append(read_ours(python_rows=True)[0])
            with devnull_sink() as out:
                _p, cb = make_theirs(bpf, out)
                ring.feed(cb, min(2000, ring.count))
                gc.collect()
                started = time.thread_time()
                rings.theirs(cb)
                theirs.append(n / (time.thread_time() - started))
    finally:
        rings.close()
    return {"ours_reader_eps": max(ours), "theirs_reader_eps": max(theirs),
            "ratio_reader": max(ours) / max(theirs), "rows_in_c": rows_in_c,
            "ours_python_reader_eps": max(ours_python),
            "ratio_python_reader": max(ours_python) / max(theirs),
            "ours_reader_samples": ours, "theirs_reader_samples": theirs}


def stages(ring, argv, bpf, n):
    """Microseconds per event of each step of Records.on_event, timed
    separately on the session's own objects (the sum is close to, not
    exactly, the whole: the whole also pays for its own calls and checks)."""
    out = devnull_sink()
    source, on_event = make_ours(argv, bpf, out, python_rows=True)
    addresses = ring.addresses[:n]
    size = workload.EVENT_SIZE
    result = {}

    def timed(name, fn):
        gc.collect()
        started = time.thread_time()
        value = fn()
        result[name] = (time.thread_time() - started) / len(addresses) * 1e6
        return value

    raws = timed("ctypes.string_at (copy out of the ring)",
                 lambda: [ctypes.string_at(a, size) for a in addresses])
    evs = timed("events.Event(raw) (unpack + field fixups)", lambda: [Event(r) for r in raws])
    book = source.book
    if book is not None:
        timed("story.StoryBook.add (kept for the exit story)",
              lambda: [book.add(e) for e in evs])
    fmt = source.formatter
    rows = timed("output.RowFormatter.row (format the row)", lambda: [fmt.row(e) for e in evs])
    timed("Clock.column alone (inside row)", lambda: [fmt.clock.column(e.ts_ns) for e in evs])

    timed("output.pkt_info alone (inside row)", lambda: [textrow.pkt_info(e) for e in evs])
    timed("RowFormatter.trace_info alone (inside row)", lambda: [fmt.trace_info(e) for e in evs])
    write = out.write
    timed("out.write(row + newline)", lambda: [write(r + "\n") for r in rows])
    out.close()
    with devnull_sink() as out2:
        _s, whole = make_ours(argv, bpf, out2, python_rows=True)
        result["whole Records.on_event"] = 1e6 / rate(whole, ring, n)[0]
    with devnull_sink() as out3:
        source, whole = make_ours(argv, bpf, out3)
        if source.rows_in_c is not None:
            result["whole Records.on_event, rows in C"] = 1e6 / rate(whole, ring, n)[0]
            result["rows in C: _rows.Formatter.ring alone, per event"] = _ring_call_cost(
                source, ring, n)
    return result


def _ring_call_cost(source, ring, n):
    """CPU us per event of the C walk alone (rows and the story's copies
    made, nothing written), over a KernelRings ring of n events."""
    from skbtracer_lib.events import reader
    raws = [ctypes.string_at(a, workload.EVENT_SIZE) for a in ring.addresses]
    rings = KernelRings(raws, n)
    rb = reader.RingBufferReader(rings.ring_fd, rings.ring_size, None)  # its pages as mapped
    try:
        position = records = 0
        gc.collect()
        started = time.thread_time()
        while records < n:
            position, walked, *_rest = source.rows_in_c.ring(
                rb.data, reader.PAGE_SIZE, rb.mask, position, rings.ring_bytes, -1,
                reader.PUBLISH_EVERY, source.book is not None)
            records += walked
        return (time.thread_time() - started) / n * 1e6
    finally:
        rb.close()
        rings.close()


def profile(ring, argv, bpf, n, top=14):
    """cProfile of Records.on_event with Python's rows: (function, calls,
    tottime us/event, cumtime us/event)."""
    with devnull_sink() as out:
        _s, on_event = make_ours(argv, bpf, out, python_rows=True)
        # CPU time, not wall time: a moment off the CPU must not land on
        # whatever function happened to be running
        prof = cProfile.Profile(time.thread_time_ns, 1e-9)
        prof.enable()
        ring.feed(on_event, n)
        prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():
        where = "%s:%d(%s)" % (os.path.basename(filename), line, func) if line else func
        rows.append((where, nc, tt / n * 1e6, ct / n * 1e6))
    rows.sort(key=lambda r: -r[2])
    return rows[:top]


def run(n=60000, repeats=3, log=print):
    """All part-1 figures as a dict."""
    ksyms = workload.FakeKsyms()
    stack_table = workload.FakeStackTable(ksyms)
    bpf = workload.FakeBPF(ksyms, stack_table)
    real = workload.real_stack_bpf()
    real_bpf = workload.FakeBPF(ksyms, stack_table, real_bpf=real) if real is not None else None

    mix = workload.EventRing(workload.mix_events(20000))
    keep = workload.EventRing(workload.keep_events(20000))
    stacked = workload.EventRing([_with_stack_ids(r, k) for k, r in
                                  enumerate(workload.mix_events(20000, seed=5))])

    flows = workload.EventRing(workload.flow_events(20000))

    results = {"n": n, "repeats": repeats, "workloads": {}}
    for name, ring, argv, count in (
            ("mix", mix, [], n),
            ("keep", keep, ["--keep"], n),
            ("stacks", stacked, ["--callstack"], max(n // 6, 5000)),
            ("flows", flows, ["--keep"], n)):
        ok, why = same_rows(ring, argv, bpf, 3000)
        if not ok:
            raise RuntimeError("ours and the original print different rows (%s): %s" % (name, why))
        log("  userspace %-6s %d events x %d ..." % (name, count, repeats))
        figures = compare(ring, argv, bpf, count, repeats)
        if real_bpf is not None:
            # the original as written: bcc's get_table("stacks") on every row
            with devnull_sink() as out:
                _p, theirs = make_theirs(real_bpf, out)
                figures["theirs_as_written_eps"] = rate(theirs, ring, max(count // 10, 2000))[0]
            figures["ratio_as_written"] = figures["ours_eps"] / figures["theirs_as_written_eps"]
        figures.update(compare_readers(ring, argv, bpf, count, repeats))
        figures["events_in_ring"] = ring.count
        results["workloads"][name] = figures

    results["get_table_us"] = _get_table_cost(real) if real is not None else None
    results["fake_ksym_us"] = _ksym_cost(bpf.ksym, ksyms)
    results["bcc_ksym_us"] = _bcc_ksym_cost()
    log("  userspace: stage timings and profile ...")
    results["stages_us"] = stages(mix, [], bpf, min(n, 20000))
    results["profile"] = profile(mix, [], bpf, min(n, 20000))
    if real is not None:
        real.cleanup()
    return results


def _with_stack_ids(raw, k):
    """Stack ids 1..48 (the original skips id 0, a bug of its own we do not probe)."""
    b = bytearray(raw)
    b[fields.at("stack_id").span] = (1 + k % 47).to_bytes(4, "little", signed=True)
    return bytes(b)


def _get_table_cost(real, calls=300):
    started = time.thread_time()
    for _ in range(calls):
        real.get_table("stacks")
    return (time.thread_time() - started) / calls * 1e6


def _ksym_cost(ksym, ksyms, calls=20000):
    import random
    r = random.Random(6)
    addrs = [r.randrange(workload.KSYM_BASE, ksyms.end) for _ in range(calls)]
    started = time.thread_time()
    for a in addrs:
        ksym(a, show_offset=True)
    return (time.thread_time() - started) / calls * 1e6


def _bcc_ksym_cost(calls=2000):
    """Microseconds per real bcc BPF.ksym() on this kernel's symbols, warm
    cache; None without bcc or readable kallsyms."""
    try:
        from bcc import BPF
        addrs = []
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if parts[1] in "tT" and int(parts[0], 16):
                    addrs.append(int(parts[0], 16) + 5)
        if not addrs:
            return None
        step = max(1, len(addrs) // calls)
        sample = addrs[::step][:calls]
        for a in sample[:50]:
            BPF.ksym(a, show_offset=True)          # loads the cache
        started = time.thread_time()
        for a in sample:
            BPF.ksym(a, show_offset=True)
        return (time.thread_time() - started) / len(sample) * 1e6
    except Exception:
        return None
