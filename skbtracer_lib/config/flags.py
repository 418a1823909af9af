"""The command-line flags, as a table: argparse's parser (build_parser) and
bash completion (completion.py) are both made from FLAGS. A new flag is one
Flag here (in the order --help lists it), and its Config field and check in
validate() (config/__init__.py)."""

import argparse
import os
import sys

from .. import __version__
from ..events.compact import WIDTH as COMPACT_WIDTH
from ..events.conntrack import CT_STATES
from ..events.vocabulary import L4_NUMBERS
from ..program.recorder import DEFAULT_ENTRIES as RECORDER_DEFAULT
from ..program.recorder import MAX_ENTRIES as RECORDER_MAX
from ..program.recorder import MIN_ENTRIES as RECORDER_MIN
from ..story.fit import DEFAULT_WIDTH

PROG = "skbtracer"

L4_PROTOCOLS = dict(L4_NUMBERS, any=None)     # --proto's words
BACKENDS = ("auto", "kprobe", "tracepoint")
SNAPLEN_DEFAULT = 256
ROTATE_FILES_DEFAULT = 10
MAX_NETNS = 8       # -N namespaces compiled into the kernel filter

# --help's examples: (the arguments, what they do), shown after the name the
# program was invoked by (skbtracer installed, skbtracer.py in a checkout)
EXAMPLES = (
    ("", "trace the packet path of every packet"),
    ("-H 10.244.0.3 --proto udp --route --iptable", "one pod's UDP: path and netfilter verdicts"),
    ("--proto icmp -H 1.2.3.4 --icmpid 22", "one ping (echo id 22)"),
    ("--proto tcp -H 1.2.3.4 -P 22", "TCP to or from 1.2.3.4 port 22"),
    ("-H fd00::2 --proto icmp", "ICMPv6 of one IPv6 address"),
    ("-N server --drop --dropstack", 'drops in netns "server", with stacks'),
    ("--proto udp --on-trouble --slow 100ms", "only drops, duplicates and slow packets"),
    ("-H 10.96.0.10 -P 53", "a Service's connections, both directions, past DNAT"),
    ("-H 10.96.0.10 --keep", "follow a service IP's packets past DNAT"),
    ("-N node1 -H 10.244.1.2 --drop --nftrace", "the nftables rule of each DNAT and drop"),
    ("-H 10.96.0.10 --ct-state new --ct", "new connections: first packets, NAT chosen"),
    ("--ct-mark 0x2a/0xff --ct", "connections whose CONNMARK's low byte is 42"),
    ("--ct-zone 7 -w zone7.pcapng", "one conntrack zone's packets, to a pcapng file"),
    ("-p 1234 -c 20 -T", "20 rows from process 1234's context"),
    ("-H 10.244.0.3 --names -o trace.txt", "rows to a file, netns names, story at exit"),
    ("-H 10.244.0.3 --json > trace.jsonl", "one JSON object per event"),
    ("-H 10.244.0.3 --json=trace.jsonl", "text rows on stdout, JSON lines to a file"),
    ("-H 10.244.0.3 --drop -w t.pcapng", "rows, and every sighting as pcapng"),
    ("-H 10.244.0.3 -w t.pcapng --snaplen 1500", "whole packets (up to the linear data)"),
    ("--drop --json=d.jsonl --rotate 100M --interval 1m", "for days: 10 files of 100 MiB at most"),
    ("'udp and host 10.244.1.2'", "a tcpdump filter expression (pcap-filter(7))"),
    ("--drop 'tcp[tcpflags] & tcp-syn != 0'", "dropped TCP SYNs"),
    ("-N server -- 'not port 22'", "expressions AND with the flags; -- ends them"),
    ("-N node1 -N client --node node1 --json=a.jsonl", "a node and its pod, JSON lines to a file"),
    ("-r a.jsonl b.jsonl --latency", "two nodes' saved traces: one story, hop delays"),
)
EXAMPLE_COMMENT_AT = 54     # the column of the examples' comments


def examples(prog):
    """--help's epilog: the examples as prog's command lines, a comment
    beside each (or under it, when the command is too long)."""
    lines = ["examples:"]
    for args, what in EXAMPLES:
        command = "    " + " ".join(filter(None, (prog, args)))
        if len(command) + 1 >= EXAMPLE_COMMENT_AT:
            lines += [command, " " * EXAMPLE_COMMENT_AT + "# " + what]
        else:
            lines.append(command.ljust(EXAMPLE_COMMENT_AT) + "# " + what)
    return "\n".join(lines) + "\n"


