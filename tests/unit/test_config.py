"""Flag validation (skbtracer_lib/config.py) through the real command line,
and the filter values as they reach the C text (--ebpf)."""

import ipaddress
import os
import re
import subprocess
import uuid

import pytest

from skbt_unit_helpers import assert_usage_error, run_cli
from skbtracer_lib import config

MISSING = "skbt-missing-%s" % uuid.uuid4().hex[:8]


def missing_pid():
    """A pid no process has (highest first: the least likely to appear)."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    for pid in range(pid_max - 1, 1, -1):
        if not os.path.exists("/proc/%d" % pid):
            return pid
    pytest.skip("every pid is in use")


def missing_netns_inode():
    return max(config.known_netns_inodes() | {4026531840}) + 7919


# (id, argv or a function returning argv, text the message must mention)
BAD_ARGS = [
    ("addr-3-octets", ["-H", "1.2.3"], "-H"),
    ("addr-injection", ["-H", "1.2.3.4); x"], "-H"),
    ("addr-empty", ["-H", ""], "-H"),
    ("addr-hostname", ["-H", "localhost"], "-H"),
    ("port-too-big", ["-P", "70000"], "-P"),
    ("port-zero", ["-P", "0"], "-P"),
    ("port-not-number", ["-P", "abc"], "-P"),
    ("port-hex", ["-P", "0x35"], "-P"),
    ("port-with-icmp", ["-P", "53", "--proto", "icmp"], "-P"),
    ("proto-sctp", ["--proto", "sctp"], "--proto"),
    ("netns-name-missing", ["-N", MISSING], "-N"),
    ("netns-inode-missing", lambda: ["-N", str(missing_netns_inode())], "-N"),
    ("netns-path-missing", ["-N", "/run/netns/" + MISSING], "-N"),
    ("netns-proc-path-missing", ["-N", "/proc/%d/ns/net" % 4194305], "-N"),
    ("netns-bad-name", ["-N", "a b;c"], "-N"),
    ("netns-empty", ["-N", ""], "-N"),
    ("icmpid-without-icmp", ["--icmpid", "5"], "--icmpid"),
    ("icmpid-with-udp", ["--icmpid", "5", "--proto", "udp"], "--icmpid"),
    ("icmpid-too-big", ["--icmpid", "70000", "--proto", "icmp"], "--icmpid"),
    ("count-zero", ["-c", "0"], "-c"),
    ("count-negative", ["-c", "-1"], "-c"),
    ("duration-zero", ["--duration", "0"], "--duration"),
    ("duration-negative", ["--duration", "-1"], "--duration"),
    ("duration-word", ["--duration", "10s"], "--duration"),
    ("duration-exponent", ["--duration", "1e3"], "--duration"),
    ("duration-nan", ["--duration", "nan"], "--duration"),
    ("duration-too-long", ["--duration", "99999999999"], "--duration"),
    ("duration-with-r", ["-r", "/dev/null", "--duration", "5"], "--duration"),
    ("width-too-narrow", ["--width", "20", "--compact"], "--width"),
    ("compact-json", ["--compact", "--json"], "--compact"),
    ("pid-zero", ["-p", "0"], "-p"),
    ("pid-missing", lambda: ["-p", str(missing_pid())], "-p"),
    ("pid-not-number", ["-p", "self"], "-p"),
    ("clock-and-timestamp", ["-T", "-t"], "-T"),
    ("backend-foo", ["--backend", "foo"], "--backend"),
    ("layout-foo", ["--layout", "foo"], "--layout"),
    ("unknown-flag", ["--no-such-flag"], "--no-such-flag"),
    ("stray-argument", ["extra"], "extra"),
    ("missing-value", ["-H"], "-H"),
]


@pytest.mark.parametrize("argv, mention", [(a, m) for _i, a, m in BAD_ARGS],
                         ids=[i for i, _a, _m in BAD_ARGS])
def test_bad_flag_is_one_line_and_exit_2(argv, mention):
    if callable(argv):
        argv = argv()
    assert_usage_error(run_cli(*argv, timeout=30), mention)


@pytest.mark.parametrize("argv", [["-H", "1.2.3.4\nFILTER"], ["--proto", "tcp\nudp"],
                                  ["-N", "x\ny"], ["-P", "5\n3"]],
                         ids=["addr", "proto", "netns", "port"])
def test_newline_in_value_stays_one_line(argv):
    assert_usage_error(run_cli(*argv, timeout=30))


# Paths that exist but are not network namespaces. --ebpf makes a wrongly
# accepted value end at once (C text on stdout) instead of starting a trace.
@pytest.mark.parametrize("value", ["..", ".", "/etc/passwd", "/proc/self/ns/mnt"],
                         ids=["dotdot", "dot", "regular-file", "mount-namespace"])
def test_netns_that_is_not_a_namespace_is_rejected(value):
    assert_usage_error(run_cli("--ebpf", "-N", value, timeout=30), "-N")


# --- positive cases, in process -------------------------------------------

def parse(*argv):
    return config.parse_args(list(argv))


def test_ipv4_address():
    cfg = parse("-H", "10.0.0.1")
    assert cfg.addr == ipaddress.IPv4Address("10.0.0.1")
    assert parse("-H", " 192.168.1.254 ").addr == ipaddress.IPv4Address("192.168.1.254")


@pytest.mark.parametrize("text", ["fd00::2", "FD00::2", "2001:db8::1234:5678", "::1",
                                  "fe80:0:0:0:0:0:0:1"])
def test_ipv6_address(text):
    cfg = parse("-H", text)
    assert cfg.addr.version == 6
    assert cfg.addr == ipaddress.IPv6Address(text)


@pytest.mark.parametrize("text, seconds", [("10", 10.0), ("0.5", 0.5), (" 2.25 ", 2.25),
                                           (".1", 0.1), ("3.", 3.0)])
def test_duration_in_seconds(text, seconds):
    assert parse("--duration", text).duration == seconds
    assert parse().duration is None


def test_compact_and_width():
    assert parse("--compact").compact and not parse().compact
    assert parse("--compact", "--width", "80").width == 80


def test_validate_directly_gives_the_same_config():
    ns = config.build_parser().parse_args(["-H", "10.0.0.1", "--proto", "UDP", "-P", "53"])
    cfg = config.validate(ns)
    assert (cfg.addr, cfg.proto, cfg.port) == (ipaddress.ip_address("10.0.0.1"), "udp", 53)


def test_validate_raises_usage_error():
    ns = config.build_parser().parse_args(["-P", "0"])
    with pytest.raises(config.UsageError):
        config.validate(ns)


def test_defaults():
    cfg = parse()
    assert cfg.modes == {"route"}
    assert cfg.addr is None and cfg.port is None and cfg.icmpid is None
    assert cfg.pid is None and cfg.netns is None and cfg.count is None
    assert cfg.proto == "any"
    assert cfg.stacks is None and not cfg.keep
    assert not cfg.timestamp and not cfg.clock
    assert cfg.backend == "auto" and cfg.layout == "auto"


@pytest.mark.parametrize("argv, modes, stacks", [
    (["--route"], {"route"}, None),
    (["--iptable"], {"iptable"}, None),
    (["--drop"], {"drop"}, None),
    (["--dropstack"], {"drop"}, "drops"),
    (["--iptable", "--dropstack"], {"iptable", "drop"}, "drops"),
    (["--callstack"], {"route"}, "all"),
    (["--callstack", "--dropstack"], {"drop"}, "all"),
    (["--route", "--iptable", "--drop"], {"route", "iptable", "drop"}, None),
    (["--keep"], {"route"}, None),
], ids=["route", "iptable", "drop", "dropstack", "iptable+dropstack", "callstack",
        "callstack+dropstack", "all-modes", "keep-only"])
def test_modes_and_stacks(argv, modes, stacks):
    cfg = parse(*argv)
    assert cfg.modes == modes
    assert cfg.stacks == stacks


def test_flags_and_numbers():
    cfg = parse("--proto", "icmp", "--icmpid", "0", "-c", "5", "-t", "--keep", "-v",
                "--backend", "Tracepoint", "--layout", "headers")
    assert cfg.proto == "icmp" and cfg.icmpid == 0 and cfg.count == 5
    assert cfg.timestamp and not cfg.clock
    assert cfg.keep and cfg.verbose
    assert cfg.backend == "tracepoint" and cfg.layout == "headers"
    cfg = parse("-T", "-P", "65535", "--proto", "tcp", "-c", "1")
    assert cfg.clock and not cfg.timestamp and cfg.port == 65535 and cfg.proto == "tcp"


def test_pid_of_a_live_process():
    assert parse("-p", str(os.getpid())).pid == os.getpid()
    assert parse("-p", "1").pid == 1




def test_netns_by_inode_of_a_process_namespace():
    inode = os.stat("/proc/self/ns/net").st_ino
    cfg = parse("-N", str(inode))
    assert cfg.netns == inode
    assert cfg.netns_label == str(inode)


def test_netns_by_inode(temp_netns):
    _name, inode = temp_netns
    cfg = parse("-N", str(inode))
    assert cfg.netns == inode
    assert cfg.netns_label == str(inode)


def test_netns_by_inode_cli(temp_netns):
    _name, inode = temp_netns
    result = run_cli("--ebpf", "-N", str(inode))
    assert result.returncode == 0, result.stderr
    assert "#define FILTER_NETNS(n) ((n) == %dU)" % inode in result.stdout.splitlines()


def test_netns_by_name(temp_netns):
    name, inode = temp_netns
    cfg = parse("-N", name)
    assert cfg.netns == inode
    assert cfg.netns_label == name
    assert inode != os.stat("/proc/self/ns/net").st_ino


def test_netns_by_path(temp_netns):
    name, inode = temp_netns
    assert parse("-N", "/run/netns/" + name).netns == inode
    cfg = parse("-N", "/proc/self/ns/net")
    assert cfg.netns == os.stat("/proc/self/ns/net").st_ino
    assert cfg.netns_label == "/proc/self/ns/net"


@pytest.mark.parametrize("unknown", [MISSING, lambda: str(missing_netns_inode())],
                         ids=["name", "inode"])
def test_unknown_netns_lists_the_names(temp_netns, unknown):
    """The names 'ip netns list' shows, up to ten (other tests may hold
    namespaces of their own meanwhile)."""
    name, _inode = temp_netns
    result = run_cli("--ebpf", "-N", unknown() if callable(unknown) else unknown, timeout=30)
    assert_usage_error(result, "-N")
    listed = re.search(r"; 'ip netns' has: (.*?)(?: and (\d+) more)?$", result.stderr.strip())
    assert listed, result.stderr
    names = listed.group(1).split(", ")
    assert 1 <= len(names) <= config.NETNS_NAMES_SHOWN and names == sorted(names)
    if listed.group(2) is None:
        assert name in names


def test_unknown_netns_lists_ten_names_and_counts_the_rest():
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    tag = uuid.uuid4().hex[:6]
    made = ["skbt-unit-%s-%02d" % (tag, n) for n in range(config.NETNS_NAMES_SHOWN + 1)]
    try:
        for name in made:
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        message = config.named_netns()
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)
    listed = re.fullmatch(r"; 'ip netns' has: (.*) and (\d+) more", message)
    assert listed, message
    assert len(listed.group(1).split(", ")) == config.NETNS_NAMES_SHOWN and int(listed.group(2)) >= 1


def test_unknown_netns_without_any_names_says_none(monkeypatch):
    monkeypatch.setattr(config.os, "listdir", lambda path: [])
    assert config.named_netns() == ""


def test_known_netns_inodes_has_the_process_namespaces():
    known = config.known_netns_inodes()
    assert os.stat("/proc/self/ns/net").st_ino in known


def test_known_netns_inodes_has_run_netns(temp_netns):
    _name, inode = temp_netns
    assert inode in config.known_netns_inodes()


# --- --ebpf: what the C text gets ---------------------------------------------

def ebpf_text(*argv):
    result = run_cli("--ebpf", *argv)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "struct event_t" in result.stdout
    return result.stdout


def defines(text):
    """{name: value} of the generated #define lines (before the C body)."""
    return dict(re.findall(r"^#define (FILTER_\w+)(?:\(n\))? (.*)$", text, re.M))


