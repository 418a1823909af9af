"""Command-line flags and their validation.

Everything the user types is checked here and turned into plain numbers
before any BPF is built: only those numbers ever reach the C text.
A bad value is one line on stderr and exit status 2.
"""

import fcntl
import ipaddress
import os
import re
import stat
import sys
from dataclasses import dataclass, field

from ..story.fit import MIN_WIDTH
from .flags import (BACKENDS, L4_PROTOCOLS, MAX_NETNS, PROG, ROTATE_FILES_DEFAULT,
                    SNAPLEN_DEFAULT, build_parser)

# ioctl(2) on a namespace file (linux/nsfs.h) and its answer for a netns
NS_GET_NSTYPE = 0xB703
CLONE_NEWNET = 0x40000000
NETNS_NAME = r"[A-Za-z0-9_.@-]+"     # an 'ip netns' name -N takes
MAX_DURATION = 366 * 24 * 3600     # --duration: a year is enough, and a float's seconds stay exact
NETNS_NAMES_SHOWN = 10     # of 'ip netns list', in the error for an unknown -N


class UsageError(Exception):
    """A bad flag value: reported as one line, exit 2."""


class PackageMissing(Exception):
    """A flag needs a package that is not installed: one line, exit 1."""


# Python modules only some flags need, imported only by those flags' code:
# (flag given?, module, what to say when it cannot be imported)
OPTIONAL_MODULES = (
    (lambda cfg: cfg.write is not None, "dpkt",
     "-w needs python3-dpkt (apt install python3-dpkt)"),
)


@dataclass
class Config:
    addr: object = None             # ipaddress.IPv4Address / IPv6Address
    proto: str = "any"
    port: int = None
    icmpid: int = None
    pid: int = None
    ct_states: list = field(default_factory=list)   # --ct-state words (conntrack.CT_STATES)
    ct_mark: tuple = None           # --ct-mark: (mark, mask), mark having no bit outside mask
    ct_zone: int = None             # --ct-zone: the conntrack zone id
    ct: bool = False                # --ct: conntrack in the text rows
    nftrace: bool = False           # --nftrace: the deciding nftables rules (a trace table)
    header_only: bool = False       # --header-only: -H/-P/--proto never match the connection
    netns: int = None               # inode (the first -N)
    netns_all: list = field(default_factory=list)   # every -N inode (at most MAX_NETNS)
    netns_label: str = None         # what the user typed for -N
    count: int = None
    duration: float = None          # --duration: seconds of tracing
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
    snaplen: int = SNAPLEN_DEFAULT  # --snaplen: packet bytes per pcapng block
    force: bool = False
    rotate: int = None              # --rotate: bytes a file holds before the next one
    rotate_files: int = ROTATE_FILES_DEFAULT    # --rotate-files: files kept per output
    interval: float = None          # --interval: seconds between summaries on stderr
    names: bool = False             # NETWORK_NS column shows names
    summary: bool = True            # the packets' story at exit
    expression: object = None       # pcapfilter.Expression: the positional filter words
    read: list = None               # -r FILE ...: saved JSON lines instead of tracing
    node: str = None                # --node NAME: written into every JSON object
    latency: bool = False           # --latency: hop-to-hop delay table at exit
    width: int = None               # --width: columns of the story and compact rows
    compact: bool = False           # --compact: compact rows to a pipe or file too
    story_per_packet: bool = False  # --story-per-packet: a table row per packet
    on_trouble: bool = False        # --on-trouble: the flight recorder (program/recorder.py)
    slow_ns: int = None             # --slow: in flight longer is trouble (nanoseconds)
    recorder_size: int = None       # --recorder-size: skbs recorded at once
    all_functions: bool = False     # --all: every function taking an skb
    functions: list = field(default_factory=list)   # --func patterns

    @property
    def matches_connection(self):
        """Do -H, -P, --proto also match a packet by its connection's
        original tuple (the default; not with --header-only)?"""
        return not self.header_only and (
            self.addr is not None or self.port is not None or self.proto != "any")


