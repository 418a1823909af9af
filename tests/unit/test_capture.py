"""-w: pcapng blocks for synthetic events (skbtracer_lib/capture.py), read
back by python3-dpkt and by tshark/capinfos (Debian's tshark); and the -w
and --snaplen flags."""

import os
import re
import shutil
import socket
import struct
import subprocess
import uuid

import dpkt
import pytest
from dpkt import pcapng
from skbt_unit_helpers import run_cli
from test_config import assert_usage_error

from skbtracer_lib import config
from skbtracer_lib.events import decode
from skbtracer_lib.outputs import capture
from skbtracer_lib.program import source

PROBES = ["netif_receive_skb", "net_dev_start_xmit", "kfree_skb", "ipt_do_table"]
TSHARK = shutil.which("tshark")
CAPINFOS = shutil.which("capinfos")
NS = {"client": 4026532001, "node": 4026532002}
BASE_NS = 1_800_000_000_000_000_000      # monotonic ns of the first event (any value)


def udp_packet(src, dst, ttl, sport=41001, dport=53, payload=b"hello"):
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), ttl=ttl, p=17,
                    data=dpkt.udp.UDP(sport=sport, dport=dport, data=payload))
    ip.data.ulen = len(ip.data)
    ip.len = len(ip)
    return bytes(ip)


def ethernet(ip_bytes, dst="020000000101", src="020000000102"):
    return bytes.fromhex(dst) + bytes.fromhex(src) + b"\x08\x00" + ip_bytes


class Rows:
    """What the session hands the writer: event, raw bytes, row text."""

    def __init__(self):
        self.items = []

    def add(self, data, linktype, wire_len=None, **fields):
        fields.setdefault("saddr", "10.244.1.2")
        fields.setdefault("daddr", "10.96.0.10")
        raw = decode.encode(**fields) + capture.pack(linktype, data, wire_len)
        e = decode.Event(raw)
        comment = "row %d: %s" % (len(self.items), PROBES[e.probe] if e.kind != decode.KIND_IPTABLE
                                  else "2.nat.PREROUTING.ACCEPT")
        self.items.append((e, raw, comment))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Six rows over four interfaces (one device seen with two link types),
    the story written at exit: (path, rows, writer)."""
    path = str(tmp_path_factory.mktemp("capture") / "trace.pcapng")
    ip64 = udp_packet("10.244.1.2", "10.96.0.10", 64)
    nat63 = udp_packet("10.244.1.2", "10.244.1.3", 63, dport=9000)
    rows = Rows()
    rows.add(ip64, capture.LINKTYPE_RAW, ts_ns=BASE_NS, netns=NS["client"], ifname="eth0",
             ifindex=2, probe=1, pkt_type=0, len=len(ip64))
    rows.add(ethernet(ip64), capture.LINKTYPE_ETHERNET, ts_ns=BASE_NS + 1_234, netns=NS["client"],
             ifname="eth0", ifindex=2, probe=1, pkt_type=0, len=len(ip64) + 14)
    rows.add(ethernet(ip64), capture.LINKTYPE_ETHERNET, ts_ns=BASE_NS + 2_001, netns=NS["node"],
             ifname="vethclient", ifindex=3, probe=0, pkt_type=3, len=len(ip64))
    rows.add(ethernet(nat63), capture.LINKTYPE_ETHERNET, ts_ns=BASE_NS + 3_000_000_007,
             netns=NS["node"], ifname="cbr0", ifindex=2, kind=decode.KIND_IPTABLE, probe=3,
             pf=2, hook=0, verdict=1, pkt_type=0, len=len(nat63))
    rows.add(ethernet(nat63)[:40], capture.LINKTYPE_ETHERNET, wire_len=len(nat63) + 14,
             ts_ns=BASE_NS + 3_000_000_500, netns=NS["node"], ifname="cbr0", ifindex=2,
             probe=0, pkt_type=0, len=len(nat63))
    rows.add(nat63, capture.LINKTYPE_RAW, ts_ns=BASE_NS + 3_000_001_000, netns=NS["node"],
             ifname="", kind=decode.KIND_DROP, probe=2, pkt_type=0, len=len(nat63))
    labels = {NS["client"]: "client", NS["node"]: "node1"}
    with open(path, "xb") as f:
        writer = capture.PcapngWriter(f, 256, PROBES, label=labels.get,
                                      wall_ns=lambda ns: ns - BASE_NS + 1_700_000_000 * 10**9)
        writer.start()
        for i, (e, raw, comment) in enumerate(rows.items):
            writer.add(e, raw, comment)
            if i == 2:
                writer.flush()          # two batches, as two polls would write them
        writer.flush()
        writer.write_story(["skbtracer: the story of 1 packet in 6 events",
                            "DUPLICATE: U 10.244.1.2:41001->10.244.1.3:9000 reached "
                            "server/eth0 2 times", "DROPPED: somewhere"])
    return path, rows, writer


def blocks(path):
    """(type, dpkt block) of every block in the file, in order."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    at = 0
    classes = {pcapng.PCAPNG_BT_SHB: pcapng.SectionHeaderBlockLE,
               pcapng.PCAPNG_BT_IDB: pcapng.InterfaceDescriptionBlockLE,
               pcapng.PCAPNG_BT_EPB: pcapng.EnhancedPacketBlockLE}
    while at < len(data):
        kind, length = struct.unpack_from("<II", data, at)
        out.append((kind, classes[kind](data[at:at + length])))
        at += length
    assert at == len(data)
    return out


