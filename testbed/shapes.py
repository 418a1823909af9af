"""The node shapes by name, and a command to build one and see its scenarios happen.

    /usr/bin/python3 -m testbed.shapes list
    /usr/bin/python3 -m testbed.shapes check [flannel calico-vxlan routing ...]   (default: all this kernel can)
    /usr/bin/python3 -m testbed.shapes up routing [--prefix P]    (prints names and addresses as JSON)
    /usr/bin/python3 -m testbed.shapes down routing [--prefix P]

`check` runs every scenario of a shape and prints what came back and any mismatch with what the
scenario says the kernel does.
"""

from __future__ import annotations

import argparse
import json
import sys

from .calico import TUNNELS, CalicoCluster, tunnel_unavailable
from .shape import Shape
from .overlay import FlannelCluster
from .routing import RoutingLab

SHAPES = {"flannel": (FlannelCluster, {}), "routing": (RoutingLab, {})}
SHAPES.update({f"calico-{t}": (CalicoCluster, {"tunnel": t}) for t in TUNNELS})
CLI_PREFIX = "skbtshape"


def build(name: str, **kw):
    """An unbuilt shape by name (enter it, or call up())."""
    cls, args = SHAPES[name]
    return cls(**args, **kw)


def unavailable(name: str) -> str | None:
    """Why this kernel cannot build the shape (a skip reason), or None."""
    return tunnel_unavailable(name.split("-", 1)[1]) if name.startswith("calico-") else None


def _check(names: list[str]) -> int:
    ok = True
    for name in names:
        reason = unavailable(name)
        if reason:
            print(f"{name}: skipped, {reason}")
            continue
        with build(name) as shape:
            print(f"{name}: built in {shape.build_seconds:.2f} s")
            for sc in shape.scenarios:
                outcome, _ = shape.run(sc, watch=sc.path)
                problems = outcome.mismatches()
                ok &= not problems
                back = ", ".join(str(p.outer.icmp_type if p.outer.tcp_flags is None else "rst") for p in outcome.replies)
                print(f"  {sc.name:18} received {outcome.received:2}  back [{back}]  "
                      f"{'; '.join(problems) if problems else 'as described'}", flush=True)
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m testbed.shapes", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the shapes and whether this kernel can build them")
    chk = sub.add_parser("check", help="build shapes and run their scenarios")
    chk.add_argument("names", nargs="*", metavar="SHAPE", help=", ".join(SHAPES))
    for cmd in ("up", "down"):
        p = sub.add_parser(cmd, help="build a shape and leave it" if cmd == "up" else "remove a shape left by up")
        p.add_argument("name", choices=SHAPES)
        p.add_argument("--prefix", default=CLI_PREFIX, help=f"namespaces are <prefix>-<role> (default {CLI_PREFIX})")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for name in SHAPES:
            print(f"{name:14} {unavailable(name) or 'buildable here'}")
        return 0
    if args.cmd == "check":
        unknown = [n for n in args.names if n not in SHAPES]
        if unknown:
            ap.error(f"unknown shape {unknown[0]!r}; known: {', '.join(SHAPES)}")
        return _check(args.names or list(SHAPES))
    shape = build(args.name, prefix=args.prefix)
    if args.cmd == "down":
        shape.remove_namespaces()  # what a previous `up` left
        return 0
    shape.up()
    print(json.dumps(shape.describe(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())


class Chain(Shape):
    """HOPS namespaces in a line, each routing to the next over a veth pair
    (10.253.i.1/30 -> 10.253.i.2/30); the last has no route onwards, so a
    datagram from the first to FAR is forwarded HOPS - 2 times and dropped
    for want of a route: a path of ~4 rows per hop (--on-trouble's paths
    longer than its record's sightings)."""

    HOPS = 10
    ROLES = tuple("hop%d" % i for i in range(HOPS))
    FAR = "10.254.0.1"

    def _build(self) -> None:
        for i in range(self.HOPS - 1):
            here, there = self.ROLES[i], self.ROLES[i + 1]
            self.exec(here, ["ip", "link", "add", "right", "type", "veth", "peer", "name", "left",
                             "netns", self.ns[there]])
            self.exec(here, ["ip", "addr", "add", "10.253.%d.1/30" % i, "dev", "right"])
            self.exec(there, ["ip", "addr", "add", "10.253.%d.2/30" % i, "dev", "left"])
            self.exec(here, ["ip", "link", "set", "right", "up"])
            self.exec(there, ["ip", "link", "set", "left", "up"])
            self.exec(here, ["ip", "route", "add", self.FAR, "via", "10.253.%d.2" % i])
            if i:                       # the first sends; the rest forward
                self.sysctl(here, "net.ipv4.ip_forward", 1)
        self.sysctl(self.ROLES[-1], "net.ipv4.ip_forward", 1)