def _number(text, what, low, high, hex_ok=False):
    """A number in decimal; hex_ok: or in 0x hex (marks and zones are written either way)."""
    if text is None:
        return None
    written = text.strip()
    form = r"[0-9]+|0[xX][0-9a-fA-F]+" if hex_ok else r"[0-9]+"
    if not re.fullmatch(form, written):
        raise UsageError("%s must be a number%s, not %r"
                         % (what, " (decimal or 0x hex)" if hex_ok else "", text))
    value = int(written, 16 if written[:2].lower() == "0x" else 10)
    if not low <= value <= high:
        if hex_ok:
            raise UsageError("%s must be between %d and %d (%#x), not %s"
                             % (what, low, high, high, written))
        raise UsageError("%s must be between %d and %d, not %d" % (what, low, high, value))
    return value


TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def _time(text, what, high):
    """A time: seconds, or a number with s, m or h (60s, 5m, 1h)."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*([0-9.]+)\s*([smh]?)\s*", text)
    if not match:
        raise UsageError("%s must be a time such as 60s, 5m or 1h, not %r" % (what, text))
    return _seconds(match.group(1), what, high) * TIME_UNITS[match.group(2)]


def _seconds(text, what, high):
    """A positive number of seconds (10, 0.5), at most high."""
    if text is None:
        return None
    if not re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", text.strip()):
        raise UsageError("%s must be a number of seconds, not %r" % (what, text))
    value = float(text)
    if not 0 < value <= high:
        raise UsageError("%s must be more than 0 and at most %d seconds, not %s"
                         % (what, high, text.strip()))
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
            raise UsageError("-N: no network namespace with inode %d%s" % (inode, named_netns()))
        return inode, text
    if "/" in text:
        path = text
    elif re.fullmatch(NETNS_NAME, text) and text not in (".", ".."):
        path = os.path.join("/run/netns", text)
    else:
        raise UsageError("-N: %r is not a namespace inode, name or path" % text)
    if not is_network_namespace(path):
        raise UsageError("-N: no network namespace %r%s" % (text, named_netns()))
    return os.stat(path).st_ino, text


def named_netns():
    """The names 'ip netns list' shows (its /run/netns), for an unknown -N:
    "; 'ip netns' has: a, b", up to NETNS_NAMES_SHOWN of them; "" if none."""
    try:
        names = sorted(name for name in os.listdir("/run/netns")
                       if re.fullmatch(NETNS_NAME, name)   # a name -N takes, and one line
                       and is_network_namespace(os.path.join("/run/netns", name)))
    except OSError:
        return ""
    if not names:
        return ""
    more = len(names) - NETNS_NAMES_SHOWN
    return "; 'ip netns' has: %s%s" % (", ".join(names[:NETNS_NAMES_SHOWN]),
                                       " and %d more" % more if more > 0 else "")


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
    cfg.read = ns.read
    _filters(ns, cfg)
    _shown(ns, cfg)
    _outputs(ns, cfg)
    cfg.expression = parse_expression(ns.expression)
    if cfg.read:
        _read_only(cfg)
    cfg.all_functions = ns.all_functions
    from ..program.functions import FunctionError, check_patterns
    try:
        cfg.functions = check_patterns(ns.func)
    except FunctionError as e:
        raise UsageError(str(e)) from None
    check_optional_modules(cfg)
    return cfg


def check_optional_modules(cfg):
    """PackageMissing when a flag given needs a module that is missing
    (after the usage checks: a bad command line is said first)."""
    import importlib
    for given, module, missing in OPTIONAL_MODULES:
        if given(cfg):
            try:
                importlib.import_module(module)
            except ImportError:
                raise PackageMissing(missing) from None


def _filters(ns, cfg):
    """-H, --proto, -P, --icmpid, --ct-state, --ct-mark, --ct-zone, -p, -N."""
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
    cfg.ct_states = parse_ct_states(ns.ct_state or [])
    cfg.ct_mark = parse_ct_mark(ns.ct_mark)
    cfg.ct_zone = _number(ns.ct_zone, "--ct-zone", 0, 0xFFFF, hex_ok=True)
    cfg.header_only = ns.header_only
    if cfg.header_only and cfg.addr is None and cfg.port is None and proto == "any":
        raise UsageError("--header-only applies only with -H, -P or --proto")
    cfg.pid = _number(ns.pid, "-p/--pid", 1, 2**22)
    if cfg.pid is not None and not os.path.exists("/proc/%d" % cfg.pid):
        raise UsageError("-p: no process %d" % cfg.pid)
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


def _shown(ns, cfg):
    """What is traced and how it is shown: --node, --latency, -c, -T/-t, the
    modes, stacks, --keep, --backend, --layout..."""
    if ns.node is not None:
        if not re.fullmatch(r"[A-Za-z0-9_.@:-]{1,64}", ns.node):
            raise UsageError("--node: %r is not a node name (letters, digits, _.@:-)" % ns.node)
    cfg.node = ns.node or os.uname().nodename
    cfg.latency = ns.latency
    cfg.story_per_packet = ns.story_per_packet
    cfg.width = _number(ns.width, "--width", MIN_WIDTH, 1000)
    cfg.count = _number(ns.count, "-c/--catch-count", 1, 2**63 - 1)
    cfg.duration = _seconds(ns.duration, "--duration", MAX_DURATION)
    if ns.time and ns.timestamp:
        raise UsageError("-T/--time and -t/--timestamp exclude each other")
    cfg.clock, cfg.timestamp = ns.time, ns.timestamp
    for mode, given in (("route", ns.route), ("iptable", ns.iptable),
                        ("drop", ns.drop or ns.dropstack), ("why", ns.why)):
        if given:
            cfg.modes.add(mode)
    if not cfg.modes:
        cfg.modes.add("route")
    if ns.all_functions:
        cfg.modes.add("why")
    if ns.callstack:
        cfg.stacks = "all"
    elif ns.dropstack:
        cfg.stacks = "drops"
    cfg.keep, cfg.ebpf, cfg.verbose = ns.keep, ns.ebpf, ns.verbose
    _recorder(ns, cfg)
    cfg.backend = ns.backend.strip().lower()
    if cfg.backend not in BACKENDS:
        raise UsageError("--backend must be auto, kprobe or tracepoint; not %r" % ns.backend)
    cfg.layout = ns.layout.strip().lower()
    if cfg.layout not in ("auto", "btf", "headers"):
        raise UsageError("--layout must be auto, btf or headers; not %r" % ns.layout)


def _recorder(ns, cfg):
    """--on-trouble, --slow, --recorder-size: the recorder keeps route and
    drop rows (modes route and drop); what it cannot keep is refused."""
    from ..program import recorder
    if not ns.on_trouble:
        for flag, given in (("--slow", ns.slow), ("--recorder-size", ns.recorder_size)):
            if given is not None:
                raise UsageError("%s applies only with --on-trouble" % flag)
        return
    refused = [flag for flag, given in (
        ("--iptable", ns.iptable), ("--why", ns.why or ns.all_functions), ("--keep", ns.keep),
        ("--callstack", ns.callstack), ("-w/--write", ns.write is not None)) if given]
    if refused:
        raise UsageError("--on-trouble records path and drop rows only; not with %s"
                         % ", ".join(refused))
    cfg.on_trouble = True
    cfg.modes |= {"route", "drop"}
    if ns.slow is not None:
        try:
            cfg.slow_ns = recorder.parse_slow(ns.slow)
        except ValueError as e:
            raise UsageError("--slow %s" % e) from None
    cfg.recorder_size = _number(ns.recorder_size, "--recorder-size", recorder.MIN_ENTRIES,
                                recorder.MAX_ENTRIES)
    if cfg.recorder_size is None:
        cfg.recorder_size = recorder.DEFAULT_ENTRIES


def _outputs(ns, cfg):
    """-o, --json, -w and --snaplen, --force, --names, --no-summary."""
    cfg.force = ns.force
    cfg.compact = ns.compact
    cfg.names = ns.names
    cfg.ct = ns.ct
    cfg.nftrace = ns.nftrace
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
    if ns.compact and cfg.json == "-":
        raise UsageError("--compact applies only to text rows, not to --json's lines")
    if cfg.force and not cfg.output and cfg.json in (None, "-") and not cfg.write:
        raise UsageError("--force applies only with -o/--output, --json=FILE or -w")
    _rotation(ns, cfg)
    cfg.interval = _time(ns.interval, "--interval", MAX_DURATION)


def _rotation(ns, cfg):
    """--rotate SIZE and --rotate-files N: the files they rotate must be
    regular files (or new), and no older run's FILE.N may be taken for this
    run's (--force removes them)."""
    if ns.rotate is None:
        if ns.rotate_files is not None:
            raise UsageError("--rotate-files applies only with --rotate")
        return
    from ..outputs import rotate
    try:
        cfg.rotate = rotate.parse_size(ns.rotate)
    except ValueError as e:
        raise UsageError("--rotate %s" % e) from None
    if ns.rotate_files is not None:
        cfg.rotate_files = _number(ns.rotate_files, "--rotate-files", 1, rotate.MAX_ROTATE_FILES)
    named = [(flag, path) for flag, path in (("-o/--output", cfg.output),
                                             ("--json=FILE", cfg.json), ("-w/--write", cfg.write))
             if path not in (None, "-")]
    if not named:
        raise UsageError("--rotate applies only with -o/--output FILE, --json=FILE or -w FILE")
    if cfg.write and cfg.rotate < rotate.MIN_PCAPNG_ROTATE:
        raise UsageError("--rotate with -w: at least %dk, not %s (a pcapng file begins with "
                         "32k kept for the story)" % (rotate.MIN_PCAPNG_ROTATE >> 10, ns.rotate))
    for flag, path in named:
        if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
            raise UsageError("--rotate: %s %r is not a regular file" % (flag, path))
        older = rotate.rotated_siblings(path)
        if older and not cfg.force:
            raise UsageError("--rotate: %s: %r exists (an older run's); add --force to remove "
                             "the old rotated files" % (flag, rotate.rotated_name(path, older[0])))


