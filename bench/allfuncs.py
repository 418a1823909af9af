#!/usr/bin/python3
"""--all: functions found, attached and skipped; seconds to attach and to
detach them, single kprobes against kprobe-multi links (where the kernel
has them); rows per datagram and the node cost of a filter that matches
nothing, --all against the built-in route set. Side by side in one run.

    /usr/bin/python3 bench/allfuncs.py [--seconds 3] [--guest 6.1|6.12]

Needs kprobes: run it with --guest on a host without them (this one).
BPF run time comes from the kernel's own accounting (kernel.bpf_stats_enabled),
per datagram of a UDP flood through bench/node.py's veth pair.
"""

import argparse
import os
import re
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)
sys.path.insert(0, BENCH)

from node import EVERYTHING_FILTER, NOTHING_FILTER, DrainedTracer, VethPair, log, traced_flood  # noqa: E402

ATTACHED = re.compile(r"attached (\d+) functions in ([\d.]+) s \((.*?)\); (\d+) skipped")
DETACHED = re.compile(r"detached (\d+) functions in ([\d.]+) s")
DATAGRAMS = 20


def variants():
    """(name, flags, environment) to compare; kprobe-multi where the kernel has it."""
    from skbtracer_lib.program import kprobe_multi
    out = [("route set", [], {}),
           ("--all kprobes", ["--all"], {"SKBTRACER_KPROBE_MULTI": "0"})]
    if kprobe_multi.supported():
        out.append(("--all kprobe-multi", ["--all"], {}))
    return out


def run_variant(pair, flags, env, seconds):
    """Attach/detach figures, BPF ns per datagram of a non-matching flood,
    then rows per datagram of the bench's own traffic (a second start)."""
    out = {}
    os.environ.update(env)
    try:
        tracer = DrainedTracer(NOTHING_FILTER + flags, stop_timeout=900).start(timeout=1800)
        with tracer:
            pair.flood(1.0)
            tracer.wait_quiet(limit=30)
            flood, ns, _runs = traced_flood(pair, tracer, seconds)
            stopped = time.monotonic()
        out["stop_seconds"] = time.monotonic() - stopped
        out["startup_seconds"] = tracer.startup_seconds
        err = "".join(tracer.stderr_lines)
        found = ATTACHED.search(err)
        if found:
            out.update(attached=int(found.group(1)), attach_seconds=float(found.group(2)),
                       how=found.group(3), skipped=int(found.group(4)))
        found = DETACHED.search(err)
        if found:
            out["detach_seconds"] = float(found.group(2))
        if ns is not None and flood["received"]:
            out["ns_per_datagram"] = ns / flood["received"]
        out["pps"] = flood.get("pps")
        with DrainedTracer(EVERYTHING_FILTER + ["--proto", "udp"] + flags,
                           stop_timeout=900).start(timeout=1800) as t:
            time.sleep(0.5)
            sent = pair.send("count", DATAGRAMS)["sent"]
            t.wait_quiet(limit=60)
        out["rows_per_datagram"] = (t.exit_rows or t.rows) / sent if sent else None
    finally:
        for key in env:
            os.environ.pop(key, None)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--guest", metavar="FLAVOUR", help="run inside this Debian guest (6.1, 6.12)")
    args = ap.parse_args(argv)
    if args.guest:
        from testbed import qemu
        command = ("mount -t debugfs none /sys/kernel/debug; mount -t tracefs none "
                   "/sys/kernel/tracing; /usr/bin/python3 bench/allfuncs.py --seconds %g"
                   % args.seconds)
        result = qemu.run(command, flavour=args.guest, timeout=3600, cwd=REPO)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr[-3000:])
        return result.returncode
    from skbtracer_lib.program import functions, kernel
    selection = functions.select([], True)
    results = {}
    with VethPair() as pair:
        for name, flags, env in variants():
            log("allfuncs: %s" % name)
            results[name] = run_variant(pair, flags, env, args.seconds)
    print("--all on kernel %s: %d functions with an skb argument in BTF, %d to attach, "
          "%d skipped before attaching" % (kernel.release(), selection.found,
                                           len(selection.functions), len(selection.skipped)))
    print("%-20s %9s %8s %9s %9s %9s %11s %9s %10s" % (
        "variant", "attached", "skipped", "attach s", "detach s", "start s", "ns/datagram",
        "vs route", "rows/dgram"))
    base = results["route set"].get("ns_per_datagram")
    for name, r in results.items():
        ns = r.get("ns_per_datagram")
        print("%-20s %9s %8s %9s %9s %9.1f %11s %9s %10.1f" % (
            name, r.get("attached", "-"), r.get("skipped", "-"),
            "%.1f" % r["attach_seconds"] if "attach_seconds" in r else "-",
            "%.1f" % r["detach_seconds"] if "detach_seconds" in r else "-",
            r["startup_seconds"], "%.0f" % ns if ns else "-",
            "%.1fx" % (ns / base) if ns and base else "-", r["rows_per_datagram"] or 0))
        if r.get("how"):
            print("    %s: %s" % (name, r["how"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