def assert_filters_are_numbers(text):
    for name, value in defines(text).items():
        if name == "FILTER_NETNS":      # ((n) == 1U || (n) == 2U): numbers only
            assert re.fullmatch(r"\(\(n\) == [0-9]+U( \|\| \(n\) == [0-9]+U)*\)", value), value
            continue
        assert re.fullmatch(r"[0-9]+(U|ULL)?", value), (name, value)


def test_ebpf_ipv4_address_and_port():
    text = ebpf_text("-H", "10.0.0.1", "-P", "53")
    lines = text.splitlines()
    # 10.0.0.1 is the bytes 0a 00 00 01, read as a little-endian u32
    assert "#define FILTER_ADDR4 16777226U" in lines
    # port 53 = bytes 00 35, read as a little-endian u16 = 0x3500
    assert "#define FILTER_PORT 13568" in lines
    assert "10.0.0.1" not in text
    assert "FILTER_PORT 53\n" not in text
    assert "FILTER_ADDR6_0" not in defines(text)
    assert_filters_are_numbers(text)


def test_ebpf_icmpid_is_network_order():
    text = ebpf_text("--icmpid", "1", "--proto", "icmp")
    lines = text.splitlines()
    assert "#define FILTER_ICMPID 256" in lines   # the original compared 1: wrong order
    assert "#define FILTER_ICMP 1" in lines
    assert "FILTER_L4PROTO" not in defines(text)
    assert_filters_are_numbers(text)


