#!/usr/bin/python3
"""What skbtracer costs a packet its filter rejects, against the floor:
empty BPF programs on the same hooks, side by side in one run.

    /usr/bin/python3 bench/reject_cost.py [--seconds 3] [--rounds 3] [--guest]

A UDP flood through bench/node.py's veth pair (198.18.0.1 -> 198.18.0.2)
while skbtracer runs with -H 10.99.99.99 (no bench packet has it), for each
probe set (--route, the default; --drop; --route --drop; --all where
kprobes exist), and bench/empty_probes.py attaches empty programs to the same hooks.
Figures:
  ns/hit     the kernel's own accounting (kernel.bpf_stats_enabled):
             run_time_ns / run_cnt over the tracer's programs. The
             accounting itself costs time, which the empty programs show.
  excess     skbtracer's ns/hit minus the empty programs' (goal <= 25 ns).
  pps ratio  datagrams/s with skbtracer / with the empty programs, with a
             receiver that reads its socket (as applications do) and with
             one that does not (every datagram dropped at a full socket).
Variants alternate (skbtracer, empty, skbtracer, empty ...) over rounds,
and each figure is the median of its rounds. The pps flood runs without
the accounting.
"""

import argparse
import os
import socket
import statistics
import sys
import threading

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
sys.path.insert(0, BENCH)

from node import DrainedTracer, VethPair, in_guest, log, traced_flood  # noqa: E402

from skbtracer_lib.program import kernel  # noqa: E402

EMPTY = os.path.join(BENCH, "empty_probes.py")
REJECT = ["-H", "10.99.99.99"]


class Reading:
    """A thread reading the pair's receiving socket while it lives."""

    def __init__(self, pair):
        self.sock = pair.sink
        self.stop = False

    def __enter__(self):
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self):
        buf = bytearray(2048)
        while not self.stop:
            try:
                self.sock.recv_into(buf)
            except socket.timeout:
                pass

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join(2)
        self.sock.settimeout(None)


def measure(pair, script, args, seconds):
    with DrainedTracer(args, script=script).start() as tracer:
        pair.flood(1.0)
        tracer.wait_quiet(limit=30)
        flood, ns, runs = traced_flood(pair, tracer, seconds)
        if ns is None:
            raise SystemExit("kernel.bpf_stats_enabled cannot be turned on here")
        dropping = pair.flood(seconds)["pps"]
        with Reading(pair):
            reading = pair.flood(seconds)["pps"]
    return {"ns_per_hit": ns / runs if runs else None,
            "hits_per_datagram": runs / flood["received"] if flood["received"] else None,
            "pps_dropping": dropping, "pps_reading": reading, "rows": tracer.rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--guest", action="store_true", help="run inside the Debian 6.1 guest")
    ap.add_argument("--before", metavar="DIR",
                    help="also an older checkout's skbtracer.py (e.g. `git archive` of a commit)")
    args = ap.parse_args(argv)
    if args.guest:
        return in_guest("reject_cost.py", args.seconds, args.rounds, timeout=3000)
    sets = [("--route", ["--route"]), ("--drop", ["--drop"]),
            ("--route --drop", ["--route", "--drop"])]
    if kernel.kprobes_available():
        sets.append(("--all", ["--all"]))
    variants = [("skbtracer", os.path.join(REPO, "skbtracer.py")), ("empty", EMPTY)]
    if args.before:
        variants.append(("before", os.path.join(os.path.abspath(args.before), "skbtracer.py")))
    results = {}
    with VethPair() as pair:
        for round_ in range(args.rounds):
            for name, flags in sets:
                for who, script in variants:
                    log("round %d: %s %s" % (round_ + 1, who, name))
                    r = measure(pair, script, REJECT + flags, args.seconds)
                    results.setdefault((name, who), []).append(r)
    print("reject cost, kernel %s, -H 10.99.99.99, median of %d rounds of %.0f s"
          % (os.uname().release, args.rounds, args.seconds))
    print("%-16s %9s %9s %9s %7s %14s %14s" % ("probes", "ns/hit", "empty", "excess",
                                              "hits/dg", "pps reading", "pps dropping"))
    for name, _flags in sets:
        ours, empty = results[(name, "skbtracer")], results[(name, "empty")]

        def med(rs, key):
            return statistics.median(r[key] for r in rs)
        reading = statistics.median(a["pps_reading"] / b["pps_reading"] for a, b in zip(ours, empty))
        dropping = statistics.median(a["pps_dropping"] / b["pps_dropping"]
                                     for a, b in zip(ours, empty))
        print("%-16s %9.1f %9.1f %9.1f %7.1f %13.3fx %13.3fx" % (
            name, med(ours, "ns_per_hit"), med(empty, "ns_per_hit"),
            med(ours, "ns_per_hit") - med(empty, "ns_per_hit"), med(ours, "hits_per_datagram"),
            reading, dropping))
        print("%-16s samples ns/hit ours %s empty %s" % (
            "", [round(r["ns_per_hit"], 1) for r in ours], [round(r["ns_per_hit"], 1) for r in empty]))
        before = results.get((name, "before"))
        if before:
            print("%-16s before: %.1f ns/hit, excess %.1f; pps reading %.3fx, dropping %.3fx "
                  "of the empty programs" % (
                      "", med(before, "ns_per_hit"), med(before, "ns_per_hit") - med(empty, "ns_per_hit"),
                      statistics.median(a["pps_reading"] / b["pps_reading"] for a, b in zip(before, empty)),
                      statistics.median(a["pps_dropping"] / b["pps_dropping"] for a, b in zip(before, empty))))
    print("pps ratio = skbtracer / empty programs, per round, median; goal: excess <= 25 ns/hit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
