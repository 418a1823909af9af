"""--all and --func against the seed's scenario 1 (real traffic in our own
namespaces). With kprobes (guests): every function that takes an skb, the
story unchanged, --func 'br_*' alone, Ctrl-C while attaching. Without
kprobes (the host): one line saying they need kprobes, exit 1.

Few tracer starts, each costs a compile (and --all an attach of ~1,500
kprobes) in the TCG guest."""

import os
import re
import signal
import subprocess
import time

import pytest
from conftest import BACKEND, EXPECTED

from testbed.topology import SeedCluster
from testbed.tracer import (KPROBE_LIST, PYTHON, SKBTRACER, TracerRun, is_subsequence,
                            probe_points)

SPORT_DEFAULT, SPORT_ALL = 42101, 42102
# how --all must attach on this kernel (its flavour says whether it has kprobe-multi links)
ATTACH_HOW = r"kprobe-multi, \d+ links" if EXPECTED.kprobe_multi else r"kprobes, \d+ threads"

kprobes_only = pytest.mark.skipif(BACKEND != "kprobe", reason="needs kprobes (guest)")


def mount_debug_filesystems():
    """The guest boots with neither: the kprobe list, blacklist and
    available_filter_functions live there."""
    if not os.path.exists(KPROBE_LIST):
        subprocess.run(["mount", "-t", "debugfs", "none", "/sys/kernel/debug"], check=False)
    if not os.path.exists("/sys/kernel/tracing/available_filter_functions"):
        subprocess.run(["mount", "-t", "tracefs", "none", "/sys/kernel/tracing"], check=False)


def our_kprobes():
    return probe_points()[0]


def probed_functions():
    """Functions with an ftrace hook: single kprobes at a function's entry
    and kprobe-multi links (fprobe) alike; the latter are not in the kprobe
    list."""
    return probe_points()[1]


@pytest.mark.skipif(BACKEND == "kprobe", reason="this kernel has kprobes")
@pytest.mark.parametrize("flags", [["--all"], ["--func", "br_*"], ["--all", "--func", "ip_*"]])
def test_without_kprobes_one_line_exit_1(flags):
    proc = subprocess.run([PYTHON, SKBTRACER] + flags, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "need kprobes" in proc.stderr, proc.stderr


def duplicate_line(stderr, sport):
    """The story's DUPLICATE line for sport, unwrapped (the story wraps to
    the width; continuation lines start with spaces), the time apart out."""
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines)
              if line.startswith("DUPLICATE: U 10.244.1.2:%d->" % sport)]
    assert len(starts) == 1, stderr
    paragraph = [lines[starts[0]]]
    for line in lines[starts[0] + 1:]:
        if not line.startswith("    "):
            break
        paragraph.append(line.strip())
    # how far apart the copies arrived is each run's own measurement
    line = re.sub(r"\(\d+(\.\d+)? (us|ms|s) apart\)", "(D apart)", " ".join(paragraph))
    return line.replace(":%d->" % sport, ":SPORT->")


@pytest.fixture(scope="module")
def scenario1(settle, tmp_path_factory):
    """Scenario 1 traced twice on one cluster: the built-in set, then --all."""
    if BACKEND != "kprobe":
        pytest.skip("needs kprobes (guest)")
    mount_debug_filesystems()
    runs = {}
    with SeedCluster(promisc=True) as cluster:
        cluster.start_udp_receiver("server")
        _pod, dst_ip, dst_port = cluster.targets["service"]
        base = ["-H", cluster.ip["client"], "--proto", "udp"]
        saved = str(tmp_path_factory.mktemp("allfuncs") / "all.json")
        for label, extra, sport in (("default", [], SPORT_DEFAULT),
                                    ("all", ["--all", "--json=" + saved], SPORT_ALL)):
            before = probe_points()
            with TracerRun(base + extra, ready_timeout=900, stop_timeout=600) as run:
                cluster.reset_counts()
                cluster.send_udp("client", dst_ip, dst_port, sport=sport)
                received = cluster.received("server", settle=settle * 3)
                during = probe_points()
            runs[label] = (run, received, (before, during, probe_points()))
        runs["saved"] = saved
        yield cluster, runs