def _read_only(cfg):
    """-r: the flags that apply only while tracing are refused."""
    live_only = [flag for flag, given in (
        ("-p/--pid", cfg.pid is not None), ("--duration", cfg.duration is not None),
        ("--keep", cfg.keep), ("--on-trouble", cfg.on_trouble), ("--ebpf", cfg.ebpf), ("--interval", cfg.interval is not None),
        ("--backend", cfg.backend != "auto"), ("--json=FILE", cfg.json not in (None, "-")),
        ("-w/--write", cfg.write is not None), ("--nftrace", cfg.nftrace),
        ("--callstack/--dropstack", cfg.stacks is not None)) if given]
    if live_only:
        raise UsageError("-r reads saved events; %s applies only while tracing"
                         % ", ".join(live_only))


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


def parse_ct_states(values):
    """--ct-state's values (repeatable, or comma-separated), each one of
    conntrack.CT_STATES, in the order given without repeats."""
    from ..events.conntrack import CT_STATES
    states = []
    for value in values:
        for word in value.split(","):
            word = word.strip().lower()
            if word not in CT_STATES:
                raise UsageError("--ct-state must be one of %s; not %r"
                                 % (", ".join(CT_STATES), word or value))
            if word not in states:
                states.append(word)
    return states


def parse_ct_mark(text):
    """--ct-mark MARK[/MASK] -> (mark, mask): the entry's mark ANDed with
    MASK (default: all 32 bits) must be MARK, as iptables' connmark match.
    A MARK with bits outside MASK could never match: refused."""
    if text is None:
        return None
    mark_text, slash, mask_text = text.partition("/")
    mark = _number(mark_text, "--ct-mark's MARK", 0, 0xFFFFFFFF, hex_ok=True)
    mask = _number(mask_text, "--ct-mark's MASK", 1, 0xFFFFFFFF, hex_ok=True) if slash else 0xFFFFFFFF
    if mark & ~mask:
        raise UsageError("--ct-mark %s: MARK has bits outside MASK (%#x), it would never match"
                         % (text.strip(), mark & ~mask))
    return mark, mask


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
    except (LibpcapMissing, PackageMissing) as e:
        sys.stderr.write("%s: %s\n" % (PROG, e))
        sys.exit(1)
