"""Parts 2-4: what skbtracer costs the node, when it loses events, how long
it takes to start. Runs on the host (tracepoint backend) and, started by
run.py through testbed.qemu, inside the Debian 6.1 guest (kprobes):

    /usr/bin/python3 bench/node.py --guest      (prints one JSON line)

Traffic only ever flows inside two namespaces this module creates and
deletes, skbtb<pid>-tx and skbtb<pid>-rx, joined by a veth pair
(198.18.0.1 -> 198.18.0.2, the benchmarking range of RFC 2544). The sender pins
itself to CPU 0; skbtracer runs where the scheduler puts it. The receiver
is a bound UDP socket nobody reads: once its small buffer is full every
datagram is dropped at the socket, so the receive path costs the same for
every datagram and nothing (no ICMP) comes back.
"""

import argparse
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from testbed.topology import run_in_netns, write_sysctl  # noqa: E402
from testbed.tracer import TracerRun  # noqa: E402

PYTHON = "/usr/bin/python3"
SKBTRACER = os.path.join(REPO, "skbtracer.py")
with open(os.path.join(BENCH, "sender.py")) as _f:
    # run as `python3 -c`: read once, so nothing is opened over the guest's
    # 9p root while traffic and tracers run
    SENDER_SOURCE = _f.read()
HEADER = b"time       NETWORK_NS"
EXIT_LINE = re.compile(r"skbtracer: (\d+) rows printed, (\d+) events lost")

TX_IP, RX_IP, PORT = "198.18.0.1", "198.18.0.2", 5001
TX_MAC, RX_MAC = "02:00:00:bb:00:01", "02:00:00:bb:00:02"
NOTHING_FILTER = ["-H", "192.0.2.1"]       # TEST-NET-1: no bench packet has it
EVERYTHING_FILTER = ["-H", RX_IP]          # every bench packet has it
F_SETPIPE_SZ = 1031


def log(message):
    sys.stderr.write("[bench] %s\n" % message)
    sys.stderr.flush()


SENDER_CPU = 0     # sender.py pins itself there; the tracer is not pinned


# ---------------------------------------------------------------- the veth pair

def rounds_options(doc):
    """--seconds and --rounds, as the side-by-side cost benches take them."""
    import argparse
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args()


def _ip(*args):
    p = subprocess.run(["ip"] + list(args), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(args), p.stderr.strip()))


def _no_ipv6():
    for key in ("net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"):
        if os.path.exists("/proc/sys/" + key.replace(".", "/")):
            write_sysctl(key, 1)


def _read(path):
    with open(path) as f:
        return f.read()


