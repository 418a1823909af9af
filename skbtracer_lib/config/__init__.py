"""Command-line flags and their validation.

Everything the user types is checked here and turned into plain numbers
before any BPF is built: only those numbers ever reach the C text.
A bad value is one line on stderr and exit status 2.
"""

import argparse
import fcntl
import ipaddress
import os
import re
import stat
import sys
from dataclasses import dataclass, field

from .. import __version__

PROG = "skbtracer"

EXAMPLES = """examples:
    skbtracer.py                                      # trace the packet path of every packet
    skbtracer.py -H 10.244.0.3 --proto udp --route --iptable
                                                      # one pod's UDP: path and netfilter verdicts
    skbtracer.py --proto icmp -H 1.2.3.4 --icmpid 22  # one ping (echo id 22)
    skbtracer.py --proto tcp -H 1.2.3.4 -P 22         # TCP to or from 1.2.3.4 port 22
    skbtracer.py -H fd00::2 --proto icmp              # ICMPv6 of one IPv6 address
    skbtracer.py -N server --drop --dropstack         # drops in netns "server", with stacks
    skbtracer.py -H 10.96.0.10 --keep                 # follow a service IP's packets past DNAT
    skbtracer.py -p 1234 -c 20 -T                     # 20 rows from process 1234's context
    skbtracer.py -H 10.244.0.3 --names -o trace.txt   # rows to a file, netns names, story at exit
    skbtracer.py -H 10.244.0.3 --json > trace.jsonl   # one JSON object per event
    skbtracer.py -H 10.244.0.3 --json=trace.jsonl     # text rows on stdout, JSON lines to a file
    skbtracer.py -H 10.244.0.3 --drop -w t.pcapng     # rows, and every sighting as pcapng
    skbtracer.py -H 10.244.0.3 -w t.pcapng --snaplen 1500
                                                      # whole packets (up to the linear data)
    skbtracer.py 'udp and host 10.244.1.2'            # a tcpdump filter expression (pcap-filter(7))
    skbtracer.py --drop 'tcp[tcpflags] & tcp-syn != 0' # dropped TCP SYNs
    skbtracer.py -N server -- 'not port 22'            # expressions AND with the flags; -- ends them
    skbtracer.py -N node1 -N client --node node1 --json=a.jsonl
                                                      # a node and its pod, JSON lines to a file
    skbtracer.py -r a.jsonl b.jsonl --latency         # two nodes' saved traces: one story, hop delays
"""

# ioctl(2) on a namespace file (linux/nsfs.h) and its answer for a netns
NS_GET_NSTYPE = 0xB703
CLONE_NEWNET = 0x40000000

L4_PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "any": None}
BACKENDS = ("auto", "kprobe", "tracepoint")
SNAPLEN_DEFAULT = 256
MAX_NETNS = 8       # -N namespaces compiled into the kernel filter


