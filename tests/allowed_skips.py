"""The skips each stage of tests/run_all.py may have: the exact reasons, as
pytest reports them (-rs). Any other skip fails the stage, so a missing tool
(scapy, tshark, bpftool, bcc, headers) or a kernel feature gone missing fails
CI instead of thinning it. Add a reason only where the stage's kernel cannot
run the test by design, and say why beside it."""

# the tracepoint host (6.18, no kprobes): what only a kprobe kernel can do
NEEDS_KPROBES = {
    "needs kprobes (guest)",
    "guest only: module probes and their removal need kprobes and a kernel of our own",
}
# the kprobe guests: what the host covers already, or what needs a kernel without kprobes
HOST_COVERS = {
    "this kernel has kprobes",
    "same C filter as on the host; saves a guest compile",
    "host only: output faults involve no probes, and a tracer start costs a compile in the guest",
    "host only: start-up signals involve no probes, and a tracer start costs a compile in the guest",
    # the 6.1 guest took 30 min (CI's budget is 45 for all): these are userspace's
    "host only: how events reach userspace is the same for every probe, and a tracer start "
    "costs a compile in the guest",
    "host only: how -w ends involves no probes, and a tracer start costs a compile in the guest",
    "host only: tp_btf and raw tracepoints run the same C, and a tracer start costs a compile "
    "in the guest",
    "host only: how -c ends the story involves no probes, and a tracer start costs a compile "
    "in the guest",
    "host only: Service names are read from the ruleset in user space, and a tracer start costs "
    "a compile in the guest",
    "host only: rotating files and --interval involve no probes, and a tracer start costs a "
    "compile in the guest",
    "host only: merging two nodes' files involves no probes, and a tracer start costs a compile "
    "in the guest",
    # --nftrace is user space and netlink (the kernel's nftables trace, the ruleset): the rows it
    # names are the drop rows both backends make alike
    "host only: --nftrace reads the kernel's nftables trace over netlink in user space, the same "
    "with every probe backend, and a tracer start costs a compile in the guest",
}

ALLOWED_SKIPS = {
    "unit": {
        # 6.18 renamed these (sk_skb_reason_drop, gro_receive_skb): the
        # sample positions are checked on the functions this kernel has
        "kfree_skb_reason is not in this kernel's BTF",
        "napi_gro_receive is not in this kernel's BTF",
        # this machine's pid 1 (the sandbox's init) does not let root read
        # /proc/1/ns/net; the story's "host" label is tested through a netns
        "not running in pid 1's network namespace",
    },
    "host": NEEDS_KPROBES | {
        # the test bed's ground truth (tests/host/test_*_shapes.py): what the
        # host kernel has no module for, or may not let a test change
        "needs ip_vs (guest)",
        "needs the ipip module (guest)",
        "needs the geneve module (guest)",
        "needs the ip6_tunnel module (guest)",
        "needs the sit module (guest)",
        "needs the global nf_conntrack_max (guest)",
        # races are raced a bounded time; the counts are printed either way
        "race did not reproduce (DNAT, one socket)",
        "race did not reproduce (SNAT, two pods)",
    },
    "package": set(),
    "guest-6.1": HOST_COVERS,
    "guest-6.1b": HOST_COVERS,      # the rest of tests/kernel on 6.1, in a second boot
    # the insert race must reproduce on 6.1 (tests/kernel/test_conntrack_drops.py); elsewhere it
    # is raced a bounded time and the counts are printed either way
    "guest-5.10": HOST_COVERS | {"race did not reproduce (SNAT, two pods)"},
    "guest-6.12": HOST_COVERS | {"race did not reproduce (SNAT, two pods)"},
}