def option(block, code):
    return [o.data for o in block.opts if o.code == code]


def test_dpkt_reads_the_blocks_back(written):
    path, rows, writer = written
    found = blocks(path)
    kinds = [k for k, _b in found]
    assert kinds[0] == pcapng.PCAPNG_BT_SHB
    idbs = [b for k, b in found if k == pcapng.PCAPNG_BT_IDB]
    epbs = [b for k, b in found if k == pcapng.PCAPNG_BT_EPB]
    assert len(epbs) == len(rows.items) == writer.packets
    names = [option(i, pcapng.PCAPNG_OPT_IF_NAME)[0].decode() for i in idbs]
    assert names == ["client/eth0", "client/eth0", "node1/vethclient", "node1/cbr0", "node1/-"]
    assert [i.linktype for i in idbs] == [101, 1, 1, 1, 101]
    assert all(option(i, pcapng.PCAPNG_OPT_IF_TSRESOL) == [b"\x09"] for i in idbs)
    assert b"inode 4026532002" in option(idbs[2], pcapng.PCAPNG_OPT_IF_DESCRIPTION)[0]
    # every interface is described before its first packet
    seen = 0
    for kind, b in found:
        if kind == pcapng.PCAPNG_BT_IDB:
            seen += 1
        elif kind == pcapng.PCAPNG_BT_EPB:
            assert b.iface_id < seen
    assert [e.iface_id for e in epbs] == [0, 1, 2, 3, 3, 4]
    for epb, (e, raw, comment) in zip(epbs, rows.items):
        ts = (epb.ts_high << 32) | epb.ts_low
        assert ts == e.ts_ns - BASE_NS + 1_700_000_000 * 10**9
        assert option(epb, pcapng.PCAPNG_OPT_COMMENT) == [comment.encode()]
        assert epb.pkt_data == capture.split(raw)[2]
    assert (epbs[4].caplen, epbs[4].pkt_len) == (40, 14 + 33)   # cut; the packet's own length
    flags = [option(e, capture.OPT_EPB_FLAGS) for e in epbs]
    assert flags[0] == flags[1] == [struct.pack("<I", capture.DIRECTION_OUT)]
    assert flags[2] == [struct.pack("<I", capture.DIRECTION_IN | 4 << 2)]   # otherhost: promisc
    assert flags[3] == [struct.pack("<I", capture.DIRECTION_IN | 1 << 2)]   # PREROUTING, unicast
    assert flags[5] == []                                                   # a drop: unknown


@pytest.mark.parametrize("data, comment, flags", [
    (b"", b"", 0), (b"x", b"c", 1), (b"abcd", b"abcd", 2 | 4 << 2), (bytes(range(99)), b"r" * 97, 0),
    (b"\xff" * 7, "caf\u00e9 \u2192".encode(), 2)], ids=["empty", "one", "aligned", "odd", "utf8"])
