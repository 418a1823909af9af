/*
 * skbtracer.c - the eBPF half of skbtracer.py.
 *
 * skbtracer.py prepends a block of #defines (struct layouts, filters, modes)
 * and appends one line per probe point (ROUTE_KPROBE(...), ...). Run
 * `skbtracer.py --ebpf` to see the complete program for your kernel.
 *
 * Struct layouts: by default every field offset comes from the running
 * kernel's BTF (L_<NAME>_OFF/_SIZE, and _SHIFT/_BITS for bitfields), so no
 * kernel struct header is included and the offsets are right even when the
 * installed headers belong to another kernel. With SKBT_LAYOUT_HEADERS the
 * same macros are computed from the installed headers instead (kernels
 * without BTF).
 */
#include <uapi/linux/ptrace.h>

/* compile-time bounds of struct spans (the layouts' offsets are constants) */
#define MIN_OF(a, b) ((a) < (b) ? (a) : (b))
#define MAX_OF(a, b) ((a) > (b) ? (a) : (b))
/* where a layout's field ends; a field out of bytes read from start at once */
#define L_END(F) (L_##F##_OFF + L_##F##_SIZE)
#define SPAN_AT(span, start, F) ({ u64 __v = 0; \
    __builtin_memcpy(&__v, (span) + L_##F##_OFF - (start), L_##F##_SIZE); __v; })

#ifdef SKBT_LAYOUT_HEADERS
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
/* include/linux/bpf.h of newer kernels sizes these uapi types, which the
 * bpf.h bundled with bcc 0.26 does not define yet */
struct bpf_rb_root { __u64 __opaque[2]; } __attribute__((aligned(8)));
struct bpf_rb_node { __u64 __opaque[4]; } __attribute__((aligned(8)));
struct bpf_refcount { __u32 __opaque[1]; } __attribute__((aligned(4)));
struct bpf_wq { __u64 __opaque[2]; } __attribute__((aligned(8)));
#endif
#include <linux/skbuff.h>
#include <linux/netdevice.h>
#include <net/sock.h>
#include <net/net_namespace.h>
#include <linux/netfilter.h>
#include <linux/netfilter/x_tables.h>
#include <net/netfilter/nf_tables.h>
#if IS_ENABLED(CONFIG_NF_CONNTRACK)
#include <net/netfilter/nf_conntrack.h>
#endif
#define LAYOUT(name, type, member) \
    enum { L_##name##_OFF = offsetof(type, member), \
           L_##name##_SIZE = sizeof(((type *)0)->member) };
LAYOUT(SKB_LEN, struct sk_buff, len)
LAYOUT(SKB_DEV, struct sk_buff, dev)
LAYOUT(SKB_SK, struct sk_buff, sk)
LAYOUT(SKB_HEAD, struct sk_buff, head)
LAYOUT(SKB_DATA, struct sk_buff, data)
LAYOUT(SKB_TAIL, struct sk_buff, tail)
LAYOUT(SKB_NETWORK_HEADER, struct sk_buff, network_header)
LAYOUT(SKB_MAC_HEADER, struct sk_buff, mac_header)
LAYOUT(SKB_PROTOCOL, struct sk_buff, protocol)
LAYOUT(DEV_NAME, struct net_device, name)
LAYOUT(DEV_IFINDEX, struct net_device, ifindex)
LAYOUT(DEV_NET, struct net_device, nd_net.net)
LAYOUT(NET_INUM, struct net, ns.inum)
LAYOUT(SK_NET, struct sock, __sk_common.skc_net.net)
LAYOUT(STATE_HOOK, struct nf_hook_state, hook)
LAYOUT(STATE_PF, struct nf_hook_state, pf)
LAYOUT(XT_TABLE_NAME, struct xt_table, name)
LAYOUT(NFT_PKT_SKB, struct nft_pktinfo, skb)
LAYOUT(NFT_PKT_STATE, struct nft_pktinfo, state)
LAYOUT(NFT_CHAIN_TABLE, struct nft_chain, table)
LAYOUT(NFT_CHAIN_NAME, struct nft_chain, name)
LAYOUT(NFT_TABLE_NAME, struct nft_table, name)
#if IS_ENABLED(CONFIG_NF_CONNTRACK)
LAYOUT(SKB_NFCT, struct sk_buff, _nfct)
#define CT_READ_NFCT 1
LAYOUT(CT_STATUS, struct nf_conn, status)
LAYOUT(CT_TUPLEHASH, struct nf_conn, tuplehash)
LAYOUT(CT_HASH_TUPLE, struct nf_conntrack_tuple_hash, tuple)
LAYOUT(TUPLE_SRC_ADDR, struct nf_conntrack_tuple, src.u3)
LAYOUT(TUPLE_SRC_PORT, struct nf_conntrack_tuple, src.u.all)
LAYOUT(TUPLE_DST_ADDR, struct nf_conntrack_tuple, dst.u3)
LAYOUT(TUPLE_DST_PORT, struct nf_conntrack_tuple, dst.u.all)
LAYOUT(TUPLE_L4PROTO, struct nf_conntrack_tuple, dst.protonum)
#define CT_READ_CONN 1
#ifdef CONFIG_NF_CONNTRACK_MARK
LAYOUT(CT_MARK, struct nf_conn, mark)
#define CT_READ_MARK 1
#endif
#ifdef CONFIG_NF_CONNTRACK_ZONES
LAYOUT(CT_ZONE, struct nf_conn, zone.id)
#define CT_READ_ZONE 1
#endif
#endif /* CONFIG_NF_CONNTRACK */
#if defined(ROUTE_DECISIONS) || defined(ROUTE6_DECISIONS)
#include <net/ip_fib.h>
LAYOUT(NHC_DEV, struct fib_nh_common, nhc_dev)
LAYOUT(NHC_OIF, struct fib_nh_common, nhc_oif)
LAYOUT(NHC_GW_FAMILY, struct fib_nh_common, nhc_gw_family)
LAYOUT(NHC_GW, struct fib_nh_common, nhc_gw)
#endif
#ifdef ROUTE_DECISIONS
LAYOUT(FLOW4_IIF, struct flowi4, flowi4_iif)
LAYOUT(FLOW4_PROTO, struct flowi4, flowi4_proto)
LAYOUT(FLOW4_SADDR, struct flowi4, saddr)
LAYOUT(FLOW4_DADDR, struct flowi4, daddr)
LAYOUT(FLOW4_SPORT, struct flowi4, fl4_sport)
LAYOUT(FLOW4_DPORT, struct flowi4, fl4_dport)
LAYOUT(NH_PARENT, struct fib_nh, nh_parent)
LAYOUT(FIB_TYPE, struct fib_info, fib_type)
#endif
#ifdef ROUTE6_DECISIONS
#include <net/ip6_fib.h>
LAYOUT(FLOW6_IIF, struct flowi6, flowi6_iif)
LAYOUT(FLOW6_PROTO, struct flowi6, flowi6_proto)
LAYOUT(FLOW6_SADDR, struct flowi6, saddr)
LAYOUT(FLOW6_DADDR, struct flowi6, daddr)
LAYOUT(FLOW6_SPORT, struct flowi6, fl6_sport)
LAYOUT(FLOW6_DPORT, struct flowi6, fl6_dport)
LAYOUT(RES6_NH, struct fib6_result, nh)
LAYOUT(RES6_F6I, struct fib6_result, f6i)
LAYOUT(RES6_TYPE, struct fib6_result, fib6_type)
LAYOUT(TABLE6_ID, struct fib6_table, tb6_id)
LAYOUT(F6I_DST, struct fib6_info, fib6_dst.addr)
LAYOUT(F6I_PLEN, struct fib6_info, fib6_dst.plen)
LAYOUT(NET_FIB6_NULL, struct net, ipv6.fib6_null_entry)
#endif
#ifdef NEIGH_WAITS
#include <net/neighbour.h>
LAYOUT(NEIGH_STATE, struct neighbour, nud_state)
LAYOUT(NEIGH_QUEUE, struct neighbour, arp_queue)
LAYOUT(NEIGH_QUEUE_TAIL, struct neighbour, arp_queue.prev)
LAYOUT(NEIGH_TBL, struct neighbour, tbl)
LAYOUT(NEIGH_TBL_FAMILY, struct neigh_table, family)
/* a flexible array: no size */
enum { L_NEIGH_KEY_OFF = offsetof(struct neighbour, primary_key), L_NEIGH_KEY_SIZE = 0 };
#endif
/* the sk_buff fields find_packet reads, in one read as with BTF's
 * L_SKB_SPAN_* (layout.SPAN_FIELDS); since 4.x they lie within 32 bytes */
#define SKB_SPAN_OFF MIN_OF(MIN_OF(L_SKB_PROTOCOL_OFF, L_SKB_NETWORK_HEADER_OFF), \
                            MIN_OF(L_SKB_MAC_HEADER_OFF, MIN_OF(L_SKB_HEAD_OFF, L_SKB_DATA_OFF)))
#define SKB_SPAN_LEN (MAX_OF(MAX_OF(L_END(SKB_PROTOCOL), L_END(SKB_NETWORK_HEADER)), \
                             MAX_OF(L_END(SKB_MAC_HEADER), \
                                    MAX_OF(L_END(SKB_HEAD), L_END(SKB_DATA)))) \
                      - SKB_SPAN_OFF)
_Static_assert(SKB_SPAN_LEN <= 64, "struct sk_buff's header fields are too far apart");
/* pkt_type is a 3-bit field right after the __pkt_type_offset marker */
enum { L_SKB_PKT_TYPE_OFF = offsetof(struct sk_buff, __pkt_type_offset),
       L_SKB_PKT_TYPE_SIZE = 1, L_SKB_PKT_TYPE_SHIFT = 0, L_SKB_PKT_TYPE_BITS = 3 };

#else /* layouts from BTF: skbtracer_lib/program/layout.py says which conntrack fields it found */
#ifdef HAVE_CT_NFCT
#define CT_READ_NFCT 1
#endif
#ifdef HAVE_CT_CONN
#define CT_READ_CONN 1
#endif
#ifdef HAVE_CT_MARK
#define CT_READ_MARK 1
#endif
#ifdef HAVE_CT_ZONE
#define CT_READ_ZONE 1
#endif
#endif /* SKBT_LAYOUT_HEADERS */
#ifdef L_SKB_SPAN_LEN
#define SKB_SPAN_OFF L_SKB_SPAN_OFF
#define SKB_SPAN_LEN L_SKB_SPAN_LEN
#endif
#if defined(CT_MATCH) && defined(CT_READ_CONN)
#define CT_MATCHING 1       /* -H, --proto, -P: the connection's original tuple too */
#endif
#if defined(FILTER_CT_STATES) && !defined(CT_READ_NFCT)
#error "--ct-state: the kernel headers have no conntrack (CONFIG_NF_CONNTRACK is off)"
#endif
#if defined(FILTER_CT_MARK) && !defined(CT_READ_MARK)
#error "--ct-mark: the kernel headers have no conntrack mark (CONFIG_NF_CONNTRACK or CONFIG_NF_CONNTRACK_MARK is off)"
#endif
#if defined(FILTER_CT_ZONE) && !defined(CT_READ_ZONE)
#error "--ct-zone: the kernel headers have no conntrack zones (CONFIG_NF_CONNTRACK or CONFIG_NF_CONNTRACK_ZONES is off)"
#endif

#ifdef CT_READ_CONN
/* struct nf_conn: tuplehash[0].tuple is the original direction's tuple,
 * tuplehash[1].tuple the reply's; the fields read_ct copies lie together,
 * so they are read in one go (CT_SPAN_*) */
#ifdef CT_READ_MARK
#define CT_MARK_LO L_CT_MARK_OFF
#define CT_MARK_HI (L_CT_MARK_OFF + L_CT_MARK_SIZE)
#else
#define CT_MARK_LO L_CT_STATUS_OFF
#define CT_MARK_HI L_CT_STATUS_OFF
#endif
#ifdef CT_READ_ZONE
#define CT_ZONE_LO L_CT_ZONE_OFF
#define CT_ZONE_HI (L_CT_ZONE_OFF + L_CT_ZONE_SIZE)
#else
#define CT_ZONE_LO L_CT_STATUS_OFF
#define CT_ZONE_HI L_CT_STATUS_OFF
#endif
#define CT_ORIG_OFF (L_CT_TUPLEHASH_OFF + L_CT_HASH_TUPLE_OFF)
#define CT_REPLY_OFF (L_CT_TUPLEHASH_OFF + L_CT_TUPLEHASH_SIZE / 2 + L_CT_HASH_TUPLE_OFF)
#define CT_SPAN_OFF MIN_OF(MIN_OF(L_CT_TUPLEHASH_OFF, L_CT_STATUS_OFF), \
                           MIN_OF(CT_MARK_LO, CT_ZONE_LO))
#define CT_SPAN_END MAX_OF(MAX_OF(L_CT_TUPLEHASH_OFF + L_CT_TUPLEHASH_SIZE, \
                                  L_CT_STATUS_OFF + L_CT_STATUS_SIZE), \
                           MAX_OF(CT_MARK_HI, CT_ZONE_HI))
