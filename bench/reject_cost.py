#!/usr/bin/python3
"""What skbtracer costs a packet its filter rejects, against the floor:
empty BPF programs on the same hooks, and programs that make exactly the
reads a filter cannot avoid, side by side in one run.

    /usr/bin/python3 bench/reject_cost.py [--seconds 3] [--rounds 3] [--before DIR]
        [--sets route,drop,route+drop,expression,all] [--no-pps] [--guest]

A UDP flood through bench/node.py's veth pair (198.18.0.1 -> 198.18.0.2)
while skbtracer runs with -H 10.99.99.99 (no bench packet has it), for each
probe set (--route, the default; --drop; --route --drop; --all where
kprobes exist), and the same with the tcpdump expression 'host 10.99.99.99'
instead of -H (expression). On the same hooks, bench/empty_probes.py
attaches the references: empty programs, and programs making exactly one
and exactly two 24-byte bpf_probe_read_kernel calls from the skb (its
head/data pointers, then the packet: what a filter on raw tracepoints must
read). Where the kernel runs BTF-typed raw tracepoints (tp_btf), skbtracer
and the references attach the tracepoints as tp_btf, and a fourth
reference, 'tp_btf', loads the skb's data pointer by a plain load and
makes one read at data: the floor of a filter on tp_btf; 'empty raw' is
the empty programs as raw tracepoints (what tp_btf costs itself), and
'skbt raw' is skbtracer with raw tracepoints (SKBTRACER_TP_BTF=0): the
same commit before and after tp_btf.
--before DIR adds an older checkout's skbtracer.py.
Figures:
  ns/hit     the kernel's own accounting (kernel.bpf_stats_enabled):
             run_time_ns / run_cnt over the tracer's programs. The
             accounting itself costs time, which the empty programs show.
  excess     ns/hit minus the empty programs' (goal <= 25 ns); x empty:
             the ratio of the round's ns/hit to the empty programs'.
  per read   1 read - empty and 2 reads - 1 read: what one helper call
             costs on this machine; tp_btf - 2 reads: what reading the
             skb by plain loads instead of a helper call saves.
  pps ratio  datagrams/s with skbtracer / with the empty programs, with a
             receiver that reads its socket (as applications do) and with
             one that does not (every datagram dropped at a full socket).
Variants alternate within a round, and each figure is the median of its
rounds (ratios: the median of the per-round ratios). The pps floods run
without the accounting.
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

from skbtracer_lib.program import kernel, tp_btf  # noqa: E402

EMPTY = os.path.join(BENCH, "empty_probes.py")
REJECT = ["-H", "10.99.99.99"]
EXPRESSION = "host 10.99.99.99"    # the same reject, by the tcpdump expression


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


def measure(pair, script, args, seconds, pps, env=None):
    with DrainedTracer(args, script=script, env=env).start() as tracer:
        pair.flood(1.0)
        tracer.wait_quiet(limit=30)
        flood, ns, runs = traced_flood(pair, tracer, seconds)
        if ns is None:
            raise SystemExit("kernel.bpf_stats_enabled cannot be turned on here")
        dropping = reading = None
        if pps:
            dropping = pair.flood(seconds)["pps"]
            with Reading(pair):
                reading = pair.flood(seconds)["pps"]
    return {"ns_per_hit": ns / runs if runs else None,
            "hits_per_datagram": runs / flood["received"] if flood["received"] else None,
            "pps_dropping": dropping, "pps_reading": reading, "rows": tracer.rows}


# a rule that asks conntrack: the namespace's conntrack hooks register, every skb gets an entry
TRACK_RULES = """table ip skbt_bench {
    chain out { type filter hook output priority 0; ct state new,established accept; }
    chain in { type filter hook input priority 0; ct state new,established accept; }
}
"""


def track_connections(pair):
    import subprocess
    for ns in (pair.tx, pair.rx):
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=TRACK_RULES,
                       text=True, check=True)


def machine():
    """CPU model and the mitigations that make helper calls dear."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "?")
    except OSError:
        pass
    lines = ["cpu: %s, %d CPUs" % (model, os.cpu_count())]
    vulns = "/sys/devices/system/cpu/vulnerabilities"
    for name in ("spec_rstack_overflow", "retbleed", "spectre_v2"):
        try:
            with open(os.path.join(vulns, name)) as f:
                lines.append("%s: %s" % (name, f.read().strip()))
        except OSError:
            lines.append("%s: (not reported)" % name)
    return lines


