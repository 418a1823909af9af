"""Synthetic perf-buffer input for the userspace benchmark.

Events are built with skbtracer_lib.events.encode(), i.e. the 200 bytes of
struct event_t exactly as bpf_perf_event_output() hands them to bcc, and
placed back to back in one ctypes buffer. A perf callback gets (cpu,
address, size) with the address as a plain int (bcc's _RAW_CB_TYPE declares
it c_void_p), which is what feed() passes.

Three mixes:
  mix     route, netfilter verdict and drop rows of unrelated packets,
          IPv4 and IPv6, UDP, TCP and ICMP (the default text-row workload)
  keep    what --keep produces: each skb followed through its whole path
          (bridge, netfilter, DNAT changing the destination mid-path, the
          free at the end), so long runs of rows of one skb
  stacks  the mix with a kernel stack on every row (--callstack): each
          stack_id names one of a few dozen stacks of 10-24 frames

Also the fakes the stack path needs: a stack table and a kernel symbolizer
that, like bcc's ksym cache (one sorted table of /proc/kallsyms loaded once,
a binary search per address), resolves through a table built once.
"""

import bisect
import ctypes
import os
import random
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from skbtracer_lib.events import decode  # noqa: E402
from skbtracer_lib.events.decode import KIND_DROP, KIND_IPTABLE, KIND_ROUTE  # noqa: E402

# Probe ids -> names, as a kprobe run with --route --iptable --drop plans
# them on 6.1 (a subset of probes.ROUTE_FUNCTIONS and friends).
PROBE_NAMES = [
    "netif_rx", "__netif_receive_skb", "__dev_queue_xmit", "br_handle_frame",
    "br_handle_frame_finish", "br_nf_pre_routing", "br_forward", "__br_forward",
    "br_forward_finish", "br_nf_post_routing", "ip_rcv", "ip_rcv_finish", "ip_forward",
    "ip_output", "ip_finish_output", "ipv6_rcv", "ip6_rcv_finish", "ip6_output",
    "skb_copy_datagram_iovec", "consume_skb", "ipt_do_table", "ip6t_do_table",
    "nft_do_chain", "kfree_skb",
]
PROBE = {name: i for i, name in enumerate(PROBE_NAMES)}
ROUTE_PROBES = [PROBE[n] for n in PROBE_NAMES[:20]]
IFNAMES = ["eth0", "cbr0", "vethclient", "vethserver", "veth1a2b3c4d", "lo"]
MACS = ["020000010101", "020000010002", "020000010003", "ffffffffffff", "0242ac110002"]
TABLES = [("filter", "FORWARD"), ("nat", "PREROUTING"), ("nat", "KUBE-SERVICES"),
          ("filter", "INPUT"), ("mangle", "POSTROUTING")]
DROP_REASONS = [2, 3, 5, 6, 77]        # NOT_SPECIFIED, NO_SOCKET, ... NETFILTER_DROP
V4 = ["10.244.1.2", "10.244.1.3", "10.96.0.10", "10.244.2.3", "10.250.0.1", "192.168.100.27"]
V6 = ["fd00::2", "fd00:10:244:1::3", "2001:db8:85a3::8a2e:370:7334", "fe80::1", "fd00::a"]
KSYM_BASE = 0xFFFFFFFF81000000

EVENT_SIZE = decode.EVENT_SIZE
TS_STEP_NS = 10_000        # 100k events per second of event time


def _netns_pool():
    """A few real namespace inodes (ours and pid 1's) and some that exist nowhere."""
    inodes = []
    for path in ("/proc/self/ns/net", "/proc/1/ns/net"):
        try:
            inodes.append(os.stat(path).st_ino)
        except OSError:
            pass
    return sorted(set(inodes)) + [4026532301, 4026532377, 4026532412]


def _packet(r):
    """Header fields of a random packet: family, protocol, addresses, ports/ICMP."""
    family = 6 if r.random() < 0.2 else 4
    pool = V6 if family == 6 else V4
    saddr, daddr = r.sample(pool, 2)
    p = r.random()
    f = {"family": family, "saddr": saddr, "daddr": daddr, "ttl": r.choice((63, 64, 255)),
         "len": r.choice((60, 84, 120, 576, 1500)), "ip_id": r.randrange(65536) if family == 4 else 0}
    if p < 0.5:
        f.update(l4proto=17, sport=r.randrange(1024, 65535), dport=r.choice((53, 9000, 443)))
    elif p < 0.9:
        f.update(l4proto=6, sport=r.randrange(1024, 65535), dport=r.choice((80, 443, 6443)),
                 tcp_flags=r.choice((0x02, 0x12, 0x10, 0x18, 0x11, 0x04)),
                 tcp_seq=r.randrange(2**32))
    else:
        f.update(l4proto=1 if family == 4 else 58,
                 icmp_type=r.choice((8, 0, 3) if family == 4 else (128, 129, 135)),
                 icmp_id=r.randrange(65536))
    return f