#define CT_SPAN_LEN (CT_SPAN_END - CT_SPAN_OFF)
/* nf_conn keeps them within ~200 bytes; more would not fit the stack */
_Static_assert(CT_SPAN_LEN <= 256, "struct nf_conn's fields are too far apart");
#define CT_FIELD(span, F) ({ u64 __v = 0; \
    __builtin_memcpy(&__v, (span) + L_##F##_OFF - CT_SPAN_OFF, L_##F##_SIZE); __v; })
#endif

/* Read a scalar field (at most 8 bytes) of a kernel object. */
#define KREAD(obj, F) ({ u64 __v = 0; \
    bpf_probe_read_kernel(&__v, L_##F##_SIZE, (void *)(obj) + L_##F##_OFF); __v; })
#define KREAD_PTR(obj, F) ((void *)KREAD(obj, F))
#define KREAD_BITS(obj, F) ((KREAD(obj, F) >> L_##F##_SHIFT) & ((1 << L_##F##_BITS) - 1))

/* A cause seen without its skb (a conntrack failure, a route lookup) and
 * tied to the packet's next row on the same CPU: older than this, it was
 * another packet's. The call chain between the two takes microseconds, but
 * the first time the code runs in an emulated guest it took over 1 ms (a
 * conntrack insert failure went unnamed); what an old cause can still tie
 * to is the same skb (conntrack) or the same flow on the same CPU (routes). */
#define SAME_CHAIN_NS 1000000000

#define KIND_ROUTE   1
#define KIND_IPTABLE 2
#define KIND_DROP    3
#define KIND_WHY     4
/* --on-trouble: what made a record be told (bits of struct flight's troubled) */
#define TROUBLE_DROP      1
#define TROUBLE_DUPLICATE 2
#define TROUBLE_SLOW      4
/* --why rows (KIND_WHY): what the packet made the stack send back */
#define WHY_ICMP 1
#define WHY_RESET 2
#define WHY_NEIGH 3         /* queued, waiting for its neighbour (ARP/ND) to resolve */
/* IPVS decisions (ipvs_known) */
#define IPVS_CHOSE 1        /* a real server, for a new connection */
#define IPVS_NO_DEST 2      /* none: the scheduler found no real server */

#define ETH_HLEN        14
#define MAC_UNSET       0xffff  /* (u16)~0U: mac/network header not set */
#define PROTO_IPV4_BE   0x0008  /* htons(ETH_P_IP) on this little-endian host */
#define PROTO_IPV6_BE   0xdd86  /* htons(ETH_P_IPV6) */
#define PROTO_8021Q_BE  0x0081  /* htons(ETH_P_8021Q) */
#define PROTO_8021AD_BE 0xa888  /* htons(ETH_P_8021AD) */
#define VLAN_HLEN       4

/* One row. skbtracer_lib/events.py mirrors this layout byte for byte. */
struct event_t {
    u64 ts_ns;          /* bpf_ktime_get_ns() */
    u64 skb;
    u64 location;       /* drop rows: where the skb was freed */
    u32 netns;
    u32 ifindex;
    u32 pid;
    u32 drop_reason;
    u32 verdict;
    s32 stack_id;
    u32 tcp_seq;        /* network byte order, as are the 16-bit fields below */
    u32 len;
    u16 probe;          /* index into skbtracer.py's probe list */
    u16 ip_id;
    u16 sport;
    u16 dport;
    u16 icmp_id;
    u8  kind;
    u8  pkt_type;
    u8  family;         /* 4 or 6 */
    u8  l4proto;
    u8  tcp_flags;
    u8  icmp_type;
    u8  ttl;
    u8  pf;
    u8  hook;
    u8  ct_fault;       /* drop rows: CT_FAULT_*, a drop conntrack itself decided; 0: none */
    char ifname[16];
    u8  dmac[6];
    u8  smac[6];
    u8  saddr[16];
    u8  daddr[16];
    char table[32];
    char chain[32];
    /* conntrack (read_ct): the skb's entry and what it holds */
    u64 ct;             /* skb->_nfct: the nf_conn's address | ctinfo (low 3 bits); 0: none */
    u32 ct_status;      /* IPS_* bits (the low 32 of status) */
    u32 ct_mark;
    u16 ct_zone;
    u16 ct_orig_sport;  /* network byte order: the tuples' ports (ICMP: the echo id) */
    u16 ct_orig_dport;
    u16 ct_reply_sport;
    u16 ct_reply_dport;
    u8  ct_l4proto;     /* the original tuple's protocol */
    u8  ct_known;       /* CT_KNOWN_*: what of the nf_conn was read */
    u8  ct_orig_saddr[16];
    u8  ct_orig_daddr[16];
    u8  ct_reply_saddr[16];
    u8  ct_reply_daddr[16];
    /* --why rows (KIND_WHY): what the stack sent back because of this packet */
    u32 why_info;       /* ICMP: the error's info (the MTU of frag needed), kprobes only */
    u8  why;            /* WHY_ICMP, WHY_RESET */
    u8  why_type;       /* ICMP: the error's type and code */
    u8  why_code;
    /* --why: the routing decision this packet's next row took (take_route) */
    u32 route_table;    /* the table the deciding lookup searched (RT_TABLE_MAIN 254...) */
    s32 route_err;      /* its result: 0, or -EAGAIN (no match), -EINVAL (blackhole)... */
    u32 route_oif;      /* the next hop's device (its ifindex, and name below) */
    u32 route_iif;      /* the flow's input device (1, loopback, for output routes) */
    u8  route_known;    /* ROUTE_KNOWN: the fields above hold a decision; | ROUTE_HAS_PREFIX */
    u8  route_type;     /* the route's RTN_* type (its fib_info's); 0: not read */
    u8  route_gw_family; /* AF_INET/AF_INET6: route_gw holds a gateway; 0: none */
    u8  route_prefix_len; /* IPv6: the route's prefix (fib6_dst); IPv4's lookups do not tell it */
    char route_dev[16];
    u8  route_gw[16];
    u8  route_prefix[16];
    /* --iptable: the IPVS decision a row carries (on_ipvs_schedule_return) */
    u8  ipvs_raddr[16]; /* the real server chosen */
    u16 ipvs_rport;     /* network byte order */
    u8  ipvs_known;     /* IPVS_CHOSE, IPVS_NO_DEST; 0: no decision on this row */
    u8  ipvs_fwd;       /* the connection's forwarding method (flags & IP_VS_CONN_F_FWD_MASK) */
    u8  ipvs_daf;       /* the real server's family (AF_INET, AF_INET6) */
    char ipvs_sched[16]; /* the virtual service's scheduler: rr, wlc, ... */
    /* an encapsulated packet (find_inner): the row's packet fields are the
     * inner packet's, these the outer (IPv4) header's */
    u32 tunnel_id;      /* VXLAN, Geneve: the VNI */
    u16 tunnel_sport;   /* network byte order; VXLAN, Geneve: the outer UDP ports */
    u16 tunnel_dport;
    u8  tunnel_saddr[4];
    u8  tunnel_daddr[4];
    u8  tunnel;         /* TUNNEL_*; 0: not encapsulated */
    /* --why: the neighbour the packet waited for (neigh_take, WHY_NEIGH rows) */
    u32 neigh_waited_us; /* drop rows: from its queueing to the drop */
    u8  neigh_family;   /* AF_INET (ARP), AF_INET6 (ND); 0: no neighbour told */
    u8  neigh_state;    /* NUD_* at the row: INCOMPLETE queued, FAILED dropped... */
    u8  neigh_addr[16];
    /* --on-trouble: the first row told of a record that outgrew its
     * RECORDER_SIGHTINGS: how many earlier sightings were not kept */
    u32 unkept;
};
#define ROUTE_KNOWN      1
#define ROUTE_HAS_PREFIX 2
#define ROUTE_REVERSE    4  /* rp_filter's lookup of the way back to the source (IP_RPFILTER drops) */
#define CT_KNOWN_CONN 1     /* status, tuples */
#define CT_KNOWN_MARK 2
#define CT_KNOWN_ZONE 4

/* the event prepare() builds; payload: what --on-trouble tells copies of
 * one packet by (fill_packet), kept beside the event, not in it */
struct scratch_slot {
    struct event_t e;
    u64 payload;
};
BPF_PERCPU_ARRAY(scratch, struct scratch_slot, 1);
#ifdef RING_BUFFER_PAGES
/* 5.8+: one ring for all CPUs, which skbtracer_lib/reader.py reads in
 * batches straight from its mmapped pages */
BPF_RINGBUF_OUTPUT(events, RING_BUFFER_PAGES);
#else
BPF_PERF_OUTPUT(events);
#endif
/* Events the ring had no room for. The ring buffer has no lost records at
 * all; the perf buffer writes them only ahead of the next event that fits
 * on the same CPU: a run that ends right after an overflow would
 * under-count without this. */
BPF_PERCPU_ARRAY(lost_events, u64, 1);
#if defined(STACK_ALL) || defined(STACK_DROPS)
BPF_STACK_TRACE(stacks, STACK_ENTRIES);
#endif
#ifdef CAPTURE_BYTES
/* -w: a row's event, then its packet bytes as the skb held them (from the
 * Ethernet header when there is one, else from the IP header), up to
 * CAPTURE_BYTES (--snaplen, at most what a per-CPU map value holds).
 * skbtracer_lib/capture.py reads the head after the event. */
struct capture_head {
    u32 wire_len;       /* the packet's length from where the bytes start */
    u16 len;            /* bytes that follow */
    u16 linktype;       /* pcap LINKTYPE_ETHERNET or LINKTYPE_RAW */
};
struct capture_t {
    u64 from;           /* kernel address the bytes start at (read_macs) */
    struct event_t e;
    struct capture_head head;
    u8 bytes[CAPTURE_BYTES];
};
BPF_PERCPU_ARRAY(captures, struct capture_t, 1);
#define LINKTYPE_ETHERNET 1
#define LINKTYPE_RAW      101
#endif
#ifdef KEEP
/* skbs that matched once: followed until freed (--keep) */
BPF_HASH(keep_skbs, u64, u8, KEEP_ENTRIES);
#endif

/* Find the IP header: right after an in-band VLAN tag when there is one,
 * else where network_header says, else at data (receive paths), else right
 * after an Ethernet header at data (transmit paths). The version nibble
 * must agree with skb->protocol. */
static __always_inline void *find_l3(void *head, void *data, u16 nh, void *after_tag,
                                     u8 family, u8 *hdr)
{
    void *candidates[3] = { after_tag ? after_tag : nh != MAC_UNSET ? head + nh : 0,
                            data, data + ETH_HLEN };
#pragma unroll
    for (int i = 0; i < 3; i++) {
        void *p = candidates[i];
        if (!p)
            continue;
        /* IPv4 too: 40 bytes, so that a tunnel's UDP and VXLAN headers come with it */
        int err = bpf_probe_read_kernel(hdr, 40, p);
        if (!err && (hdr[0] >> 4) == family)
            return p;
    }
    return 0;
}

/* Where find_packet found the packet, for read_macs and the expression. */
struct layers {
    void *head;
    void *data;
    void *l3;
    u32 tail;           /* offset of the linear data's end, when the span has it */
    u16 mac_header;
#ifdef CT_READ_NFCT
    u64 nfct;           /* skb->_nfct, when nfct_read says it was read */
    u8 nfct_read;
#endif
#ifdef L_SKB_SPAN_HAS_VLAN
    u16 vlan_proto;     /* the offloaded tag, when the span has it (expressions) */
    u16 vlan_tci;
    u8 vlan_present;
#endif
};

/* Ethernet header: at data when the IP header follows it directly
 * (transmit), else where mac_header points (receive); 0 when none. */
static __always_inline void *ethernet_header(struct layers *at)
{
    u16 mh = at->mac_header;
    if (at->l3 == at->data + ETH_HLEN)
        return at->data;
    if (mh != MAC_UNSET && at->head + mh + ETH_HLEN <= at->l3)
        return at->head + mh;
    return 0;
}

/* Where the skb's linear data ends (tail is an offset on 64-bit kernels);
 * from the sk_buff span read when it holds tail. */
static __always_inline void *linear_end(void *skb, struct layers *at)
{
#ifdef L_SKB_SPAN_HAS_TAIL
    return at->head + at->tail;
#else
    return at->head + (u32)KREAD(skb, SKB_TAIL);
#endif
}

#ifdef SKB_SPAN_LEN
/* protocol, the header offsets, head and data sit close together in struct
 * sk_buff: their span (SKB_SPAN_*) is read once instead of five times */
#define SPAN_FIELD(span, F) ({ u64 __v = 0; \
    __builtin_memcpy(&__v, (span) + L_##F##_OFF - SKB_SPAN_OFF, L_##F##_SIZE); __v; })
#endif

/* TP_BTF: the tracepoint programs are loaded as BTF-typed raw tracepoints
 * (skbtracer_lib/program/tp_btf.py), whose verifier knows the skb argument
 * is a struct sk_buff: find_packet reads its fields by plain loads there,
 * no helper call. DIRECT_SKB is what they pass as prepare()'s direct. */
#ifdef TP_BTF
#define DIRECT_SKB 1
#else
#define DIRECT_SKB 0
#endif
/* A field by a plain load of its own size, in assembly: bcc would turn a
 * C dereference of a pointer from the context into bpf_probe_read calls,
 * and clang could merge neighbours into one load, which the verifier
 * refuses for crossing a member's end. */
#define DLOAD(width, obj, off) ({ u64 __v; \
    asm volatile("%0 = *(u" #width " *)(%1 + %2)" : "=r"(__v) : "r"(obj), "i"(off)); __v; })
#define DREAD(obj, F) (L_##F##_SIZE == 1 ? DLOAD(8, obj, L_##F##_OFF) : \
                       L_##F##_SIZE == 2 ? DLOAD(16, obj, L_##F##_OFF) : \
                       L_##F##_SIZE == 4 ? DLOAD(32, obj, L_##F##_OFF) : DLOAD(64, obj, L_##F##_OFF))

/* -H: is one of the packet's two addresses the one given? Asked of the IP
 * header as read (prepare, before the event slot is even looked up: most
 * packets stop here) and, with --keep, of the event (filter_packet). */
static __always_inline int address_match(u8 family, u8 *saddr, u8 *daddr)
{
#ifdef FILTER_ADDR4
    if (family != 4 || (*(u32 *)saddr != FILTER_ADDR4 && *(u32 *)daddr != FILTER_ADDR4))
        return 0;
#endif
#ifdef FILTER_ADDR6_0
    if (family != 6)
        return 0;
    /* copied, not loaded through u64 pointers: after find_inner the
     * verifier may follow this path with an IPv4 header's 4-aligned
     * addresses, and refuses misaligned 8-byte stack loads (6.1) */
    u64 s[2], d[2];
    __builtin_memcpy(s, saddr, 16);
    __builtin_memcpy(d, daddr, 16);
    if (!(s[0] == FILTER_ADDR6_0 && s[1] == FILTER_ADDR6_1) &&
        !(d[0] == FILTER_ADDR6_0 && d[1] == FILTER_ADDR6_1))
        return 0;
#endif
    return 1;
}

/* IPv6 extension headers fill_packet walks before it gives up on the upper
 * protocol (then the last one's number is told) */
#define IP6_EXT_HEADERS_MAX 4

/* Where the addresses are in an IPv4 (20 bytes) or IPv6 (40) header */
#define IP_SADDR(family, hdr) ((family) == 4 ? &(hdr)[12] : &(hdr)[8])
#define IP_DADDR(family, hdr) ((family) == 4 ? &(hdr)[16] : &(hdr)[24])

#ifdef PCAP_FILTER
/* ------------------------------------------------------------------ */
/* A tcpdump filter expression, translated by skbtracer_lib/pcapfilter.py
 * from libpcap's classic BPF into pcap_match_l2 (the packet from its
 * Ethernet header) and pcap_match_l3 (from its IP header), which read
 * the packet through pcap_load. */

/* @pcap-runtime-begin@ plain C: tests/unit/test_pcapfilter.py compiles
 * it natively against libpcap's own interpreter */
#ifdef PCAP_INSERT_TAG
#define PCAP_TAG_INSERTED(v) ((v)->tag != 0)
#else
#define PCAP_TAG_INSERTED(v) 0
#endif
/* PCAP_CHUNK: bytes of the view read at once, what the expression's loads need */
struct pcap_view {
    u8 buf[PCAP_CHUNK + 4]; /* the view's first bytes; +4: masked word loads stay inside */
    u64 start;              /* where the view starts in kernel memory */
    u32 caplen;             /* bytes of the view in the skb's linear part */
    u32 wirelen;            /* the packet's length from start (BPF_LEN) */
    u32 buffered;           /* bytes of the view in buf */
    u32 tag;                /* an offloaded 802.1Q tag (TPID << 16 | TCI); 0: none */
};

/* buf = the view's first bytes; bytes past caplen are read but never
 * loaded. An expression compiled as tcpdump does on Linux asks for an
 * offloaded tag (v->tag) itself; otherwise (PCAP_INSERT_TAG) the tag is
 * put back where tcpdump shows it in a file, at offset 12. */
static __always_inline void pcap_fill(struct pcap_view *v)
{
    v->buffered = 0;
    if (PCAP_TAG_INSERTED(v)) {
        if (bpf_probe_read_kernel(v->buf, 12, (void *)v->start) ||
            bpf_probe_read_kernel(v->buf + 16, PCAP_CHUNK - 16, (void *)(v->start + 12)))
            return;
        v->buf[12] = v->tag >> 24;
        v->buf[13] = v->tag >> 16;
        v->buf[14] = v->tag >> 8;
        v->buf[15] = v->tag;
    } else if (bpf_probe_read_kernel(v->buf, PCAP_CHUNK, (void *)v->start)) {
        return;
    }
    v->buffered = v->caplen < PCAP_CHUNK ? v->caplen : PCAP_CHUNK;
}

/* *out = the size (1, 2, 4) bytes at off, big-endian as in classic BPF;
 * 0 (reject) when they lie past the linear data */
static __always_inline int pcap_load(struct pcap_view *v, u32 off, u32 size, u32 *out)
{
    u8 b[4] = {};
    if ((u64)off + size > v->caplen)
        return 0;
    if ((u64)off + size <= v->buffered) {
        u32 i = off & (PCAP_CHUNK - 1);
        b[0] = v->buf[i];
        if (size > 1) {
            b[1] = v->buf[i + 1];
        }
        if (size > 2) {
            b[2] = v->buf[i + 2];
            b[3] = v->buf[i + 3];
        }
    } else {
        /* past buf (long headers): straight from the skb */
        u64 src = v->start + off;
        if (PCAP_TAG_INSERTED(v)) {
            if (off < 16)
                return 0;   /* buf could not be read */
            src -= 4;
        }
        if (bpf_probe_read_kernel(b, size, (void *)src))
            return 0;
    }
    if (size == 1)
        *out = b[0];
    else if (size == 2)
        *out = (u32)b[0] << 8 | b[1];
    else
        *out = (u32)b[0] << 24 | (u32)b[1] << 16 | (u32)b[2] << 8 | b[3];
    return 1;
}
/* @pcap-runtime-end@ */

/* @pcap-functions@ skbtracer.py puts the translated expression here */

BPF_PERCPU_ARRAY(pcap_views, struct pcap_view, 1);

/* Does the view from start (an Ethernet header if l2, else an IP header)
 * to the linear data's end match the expression? tag: an offloaded 802.1Q
 * tag (pcap_view.tag), for the outer Ethernet header only. */
static __always_inline int pcap_view_match(struct pcap_view *v, void *skb, struct layers *at,
                                           void *start, void *end, int l2, u32 tag)
{
    if (end <= start)
        return 0;
    v->start = (u64)start;
    v->caplen = end - start;
#ifdef PCAP_NEEDS_LEN
    v->wirelen = (u32)KREAD(skb, SKB_LEN) + (at->data - start);
#endif
    v->tag = tag;
    if (tag && PCAP_TAG_INSERTED(v)) {
        v->caplen += 4;
        v->wirelen += 4;
    }
    pcap_fill(v);
    return l2 ? pcap_match_l2(v) : pcap_match_l3(v);
}

/* Does the packet match the expression? From its Ethernet header where it
 * has one, else from its IP header; an encapsulated packet (inner: its
 * inner IP header, find_inner's) also from its inner Ethernet header
 * (VXLAN, Geneve: inner_l2) or its inner IP header (IPIP, SIT). */
static __always_inline int pcap_filter(void *skb, struct layers *at, void *inner, int inner_l2)
{
    int zero = 0;
    struct pcap_view *v = pcap_views.lookup(&zero);
    if (!v)
        return 0;
    void *eth = ethernet_header(at);
    void *end = linear_end(skb, at);
    u32 tag = 0;
#ifdef L_SKB_VLAN_TCI_OFF
    if (eth) {
#ifdef L_SKB_SPAN_HAS_VLAN
        u32 tci = at->vlan_tci;
        u32 tpid = at->vlan_proto;
#else
        u32 tci = KREAD(skb, SKB_VLAN_TCI);
        u32 tpid = KREAD(skb, SKB_VLAN_PROTO);
#endif
#if defined(L_SKB_VLAN_PRESENT_BITS) && defined(L_SKB_SPAN_HAS_VLAN)
        int present = at->vlan_present;
#elif defined(L_SKB_VLAN_PRESENT_BITS)
        int present = KREAD_BITS(skb, SKB_VLAN_PRESENT);
#else
        int present = tpid != 0;    /* 6.2+: vlan_all != 0 */
#endif
        if (present)
            tag = (u32)((tpid & 0xff) << 8 | tpid >> 8) << 16 | tci;
    }
#endif
    if (pcap_view_match(v, skb, at, eth ? eth : at->l3, end, eth != 0, tag))
        return 1;
    if (!inner)
        return 0;   /* not encapsulated: one compare more than before */
    return pcap_view_match(v, skb, at, inner_l2 ? inner - ETH_HLEN : inner, end, inner_l2, 0);
}
#endif /* PCAP_FILTER */

/* Find skb's IP header and read it into hdr (40 bytes); the family (4 or
 * 6), or 0 when skb is not an IP packet. Two reads for most packets: the
 * sk_buff's span (SKB_SPAN_*), then the header; one where direct (a
 * tp_btf program's skb: its fields by plain loads). */
static __always_inline u8 find_packet(void *skb, struct layers *at, u8 *hdr, int direct)
{
#ifdef SKB_SPAN_LEN
    u8 span[SKB_SPAN_LEN];
    if (!direct && bpf_probe_read_kernel(span, sizeof(span), skb + SKB_SPAN_OFF))
        return 0;
#define SKB_FIELD(F) (direct ? DREAD(skb, F) : SPAN_FIELD(span, F))
#else
#define SKB_FIELD(F) (direct ? DREAD(skb, F) : KREAD(skb, F))
#endif
    u16 proto = SKB_FIELD(SKB_PROTOCOL);
    void *head = (void *)SKB_FIELD(SKB_HEAD);
    void *data = (void *)SKB_FIELD(SKB_DATA);
    u16 nh = SKB_FIELD(SKB_NETWORK_HEADER);
    at->mac_header = SKB_FIELD(SKB_MAC_HEADER);
#ifdef L_SKB_SPAN_HAS_TAIL
    at->tail = SKB_FIELD(SKB_TAIL);
#endif
#ifdef L_SKB_SPAN_HAS_NFCT
    at->nfct = SKB_FIELD(SKB_NFCT);
    at->nfct_read = 1;
#elif defined(CT_READ_NFCT)
    if (direct) {   /* free here; nfct_of would read it with a helper call (-H's conn_match) */
        at->nfct = DREAD(skb, SKB_NFCT);
        at->nfct_read = 1;
    }
#endif
#ifdef L_SKB_SPAN_HAS_VLAN
    at->vlan_proto = SKB_FIELD(SKB_VLAN_PROTO);
    at->vlan_tci = SKB_FIELD(SKB_VLAN_TCI);
#ifdef L_SKB_VLAN_PRESENT_BITS
    at->vlan_present = (SKB_FIELD(SKB_VLAN_PRESENT) >> L_SKB_VLAN_PRESENT_SHIFT) &
                       ((1 << L_SKB_VLAN_PRESENT_BITS) - 1);
#endif
#endif
#undef SKB_FIELD
    void *after_tag = 0;
    if (proto == PROTO_8021Q_BE || proto == PROTO_8021AD_BE) {
        /* a VLAN tag in the frame (not offloaded): TCI, then the inner type */
        void *eth = at->mac_header != MAC_UNSET ? head + at->mac_header : data;
        u16 tag[2];
        if (bpf_probe_read_kernel(tag, sizeof(tag), eth + ETH_HLEN))
            return 0;
        proto = tag[1];
        after_tag = eth + ETH_HLEN + VLAN_HLEN;
    }
    /* a local, not e->family: clang must not re-read it after the calls */
    u8 family;
    if (proto == PROTO_IPV4_BE)
        family = 4;
    else if (proto == PROTO_IPV6_BE)
        family = 6;
    else
        return 0;

    void *l3 = find_l3(head, data, nh, after_tag, family, hdr);
    if (!l3)
        return 0;
    at->head = head;
    at->data = data;
    at->l3 = l3;
    return family;
}

/* An encapsulated packet's outer header, as find_inner saw it */
struct tunnel_outer {
    u32 id;
    u16 sport;
    u16 dport;
    u8 saddr[4];
    u8 daddr[4];
    u8 type;            /* TUNNEL_*, 0: none */
};
#define VXLAN_HLEN 8
#define UDP_HLEN   8
#define ETH_P_TEB_BE 0x5865     /* htons(ETH_P_TEB): Geneve carrying Ethernet */

/* -H on an encapsulated packet's outer IPv4 header: a compare of its own,
 * never address_match's IPv6 path (the verifier refused that path's 8-byte
 * loads from the outer addresses' 4-byte places on the stack where clang
 * shared one inlined body between the two calls: 6.1, -H IPv6 --proto icmp) */
static __always_inline int outer_address_match(struct tunnel_outer *t)
{
#ifdef FILTER_ADDR4
    u32 saddr, daddr;
    __builtin_memcpy(&saddr, t->saddr, 4);
    __builtin_memcpy(&daddr, t->daddr, 4);
    return saddr == FILTER_ADDR4 || daddr == FILTER_ADDR4;
#else
    return 0;           /* an IPv6 -H: no IPv4 outer header is one of its */
#endif
}

/* Is the IP header find_packet read (hdr) an IPv4 tunnel's outer one: UDP
 * to a VXLAN_PORT or GENEVE_PORT, IPIP or SIT, not a non-first fragment,
 * without options (then hdr holds the UDP, VXLAN/Geneve headers too)? Then
 * one more read: the inner IP header replaces the outer in hdr, t keeps
 * the outer, *l3 is the inner header's address; the inner family. Else 0
 * and nothing read: a few compares on what hdr holds. */
static __always_inline u8 find_inner(u8 family, u8 *hdr, void **l3, struct tunnel_outer *t)
{
    u8 proto = hdr[9];
    if (proto != 17 && proto != 4 && proto != 41)
        return 0;
    if (family != 4 || hdr[0] != 0x45 || ((hdr[6] & 0x1f) | hdr[7]))
        return 0;
    u16 dport = *(u16 *)&hdr[22];
    u32 skip;           /* from the outer IP header to the inner one */
    u8 type, ethernet = 1;
    if (proto == 4 || proto == 41) {
        type = proto == 4 ? TUNNEL_IPIP : TUNNEL_SIT;
        skip = 20;
        ethernet = 0;
    } else if (VXLAN_PORT(dport)) {
        type = TUNNEL_VXLAN;
        skip = 20 + UDP_HLEN + VXLAN_HLEN + ETH_HLEN;
    } else if (GENEVE_PORT(dport) && *(u16 *)&hdr[30] == ETH_P_TEB_BE) {
        type = TUNNEL_GENEVE;
        skip = 20 + UDP_HLEN + 8 + (hdr[28] & 0x3f) * 4;  /* + its options */
        skip += ETH_HLEN;
    } else
        return 0;
    /* from 4 bytes before the inner header: the inner Ethernet type, then
     * the inner header 4-aligned (address_match loads words) */
    u8 buf[44];
    void *inner = *l3 + skip;
    if (bpf_probe_read_kernel(buf, sizeof(buf), inner - 4))
        return 0;
    u8 inner_family = buf[4] >> 4;
    u16 ethertype = *(u16 *)&buf[2];
    if (inner_family == 4 ? (ethernet ? ethertype != PROTO_IPV4_BE : type != TUNNEL_IPIP)
        : inner_family == 6 ? (ethernet ? ethertype != PROTO_IPV6_BE : type != TUNNEL_SIT) : 1)
        return 0;
    t->type = type;
    t->id = type == TUNNEL_VXLAN || type == TUNNEL_GENEVE ?
            (u32)hdr[32] << 16 | (u32)hdr[33] << 8 | hdr[34] : 0;
    t->sport = type == TUNNEL_VXLAN || type == TUNNEL_GENEVE ? *(u16 *)&hdr[20] : 0;
    t->dport = type == TUNNEL_VXLAN || type == TUNNEL_GENEVE ? dport : 0;
    __builtin_memcpy(t->saddr, &hdr[12], 4);
    __builtin_memcpy(t->daddr, &hdr[16], 4);
    __builtin_memcpy(hdr, &buf[4], 40);
    *l3 = inner;
    return inner_family;
}

/* The packet fields of e, from the IP header find_packet read (hdr) and
 * the transport header after it. */
static __always_inline void fill_packet(struct event_t *e, u8 family, u8 *hdr, void *l3,
                                        u64 *payload)
{
    __builtin_memset(e, 0, sizeof(*e));
    e->family = family;

    void *l4;
    int fragment = 0;
    if (family == 4) {
        e->ip_id = *(u16 *)&hdr[4];
        e->ttl = hdr[8];
        e->l4proto = hdr[9];
        __builtin_memcpy(e->saddr, &hdr[12], 4);
        __builtin_memcpy(e->daddr, &hdr[16], 4);
        fragment = (hdr[6] & 0x1f) | hdr[7];  /* fragment offset != 0 */
        l4 = l3 + (hdr[0] & 0xf) * 4;
    } else {
        e->l4proto = hdr[6];
        e->ttl = hdr[7];
        __builtin_memcpy(e->saddr, &hdr[8], 16);
        __builtin_memcpy(e->daddr, &hdr[24], 16);
        l4 = l3 + 40;
    }

    u8 l4hdr[16] = {};
    if (!fragment)
        bpf_probe_read_kernel(l4hdr, sizeof(l4hdr), l4);
    /* IPv6 extension headers, walked to the upper protocol (an MLD report's
     * hop-by-hop header, a fragment header): each read's first bytes are the
     * next header's; one more read per extension header, none without. */
#pragma unroll
    for (int i = 0; i < IP6_EXT_HEADERS_MAX; i++) {
        if (family != 6 || fragment)
            break;
        u8 next = e->l4proto;
        u32 len;
        if (next == 0 || next == 43 || next == 60)      /* hop-by-hop, routing, destination options */
            len = (l4hdr[1] + 1) * 8;
        else if (next == 51)                            /* authentication header */
            len = (l4hdr[1] + 2) * 4;
        else if (next == 44) {                          /* fragment: its offset's 13 bits */
            len = 8;
            fragment = (l4hdr[2] << 5) | (l4hdr[3] >> 3);
        } else
            break;
        e->l4proto = l4hdr[0];
        l4 += len;
        if (!fragment)
            bpf_probe_read_kernel(l4hdr, sizeof(l4hdr), l4);
    }

    /* the transport header's bytes 8-15: a UDP datagram's first payload
     * bytes, an echo's, a TCP segment's ack, flags and window; with the
     * headers' fields they tell two datagrams of one socket apart (whose
     * IP ids are 0 with DF) */
    *payload = *(u64 *)&l4hdr[8];
    if (!fragment) {
        if (e->l4proto == 6 || e->l4proto == 17) {  /* TCP, UDP */
            e->sport = *(u16 *)&l4hdr[0];
            e->dport = *(u16 *)&l4hdr[2];
            if (e->l4proto == 6) {
                e->tcp_seq = *(u32 *)&l4hdr[4];
                e->tcp_flags = l4hdr[13];
            }
        } else if (e->l4proto == 1 || e->l4proto == 58) {  /* ICMP, ICMPv6 */
            e->icmp_type = l4hdr[0];
            e->icmp_id = *(u16 *)&l4hdr[4];
        }
    }
}

/* -w: where submit() copies the packet from (the Ethernet header read_macs
 * found, else the IP header) and how much of it is linear data. */
static __always_inline void note_capture(void *skb, struct event_t *e, struct layers *at,
                                         void *eth)
{
#ifdef CAPTURE_BYTES
    int zero = 0;
    struct capture_t *c = captures.lookup(&zero);
    if (!c)
        return;
    void *from = eth ? eth : at->l3;
    void *end = linear_end(skb, at);
    s64 avail = end - from;
    c->from = (u64)from;
    c->head.linktype = eth ? LINKTYPE_ETHERNET : LINKTYPE_RAW;
    c->head.wire_len = e->len + (at->data - from);      /* skb->len counts from data */
    c->head.len = avail <= 0 ? 0 : avail < CAPTURE_BYTES ? avail : CAPTURE_BYTES;
#endif
}

/* Read only for packets that passed the filters. */
static __always_inline void read_macs(void *skb, struct event_t *e, struct layers *at)
{
    void *eth = ethernet_header(at);
    if (eth) {
        bpf_probe_read_kernel(e->dmac, 6, eth);
        bpf_probe_read_kernel(e->smac, 6, eth + 6);
    }
    note_capture(skb, e, at, eth);
}

/* Everything but the packet: device, namespace, skb facts. */
static __always_inline void fill_context(void *skb, struct event_t *e)
{
    void *dev = KREAD_PTR(skb, SKB_DEV);
    void *net = 0;
    if (dev) {
        bpf_probe_read_kernel(e->ifname, sizeof(e->ifname), dev + L_DEV_NAME_OFF);
        e->ifindex = KREAD(dev, DEV_IFINDEX);
        net = KREAD_PTR(dev, DEV_NET);
    } else {
        void *sk = KREAD_PTR(skb, SKB_SK);
        if (sk)
            net = KREAD_PTR(sk, SK_NET);
    }
    if (net)
        e->netns = KREAD(net, NET_INUM);
    e->pkt_type = KREAD_BITS(skb, SKB_PKT_TYPE);
    e->len = KREAD(skb, SKB_LEN);
}

/* ------------------------------------------------------------------ */
/* Conntrack: skb->_nfct is the skb's nf_conn | its ctinfo (low 3 bits:
 * IP_CT_ESTABLISHED 0, RELATED 1, NEW 2, +3 in the reply direction,
 * UNTRACKED 7 with no nf_conn); 0: no entry (not yet seen by conntrack,
 * or conntrack found it INVALID). */
#define CT_INFO_MASK      7ULL
#define CT_INFO_UNTRACKED 7

/* --ct-state's classes, as bits of FILTER_CT_STATES (config: CT_STATES) */
static __always_inline u32 ct_state_bit(u64 nfct)
{
    u32 info = nfct & CT_INFO_MASK;
    if (!nfct)
        return 8;                       /* inv: no entry */
    if (info == CT_INFO_UNTRACKED)
        return 16;                      /* untracked */
    if (info == 2 || info == 5)
        return 1;                       /* new */
    if (info == 1 || info == 4)
        return 4;                       /* rel */
    return 2;                           /* est: ESTABLISHED, ESTABLISHED_REPLY */
}

/* The nf_conn's status, mark, zone and tuples into the event: one read
 * (CT_SPAN_*), only for events that passed the filters. */
static __always_inline void read_ct(struct event_t *e)
{
#ifdef CT_READ_CONN
    void *conn = (void *)(e->ct & ~CT_INFO_MASK);
    if (!conn)
        return;
    u8 span[CT_SPAN_LEN];
    if (bpf_probe_read_kernel(span, sizeof(span), conn + CT_SPAN_OFF))
        return;
    e->ct_status = CT_FIELD(span, CT_STATUS);
    u8 *orig = span + CT_ORIG_OFF - CT_SPAN_OFF;
    u8 *reply = span + CT_REPLY_OFF - CT_SPAN_OFF;
    __builtin_memcpy(e->ct_orig_saddr, orig + L_TUPLE_SRC_ADDR_OFF, 16);
    __builtin_memcpy(e->ct_orig_daddr, orig + L_TUPLE_DST_ADDR_OFF, 16);
    __builtin_memcpy(e->ct_reply_saddr, reply + L_TUPLE_SRC_ADDR_OFF, 16);
    __builtin_memcpy(e->ct_reply_daddr, reply + L_TUPLE_DST_ADDR_OFF, 16);
    __builtin_memcpy(&e->ct_orig_sport, orig + L_TUPLE_SRC_PORT_OFF, 2);
    __builtin_memcpy(&e->ct_orig_dport, orig + L_TUPLE_DST_PORT_OFF, 2);
    __builtin_memcpy(&e->ct_reply_sport, reply + L_TUPLE_SRC_PORT_OFF, 2);
    __builtin_memcpy(&e->ct_reply_dport, reply + L_TUPLE_DST_PORT_OFF, 2);
    e->ct_l4proto = orig[L_TUPLE_L4PROTO_OFF];
    e->ct_known = CT_KNOWN_CONN;
#ifdef CT_READ_MARK
    e->ct_mark = CT_FIELD(span, CT_MARK);
    e->ct_known |= CT_KNOWN_MARK;
#endif
#ifdef CT_READ_ZONE
    e->ct_zone = CT_FIELD(span, CT_ZONE);
    e->ct_known |= CT_KNOWN_ZONE;
#endif
#endif
}

/* skb->_nfct: from find_packet's span where it holds it, else read once. */
static __always_inline u64 nfct_of(void *skb, struct layers *at)
{
#ifdef CT_READ_NFCT
    if (!at->nfct_read) {
        at->nfct = KREAD(skb, SKB_NFCT);
        at->nfct_read = 1;
    }
    return at->nfct;
#else
    return 0;
#endif
}

#ifdef CT_READ_CONN
/* A conntrack tuple's addresses, ports and protocol (struct
 * nf_conntrack_tuple's src.u3, src.u.all, dst.u3, dst.u.all, dst.protonum),
 * read in one go: what -H, --proto and -P ask of a connection, and what
 * ties a failed entry to its drop. */
#define CT_TUPLE_LEN MAX_OF(MAX_OF(L_TUPLE_SRC_ADDR_OFF + 16, L_TUPLE_DST_ADDR_OFF + 16), \
                            MAX_OF(MAX_OF(L_TUPLE_SRC_PORT_OFF + 2, L_TUPLE_DST_PORT_OFF + 2), \
                                   L_TUPLE_L4PROTO_OFF + 1))
struct ct_tuple {
    u64 saddr[2];       /* aligned: address_match loads them as words (dst.u3 lies at 20) */
    u64 daddr[2];
    u16 sport;          /* network byte order; ICMP: the echo id */
    u16 dport;
    u8 l4proto;
};

static __always_inline int read_tuple(void *tuple, struct ct_tuple *t)
{
    u8 raw[CT_TUPLE_LEN];
    if (bpf_probe_read_kernel(raw, sizeof(raw), tuple))
        return 0;
    __builtin_memcpy(t->saddr, raw + L_TUPLE_SRC_ADDR_OFF, 16);
    __builtin_memcpy(t->daddr, raw + L_TUPLE_DST_ADDR_OFF, 16);
    __builtin_memcpy(&t->sport, raw + L_TUPLE_SRC_PORT_OFF, 2);
    __builtin_memcpy(&t->dport, raw + L_TUPLE_DST_PORT_OFF, 2);
    t->l4proto = raw[L_TUPLE_L4PROTO_OFF];
    return 1;
}
#endif

/* Are the address pair a -> b (two words each: an IPv4 address in the
 * first 4 bytes, zeros after) the pair s -> d? */
static __always_inline int same_addresses(u64 *a, u64 *b, u64 *s, u64 *d)
{
    return a[0] == s[0] && a[1] == s[1] && b[0] == d[0] && b[1] == d[1];
}

/* --proto and -P, of a packet's headers or a connection's tuple (sport and
 * dport 0 where the protocol has no ports) */
static __always_inline int proto_port_match(u8 family, u8 l4proto, u16 sport, u16 dport)
{
#ifdef FILTER_L4PROTO
    if (l4proto != FILTER_L4PROTO)
        return 0;
#endif
#ifdef FILTER_ICMP
    if (!(family == 4 && l4proto == 1) && !(family == 6 && l4proto == 58))
        return 0;
#endif
#ifdef FILTER_PORT
    if (sport != FILTER_PORT && dport != FILTER_PORT)
        return 0;
#endif
    return 1;
}

#ifdef CT_MATCHING
/* Does the original tuple of the skb's connection match -H, --proto and
 * -P? Its destination is a Service's address and port before DNAT, so the
 * requests after DNAT and the replies before the un-NAT (which share the
 * entry) match too. Asked only of packets whose headers did not match: no
 * entry costs nothing more when the span holds _nfct (else one read), an
 * entry one read of the tuple. */
#define CT_OWN_PACKETS 3    /* ct_state_bit's new | est: the connection's own packets */
static __always_inline int conn_match(void *skb, struct layers *at, u8 family)
{
    u64 nfct = nfct_of(skb, at);
    void *conn = (void *)(nfct & ~CT_INFO_MASK);
    if (!conn || !(ct_state_bit(nfct) & CT_OWN_PACKETS))
        return 0;       /* RELATED: an ICMP error or a helper's data, not the connection's */
    struct ct_tuple t;
    if (!read_tuple(conn + CT_ORIG_OFF, &t))
        return 0;
    if (!address_match(family, (u8 *)t.saddr, (u8 *)t.daddr))
        return 0;
    int ported = t.l4proto == 6 || t.l4proto == 17;     /* as fill_packet reads ports */
    return proto_port_match(family, t.l4proto, ported ? t.sport : 0, ported ? t.dport : 0);
}
#endif

#ifdef CT_MATCHING
/* The translated tuples of connections conn_match found: a packet that
 * crosses a veth into a pod loses its conntrack entry (the kernel scrubs it
 * between namespaces), so in the pod neither its headers (the endpoint's
 * address) nor its connection say it is the Service's. Its headers equal a
 * translated tuple seen before, in either direction: that is the
 * connection, and it is wanted. A few slots, reused oldest first; global,
 * not per CPU, so that the pod's side (any CPU) sees what the node's side
 * learned. A packet -H rejects pays one inlined array lookup and, once
 * something is learned, a compare per slot; no helper call. */
#define LEARNED_SLOTS 8
struct learned_tuple {
    u64 saddr[2];
    u64 daddr[2];
    u16 sport;
    u16 dport;
    u8 l4proto;
    u8 family;          /* 0: an empty slot */
};
struct learned_set {
    u32 next;           /* the slot the next tuple takes */
    struct learned_tuple t[LEARNED_SLOTS];
};
BPF_ARRAY(learned, struct learned_set, 1);

/* Do these header addresses belong to a learned tuple (either direction)? */
static __always_inline int learned_addresses(u8 family, u8 *saddr, u8 *daddr)
{
    int zero = 0;
    struct learned_set *set = learned.lookup(&zero);
    if (!set || !set->next)
        return 0;       /* nothing learned yet (slots fill from the first): no compares */
    u64 s[2] = {}, d[2] = {};
    __builtin_memcpy(s, saddr, 4);
    __builtin_memcpy(d, daddr, 4);
    if (family == 6) {
        __builtin_memcpy(s, saddr, 16);
        __builtin_memcpy(d, daddr, 16);
    }
#pragma unroll
    for (int i = 0; i < LEARNED_SLOTS; i++) {
        struct learned_tuple *t = &set->t[i];
        if (t->family != family)
            continue;
        if (same_addresses(t->saddr, t->daddr, s, d) || same_addresses(t->saddr, t->daddr, d, s))
            return 1;
    }
    return 0;
}

/* Is the event's whole tuple a learned one (either direction)? */
static __always_inline int learned_match(struct event_t *e)
{
    int zero = 0;
    struct learned_set *set = learned.lookup(&zero);
    if (!set)
        return 0;
    u64 s[2], d[2];
    __builtin_memcpy(s, e->saddr, 16);
    __builtin_memcpy(d, e->daddr, 16);
#pragma unroll
    for (int i = 0; i < LEARNED_SLOTS; i++) {
        struct learned_tuple *t = &set->t[i];
        if (t->family != e->family || t->l4proto != e->l4proto)
            continue;
        if (same_addresses(t->saddr, t->daddr, s, d) && t->sport == e->sport && t->dport == e->dport)
            return 1;
        if (same_addresses(t->saddr, t->daddr, d, s) && t->sport == e->dport && t->dport == e->sport)
            return 1;
    }
    return 0;
}

/* Keep the event's tuple: its connection matched, its headers did not (they
 * were translated). Two CPUs learning at once may both take one slot: one
 * tuple is then lost, and learned again by the connection's next packet. */
static __always_inline void learn_tuple(struct event_t *e)
{
    if (learned_match(e))
        return;
    int zero = 0;
    struct learned_set *set = learned.lookup(&zero);
    if (!set)
        return;
    u32 slot = set->next % LEARNED_SLOTS;
    set->next = slot + 1;
    struct learned_tuple *t = &set->t[slot];
    __builtin_memcpy(t->saddr, e->saddr, 16);
    __builtin_memcpy(t->daddr, e->daddr, 16);
    t->sport = e->sport;
    t->dport = e->dport;
    t->l4proto = e->l4proto;
    t->family = e->family;
}
#endif

/* -H (with --keep: prepare left it to here), --proto and -P asked of one
 * of the packet's headers. */
static __always_inline int one_header_match(u8 family, u8 l4proto, u8 *saddr, u8 *daddr,
                                            u16 sport, u16 dport)
{
    if (!proto_port_match(family, l4proto, sport, dport))
        return 0;
#ifdef KEEP
    return address_match(family, saddr, daddr);
#else
    return 1;
#endif
}

/* ... of the packet's own headers: an encapsulated packet's inner ones or
 * its outer ones (UDP to the tunnel's port, IPIP, SIT) */
static __always_inline int header_match(struct event_t *e)
{
    if (one_header_match(e->family, e->l4proto, e->saddr, e->daddr, e->sport, e->dport))
        return 1;
    u8 tunnel = e->tunnel;
    if (!tunnel)
        return 0;
    u8 outer_l4 = tunnel == TUNNEL_IPIP ? 4 : tunnel == TUNNEL_SIT ? 41 : 17;
    return one_header_match(4, outer_l4, e->tunnel_saddr, e->tunnel_daddr,
                            e->tunnel_sport, e->tunnel_dport);
}

/* How -H, --proto and -P matched a packet */
#define MATCHED_HEADERS 1
#define MATCHED_CONN    2   /* the connection's original tuple */
#define MATCHED_LEARNED 3   /* a translated tuple of such a connection */

/* Filters given on the command line, compiled in as numbers; all but -N,
 * which needs the device (fill_context), checked on what fill_packet read
 * so that non-matching packets cost as few reads as possible. -H, --proto
 * and -P: the headers, else (CT_MATCHING) the connection's original tuple,
 * else a learned tuple; matched: what prepare found already (0: nothing
 * yet). Returns MATCHED_*, 0 when the packet is not wanted. */
static __always_inline int filter_packet(struct event_t *e, void *skb, struct layers *at,
                                         int matched)
{
#ifdef FILTER_PID
    if (e->pid != FILTER_PID)
        return 0;
#endif
#ifdef FILTER_ICMPID
    if (e->icmp_id != FILTER_ICMPID)
        return 0;
#endif
    if (matched == MATCHED_CONN)
        return matched;
#ifdef CT_MATCHING
    if (matched == MATCHED_LEARNED)
        return learned_match(e) ? matched : 0;
#endif
    if (header_match(e))
        return MATCHED_HEADERS;
#ifdef CT_MATCHING
    if (conn_match(skb, at, e->family))
        return MATCHED_CONN;
    return learned_match(e) ? MATCHED_LEARNED : 0;
#else
    return 0;
#endif
}

/* Build the event for skb in the per-CPU scratch slot; NULL when the skb
 * is not IP or does not pass the filters (and is not being kept). A packet
 * -H or the expression rejects costs two helper calls (find_packet's
 * reads; one where direct, in a tp_btf program): the pid and the slot are
 * asked for only after them; with CT_MATCHING a third, the connection's
 * tuple, where the skb has an entry (its _nfct came with find_packet's
 * span or plain loads, or costs one more). */
static __always_inline struct event_t *prepare(void *skb, u16 probe, u8 kind, int force,
                                               int direct)
{
    if (!skb)
        return 0;
#ifdef FILTER_PID
    u32 pid = bpf_get_current_pid_tgid() >> 32;
#ifndef KEEP
    if (!force && pid != FILTER_PID)
        return 0;  /* the cheapest reject first */
#endif
#endif
    struct layers at = {};
#ifdef KEEP
    int check_address = 0;      /* a kept skb passes whatever its addresses */
#else
    int check_address = !force;
#endif
    u8 hdr[40] = {};
    u8 family = find_packet(skb, &at, hdr, direct);
    if (!family)
        return 0;
    /* encapsulated: the row shows the inner packet (hdr, family, l3 now
     * its), -H matches it or the outer header; at keeps the outer one (the
     * expression, the capture, the MAC addresses) */
    struct tunnel_outer tun = {};
    void *l3 = at.l3;
    u8 inner_family = find_inner(family, hdr, &l3, &tun);
    if (inner_family)
        family = inner_family;
    int matched = 0;            /* MATCHED_*: how -H matched, where not by the headers */
    if (check_address && !address_match(family, IP_SADDR(family, hdr), IP_DADDR(family, hdr))
        && !(tun.type && outer_address_match(&tun))) {
#ifdef CT_MATCHING
        if (conn_match(skb, &at, family))
            matched = MATCHED_CONN;
        else if (learned_addresses(family, IP_SADDR(family, hdr), IP_DADDR(family, hdr)))
            matched = MATCHED_LEARNED;
        else
            return 0;
#else
        return 0;
#endif
    }
#ifdef PCAP_FILTER
    /* an encapsulated packet's inner headers (l3) too */
    void *pcap_inner = tun.type ? l3 : 0;
    int pcap_inner_l2 = tun.type == TUNNEL_VXLAN || tun.type == TUNNEL_GENEVE;
    if (check_address && !pcap_filter(skb, &at, pcap_inner, pcap_inner_l2))
        return 0;   /* before the transport header is read, as -H */
#endif
    /* the packet is wanted (or may be): only now is the event slot used */
    int zero = 0;
    struct scratch_slot *slot = scratch.lookup(&zero);
    if (!slot)
        return 0;
    struct event_t *e = &slot->e;
    fill_packet(e, family, hdr, l3, &slot->payload);
    if (tun.type) {
        e->tunnel = tun.type;
        e->tunnel_id = tun.id;
        e->tunnel_sport = tun.sport;
        e->tunnel_dport = tun.dport;
        __builtin_memcpy(e->tunnel_saddr, tun.saddr, 4);
        __builtin_memcpy(e->tunnel_daddr, tun.daddr, 4);
    }
#ifdef FILTER_PID
    e->pid = pid;
#endif

    u64 key = (u64)skb;
#ifdef KEEP
    u8 *kept = keep_skbs.lookup(&key);
    if (kept && *kept)  /* read, not only tested: clang must not OR the pointer into force */
        force = 1;
#endif
    if (!force) {
        matched = filter_packet(e, skb, &at, matched);
        if (!matched)
            return 0;
    }
#if defined(PCAP_FILTER) && defined(KEEP)
    if (!force && !pcap_filter(skb, &at, pcap_inner, pcap_inner_l2))
        return 0;   /* without --keep, applied before the event slot was used */
#endif
    fill_context(skb, e);
#ifdef FILTER_NETNS
    if (!force && !FILTER_NETNS(e->netns))
        return 0;
#endif
#ifdef CT_READ_NFCT
    e->ct = nfct_of(skb, &at);
#endif
#ifdef FILTER_CT_STATES
    if (!force && !(ct_state_bit(e->ct) & FILTER_CT_STATES))
        return 0;
#endif
    read_ct(e);
    /* --ct-mark, --ct-zone: an skb without an entry, or whose nf_conn could
     * not be read, does not match */
#ifdef FILTER_CT_MARK
    if (!force && (!(e->ct_known & CT_KNOWN_MARK)
                   || (e->ct_mark & FILTER_CT_MARK_MASK) != FILTER_CT_MARK))
        return 0;
#endif
#ifdef FILTER_CT_ZONE
    if (!force && (!(e->ct_known & CT_KNOWN_ZONE) || e->ct_zone != FILTER_CT_ZONE))
        return 0;
#endif
    read_macs(skb, e, &at);
#ifdef CT_MATCHING
    if (matched == MATCHED_CONN)
        learn_tuple(e);
#endif
#ifdef KEEP
    u8 one = 1;
    keep_skbs.update(&key, &one);
#endif
#ifndef FILTER_PID
    e->pid = bpf_get_current_pid_tgid() >> 32;
#endif
    e->ts_ns = bpf_ktime_get_ns();
    e->skb = key;
    e->probe = probe;
    e->kind = kind;
    e->stack_id = -1;
    return e;
}

#ifdef CAPTURE_BYTES
/* The event, then the packet bytes note_capture() located: a variable
 * size, bounded by CAPTURE_BYTES for the verifier. */
static __always_inline int capture_submit(void *ctx, struct event_t *e)
{
    int zero = 0;
    struct capture_t *c = captures.lookup(&zero);
    if (!c)
        return -1;
    __builtin_memcpy(&c->e, e, sizeof(*e));
    u32 len = c->head.len;
    if (len > CAPTURE_BYTES)
        len = CAPTURE_BYTES;
    if (len && bpf_probe_read_kernel(c->bytes, len, (void *)c->from))
        len = 0;
    c->head.len = len;
#ifdef RING_BUFFER_PAGES
    return events.ringbuf_output(&c->e, sizeof(c->e) + sizeof(c->head) + len, 0);
#else
    return events.perf_submit(ctx, &c->e, sizeof(c->e) + sizeof(c->head) + len);
#endif
}
#endif

/* ------------------------------------------------------------------ */
/* --why: the routing decision. fib:fib_table_lookup(tb_id, flp, nhc, err)
 * fires once for each table an IPv4 lookup searches (local, then the
 * rules' tables), fib6:fib6_table_lookup(net, res, table, flp) once for each
 * table an IPv6 lookup searches, with no skb. ip_route_input_noref,
 * ip_route_output and their IPv6 peers run in the packet's own call chain,
 * so the lookups are kept per CPU (the last FIB_SEEN, both families) and
 * the first row submitted after them on that CPU whose packet has the
 * lookup's addresses (a source of 0: an output route before its source was
 * chosen) and its protocol and ports (where the lookup has them: TCP and
 * UDP output routes; input routes have none) takes the newest: the table
 * that decided, after the tables that had no match. A lookup the other way
 * (rp_filter's, the reply's route of an ICMP error) has the addresses
 * swapped and is no packet's; one without an input device
 * (inet_addr_type's: is this address local?) is no routing decision. A
 * normal free (consume_skb) takes one only when its skb had the row just
 * before the lookup, of a packet to the same destination: else it is a
 * clone freed on the way (neigh_probe's, perhaps at the address of a
 * packet's skb freed before), not where the decision went. Older than
 * SAME_CHAIN_NS: not this packet's. */
#if defined(ROUTE_DECISIONS) || defined(ROUTE6_DECISIONS)
#define FIB_SEEN 8          /* a power of two; custom rules: 2 tables each way, and rp_filter's */
struct fib_lookup_seen {
    u64 ts_ns;          /* 0: taken, or unreadable */
    u64 after;          /* the skb of the row submitted just before it on this CPU, if
                         * that row's packet has the lookup's destination; else 0 */
    u64 dev;            /* the next hop's struct net_device: its name read when taken */
    u64 info;           /* IPv4: its struct fib_info: the route's type read when taken */
    u64 saddr[2];       /* an IPv4 address in the first 4 bytes, zeros after */
    u64 daddr[2];
    u16 sport;          /* network byte order; 0: the lookup had none */
    u16 dport;
    u32 table;
    s32 err;
    u32 oif;
    u32 iif;
    u8 family;          /* 4 or 6 */
    u8 proto;
    u8 gw_family;
    u8 rtn;             /* IPv6: the route's type (fib6_result's); IPv4 reads it from info */
    u8 prefix_len;      /* IPv6: the route's prefix; 0xff: not known */
    u8 gw[16];
    u8 prefix[16];
};
struct fib_lookups {
    struct fib_lookup_seen seen[FIB_SEEN];
    /* the last lookup that found an error route (blackhole, unreachable,
     * prohibit), kept apart: the ICMP error sent before the drop makes
     * lookups of its own (IPv6: 8 and more) that push it out of seen */
    struct fib_lookup_seen error;
    u64 last_skb;       /* the skb of the last row submitted on this CPU */
    u64 last_daddr[2];  /* and its packet's destination */
    /* kprobes: an ICMP error being sent (__icmp_send, icmp6_send entered,
     * not yet returned) because of a packet to icmp_daddr: its relookups of
     * that packet's way (XFRM's, on IPv4) are not that packet's decision */
    u64 icmp_ts;
    u64 icmp_daddr[2];
    u32 next;           /* where the next lookup goes (mod FIB_SEEN) */
};
BPF_PERCPU_ARRAY(fib_lookups, struct fib_lookups, 1);

/* Is a lookup to daddr ICMP's own, made while it sends an error because of
 * a packet to daddr? Bounded by SAME_CHAIN_NS should a return be missed. */
static __always_inline int icmp_own_lookup(struct fib_lookups *l, u64 daddr0, u64 daddr1)
{
    return l->icmp_ts && l->icmp_daddr[0] == daddr0 && l->icmp_daddr[1] == daddr1 &&
           bpf_ktime_get_ns() - l->icmp_ts < SAME_CHAIN_NS;
}

/* struct fib_nh_common from its start (nhc_dev) to the gateway's end, and
 * for IPv4's struct fib_nh on to nh_parent; a nexthop object's (ip
 * nexthop) has no nh_parent: the type is not read */
#ifdef ROUTE_DECISIONS
#define NHC_SPAN_LEN MAX_OF(L_NHC_GW_OFF + 16, L_NH_PARENT_OFF + 8)
#else
#define NHC_SPAN_LEN (L_NHC_GW_OFF + 16)
#endif
_Static_assert(NHC_SPAN_LEN <= 160, "struct fib_nh grew");

/* A slot for a lookup with an input device, its next hop (nhc) read */
static __always_inline struct fib_lookup_seen *fib_seen_slot(struct fib_lookups *l, void *nhc)
{
    struct fib_lookup_seen *s = &l->seen[l->next & (FIB_SEEN - 1)];
    l->next++;
    u8 nh[NHC_SPAN_LEN] = {};
    if (nhc)
        bpf_probe_read_kernel(nh, sizeof(nh), nhc);
    s->dev = SPAN_AT(nh, 0, NHC_DEV);
    s->oif = SPAN_AT(nh, 0, NHC_OIF);
    s->gw_family = SPAN_AT(nh, 0, NHC_GW_FAMILY);
    __builtin_memcpy(s->gw, nh + L_NHC_GW_OFF, 16);
#ifdef ROUTE_DECISIONS
    s->info = SPAN_AT(nh, 0, NH_PARENT);
#endif
    s->rtn = 0;
    s->prefix_len = 0xff;
    return s;
}

/* The slot is filled: the row before it is this packet's when it has its
 * destination (a clone freed later at that row's reused address is not) */
static __always_inline void fib_seen_done(struct fib_lookups *l, struct fib_lookup_seen *s)
{
    s->after = l->last_daddr[0] == s->daddr[0] && l->last_daddr[1] == s->daddr[1] ?
               l->last_skb : 0;
    s->ts_ns = bpf_ktime_get_ns();
    /* IPv4: the error's errno (-EAGAIN: no match in this table); IPv6: the type */
    if (s->family == 4 ? s->err && s->err != -11 : s->rtn >= 6 && s->rtn <= 8)
        __builtin_memcpy(&l->error, s, sizeof(*s));
}
#endif

#ifdef ROUTE_DECISIONS
/* the struct flowi4 fields read at once */
#define FLOW4_SPAN_OFF MIN_OF(MIN_OF(L_FLOW4_IIF_OFF, L_FLOW4_PROTO_OFF), \
                              MIN_OF(MIN_OF(L_FLOW4_SADDR_OFF, L_FLOW4_DADDR_OFF), \
                                     MIN_OF(L_FLOW4_SPORT_OFF, L_FLOW4_DPORT_OFF)))
#define FLOW4_SPAN_LEN (MAX_OF(MAX_OF(L_END(FLOW4_IIF), L_END(FLOW4_PROTO)), \
                               MAX_OF(MAX_OF(L_END(FLOW4_SADDR), L_END(FLOW4_DADDR)), \
                                      MAX_OF(L_END(FLOW4_SPORT), L_END(FLOW4_DPORT)))) \
                        - FLOW4_SPAN_OFF)
