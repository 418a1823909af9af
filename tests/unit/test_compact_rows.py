"""Compact rows (events/compact.py): on a terminal or with --compact, a row
fits the width, PKT_INFO never overflows its column and nothing of
TRACE_INFO is lost; to a pipe or a file the rows keep the original format
(the goldens, tests/unit/test_golden.py)."""

import fcntl
import io
import os
import select
import struct
import subprocess
import termios

import pytest

from skbt_unit_helpers import SKBTRACER, SYSTEM_PYTHON, run_cli
from skbtracer_lib import config
from skbtracer_lib.events import compact, decode, textrow
from skbtracer_lib.events.textrow import Clock, RowFormatter
from skbtracer_lib.outputs.sinks import TextRows, make_sinks, wants_columns
from skbtracer_lib.program import probes

WIDTHS = (40, 60, 80, 99, 100, 119, 120, 121, 160, 250)
PROBES = ["ip_rcv", "kfree_skb", "nf_hook_slow", "br_nf_pre_routing_finish_bridge_slow",
          "__netif_receive_skb_one_core"]
ADDRESSES = (("10.0.0.1", "10.0.0.2"), ("255.255.255.255", "192.168.100.201"),
             ("fd00::2", "fd00::3"),
             ("2001:db8:1234:5678:9abc:def0:1234:5678", "fe80::aaaa:bbbb:cccc:dddd"))
IFNAMES = ("", "eth0", "vethclient", "cali1234567890a", "x" * 15)
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "corpus")


class Labels:
    """--names labels, long ones among them."""

    def label(self, netns):
        return {1: "host", 2: "skbt135-1-server"}.get(netns, "pod:0f3c2a1e-77b1-4c4e-9d0e-%d"
                                                      % netns)


def corpus():
    """Raw events: every TCP flag value, UDP, ICMP, another protocol; IPv4
    and long IPv6 addresses; route, verdict and drop rows; long interface
    names; a namespace with a long label."""
    for i, (kind, l4proto, flags) in enumerate(
            [(1, 6, f) for f in range(256)] + [(1, 17, 0), (1, 1, 0), (1, 58, 0), (1, 132, 0),
                                              (2, 17, 0), (3, 6, 0x18), (3, 17, 0)]):
        saddr, daddr = ADDRESSES[i % len(ADDRESSES)]
        family = 6 if ":" in saddr else 4
        if l4proto in (1, 58):
            l4proto = 58 if family == 6 else 1
        yield decode.encode(
            kind=kind, family=family, l4proto=l4proto, tcp_flags=flags, saddr=saddr,
            daddr=daddr, sport=65535 - i, dport=443, ifname=IFNAMES[i % len(IFNAMES)],
            netns=(4026531840 + i) if i % 3 else i % 7, skb=0xffff888012345600 + i * 0x100,
            probe=i % len(PROBES), pkt_type=i % 8, icmp_type=8, ts_ns=10**9 * i * 37,
            pf=7, table="filter", hook=0, verdict=1, drop_reason=2,
            location=0xffffffff81000000 + i)


def formatter(names=None, relative=False):
    return RowFormatter(PROBES, probes.drop_reasons(),
                        lambda a: "nf_hook_slow_with_a_long_name+0x%x" % (a & 0xfff),
                        Clock(relative=relative), names=names)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("names, relative", [(False, False), (True, True)],
                         ids=["inodes", "names-relative"])
def test_rows_fit_the_width_and_lose_nothing_of_trace_info(width, names, relative):
    layout = compact.CompactRows(width, names=names, relative=relative)
    fmt = formatter(Labels() if names else None, relative)
    header = layout.header().split("\n")
    assert all(len(line) <= width for line in header), header
    pkt_line = 1 if layout.pkt_below else 0         # PKT_INFO's line of a row
    pkt_at = header[pkt_line].index("PKT_INFO")
    for raw in corpus():
        e = decode.Event(raw)
        columns = fmt.columns(e)
        assert textrow.full_row(columns) == fmt.row(e)      # the same row, from its columns
        lines = layout.row(columns).split("\n")
        assert all(len(line) <= width for line in lines), lines
        first = lines[pkt_line]
        # PKT_INFO starts under its header and never runs into the next
        # column (a -t time past 1000 s takes a column from it)
        shift = 0 if layout.pkt_below else max(0, len(columns.time) - layout.time_width)
        pkt = compact.fit_pkt_info(columns.pkt_info, layout.pkt_width - shift)
        assert first[pkt_at + shift:].startswith(pkt), (first, pkt)
        assert first[pkt_at + layout.pkt_width:][:1] in ("", " "), first
        # TRACE_INFO: the skb's low 8 digits, then every word of it
        shown = " ".join(line.strip() for line in lines[0 if layout.one_line else 1 + pkt_line:])
        trace = "%08x" % (e.skb & 0xffffffff) + columns.trace
        if layout.one_line and shown.startswith(first.strip()):
            shown = shown[len(first[:pkt_at + layout.pkt_width].strip()):].strip()
        if all(len(word) <= width - compact.TRACE_INDENT for word in trace.split(" ")):
            assert trace in shown, (lines, trace)
        if layout.one_line and len(lines) == 1:
            assert first.index(trace) == header[0].index("TRACE_INFO"), (first, header)