class UsageError(Exception):
    """A bad flag value: reported as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, "%s: error: %s\n" % (PROG, message))


@dataclass
class Config:
    addr: object = None             # ipaddress.IPv4Address / IPv6Address
    proto: str = "any"
    port: int = None
    icmpid: int = None
    pid: int = None
    netns: int = None               # inode (the first -N)
    netns_all: list = field(default_factory=list)   # every -N inode (at most MAX_NETNS)
    netns_label: str = None         # what the user typed for -N
    count: int = None
    timestamp: bool = False         # -t: seconds since the first event
    clock: bool = False             # -T: HH:MM:SS of the event (also the default)
    modes: set = field(default_factory=set)
    stacks: str = None              # None, "drops" or "all"
    keep: bool = False
    ebpf: bool = False
    verbose: bool = False
    backend: str = "auto"
    layout: str = "auto"
    output: str = None              # -o FILE (None: stdout)
    json: str = None                # None, "-" (JSON rows instead of text) or a FILE beside them
    write: str = None               # -w FILE: pcapng beside the rows
    snaplen: int = 256              # --snaplen: packet bytes per pcapng block
    force: bool = False
    names: bool = False             # NETWORK_NS column shows names
    summary: bool = True            # the packets' story at exit
    expression: object = None       # pcapfilter.Expression: the positional filter words
    read: list = None               # -r FILE ...: saved JSON lines instead of tracing
    node: str = None                # --node NAME: written into every JSON object
    latency: bool = False           # --latency: hop-to-hop delay table at exit
    all_functions: bool = False     # --all: every function taking an skb
    functions: list = field(default_factory=list)   # --func patterns


def build_parser():
    p = _Parser(
        prog=PROG,
        description="Trace the path of packets through the kernel: one row per "
                    "function or netfilter hook an skb passes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES)
    p.add_argument("-H", "--ipaddr", metavar="ADDR",
                   help="packet's source or destination is ADDR (IPv4 or IPv6)")
    p.add_argument("--proto", default="any", metavar="PROTO",
                   help="tcp, udp, icmp (ICMPv6 for IPv6 packets) or any (default)")
    p.add_argument("-P", "--port", metavar="N", help="TCP/UDP source or destination port")
    p.add_argument("--icmpid", metavar="N", help="ICMP echo id (needs --proto icmp)")
    p.add_argument("-p", "--pid", metavar="N",
                   help="only events in the context of this process")
    p.add_argument("-N", "--netns", metavar="NS", action="append",
                   help="only this network namespace: an inode number, a name "
                        "from 'ip netns', or a path like /proc/PID/ns/net; repeat "
                        "for up to %d namespaces" % MAX_NETNS)
    p.add_argument("-c", "--catch-count", metavar="N", dest="count",
                   help="stop after N rows (default: unlimited)")
    p.add_argument("-T", "--time", action="store_true",
                   help="show the event's time as HH:MM:SS (the default)")
    p.add_argument("-t", "--timestamp", action="store_true",
                   help="show seconds since the first event, us resolution")
    p.add_argument("--route", action="store_true",
                   help="packet path rows (the default when no mode is given)")
    p.add_argument("--iptable", action="store_true", help="netfilter verdict rows")
    p.add_argument("--drop", action="store_true",
                   help="rows for packets freed as drops, with reason and location")
    p.add_argument("--dropstack", action="store_true",
                   help="kernel stack under every drop row (implies --drop)")
    p.add_argument("--callstack", action="store_true", help="kernel stack under every row")
    p.add_argument("--keep", action="store_true",
                   help="keep following a matched skb (and its clones) after NAT "
                        "changes its addresses, until it is freed")
    p.add_argument("--backend", default="auto", metavar="B",
                   help="auto (default), kprobe or tracepoint")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="say which probes attached, which were skipped and why")
    p.add_argument("--all", action="store_true", dest="all_functions",
                   help="route rows from every kernel function that takes an skb "
                        "(kprobes; BTF of vmlinux and loaded modules)")
    p.add_argument("--func", action="append", default=[], metavar="PATTERN",
                   help="route rows from functions by name or shell-style glob "
                        "('br_*'); repeatable; with --all, only those")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the rows to FILE instead of stdout (refuses to overwrite "
                        "an existing FILE without --force)")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="JSON lines, one object per event: instead of the text rows "
                        "(--json), or to FILE beside them (--json=FILE)")
    p.add_argument("-w", "--write", metavar="FILE",
                   help="also write every row as a packet to FILE, pcapng for Wireshark: "
                        "one interface per namespace/device, the row as the comment")
    p.add_argument("--snaplen", metavar="N",
                   help="-w: packet bytes per row (default %d, at most the skb's linear "
                        "data)" % SNAPLEN_DEFAULT)
    p.add_argument("--force", action="store_true",
                   help="let -o/--output, --json=FILE and -w overwrite an existing file")
    p.add_argument("--names", action="store_true",
                   help="NETWORK_NS column: the namespace's 'ip netns' name, pod or "
                        "container instead of its inode")
    p.add_argument("--no-summary", action="store_true",
                   help="no packet story (flows, paths, duplicates, drops) on stderr at exit")
    p.add_argument("-r", "--read", nargs="+", metavar="FILE",
                   help="read saved JSON lines (--json) instead of tracing; several files "
                        "(nodes) make one story; no root or bcc needed")
    p.add_argument("--node", metavar="NAME",
                   help="the node name written into the JSON objects (default: the host name)")
    p.add_argument("--latency", action="store_true",
                   help="at exit, a table of hop-to-hop delays (count, median, p99, max)")
    p.add_argument("--version", action="version", version="%(prog)s " + __version__)
    p.add_argument("expression", nargs="*", metavar="EXPRESSION",
                   help="a tcpdump filter expression (pcap-filter(7)), ANDed with the flags; "
                        "compiled by libpcap and run in the kernel")
    p.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)
    # Where struct layouts come from: btf (default when the kernel has it) or
    # the installed headers. For tests and benchmarks.
    p.add_argument("--layout", default="auto", help=argparse.SUPPRESS)
    return p


def _number(text, what, low, high):
    if text is None:
        return None
    if not re.fullmatch(r"[0-9]+", text.strip()):
        raise UsageError("%s must be a number, not %r" % (what, text))
    value = int(text)
    if not low <= value <= high:
        raise UsageError("%s must be between %d and %d, not %d" % (what, low, high, value))
    return value


def parse_address(text):
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise UsageError("-H: %r is not an IPv4 or IPv6 address" % text) from None


def resolve_netns(text):
    """-N value -> (inode, label). Accepts an inode number, an 'ip netns'
    name or a path to a namespace file; the namespace must exist."""
    text = text.strip()
    if re.fullmatch(r"[0-9]+", text):
        inode = int(text)
        if inode not in known_netns_inodes():
            raise UsageError("-N: no network namespace with inode %d" % inode)
        return inode, text
    if "/" in text:
        path = text
    elif re.fullmatch(r"[A-Za-z0-9_.@-]+", text) and text not in (".", ".."):
        path = os.path.join("/run/netns", text)
    else:
        raise UsageError("-N: %r is not a namespace inode, name or path" % text)
    if not is_network_namespace(path):
        raise UsageError("-N: no network namespace %r" % text)
    return os.stat(path).st_ino, text


def is_network_namespace(path):
    """Is path a network namespace file (/run/netns/NAME, /proc/PID/ns/net)?"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:          # not a namespace file at all
        return False
    finally:
        os.close(fd)


