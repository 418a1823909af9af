#!/usr/bin/python3
"""The whole test suite, stage by stage, with per-stage times.

  unit        decoding, formatting, validation, BTF (no kernel probes)
  host        compile + verifier for every mode; the topology's ground
              truth; tests/kernel on this kernel (tracepoints here)
  package     the .deb (build from a clean clone, lintian, apt-get install,
              a trace by the installed command, purge) and the pip path
  guest-X     kprobes in a qemu guest booting Debian's kernel X
              (one boot runs the stage's tests/kernel modules inside it)

A green run means every configured stage ran. The summary has a row for each
stage, run or not; the run fails when a stage fails, runs no test, did not
run (not selected, or its kernel could not be prepared), or skips a test for
a reason that allowed_skips.py does not list for that stage. Local runs of a
few stages say --allow-missing (refused under CI=true).

Rules for new tests (round 3 on; tests/README.md says the same at length):
  - each new module's docstring says which stages and kernels it runs on,
    and GUEST_STAGES below lists it where a guest other than 6.1 must run it;
  - a test skips only with a reason allowed_skips.py lists for that stage;
  - every wait has a timeout (TracerRun.wait raises on one);
  - one tracer start per group of guest cases (a bcc compile costs
    17-60 s under TCG): a module-scoped fixture runs the traffic, the tests
    assert on its rows.
"""

import argparse
import contextlib
import fcntl
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from allowed_skips import ALLOWED_SKIPS  # noqa: E402