SETS = {"route": ["--route"] + REJECT, "drop": ["--drop"] + REJECT,
        "route+drop": ["--route", "--drop"] + REJECT,
        "expression": ["--route", "--", EXPRESSION], "all": ["--all"] + REJECT}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--guest", action="store_true", help="run inside the Debian 6.1 guest")
    ap.add_argument("--before", metavar="DIR",
                    help="also an older checkout's skbtracer.py (e.g. `git archive` of a commit)")
    ap.add_argument("--sets", default="route,drop,route+drop,expression,all",
                    help="probe sets, comma-separated (all: only where kprobes exist)")
    ap.add_argument("--no-pps", dest="pps", action="store_false",
                    help="only the accounted flood, not the two pps floods")
    ap.add_argument("--tracked", action="store_true",
                    help="conntrack on in both namespaces (an nft ct rule): the flood's skbs "
                         "carry an entry, as on a Kubernetes node")
    ap.add_argument("--header-only", action="store_true",
                    help="also skbtracer --header-only (-H never matches the connection)")
    args = ap.parse_args(argv)
    if args.guest:
        return in_guest("reject_cost.py", args.seconds, args.rounds, timeout=3000)
    sets = [(name, SETS[name]) for name in args.sets.split(",")
            if name in SETS and (name != "all" or kernel.kprobes_available())]
    if not sets:
        ap.error("--sets: none of %s here" % args.sets)
    tracer = os.path.join(REPO, "skbtracer.py")
    variants = [("skbtracer", tracer, []),
                ("empty", EMPTY, []), ("1 read", EMPTY, ["--reads", "1"]),
                ("2 reads", EMPTY, ["--reads", "2"])]
    if tp_btf.check()[0]:
        variants += [("tp_btf", EMPTY, ["--reads", "btf"]), ("empty raw", EMPTY, ["--raw"])]
        # the same commit with raw tracepoints: what tp_btf saves skbtracer itself
        variants.insert(1, ("skbt raw", tracer, [], {tp_btf.FORCE_RAW_ENV: "0"}))
    if args.before:
        variants.insert(1, ("before", os.path.join(os.path.abspath(args.before), "skbtracer.py"), []))
    if args.header_only:
        variants.insert(1, ("hdr-only", tracer, ["--header-only"]))
    results = {}
    with VethPair() as pair:
        if args.tracked:
            track_connections(pair)
        for round_ in range(args.rounds):
            for name, flags in sets:
                for who, script, prefix, *env in variants:
                    if "--header-only" in prefix and not {"-H", "-P", "--proto"} & set(flags):
                        continue    # an expression alone: no -H to match connections by
                    log("round %d: %s %s" % (round_ + 1, who, name))
                    r = measure(pair, script, prefix + flags, args.seconds, args.pps, *env)
                    results.setdefault((name, who), []).append(r)
    report(results, sets, [v[0] for v in variants], args)
    return 0


def report(results, sets, variants, args):
    def med(rs, key):
        return statistics.median(r[key] for r in rs)

    def ratio(a_rs, b_rs, key):
        return statistics.median(a[key] / b[key] for a, b in zip(a_rs, b_rs))

    print("reject cost, kernel %s, median of %d rounds of %.0f s%s"
          % (os.uname().release, args.rounds, args.seconds,
             ", conntrack on (--tracked)" if args.tracked else ""))
    for line in machine():
        print("  " + line)
    print("load average before the report: %.2f %.2f %.2f" % os.getloadavg())
    for name, flags in sets:
        empty = results[(name, "empty")]
        print("\n%s (%s): %.1f probe hits per datagram" % (
            name, " ".join(flags), med(results[(name, "skbtracer")], "hits_per_datagram")))
        header = "  %-10s %9s %9s %9s" % ("", "ns/hit", "excess", "x empty")
        if args.pps:
            header += " %12s %12s" % ("pps reading", "pps dropping")
        print(header + "  samples ns/hit")
        for who in variants:
            if (name, who) not in results:
                continue    # not measured for this set (--header-only without -H)
            rs = results[(name, who)]
            line = "  %-10s %9.1f %9.1f %8.2fx" % (
                who, med(rs, "ns_per_hit"), med(rs, "ns_per_hit") - med(empty, "ns_per_hit"),
                ratio(rs, empty, "ns_per_hit"))
            if args.pps:
                line += " %11.3fx %11.3fx" % (ratio(rs, empty, "pps_reading"),
                                              ratio(rs, empty, "pps_dropping"))
            print(line + "  %s" % [round(r["ns_per_hit"], 1) for r in rs])
        one, two = results[(name, "1 read")], results[(name, "2 reads")]
        tracer = med(results[(name, "skbtracer")], "ns_per_hit")
        # the floor: what a filter cannot avoid on the hooks as skbtracer attaches them
        floor = "tp_btf" if (name, "tp_btf") in results else "2 reads"
        print("  per read: %.1f ns (1 read - empty), %.1f ns (2 reads - 1 read); skbtracer - "
              "%s: %+.1f ns (goal <= +10)" % (
                  med(one, "ns_per_hit") - med(empty, "ns_per_hit"),
                  med(two, "ns_per_hit") - med(one, "ns_per_hit"),
                  floor, tracer - med(results[(name, floor)], "ns_per_hit")))
        if floor == "tp_btf":
            print("  tp_btf (plain loads + 1 read) - 2 reads: %+.1f ns; empty - empty raw "
                  "(tp_btf's own cost): %+.1f ns" % (
                      med(results[(name, "tp_btf")], "ns_per_hit") - med(two, "ns_per_hit"),
                      med(empty, "ns_per_hit") - med(results[(name, "empty raw")], "ns_per_hit")))
        for older in ("skbt raw", "before"):
            if (name, older) in results:
                print("  skbtracer / %s, per round: %.3fx" % (older, ratio(
                    results[(name, "skbtracer")], results[(name, older)], "ns_per_hit")))
    print("\nx empty and pps: per-round ratios to the empty programs, median; "
          "goal: excess <= 25 ns/hit")


if __name__ == "__main__":
    sys.exit(main())
