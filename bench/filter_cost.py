#!/usr/bin/python3
"""What a filter expression costs a packet it rejects, against the same
filter given as a flag, side by side in one run.

    /usr/bin/python3 bench/filter_cost.py [--seconds 3] [--rounds 2] [--guest]

A UDP flood through bench/node.py's veth pair (198.18.0.1 -> 198.18.0.2)
while skbtracer runs with a filter that no bench packet passes:
  -H 192.0.2.1             the flag (checked on the addresses, in C)
  'host 192.0.2.1'         the same filter as a pcap expression
  10 alternatives          'host 192.0.2.1 or host 192.0.2.2 or ... .10'
The figure is the kernel's own accounting (kernel.bpf_stats_enabled):
BPF run time per probe hit, and per datagram. Variants alternate over
rounds (A B C A B C ...) and each figure is the median of its rounds.
--guest runs the same inside the Debian 6.1 guest (kprobes) instead.
"""

import argparse
import os
import statistics
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
sys.path.insert(0, BENCH)

from node import DrainedTracer, VethPair, in_guest, log, traced_flood  # noqa: E402

LONG = " or ".join("host 192.0.2.%d" % n for n in range(1, 11))
VARIANTS = [("-H 192.0.2.1", ["-H", "192.0.2.1"]),
            ("'host 192.0.2.1'", ["host 192.0.2.1"]),
            ("10 alternatives", [LONG])]


def measure(pair, args, seconds):
    with DrainedTracer(args).start() as tracer:
        pair.flood(1.0)
        tracer.wait_quiet(limit=30)
        flood, ns, runs = traced_flood(pair, tracer, seconds)
        if ns is None:
            raise SystemExit("kernel.bpf_stats_enabled cannot be turned on here")
        rows = tracer.rows
    return {"ns_per_run": ns / runs if runs else None,
            "ns_per_datagram": ns / flood["received"] if flood["received"] else None,
            "pps": flood.get("pps"), "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--guest", action="store_true", help="run inside the Debian 6.1 guest")
    args = ap.parse_args(argv)
    if args.guest:
        return in_guest("filter_cost.py", args.seconds, args.rounds, timeout=1800)
    results = {name: [] for name, _ in VARIANTS}
    with VethPair() as pair:
        for round_ in range(args.rounds):
            for name, variant in VARIANTS:
                log("round %d: %s" % (round_ + 1, name))
                results[name].append(measure(pair, variant, args.seconds))
    kernel = os.uname().release
    print("filter cost for rejected packets, kernel %s, median of %d rounds of %.0f s"
          % (kernel, args.rounds, args.seconds))
    print("%-20s %12s %16s %10s %6s" % ("filter", "ns/hit", "ns/datagram", "vs -H", "rows"))
    reference = None
    for name, _ in VARIANTS:
        per_run = statistics.median(r["ns_per_run"] for r in results[name])
        per_datagram = statistics.median(r["ns_per_datagram"] for r in results[name])
        reference = reference or per_run
        print("%-20s %12.1f %16.1f %9.2fx %6d" % (name, per_run, per_datagram,
                                                  per_run / reference,
                                                  sum(r["rows"] for r in results[name])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