def invoked_name():
    """The name the program was invoked by, as --help shows it: skbtracer
    (installed) or skbtracer.py (a checkout); skbtracer when run otherwise
    (tests, python3 -c)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith(PROG) else PROG

# What a flag's value completes to in bash (besides a list of words)
FILE, NETNS = "file", "netns"
SWITCHES = ("store_true", "help", "version")        # actions that take no value


class Flag:
    """One flag: its names, argparse's add_argument() options, and what its
    value completes to in bash (FILE, NETNS, words, or None: nothing to
    guess). hidden: not in --help nor completed."""

    def __init__(self, *names, complete=None, hidden=False, **options):
        self.names = names
        self.complete = complete
        self.hidden = hidden
        if hidden:
            options["help"] = argparse.SUPPRESS
        self.options = options

    @property
    def takes_value(self):
        return self.names[0].startswith("-") and self.options.get("action") not in SWITCHES

    @property
    def value_optional(self):
        """--flag=VALUE only (--json FILE is --json, then FILE)."""
        return self.options.get("nargs") == "?"


FLAGS = (
    Flag("-h", "--help", action="help", help="show this help message and exit"),
    Flag("-H", "--ipaddr", metavar="ADDR",
         help="packet's source or destination is ADDR (IPv4 or IPv6)"),
    Flag("--proto", default="any", metavar="PROTO", complete=tuple(L4_PROTOCOLS),
         help="tcp, udp, icmp (ICMPv6 for IPv6 packets) or any (default)"),
    Flag("-P", "--port", metavar="N", help="TCP/UDP source or destination port"),
    Flag("--icmpid", metavar="N", help="ICMP echo id (needs --proto icmp)"),
    Flag("--header-only", action="store_true",
         help="-H, -P and --proto match the packet's own headers only; by default they also "
              "match its connection's original tuple (a Service's ClusterIP and port, both "
              "directions, after DNAT)"),
    Flag("-p", "--pid", metavar="N", help="only events in the context of this process"),
    Flag("--ct-state", metavar="STATE", action="append", dest="ct_state", complete=tuple(CT_STATES),
         help="only packets whose skb carries this conntrack state: new, est, rel, inv (no "
              "conntrack entry on the skb) or untracked; repeatable"),
    Flag("--ct-mark", metavar="MARK[/MASK]",
         help="only packets whose conntrack entry's mark ANDed with MASK (default 0xffffffff) "
              "is MARK (decimal or 0x hex); no entry: no match"),
    Flag("--ct-zone", metavar="ZONE",
         help="only packets whose conntrack entry is in zone ZONE (0-65535); no entry: no "
              "match"),
    Flag("-N", "--netns", metavar="NS", action="append", complete=NETNS,
         help="only this network namespace: an inode number, a name from 'ip netns', or a "
              "path like /proc/PID/ns/net; repeat for up to %d namespaces" % MAX_NETNS),
    Flag("-c", "--catch-count", metavar="N", dest="count",
         help="stop after N rows (default: unlimited)"),
    Flag("--duration", metavar="SECONDS",
         help="stop after SECONDS of tracing (a number, e.g. 10 or 0.5; default: unlimited)"),
    Flag("-T", "--time", action="store_true",
         help="show the event's time as HH:MM:SS (the default)"),
    Flag("-t", "--timestamp", action="store_true",
         help="show seconds since the first event, us resolution"),
    Flag("--route", action="store_true",
         help="packet path rows (the default when no mode is given)"),
    Flag("--iptable", action="store_true", help="netfilter verdict rows"),
    Flag("--drop", action="store_true",
         help="rows for packets freed as drops, with reason and location"),
    Flag("--why", action="store_true",
         help="rows for the ICMP errors and TCP resets the stack sends back because of a "
              "packet, on that packet, each packet's routing decision on its rows, and a "
              "packet's wait for ARP/ND (also with --all)"),
    Flag("--dropstack", action="store_true",
         help="kernel stack under every drop row (implies --drop)"),
    Flag("--callstack", action="store_true", help="kernel stack under every row"),
    Flag("--keep", action="store_true",
         help="keep following a matched skb (and its clones) after NAT changes its "
              "addresses, until it is freed"),
    Flag("--on-trouble", action="store_true",
         help="flight recorder: each packet's path is kept in kernel memory and printed only "
              "when it is dropped, a copy of it reaches a place twice (a duplicate) or it is "
              "in flight longer than --slow; no row for normal packets"),
    Flag("--slow", metavar="DURATION",
         help="--on-trouble: a packet still in flight DURATION (e.g. 100ms, 2s, 500us) after "
              "its first row is trouble, told at its next row or, stuck with no later row, by "
              "a sweep every DURATION/4"),
    Flag("--recorder-size", metavar="N",
         help="--on-trouble: packets recorded at once (default %d, %d-%d; ~3.6 KiB each); "
              "beyond, the oldest are forgotten, and counted" % (
                  RECORDER_DEFAULT, RECORDER_MIN, RECORDER_MAX)),
    Flag("--backend", default="auto", metavar="B", complete=BACKENDS,
         help="auto (default), kprobe or tracepoint"),
    Flag("-v", "--verbose", action="store_true",
         help="say which probes attached, which were skipped and why"),
    Flag("--all", action="store_true", dest="all_functions",
         help="route rows from every kernel function that takes an skb (kprobes; BTF of "
              "vmlinux and loaded modules)"),
    Flag("--func", action="append", default=[], metavar="PATTERN",
         help="route rows from functions by name or shell-style glob ('br_*'); repeatable; "
              "with --all, only those"),
    Flag("-o", "--output", metavar="FILE", complete=FILE,
         help="write the rows to FILE instead of stdout (refuses to overwrite an existing "
              "FILE without --force)"),
    Flag("--json", nargs="?", const="-", metavar="FILE", complete=FILE,
         help="JSON lines, one object per event: instead of the text rows (--json), or to "
              "FILE beside them (--json=FILE)"),
    Flag("-w", "--write", metavar="FILE", complete=FILE,
         help="also write every row as a packet to FILE, pcapng for Wireshark: one "
              "interface per namespace/device, the row as the comment"),
    Flag("--snaplen", metavar="N",
         help="-w: packet bytes per row (default %d, at most the skb's linear data)"
              % SNAPLEN_DEFAULT),
    Flag("--force", action="store_true",
         help="let -o/--output, --json=FILE and -w overwrite an existing file"),
    Flag("--rotate", metavar="SIZE",
         help="-o/--output, --json=FILE and -w: once a file holds SIZE bytes (e.g. 100M, 10k, "
              "1G) rename it FILE.1 (FILE.1 to FILE.2 ...) and go on in a new FILE; each file "
              "whole and readable on its own"),
    Flag("--rotate-files", metavar="N",
         help="--rotate: keep at most N files of each output, FILE included, the oldest "
              "removed (default %d)" % ROTATE_FILES_DEFAULT),
    Flag("--interval", metavar="TIME",
         help="every TIME (e.g. 60s, 5m, 1h; plain numbers are seconds) a one-line summary on "
              "stderr: rows printed, events lost"),
    Flag("--ct", action="store_true",
         help="text rows: TRACE_INFO ends in the skb's conntrack state and NAT (ct=NEW, "
              "ct=EST,R dnat A=>B)"),
    Flag("--nftrace", action="store_true",
         help="which nftables/iptables-nft rule DNATed or dropped a packet, from the kernel's "
              "nftables trace: ADDS a table (inet skbtracer_trace) to the ruleset of -N's "
              "namespaces (else this one) while tracing, removed at exit"),
    Flag("--names", action="store_true",
         help="NETWORK_NS column: the namespace's 'ip netns' name, pod or container instead "
              "of its inode; the story's SERVICE lines: kube-proxy's Service name"),
    Flag("--no-summary", action="store_true",
         help="no packet story (flows, paths, duplicates, drops) on stderr at exit"),
    Flag("-r", "--read", nargs="+", metavar="FILE", complete=FILE,
         help="read saved JSON lines (--json) instead of tracing; several files (nodes) make "
              "one story; FILE's rotated files (FILE.1 ...) too; no root or bcc needed"),
    Flag("--node", metavar="NAME",
         help="the node name written into the JSON objects (default: the host name)"),
    Flag("--latency", action="store_true",
         help="at exit, a table of hop-to-hop delays (count, median, p99, max)"),
    Flag("--story-per-packet", action="store_true",
         help="the story's table: a row per packet instead of one per flow, path and end"),
    Flag("--compact", action="store_true",
         help="text rows in the compact layout a terminal gets (no DEST_MAC, short skb "
              "addresses, %d columns or --width) also to a pipe or file" % COMPACT_WIDTH),
    Flag("--width", metavar="N",
         help="fit the story into N columns (default: the terminal's width, else %d), and "
              "the compact rows (a terminal's, --compact) too" % DEFAULT_WIDTH),
    Flag("--version", action="version", version="%s %s" % (PROG, __version__)),
    Flag("expression", nargs="*", metavar="EXPRESSION",
         help="a tcpdump filter expression (pcap-filter(7)), ANDed with the flags; compiled "
              "by libpcap and run in the kernel"),
    Flag("--ebpf", action="store_true", hidden=True),
    # Where struct layouts come from: btf (default when the kernel has it) or
    # the installed headers. For tests and benchmarks.
    Flag("--layout", default="auto", hidden=True),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, "%s: error: %s\n" % (PROG, message))


def build_parser(prog=None):
    """argparse's parser of FLAGS; prog: the name --help shows (default:
    invoked_name()). No abbreviations: a script's --prot must not work by
    luck until a --protect comes."""
    prog = prog or invoked_name()
    p = _Parser(
        prog=prog,
        description="Trace the path of packets through the kernel: one row per "
                    "function or netfilter hook an skb passes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples(prog), add_help=False, allow_abbrev=False)
    for flag in FLAGS:
        p.add_argument(*flag.names, **flag.options)
    return p