def test_packet_block_is_dpkts_layout(data, comment, flags):
    """packet_block() packs what dpkt's EnhancedPacketBlockLE packs (but for
    the original length, which dpkt sets to the captured one)."""
    opts = [pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_COMMENT, text=comment)]
    if flags:
        opts.append(pcapng.PcapngOptionLE(code=capture.OPT_EPB_FLAGS, data=struct.pack("<I", flags)))
    opts.append(pcapng.PcapngOptionLE(code=pcapng.PCAPNG_OPT_ENDOFOPT))
    ts = 1_700_000_000_123_456_789
    theirs = bytes(pcapng.EnhancedPacketBlockLE(iface_id=3, ts_high=ts >> 32,
                                                ts_low=ts & 0xFFFFFFFF, pkt_data=data, opts=opts))
    ours = capture.packet_block(3, ts, data, len(data), comment, flags)
    assert ours == theirs
    longer = capture.packet_block(3, ts, data, len(data) + 1000, comment, flags)
    back = pcapng.EnhancedPacketBlockLE(longer)
    assert (back.caplen, back.pkt_len, back.pkt_data) == (len(data), len(data) + 1000, data)


def test_dpkt_reader_timestamps_in_ns(written):
    path, rows, _writer = written
    with open(path, "rb") as f:
        got = list(pcapng.Reader(f))
    assert len(got) == len(rows.items)
    first = got[0][0]
    assert first == pytest.approx(1_700_000_000.0)
    assert got[3][0] - first == pytest.approx(3.000000007, abs=1e-6)


def test_story_is_the_section_comment(written):
    path, _rows, _writer = written
    shb = blocks(path)[0][1]
    comments = option(shb, pcapng.PCAPNG_OPT_COMMENT)
    assert comments[0].decode().splitlines() == [
        "skbtracer: the story of 1 packet in 6 events",
        "DUPLICATE: U 10.244.1.2:41001->10.244.1.3:9000 reached server/eth0 2 times",
        "DROPPED: somewhere"]
    assert option(shb, pcapng.PCAPNG_OPT_SHB_USERAPPL) == [b"skbtracer"]
    assert len(bytes(shb)) == 28 + capture.STORY_SPACE + len(b"".join(
        bytes(o) for o in shb.opts[2:]))


def test_story_longer_than_its_space_is_cut_at_a_line():
    lines = ["DUPLICATE: %05d %s" % (i, "x" * 200) for i in range(400)]
    opts = capture.PcapngWriter._story_options(lines)
    assert len(b"".join(bytes(o) for o in opts)) == capture.STORY_SPACE
    text = opts[0].data.decode()
    assert text.splitlines()[-1].startswith("skbtracer: ") and "more lines on stderr" in text
    assert all(line in lines for line in text.splitlines()[:-1])


