#!/usr/bin/python3
"""Soak: skbtracer for 10 minutes under mixed matching traffic on the host.

    sudo /usr/bin/python3 bench/soak.py [--seconds 600] [--interval 10]

UDP datagrams, TCP connections and pings flow between two namespaces made
here, skbsoak<pid>-tx (198.19.16.1) and skbsoak<pid>-rx (198.19.16.2, in
the RFC 2544 benchmarking range); skbtracer follows all of it (-H
198.19.16.2), rows to /dev/null (-o /dev/null: only the story is kept).
Every --interval seconds the tracer's RSS and open file descriptors are
sampled from /proc. At the end it is stopped with SIGINT and its exit line
(rows, lost events) and story are read from stderr.

Prints the figures and writes them, with the samples, to
bench/results/soak-latest.json. Measurement only: no goal is asserted
here; the README's soak section says what the figures should be.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from testbed.tracer import PYTHON, StderrReadyRun  # noqa: E402

TX_IP, RX_IP = "198.19.16.1", "198.19.16.2"
UDP_PORT, TCP_PORT = 5101, 5102
EXIT_LINE = re.compile(r"skbtracer: (\d+) rows printed, (\d+) events lost")
STORY_LINE = re.compile(r"skbtracer: the story of (\d+) packets? in (\d+) events")

# The traffic, one process each in the tx namespace: paced so the node sees
# a few thousand events a second in all (about 5 per packet on the host).
UDP_SENDER = """
import socket, sys, time
rate = float(sys.argv[1]); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.monotonic(); n = 0
while True:
    s.sendto(b"soak", (%r, %d)); n += 1
    pause = start + n / rate - time.monotonic()
    if pause > 0:
        time.sleep(pause)
""" % (RX_IP, UDP_PORT)
TCP_CLIENT = """
import socket, sys, time
rate = float(sys.argv[1])
while True:
    started = time.monotonic()
    try:
        with socket.create_connection((%r, %d), timeout=2) as c:
            c.sendall(b"soak" * 25)
    except OSError:
        pass
    time.sleep(max(0.0, 1.0 / rate - (time.monotonic() - started)))
""" % (RX_IP, TCP_PORT)
RECEIVERS = """
import socket, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((%r, %d))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((%r, %d)); t.listen(64)
def udp():
    while True:
        u.recv(2048)
threading.Thread(target=udp, daemon=True).start()
while True:
    c, _ = t.accept()
    with c:
        while c.recv(4096):
            pass
""" % (RX_IP, UDP_PORT, RX_IP, TCP_PORT)


def log(message):
    sys.stderr.write("[soak] %s\n" % message)
    sys.stderr.flush()


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Pair:
    def __init__(self):
        self.tx, self.rx = "skbsoak%d-tx" % os.getpid(), "skbsoak%d-rx" % os.getpid()
        self.procs = []

    def __enter__(self):
        for ns in (self.tx, self.rx):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", self.tx, "link", "add", "st0", "type", "veth", "peer", "sr0", "netns", self.rx)
        for ns, dev, addr in ((self.tx, "st0", TX_IP), (self.rx, "sr0", RX_IP)):
            ip("-n", ns, "addr", "add", addr + "/30", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        return self

    def start(self, ns, argv):
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", ns] + argv,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def __exit__(self, *exc):
        for proc in self.procs:          # our own children
            proc.kill()
            proc.wait()
        for ns in (self.tx, self.rx):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def sample(pid):
    with open("/proc/%d/status" % pid) as f:
        rss_kb = int(re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M).group(1))
    return rss_kb, len(os.listdir("/proc/%d/fd" % pid))


def loss_free_rate():
    """The highest loss-free rate bench/run.py last measured here, if any."""
    try:
        with open(os.path.join(BENCH, "results", "latest.json")) as f:
            return json.load(f)["host"]["loss"]["threshold_eps"]
    except (OSError, KeyError, TypeError, ValueError):
        return None


def soak(seconds, interval, udp_rate, tcp_rate, ping_interval):
    with Pair() as pair:
        pair.start(pair.rx, [PYTHON, "-c", RECEIVERS])
        time.sleep(0.5)
        run = StderrReadyRun(["-H", RX_IP, "-o", "/dev/null"])
        run.start()
        pid = run.proc.pid
        log("tracing (pid %d) for %d s" % (pid, seconds))
        pair.start(pair.tx, [PYTHON, "-c", UDP_SENDER, str(udp_rate)])
        pair.start(pair.tx, [PYTHON, "-c", TCP_CLIENT, str(tcp_rate)])
        pair.start(pair.tx, ["ping", "-q", "-i", str(ping_interval), RX_IP])
        started = time.monotonic()
        samples = []
        while True:
            elapsed = time.monotonic() - started
            rss_kb, fds = sample(pid)
            samples.append({"t": round(elapsed, 1), "rss_kb": rss_kb, "fds": fds})
            if len(samples) % 6 == 1:
                log("%4.0f s: RSS %d KiB, %d fds" % (elapsed, rss_kb, fds))
            if elapsed >= seconds:
                break
            time.sleep(min(interval, seconds - elapsed) or interval)
        traced = time.monotonic() - started
        for proc in pair.procs[1:]:
            proc.kill()                  # quiet before the story
        stop_at = time.monotonic()
        run.proc.send_signal(signal.SIGINT)
        run.wait(600)
        story_seconds = time.monotonic() - stop_at
    stderr = run.stderr
    exit_line = EXIT_LINE.search(stderr)
    story = STORY_LINE.search(stderr)
    after_minute = [s for s in samples if s["t"] >= 60] or samples
    base = after_minute[0]["rss_kb"]
    return {
        "seconds": round(traced, 1),
        "returncode": run.returncode,
        "rows": int(exit_line.group(1)) if exit_line else None,
        "lost": int(exit_line.group(2)) if exit_line else None,
        "events_per_second": round(int(exit_line.group(1)) / traced) if exit_line else None,
        "loss_free_rate": loss_free_rate(),
        "rss_kb_at_60s": base,
        "rss_kb_max_after_60s": max(s["rss_kb"] for s in after_minute),
        "rss_growth_pct_after_60s": round(100.0 * (after_minute[-1]["rss_kb"] - base) / base, 1),
        "rss_spread_pct_after_60s": round(100.0 * (max(s["rss_kb"] for s in after_minute)
                                                    - min(s["rss_kb"] for s in after_minute))
                                          / base, 1),
        "fds": sorted({s["fds"] for s in samples}),
        "story_printed": bool(story),
        "story_packets": int(story.group(1)) if story else None,
        "story_events": int(story.group(2)) if story else None,
        "stop_to_exit_seconds": round(story_seconds, 1),
        "traceback": "Traceback" in stderr,
        "samples": samples,
        "stderr_tail": stderr.splitlines()[-8:],
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--interval", type=float, default=10)
    ap.add_argument("--udp-rate", type=float, default=300, help="datagrams/s")
    ap.add_argument("--tcp-rate", type=float, default=20, help="connections/s")
    ap.add_argument("--ping-interval", type=float, default=0.02)
    ap.add_argument("--json", default=os.path.join(BENCH, "results", "soak-latest.json"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("soak.py: run as root (namespaces, eBPF)\n")
        return 2
    result = soak(args.seconds, args.interval, args.udp_rate, args.tcp_rate,
                  args.ping_interval)
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    shown = {k: v for k, v in result.items() if k not in ("samples", "stderr_tail")}
    for key, value in shown.items():
        print("%-28s %s" % (key, value))
    return 0 if result["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