@kprobes_only
def test_all_runs_and_detaches(scenario1):
    """--all attaches as this kernel can (kprobe-multi links on 6.12, single
    kprobes before), hooks every function it counts, and leaves nothing:
    no kprobe, no ftrace hook (where multi links show), no program or link."""
    _cluster, runs = scenario1
    run, received, (before, during, after) = runs["all"]
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert received == 2
    attached = re.search(r"^skbtracer: attached (\d+) functions in [\d.]+ s \((.*)\); (\d+) skipped",
                         run.stderr, re.M)
    assert attached and int(attached.group(1)) > 500, run.stderr
    # the kernel was asked before planning: no failed kprobe-multi attempt
    assert re.fullmatch(ATTACH_HOW, attached.group(2)), attached.group(0)
    functions = int(attached.group(1))
    if EXPECTED.kprobe_multi:
        # links (fprobe: an ftrace hook per function), not kprobes: the
        # kprobe list grows by the built-in set's only
        assert during[1] - before[1] >= functions, (before, during, functions)
        assert during[0] - before[0] < 100 and len(run.held["link"]) >= 1, (during, run.held)
    else:
        assert during[0] - before[0] >= functions, (before, during, functions)
    assert re.search(r"^skbtracer: detached \d+ functions in [\d.]+ s$", run.stderr, re.M), run.stderr
    assert after == before, "kprobes or ftrace hooks left behind: %s -> %s" % (before, after)
    assert run.left_behind() == {}


@kprobes_only
def test_all_shows_functions_beyond_the_route_set_in_path_order(scenario1):
    from skbtracer_lib.program.probes import ROUTE_FUNCTIONS
    _cluster, runs = scenario1
    run = runs["all"][0]
    rows = [r for r in run.rows if ":%d->" % SPORT_ALL in r.pkt]
    names = [r.function for r in rows]
    builtin = {f for f, _ in ROUTE_FUNCTIONS}
    assert len(set(names) - builtin) > 20, names
    assert "veth_xmit" in names, names                        # from the veth module
    # sent from the client: UDP, IP, the veth; then the bridge and the pod
    assert is_subsequence(["ip_output", "dev_hard_start_xmit", "veth_xmit", "br_handle_frame",
                           "br_forward"], names), names


@kprobes_only
def test_all_tells_the_duplicate_exactly_as_without(scenario1):
    _cluster, runs = scenario1
    default, everything = runs["default"][0], runs["all"][0]
    assert duplicate_line(everything.stderr, SPORT_ALL) == duplicate_line(default.stderr,
                                                                            SPORT_DEFAULT)


@kprobes_only
def test_all_read_back_tells_the_same_duplicate(scenario1):
    """-r of the --all run's JSON lines: the start object names its extra
    functions, so the story is told as live."""
    _cluster, runs = scenario1
    proc = subprocess.run([PYTHON, SKBTRACER, "-r", runs["saved"]], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert duplicate_line(proc.stderr, SPORT_ALL) == duplicate_line(runs["all"][0].stderr,
                                                                      SPORT_ALL)


@kprobes_only
def test_func_bridge_glob_alone_and_ctrl_c_while_attaching(scenario1, settle):
    cluster, _runs = scenario1
    with SeedCluster(promisc=True) as cluster:
        cluster.start_udp_receiver("server")
        _pod, dst_ip, dst_port = cluster.targets["service"]
        with TracerRun(["-H", cluster.ip["client"], "--proto", "udp", "--func", "br_*", "-v"],
                       ready_timeout=600) as run:
            cluster.send_udp("client", dst_ip, dst_port, sport=SPORT_ALL + 1)
            cluster.received("server", settle=settle * 3)
    assert run.returncode == 0, run.stderr
    names = {r.function for r in run.rows}
    assert names and all(n.startswith("br_") for n in names), names
    assert "br_forward" in names
    assert re.search(r"^skbtracer: attached kprobe\S* br_", run.stderr, re.M), run.stderr

    # Ctrl-C once attaching is under way: every kprobe goes again. A few
    # hundred functions, not --all: one --all start per guest run is enough.
    # With kprobe-multi links attaching takes well under a second: the
    # signal may come just after it, which must detach as cleanly.
    before, probed_before = our_kprobes(), probed_functions()
    proc = subprocess.Popen([PYTHON, SKBTRACER, "--func", "tcp*", "--func", "ip*"],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while (probed_functions() < probed_before + 50 and proc.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.05)
    assert proc.poll() is None and time.monotonic() < deadline, "attaching never started"
    proc.send_signal(signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 130), err
    assert our_kprobes() == before, err
    assert probed_functions() == probed_before, err
