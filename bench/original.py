"""The original skbtracer's per-event path, re-implemented for comparison.

Modelled on skbtracer.py by DavadDi (github.com/DavadDi/skbtracer), the tool
this project re-does: its event_printer() casts the perf data to a
ctypes.Structure (`ct.cast(data, ct.POINTER(TestEvt)).contents`), reads the
fields off the structure one attribute at a time, formats addresses with
inet_ntop(pack(...)) and the MAC with a generator of '%02x', builds the TCP
flags string in a loop, calls time.strftime("%H:%M:%S") for every row,
`%`-formats the row, print()s it, and then calls print_stack(), which does
b.get_table("stacks") for every event before looking at the stack id.

Differences, all so that both tools produce the same rows from the same
bytes (checked by userspace.py before timing):
  - the Structure has the fields of this project's struct event_t, from its
    field table (skbtracer_lib/events/fields.py), and its event kinds (the
    original's event carried the function name as char[64]; here the probe
    id indexes the name list, as in ours);
  - the original's kernel half converted ports to host order; these bytes
    carry them in network order, so ntohs() is applied;
  - the row format is ours (the original had CPU and IP_LEN columns), as
    are the drop-row extras (reason=, location=) and the netfilter text;
  - ksym() is asked for offsets and decoded (the original printed the
    bytes' repr).
"""

import ctypes as ct
import socket
import time
from socket import AF_INET, AF_INET6, inet_ntop, ntohs
from struct import pack

from skbtracer_lib.events import fields
from skbtracer_lib.events.vocabulary import KIND_DROP, KIND_IPTABLE


class TestEvt(ct.Structure):
    _pack_ = 1      # the gaps are fields (ctypes_fields): the offsets are the table's
    _fields_ = fields.ctypes_fields(
        rename={"stack_id": "kernel_stack_id", "icmp_id": "icmpid", "family": "ip_version",
                "l4proto": "l4_proto", "tcp_flags": "tcpflags", "icmp_type": "icmptype",
                "dmac": "dest_mac", "smac": "src_mac", "table": "tablename"},
        types={"saddr": ct.c_ulonglong * 2, "daddr": ct.c_ulonglong * 2})


assert ct.sizeof(TestEvt) == fields.EVENT_SIZE, ct.sizeof(TestEvt)


# uapi/linux/netfilter.h
NF_VERDICT_NAME = ["DROP", "ACCEPT", "STOLEN", "QUEUE", "REPEAT", "STOP"]
HOOKNAMES = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]
TCPFLAGS = ["CWR", "ECE", "URG", "ACK", "PSH", "RST", "SYN", "FIN"]


def _get(l, index, default):
    """Get element at index in l or return the default."""
    if index < len(l):
        return l[index]
    return default


def _get_tcpflags(tcpflags):
    flag = ""
    start = 1
    for index in range(len(TCPFLAGS)):
        if tcpflags & (0x80 >> index):
            if start:
                flag += TCPFLAGS[index]
                start = 0
            else:
                flag += "," + TCPFLAGS[index]
    return flag


class OriginalPrinter:
    """event_printer() and print_stack() of the original, as methods so
    that the benchmark can give each run its own output and bcc object.

    b: what the original's global `b = BPF(...)` provided: ksym() and
    get_table("stacks"). func_names: probe id -> name. reasons: drop
    reason number -> name."""

    def __init__(self, b, func_names, reasons, out, catch_count=2**62, timestamp=False):
        self.b = b
        self.func_names = func_names
        self.reasons = reasons
        self.out = out
        self.catch_count = catch_count
        self.timestamp = timestamp
        self.earliest_ts = 0
        self.is_done = False

    def time_str(self, event):
        if self.timestamp:
            if self.earliest_ts == 0:
                self.earliest_ts = event.ts_ns
            return "%-7.6f " % ((event.ts_ns - self.earliest_ts) / 1000000000.0)
        return "%-7s " % time.strftime("%H:%M:%S")

    def print_stack(self, event):
        stack_traces = self.b.get_table("stacks")
        kernel_stack = []
        if event.kernel_stack_id > 0:
            kernel_tmp = stack_traces.walk(event.kernel_stack_id)
            # fix kernel stack
            for addr in kernel_tmp:
                kernel_stack.append(addr)
        for addr in kernel_stack:
            print("    %s" % self.b.ksym(addr, show_offset=True).decode(), file=self.out)

    def event_printer(self, cpu, data, size):
        self.catch_count = self.catch_count - 1
        if self.catch_count < 0:
            self.is_done = True
            return

        # Decode event
        event = ct.cast(data, ct.POINTER(TestEvt)).contents

        if event.ip_version == 4:
            saddr = inet_ntop(AF_INET, pack("=I", event.saddr[0]))
            daddr = inet_ntop(AF_INET, pack("=I", event.daddr[0]))
        elif event.ip_version == 6:
            saddr = inet_ntop(AF_INET6, event.saddr)
            daddr = inet_ntop(AF_INET6, event.daddr)
        else:
            return

        mac_info = "".join("%02x" % b for b in event.dest_mac)

        if event.l4_proto == socket.IPPROTO_TCP:
            pkt_info = "T_%s:%s:%u->%s:%u" % (_get_tcpflags(event.tcpflags), saddr,
                                               ntohs(event.sport), daddr, ntohs(event.dport))
        elif event.l4_proto == socket.IPPROTO_UDP:
            pkt_info = "U:%s:%u->%s:%u" % (saddr, ntohs(event.sport), daddr, ntohs(event.dport))
        elif (event.l4_proto == socket.IPPROTO_ICMP and event.ip_version == 4) or \
                (event.l4_proto == socket.IPPROTO_ICMPV6 and event.ip_version == 6):
            if event.icmptype in ([8] if event.ip_version == 4 else [128]):
                pkt_info = "I_request:%s->%s" % (saddr, daddr)
            elif event.icmptype in ([0] if event.ip_version == 4 else [129]):
                pkt_info = "I_reply:%s->%s" % (saddr, daddr)
            else:
                pkt_info = "I:%s->%s" % (saddr, daddr)
        else:
            pkt_info = "%u:%s->%s" % (event.l4_proto, saddr, daddr)

        if event.kind == KIND_IPTABLE:
            verdict = _get(NF_VERDICT_NAME, event.verdict & 0xFF, "~UNK~")
            hook = _get(HOOKNAMES, event.hook, "~UNK~")
            trace_info = "%x.%u:%u.%s.%s.%s" % (event.skb, event.pkt_type, event.pf,
                                                event.tablename.decode() or "?", hook, verdict)
        elif event.kind == KIND_DROP:
            trace_info = "%x.%u:%s reason=%s" % (event.skb, event.pkt_type,
                                                 self.func_names[event.probe],
                                                 self.reasons.get(event.drop_reason,
                                                                  str(event.drop_reason)))
            if event.location:
                trace_info += " location=%s" % self.b.ksym(event.location,
                                                           show_offset=True).decode()
        else:
            trace_info = "%x.%u:%s" % (event.skb, event.pkt_type, self.func_names[event.probe])

        # Print event
        print("[%-8s][%-10s] %-12s %-12s %-40s %s" % (self.time_str(event), event.netns,
                                                      event.ifname.decode(), mac_info, pkt_info,
                                                      trace_info), file=self.out)
        self.print_stack(event)
