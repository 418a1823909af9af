#!/usr/bin/python3
"""skbtracer benchmarks: userspace throughput (ours vs the original tool's
per-event path), cost to the node, event loss, startup. See bench/README.md.

    sudo /usr/bin/python3 bench/run.py              (what `make bench` runs)
    sudo /usr/bin/python3 bench/run.py --parts 1    (userspace only, ~1 min)
    sudo /usr/bin/python3 bench/run.py --no-guest   (host only)

Prints one table per part and a final table; writes every figure to
bench/results/latest.json (and a time-stamped copy beside it).
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time
import traceback

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, REPO)

from tabulate import tabulate  # noqa: E402  (Debian: python3-tabulate)

RESULTS = os.path.join(BENCH, "results")
PYTHON = "/usr/bin/python3"
GUEST_FLAVOUR = "6.1"
GUEST_TIMEOUT = 720
GOALS = {"userspace_ratio": 5.0, "nothing_ratio": 0.95}


def log(message):
    sys.stderr.write("[bench] %s\n" % message)
    sys.stderr.flush()


def fmt_rate(value):
    return "-" if value is None else "{:,.0f}".format(value)


def fmt_ratio(value, digits=2):
    return "-" if value is None else ("%." + str(digits) + "fx") % value


def fmt_pct(value):
    return "-" if value is None else "%.1f %%" % (100 * value)


def fmt_s(value):
    return "-" if value is None else "%.1f s" % value


# ---------------------------------------------------------------- parts

def part_userspace(args, results):
    import userspace
    log("part 1: userspace throughput (%d events per measurement, best of %d)"
        % (args.events, args.repeats))
    results["userspace"] = userspace.run(args.events, args.repeats, log=log)


def part_host(args, results):
    import node
    results["host"] = host = {"kernel": os.uname().release, "sender_cpu": node.SENDER_CPU}
    from skbtracer_lib.program import kernel
    host["backend"] = "kprobe" if kernel.kprobes_available() else "tracepoint"
    with node.VethPair() as pair:
        if "2" in args.parts:
            log("part 2 (host, %s backend): cost to the node" % host["backend"])
            host["node_cost"] = node.node_cost(pair, args.seconds)
        if "3" in args.parts:
            log("part 3 (host): event loss")
            host["loss"] = node.loss(pair, seconds=args.loss_seconds)
    if "4" in args.parts:
        log("part 4 (host): startup, BTF layouts vs --layout headers")
        host["startup"] = node.startup(args.startup_samples)
        if "node_cost" in host:
            runs = host["node_cost"]["runs"]
            host["startup"]["btf_from_node_cost"] = [runs["nothing"]["startup_seconds"],
                                                     runs["everything"]["startup_seconds"]]


def part_guest(args, results):
    from testbed import qemu
    log("parts 2 and 4 in the %s guest (qemu, TCG): one boot, about 5 minutes; "
        "progress shows when it ends" % GUEST_FLAVOUR)
    started = time.monotonic()
    command = [PYTHON, os.path.join(BENCH, "node.py"), "--guest", "--seconds", str(args.seconds)]
    r = qemu.run(command, flavour=GUEST_FLAVOUR, timeout=GUEST_TIMEOUT, cwd=REPO)
    for line in r.stderr.splitlines():
        if line.startswith("[bench]"):
            log("guest: " + line[len("[bench] "):])
    found = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not found:
        raise RuntimeError("guest run failed (rc %s, %.0f s): %s"
                           % (r.returncode, time.monotonic() - started, r.stderr[-3000:]))
    results["guest"] = json.loads(found[-1])
    results["guest"]["flavour"] = GUEST_FLAVOUR
    results["guest"]["boot_seconds"] = r.boot_seconds
    results["guest"]["wall_seconds"] = r.seconds


# ---------------------------------------------------------------- tables

def table_userspace(u):
    rows = []
    for name, w in u["workloads"].items():
        rows.append([name, fmt_rate(w.get("ours_reader_eps")), fmt_rate(w.get("theirs_reader_eps")),
                     fmt_ratio(w.get("ratio_reader")),
                     fmt_rate(w.get("ours_python_reader_eps")), fmt_ratio(w.get("ratio_python_reader")),
                     fmt_rate(w["ours_eps"]), fmt_rate(w["theirs_eps"]), fmt_ratio(w["ratio"]),
                     fmt_rate(w.get("theirs_as_written_eps")), fmt_ratio(w.get("ratio_as_written"))])
    print("\n1. Userspace throughput, events per CPU-second (best of %d, %d events each)"
          % (u["repeats"], u["n"]))
    print(tabulate(rows, headers=["workload", "ours, reader", "original, bcc reader", "ratio",
                                  "ours, reader, Python rows", "ratio",
                                  "ours, handler", "original, handler", "ratio",
                                  "original as written", "ratio"],
                   colalign=("left",) + ("right",) * 10))
    in_c = any(w.get("rows_in_c") for w in u["workloads"].values())
    print("   reader = through each tool's real reader from a ring laid out as the kernel's "
          "(ours: reader.py, BPF ring buffer, rows %s; original: bcc's perf reader and ctypes "
          "callback); Python rows = ours with SKBTRACER_PYTHON_ROWS=1; handler = the "
          "per-event function called directly (ours: one event per call into C where built)"
          % ("in C (skbtracer_lib/events/_rows)" if in_c else "in Python: skbtracer_lib/events/_rows is not "
             "built (scripts/build-rows.sh)"))
    print("   original as written = plus bcc's get_table(\"stacks\") on every row "
          "(%s us per call here)" % ("%.0f" % u["get_table_us"] if u.get("get_table_us") else "-"))
    print("   symbolizer: fake %.1f us per address; bcc's BPF.ksym %s us per address (warm)"
          % (u["fake_ksym_us"], "%.1f" % u["bcc_ksym_us"] if u.get("bcc_ksym_us") else "-"))
    stages = u.get("stages_us") or {}
    whole = stages.get("whole Records.on_event")
    if stages:
        print("\n   Where ours spends its time with Python's rows (mix workload, CPU us per event):")
        print(tabulate([[k, "%.2f" % v, fmt_pct(v / whole) if whole and "in C" not in k else "-"]
                        for k, v in stages.items()],
                       headers=["step", "us/event", "of whole"], colalign=("left", "right", "right")))
    if u.get("profile"):
        print("\n   cProfile of Records.on_event, Python's rows (mix; profiling inflates small "
              "calls):")
        print(tabulate([[f, c, "%.2f" % tt, "%.2f" % ct] for f, c, tt, ct in u["profile"]],
                       headers=["function", "calls", "own us/event", "cum us/event"],
                       colalign=("left", "right", "right", "right")))


def table_node(results):
    rows, bpf_rows = [], []
    seconds = None
    for where in ("host", "guest"):
        part = results.get(where, {})
        nc = part.get("node_cost")
        if not nc:
            continue
        seconds = nc["seconds"]
        runs = nc["runs"]
        label = "%s %s (%s)" % (where, part.get("kernel", ""), part.get("backend", ""))
        for metric, key in (("per CPU-second", "cpu_pps"), ("per wall-second", "pps")):
            if "nothing_%s_ratio" % key not in nc:
                continue
            row = [label, metric]
            for name in ("nothing", "everything"):
                row += [fmt_rate(nc["%s_%s_base" % (name, key)]),
                        "%.0f %%" % (100 * nc["%s_%s_spread" % (name, key)]),
                        fmt_rate(runs[name].get(key)), fmt_pct(nc["%s_%s_ratio" % (name, key)])]
            rows.append(row)
        for name in ("nothing", "everything"):
            r = runs[name]
            bpf_rows.append([label, name,
                             "%.1f" % r["bpf_runs_per_datagram"] if r.get("bpf_runs_per_datagram") else "-",
                             "%.0f" % r["bpf_ns_per_run"] if r.get("bpf_ns_per_run") else "-",
                             "%.0f" % r["bpf_ns_per_datagram"] if r.get("bpf_ns_per_datagram") else "-",
                             "%.0f" % (1e9 / nc["%s_cpu_pps_base" % name])
                             if nc.get("%s_cpu_pps_base" % name) else "-",
                             fmt_pct(r.get("tracer_cpu_share")),
                             "%.0f MiB" % r["tracer_peak_rss_mib"] if r.get("tracer_peak_rss_mib") else "-",
                             r.get("rows_printed"), r.get("events_lost")])
    if rows:
        print("\n2. Cost to the node: UDP datagrams/s through a veth pair, %.0f s floods; each traced "
              "run against the mean of the untraced runs before and after it" % seconds)
        print(tabulate(rows, headers=["where", "rate", "untraced", "spread", "matches nothing",
                                      "ratio", "untraced", "spread", "matches everything", "ratio"],
                       colalign=("left", "left") + ("right",) * 8))
        print("\n   What the tracer costs per datagram (BPF run time from the kernel's own "
              "accounting) and itself:")
        print(tabulate(bpf_rows, headers=["where", "filter matches", "BPF runs/datagram", "ns/run",
                                          "BPF ns/datagram", "untraced ns/datagram (CPU)",
                                          "tracer CPU", "tracer peak RSS", "rows", "lost"],
                       colalign=("left", "left") + ("right",) * 8))


def table_loss(loss):
    print("\n3. Event loss with the default %s (%s pages%s = %s events), "
          "%.0f events per datagram, %s s per step"
          % (loss.get("buffer", "perf buffer"), loss.get("perf_pages"),
             "" if loss.get("buffer") == "ring buffer" else " per CPU",
             loss.get("ring_events"), loss["events_per_packet"],
             "%.0f" % loss["steps"][0]["send_seconds"] if loss["steps"] else "-"))
    rows = []
    for r in loss["steps"]:
        rows.append([fmt_rate(r["eps"]), r["events_sent"], r["rows_printed"], r["events_lost"],
                     r["unaccounted"], "yes" if r["flush_packets"] else "no"])
    print(tabulate(rows, headers=["events/s", "events sent", "rows printed", "lost (exit line)",
                                  "sent - printed - lost", "flush datagram"],
                   colalign=("right",) * 5 + ("left",)))
    d, n = loss["double"], loss["flood_noflush"]
    if loss["threshold_eps"]:
        ring = loss.get("ring_events")
        print("   highest rate without loss %s events/s (a full ring is %s of it); lowest rate "
              "with loss %s events/s"
              % (fmt_rate(loss["threshold_eps"]),
                 "%.0f ms" % (1000.0 * ring / loss["threshold_eps"]) if ring else "-",
                 fmt_rate(loss["first_lossy_eps"])))
    else:
        print("   events were lost even at the lowest rate tried")
    print("   at 2x (%s events/s): %d of %d lost (%s); the exit line's lost count %s"
          % (fmt_rate(d["eps"]), d["events_lost"] or 0, d["events_sent"],
             fmt_pct((d["events_lost"] or 0) / d["events_sent"]) if d["events_sent"] else "-",
             "equals sent - printed" if d["unaccounted"] == 0
             else "misses %d events" % d["unaccounted"]))
    q = loss.get("quadruple")
    if q:
        print("   at 4x (%s events/s): %d of %d lost (%s); the exit line's lost count %s"
              % (fmt_rate(q["eps"]), q["events_lost"] or 0, q["events_sent"],
                 fmt_pct((q["events_lost"] or 0) / q["events_sent"]) if q["events_sent"] else "-",
                 "equals sent - printed" if q["unaccounted"] == 0
                 else "misses %d events" % q["unaccounted"]))
    print("   flood (%s events/s, %d lost) with no datagram after it: the exit line misses %d events"
          % (fmt_rate(n["eps"]), n["events_lost"] or 0, n["unaccounted"]))


def table_startup(results):
    rows = []
    for where in ("host", "guest"):
        s = results.get(where, {}).get("startup")
        if not s:
            continue
        btf = statistics.median(s["btf"] + s.get("btf_from_node_cost", [])) if s["btf"] else None
        headers = statistics.median(s["headers"]) if s["headers"] else None
        rows.append(["%s (%s)" % (where, results[where].get("backend", "")),
                     fmt_s(btf), fmt_s(headers),
                     fmt_ratio(headers / btf) if btf and headers else "-",
                     ", ".join("%.1f" % x for x in s["btf"] + s.get("btf_from_node_cost", [])),
                     ", ".join("%.1f" % x for x in s["headers"])])
    if rows:
        print("\n4. Startup: seconds from start to attached (header printed), median of the samples")
        print(tabulate(rows, headers=["where", "BTF offsets", "--layout headers", "headers/BTF",
                                      "BTF samples", "headers samples"],
                       colalign=("left", "right", "right", "right", "left", "left")))


def final_table(results):
    rows = []
    u = results.get("userspace")
    if u:
        for name, w in u["workloads"].items():
            if w.get("ratio_reader"):
                rows.append(["userspace %s: ours / original, both through their readers" % name,
                             fmt_ratio(w["ratio_reader"]), ">= 5x",
                             "yes" if w["ratio_reader"] >= GOALS["userspace_ratio"] else "NO"])
            # the per-event handlers, Python rows: how runs read before the
            # batch reader (issue 14's goal is through the readers, above)
            rows.append(["userspace %s: ours / original, per-event handlers" % name,
                         fmt_ratio(w["ratio"]), "-", "-"])
            if w.get("ratio_as_written"):
                rows.append(["userspace %s: ours / original as written" % name,
                             fmt_ratio(w["ratio_as_written"]), ">= 5x",
                             "yes" if w["ratio_as_written"] >= GOALS["userspace_ratio"] else "NO"])
    for where in ("host", "guest"):
        nc = results.get(where, {}).get("node_cost")
        if nc:
            key = "cpu_pps" if "nothing_cpu_pps_ratio" in nc else "pps"
            for name in ("nothing", "everything"):
                ratio = nc["%s_%s_ratio" % (name, key)]
                rows.append(["%s: datagrams/s, filter matches %s / untraced" % (where, name),
                             fmt_pct(ratio), ">= 95 %" if name == "nothing" else "",
                             ("yes" if ratio >= GOALS["nothing_ratio"] else "NO")
                             if name == "nothing" else ""])
    loss = results.get("host", {}).get("loss")
    if loss:
        rows.append(["host: highest events/s without loss", fmt_rate(loss["threshold_eps"]),
                     ">= 200,000", "yes" if (loss["threshold_eps"] or 0) >= 200000 else "NO"])
        d = loss["double"]
        rows.append(["host: lost at 2x that", "%d of %d" % (d["events_lost"] or 0, d["events_sent"]),
                     "", ""])
        q = loss.get("quadruple")
        if q:
            rows.append(["host: lost at 4x that", "%d of %d" % (q["events_lost"] or 0,
                                                                q["events_sent"]), "", ""])
            rows.append(["host: exit line lost == sent - printed at 4x",
                         "yes" if q["unaccounted"] == 0 else "off by %d" % q["unaccounted"],
                         "equal", "yes" if q["unaccounted"] == 0 else "NO"])
        rows.append(["host: exit line lost == sent - printed (datagram after the burst)",
                     "yes" if d["unaccounted"] == 0 else "off by %d" % d["unaccounted"], "equal",
                     "yes" if d["unaccounted"] == 0 else "NO"])
        n = loss.get("flood_noflush")
        if n:
            rows.append(["host: exit line lost == sent - printed (flood, nothing after it)",
                         "yes" if n["unaccounted"] == 0 else "off by %d" % n["unaccounted"],
                         "equal", "yes" if n["unaccounted"] == 0 else "NO"])
    for where in ("host", "guest"):
        s = results.get(where, {}).get("startup")
        if s and s["btf"] and s["headers"]:
            rows.append(["%s: startup BTF / headers (median)" % where,
                         "%.1f s / %.1f s" % (statistics.median(s["btf"] + s.get("btf_from_node_cost", [])),
                                              statistics.median(s["headers"])), "", ""])
    if rows:
        print("\nSummary")
        print(tabulate(rows, headers=["figure", "value", "goal", "met"],
                       colalign=("left", "right", "left", "left")))


# ---------------------------------------------------------------- main

def main(argv=None):
    ap = argparse.ArgumentParser(description="skbtracer benchmarks (bench/README.md)")
    ap.add_argument("--parts", default="1234", help="which parts, e.g. 12 (default 1234)")
    ap.add_argument("--no-guest", action="store_true", help="skip the qemu guest")
    ap.add_argument("--events", type=int, default=60000,
                    help="events per userspace measurement (default 60000)")
    ap.add_argument("--repeats", type=int, default=3, help="userspace repeats, best kept (default 3)")
    ap.add_argument("--seconds", type=float, default=3.0, help="flood seconds per node-cost run")
    ap.add_argument("--loss-seconds", type=float, default=2.0, help="seconds per loss step")
    ap.add_argument("--startup-samples", type=int, default=2, help="host startups of each kind")
    ap.add_argument("--json", default=os.path.join(RESULTS, "latest.json"))
    args = ap.parse_args(argv)
    args.parts = set(args.parts.replace(",", ""))

    if os.geteuid() != 0 and args.parts - {"1"}:
        ap.error("parts 2-4 load eBPF programs and make namespaces: run as root")
    started = time.monotonic()
    results = {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "git": _git_head(), "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(),
               "errors": {}, "part_seconds": {}}
    if results["loadavg_before"][0] > 1.0:
        log("load average %.1f on %d CPUs: other work is running; CPU-time figures "
            "suffer less from it than wall-clock ones" % (results["loadavg_before"][0], os.cpu_count()))

    steps = []
    if "1" in args.parts:
        steps.append(("userspace", part_userspace))
    if args.parts & set("234"):
        steps.append(("host", part_host))
    if args.parts & set("24") and not args.no_guest:
        steps.append(("guest", part_guest))
    for name, fn in steps:
        t0 = time.monotonic()
        try:
            fn(args, results)
        except Exception as e:      # one part failing still reports the others
            results["errors"][name] = "%s: %s" % (type(e).__name__, e)
            log("%s FAILED: %s" % (name, e))
            traceback.print_exc()
        results["part_seconds"][name] = time.monotonic() - t0

    results["loadavg_after"] = os.getloadavg()
    results["total_seconds"] = time.monotonic() - started
    print_tables(results)
    save(results, args.json)
    return 1 if results["errors"] else 0


def print_tables(results):
    if "userspace" in results:
        table_userspace(results["userspace"])
    table_node(results)
    if results.get("host", {}).get("loss"):
        table_loss(results["host"]["loss"])
    table_startup(results)
    final_table(results)
    for name, error in results["errors"].items():
        print("\n%s: FAILED: %s" % (name, error))
    print("\nTook %.0f s (%s). Load average before/after: %.1f / %.1f."
          % (results["total_seconds"], ", ".join("%s %.0f s" % kv for kv in results["part_seconds"].items()),
             results["loadavg_before"][0], results["loadavg_after"][0]))


def save(results, path):
    """The figures as JSON to path; beside latest.json, a time-stamped copy."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = json.dumps(results, indent=1, default=str) + "\n"
    with open(path, "w") as f:
        f.write(text)
    if os.path.abspath(path) == os.path.join(RESULTS, "latest.json"):
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        with open(os.path.join(RESULTS, "bench-%s.json" % stamp), "w") as f:
            f.write(text)
    print("Figures written to %s" % os.path.abspath(path))


def _git_head():
    try:
        import subprocess
        head = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except OSError:
        return None


if __name__ == "__main__":
    sys.exit(main())
