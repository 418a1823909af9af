"""The golden corpus: event streams and the exact output skbtracer makes of
them (rows, the story on stderr, the JSON story objects), recorded once on
the code before the story model's redesign (issue 9) and compared byte for
byte since.

Two kinds of stream:
  - JSON lines (corpus/*.jsonl), real traces of the seed's scenarios, drops,
    --keep and a two-node run (capture.py, on the host's tracepoints and in
    the 6.1 guest with kprobes), read back through -r (the run loop over
    replay.session.SavedEvents);
  - raw events (corpus/*.raw.gz, the bytes skbtracer.c writes, with a .json
    beside them naming the probes and the layout), fed through the live
    source's perf callback (live.Records.on_event) and the run loop's
    story: synthetic streams made by synth.py
    (the unit tests' scenario sequences, IPv6, a thousand-packet mixed run).

    /usr/bin/python3 tests/unit/golden/record.py     (rewrites expected/)
"""

import ctypes
import gzip
import io
import json
import os
import tempfile

from skbtracer_lib import config
from skbtracer_lib.events import fields
from skbtracer_lib.events.decode import EVENT_SIZE
from skbtracer_lib.live import live_session
from skbtracer_lib.outputs import names
from skbtracer_lib.program import probes
from skbtracer_lib.replay import read as replay_read
from skbtracer_lib.replay import session as replay_session
from skbtracer_lib.runinfo import ProbeInfo, RunInfo

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
EXPECTED = os.path.join(HERE, "expected")
REASONS = {2: "NOT_SPECIFIED", 3: "NO_SOCKET", 5: "TCP_CSUM", 6: "NETFILTER_DROP",
           8: "OTHERHOST", 77: "SOME_NEW_REASON"}


MANY_EVENTS = 5000      # a raw case's JSON event lines are kept up to this many events
BIG = 200_000           # expected files larger than this are kept gzipped


def corpus(name):
    return os.path.join(CORPUS, name)


# ---------------------------------------------------------------- cases

# (case name, corpus files, extra argv); every -r case also runs with -t
REPLAY_CASES = []
for _backend in ("tracepoint", "kprobe"):
    for _stream in ("scenarios", "drops", "keep"):
        _file = "%s-%s.jsonl" % (_stream, _backend)
        _base = "%s-%s" % (_stream, _backend)
        REPLAY_CASES += [(_base, [_file], []),
                         (_base + "-json", [_file], ["--json"]),
                         (_base + "-latency-names", [_file], ["--latency", "--names"])]
REPLAY_CASES += [
    ("drops-route-tracepoint", ["drops-route-tracepoint.jsonl"], []),
    ("drops-route-tracepoint-json", ["drops-route-tracepoint.jsonl"], ["--json"]),
    ("scenarios-tracepoint-filtered", ["scenarios-tracepoint.jsonl"], ["udp", "port", "9000"]),
    ("scenarios-kprobe-count", ["scenarios-kprobe.jsonl"], ["-c", "40", "--json"]),
    ("merge", ["merge-node1-tracepoint.jsonl", "merge-node2-tracepoint.jsonl"], []),
    ("merge-json", ["merge-node1-tracepoint.jsonl", "merge-node2-tracepoint.jsonl"],
     ["--json", "--latency"]),
    ("merge-skewed", ["merge-node1-tracepoint.jsonl", "merge-node2-skewed.jsonl"],
     ["--names"]),
    ("merge-skewed-json", ["merge-node1-tracepoint.jsonl", "merge-node2-skewed.jsonl"],
     ["--json"]),
]

# (case name, raw corpus, argv, lost events, attached: None = every probe)
RAW_CASES = [
    ("raw-tracepoint-seed", "tracepoint-seed", ["--drop"], 0, None),
    ("raw-tracepoint-seed-nodrop", "tracepoint-seed", [], 0,
     ["netif_rx", "netif_receive_skb", "net_dev_queue", "net_dev_start_xmit",
      "skb_copy_datagram_iovec"]),
    ("raw-kprobe-seed", "kprobe-seed", ["--route", "--iptable", "--drop"], 0, None),
    ("raw-kprobe-seed-latency", "kprobe-seed", ["--route", "--iptable", "--drop", "--latency",
                                                "-H", "10.244.1.2"], 2, None),
    ("raw-kprobe-extra", "kprobe-extra", ["--route", "--drop"], 0, None),
    ("raw-ipv6", "ipv6", ["--route", "--drop", "--names"], 0, None),
    ("raw-mixed", "mixed", ["--route", "--iptable", "--drop"], 0, None),
    ("raw-keep-thousand", "keep-thousand", ["--keep", "--route", "--iptable", "--drop"], 0,
     None),
]


# ---------------------------------------------------------------- -r