def _common(r, netns, i):
    return {"ts_ns": 10**12 + i * TS_STEP_NS, "netns": r.choice(netns),
            "ifname": r.choice(IFNAMES), "ifindex": r.randrange(1, 40), "pid": r.randrange(1, 5000),
            "pkt_type": r.choice((0, 0, 0, 3, 4)), "dmac": r.choice(MACS),
            "smac": r.choice(MACS)}


def _route(r, f, stack_id=-1):
    f.update(kind=KIND_ROUTE, probe=r.choice(ROUTE_PROBES), stack_id=stack_id)
    return f


def _verdict(r, f, stack_id=-1):
    table, chain = r.choice(TABLES)
    six = f["family"] == 6
    nft = r.random() < 0.6
    f.update(kind=KIND_IPTABLE, probe=PROBE["nft_do_chain"] if nft else
             PROBE["ip6t_do_table" if six else "ipt_do_table"],
             pf=10 if six else 2, hook=r.randrange(5), table=table, chain=chain if nft else "",
             verdict=1 if r.random() < 0.9 else 0, stack_id=stack_id)
    return f


def _drop(r, f, stack_id=-1):
    f.update(kind=KIND_DROP, probe=PROBE["kfree_skb"], drop_reason=r.choice(DROP_REASONS),
             location=KSYM_BASE + r.randrange(0x10000, 0x900000), stack_id=stack_id)
    return f


def mix_events(count, seed=1):
    """70 % route, 25 % netfilter verdict, 5 % drop rows; 80 % IPv4."""
    r = random.Random(seed)
    netns = _netns_pool()
    out = []
    for i in range(count):
        f = _common(r, netns, i)
        f.update(_packet(r))
        f["skb"] = 0xFFFF888000000000 + r.randrange(1 << 24) * 256
        p = r.random()
        make = _route if p < 0.70 else _verdict if p < 0.95 else _drop
        out.append(decode.encode(**make(r, f)))
    return out


# One --keep path: (probe or "verdict", after-DNAT?) in the order a UDP packet
# to a service on the same node meets them (kprobe names, 6.1).
_KEEP_PATH = [
    "__dev_queue_xmit", "netif_rx", "__netif_receive_skb", "br_handle_frame",
    "br_nf_pre_routing", "verdict", "verdict", "br_handle_frame_finish", "br_forward",
    "__br_forward", "br_forward_finish", "br_nf_post_routing", "verdict", "__dev_queue_xmit",
    "netif_rx", "__netif_receive_skb", "ip_rcv", "verdict", "ip_rcv_finish",
    "skb_copy_datagram_iovec", "consume_skb",
]
_DNAT_AT = 6      # rows from this index on carry the translated destination


def keep_events(count, seed=2):
    """Whole skb paths, one after another, the destination rewritten halfway."""
    r = random.Random(seed)
    netns = _netns_pool()
    out = []
    i = 0
    while len(out) < count:
        pkt = _packet(r)
        skb = 0xFFFF888000000000 + r.randrange(1 << 24) * 256
        ns = r.choice(netns)
        translated = r.choice(V6 if pkt["family"] == 6 else V4)
        for step, name in enumerate(_KEEP_PATH):
            f = _common(r, netns, i)
            f.update(pkt)
            f.update(skb=skb, netns=ns)
            if step >= _DNAT_AT:
                f["daddr"] = translated
            if name == "verdict":
                _verdict(r, f)
            else:
                f.update(kind=KIND_ROUTE, probe=PROBE[name])
            if step == len(_KEEP_PATH) - 1 and r.random() < 0.1:
                _drop(r, f)
            out.append(decode.encode(**f))
            i += 1
    return out[:count]


