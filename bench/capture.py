#!/usr/bin/python3
"""What -w costs, side by side in one run (host only):

  1. userspace: events/s through skbtracer's own perf callback
     (live.Records.on_event, with the poll loop's flush every 256 events) on
     the bench's event mix, without -w and with -w (each event then carries
     a 98-byte Ethernet frame, as the kernel appends it), best of R;
  2. node cost: the BPF programs' run time per datagram (kernel.bpf_stats)
     at a paced 2000 datagrams/s, traced (every packet matches) without and
     with -w (--snaplen 256); then datagrams/s of a UDP flood between two
     namespaces (bench/node.py's VethPair), untraced / traced / traced with
     -w / untraced. Under a flood the perf ring overflows, and a failed
     submit is cheaper than a delivered one: the paced figures are the
     copy's own cost.

    sudo /usr/bin/python3 bench/capture.py [--events N] [--repeats R] [--seconds S]

Prints two tables and one JSON line (--json PATH writes it to a file too).
No assertions: measurement only.
"""

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, REPO)

import node  # noqa: E402
import userspace  # noqa: E402
import workload  # noqa: E402

from skbtracer_lib import config
from skbtracer_lib.outputs import capture  # noqa: E402
from skbtracer_lib.live import live_session  # noqa: E402

FRAME = bytes.fromhex("020000010003020000010101" "0800") + bytes(84)   # 98 bytes, like a ping
FLUSH_EVERY = 256       # events per poll batch (what one perf_buffer_poll hands over)


def log(message):
    sys.stderr.write("[bench] %s\n" % message)
    sys.stderr.flush()


class CaptureRing(workload.EventRing):
    """EventRing whose events carry the bytes skbtracer.c appends with -w."""

    def __init__(self, raws, tail):
        self.size = workload.EVENT_SIZE + len(tail)
        full = [r + tail for r in raws]
        import ctypes
        self.count = len(full)
        self.buffer = ctypes.create_string_buffer(b"".join(full), self.count * self.size)
        base = ctypes.addressof(self.buffer)
        self.addresses = [base + k * self.size for k in range(self.count)]

    def feed(self, callback, n, cpu=0):
        addresses, m, size = self.addresses, self.count, self.size
        for k in range(n):
            callback(cpu, addresses[k % m], size)


def session_rate(argv, ring, n, capture_path=None):
    """Events per CPU-second of Records.on_event (+ the sinks' flushes)."""
    cfg = config.parse_args(argv)
    ksyms = workload.FakeKsyms()
    bpf = workload.FakeBPF(ksyms, workload.FakeStackTable(ksyms))
    loaded = userspace.BenchLoaded(bpf, workload.PROBE_NAMES)
    loaded.info.capture_bytes = cfg.snaplen
    with open(os.devnull, "w") as out:
        capture_file = open(capture_path, "wb") if capture_path else None
        try:
            files = {"write": capture_file} if capture_file else {}
            session = live_session(cfg, loaded, out=out, err=io.StringIO(), files=files)
            session.start(None)

            def fed(count):
                on_event = session.source.records.on_event
                for start in range(0, count, FLUSH_EVERY):
                    ring.feed(on_event, min(FLUSH_EVERY, count - start))
                    session.flush()

            fed(min(2000, ring.count))               # warm: caches, interfaces
            cpu0 = time.thread_time()
            fed(n)
            return n / (time.thread_time() - cpu0)
        finally:
            if capture_file:
                capture_file.close()


def part_userspace(events, repeats, where):
    raws = workload.mix_events(min(events, 20000))
    plain = workload.EventRing(raws)
    tail = capture.pack(capture.LINKTYPE_ETHERNET, FRAME)
    with_bytes = CaptureRing(raws, tail)
    path = os.path.join(where, "bench.pcapng")
    runs = {"plain": [], "w": []}
    for _ in range(repeats):
        runs["plain"].append(session_rate([], plain, events))
        if os.path.exists(path):
            os.unlink(path)
        runs["w"].append(session_rate(["-w", path], with_bytes, events, capture_path=path))
        log("userspace: plain %.0f, -w %.0f events/s" % (runs["plain"][-1], runs["w"][-1]))
    out = {"events": events, "repeats": repeats,
           "plain_eps": max(runs["plain"]), "w_eps": max(runs["w"]),
           "plain_eps_median": statistics.median(runs["plain"]),
           "w_eps_median": statistics.median(runs["w"]),
           "pcapng_bytes_per_event": os.path.getsize(path) / (events + min(2000, events))}
    out["ratio"] = out["w_eps"] / out["plain_eps"]
    return out


def paced(pair, seconds, pps):
    """Datagrams at a fixed rate (no loss): what the BPF programs cost per
    datagram without the perf ring's overflow path muddling it."""
    before = pair.rx_packets()
    r = pair.send("paced", seconds, pps)
    r["received"] = pair.rx_packets() - before
    r["pps"] = r["received"] / r["seconds"]
    return r


