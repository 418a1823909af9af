"""The translation of tcpdump filter expressions, judged by libpcap itself.

Every expression is compiled by libpcap for both views, translated into C
by skbtracer_lib/pcapfilter.py, and built natively together with the
packet-loading runtime cut from skbtracer.c (between its @pcap-runtime@
markers). The verdict of that C on every packet of a corpus must equal
libpcap's own interpreter (bpf_filter) on the same bytes."""

import ctypes
import os
import re
import subprocess
import sys

import pytest
from skbt_unit_helpers import REPO, assert_usage_error, run_cli

sys.path.insert(0, REPO)
from skbtracer_lib.program import pcapfilter  # noqa: E402

scapy = pytest.importorskip("scapy.all")
from scapy.all import (  # noqa: E402
    ARP,
    ICMP,
    IP,
    TCP,
    UDP,
    Dot1Q,
    Ether,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPOption_RR,
    IPv6,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    Raw,
    fragment,
)

EXPRESSIONS = [
    "ip", "ip6", "tcp", "udp", "icmp", "icmp6", "arp", "vlan", "vlan and udp", "vlan 100",
    "host 10.0.0.1", "src host 10.0.0.1", "dst host 10.0.0.2", "net 10.0.0.0/24",
    "src net 192.168.0.0/16", "not net 10.0.0.0/8", "host fd00::1", "net fd00::/64",
    "port 53", "udp port 53", "tcp dst port 80", "src port 1234", "portrange 5000-5010",
    "tcp portrange 1-1024", "not port 53", "udp and not port 53",
    "tcp[tcpflags] & tcp-syn != 0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
    "tcp[tcpflags] & tcp-rst != 0", "icmp[icmptype] == icmp-echo",
    "icmp[icmptype] == icmp-echoreply", "icmp6 and ip6[40] == 128",
    "len < 100", "len >= 200", "greater 150", "less 64",
    "ip[8] == 64", "ip[2:2] > 100", "ip[6:2] & 0x1fff != 0", "ip[0] & 0xf > 5",
    "(udp and port 53) or (tcp and dst port 80)", "host 10.0.0.1 and (tcp or icmp)",
    "not (host 10.0.0.1 or host 10.0.0.2)", "ip and udp[8:4] == 0x736b6274",
    "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420", "ip6 and tcp", "ip6 and udp port 53",
    "ether host 02:00:00:00:00:01", "ether dst 02:00:00:00:00:02", "ether broadcast",
    "ether[12:2] == 0x0800", "ip multicast", "ip[19] == 255", "ip proto 47",
    "udp[4:2] * 2 > 60", "ip[2:2] / 4 == 21", "ip[2:2] % 7 == 3",
    "ip[8] ^ 0xff == 0xbf", "ip[1] << 2 == 0", "ip[2:2] >> 3 > 5", "ip[2:2] - 20 < 40",
    "ip[8] + ip[9] > 70", "ip[9] | 0x10 == 0x11", "ip[2:2] & 0xff00 == 0",
]
assert len(EXPRESSIONS) >= 40

MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def corpus():
    """(name, Ethernet frame bytes) for every kind of packet."""
    payload = Raw(b"skbtracer" * 3)
    ip4 = IP(src="10.0.0.1", dst="10.0.0.2")
    ip6 = IPv6(src="fd00::1", dst="fd00::2")
    eth = Ether(src=MAC1, dst=MAC2)
    frames = {
        "udp4": eth / ip4 / UDP(sport=1234, dport=53) / payload,
        "udp4-5005": eth / IP(src="192.168.1.5", dst="10.1.2.3") / UDP(sport=40000, dport=5005) / b"x",
        "udp4-big": eth / ip4 / UDP(sport=5000, dport=9999) / (b"z" * 300),
        "tcp4-syn": eth / ip4 / TCP(sport=40000, dport=80, flags="S"),
        "tcp4-synack": eth / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=80, dport=40000, flags="SA"),
        "tcp4-rst": eth / ip4 / TCP(sport=40000, dport=80, flags="R"),
        "tcp4-get": eth / ip4 / TCP(sport=40000, dport=80, flags="PA") / b"GET / HTTP/1.0\r\n\r\n",
        "tcp4-opts": eth / IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_RR()]) /
        TCP(sport=22, dport=1023, flags="A", options=[("MSS", 1460), ("NOP", None), ("WScale", 7)]),
        "icmp-echo": eth / ip4 / ICMP(type=8, id=22, seq=1) / payload,
        "icmp-reply": eth / IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=0, id=22) / payload,
        "icmp-unreach": eth / ip4 / ICMP(type=3, code=3) / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(),
        "gre": eth / IP(src="172.16.0.1", dst="172.16.0.2", proto=47) / b"\x00\x00\x08\x00",
        "mcast": eth / IP(src="10.0.0.1", dst="224.0.0.251") / UDP(sport=5353, dport=5353),
        "bcast": Ether(src=MAC1, dst="ff:ff:ff:ff:ff:ff") / IP(src="10.0.0.1", dst="255.255.255.255") /
        UDP(sport=68, dport=67),
        "ttl63": eth / IP(src="10.0.0.1", dst="10.0.0.2", ttl=63) / UDP(sport=1, dport=2),
        "udp6": eth / ip6 / UDP(sport=1234, dport=53) / payload,
        "tcp6-syn": eth / ip6 / TCP(sport=40000, dport=80, flags="S"),
        "icmp6-echo": eth / ip6 / ICMPv6EchoRequest(id=7) / payload,
        "icmp6-reply": eth / IPv6(src="fd00::2", dst="fd00::1") / ICMPv6EchoReply(id=7),
        "ip6-hbh-tcp": eth / ip6 / IPv6ExtHdrHopByHop() / TCP(sport=1, dport=80, flags="S"),
        "ip6-frag": eth / ip6 / IPv6ExtHdrFragment(offset=0, m=1, id=5) / UDP(sport=53, dport=53) / payload,
        "ip6-other": eth / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=9, dport=9),
        "vlan-udp": eth / Dot1Q(vlan=100) / ip4 / UDP(sport=1234, dport=53) / payload,
        "vlan-tcp": eth / Dot1Q(vlan=200) / ip4 / TCP(sport=1, dport=80, flags="S"),
        "qinq": eth / Dot1Q(vlan=300, type=0x8100) / Dot1Q(vlan=100) / ip4 / UDP(sport=7, dport=53),
        "arp": Ether(src=MAC1, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.0.1", pdst="10.0.0.2"),
    }
    frags = fragment(ip4 / UDP(sport=1234, dport=53) / (b"f" * 100), fragsize=48)
    for i, frag in enumerate(frags):
        frames["frag4-%d" % i] = eth / frag
    out = [(name, bytes(frame)) for name, frame in frames.items()]
    # odd lengths: truncated in the middle of every header
    full = bytes(frames["tcp4-get"])
    out += [("cut-%d" % n, full[:n]) for n in (0, 1, 13, 14, 20, 33, 34, 40, 47, 54, 60)]
    out.append(("empty-eth", bytes(Ether(src=MAC1, dst=MAC2, type=0x0800))))
    return out


# --- the native build ---------------------------------------------------------

PRELUDE = r"""
#include <string.h>
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif
/* kernel memory: the packet, plus whatever lies after it */
static const u8 *mem_lo, *mem_hi;
static int bpf_probe_read_kernel(void *dst, u32 size, const void *src)
{
    const u8 *p = src;
    if (p < mem_lo || p + size > mem_hi) {
        memset(dst, 0, size);
        return -14;
    }
    memcpy(dst, p, size);
    return 0;
}
"""

RUNNER = r"""
typedef int (*match_fn)(struct pcap_view *);
static match_fn functions[] = { %(table)s };

/* The verdict of expression i in view (0: Ethernet, 1: IP) on pkt, whose
 * memory readable by the kernel program ends memlen bytes after pkt. */
int run(int i, int view, const u8 *pkt, u32 caplen, u32 wirelen, u32 memlen, u32 tag)
{
    static struct pcap_view v;
    memset(&v, 0, sizeof(v));
    mem_lo = pkt;
    mem_hi = pkt + memlen;
    v.start = (u64)pkt;
    v.caplen = caplen;
    v.wirelen = wirelen;
    v.tag = tag;
    if (PCAP_TAG_INSERTED(&v)) {
        v.caplen += 4;
        v.wirelen += 4;
    }
    pcap_fill(&v);
    return functions[2 * i + view](&v);
}
"""


def runtime_c():
    with open(os.path.join(REPO, "skbtracer.c")) as f:
        text = f.read()
    match = re.search(r"/\* @pcap-runtime-begin@.*?\*/(.*)/\* @pcap-runtime-end@ \*/", text, re.S)
    assert match, "skbtracer.c has no @pcap-runtime@ section"
    return match.group(1)