@pytest.mark.parametrize("text, width", [
    ("T_ACK,PSH:192.168.100.200:54321->192.168.100.201:443", 46),
    ("U:2001:db8:1234:5678:9abc:def0:1234:5678:53->fe80::1:9", 40),
    ("T_CWR,ECE,URG,ACK,PSH,RST,SYN,FIN:10.0.0.1:1->10.0.0.2:2", 30),
    ("I_request:fd00::2->fd00::3", 12), ("17:1.2.3.4->5.6.7.8", 5)])
def test_pkt_info_is_fitted_by_eliding_the_addresses(text, width):
    fitted = compact.fit_pkt_info(text, width)
    assert len(fitted) <= width and compact.ELIDED in fitted
    if len(text.split(":", 1)[0]) + 10 < width:
        prefix = text.split(":", 1)[0] + ":"
        assert fitted.startswith(prefix) and "->" in fitted    # the protocol, both ends
    assert compact.fit_pkt_info("U:1.2.3.4:5->6.7.8.9:10", 40) == "U:1.2.3.4:5->6.7.8.9:10"


def test_a_pipe_gets_the_original_rows_and_compact_is_asked_for():
    cfg = config.parse_args([])
    rows = make_sinks(cfg, io.StringIO(), io.StringIO(), {}, None)[-1]
    assert isinstance(rows, TextRows) and rows.compact is None and not wants_columns([rows])
    cfg = config.parse_args(["--compact", "--width", "90"])
    rows = make_sinks(cfg, io.StringIO(), io.StringIO(), {}, None)[-1]
    assert rows.compact.width == 90 and wants_columns([rows])
    assert config.parse_args(["--compact"]) and \
        make_sinks(config.parse_args(["--compact"]), io.StringIO(), io.StringIO(), {},
                   None)[-1].compact.width == compact.WIDTH


@pytest.mark.parametrize("argv, width", [(["--compact"], 120), (["--compact", "--width", "80"], 80),
                                         (["--compact", "--names", "-t", "--ct"], 120)])
def test_saved_rows_in_the_compact_layout(argv, width):
    result = run_cli("-r", os.path.join(GOLDEN, "scenarios-kprobe.jsonl"), *argv)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) > 20 and "DEST_MAC" not in lines[0]
    assert max(len(line) for line in lines) <= width


def test_a_terminal_gets_compact_rows():
    """-r with stdout on a pseudo-terminal of 80 columns: rows and story fit
    (the exit line too, its file named short)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
    proc = subprocess.Popen([SYSTEM_PYTHON, SKBTRACER, "-r", "drops-kprobe.jsonl"],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=GOLDEN)
    os.close(slave)
    shown = b""
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        try:
            chunk = os.read(master, 65536) if ready else b""
        except OSError:         # the program closed the terminal
            chunk = b""
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait(30) == 0
    lines = shown.decode().replace("\r\n", "\n").splitlines()
    assert lines[0].split() == ["time", "NETWORK_NS", "INTERFACE", "PKT_INFO"], lines
    assert not [line for line in lines if len(line) > 80], lines
    assert any(line.strip().startswith("0a63da00.0:kfree_skb reason=NETFILTER_DROP")
               for line in lines), lines


def test_a_terminal_of_unknown_size_gets_the_default_width():
    master, slave = os.openpty()            # no TIOCSWINSZ: 0 columns
    try:
        with open(slave, "w", closefd=False) as terminal:
            assert compact.terminal_width(terminal, compact.WIDTH) == compact.WIDTH
            assert compact.rows_layout(config.parse_args([]), terminal).width == compact.WIDTH
    finally:
        os.close(master)
        os.close(slave)
