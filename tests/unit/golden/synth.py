"""The golden corpus's synthetic raw streams, made once (record.py --synth)
and kept as data: the unit tests' scenario sequences (tracepoint and
kprobe names), --all/--func rows, IPv6, and the benchmark's mixed and
--keep workloads (a thousand whole packet paths)."""

import gzip
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))                       # tests/unit
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(HERE))), "bench"))

import test_story_unit as u  # noqa: E402
import workload  # noqa: E402

from skbtracer_lib.events import fields  # noqa: E402
from skbtracer_lib.events.decode import KIND_IPTABLE, encode_event  # noqa: E402

NETNS_POOL = [1001, 1002, 1003, 1004, 1005]     # inodes no machine names


def raw_of(e):
    """The raw bytes of a decoded event (encode()'s fields)."""
    return encode_event(e)


def kind_of(name):
    if name == "kfree_skb":
        return "drop"
    if name in ("nft_do_chain", "ipt_do_table", "ip6t_do_table"):
        return "iptable"
    return "route"


def save(name, probe_names, raws, backend, extra=(), ended_gap_ns=2_000_000_000):
    from skbtracer_lib.events.decode import Event
    last = max(Event(r).ts_ns for r in raws)
    meta = {"backend": backend, "ended_ns": last + ended_gap_ns,
            "probes": [[n, kind_of(n), n in extra] for n in probe_names],
            # the layout the bytes have (goldens.read_raw reads them in today's)
            "event_size": fields.EVENT_SIZE,
            "event_fields": [[f.name, f.offset, f.size] for f in fields.FIELDS]}
    with open(os.path.join(HERE, "corpus", name + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    with gzip.GzipFile(os.path.join(HERE, "corpus", name + ".raw.gz"), "wb", mtime=0) as f:
        f.write(b"".join(raws))


def tracepoint_seed():
    trace = u.Trace(u.TRACEPOINTS)
    for run in (lambda: u.host_scenario1(trace, sport=41002),
                lambda: u.straight(trace, 0xffff888000010000, 41003, "10.96.0.20", 53),
                lambda: u.host_scenario3(trace, sport=41004),
                lambda: u.straight(trace, 0xffff888000020000, 41005, u.SERVICE, 53),
                lambda: u.straight(trace, 0xffff888000030000, 41006, "10.96.0.20", 53),
                lambda: u.straight(trace, 0xffff888000040000, 41007),
                lambda: u.host_scenario7(trace, sport=41008)):
        run()
        trace.t += 500_000_000
    # one flow with IP id 0 twice, an address reused, a hand-over, a way out
    u.straight(trace, u.A, 40000, ip_id=0)
    trace.add(u.A, "consume_skb", "", u.flow(40000, ip_id=0))
    u.straight(trace, u.A, 40000, ip_id=0)
    pkt = u.flow(40001)
    trace.rows(u.B, pkt, [("net_dev_queue", "client/eth0"), ("netif_rx", "node1/vethclient"),
                          ("netif_receive_skb", "node1/vethclient"),
                          ("consume_skb", "node1/cbr0")])
    trace.rows(u.C, pkt, [("net_dev_queue", "node1/vethserver"), ("netif_rx", "server/eth0"),
                          ("netif_receive_skb", "server/eth0"),
                          ("skb_copy_datagram_iovec", "server/eth0")])
    out = u.flow(40002, "8.8.8.8", 53)
    trace.rows(u.A, out, [("net_dev_queue", "client/eth0"), ("netif_rx", "node1/vethclient"),
                          ("netif_receive_skb", "node1/vethclient"),
                          ("net_dev_queue", "node1/eth0"), ("net_dev_start_xmit", "node1/eth0"),
                          ("consume_skb", "node1/eth0")])
    save("tracepoint-seed", u.TRACEPOINTS, [raw_of(e) for e in trace.events], "tracepoint")


def kprobe_trace(probe_names):
    trace = u.Trace(probe_names)
    u.guest_scenario1(trace, sport=41002)
    trace.t += 500_000_000
    pkt = u.flow(40000)
    trace.add(u.A, "__dev_queue_xmit", "server/veth0", pkt)
    trace.add(u.B, "ip_rcv", "server/eth1", pkt)
    trace.add(u.A, "ip_rcv", "server/eth0", pkt)
    trace.add(u.B, "__udp_enqueue_schedule_skb", "server/eth1", pkt)
    trace.add(u.A, "__udp_enqueue_schedule_skb", "server/eth0", pkt)
    trace.t += 500_000_000
    pkt = u.flow(40001)
    trace.rows(u.C, pkt, [("__dev_queue_xmit", "client/eth0"),
                          ("__netif_receive_skb", "node1/cbr0"),
                          ("__br_forward", "node1/cbr0")])
    trace.add(u.C, "kfree_skb", "node1/vethserver", pkt, drop_reason=6, location=0xffffffff81000456)
    trace.add(u.C, "nft_do_chain", "node1/vethserver", pkt, kind=KIND_IPTABLE, pf=7, hook=3,
              table="filter", chain="OUTPUT", verdict=2)
    trace.t += 500_000_000
    pkt = u.flow(40003, ip_id=77)
    trace.rows(0xffff888000050000, pkt, [("__dev_queue_xmit", "client/eth0"),
                                         ("__netif_receive_skb", "node1/cbr0"),
                                         ("ip_rcv", "node1/cbr0"), ("ip_forward", "node1/cbr0")])
    return trace


def kprobe_seed():
    trace = kprobe_trace(u.KPROBES)
    save("kprobe-seed", u.KPROBES, [raw_of(e) for e in trace.events], "kprobe",
         ended_gap_ns=400_000_000)


EXTRA = ["skb_release_data", "eth_type_trans", "netif_rx", "ip_rcv_core"]


def kprobe_extra():
    """The kprobe sequence with --all/--func rows: a free's own functions
    after it, eth_type_trans and netif_rx() before each receive."""
    names = u.KPROBES + EXTRA
    trace = kprobe_trace(names)
    raws = []
    for e in trace.events:
        name = names[e.probe]
        if name == "__netif_receive_skb":
            for k, extra in enumerate(("netif_rx", "eth_type_trans")):
                e.probe, ts = names.index(extra), e.ts_ns
                e.ts_ns = ts - 300 + 100 * k
                raws.append(raw_of(e))
                e.ts_ns = ts
            e.probe = names.index(name)
        raws.append(raw_of(e))
        if name == "ip_rcv":
            e.probe, e.ts_ns = names.index("ip_rcv_core"), e.ts_ns + 100
            raws.append(raw_of(e))
        if name == "consume_skb" or name == "kfree_skb":
            e.probe, e.ts_ns = names.index("skb_release_data"), e.ts_ns + 200
            raws.append(raw_of(e))
    save("kprobe-extra", names, raws, "kprobe", extra=EXTRA)


V6 = {u.CLIENT: "fd00:10:244:1::2", u.SERVICE: "fd00:10:96::a", u.SERVER: "fd00:10:244:1::3"}


def v6_flow(sport, dst=u.SERVER, dport=9000, ip_id=4242, src=u.CLIENT):
    """u.flow() with the seed's addresses in IPv6 (no IP id)."""
    return dict(family=6, saddr=V6[src], sport=sport, daddr=V6[dst], dport=dport, ip_id=0,
                l4proto=17)


def ipv6():
    trace = u.Trace(u.TRACEPOINTS)
    six = dict(family=6, ip_id=0)
    flow, u.flow = u.flow, v6_flow          # scenario 1, in IPv6
    try:
        u.host_scenario1(trace, sport=41002)
    finally:
        u.flow = flow
    trace.t += 500_000_000
    tcp = dict(six, saddr="fd00::2", daddr="fd00::3", l4proto=6, sport=5000, dport=80,
               tcp_seq=7, tcp_flags=0x02)
    trace.rows(0xffff888000060000, tcp, [("net_dev_queue", "client/eth0"),
                                         ("netif_rx", "node1/vethclient"),
                                         ("netif_receive_skb", "node1/vethclient"),
                                         ("net_dev_queue", "node1/vethserver"),
                                         ("netif_rx", "server/eth0"),
                                         ("skb_copy_datagram_iovec", "server/eth0"),
                                         ("consume_skb", "")])
    echo = dict(six, saddr="fd00::2", daddr="fd00::3", l4proto=58, icmp_type=128, icmp_id=9)
    trace.rows(0xffff888000070000, echo, [("net_dev_queue", "client/eth0"),
                                          ("netif_rx", "node1/vethclient")])
    trace.add(0xffff888000070000, "kfree_skb", "node1/vethclient", echo, drop_reason=2)
    ping = dict(saddr=u.CLIENT, daddr=u.SERVER, l4proto=1, icmp_type=8, icmp_id=9, ip_id=5)
    trace.rows(0xffff888000080000, ping, [("net_dev_queue", "client/eth0"),
                                          ("netif_rx", "node1/vethclient"),
                                          ("netif_receive_skb", "node1/vethclient")])
    trace.rows(0xffff888000090000, dict(ping, icmp_type=0, saddr=u.SERVER, daddr=u.CLIENT),
               [("net_dev_queue", "server/eth0"), ("netif_rx", "node1/vethserver")])
    save("ipv6", u.TRACEPOINTS, [raw_of(e) for e in trace.events], "tracepoint")


def bench_workloads():
    workload._netns_pool = lambda: list(NETNS_POOL)
    save("mixed", workload.PROBE_NAMES, workload.mix_events(3000, seed=11), "kprobe")
    save("keep-thousand", workload.PROBE_NAMES,
         workload.keep_events(1000 * len(workload._KEEP_PATH), seed=12), "kprobe")


def main():
    tracepoint_seed()
    kprobe_seed()
    kprobe_extra()
    ipv6()
    bench_workloads()


if __name__ == "__main__":
    main()
