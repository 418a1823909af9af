#!/usr/bin/python3
"""The whole test suite, stage by stage, with per-stage times.

  unit        decoding, formatting, validation, BTF (no kernel probes)
  host        compile + verifier for every mode; the topology's ground
              truth; tests/kernel on this kernel (tracepoints here)
  package     the .deb (build from a clean clone, lintian, apt-get install,
              a trace by the installed command, purge) and the pip path
  guest-X     kprobes in a qemu guest booting Debian's kernel X
              (one boot runs tests/kernel inside it)

Exits non-zero when any stage fails or when a stage ran no test.
"""

import argparse
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
PYTHON = "/usr/bin/python3"
PYTEST = [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"]
# Guest kernels in the suite. 6.1 is required; the others are added when
# they boot and run bcc here (see the test-bed notes in README.md).
GUEST_FLAVOURS = ["6.1", "5.10", "6.12"]
REQUIRED_FLAVOUR = "6.1"
# Every bcc compile costs seconds under TCG: the required kernel runs all of
# tests/kernel, the others the seed's scenarios and the drop reasons, and
# 6.12 (the one with kprobe-multi links) --all/--func too.
SCENARIOS_AND_DROPS = ["tests/kernel/test_scenarios.py", "tests/kernel/test_drops.py"]
GUEST_TESTS = {"6.1": ["tests/kernel"],
               "6.12": SCENARIOS_AND_DROPS + ["tests/kernel/test_allfuncs.py"],
               "other": SCENARIOS_AND_DROPS}
GUEST_TIMEOUT = 1500


def summary_counts(output):
    """(passed, failed) from pytest's closing line."""
    counts = {}
    for line in output.splitlines()[-5:]:
        for number, word in re.findall(r"(\d+) (passed|failed|error|errors)", line):
            counts[word] = counts.get(word, 0) + int(number)
    return counts.get("passed", 0), counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)


def run_local(name, paths):
    started = time.monotonic()
    proc = subprocess.run(PYTEST + paths, cwd=REPO, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    sys.stdout.write(proc.stdout)
    return name, proc.returncode, proc.stdout, time.monotonic() - started


def run_guest(flavour):
    from testbed import guest
    started = time.monotonic()
    name = "guest-%s" % flavour
    command = " ".join(PYTEST + GUEST_TESTS.get(flavour, GUEST_TESTS["other"]))
    # stream: the guest's pytest output appears as it runs
    result = guest.run(command, flavour=flavour, timeout=GUEST_TIMEOUT, cwd=REPO, stream=True)
    output = result.stdout + ("\n" + result.failure if result.failure else "")
    if result.failure:
        sys.stdout.write(result.failure)
    print("guest-%s: booted in %.1f s, %.1f s in all" % (flavour, result.boot_seconds or 0, result.seconds))
    return name, result.returncode, output, time.monotonic() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-guest", action="store_true", help="skip the qemu guest stages")
    parser.add_argument("--flavour", action="append", help="guest kernels (default: all in the suite)")
    parser.add_argument("--stage", action="append",
                        help="only these stages (unit, host, package, guest)")
    args = parser.parse_args()
    stages = args.stage or ["unit", "host", "package", "guest"]

    results = []
    if "unit" in stages:
        print("=== stage unit", flush=True)
        results.append(run_local("unit", ["tests/unit"]))
    if "host" in stages:
        print("=== stage host", flush=True)
        results.append(run_local("host", ["tests/host", "tests/kernel"]))
    if "package" in stages:
        print("=== stage package", flush=True)
        results.append(run_local("package", ["tests/package"]))
    if "guest" in stages and not args.no_guest:
        from testbed import guest
        for flavour in args.flavour or GUEST_FLAVOURS:
            print("=== stage guest-%s" % flavour, flush=True)
            try:
                guest.prepare(flavour)
            except Exception as e:   # download, extraction or a missing tool
                if flavour == REQUIRED_FLAVOUR:
                    results.append(("guest-" + flavour, 1, "cannot prepare: %s" % e, 0.0))
                else:
                    print("guest-%s: not in the suite here: %s" % (flavour, e))
                continue
            results.append(run_guest(flavour))

    print("\n=== summary")
    total_passed = total_failed = 0
    ok = True
    for name, rc, output, seconds in results:
        passed, failed = summary_counts(output)
        total_passed += passed
        total_failed += failed
        stage_ok = rc == 0 and passed > 0
        ok = ok and stage_ok
        print("%-10s %-4s %4d passed %3d failed  %7.1f s" % (
            name, "ok" if stage_ok else "FAIL", passed, failed, seconds))
    if not results:
        ok = False
    print("%d passed, %d failed" % (total_passed, total_failed))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