_Static_assert(FLOW4_SPAN_LEN <= 128, "struct flowi4 grew");

/* two reads: the flow, and the next hop where there is one */
int on_fib_lookup(struct bpf_raw_tracepoint_args *ctx)
{
    int zero = 0;
    struct fib_lookups *l = fib_lookups.lookup(&zero);
    if (!l)
        return 0;
    u8 flow[FLOW4_SPAN_LEN];
    if (bpf_probe_read_kernel(flow, sizeof(flow), (void *)ctx->args[1] + FLOW4_SPAN_OFF))
        return 0;
    u32 iif = SPAN_AT(flow, FLOW4_SPAN_OFF, FLOW4_IIF);
    if (!iif)
        return 0;       /* inet_addr_type's question, not a route for a packet */
    if (icmp_own_lookup(l, (u32)SPAN_AT(flow, FLOW4_SPAN_OFF, FLOW4_DADDR), 0))
        return 0;
    struct fib_lookup_seen *s = fib_seen_slot(l, (void *)ctx->args[2]);
    s->family = 4;
    s->saddr[0] = (u32)SPAN_AT(flow, FLOW4_SPAN_OFF, FLOW4_SADDR);
    s->daddr[0] = (u32)SPAN_AT(flow, FLOW4_SPAN_OFF, FLOW4_DADDR);
    s->saddr[1] = s->daddr[1] = 0;
    s->proto = SPAN_AT(flow, FLOW4_SPAN_OFF, FLOW4_PROTO);
    s->sport = SPAN_AT(flow, FLOW4_SPAN_OFF, FLOW4_SPORT);
    s->dport = SPAN_AT(flow, FLOW4_SPAN_OFF, FLOW4_DPORT);
    s->iif = iif;
    s->table = ctx->args[0];
    s->err = ctx->args[3];
    fib_seen_done(l, s);
    return 0;
}
#endif /* ROUTE_DECISIONS */