def build(directory, compiled, defines):
    """The translated expressions and skbtracer.c's runtime, built with cc."""
    parts = ["#define %s %s\n" % item for item in defines.items()]
    parts += [PRELUDE, runtime_c()]
    table = []
    for i, expression in enumerate(compiled):
        for view in expression.views:
            name = "e%d_%s" % (i, view.name)
            table.append(name)
            if view.insns is None:
                parts.append("static int %s(struct pcap_view *v) { return 0; }\n" % name)
            else:
                parts.append(pcapfilter.translate(view.insns, name))
    parts.append(RUNNER % {"table": ", ".join(table)})
    source, library = directory / "filters.c", directory / "filters.so"
    source.write_text("\n".join(parts))
    subprocess.run(["cc", "-O1", "-Wall", "-Werror", "-Wno-unused-label", "-Wno-unused-function",
                    "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    lib = ctypes.CDLL(str(library))
    lib.run.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint,
                        ctypes.c_uint, ctypes.c_uint, ctypes.c_uint]
    return compiled, lib


@pytest.fixture(scope="module", params=[pcapfilter.MIN_CHUNK, pcapfilter.MAX_CHUNK],
                ids=lambda chunk: "chunk%d" % chunk)
def native(request, tmp_path_factory):
    """Compiled as for a capture file (an offloaded tag is put back into the
    frame); with the smallest chunk most loads are direct reads."""
    compiled = [pcapfilter.Expression(e, live=False) for e in EXPRESSIONS]
    return build(tmp_path_factory.mktemp("pcap"), compiled,
                 {"PCAP_CHUNK": request.param, "PCAP_INSERT_TAG": 1})


def ours(lib, i, view, data, wirelen, slack, tag=0):
    memory = data + bytes(range(256))[:slack]     # what lies past the packet
    return lib.run(i, view, memory, len(data), wirelen, len(memory), tag) != 0


def test_translation_matches_libpcap_on_every_packet(native):
    compiled, lib = native
    packets = corpus()
    checked = 0
    mismatches = []
    for i, expression in enumerate(compiled):
        for view_index, view in enumerate(expression.views):
            for name, frame in packets:
                data = frame if view.name == "l2" else frame[14:]
                for wirelen in (len(data), len(data) + 500):   # truncated captures too
                    want = view.insns is not None and pcapfilter.libpcap_verdict(view.insns, data, wirelen)
                    for slack in (0, 256):      # buf unreadable (direct loads) / readable
                        got = ours(lib, i, view_index, data, wirelen, slack)
                        checked += 1
                        if got != want:
                            mismatches.append((expression.text, view.name, name, wirelen, slack, want))
    assert not mismatches, mismatches[:20]
    assert checked >= 40 * len(packets) * 2


def test_offloaded_vlan_tag_is_seen_where_tcpdump_shows_it(native):
    """An skb whose tag lives in its metadata (vlan_tci) matches as if the
    tag were in the frame, as tcpdump shows it."""
    compiled, lib = native
    tagged = [(n, f) for n, f in corpus() if n in ("vlan-udp", "vlan-tcp")]
    for i, expression in enumerate(compiled):
        view = expression.views[0]
        for name, frame in tagged:
            tci = int.from_bytes(frame[14:16], "big")
            untagged = frame[:12] + frame[16:]
            want = view.insns is not None and pcapfilter.libpcap_verdict(view.insns, frame)
            for slack in (0, 256):
                got = ours(lib, i, 0, untagged, len(untagged), 256, tag=0x8100 << 16 | tci)
                assert got == want, (expression.text, name, slack)


VLAN_EXPRESSIONS = ["vlan", "vlan 100", "vlan 200", "vlan and udp", "vlan 100 and udp port 53",
                    "vlan and tcp[tcpflags] & tcp-syn != 0", "vlan and host 10.0.0.1"]


@pytest.mark.skipif(os.geteuid() != 0, reason="a live libpcap handle needs CAP_NET_RAW")
def test_linux_vlan_loads_match_libpcap(tmp_path):
    """Compiled as tcpdump compiles on Linux, VLAN tests ask for the
    offloaded tag ([vlanp], [vlan_tci]). An skb whose tag is offloaded must
    match as libpcap's interpreter says of the frame with the tag in it;
    and an skb with the tag in the frame (none offloaded) as libpcap says
    of the same bytes."""
    compiled = [pcapfilter.Expression(e) for e in VLAN_EXPRESSIONS + EXPRESSIONS]
    assert all(e.live for e in compiled)
    assert any(i.k >= pcapfilter.SKF_AD_OFF for i in compiled[0].views[0].insns)
    reference = [pcapfilter.Expression(e.text, live=False) for e in compiled]
    _compiled, lib = build(tmp_path, compiled, {"PCAP_CHUNK": pcapfilter.MAX_CHUNK})
    packets = corpus()
    for i, expression in enumerate(compiled):
        for name, frame in packets:
            insns = reference[i].views[0].insns
            want = insns is not None and pcapfilter.libpcap_verdict(insns, frame)
            assert ours(lib, i, 0, frame, len(frame), 256) == want, (expression.text, name)
            if i < len(VLAN_EXPRESSIONS) and name.startswith("vlan-"):
                tci = int.from_bytes(frame[14:16], "big")
                untagged = frame[:12] + frame[16:]
                got = ours(lib, i, 0, untagged, len(untagged), 256, tag=0x8100 << 16 | tci)
                assert got == want, ("offloaded", expression.text, name)


def test_chunk_covers_the_fixed_offsets():
    assert pcapfilter.Expression("ip").defines()["PCAP_CHUNK"] == 32             # ldh [12]
    assert pcapfilter.Expression("host 10.0.0.1").defines()["PCAP_CHUNK"] == 64  # ld [30]
    assert pcapfilter.Expression("udp port 53").defines()["PCAP_CHUNK"] == 128   # [x + 14]
    assert pcapfilter.Expression("len < 100").defines()["PCAP_NEEDS_LEN"] == 1


def test_expression_views():
    both = pcapfilter.Expression("udp port 53")
    assert [v.insns is not None for v in both.views] == [True, True]
    ether_only = pcapfilter.Expression("ether host 02:00:00:00:00:01")
    assert ether_only.views[1].insns is None
    assert "Ethernet" in ether_only.views[1].error or "ether" in ether_only.views[1].error
    assert len(ether_only.notes()) == 2 and "IP header" in ether_only.notes()[1]
    assert pcapfilter.Expression("arp").views[1].insns is None


def test_translation_is_loop_free_and_names_its_instructions():
    expression = pcapfilter.Expression("tcp[tcpflags] & tcp-syn != 0")
    text = expression.c_functions()
    assert "pcap_match_l2" in text and "pcap_match_l3" in text
    assert "ldb      [x + 27]" not in text      # disassembly is one-spaced
    assert re.search(r"/\* \(\d{3}\) ldxb 4\*\(\[14\]&0xf\) \*/", text)
    for target, source in ((int(t), s) for s, t in _jumps(text)):
        assert target > source


def _jumps(text):
    for line in text.splitlines():
        pc = re.search(r"/\* \((\d{3})\)", line)
        for target in re.findall(r"goto L(\d+)", line):
            yield int(pc.group(1)), target


def test_untranslatable_constructs_are_refused_by_name():
    ancillary = [pcapfilter.Insn(0x28, 0, 0, pcapfilter.SKF_AD_OFF + 8), pcapfilter.Insn(0x06, 0, 0, 1)]
    with pytest.raises(pcapfilter.FilterError, match="interface index is not known"):
        pcapfilter.check_translatable(ancillary)
    out_of_program = [pcapfilter.Insn(0x15, 5, 0, 1), pcapfilter.Insn(0x06, 0, 0, 1)]
    with pytest.raises(pcapfilter.FilterError, match="jump out of the program"):
        pcapfilter.check_translatable(out_of_program)
    no_return = [pcapfilter.Insn(0x28, 0, 0, 12)]
    with pytest.raises(pcapfilter.FilterError, match="return"):
        pcapfilter.check_translatable(no_return)


@pytest.mark.parametrize("words,message", [
    (["udp and"], "syntax error"),
    (["host 300.1.1.1"], "invalid IPv4 address '300.1.1.1'"),
    (["portt", "53"], "syntax error"),
    (["ether", "host", "zz"], "filter expression"),
    (["ip6", "protochain", "6"], "backward jump"),
    (["inbound"], "inbound/outbound"),
])
def test_bad_expressions_are_libpcaps_message_in_one_line(words, message):
    result = run_cli("--ebpf", *words)
    assert_usage_error(result, message)


def test_expression_reaches_the_program_only_as_numbers():
    marker = "host 10.99.88.77 and udp port 4242"
    result = run_cli("--ebpf", marker)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    comments = [line for line in text.splitlines() if marker in line]
    assert comments == ["/* filter expression: %s */" % marker]   # --ebpf's listing only
    assert "#define PCAP_FILTER 1" in text
    assert "0xa63584dU" in text and "0x1092U" in text              # 10.99.88.77, port 4242
    from skbtracer_lib import config
    from skbtracer_lib.program.source import Program
    program = Program(config.parse_args(["--backend", "tracepoint", marker]), backend="tracepoint")
    assert marker not in program.text and "10.99.88.77" not in program.text


def test_words_join_as_tcpdump_joins_them():
    from skbtracer_lib import config
    cfg = config.parse_args(["-P", "53", "udp", "and", "(", "host", "10.0.0.1", ")"])
    assert cfg.expression.text == "udp and ( host 10.0.0.1 )"
    assert cfg.port == 53
    assert config.parse_args([]).expression is None