def test_ebpf_ipv6_address_halves():
    text = ebpf_text("-H", "2001:db8::1234:5678", "--proto", "udp")
    found = defines(text)
    # bytes 20 01 0d b8 00 00 00 00 | 00 00 00 00 12 34 56 78, each half a LE u64
    assert found["FILTER_ADDR6_0"] == "3087860000ULL"           # 0x00000000b80d0120
    assert found["FILTER_ADDR6_1"] == "8671175384462524416ULL"  # 0x7856341200000000
    assert found["FILTER_L4PROTO"] == "17"
    assert "FILTER_ADDR4" not in found
    assert "2001" not in text and "db8" not in text
    assert_filters_are_numbers(text)


def test_ebpf_no_filters_without_flags():
    assert defines(ebpf_text()) == {}


def test_ebpf_pid_and_netns_by_name(temp_netns):
    name, inode = temp_netns
    pid = os.getpid()
    text = ebpf_text("-N", name, "-p", str(pid), "--proto", "tcp")
    found = defines(text)
    assert found["FILTER_NETNS"] == "((n) == %dU)" % inode
    assert found["FILTER_PID"] == str(pid)
    assert found["FILTER_L4PROTO"] == "6"
    assert name not in text
    assert "skbt-unit" not in text
    assert_filters_are_numbers(text)