#ifdef ROUTE6_DECISIONS
/* the struct flowi6 fields read at once: the common part to the ports */
#define FLOW6_SPAN_OFF MIN_OF(MIN_OF(L_FLOW6_IIF_OFF, L_FLOW6_PROTO_OFF), \
                              MIN_OF(L_FLOW6_SADDR_OFF, L_FLOW6_DADDR_OFF))
#define FLOW6_SPAN_LEN (MAX_OF(MAX_OF(L_END(FLOW6_SPORT), L_END(FLOW6_DPORT)), \
                               MAX_OF(L_END(FLOW6_SADDR), L_END(FLOW6_DADDR))) \
                        - FLOW6_SPAN_OFF)
/* struct fib6_result: the next hop, the route, its type */
#define RES6_SPAN_LEN MAX_OF(MAX_OF(L_RES6_NH_OFF + 8, L_RES6_F6I_OFF + 8), L_RES6_TYPE_OFF + 1)
#define F6I_DST_SPAN_LEN (L_F6I_PLEN_OFF + L_F6I_PLEN_SIZE - L_F6I_DST_OFF)
_Static_assert(FLOW6_SPAN_LEN <= 128 && RES6_SPAN_LEN <= 64 && F6I_DST_SPAN_LEN <= 32,
               "struct flowi6/fib6_result/fib6_info grew");