def known_netns_inodes():
    """Inodes of every network namespace a process or /run/netns holds."""
    paths = ["/proc/%s/ns/net" % pid for pid in os.listdir("/proc") if pid.isdigit()]
    try:
        paths += [os.path.join("/run/netns", name) for name in os.listdir("/run/netns")]
    except OSError:
        pass
    inodes = set()
    for path in paths:
        try:
            inodes.add(os.stat(path).st_ino)
        except OSError:
            pass    # the process exited meanwhile
    return inodes


def existing_file_problem(st, force):
    """Why an existing file (its lstat) must not be written to, or None.
    Rows go to a FIFO or a character device (/dev/null, a tty) as they
    are; a regular file only with --force; a symlink never (a root tool
    writing into /tmp must not follow one), nor a file with other hard
    links (--force would truncate the file they name)."""
    mode = st.st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return None
    if stat.S_ISLNK(mode):
        return "is a symbolic link; refusing to follow it (name its target instead)"
    if stat.S_ISDIR(mode):
        return "is a directory"
    if not stat.S_ISREG(mode):
        return "is not a regular file, FIFO or character device"
    if not force:
        return "exists; add --force to overwrite it"
    if st.st_nlink > 1:
        return "has %d hard links; refusing to overwrite it" % st.st_nlink
    return None