def run_replay(files, argv):
    """(rows, stderr, exit status) of skbtracer -r FILES -t ARGV."""
    cfg = config.parse_args(["-r"] + [corpus(f) for f in files] + ["-t"] + argv)
    out, err = io.StringIO(), io.StringIO()

    def warn(text):
        err.write("skbtracer: warning: %s\n" % text)

    runs = replay_read.read_files(cfg.read, warn)
    status = replay_session.saved_session(cfg, runs, out=out, err=err).run()
    # the files' paths differ from checkout to checkout
    return (out.getvalue(), err.getvalue().replace(CORPUS + os.sep, ""), status)


# ---------------------------------------------------------------- raw events

class GoldenLoaded:
    """What the live source reads of a loaded program (runinfo), for a recorded probe plan."""

    def __init__(self, meta, attached=None):
        planned = [ProbeInfo(name, kind, extra) for name, kind, extra in meta["probes"]]
        self.info = RunInfo(meta["backend"], [p.name for p in planned], planned=planned,
                            attached=[p for p in planned
                                      if attached is None or p.name in attached])
        self.bpf = None

    def symbolize(self, address):
        return "golden_sym+0x%x" % (address & 0xFFFF)

    def stack(self, _stack_id):
        return None

    def lost_events(self):
        return 0

    def watch_modules(self):
        return []


def golden_reasons():
    return probes.DropReasons(dict(REASONS), "the golden corpus")


def fixed_names(empty):
    """Namespaces named by their inode, whatever this machine has (empty: a
    directory standing in for /proc)."""
    fixed = names.NetnsNames(proc=empty, netns_dirs=())
    fixed.host_inode = None
    return fixed


def read_raw(name):
    """(meta, the events in today's layout): the corpus says the layout it
    was written in (synth.save), so a field added to the table since reads
    as zeros and the rest where it is now."""
    with open(corpus(name + ".json")) as f:
        meta = json.load(f)
    with gzip.open(corpus(name + ".raw.gz"), "rb") as f:
        data = f.read()
    size = meta["event_size"]
    raws = [data[i:i + size] for i in range(0, len(data), size)]
    recorded = {name: (at, length) for name, at, length in meta["event_fields"]}
    if recorded != {f.name: (f.offset, f.size) for f in fields.FIELDS}:
        raws = [in_todays_layout(raw, recorded) for raw in raws]
    return meta, raws


def in_todays_layout(raw, recorded):
    """raw written in another layout (recorded: name -> (offset, size))."""
    event = bytearray(EVENT_SIZE)
    for f in fields.FIELDS:
        at, size = recorded.get(f.name, (None, None))
        if size == f.size:
            event[f.span] = raw[at:at + size]
    return bytes(event)


def run_raw(name, argv, lost, attached):
    """(rows, stderr, JSON lines) of a live session fed the raw events."""
    meta, raws = read_raw(name)
    cfg = config.parse_args(["-t", "--node", "golden"] + argv)
    cfg.json = "golden.jsonl"            # the JSON lines go to a StringIO
    out, err, json_out = io.StringIO(), io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as empty:
        session = live_session(cfg, GoldenLoaded(meta, attached), out=out, err=err,
                               files={"json": json_out}, names=fixed_names(empty),
                               reasons=golden_reasons())
        source = session.source
        source.json.run_id = "golden"
        source.clock.offset_ns = 1_700_000_000_000_000_000
        for raw in raws:
            buffer = ctypes.create_string_buffer(raw, len(raw))
            source.records.on_event(0, ctypes.addressof(buffer), len(raw))
        session.flush()
        source.lost = lost
        source.ended_ns = meta["ended_ns"]
        session.tell_story()
        session.end()
    lines = json_out.getvalue()
    if len(raws) > MANY_EVENTS:      # the story objects only (event lines: the small cases)
        lines = "".join(line for line in lines.splitlines(True)
                        if not line.startswith('{"type": "event"'))
    return out.getvalue(), err.getvalue(), lines


# ---------------------------------------------------------------- both

def outputs(case):
    """{suffix: text} of one case, as recorded under expected/."""
    for name, files, argv in REPLAY_CASES:
        if name == case:
            rows, stderr, status = run_replay(files, argv)
            return {"out": rows, "err": stderr + "exit %d\n" % status}
    for name, raw, argv, lost, attached in RAW_CASES:
        if name == case:
            rows, stderr, lines = run_raw(raw, argv, lost, attached)
            return {"out": rows, "err": stderr, "jsonl": lines}
    raise KeyError(case)


def case_names():
    return [c[0] for c in REPLAY_CASES] + [c[0] for c in RAW_CASES]


def expected_path(case, suffix, text):
    path = os.path.join(EXPECTED, "%s.%s" % (case, suffix))
    return path + ".gz" if len(text.encode("utf-8")) > BIG else path


def expected(case):
    found = {}
    for suffix in ("out", "err", "jsonl"):
        path = os.path.join(EXPECTED, "%s.%s" % (case, suffix))
        if os.path.exists(path):
            with open(path, "rb") as f:
                found[suffix] = f.read().decode("utf-8")
        elif os.path.exists(path + ".gz"):
            with gzip.open(path + ".gz", "rb") as f:
                found[suffix] = f.read().decode("utf-8")
    return found