/* fib6:fib6_table_lookup(net, res, table, flp): the flow, the result, the
 * table's id, the next hop, the route's prefix and the namespace's null
 * entry (no route in this table): six reads */
int on_fib6_lookup(struct bpf_raw_tracepoint_args *ctx)
{
    int zero = 0;
    struct fib_lookups *l = fib_lookups.lookup(&zero);
    if (!l)
        return 0;
    u8 flow[FLOW6_SPAN_LEN];
    if (bpf_probe_read_kernel(flow, sizeof(flow), (void *)ctx->args[3] + FLOW6_SPAN_OFF))
        return 0;
    u32 iif = SPAN_AT(flow, FLOW6_SPAN_OFF, FLOW6_IIF);
    if (!iif)
        return 0;       /* no packet's: output routes have the loopback's */
    u64 daddr6[2];
    __builtin_memcpy(daddr6, flow + L_FLOW6_DADDR_OFF - FLOW6_SPAN_OFF, 16);
    if (icmp_own_lookup(l, daddr6[0], daddr6[1]))
        return 0;
    u8 res[RES6_SPAN_LEN];
    if (bpf_probe_read_kernel(res, sizeof(res), (void *)ctx->args[1]))
        return 0;
    void *f6i = (void *)SPAN_AT(res, 0, RES6_F6I);
    struct fib_lookup_seen *s = fib_seen_slot(l, (void *)SPAN_AT(res, 0, RES6_NH));
    s->family = 6;
    __builtin_memcpy(s->saddr, flow + L_FLOW6_SADDR_OFF - FLOW6_SPAN_OFF, 16);
    __builtin_memcpy(s->daddr, flow + L_FLOW6_DADDR_OFF - FLOW6_SPAN_OFF, 16);
    s->proto = SPAN_AT(flow, FLOW6_SPAN_OFF, FLOW6_PROTO);
    s->sport = SPAN_AT(flow, FLOW6_SPAN_OFF, FLOW6_SPORT);
    s->dport = SPAN_AT(flow, FLOW6_SPAN_OFF, FLOW6_DPORT);
    s->iif = iif;
    s->table = KREAD(ctx->args[2], TABLE6_ID);
    s->rtn = SPAN_AT(res, 0, RES6_TYPE);
    s->err = 0;
    void *null_entry = KREAD_PTR(ctx->args[0], NET_FIB6_NULL);
    if (!f6i || f6i == null_entry) {
        s->err = -11;   /* -EAGAIN, as IPv4's lookups say no route in this table */
        s->rtn = 0;
        s->dev = 0;
        s->gw_family = 0;
    } else {
        u8 dst[F6I_DST_SPAN_LEN];
        if (!bpf_probe_read_kernel(dst, sizeof(dst), f6i + L_F6I_DST_OFF)) {
            __builtin_memcpy(s->prefix, dst, 16);
            s->prefix_len = SPAN_AT(dst, L_F6I_DST_OFF, F6I_PLEN);
        }
        if (s->gw_family == 0 && (s->gw[0] | s->gw[1]))
            s->gw_family = 10;  /* fib6_nh's gateway without nhc_gw_family (older kernels) */
    }
    fib_seen_done(l, s);
    return 0;
}
#endif /* ROUTE6_DECISIONS */

