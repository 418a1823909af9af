"""UDP sender for the node-cost and loss benchmarks; runs inside the sending
namespace (started there by node.py) and prints one JSON line at the end.

    sender.py DST PORT flood SECONDS         as fast as it can for SECONDS
    sender.py DST PORT paced SECONDS PPS     PPS datagrams per second, bursts of 2 ms at most
    sender.py DST PORT count N               N datagrams, 1 ms apart

Datagrams go out 64 at a time with sendmmsg(2) on a connected socket, so the
per-datagram cost is the kernel's, not Python's. The sender pins itself to
CPU 0 (node.py keeps the tracer off it), so the packet path and the BPF
programs it triggers run on CPU 0.
"""

import ctypes
import json
import os
import socket
import sys
import time

BATCH = 64
PAYLOAD = b"skbtracer-bench!" * 4     # 64 bytes


class IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(IOVec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


def schedstat():
    """(on-CPU ns, run-queue wait ns) of this thread so far (CONFIG_SCHED_INFO).
    Without CONFIG_IRQ_TIME_ACCOUNTING the softirq work done in our context
    (the whole receive path, on a veth) is charged to our on-CPU time."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            run, wait, _slices = f.read().split()
        return int(run), int(wait)
    except (OSError, ValueError):
        return None, None


def main(argv):
    dst, port, mode = argv[0], int(argv[1]), argv[2]
    try:
        os.sched_setaffinity(0, {0})
    except OSError:
        pass
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((dst, port))
    fd = s.fileno()

    libc = ctypes.CDLL(None, use_errno=True)
    payload = ctypes.create_string_buffer(PAYLOAD, len(PAYLOAD))
    iov = IOVec(ctypes.cast(payload, ctypes.c_void_p), len(PAYLOAD))
    msgs = (MMsgHdr * BATCH)()
    for m in msgs:
        m.hdr.iov = ctypes.pointer(iov)
        m.hdr.iovlen = 1
    sendmmsg = libc.sendmmsg
    errors = 0

    def send(n):
        nonlocal errors
        done = sendmmsg(fd, msgs, n, 0)
        if done < 0:
            errors += 1
            return 0
        return done

    sent = 0
    run0, wait0 = schedstat()
    started = time.monotonic()
    if mode == "flood":
        deadline = started + float(argv[3])
        now = time.monotonic
        while now() < deadline:
            for _ in range(16):
                sent += send(BATCH)
    elif mode == "paced":
        # Every millisecond, send what is due; when the sender was not
        # scheduled for a while it catches up by 2 ms worth of datagrams at
        # most (a burst would measure the stall, not the rate): the rate
        # achieved, not the one asked, is what the caller reports.
        seconds, pps = float(argv[3]), float(argv[4])
        deadline = started + seconds
        credit, last = 1.0, started
        max_burst = max(1.0, pps * 0.002)
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            credit = min(max_burst, credit + (now - last) * pps)
            last = now
            while credit >= 1:
                done = send(min(BATCH, int(credit)))
                if not done:
                    break
                sent += done
                credit -= done
            time.sleep(0.001)
    elif mode == "count":
        for _ in range(int(argv[3])):
            sent += send(1)
            time.sleep(0.001)
    else:
        raise SystemExit("unknown mode %r" % mode)
    elapsed = time.monotonic() - started
    run1, wait1 = schedstat()
    result = {"sent": sent, "seconds": elapsed, "errors": errors}
    if run0 is not None and run1 is not None:
        result["cpu_seconds"] = (run1 - run0) / 1e9
        result["wait_seconds"] = (wait1 - wait0) / 1e9
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
