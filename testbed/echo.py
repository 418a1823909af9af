"""An echo server in a pod's namespace, and the client side of an exchange: traffic in both
directions, so conntrack sees replies (ESTABLISHED, ASSURED) and un-NAT happens.

    echo = EchoServer(shape.netns_name("server"), "udp", 9000)
    reply = udp_exchange(sock, ("10.96.0.10", 53), b"q1")     # b"q1", or None on timeout
    echo.records()  -> [Datagram(src, sport, None, payload)]   (the seed's record type)
    echo.stop()
"""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import threading

from .topology import Datagram, _kill_pids, run_in_netns

# Prints "src sport payloadhex" per datagram or per TCP line, echoes it back; exits on stdin EOF.
_ECHO_SCRIPT = r"""
import os, select, socket, sys
proto, port = sys.argv[1], int(sys.argv[2])
kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
if proto == "tcp":
    s.listen(128)
print("READY", flush=True)
conns = {}
while True:
    ready, _, _ = select.select([0, s, *conns], [], [])
    for r in ready:
        if r == 0:
            if not os.read(0, 4096):
                sys.exit(0)
        elif r is s and proto == "udp":
            data, addr = s.recvfrom(65535)
            s.sendto(data, addr)
            print(addr[0], addr[1], data.hex(), flush=True)
        elif r is s:
            c, addr = s.accept()
            conns[c] = [addr, b""]
        else:
            addr, buf = conns[r]
            try:
                data = r.recv(65535)
            except OSError:
                data = b""
            if not data:
                r.close(); del conns[r]; continue
            lines = (buf + data).split(b"\n")
            conns[r][1] = lines.pop()
            for line in lines:
                r.sendall(line + b"\n")
                print(addr[0], addr[1], line.hex(), flush=True)
"""


class EchoServer:
    """Echoes UDP datagrams or TCP lines back to their sender; records what it echoed."""

    def __init__(self, netns: str, proto: str, port: int, timeout: float = 30.0):
        self.proto, self.port = proto, port
        self._records: list[Datagram] = []
        self._lock = threading.Lock()
        self.proc = run_in_netns(netns, subprocess.Popen, [sys.executable, "-c", _ECHO_SCRIPT, proto, str(port)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)  # Python starts slowly under TCG
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "READY":
            self.stop()
            raise RuntimeError(f"{proto} echo server on port {port} did not start: {line!r}")
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self):
        for line in self.proc.stdout:
            src, sport, payload = line.split()
            with self._lock:
                self._records.append(Datagram(src, int(sport), None, bytes.fromhex(payload)))

    def records(self) -> list[Datagram]:
        with self._lock:
            return list(self._records)

    def reset(self) -> None:
        with self._lock:
            self._records.clear()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                _kill_pids([self.proc.pid], grace=0.5)
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


def udp_exchange(sock: socket.socket, dst: tuple[str, int], payload: bytes, timeout: float = 3.0) -> bytes | None:
    """Send one datagram on sock and wait for one back; None when nothing came in time."""
    sock.sendto(payload, dst)
    ready, _, _ = select.select([sock], [], [], timeout)
    return sock.recv(65535) if ready else None


def tcp_exchange(sock: socket.socket, dst: tuple[str, int], lines: list[bytes], timeout: float = 3.0) -> list[bytes]:
    """Connect, send each line and read its echo, close; the echoes that came back."""
    sock.settimeout(timeout)
    got = []
    try:
        sock.connect(dst)
        buf = b""
        for line in lines:
            sock.sendall(line + b"\n")
            while b"\n" not in buf:
                data = sock.recv(65535)
                if not data:
                    return got
                buf += data
            reply, buf = buf.split(b"\n", 1)
            got.append(reply)
    except OSError:
        pass
    return got