#if defined(ROUTE_DECISIONS) || defined(ROUTE6_DECISIONS)
/* Is s a lookup for the row e's packet (newer than SAME_CHAIN_NS)? Then it
 * is taken (used up), and the row's decision if it has none yet. */
static __always_inline void take_seen(struct event_t *e, struct fib_lookup_seen *s, u64 now,
                                      u64 *saddr, u64 *daddr, u16 sport, u16 dport)
{
    int ported = s->proto == 6 || s->proto == 17;   /* else uli holds no ports */
    if (!s->ts_ns || now - s->ts_ns > SAME_CHAIN_NS || s->family != e->family ||
        s->daddr[0] != daddr[0] || s->daddr[1] != daddr[1] ||
        ((s->saddr[0] | s->saddr[1]) && (s->saddr[0] != saddr[0] || s->saddr[1] != saddr[1])) ||
        (s->proto && s->proto != e->l4proto) ||
        (ported && s->sport && s->sport != sport) ||
        (ported && s->dport && s->dport != dport))
        return;
#ifdef CONSUME_PROBE_ID
    if (e->probe == CONSUME_PROBE_ID && s->after != e->skb)
        return;
#endif
    s->ts_ns = 0;
    if (e->route_known)
        return;
    e->route_known = ROUTE_KNOWN;
    e->route_table = s->table;
    e->route_err = s->err;
    e->route_oif = s->oif;
    e->route_iif = s->iif;
    e->route_gw_family = s->gw_family;
    __builtin_memcpy(e->route_gw, s->gw, 16);
    if (s->dev)
        bpf_probe_read_kernel(e->route_dev, sizeof(e->route_dev),
                              (void *)s->dev + L_DEV_NAME_OFF);
    e->route_type = s->rtn;
#ifdef ROUTE_DECISIONS
    if (s->info && s->family == 4)
        bpf_probe_read_kernel(&e->route_type, 1, (void *)s->info + L_FIB_TYPE_OFF);
#endif
    if (s->prefix_len <= 128) {
        e->route_known |= ROUTE_HAS_PREFIX;
        e->route_prefix_len = s->prefix_len;
        __builtin_memcpy(e->route_prefix, s->prefix, 16);
    }
}

/* The decision for the row e, if this CPU just made one for its packet:
 * the newest matching lookup, else the last error route's; all of them
 * taken either way. */
static __always_inline void take_route(struct event_t *e)
{
    int zero = 0;
    struct fib_lookups *l = fib_lookups.lookup(&zero);
    if (!l)
        return;
    u64 now = bpf_ktime_get_ns();
    l->last_skb = e->skb;
    u64 saddr[2], daddr[2];
    __builtin_memcpy(saddr, e->saddr, 16);
    __builtin_memcpy(daddr, e->daddr, 16);
    l->last_daddr[0] = daddr[0];
    l->last_daddr[1] = daddr[1];
    u32 newest = l->next - 1;
#if defined(DROP_REASON_RPFILTER) && defined(ROUTE_DECISIONS)
    /* dropped by the reverse path check: its lookup, the addresses swapped, says why */
    if (e->kind == KIND_DROP && e->drop_reason == DROP_REASON_RPFILTER) {
#pragma unroll
        for (int k = 0; k < FIB_SEEN; k++)
            take_seen(e, &l->seen[(newest - k) & (FIB_SEEN - 1)], now, daddr, saddr,
                      e->dport, e->sport);
        if (e->route_known)
            e->route_known |= ROUTE_REVERSE;
    }
#endif
#pragma unroll
    for (int k = 0; k < FIB_SEEN; k++)
        take_seen(e, &l->seen[(newest - k) & (FIB_SEEN - 1)], now, saddr, daddr,
                  e->sport, e->dport);
    take_seen(e, &l->error, now, saddr, daddr, e->sport, e->dport);
}
#endif /* ROUTE_DECISIONS || ROUTE6_DECISIONS */


