"""Two UDP senders that fire at the same moment on two CPUs, round after round: the conntrack
insert race of kubernetes #56903.

  - shared socket (the DNS A/AAAA race): both senders send on ONE socket of the client pod, so
    both datagrams have the same 5-tuple; through a service with two endpoints each may get its
    own random DNAT, and the second to reach __nf_conntrack_confirm finds the first's entry.
  - one socket per sender, in two pods, same source port, to one outside address through
    MASQUERADE without --random-fully (the SNAT race): both are SNATed to the node's address and
    the same port, and the loser's reply tuple is taken.

Every round uses fresh sockets (a new source port, base_sport + round), so each round is a new
connection.  The senders are two processes pinned to CPUs 0 and 1 that meet at a spin barrier in
shared memory before each send; the script is run with /usr/bin/python3 -c, in no namespace of its
own (each sender joins its pod's namespace with setns).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

_RACE_SCRIPT = r"""
import ctypes, json, mmap, os, socket, struct, sys, time
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def join(path):
    fd = os.open(path, os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "setns " + path)
    os.close(fd)
def sockets():
    out = []
    for i in range(cfg["rounds"]):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", cfg["base_sport"] + i))
        out.append(s)
    return out
senders = cfg["senders"]
shm = mmap.mmap(-1, 8 * len(senders))        # MAP_SHARED: each sender's last round
shared = None
if cfg["shared_socket"]:
    join(senders[0]["netns"])
    shared = sockets()
dst = (cfg["dst"][0], cfg["dst"][1])
deadline = time.monotonic() + cfg["seconds"]
pids = []
for me, sender in enumerate(senders):
    pid = os.fork()
    if pid:
        pids.append(pid); continue
    os.sched_setaffinity(0, {sender["cpu"]})
    socks = shared if shared is not None else (join(sender["netns"]) or sockets())
    sent = errors = 0
    others = [k for k in range(len(senders)) if k != me]
    for i in range(cfg["rounds"]):
        struct.pack_into("q", shm, 8 * me, i + 1)
        spin_until = time.monotonic() + 2.0        # a sender that died must not hang us
        while any(struct.unpack_from("q", shm, 8 * k)[0] < i + 1 for k in others):
            if time.monotonic() > spin_until:
                break
        try:
            socks[i].sendto(b"%d:%d" % (i, me), dst); sent += 1
        except OSError:
            errors += 1
        if time.monotonic() > deadline:
            struct.pack_into("q", shm, 8 * me, 1 << 40)
            break
    os.write(1, (json.dumps({"sender": me, "sent": sent, "errors": errors}) + "\n").encode())
    os._exit(0)
for pid in pids:
    os.waitpid(pid, 0)
"""


@dataclass
class RaceBatch:
    rounds: int
    sent: int  # datagrams the senders' sendto() accepted (both senders)
    errors: int


def run_batch(senders: list[tuple[str, int]], dst: tuple[str, int], rounds: int, base_sport: int,
              shared_socket: bool, seconds: float = 60.0) -> RaceBatch:
    """One batch of `rounds` races.  senders: (netns path, cpu) for each of the two senders."""
    cfg = {"senders": [{"netns": ns, "cpu": cpu} for ns, cpu in senders], "dst": list(dst), "rounds": rounds,
           "base_sport": base_sport, "shared_socket": shared_socket, "seconds": seconds}
    proc = subprocess.run([sys.executable, "-c", _RACE_SCRIPT, json.dumps(cfg)], capture_output=True,
                          text=True, timeout=seconds + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"race senders failed: {proc.stderr.strip()[-500:]}")
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return RaceBatch(rounds, sum(r["sent"] for r in results), sum(r["errors"] for r in results))