class VethPair:
    def __init__(self):
        prefix = "skbtb%d" % os.getpid()
        self.tx, self.rx = prefix + "-tx", prefix + "-rx"
        self.sink = None
        self._made = []

    def __enter__(self):
        try:
            for ns in (self.tx, self.rx):
                _ip("netns", "add", ns)
                self._made.append(ns)
                run_in_netns(ns, _no_ipv6)
            _ip("link", "add", "bt0", "address", TX_MAC, "netns", self.tx, "type", "veth",
                "peer", "name", "br0", "address", RX_MAC, "netns", self.rx)
            for ns, dev, addr in ((self.tx, "bt0", TX_IP), (self.rx, "br0", RX_IP)):
                _ip("-n", ns, "addr", "add", addr + "/30", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", self.tx, "neigh", "replace", RX_IP, "lladdr", RX_MAC, "dev", "bt0",
                "nud", "permanent")
            self.sink = run_in_netns(self.rx, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
            self.sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self.sink.bind((RX_IP, PORT))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.sink is not None:
            self.sink.close()
            self.sink = None
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made = []

    def rx_packets(self):
        """rx_packets of br0 (the receiving end of the pair; field 2 of /proc/net/dev)."""
        text = run_in_netns(self.rx, _read, "/proc/thread-self/net/dev")
        for line in text.splitlines():
            name, _, fields = line.partition(":")
            if name.strip() == "br0":
                return int(fields.split()[1])
        raise RuntimeError("br0 not in %s's /proc/net/dev" % self.rx)

    def send(self, mode, *args, timeout=120):
        """Run sender.py in the tx namespace; its JSON result."""
        proc = run_in_netns(self.tx, subprocess.Popen,
                            [PYTHON, "-c", SENDER_SOURCE, RX_IP, str(PORT), mode]
                            + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()             # our own child
            proc.communicate()
            raise
        if proc.returncode != 0:
            raise RuntimeError("sender failed: %s" % err.strip())
        return json.loads(out.strip().splitlines()[-1])

    def flood(self, seconds, sender_cpu=SENDER_CPU):
        """Datagrams received per wall second, and per second of CPU spent
        on them (the sender's on-CPU time, which carries the softirq work
        done in its context, plus that of ksoftirqd on the sender's CPU,
        which takes over when softirq work piles up)."""
        ksoftirqd = _ksoftirqd(sender_cpu)
        k0 = _on_cpu(ksoftirqd)
        before = self.rx_packets()
        result = self.send("flood", seconds)
        result["received"] = self.rx_packets() - before
        k1 = _on_cpu(ksoftirqd)
        result["pps"] = result["received"] / result["seconds"]
        if result.get("cpu_seconds") is not None and k0 is not None and k1 is not None:
            result["ksoftirqd_seconds"] = k1 - k0
            result["cpu_pps"] = result["received"] / (result["cpu_seconds"] + k1 - k0)
        return result


def _ksoftirqd(cpu):
    """pid of ksoftirqd/<cpu>, or None."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _read("/proc/%s/comm" % entry).strip() == "ksoftirqd/%d" % cpu:
                    return int(entry)
            except OSError:
                continue
    return None


class BpfRunStats:
    """Kernel accounting of BPF program run time (BPF_ENABLE_STATS, 5.8+):
    on while this object lives, off again when its fd is closed (also if we
    die), unless something else turned it on too. Costs two clock reads per
    program run while on, so only the traced floods run with it."""

    SYS_BPF = 321                 # x86_64
    BPF_ENABLE_STATS = 32
    BPF_STATS_RUN_TIME = 0

    def __init__(self):
        self.fd = None
        self.enabled = False

    def __enter__(self):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        attr = (ctypes.c_uint32 * 2)(self.BPF_STATS_RUN_TIME, 0)
        fd = libc.syscall(self.SYS_BPF, self.BPF_ENABLE_STATS, ctypes.byref(attr), 8)
        self.fd = fd if fd >= 0 else None
        self.enabled = self.fd is not None or _read_int("/proc/sys/kernel/bpf_stats_enabled") == 1
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _read_int(path):
    try:
        return int(_read(path).strip())
    except (OSError, ValueError):
        return None


def prog_stats(pid):
    """{prog id: (run_time_ns, run_cnt)} of the BPF programs pid holds open."""
    out = {}
    fd_dir = "/proc/%d/fd" % pid
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return out
    for fd in fds:
        try:
            if os.readlink(os.path.join(fd_dir, fd)) != "anon_inode:bpf-prog":
                continue
            info = dict(line.split(":", 1) for line in
                        _read("/proc/%d/fdinfo/%s" % (pid, fd)).splitlines() if ":" in line)
            out[int(info["prog_id"])] = (int(info.get("run_time_ns", 0)),
                                         int(info.get("run_cnt", 0)))
        except (OSError, KeyError, ValueError):
            continue
    return out


def traced_flood(pair, tracer, seconds):
    """A flood under the kernel's BPF run-time accounting: (flood result,
    ns, runs) of the tracer's programs; ns and runs are None when the
    kernel cannot account."""
    with BpfRunStats() as stats:
        before = prog_stats(tracer.proc.pid)
        flood = pair.flood(seconds)
        after = prog_stats(tracer.proc.pid)
    if not stats.enabled:
        return flood, None, None
    ns = sum(after[p][0] - before.get(p, (0, 0))[0] for p in after)
    runs = sum(after[p][1] - before.get(p, (0, 0))[1] for p in after)
    return flood, ns, runs


def in_guest(script, seconds, rounds, timeout):
    """Run bench/<script> --seconds --rounds inside the Debian 6.1 guest,
    passing its output through; its exit status."""
    from testbed import qemu
    command = "/usr/bin/python3 bench/%s --seconds %g --rounds %d" % (script, seconds, rounds)
    result = qemu.run(command, flavour="6.1", timeout=timeout, cwd=REPO)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr[-2000:])
    return result.returncode


def _on_cpu(pid):
    """Seconds pid has been on a CPU (schedstat), or None."""
    if pid is None:
        return None
    try:
        return int(_read("/proc/%d/schedstat" % pid).split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------- skbtracer, drained

class DrainedTracer:
    """skbtracer.py with its stdout read and thrown away in 1 MiB reads
    (the cost of writing to /dev/null, plus a pipe), counting rows.
    Started means attached: its header line was printed (the definition
    testbed.tracer.TracerRun uses for startup_seconds)."""

    def __init__(self, args, cpus=None, python=PYTHON, stop_timeout=60, script=SKBTRACER,
                 env=None):
        self.args = list(args)
        self.env = dict(os.environ, **env) if env else None   # added to ours
        self.script = script                 # bench/empty_probes.py: the floor
        self.stop_timeout = stop_timeout     # --all detaches for a minute under TCG
        self.cpus = cpus
        self.python = python
        self.proc = None
        self.newlines = 0
        self.header_seen = threading.Event()
        self.stderr_lines = []
        self.startup_seconds = None
        self.exit_rows = self.exit_lost = None
        self.returncode = None

    def start(self, timeout=600):
        started = time.monotonic()
        self.proc = subprocess.Popen([self.python, self.script] + self.args,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)
        if self.cpus:
            try:
                os.sched_setaffinity(self.proc.pid, self.cpus)
            except OSError:
                pass
        try:
            fcntl.fcntl(self.proc.stdout.fileno(), F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        self._threads = [threading.Thread(target=self._drain, daemon=True),
                         threading.Thread(target=self._errors, daemon=True)]
        for t in self._threads:
            t.start()
        while not self.header_seen.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() - started > timeout:
                self.stop()
                raise RuntimeError("skbtracer %s did not start (rc=%s): %s"
                                   % (" ".join(self.args), self.returncode,
                                      "".join(self.stderr_lines)[-2000:]))
        self.startup_seconds = time.monotonic() - started
        return self

    def _drain(self):
        if self.cpus:
            try:
                os.sched_setaffinity(0, self.cpus)
            except OSError:
                pass
        fd = self.proc.stdout.fileno()
        head = b""
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            self.newlines += chunk.count(b"\n")
            if not self.header_seen.is_set():
                head += chunk
                if head.startswith(HEADER) and b"\n" in head:
                    self.header_seen.set()

    def _errors(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line.decode(errors="replace"))

    @property
    def rows(self):
        return max(0, self.newlines - 1)

    def cpu_seconds(self):
        """utime + stime of the tracer so far."""
        try:
            fields = _read("/proc/%d/stat" % self.proc.pid).rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None

    def peak_rss_mib(self):
        """VmHWM of the tracer (peak resident memory), MiB."""
        try:
            for line in _read("/proc/%d/status" % self.proc.pid).splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def wait_quiet(self, quiet=0.6, limit=15.0, until=None):
        """Wait until no row arrived for `quiet` seconds (or rows >= until)."""
        deadline = time.monotonic() + limit
        last, since = self.rows, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = self.rows
            if until is not None and now >= until:
                return now
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return self.rows

    def stop(self):
        if self.proc is None or self.returncode is not None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()      # our own child
                self.proc.wait()
        for t in self._threads:
            t.join(10)
        self.returncode = self.proc.returncode
        match = EXIT_LINE.search("".join(self.stderr_lines))
        if match:
            self.exit_rows, self.exit_lost = int(match.group(1)), int(match.group(2))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


# ---------------------------------------------------------------- part 2: cost to the node

def node_cost(pair, seconds=3.0, tracer_cpus=None):
    """Flood datagrams/s: untraced, filter matching nothing, untraced,
    filter matching everything, untraced. Each traced run is compared with
    the mean of the untraced runs on either side of it."""
    runs = {}
    # A first flood warms what the first packets pay for once (in the guest:
    # TCG translating the code paths, and the BPF programs, on first use).
    log("node cost: warm-up flood 1 s, then untraced %.0f s" % seconds)
    pair.flood(1.0)
    runs["untraced_0"] = pair.flood(seconds)
    for n, (name, filt) in enumerate((("nothing", NOTHING_FILTER),
                                      ("everything", EVERYTHING_FILTER)), 1):
        log("node cost: starting skbtracer %s (matches %s)" % (" ".join(filt), name))
        with DrainedTracer(filt, cpus=tracer_cpus).start() as tracer:
            pair.flood(1.0)
            tracer.wait_quiet(limit=30)
            log("node cost: traced, filter matches %s, %.0f s" % (name, seconds))
            with BpfRunStats() as stats:
                cpu0, rows0 = tracer.cpu_seconds(), tracer.rows
                bpf0 = prog_stats(tracer.proc.pid)
                r = pair.flood(seconds)
                bpf1 = prog_stats(tracer.proc.pid)
                cpu1 = tracer.cpu_seconds()
            r["rows_during"] = tracer.rows - rows0
            if stats.enabled and bpf1 and r["received"]:
                ns = sum(bpf1[p][0] - bpf0.get(p, (0, 0))[0] for p in bpf1)
                runs_ = sum(bpf1[p][1] - bpf0.get(p, (0, 0))[1] for p in bpf1)
                r["bpf_runs_per_datagram"] = runs_ / r["received"]
                r["bpf_ns_per_datagram"] = ns / r["received"]
                r["bpf_ns_per_run"] = ns / runs_ if runs_ else None
            tracer.wait_quiet(limit=20)
            r["tracer_peak_rss_mib"] = tracer.peak_rss_mib()
        r["tracer_cpu_share"] = (cpu1 - cpu0) / r["seconds"] if cpu0 is not None else None
        r["startup_seconds"] = tracer.startup_seconds
        r["rows_printed"], r["events_lost"] = tracer.exit_rows, tracer.exit_lost
        runs[name] = r
        log("node cost: untraced %.0f s" % seconds)
        runs["untraced_%d" % n] = pair.flood(seconds)
    out = {"seconds": seconds, "runs": runs}
    for key in ("cpu_pps", "pps"):
        if any(runs[u].get(key) is None for u in ("untraced_0", "untraced_1", "untraced_2")):
            continue
        for n, name in enumerate(("nothing", "everything")):
            before, after = runs["untraced_%d" % n][key], runs["untraced_%d" % (n + 1)][key]
            base = (before + after) / 2
            out["%s_%s_base" % (name, key)] = base
            out["%s_%s_spread" % (name, key)] = abs(before - after) / base
            out["%s_%s_ratio" % (name, key)] = runs[name][key] / base
    return out


# ---------------------------------------------------------------- part 3: loss

def loss_run(pair, pps, seconds, tracer_cpus=None, flush=True):
    """skbtracer matching every bench packet, `pps` datagrams/s (None: as
    fast as the sender can) for `seconds`;
    with flush, one more datagram after the tracer went quiet: the kernel only
    writes a ring's "lost" record in front of the next event that fits."""
    with DrainedTracer(EVERYTHING_FILTER, cpus=tracer_cpus).start() as tracer:
        time.sleep(0.3)
        sent = pair.send("paced", seconds, pps) if pps else pair.send("flood", seconds)
        rows_before_flush = tracer.wait_quiet()
        flushed = 0
        if flush:
            flushed = pair.send("count", 1)["sent"]
            tracer.wait_quiet(quiet=0.5, limit=5)
        rows_drained = tracer.rows
    return {"pps_asked": pps, "packets": sent["sent"] + flushed, "flush_packets": flushed,
            "send_seconds": sent["seconds"], "pps": sent["sent"] / sent["seconds"],
            "rows_before_flush": rows_before_flush, "rows_drained": rows_drained,
            "rows_printed": tracer.exit_rows, "events_lost": tracer.exit_lost,
            "startup_seconds": tracer.startup_seconds}


def events_per_packet(pair, tracer_cpus=None, packets=100):
    """Rows one bench datagram makes (100 datagrams 1 ms apart, none lost)."""
    with DrainedTracer(EVERYTHING_FILTER, cpus=tracer_cpus).start() as tracer:
        time.sleep(0.3)
        sent = pair.send("count", packets)["sent"]
        tracer.wait_quiet()
    if tracer.exit_lost:
        raise RuntimeError("events lost while calibrating at 1000 datagrams/s")
    return tracer.exit_rows / sent


def loss(pair, tracer_cpus=None, seconds=2.0, start_eps=2000, max_steps=10, refine=2):
    """Ramp the event rate by doubling until events are lost, refine between
    the last clean and first lossy rate, then run at twice the threshold,
    with and without the flush datagram."""
    log("loss: calibrating rows per datagram")
    k = events_per_packet(pair, tracer_cpus)
    per_packet = round(k)
    steps = []

    def run(eps, flush=True):
        pps = eps / per_packet
        log("loss: %.0f events/s asked (%.0f datagrams/s) for %.0f s%s"
            % (eps, pps, seconds, "" if flush else ", no flush datagram"))
        r = loss_run(pair, pps, seconds, tracer_cpus, flush=flush)
        r["events_sent"] = r["packets"] * per_packet
        r["eps"] = r["pps"] * per_packet
        r["accounted"] = (r["rows_printed"] or 0) + (r["events_lost"] or 0)
        r["unaccounted"] = r["events_sent"] - r["accounted"]
        steps.append(r)
        return r

    eps = start_eps
    for _ in range(max_steps):
        r = run(eps)
        if r["events_lost"]:
            break
        eps *= 2
    for _ in range(refine):
        clean = [x["eps"] for x in steps if not x["events_lost"]]
        lossy = [x["eps"] for x in steps if x["events_lost"]]
        if not clean or not lossy or max(clean) >= min(lossy):
            break
        run((max(clean) * min(lossy)) ** 0.5)
    clean = [x["eps"] for x in steps if not x["events_lost"]]
    lossy = [x["eps"] for x in steps if x["events_lost"]]
    threshold = max(clean) if clean else None
    double = run(2 * (threshold or start_eps / 2))
    quadruple = run(4 * (threshold or start_eps / 2))
    log("loss: flood for %.0f s, no flush datagram" % seconds)
    burst = loss_run(pair, None, seconds, tracer_cpus, flush=False)
    burst["events_sent"] = burst["packets"] * per_packet
    burst["eps"] = burst["pps"] * per_packet
    burst["accounted"] = (burst["rows_printed"] or 0) + (burst["events_lost"] or 0)
    burst["unaccounted"] = burst["events_sent"] - burst["accounted"]
    return {"events_per_packet": k, "events_per_packet_exact": abs(k - per_packet) < 1e-9,
            "perf_pages": _perf_pages(), "ring_events": _ring_events(),
            "threshold_eps": threshold, "first_lossy_eps": min(lossy) if lossy else None,
            "double": double, "quadruple": quadruple, "flood_noflush": burst, "steps": steps,
            "buffer": _buffer()}


def _buffer():
    """What the tracer reads from here: "ring buffer" or "perf buffer"."""
    from skbtracer_lib.events import reader
    return "ring buffer" if reader.ring_buffer_available() else "perf buffer"


def _ring_events():
    """Events the default buffer holds: the ring buffer's pages of 8-byte
    headers and struct event_t, or (perf buffer) one CPU's ring of perf
    records (8-byte header, 4-byte size, the data, padded to 8)."""
    from skbtracer_lib.events import reader
    from skbtracer_lib.events.decode import EVENT_SIZE
    if _buffer() == "ring buffer":
        return reader.RING_BUFFER_PAGES * reader.PAGE_SIZE // ((8 + EVENT_SIZE + 7) // 8 * 8)
    record = (8 + 4 + EVENT_SIZE + 7) // 8 * 8
    return reader.PERF_PAGES * reader.PAGE_SIZE // record


def _perf_pages():
    """Pages of the default buffer (all CPUs' ring buffer, or per CPU)."""
    from skbtracer_lib.events import reader
    return reader.RING_BUFFER_PAGES if _buffer() == "ring buffer" else reader.PERF_PAGES


# ---------------------------------------------------------------- part 4: startup

def startup(samples=1, extra_btf=()):
    """Seconds to the header line (TracerRun.startup_seconds), BTF layouts vs
    --layout headers, alternating, `samples` of each."""
    out = {"btf": list(extra_btf), "headers": []}
    for _ in range(samples):
        for name, extra in (("btf", []), ("headers", ["--layout", "headers"])):
            log("startup: %s" % name)
            with TracerRun(NOTHING_FILTER + extra, ready_timeout=600) as run:
                pass
            out[name].append(run.startup_seconds)
    return out


# ---------------------------------------------------------------- guest entry point

def guest_main(seconds, with_loss=False):
    from skbtracer_lib.program import kernel
    result = {"kernel": os.uname().release,
              "backend": "kprobe" if kernel.kprobes_available() else "tracepoint"}
    with VethPair() as pair:
        if with_loss:           # events/s in the guest: only this part
            result["loss"] = loss(pair)
            return result
        result["node_cost"] = node_cost(pair, seconds)
    runs = result["node_cost"]["runs"]
    result["startup"] = startup(1)
    result["startup"]["btf_from_node_cost"] = [runs["nothing"]["startup_seconds"],
                                               runs["everything"]["startup_seconds"]]
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--guest", action="store_true",
                    help="run parts 2 and 4 and print one JSON line (what run.py starts in the guest)")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--loss", action="store_true", help="with --guest: part 3 (loss) only")
    args = ap.parse_args(argv)
    if not args.guest:
        ap.error("run bench/run.py; node.py only has --guest")
    result = guest_main(args.seconds, with_loss=args.loss)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