/* The event into the ring (-w: with its packet bytes); counted when it has no room. */
static __always_inline void emit(void *ctx, struct event_t *e)
{
#ifdef CAPTURE_BYTES
    if (capture_submit(ctx, e) < 0) {
#elif defined(RING_BUFFER_PAGES)
    if (events.ringbuf_output(e, sizeof(*e), 0) < 0) {
#else
    if (events.perf_submit(ctx, e, sizeof(*e)) < 0) {
#endif
        int zero = 0;
        u64 *lost = lost_events.lookup(&zero);
        if (lost)
            (*lost)++;
    }
}

/* ------------------------------------------------------------------ */
/* --on-trouble, the flight recorder: each wanted skb's last
 * RECORDER_SIGHTINGS rows are kept in kernel memory (flights, an LRU hash
 * by skb address, RECORDER_ENTRIES skbs) as sightings, the fields that
 * change on the way; nothing is sent for it until trouble: a drop, a copy of
 * the packet reaching a receive point (RECORDER_PLACE) where another copy,
 * or the skb itself, already arrived (the story's duplicate: one packet
 * ending at one place twice), or an skb seen RECORDER_SLOW_NS after its first
 * row (not where it is freed or read from its socket: a reader's delay is not
 * the network's). Then the skb's recorded rows are sent as ordinary
 * events, rebuilt on the trouble row (the packet's fields that do not change
 * come from it), and every later row of the skb as it happens. A freed skb's
 * record stays (marked freed) until evicted or its address is reused: a
 * duplicate's first copy is often freed before the second arrives.
 * recorder_counts (RECORDER_COUNT_*, per CPU): records started and ended
 * (the skb freed); userspace counts the records still in flight, and the
 * rest of started - ended is what the LRU evicted: skbs forgotten. */
#ifdef RECORDER
struct sighting {
    u64 ts_ns;
    u64 ct;             /* skb->_nfct */
    u32 netns;
    u32 ifindex;
    u32 len;
    u32 pid;
    u32 ct_status;
    u16 probe;
    u16 sport;
    u16 dport;
    u8  ttl;
    u8  kind;
    u8  pkt_type;
    u8  dmac[6];
    u8  smac[6];
    char ifname[16];
    u8  saddr[16];
    u8  daddr[16];
};
struct flight {
    u64 first_ns;       /* the record's first row */
    u64 freed_ns;       /* 0: in flight */
    u64 payload;        /* what tells the packet from another at the address (same_packet) */
    u32 tcp_seq;
    u32 seen;           /* rows recorded; the ring's next slot is seen % RECORDER_SIGHTINGS */
    u32 told;           /* rows sent */
    u16 ip_id;
    u16 icmp_id;
    u8  family;
    u8  l4proto;
    u8  tcp_flags;      /* the packet's, for the rows the sweep rebuilds (recorder.Sweep) */
    u8  icmp_type;
    u8  troubled;       /* TROUBLE_*: its rows are sent as they happen */
    struct sighting s[RECORDER_SIGHTINGS];
};
_Static_assert((RECORDER_SIGHTINGS & (RECORDER_SIGHTINGS - 1)) == 0,
               "RECORDER_SIGHTINGS must be a power of two");
BPF_TABLE("lru_hash", u64, struct flight, flights, RECORDER_ENTRIES);
/* a new record's value, built here (too big for the stack) */
BPF_PERCPU_ARRAY(flight_new, struct flight, 1);
/* a recorded row rebuilt as an event (too big for the stack with the trouble row's) */
BPF_PERCPU_ARRAY(told_event, struct event_t, 1);
BPF_PERCPU_ARRAY(recorder_counts, u64, RECORDER_COUNTS);
#ifdef RECORDER_SLOW_NS
/* --slow's sweep (userspace, recorder.Sweep) of stuck skbs, those with no
 * later row to be told at: flying indexes the records in flight (skb ->
 * first_ns; a record's first row adds it, its free removes it) so that the
 * sweep reads a few small entries, not the records; slow_claims: who told a
 * record slow, the sweep (told: the sightings it sent) or this program
 * (told 0), whoever inserted first (BPF_NOEXIST: one of the two, once). */
BPF_TABLE("lru_hash", u64, u64, flying, RECORDER_ENTRIES);
struct slow_claim {
    u64 first_ns;       /* the record's: a claim of an earlier skb at the address is stale */
    u32 told;           /* by the sweep: the rows it sent; 0: by the kernel */
    u32 pad;
};
BPF_TABLE("lru_hash", u64, struct slow_claim, slow_claims, RECORDER_ENTRIES);
#endif

/* one packet at one receive point of one device: its first skb there */
struct place_key {
    u8  saddr[16];
    u8  daddr[16];
    u64 payload;
    u32 netns;
    u32 ifindex;
    u32 tcp_seq;
    u16 sport;
    u16 dport;
    u16 ip_id;
    u16 icmp_id;
    u16 probe;
    u8  family;
    u8  l4proto;
};
struct place_seen {
    u64 skb;
    u64 ts_ns;
};
BPF_TABLE("lru_hash", struct place_key, struct place_seen, places, RECORDER_ENTRIES);

static __always_inline void recorder_count(u32 which)
{
    u64 *n = recorder_counts.lookup(&which);
    if (n)
        (*n)++;
}

static __always_inline int same_packet(struct flight *f, struct event_t *e, u64 payload)
{
    return f->family == e->family && f->l4proto == e->l4proto && f->ip_id == e->ip_id &&
           f->tcp_seq == e->tcp_seq && f->icmp_id == e->icmp_id && f->payload == payload;
}

/* skb's record for the row e: its own, or a new one (counted started) where
 * there is none, or the one at the address is a freed skb's or another
 * packet's (whose free no probe saw: counted ended) */
static __always_inline struct flight *flight_of(struct event_t *e, u64 payload)
{
    u64 key = e->skb;
    struct flight *f = flights.lookup(&key);
    if (f && !f->freed_ns && same_packet(f, e, payload))
        return f;
    if (f && !f->freed_ns)
        recorder_count(RECORDER_COUNT_ENDED);
    int zero = 0;
    struct flight *n = flight_new.lookup(&zero);
    if (!n)
        return 0;
    n->first_ns = e->ts_ns;
    n->freed_ns = 0;
    n->payload = payload;
    n->tcp_seq = e->tcp_seq;
    n->seen = n->told = 0;
    n->ip_id = e->ip_id;
    n->icmp_id = e->icmp_id;
    n->family = e->family;
    n->l4proto = e->l4proto;
    n->tcp_flags = e->tcp_flags;
    n->icmp_type = e->icmp_type;
    n->troubled = 0;
    if (flights.update(&key, n))
        return 0;
    recorder_count(RECORDER_COUNT_STARTED);
#ifdef RECORDER_SLOW_NS
    flying.update(&key, &e->ts_ns);
#endif
    return flights.lookup(&key);
}

/* The fields a sighting keeps of its row, copied both ways by these lists */
#define SIGHTING_SCALARS(X) X(ts_ns) X(ct) X(netns) X(ifindex) X(len) X(pid) X(ct_status) \
                            X(probe) X(sport) X(dport) X(ttl) X(kind) X(pkt_type)
#define SIGHTING_ARRAYS(X) X(dmac) X(smac) X(ifname) X(saddr) X(daddr)
#define COPY_SCALAR(f) to->f = from->f;
#define COPY_ARRAY(f) __builtin_memcpy(to->f, from->f, sizeof(to->f));

/* The row from as a sighting */
static __always_inline void note_sighting(struct sighting *to, struct event_t *from)
{
    SIGHTING_SCALARS(COPY_SCALAR)
    SIGHTING_ARRAYS(COPY_ARRAY)
}

/* A recorded row as an event: what its sighting kept, over the trouble row copied into to */
static __always_inline void rebuild_row(struct event_t *to, struct sighting *from)
{
    SIGHTING_SCALARS(COPY_SCALAR)
    SIGHTING_ARRAYS(COPY_ARRAY)
}

/* Send f's recorded rows from the first not yet sent up to (not including)
 * upto, as events of skb rebuilt on the row e (the packet's fields that do
 * not change, its conntrack entry's where it is the same one); kept: how
 * many rows before upto the ring still holds (one fewer where e itself was
 * noted in the slot after them). */
static __always_inline void tell_recorded(void *ctx, struct event_t *e, struct flight *f,
                                          u64 skb, u32 upto, u32 kept)
{
    int zero = 0;
    struct event_t *t = told_event.lookup(&zero);
    if (!t)
        return;
    u32 from = f->told, unkept = 0;
    if (upto > kept && from < upto - kept) {
        unkept = upto - kept - from;
        from = upto - kept;                     /* older rows were overwritten */
    }
    for (int k = 0; k < RECORDER_SIGHTINGS; k++) {
        u32 n = from + k;
        if (n >= upto)
            break;
        struct sighting *s = &f->s[n & (RECORDER_SIGHTINGS - 1)];
        bpf_probe_read_kernel(t, sizeof(*t), e);
        if (s->ct != e->ct)
            t->ct_known = 0;        /* another entry: its state only (ct's low bits) */
        rebuild_row(t, s);
        t->skb = skb;
        t->location = 0;
        t->drop_reason = 0;
        t->verdict = 0;
        t->stack_id = -1;
        t->ct_fault = 0;
        t->why = 0;
        t->route_known = 0;
        t->unkept = k ? 0 : unkept;
        emit(ctx, t);
    }
    if (upto > f->told)
        f->told = upto;
}

/* Has this packet (another copy of it, or the skb itself) reached e's place
 * before, just now? The first skb there, else 0 (and e's is noted). */
static __always_inline u64 arrived_before(struct event_t *e, u64 payload)
{
    struct place_key k;
    __builtin_memset(&k, 0, sizeof(k));
    __builtin_memcpy(k.saddr, e->saddr, 16);
    __builtin_memcpy(k.daddr, e->daddr, 16);
    k.payload = payload;
    k.netns = e->netns;
    k.ifindex = e->ifindex;
    k.tcp_seq = e->tcp_seq;
    k.sport = e->sport;
    k.dport = e->dport;
    k.ip_id = e->ip_id;
    k.icmp_id = e->icmp_id;
    k.probe = e->probe;
    k.family = e->family;
    k.l4proto = e->l4proto;
    struct place_seen *p = places.lookup(&k);
    if (p && e->ts_ns - p->ts_ns <= RECORDER_DUPLICATE_NS)
        return p->skb;
    struct place_seen here = { .skb = e->skb, .ts_ns = e->ts_ns };
    if (!places.update(&k, &here) && !p)
        recorder_count(RECORDER_COUNT_PLACES);     /* a new key: the LRU evicts the rest */
    return 0;
}

#ifdef RECORDER_SLOW_NS
/* Has the sweep told f (skb's record, in flight longer than --slow) slow?
 * Then f->told is raised to the sightings it sent: the rows from there on
 * are sent here as they come. Else, where claim, this program claims the
 * telling, and the sweep will not. A claim left by an earlier skb at the
 * address (another first_ns) is stale: overwritten. */
static __always_inline int told_by_sweep(struct flight *f, u64 skb, int claim)
{
    struct slow_claim mine = { .first_ns = f->first_ns };
    if (claim && !slow_claims.insert(&skb, &mine))
        return 0;
    struct slow_claim *c = slow_claims.lookup(&skb);
    if (!c)
        return 0;
    if (c->first_ns != f->first_ns) {
        if (claim)
            *c = mine;
        return 0;
    }
    if (!c->told)
        return 0;           /* this program's own, of an earlier row */
    if (c->told > f->told && c->told <= f->seen)
        f->told = c->told;
    return 1;
}
#endif

/* The row e of a wanted skb: recorded; with its record sent when it is trouble. */
static __always_inline void record(void *ctx, struct event_t *e)
{
    u64 payload = ((struct scratch_slot *)e)->payload;    /* e is prepare()'s scratch event */
    struct flight *f = flight_of(e, payload);
    if (!f)
        return;
    u32 seen = f->seen;
    note_sighting(&f->s[seen & (RECORDER_SIGHTINGS - 1)], e);
    f->seen = seen + 1;
    u8 trouble = 0;
    u64 first = 0;      /* a duplicate's first copy */
    if (e->kind == KIND_DROP)
        trouble = TROUBLE_DROP;
    else if (RECORDER_PLACE(e->probe) && (first = arrived_before(e, payload)))
        trouble = TROUBLE_DUPLICATE;
#ifdef RECORDER_SLOW_NS
    if (!f->troubled && e->ts_ns - f->first_ns > RECORDER_SLOW_NS) {
        int timed = !RECORDER_UNTIMED(e->probe);
        if (told_by_sweep(f, e->skb, trouble || timed))
            f->troubled = TROUBLE_SLOW;     /* counted by the sweep */
        else if (!trouble && timed)
            trouble = TROUBLE_SLOW;
    }
#endif
    if (!trouble && !f->troubled)
        return;
    if (trouble && !(f->troubled & trouble)) {
        f->troubled |= trouble;
        recorder_count(trouble == TROUBLE_DROP ? RECORDER_COUNT_DROPS :
                       trouble == TROUBLE_DUPLICATE ? RECORDER_COUNT_DUPLICATES :
                       RECORDER_COUNT_SLOW);
    }
    if (first && first != e->skb) {
        struct flight *other = flights.lookup(&first);
        if (other && other->seen) {
            other->troubled |= TROUBLE_DUPLICATE;
            tell_recorded(ctx, e, other, first, other->seen, RECORDER_SIGHTINGS);
        }
    }
    tell_recorded(ctx, e, f, e->skb, seen, RECORDER_SIGHTINGS - 1);
    f->told = seen + 1;
    emit(ctx, e);
}
#endif /* RECORDER */

static __always_inline void submit(void *ctx, struct event_t *e)
{
#if defined(ROUTE_DECISIONS) || defined(ROUTE6_DECISIONS)
    take_route(e);
#endif
#ifdef STACK_ALL
    e->stack_id = stacks.get_stackid(ctx, 0);
#elif defined(STACK_DROPS)
    if (e->kind == KIND_DROP)
        e->stack_id = stacks.get_stackid(ctx, 0);
#endif
#ifdef RECORDER
    record(ctx, e);
#else
    emit(ctx, e);
#endif
}

static __always_inline int on_route(void *ctx, void *skb, u16 probe, int direct)
{
    struct event_t *e = prepare(skb, probe, KIND_ROUTE, 0, direct);
    if (e)
        submit(ctx, e);
    return 0;
}

/* Route kprobes share one program per skb argument position: which
 * function fired comes from the probe address. A kprobe's handler sees
 * regs->ip = probe address + 1 (the int3 it emulates); the probe address
 * is the function's, or 4 bytes past it where an endbr64 starts it (IBT).
 * skbtracer.py fills probe_ids with both. One program instead of one per
 * function keeps the compile short (seconds in an emulated guest). */
#ifdef UNRESOLVED_PROBE_ID
#ifndef PROBE_IDS_ENTRIES
#define PROBE_IDS_ENTRIES 2048
#endif
BPF_HASH(probe_ids, u64, u16, PROBE_IDS_ENTRIES);

static __always_inline int on_route_kprobe(struct pt_regs *ctx, void *skb)
{
    /* which function fired matters only to a packet the filters want */
    struct event_t *e = prepare(skb, UNRESOLVED_PROBE_ID, KIND_ROUTE, 0, 0);
    if (!e)
        return 0;
#ifdef ROUTE_FUNC_IP
    /* --all/--func on 5.18+: the same program serves a kprobe-multi link
     * (one for many functions) and single kprobes; bpf_get_func_ip tells
     * the function (or its probe address) on both. */
    u64 ip = bpf_get_func_ip(ctx);
#else
    u64 ip = PT_REGS_IP(ctx) - 1;
#endif
    u16 *id = probe_ids.lookup(&ip);
    if (!id) {
        ip -= 4;
        id = probe_ids.lookup(&ip);
    }
    if (id)
        e->probe = *id;
    submit(ctx, e);
    return 0;
}

#define ROUTE_KPROBE(argn) \
int route_arg##argn(struct pt_regs *ctx) \
{ return on_route_kprobe(ctx, (void *)PT_REGS_PARM##argn(ctx)); }

/* for struct sk_buff **pskb arguments (br_handle_frame) */
#define ROUTE_KPROBE_DEREF(argn) \
int route_deref_arg##argn(struct pt_regs *ctx) \
{ void *skb = 0; \
  bpf_probe_read_kernel(&skb, sizeof(skb), (void *)PT_REGS_PARM##argn(ctx)); \
  return on_route_kprobe(ctx, skb); }
#endif /* UNRESOLVED_PROBE_ID: the kprobe backend */

#define ROUTE_RAW_TP(id, argi) \
int route_##id(struct bpf_raw_tracepoint_args *ctx) \
{ return on_route(ctx, (void *)ctx->args[argi], id, DIRECT_SKB); }

/* ------------------------------------------------------------------ */
/* --why: what the stack sends back because of a packet, as a row on the
 * packet that caused it (the filters are that packet's): an ICMP error
 * (icmp:icmp_send where the kernel has it; else a kprobe on __icmp_send, and
 * icmp6_send) and a TCP reset (tcp:tcp_send_reset; kprobes on
 * tcp_v4/v6_send_reset where the tracepoint misses resets without a socket). */
#ifdef MODE_WHY
static __always_inline int on_why(void *ctx, void *skb, u16 probe, u8 why, u32 type, u32 code,
                                  u32 info, int direct, int at_entry)
{
    struct event_t *e = prepare(skb, probe, KIND_WHY, 0, direct);
    if (!e)
        return 0;
    if (why == WHY_RESET && (e->tcp_flags & 0x04))
        return 0;       /* tcp_v4_send_reset's first check: no reset for a reset */
    e->why = why;
    e->why_type = type;
    e->why_code = code;
    e->why_info = info;
    submit(ctx, e);
#if defined(ROUTE_DECISIONS) || defined(ROUTE6_DECISIONS)
    /* a kprobe at the sender's entry: its lookups follow the row (the
     * tracepoint comes after them); on_icmp_sent ends them at its return */
    if (at_entry) {
        int zero = 0;
        struct fib_lookups *l = fib_lookups.lookup(&zero);
        if (l) {
            __builtin_memcpy(l->icmp_daddr, e->daddr, 16);
            l->icmp_ts = bpf_ktime_get_ns();
        }
    }
#endif
    return 0;
}

/* icmp:icmp_send(skb, type, code) */
#define WHY_ICMP_TP(id) \
int why_icmp_##id(struct bpf_raw_tracepoint_args *ctx) \
{ return on_why(ctx, (void *)ctx->args[0], id, WHY_ICMP, ctx->args[1], ctx->args[2], 0, \
                DIRECT_SKB, 0); }

/* tcp:tcp_send_reset(sk, skb[, reason]): skb is NULL for resets of a socket's own */
#define WHY_RESET_TP(id) \
int why_reset_##id(struct bpf_raw_tracepoint_args *ctx) \
{ return on_why(ctx, (void *)ctx->args[1], id, WHY_RESET, 0, 0, 0, DIRECT_SKB, 0); }

/* __icmp_send(skb_in, type, code, __be32 info, opt) and
 * icmp6_send(skb, type, code, __u32 info, ...): info is the MTU of frag
 * needed / packet too big (network order on IPv4) */
#define WHY_ICMP_KPROBE(id, info_be) \
int why_icmp_##id(struct pt_regs *ctx) \
{ u32 info = PT_REGS_PARM4(ctx); \
  return on_why(ctx, (void *)PT_REGS_PARM1(ctx), id, WHY_ICMP, PT_REGS_PARM2(ctx), \
                PT_REGS_PARM3(ctx), info_be ? __builtin_bswap32(info) : info, 0, 1); }

/* tcp_v4_send_reset(sk, skb[, reason]), tcp_v6_send_reset: skb_arg is the skb's position */
#define WHY_RESET_KPROBE(id, skb_arg) \
int why_reset_##id(struct pt_regs *ctx) \
{ return on_why(ctx, (void *)PT_REGS_PARM##skb_arg(ctx), id, WHY_RESET, 0, 0, 0, 0, 0); }

#if defined(ROUTE_DECISIONS) || defined(ROUTE6_DECISIONS)
/* kretprobe on __icmp_send, icmp6_send: the lookups after are packets' again */
int on_icmp_sent(struct pt_regs *ctx)
{
    int zero = 0;
    struct fib_lookups *l = fib_lookups.lookup(&zero);
    if (l)
        l->icmp_ts = 0;
    return 0;
}
#endif
#endif /* MODE_WHY */

/* ------------------------------------------------------------------ */
/* --why: a packet queued for its neighbour's resolution (ARP, ND), its wait
 * and how it ended. neigh:neigh_event_send_done(n, rc) fires after
 * __neigh_event_send in the packet's own call chain; rc 1 with the entry
 * INCOMPLETE: it queued the skb at the tail of n->arp_queue, which is read:
 * the skb is the queue's tail, no guess (another CPU queueing on the same
 * entry between the unlock and the tracepoint makes this row the other
 * skb's, with the same neighbour). Its row (WHY_NEIGH) takes the routing
 * decision like any row; the skb is kept (neigh_waits) with its neighbour,
 * when, and its header, until its drop row: a drop with reason NEIGH_* (or,
 * IPv6's ndisc_error_report frees it with no reason, while the entry is
 * FAILED) of the same skb and header tells the neighbour, its state then
 * and the wait. Without --drop nothing takes them: the LRU ages them out. */
#ifdef NEIGH_WAITS
#define NUD_INCOMPLETE 0x01
#define NUD_FAILED     0x20
struct neigh_wait {
    u64 neigh;          /* struct neighbour *: its state read at the drop */
    u64 ts_ns;          /* when the skb was queued */
    u64 daddr[2];       /* the packet's: a reused skb address is another packet */
    u16 ip_id;
    u16 sport;
    u16 dport;
    u8 l4proto;
    u8 family;          /* the neighbour's: AF_INET, AF_INET6 */
    u8 addr[16];
};
BPF_TABLE("lru_hash", u64, struct neigh_wait, neigh_waits, 1024);

static __always_inline int why_neigh(void *ctx, void *n, int rc, u16 probe)
{
    if (rc != 1)
        return 0;
    if ((u8)KREAD(n, NEIGH_STATE) != NUD_INCOMPLETE)
        return 0;
    u64 skb = KREAD(n, NEIGH_QUEUE_TAIL);
    if (!skb || skb == (u64)n + L_NEIGH_QUEUE_OFF)
        return 0;       /* an empty queue points at itself: called without an skb */
    struct neigh_wait *told = neigh_waits.lookup(&skb);
    if (told && told->neigh == (u64)n)
        return 0;       /* its row is out already (a later call without an skb) */
    struct event_t *e = prepare((void *)skb, probe, KIND_WHY, 0, 0);
    if (!e)
        return 0;
    struct neigh_wait w = { .neigh = (u64)n, .ts_ns = bpf_ktime_get_ns(), .ip_id = e->ip_id,
                            .sport = e->sport, .dport = e->dport, .l4proto = e->l4proto };
    __builtin_memcpy(w.daddr, e->daddr, 16);
    void *tbl = KREAD_PTR(n, NEIGH_TBL);
    u32 family = KREAD(tbl, NEIGH_TBL_FAMILY);
    w.family = family;
    bpf_probe_read_kernel(w.addr, family == 10 ? 16 : 4, n + L_NEIGH_KEY_OFF);
    e->why = WHY_NEIGH;
    e->neigh_family = w.family;
    e->neigh_state = NUD_INCOMPLETE;
    __builtin_memcpy(e->neigh_addr, w.addr, 16);
    submit(ctx, e);
    neigh_waits.update(&skb, &w);
    return 0;
}

/* neigh:neigh_event_send_done(n, rc) */
#define WHY_NEIGH_TP(id) \
int why_neigh_##id(struct bpf_raw_tracepoint_args *ctx) \
{ return why_neigh(ctx, (void *)ctx->args[0], (int)ctx->args[1], id); }

static __always_inline int neigh_drop_reason(u32 reason)
{
#ifdef DROP_REASON_NEIGH_FAILED
    if (reason == DROP_REASON_NEIGH_FAILED)
        return 1;
#endif
#ifdef DROP_REASON_NEIGH_QUEUEFULL
    if (reason == DROP_REASON_NEIGH_QUEUEFULL)
        return 1;
#endif
#ifdef DROP_REASON_NEIGH_DEAD
    if (reason == DROP_REASON_NEIGH_DEAD)
        return 1;
#endif
    return 0;
}

/* The drop row e of skb: the neighbour it waited for, if it was queued */
static __always_inline void neigh_take(struct event_t *e, u64 skb, u32 reason)
{
    struct neigh_wait *w = neigh_waits.lookup(&skb);
    if (!w)
        return;
    u64 daddr[2];
    __builtin_memcpy(daddr, e->daddr, 16);
    if (w->daddr[0] != daddr[0] || w->daddr[1] != daddr[1] || w->ip_id != e->ip_id ||
        w->sport != e->sport || w->dport != e->dport || w->l4proto != e->l4proto)
        return;
    u8 state = KREAD(w->neigh, NEIGH_STATE);
    if (!neigh_drop_reason(reason) && state != NUD_FAILED)
        return;
    e->neigh_family = w->family;
    e->neigh_state = state;
    __builtin_memcpy(e->neigh_addr, w->addr, 16);
    e->neigh_waited_us = (bpf_ktime_get_ns() - w->ts_ns) / 1000;
    neigh_waits.delete(&skb);
}
#endif /* NEIGH_WAITS */

/* ------------------------------------------------------------------ */
/* Netfilter verdicts: the entry probe remembers the call, the return
 * probe reads the verdict and reports the packet as the table left it
 * (after NAT). A packet that matched on entry is reported even if NAT
 * changed it out of the filter. */
#ifdef MODE_IPTABLE
struct nf_call {
    u64 skb;
    u64 state;
    u64 table;      /* xt_table * or nft_chain * */
    u8 matched;
    u8 is_nft;
};
BPF_HASH(nf_calls, u64, struct nf_call, 4096);

static __always_inline int nf_enter(void *skb, void *state, void *table, u16 probe, u8 is_nft)
{
    struct nf_call call = {};
    call.skb = (u64)skb;
    call.state = (u64)state;
    call.table = (u64)table;
    call.is_nft = is_nft;
    call.matched = prepare(skb, probe, KIND_IPTABLE, 0, 0) != 0;
    u64 tid = bpf_get_current_pid_tgid();
    nf_calls.update(&tid, &call);
    return 0;
}

static __always_inline int nf_return(struct pt_regs *ctx, u16 probe)
{
    u64 tid = bpf_get_current_pid_tgid();
    struct nf_call *found = nf_calls.lookup(&tid);
    if (!found)
        return 0;
    struct nf_call call = *found;
    nf_calls.delete(&tid);

    struct event_t *e = prepare((void *)call.skb, probe, KIND_IPTABLE, call.matched, 0);
    if (!e)
        return 0;
    e->verdict = PT_REGS_RC(ctx);
    e->hook = KREAD(call.state, STATE_HOOK);
    e->pf = KREAD(call.state, STATE_PF);
    if (call.is_nft) {
#ifdef HAVE_NFT_LAYOUT
        void *table = KREAD_PTR(call.table, NFT_CHAIN_TABLE);
        bpf_probe_read_kernel_str(e->table, sizeof(e->table), KREAD_PTR(table, NFT_TABLE_NAME));
        bpf_probe_read_kernel_str(e->chain, sizeof(e->chain), KREAD_PTR(call.table, NFT_CHAIN_NAME));
#endif
    } else {
#ifdef HAVE_XT_LAYOUT
        bpf_probe_read_kernel_str(e->table, sizeof(e->table), (void *)call.table + L_XT_TABLE_NAME_OFF);
#endif
    }
    submit(ctx, e);
    return 0;
}

/* ipt_do_table/ip6t_do_table: (skb, state, table) before 5.16,
 * (table, skb, state) since; skbtracer.py passes the positions. */
#define XT_KPROBES(id, skb_arg, state_arg, table_arg) \
int nf_enter_##id(struct pt_regs *ctx) \
{ return nf_enter((void *)PT_REGS_PARM##skb_arg(ctx), (void *)PT_REGS_PARM##state_arg(ctx), \
                  (void *)PT_REGS_PARM##table_arg(ctx), id, 0); } \
int nf_return_##id(struct pt_regs *ctx) { return nf_return(ctx, id); }

/* nft_do_chain(struct nft_pktinfo *pkt, void *priv = struct nft_chain *) */
#define NFT_KPROBES(id) \
int nf_enter_##id(struct pt_regs *ctx) \
{ void *pkt = (void *)PT_REGS_PARM1(ctx); \
  return nf_enter(KREAD_PTR(pkt, NFT_PKT_SKB), KREAD_PTR(pkt, NFT_PKT_STATE), \
                  (void *)PT_REGS_PARM2(ctx), id, 1); } \
int nf_return_##id(struct pt_regs *ctx) { return nf_return(ctx, id); }
#endif /* MODE_IPTABLE */

/* ------------------------------------------------------------------ */
/* IPVS (kube-proxy's IPVS mode): the scheduler's choice for a new
 * connection, as a row on the packet that asked for it, before IPVS
 * rewrites it. ip_vs_schedule(svc, skb, ...) returns the new struct
 * ip_vs_conn, NULL when no real server was found; a return probe sees no
 * arguments, so the entry probe keeps svc and skb per thread. Only new
 * connections pass here: three reads each, never on a connection's later
 * packets. */
#ifdef IPVS_DECISIONS
struct ipvs_call {
    u64 skb;
    u64 svc;
};
BPF_HASH(ipvs_calls, u64, struct ipvs_call, 1024);

int on_ipvs_schedule(struct pt_regs *ctx)
{
    u64 key = bpf_get_current_pid_tgid();
    struct ipvs_call call = { .skb = PT_REGS_PARM2(ctx), .svc = PT_REGS_PARM1(ctx) };
    ipvs_calls.update(&key, &call);
    return 0;
}

/* struct ip_vs_conn from its dport to its daf, read at once (SPAN_AT) */
#define IPVS_CONN_SPAN_OFF MIN_OF(MIN_OF(L_IPVS_CONN_DPORT_OFF, L_IPVS_CONN_DADDR_OFF), \
                                  MIN_OF(L_IPVS_CONN_FLAGS_OFF, L_IPVS_CONN_DAF_OFF))
#define IPVS_CONN_SPAN_LEN (MAX_OF(MAX_OF(L_END(IPVS_CONN_DPORT), L_END(IPVS_CONN_DADDR)), \
                                   MAX_OF(L_END(IPVS_CONN_FLAGS), L_END(IPVS_CONN_DAF))) \
                            - IPVS_CONN_SPAN_OFF)
_Static_assert(IPVS_CONN_SPAN_LEN <= 96 && L_IPVS_CONN_DADDR_SIZE == 16, "struct ip_vs_conn grew");
#define IP_VS_CONN_F_FWD_MASK 0x0007

int on_ipvs_schedule_return(struct pt_regs *ctx)
{
    u64 key = bpf_get_current_pid_tgid();
    struct ipvs_call *call = ipvs_calls.lookup(&key);
    if (!call)
        return 0;
    void *skb = (void *)call->skb, *svc = (void *)call->svc;
    ipvs_calls.delete(&key);
    struct event_t *e = prepare(skb, IPVS_PROBE_ID, KIND_ROUTE, 0, 0);
    if (!e)
        return 0;
    void *cp = (void *)PT_REGS_RC(ctx);
    e->ipvs_known = IPVS_NO_DEST;
    if (cp) {
        u8 conn[IPVS_CONN_SPAN_LEN];
        if (!bpf_probe_read_kernel(conn, sizeof(conn), cp + IPVS_CONN_SPAN_OFF)) {
            e->ipvs_known = IPVS_CHOSE;
            e->ipvs_rport = SPAN_AT(conn, IPVS_CONN_SPAN_OFF, IPVS_CONN_DPORT);
            e->ipvs_fwd = SPAN_AT(conn, IPVS_CONN_SPAN_OFF, IPVS_CONN_FLAGS)
                          & IP_VS_CONN_F_FWD_MASK;
            e->ipvs_daf = SPAN_AT(conn, IPVS_CONN_SPAN_OFF, IPVS_CONN_DAF);
            __builtin_memcpy(e->ipvs_raddr, conn + L_IPVS_CONN_DADDR_OFF - IPVS_CONN_SPAN_OFF, 16);
        }
    }
    /* svc->scheduler->name: what picked it (the service's, also for none) */
    void *sched = 0;
    char *name = 0;
    bpf_probe_read_kernel(&sched, sizeof(sched), svc + L_IPVS_SVC_SCHED_OFF);
    if (sched)
        bpf_probe_read_kernel(&name, sizeof(name), sched + L_IPVS_SCHED_NAME_OFF);
    if (name)
        bpf_probe_read_kernel_str(e->ipvs_sched, sizeof(e->ipvs_sched), name);
    submit(ctx, e);
    return 0;
}
#endif /* IPVS_DECISIONS */

/* ------------------------------------------------------------------ */
/* Drops conntrack itself decides, seen where it decides them (kprobes on
 * nf_conntrack's exported or never-inlined functions) and told on the skb's
 * drop row (ct_fault): nothing but the counters of conntrack -S says which
 * packet they were.
 * - __nf_conntrack_confirm(skb) returning NF_DROP: the skb's new entry lost
 *   the race into the hash to another packet of the same tuple, and the
 *   clash could not be resolved (insert_failed; the "DNS 5 s" race).
 * - nf_ct_helper_log(skb, ...): a conntrack helper (ftp, sip ...) refuses
 *   the packet, as helpers say just before they return NF_DROP.
 * - __nf_conntrack_alloc() failing: no entry could be made for the packet
 *   (the table is full, or memory ran out). It has no skb: its original
 *   tuple and the CPU tie it to the netfilter drop that follows at once.
 * Each drop follows its cause in the same call chain, on the same CPU: a
 * cause from another CPU or older than SAME_CHAIN_NS is not the drop's (the
 * skb's address was reused). */
#ifdef CT_FAULTS
struct ct_fault_seen {
    u64 ts_ns;
    u32 cpu;
    u8 fault;
};
/* a return probe sees no arguments: its entry probe keeps the one it needs,
 * per thread and function (CALL_*) */
BPF_HASH(ct_calls, u64, u64, 1024);
#define CALL_CONFIRM 0
#define CALL_ALLOC   1

static __always_inline int call_enter(u64 which, u64 arg)
{
    u64 key = bpf_get_current_pid_tgid() << 1 | which;
    ct_calls.update(&key, &arg);
    return 0;
}

/* the argument call_enter kept, forgotten; 0 when there is none */
static __always_inline u64 call_return(u64 which)
{
    u64 key = bpf_get_current_pid_tgid() << 1 | which;
    u64 *found = ct_calls.lookup(&key);
    if (!found)
        return 0;
    u64 arg = *found;
    ct_calls.delete(&key);
    return arg;
}
/* wanted skb -> its fault, until its drop row (LRU: a cause with no drop ages out) */
BPF_TABLE("lru_hash", u64, struct ct_fault_seen, ct_refused, 1024);

/* a fault for skb, if the filters want the packet (its drop row will be
 * made: kfree_skb takes the entry back only then, so a drop the filters
 * reject costs no lookup) */
static __always_inline void ct_fault_record(u64 skb, u8 fault)
{
    if (!prepare((void *)skb, DROP_PROBE_ID, KIND_DROP, 0, 0))
        return;
    struct ct_fault_seen seen = { .ts_ns = bpf_ktime_get_ns(), .cpu = bpf_get_smp_processor_id(),
                                  .fault = fault };
    ct_refused.update(&skb, &seen);
}

int on_ct_confirm(struct pt_regs *ctx)
{
    return call_enter(CALL_CONFIRM, PT_REGS_PARM1(ctx));    /* the skb */
}

int on_ct_confirm_return(struct pt_regs *ctx)
{
    u64 skb = call_return(CALL_CONFIRM);
    if (skb && (PT_REGS_RC(ctx) & 0xff) == 0)       /* NF_DROP */
        ct_fault_record(skb, CT_FAULT_INSERT);
    return 0;
}

#ifdef CT_FAULT_HELPER
/* nf_ct_helper_log(skb, ct, fmt, ...) */
int on_ct_helper_log(struct pt_regs *ctx)
{
    ct_fault_record(PT_REGS_PARM1(ctx), CT_FAULT_HELPER);
    return 0;
}
#endif

#ifdef CT_READ_CONN
struct ct_alloc_failure {
    u64 ts_ns;          /* 0: none pending */
    struct ct_tuple tuple;
};
BPF_PERCPU_ARRAY(ct_alloc_failed, struct ct_alloc_failure, 1);

/* __nf_conntrack_alloc(net, zone, orig, repl, gfp, hash) */
int on_ct_alloc(struct pt_regs *ctx)
{
    return call_enter(CALL_ALLOC, PT_REGS_PARM3(ctx));      /* the original tuple */
}

int on_ct_alloc_return(struct pt_regs *ctx)
{
    void *orig = (void *)call_return(CALL_ALLOC);
    if (!orig || PT_REGS_RC(ctx) < (u64)-4095)      /* !IS_ERR(): an entry was made */
        return 0;
    int zero = 0;
    struct ct_alloc_failure *f = ct_alloc_failed.lookup(&zero);
    if (!f)
        return 0;
    if (read_tuple(orig, &f->tuple))
        f->ts_ns = bpf_ktime_get_ns();
    return 0;
}

/* Is e the packet whose entry this CPU just failed to make? */
static __always_inline int ct_alloc_failed_for(struct event_t *e)
{
    int zero = 0;
    struct ct_alloc_failure *f = ct_alloc_failed.lookup(&zero);
    if (!f || !f->ts_ns || e->ct || bpf_ktime_get_ns() - f->ts_ns > SAME_CHAIN_NS)
        return 0;
    /* both sides hold an IPv4 address in their first 4 bytes, zeros after */
    struct ct_tuple *t = &f->tuple;
    u64 s[2], d[2];
    __builtin_memcpy(s, e->saddr, 16);
    __builtin_memcpy(d, e->daddr, 16);
    if (t->l4proto != e->l4proto || t->sport != e->sport || t->dport != e->dport ||
        !same_addresses(t->saddr, t->daddr, s, d))
        return 0;
    f->ts_ns = 0;
    return 1;
}
#endif /* CT_READ_CONN */

/* The conntrack drop of this skb, if one was seen just now; forgotten either way */
static __always_inline u8 ct_fault_take(void *skb)
{
    u64 key = (u64)skb;
    struct ct_fault_seen *found = ct_refused.lookup(&key);
    if (!found)
        return 0;
    u8 fault = bpf_ktime_get_ns() - found->ts_ns <= SAME_CHAIN_NS
               && found->cpu == bpf_get_smp_processor_id() ? found->fault : 0;
    ct_refused.delete(&key);
    return fault;
}
#endif /* CT_FAULTS */

/* ------------------------------------------------------------------ */
/* skb:kfree_skb (a drop) and skb:consume_skb (a normal free), as raw
 * tracepoints: args[0] is the skb, args[1] the location, args[2] (5.17+)
 * the drop reason. Both also end --keep's interest in the skb; with --route
 * a normal free is a row of its own (consume_skb). */
static __always_inline void forget_skb(void *skb)
{
#if defined(KEEP) || defined(RECORDER)
    u64 key = (u64)skb;
#endif
#ifdef KEEP
    keep_skbs.delete(&key);
#endif
#ifdef RECORDER
    struct flight *f = flights.lookup(&key);
    if (f && !f->freed_ns) {
        f->freed_ns = bpf_ktime_get_ns();
        recorder_count(RECORDER_COUNT_ENDED);
#ifdef RECORDER_SLOW_NS
        flying.delete(&key);
#endif
    }
#endif
}

int on_kfree_skb(struct bpf_raw_tracepoint_args *ctx)
{
    void *skb = (void *)ctx->args[0];
#ifdef MODE_DROP
#ifdef DROP_REASON_ARG
    u32 reason = ctx->args[DROP_REASON_ARG];
#ifdef DROP_REASON_CONSUMED
    if (reason == DROP_REASON_CONSUMED) {  /* 6.x: a normal free */
        forget_skb(skb);
        return 0;
    }
#endif
#endif
    struct event_t *e = prepare(skb, DROP_PROBE_ID, KIND_DROP, 0, DIRECT_SKB);
    if (e) {
        e->location = ctx->args[1];
#ifdef DROP_REASON_ARG
        e->drop_reason = reason;
#endif
#ifdef NEIGH_WAITS
#ifdef DROP_REASON_ARG
        neigh_take(e, (u64)skb, reason);
#else
        neigh_take(e, (u64)skb, 0);
#endif
#endif
#ifdef CT_FAULTS
        e->ct_fault = ct_fault_take(skb);
#ifdef CT_READ_CONN
        if (!e->ct_fault && ct_alloc_failed_for(e))
            e->ct_fault = CT_FAULT_TABLE_FULL;
#endif
#endif
        submit(ctx, e);
    }
#endif
    forget_skb(skb);
    return 0;
}

int on_consume_skb(struct bpf_raw_tracepoint_args *ctx)
{
    void *skb = (void *)ctx->args[0];
#ifdef CONSUME_PROBE_ID
    on_route(ctx, skb, CONSUME_PROBE_ID, DIRECT_SKB);   /* the end of an skb's life */
#endif
    forget_skb(skb);
    return 0;
}

/* --keep on kprobe kernels: a clone of a kept skb is kept too. */
#ifdef KEEP
BPF_HASH(clone_src, u64, u64, 4096);

int on_clone_enter(struct pt_regs *ctx)
{
    u64 src = PT_REGS_PARM1(ctx);
    if (!keep_skbs.lookup(&src))
        return 0;
    u64 tid = bpf_get_current_pid_tgid();
    clone_src.update(&tid, &src);
    return 0;
}

int on_clone_return(struct pt_regs *ctx)
{
    u64 tid = bpf_get_current_pid_tgid();
    if (!clone_src.lookup(&tid))
        return 0;
    clone_src.delete(&tid);
    u64 clone = PT_REGS_RC(ctx);
    u8 one = 1;
    if (clone)
        keep_skbs.update(&clone, &one);
    return 0;
}
#endif

/* ------------------------------------------------------------------ */
/* Probe instances generated by skbtracer.py follow. */