def traced_flood(pair, args, seconds, pps=None):
    with node.DrainedTracer(args).start() as tracer:
        if pps:
            paced(pair, 1.0, pps)       # warm-up at the same rate
        else:
            pair.flood(1.0)
        tracer.wait_quiet(limit=30)
        rows0 = tracer.rows
        with node.BpfRunStats() as stats:
            bpf0 = node.prog_stats(tracer.proc.pid)
            cpu0 = tracer.cpu_seconds()
            r = paced(pair, seconds, pps) if pps else pair.flood(seconds)
            cpu1 = tracer.cpu_seconds()
            bpf1 = node.prog_stats(tracer.proc.pid)
        if stats.enabled and bpf1 and r["received"]:
            ns = sum(bpf1[p][0] - bpf0.get(p, (0, 0))[0] for p in bpf1)
            runs = sum(bpf1[p][1] - bpf0.get(p, (0, 0))[1] for p in bpf1)
            r["bpf_ns_per_datagram"] = ns / r["received"]
            r["bpf_ns_per_run"] = ns / runs if runs else None
        r["tracer_cpu_share"] = (cpu1 - cpu0) / r["seconds"] if cpu0 is not None else None
        tracer.wait_quiet(limit=30)
        r["rows_during"] = tracer.rows - rows0
    r["rows_printed"], r["events_lost"] = tracer.exit_rows, tracer.exit_lost
    return r


PACED_PPS = 2000


def part_node(seconds, where):
    path = os.path.join(where, "flood.pcapng")
    runs = {}
    with node.VethPair() as pair:
        for name, extra in (("paced", []), ("paced_w", ["-w", path + ".paced"])):
            log("node: traced, %d datagrams/s, %s" % (PACED_PPS, "-w" if extra else "no -w"))
            runs[name] = traced_flood(pair, node.EVERYTHING_FILTER + extra, seconds, PACED_PPS)
        log("node: warm-up, untraced %.0f s" % seconds)
        pair.flood(1.0)
        runs["untraced_0"] = pair.flood(seconds)
        log("node: traced, every packet matches, no -w")
        runs["traced"] = traced_flood(pair, node.EVERYTHING_FILTER, seconds)
        log("node: traced, every packet matches, -w (snaplen 256)")
        runs["traced_w"] = traced_flood(pair, node.EVERYTHING_FILTER + ["-w", path], seconds)
        runs["traced_w"]["pcapng_bytes"] = os.path.getsize(path)
        log("node: untraced %.0f s" % seconds)
        runs["untraced_1"] = pair.flood(seconds)
    base = (runs["untraced_0"]["pps"] + runs["untraced_1"]["pps"]) / 2
    out = {"seconds": seconds, "runs": runs, "untraced_pps": base,
           "spread": abs(runs["untraced_0"]["pps"] - runs["untraced_1"]["pps"]) / base}
    for name in ("traced", "traced_w"):
        out["%s_ratio" % name] = runs[name]["pps"] / base
    for plain, written in (("traced", "traced_w"), ("paced", "paced_w")):
        a = runs[plain].get("bpf_ns_per_datagram")
        b = runs[written].get("bpf_ns_per_datagram")
        if a and b:
            out["%s_bpf_ns_per_datagram_extra" % written] = b - a
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        ap.error("needs root (eBPF, namespaces)")
    result = {"commit": _git_head(), "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="skbt-bench-w-") as where:
        result["userspace"] = u = part_userspace(args.events, args.repeats, where)
        result["node"] = n = part_node(args.seconds, where)
    result["load_after"] = os.getloadavg()
    print("userspace, events/s (CPU), best of %d x %d events" % (args.repeats, args.events))
    print("  without -w %10.0f\n  with -w    %10.0f   (%.2fx; %.0f pcapng bytes per event)"
          % (u["plain_eps"], u["w_eps"], u["ratio"], u["pcapng_bytes_per_event"]))
    r = n["runs"]
    print("node cost, UDP flood %.0f s per run, datagrams/s (untraced %.0f, spread %.1f %%)"
          % (n["seconds"], n["untraced_pps"], 100 * n["spread"]))
    for name, label in (("traced", "traced      "), ("traced_w", "traced -w   ")):
        x = r[name]
        print("  %s %10.0f  %5.1f %% of untraced  BPF %s ns/datagram  rows %s  lost %s"
              % (label, x["pps"], 100 * n["%s_ratio" % name],
                 "%.0f" % x["bpf_ns_per_datagram"] if x.get("bpf_ns_per_datagram") else "?",
                 x["rows_printed"], x["events_lost"]))
    print("paced, %d datagrams/s for %.0f s (no loss expected): BPF time per datagram"
          % (PACED_PPS, n["seconds"]))
    for name, label in (("paced", "traced      "), ("paced_w", "traced -w   ")):
        x = r[name]
        print("  %s %s ns/datagram, %s ns/run  rows %s (%.1f per datagram)  lost %s  "
              "tracer CPU %s"
              % (label, "%.0f" % x["bpf_ns_per_datagram"] if x.get("bpf_ns_per_datagram") else "?",
                 "%.0f" % x["bpf_ns_per_run"] if x.get("bpf_ns_per_run") else "?",
                 x["rows_printed"], x["rows_during"] / max(1, x["received"]), x["events_lost"],
                 "%.1f %%" % (100 * x["tracer_cpu_share"]) if x.get("tracer_cpu_share") is not None
                 else "?"))
    for key, what in (("traced_w", "flood"), ("paced_w", "paced")):
        extra = n.get("%s_bpf_ns_per_datagram_extra" % key)
        if extra is not None:
            print("  -w changes BPF time per datagram by %+.0f ns (%s)" % (extra, what))
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    return 0


def _git_head():
    import subprocess
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
