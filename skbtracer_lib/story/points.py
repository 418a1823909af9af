"""Probe points by what they mean for the story (kprobe function names and
tracepoint names; whichever the backend has), and the story's limits."""

MAX_EVENTS = 100_000            # events kept for the story; beyond that it is partial
JOIN_WINDOW_NS = 1_000_000_000
REUSE_GAP_NS = 1_000_000_000
LATE_VERDICT_NS = 10_000_000    # a verdict row reported just after its skb was freed
HANDOVER_NS = 50_000_000        # a freed skb's namespace still counts for a new copy
CUT_WINDOW_NS = 100_000_000     # -c: a copy last seen this close to the last row was cut off
STOP_WINDOW_NS = 50_000_000     # Ctrl-C: ... this close to the ring's last read was in flight
DURATION_STOP = "--duration %g s"   # what stopped the trace (stopped_by) when --duration did
MAX_COPIES = 64                 # copies per packet (a flood to 64 bridge ports); then a new one
MAX_FLAG_LINES = 20             # per kind (DUPLICATE, DROPPED, VANISHED)
MAX_TABLE_PACKETS = 200

SOCKET_POINTS = {"skb_copy_datagram_iovec": "copied to a socket",
                 "__udp_enqueue_schedule_skb": "queued to a UDP socket"}
QUEUE_POINTS = set(SOCKET_POINTS) - {"skb_copy_datagram_iovec"}
LOCAL_POINTS = {"ip_local_deliver", "udp_rcv", "tcp_v4_rcv", "icmp_rcv", "ip6_input",
                "udpv6_rcv", "tcp_v6_rcv", "icmpv6_rcv"}
FREE_POINTS = {"consume_skb"}
TAP_POINTS = {"packet_rcv", "tpacket_rcv"}
RX_POINTS = {"netif_rx", "netif_receive_skb", "__netif_receive_skb", "napi_gro_receive",
             "napi_gro_receive_entry", "netif_receive_skb_entry", "br_handle_frame",
             "ip_rcv", "ipv6_rcv"}
TX_POINTS = {"net_dev_queue", "net_dev_start_xmit", "__dev_queue_xmit", "dev_queue_xmit",
             "dev_hard_start_xmit", "br_dev_xmit"}
CROSS_POINTS = RX_POINTS | TX_POINTS
LANDMARKS = {"br_forward", "__br_forward", "br_pass_frame_up", "ip_rcv", "ipv6_rcv",
             "ip_forward", "ip6_forward", "ip_output", "ip6_output",
             "netif_receive_skb", "net_dev_queue"}
FORWARD_POINTS = {"ip_forward", "ip6_forward"}
BRIDGE_POINTS = {"br_forward", "__br_forward"}
# every name above: an --all/--func function of one of these names is told as
# name() (a plain path row), so the story means the same with --all as without
STORY_POINTS = (set(SOCKET_POINTS) | LOCAL_POINTS | FREE_POINTS | TAP_POINTS | CROSS_POINTS
                | LANDMARKS)


def story_name(name, extra):
    """The name the story knows a probe by: extra (--all/--func) functions
    named like one of its points are only path rows."""
    return name + "()" if extra and name in STORY_POINTS else name


def sees_after_receive(visible):
    """Can a run with these probe points see what happens after a device
    received a packet (local delivery, socket queues)?"""
    return bool(visible & (LOCAL_POINTS | QUEUE_POINTS))


def stopped_after(stopped_by):
    """'10 s' when --duration stopped the trace (stopped_by: DURATION_STOP's
    text), else None."""
    head = DURATION_STOP.split("%")[0]
    if isinstance(stopped_by, str) and stopped_by.startswith(head):
        return stopped_by[len(head):]
    return None