def test_ebpf_netns_path_is_not_in_text():
    text = ebpf_text("-N", "/proc/self/ns/net")
    assert "/proc/self" not in text
    # the CLI's own /proc/self is in the same namespace as ours
    assert defines(text)["FILTER_NETNS"] == "((n) == %dU)" % os.stat("/proc/self/ns/net").st_ino


def test_netns_repeatable_and_bounded(temp_netns):
    name, inode = temp_netns
    own = os.stat("/proc/self/ns/net").st_ino
    found = defines(ebpf_text("-N", name, "-N", "/proc/self/ns/net"))
    assert found["FILTER_NETNS"] == "(%s)" % " || ".join(
        "(n) == %dU" % i for i in sorted({inode, own}))
    result = run_cli("--ebpf", *(["-N", name] * 9))
    assert result.returncode == 2
    assert result.stderr.strip() == "skbtracer: error: -N: at most 8 namespaces, not 9"


def test_ebpf_mode_defines():
    text = ebpf_text("--iptable", "--dropstack", "--keep")
    assert re.search(r"^#define MODE_IPTABLE 1$", text, re.M)
    assert re.search(r"^#define MODE_DROP 1$", text, re.M)
    assert re.search(r"^#define KEEP 1$", text, re.M)
    assert re.search(r"^#define STACK_DROPS 1$", text, re.M)
    assert not re.search(r"^#define STACK_ALL", text, re.M)