def flow_events(count, flows=32, seed=4):
    """What a trace of a few busy flows looks like: keep_events' paths of
    `flows` packets, each path repeated by later packets of its flow (a
    new skb address, IP id and time each time)."""
    r = random.Random(seed)
    paths = keep_events(flows * len(_KEEP_PATH), seed=seed)
    out = []
    while len(out) < count:
        start = r.randrange(flows) * len(_KEEP_PATH)
        skb = (0xFFFF888000000000 + r.randrange(1 << 24) * 256).to_bytes(8, "little")
        ip_id = r.randrange(65536).to_bytes(2, "little")
        for raw in paths[start:start + len(_KEEP_PATH)]:
            b = bytearray(raw)
            b[0:8] = (10**12 + len(out) * TS_STEP_NS).to_bytes(8, "little")
            b[8:16] = skb
            b[58:60] = ip_id
            out.append(bytes(b))
    return out[:count]


class EventRing:
    """Raw events back to back in one ctypes buffer, fed round-robin."""

    def __init__(self, raws):
        self.count = len(raws)
        self.buffer = ctypes.create_string_buffer(b"".join(raws), self.count * EVENT_SIZE)
        base = ctypes.addressof(self.buffer)
        self.addresses = [base + k * EVENT_SIZE for k in range(self.count)]

    def feed(self, callback, n, cpu=0):
        """Call callback(cpu, address, size) n times, as bcc's perf reader would."""
        addresses = self.addresses
        m = self.count
        for k in range(n):
            callback(cpu, addresses[k % m], EVENT_SIZE)


# ---------------------------------------------------------------- fake bcc for stacks

class FakeKsyms:
    """A kernel symbol table built once (bcc loads /proc/kallsyms once per
    process into its ksym cache) and a binary search per lookup."""

    def __init__(self, count=60000, seed=3):
        r = random.Random(seed)
        self.addresses = []
        self.names = []
        addr = KSYM_BASE
        for k in range(count):
            self.addresses.append(addr)
            self.names.append("%s_%s_%d" % (r.choice(("ip", "tcp", "udp", "br", "nf", "dev", "skb",
                                                       "netif", "__sys", "do")),
                                            r.choice(("rcv", "xmit", "finish", "hook", "slow",
                                                      "output", "queue", "recvmsg", "sendmsg")), k))
            addr += r.randrange(0x40, 0x800)
        self.end = addr

    def ksym(self, address, show_module=False, show_offset=False):
        """bcc's BPF.ksym(): bytes, "[unknown]" outside the table."""
        k = bisect.bisect_right(self.addresses, address) - 1
        if k < 0 or address >= self.end:
            return b"[unknown]"
        name = self.names[k]
        if show_offset:
            name = "%s+0x%x" % (name, address - self.addresses[k])
        return name.encode()


class FakeStackTable:
    """bcc's StackTrace table: walk(stack_id) iterates over return addresses."""

    def __init__(self, ksyms, count=48, seed=4):
        r = random.Random(seed)
        self.stacks = {}
        for stack_id in range(count):
            depth = r.randrange(10, 25)
            self.stacks[stack_id] = [r.randrange(KSYM_BASE, ksyms.end) for _ in range(depth)]

    def walk(self, stack_id):
        return iter(self.stacks[stack_id])


class FakeBPF:
    """What the per-event path touches of a bcc.BPF object: ksym(),
    b["stacks"] and (the original tool) b.get_table("stacks")."""

    def __init__(self, ksyms, stack_table, real_bpf=None):
        self._ksyms = ksyms
        self.tables = {"stacks": stack_table}
        self.ksym = ksyms.ksym
        self.real_bpf = real_bpf      # a real bcc.BPF with a "stacks" map, or None

    def __getitem__(self, name):
        return self.tables[name]

    def get_table(self, name):
        # bcc builds a new Table object on every get_table() call (map id and
        # fd lookups, key/leaf type descriptions parsed from JSON): with a
        # real BPF module that cost is paid here, the fake walk is returned.
        if self.real_bpf is not None:
            self.real_bpf.get_table(name)
        return self.tables[name]


def real_stack_bpf():
    """A real bcc module with the original tool's stack map (no probes
    attached), to pay bcc's real get_table() cost; None when bcc cannot
    compile here (not root, no headers)."""
    try:
        from skbtracer_lib.program import kernel
        headers = kernel.find_header_tree()
        if headers.kernel_source:
            os.environ["BCC_KERNEL_SOURCE"] = headers.kernel_source
        from bcc import BPF
        devnull = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(2)
        os.dup2(devnull, 2)       # clang's warnings about another kernel's headers
        try:
            bpf = BPF(text="BPF_STACK_TRACE(stacks, 2048);\n"
                           "int unused(void *ctx) { return 0; }\n")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
        bpf._skbt_headers = headers     # keep the header farm until the module goes
        return bpf
    except Exception:
        return None