def tshark_fields(path, *fields):
    result = subprocess.run([TSHARK, "-r", path, "-T", "fields", "-E", "separator=|"]
                            + [a for f in fields for a in ("-e", f)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [line.split("|") for line in result.stdout.splitlines()]


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (scripts/deps.sh)")
def test_tshark_reads_interfaces_timestamps_comments_flags(written):
    path, rows, _writer = written
    got = tshark_fields(path, "frame.interface_name", "frame.interface_description",
                        "frame.time_epoch", "frame.comment", "frame.packet_flags_direction",
                        "ip.ttl", "ip.dst", "frame.len", "frame.cap_len", "eth.dst")
    assert len(got) == len(rows.items)
    assert [g[0] for g in got] == ["client/eth0", "client/eth0", "node1/vethclient",
                                   "node1/cbr0", "node1/cbr0", "node1/-"]
    assert "inode 4026532001" in got[0][1]
    assert got[0][2] == "1700000000.000000000"
    assert got[1][2] == "1700000000.000001234"
    assert got[3][2] == "1700000003.000000007"
    assert [g[3] for g in got] == [c for _e, _r, c in rows.items]
    assert [int(g[4], 16) if g[4] else 0 for g in got] == [2, 2, 1, 1, 1, 0]
    assert [g[5] for g in got] == ["64", "64", "64", "63", "63", "63"]
    assert [g[6] for g in got][3:] == ["10.244.1.3"] * 3
    assert got[4][8] == "40" and int(got[4][7]) == 14 + 33      # cut at the snap length
    assert got[1][9] == "02:00:00:00:01:01" and got[0][9] == ""   # raw IP has no Ethernet


@pytest.mark.skipif(CAPINFOS is None, reason="capinfos is not installed (scripts/deps.sh)")
def test_capinfos_link_types_precision_and_story(written):
    path, rows, _writer = written
    result = subprocess.run([CAPINFOS, path], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"Number of packets:\s+%d\b" % len(rows.items), out)
    assert "Ethernet (4)" in out and "Raw IP (2)" in out
    assert "nanoseconds" in out
    assert "Capture comment:     skbtracer: the story of 1 packet" in out
    assert "Number of interfaces in file: 5" in out


def test_failed_write_is_cut_back_to_whole_blocks(tmp_path):
    """A write that fails halfway (here: the file's size limit, as a full disk
    would) leaves the blocks written before and nothing after them."""
    import resource
    path = str(tmp_path / "limited.pcapng")
    rows = Rows()
    big = udp_packet("10.244.1.2", "10.96.0.10", 64, payload=b"x" * 200)
    for i in range(400):
        rows.add(ethernet(big), capture.LINKTYPE_ETHERNET, ts_ns=BASE_NS + i, netns=1,
                 ifname="eth0", probe=0)
    pid = os.fork()
    if pid == 0:        # in a child: RLIMIT_FSIZE applies to the whole process
        status = 1
        try:
            import signal
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
            with open(path, "xb") as f:
                writer = capture.PcapngWriter(f, 256, PROBES)
                writer.start()
                try:
                    for n in range(0, 400, 50):
                        for e, raw, comment in rows.items[n:n + 50]:
                            writer.add(e, raw, comment)
                        writer.flush()
                except capture.CaptureError:
                    status = 0 if writer.packets > 0 else 3
                    with open(path + ".count", "w") as out:
                        out.write(str(writer.packets))
        finally:
            os._exit(status)
    _pid, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    found = blocks(path)            # parses to the last byte: whole blocks only
    epbs = [b for k, b in found if k == pcapng.PCAPNG_BT_EPB]
    assert 0 < len(epbs) < 400
    with open(path + ".count") as f:
        assert int(f.read()) == len(epbs)       # the count the exit line gives
    assert os.path.getsize(path) <= 100_000


# -- the flags

MISSING_DIR = "/tmp/skbt-missing-%s" % uuid.uuid4().hex[:8]


@pytest.mark.parametrize("argv, mention", [
    (["-w", "x.pcapng", "--snaplen", "0"], "--snaplen"),
    (["-w", "x.pcapng", "--snaplen", "65536"], "--snaplen"),
    (["-w", "x.pcapng", "--snaplen", "1k"], "--snaplen"),
    (["--snaplen", "100"], "--snaplen"),
    (["-w", ""], "-w"),
    (["-w", "-"], "-w"),
    (["-w", MISSING_DIR + "/x.pcapng"], "-w"),
    (["-w", "/tmp"], "-w"),
], ids=["snaplen-0", "snaplen-65536", "snaplen-text", "snaplen-without-w", "w-empty",
        "w-stdout", "w-no-directory", "w-directory"])
def test_bad_write_flags(argv, mention, tmp_path):
    argv = [str(tmp_path / a) if a == "x.pcapng" else a for a in argv]
    assert_usage_error(run_cli(*argv, timeout=30), mention)


def test_existing_file_needs_force(tmp_path):
    path = tmp_path / "old.pcapng"
    path.write_bytes(b"old")
    assert_usage_error(run_cli("-w", str(path), timeout=30), "--force")
    assert path.read_bytes() == b"old"
    assert config.parse_args(["-w", str(path), "--force"]).write == str(path)


def test_same_file_as_output(tmp_path):
    path = str(tmp_path / "same")
    assert_usage_error(run_cli("-o", path, "-w", path, timeout=30), "same file")


def test_write_config_and_defines(tmp_path):
    path = str(tmp_path / "t.pcapng")
    cfg = config.parse_args(["-w", path])
    assert (cfg.write, cfg.snaplen) == (path, 256)
    assert source.mode_defines(cfg)["CAPTURE_BYTES"] == 256
    big = config.parse_args(["-w", path, "--snaplen", "65535"])
    assert source.mode_defines(big)["CAPTURE_BYTES"] == source.CAPTURE_BYTES_MAX
    assert "CAPTURE_BYTES" not in source.mode_defines(config.parse_args([]))


def test_ebpf_text_copies_bytes_only_with_w(tmp_path):
    plain = run_cli("--ebpf", timeout=60)
    assert plain.returncode == 0, plain.stderr
    assert not re.search(r"^#define CAPTURE_BYTES", plain.stdout, re.M)
    written_text = run_cli("--ebpf", "-w", str(tmp_path / "t.pcapng"), "--snaplen", "96",
                           timeout=60)
    assert written_text.returncode == 0, written_text.stderr
    assert re.search(r"^#define CAPTURE_BYTES 96$", written_text.stdout, re.M)
    assert not (tmp_path / "t.pcapng").exists()      # --ebpf opens nothing


def test_unwritable_path_is_one_line_exit_1():
    """A FileError: skbtracer.py's trace() says it in one line, exit 1."""
    from skbtracer_lib.outputs.files import FileError, open_new_file
    with pytest.raises(FileError, match=r"^-w/--write: cannot write"):
        open_new_file("-w/--write", "/proc/version/x.pcapng", False, binary=True)


def test_packet_comments_carry_the_conntrack_entry_without_ct(tmp_path):
    """-w without --ct: the comment is the row, then the skb's conntrack entry (state, NAT, id,
    status, mark, zone: conntrack.comment_suffix); with --ct the row has the state and NAT
    already, and the comment does not say them twice. tshark reads them back."""
    from skbtracer_lib.events import conntrack
    from skbtracer_lib.outputs.sinks import Pcapng
    ip = udp_packet("10.244.1.2", "10.244.1.3", 63, dport=9000)
    ct = dict(ct=0xFFFF888012345602, ct_l4proto=17, ct_mark=0x2A, ct_zone=7,
              ct_known=conntrack.KNOWN_CONN | conntrack.KNOWN_MARK | conntrack.KNOWN_ZONE,
              ct_status=conntrack.STATUS_BITS["CONFIRMED"] | conntrack.STATUS_BITS["DST_NAT"],
              ct_orig_saddr="10.244.1.2", ct_orig_sport=41001, ct_orig_daddr="10.96.0.10",
              ct_orig_dport=53, ct_reply_saddr="10.244.1.3", ct_reply_sport=9000,
              ct_reply_daddr="10.244.1.2", ct_reply_dport=41001)
    entry = " ct=NEW dnat 10.96.0.10:53=>10.244.1.3:9000"
    details = " id=12345600 status=CONFIRMED,DST_NAT mark=0x2a zone=7"
    comments = {}
    for ct_in_row in (False, True):
        path = str(tmp_path / ("ct-in-row-%s.pcapng" % ct_in_row))
        with open(path, "wb") as f:
            sink = Pcapng(f, path, 256, PROBES, str, lambda ns: ns, ct_in_row=ct_in_row)
            sink.start(None)
            for i, fields in enumerate(({}, ct)):        # before conntrack, then with its entry
                raw = decode.encode(ts_ns=BASE_NS + i, netns=NS["node"], ifname="cbr0", probe=0,
                                    saddr="10.244.1.2", daddr="10.244.1.3", sport=41001,
                                    dport=9000, l4proto=17, **fields) + \
                    capture.pack(capture.LINKTYPE_RAW, ip)
                row = "row %d" % i + (entry if ct_in_row and fields else "")
                sink.event(decode.Event(raw), raw, row, None, None)
            sink.flush()
        comments[ct_in_row] = [c for (c,) in tshark_fields(path, "frame.comment")]
    assert comments[False] == ["row 0", "row 1" + entry + details]
    assert comments[True] == comments[False]