PYTHON = "/usr/bin/python3"
OUTPUT_LOCK = threading.Lock()
PYTEST = [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"]
LOCAL_STAGES = {"unit": ["tests/unit"],
                "host": ["tests/host", "tests/kernel"],
                "package": ["tests/package"]}
# Every guest kernel is in the suite: 5.10 is the one without drop reasons
# and module BTF, 6.12 the one with kprobe-multi links.
GUEST_FLAVOURS = ["6.1", "5.10", "6.12"]
# Every bcc compile costs seconds under TCG: the 6.1 kernel runs all of
# tests/kernel, the others the seed's scenarios and the drop reasons, and
# 6.12 (kprobe-multi links) --all/--func and the flight recorder too.
SCENARIOS_AND_DROPS = ["tests/kernel/test_scenarios.py", "tests/kernel/test_drops.py",
                       "tests/kernel/test_conntrack_drops.py"]
# 6.1 runs all of tests/kernel in two boots, so that the two lanes of guests
# (run_guests) end together: guest-6.1b these modules, guest-6.1 the rest
# (tests/kernel without them: a new module runs in 6.1 without being listed).
# Chosen by the per-module times of a 6.1 run (the table each run prints).
SIXONE_B = ["tests/kernel/test_allfuncs.py", "tests/kernel/test_reliability.py",
            "tests/kernel/test_story_scale.py", "tests/kernel/test_why.py",
            "tests/kernel/test_neigh.py"]
# stage -> (kernel flavour, pytest arguments, timeout), in the order the
# lanes take them; the timeout is seconds per guest run, boot included:
# about 3x what each takes on a quiet machine, for a loaded one
GUEST_STAGES = {
    "guest-6.1": ("6.1", ["tests/kernel"] + ["--ignore=" + path for path in SIXONE_B], 3600),
    "guest-6.1b": ("6.1", SIXONE_B, 2700),
    "guest-5.10": ("5.10", SCENARIOS_AND_DROPS, 1200),
    # --on-trouble's record and sweep on the kprobe-multi kernel too (issue 27)
    "guest-6.12": ("6.12", SCENARIOS_AND_DROPS + ["tests/kernel/test_allfuncs.py",
                                                   "tests/kernel/test_recorder.py"], 1500),
}
STAGES = list(LOCAL_STAGES) + list(GUEST_STAGES)

SKIP_LINE = re.compile(r"^SKIPPED \[(\d+)\] (\S+?): (.*)$")
COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b")


@dataclass
class Stage:
    name: str
    ran: bool = False
    returncode: int = 0
    output: str = ""
    seconds: float = 0.0
    problems: list = field(default_factory=list)     # why the stage fails, beside pytest's own

    def counts(self):
        """{passed, failed, skipped, ...} from pytest's closing line."""
        counts = {}
        for line in self.output.splitlines()[-8:]:
            if not re.search(r" in [\d.]+s", line):
                continue
            for number, word in COUNT.findall(line):
                word = "errors" if word == "error" else word
                counts[word] = counts.get(word, 0) + int(number)
        return counts

    def skips(self):
        """[(count, where, reason)] from pytest's -rs lines."""
        found = []
        for line in self.output.splitlines():
            match = SKIP_LINE.match(line.strip())
            if match:
                found.append((int(match.group(1)), match.group(2), match.group(3).strip()))
        return found

    def judge(self):
        """Add every reason this stage is not green to self.problems."""
        if not self.ran:
            return
        counts = self.counts()
        if self.returncode != 0:
            self.problems.append("exit code %d" % self.returncode)
        if counts.get("passed", 0) == 0:
            self.problems.append("no test passed")
        if counts.get("xfailed") or counts.get("xpassed"):
            self.problems.append("xfail is not allowed here: fix the test or skip it for an "
                                 "allowed reason")
        skips = self.skips()
        if sum(n for n, _where, _reason in skips) != counts.get("skipped", 0):
            self.problems.append("%d skipped, but %d skip lines could be read (-rs)"
                                 % (counts.get("skipped", 0), len(skips)))
        allowed = ALLOWED_SKIPS.get(self.name, set())
        for n, where, reason in skips:
            if reason not in allowed:
                self.problems.append("skip not allowed on %s: %s: %s (x%d)"
                                     % (self.name, where, reason, n))

    def ok(self):
        return self.ran and not self.problems


def run_local(stage, paths):
    started = time.monotonic()
    proc = subprocess.run(PYTEST + paths, cwd=REPO, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    sys.stdout.write(proc.stdout)
    stage.ran, stage.returncode, stage.output = True, proc.returncode, proc.stdout
    stage.seconds = time.monotonic() - started


@contextlib.contextmanager
def held(lock_path):
    """An exclusive flock on lock_path for the block (None: no lock)."""
    if lock_path is None:
        yield
        return
    with open(lock_path, "a") as lock:
        if not _try_lock(lock):
            print("waiting for %s" % lock_path, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _try_lock(lock):
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def prefetch_kernels(flavours):
    """Download and unpack the guest kernels in the background while the
    local stages run: on a fresh machine that is minutes of waiting on the
    network the tests can overlap. run_guest's own prepare() waits for it
    (the cache's per-flavour lock) and reports any failure."""
    def fetch():
        from testbed import qemu
        for flavour in flavours:
            try:
                qemu.prepare(flavour)
            except Exception:       # run_guest tries again and fails the stage
                pass
    thread = threading.Thread(target=fetch, name="prefetch-kernels", daemon=True)
    thread.start()
    return thread


def run_guest(stage, stream=True):
    """Prepare the stage's kernel and run its tests in one boot. Any
    exception (a download, a missing tool or a bug in testbed/qemu) fails
    the stage: it is not in the suite's results otherwise. stream: the
    guest's pytest output appears as it runs; else all of it at the end
    (a stage run beside a streaming one)."""
    started = time.monotonic()
    flavour, paths, timeout = GUEST_STAGES[stage.name]
    try:
        from testbed import qemu
        qemu.prepare(flavour)
        result = qemu.run(" ".join(PYTEST + paths), flavour=flavour, timeout=timeout, cwd=REPO,
                          stream=stream)
    except Exception as e:
        stage.problems.append("cannot run the guest: %s: %s" % (type(e).__name__, e))
        stage.seconds = time.monotonic() - started
        return
    if not stream:
        with OUTPUT_LOCK:
            print("=== stage %s (ran beside another guest; its output)" % stage.name)
            sys.stdout.write(result.stdout + result.stderr)
    if result.failure:
        sys.stdout.write(result.failure)
        stage.problems.append(result.failure.splitlines()[0])
    print("%s: booted in %.1f s, %.1f s in all" % (stage.name, result.boot_seconds or 0,
                                                  result.seconds), flush=True)
    stage.ran, stage.returncode, stage.output = True, result.returncode, result.stdout
    stage.seconds = time.monotonic() - started


def run_guests(stages, lock_path, side_by_side):
    """The guest stages, in two lanes that each take the next stage when
    they are free: the first stage (guest-6.1) streams its output, the
    others print theirs when each ends. A guest spends most of its time in
    bcc compiles, which keep one of its two vCPUs, one of this machine's two
    cores, busy: the second lane runs mostly on the core the first leaves
    idle. lock_path: held around all of them (a machine shared by runs)."""
    waiting = list(stages)
    taking = threading.Lock()

    def lane():
        while True:
            with taking:
                if not waiting:
                    return
                stage = waiting.pop(0)
                stream = stage is stages[0]
            if stream:
                print("=== stage %s" % stage.name, flush=True)
            run_guest(stage, stream=stream)

    with held(lock_path):
        lanes = [threading.Thread(target=lane, name="guest-lane-%d" % n)
                 for n in range(2 if side_by_side else 1)]
        for thread in lanes:
            thread.start()
        for thread in lanes:
            thread.join()


def summary(stages, allow_missing):
    """Print a row for every configured stage; True when the run is green."""
    print("\n=== summary")
    ok = True
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    for stage in stages:
        counts = stage.counts()
        for key in totals:
            totals[key] += counts.get(key, 0) + (counts.get("errors", 0) if key == "failed" else 0)
        if stage.ran or stage.problems:
            verdict = "ok" if stage.ok() else "FAIL"
        else:
            verdict = "not run (allowed)" if allow_missing else "FAIL: did not run"
        ok = ok and (stage.ok() or (allow_missing and not stage.ran and not stage.problems))
        print("%-11s %-4s %4d passed %3d failed %3d skipped  %7.1f s" % (
            stage.name, verdict if len(verdict) <= 4 else "", counts.get("passed", 0),
            counts.get("failed", 0) + counts.get("errors", 0), counts.get("skipped", 0),
            stage.seconds) + ("" if len(verdict) <= 4 else "  " + verdict))
        for problem in stage.problems:
            print("            %s" % problem)
    print("%d passed, %d failed, %d skipped (all allowed unless listed above)"
          % (totals["passed"], totals["failed"], totals["skipped"]))
    return ok


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", action="append", choices=list(LOCAL_STAGES) + ["guest"],
                        help="only these stages (repeat; default all)")
    parser.add_argument("--flavour", action="append", choices=GUEST_FLAVOURS,
                        help="only these guest kernels (repeat; default all)")
    parser.add_argument("--no-guest", action="store_true", help="no qemu guest stage")
    parser.add_argument("--guest-lock", metavar="FILE",
                        help="hold an exclusive flock on FILE around the guest stages (a "
                             "machine shared by several runs: /work/guest.lock)")
    parser.add_argument("--one-guest-at-a-time", action="store_true",
                        help="run the guest stages one after another (default: two at a time)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="local runs only: stages not run do not fail the run")
    args = parser.parse_args(argv)
    if args.allow_missing and os.environ.get("CI") == "true":
        parser.error("--allow-missing is for local runs; CI runs every stage")
    return args


def main(argv=None):
    args = parse_args(argv)
    wanted = set(args.stage or list(LOCAL_STAGES) + ["guest"])
    if args.no_guest:
        wanted.discard("guest")
    flavours = args.flavour or GUEST_FLAVOURS
    stages = [Stage(name) for name in STAGES]
    if "guest" in wanted:
        prefetch_kernels(flavours)
    guests = []
    for stage in stages:
        if stage.name in LOCAL_STAGES and stage.name in wanted:
            print("=== stage %s" % stage.name, flush=True)
            run_local(stage, LOCAL_STAGES[stage.name])
        elif (stage.name in GUEST_STAGES and "guest" in wanted
              and GUEST_STAGES[stage.name][0] in flavours):
            guests.append(stage)
    run_guests(guests, args.guest_lock, not args.one_guest_at_a_time)
    for stage in stages:
        stage.judge()
    return 0 if summary(stages, args.allow_missing) else 1


if __name__ == "__main__":
    sys.exit(main())