def check_new_file(flag, path, force):
    """A file skbtracer is about to write: see existing_file_problem()."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise UsageError("%s: cannot write %r: %s" % (flag, path, e.strerror))
    if st is not None:
        problem = existing_file_problem(st, force)
        if problem:
            raise UsageError("%s: %r %s" % (flag, path, problem))
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError("%s: no directory %r" % (flag, parent))


def validate(ns):
    """argparse namespace -> Config, or UsageError."""
    cfg = Config()
    if ns.ipaddr is not None:
        cfg.addr = parse_address(ns.ipaddr)
    proto = ns.proto.strip().lower()
    if proto not in L4_PROTOCOLS:
        raise UsageError("--proto must be one of tcp, udp, icmp, any; not %r" % ns.proto)
    cfg.proto = proto
    cfg.port = _number(ns.port, "-P/--port", 1, 65535)
    if cfg.port is not None and proto == "icmp":
        raise UsageError("-P/--port does not apply to --proto icmp")
    cfg.icmpid = _number(ns.icmpid, "--icmpid", 0, 65535)
    if cfg.icmpid is not None and proto != "icmp":
        raise UsageError("--icmpid needs --proto icmp")
    cfg.pid = _number(ns.pid, "-p/--pid", 1, 2**22)
    if cfg.pid is not None and not os.path.exists("/proc/%d" % cfg.pid):
        raise UsageError("-p: no process %d" % cfg.pid)
    cfg.read = ns.read
    if ns.netns:
        if len(ns.netns) > MAX_NETNS:
            raise UsageError("-N: at most %d namespaces, not %d" % (MAX_NETNS, len(ns.netns)))
        if cfg.read:     # saved events: the inode or netns name they recorded
            cfg.netns_all = [text.strip() for text in ns.netns]
        else:
            resolved = [resolve_netns(text) for text in ns.netns]
            cfg.netns_all = sorted({inode for inode, _label in resolved})
            cfg.netns, cfg.netns_label = resolved[0]
            cfg.netns_label = ",".join(label for _inode, label in resolved)
    if ns.node is not None:
        if not re.fullmatch(r"[A-Za-z0-9_.@:-]{1,64}", ns.node):
            raise UsageError("--node: %r is not a node name (letters, digits, _.@:-)" % ns.node)
    cfg.node = ns.node or os.uname().nodename
    cfg.latency = ns.latency
    cfg.count = _number(ns.count, "-c/--catch-count", 1, 2**63 - 1)
    if ns.time and ns.timestamp:
        raise UsageError("-T/--time and -t/--timestamp exclude each other")
    cfg.clock, cfg.timestamp = ns.time, ns.timestamp

    if ns.route:
        cfg.modes.add("route")
    if ns.iptable:
        cfg.modes.add("iptable")
    if ns.drop or ns.dropstack:
        cfg.modes.add("drop")
    if not cfg.modes:
        cfg.modes.add("route")
    if ns.callstack:
        cfg.stacks = "all"
    elif ns.dropstack:
        cfg.stacks = "drops"
    cfg.keep = ns.keep
    cfg.ebpf = ns.ebpf
    cfg.verbose = ns.verbose

    cfg.backend = ns.backend.strip().lower()
    if cfg.backend not in BACKENDS:
        raise UsageError("--backend must be auto, kprobe or tracepoint; not %r" % ns.backend)
    cfg.layout = ns.layout.strip().lower()
    if cfg.layout not in ("auto", "btf", "headers"):
        raise UsageError("--layout must be auto, btf or headers; not %r" % ns.layout)

    cfg.force = ns.force
    cfg.names = ns.names
    cfg.summary = not ns.no_summary
    if ns.output not in (None, "-"):
        if not ns.output.strip():
            raise UsageError("-o/--output needs a file name")
        check_new_file("-o/--output", ns.output, cfg.force)
        cfg.output = ns.output
    if ns.json is not None:
        cfg.json = ns.json
        if ns.json != "-":
            if not ns.json.strip():
                raise UsageError("--json=FILE needs a file name")
            check_new_file("--json", ns.json, cfg.force)
            if cfg.output and os.path.abspath(cfg.output) == os.path.abspath(ns.json):
                raise UsageError("-o/--output and --json=FILE name the same file %r" % ns.json)
    if ns.write is not None:
        validate_write(ns, cfg)
    elif ns.snaplen is not None:
        raise UsageError("--snaplen applies only with -w")
    if cfg.force and not cfg.output and cfg.json in (None, "-") and not cfg.write:
        raise UsageError("--force applies only with -o/--output, --json=FILE or -w")
    cfg.expression = parse_expression(ns.expression)
    if cfg.read:
        live_only = [flag for flag, given in (
            ("-p/--pid", cfg.pid is not None), ("--keep", cfg.keep), ("--ebpf", cfg.ebpf),
            ("--backend", cfg.backend != "auto"), ("--json=FILE", cfg.json not in (None, "-")),
            ("-w/--write", cfg.write is not None),
            ("--callstack/--dropstack", cfg.stacks is not None)) if given]
        if live_only:
            raise UsageError("-r reads saved events; %s applies only while tracing"
                             % ", ".join(live_only))
    cfg.all_functions = ns.all_functions
    from ..program.functions import FunctionError, check_patterns
    try:
        cfg.functions = check_patterns(ns.func)
    except FunctionError as e:
        raise UsageError(str(e)) from None
    return cfg


def validate_write(ns, cfg):
    """-w FILE and --snaplen."""
    if not ns.write.strip() or ns.write == "-":
        raise UsageError("-w/--write needs a file name (pcapng is not written to stdout)")
    check_new_file("-w/--write", ns.write, cfg.force)
    path = os.path.abspath(ns.write)
    for flag, other in (("-o/--output", cfg.output), ("--json=FILE", cfg.json)):
        if other not in (None, "-") and os.path.abspath(other) == path:
            raise UsageError("%s and -w/--write name the same file %r" % (flag, ns.write))
    cfg.write = ns.write
    if ns.snaplen is not None:
        cfg.snaplen = _number(ns.snaplen, "--snaplen", 1, 65535)


def parse_expression(words):
    """The positional words, joined as tcpdump joins them, compiled by
    libpcap: None without any, else a pcapfilter.Expression."""
    text = " ".join(words).strip()
    if not text:
        return None
    from ..program import pcapfilter
    try:
        return pcapfilter.Expression(text)
    except pcapfilter.FilterError as e:
        raise UsageError("filter expression %r: %s" % (text, e)) from None


def parse_args(argv=None, parser=None):
    """Parse and validate; on a bad value print one line and exit 2."""
    parser = parser or build_parser()
    ns = parser.parse_args(argv)
    from ..program.pcapfilter import LibpcapMissing
    try:
        return validate(ns)
    except UsageError as e:
        sys.stderr.write("%s: error: %s\n" % (PROG, e))
        sys.exit(2)
    except LibpcapMissing as e:
        sys.stderr.write("%s: %s\n" % (PROG, e))
        sys.exit(1)
