"""Building the BPF program for the running kernel: its facts (kernel), struct
layouts from BTF (btf, layout), the probe points and where the skb is
(probes), --all/--func (functions, kprobe_multi, attach), tcpdump
expressions (pcapfilter), what Python tells the C (macros), the C text
(source), and bcc loading and attaching it (load, syscalls)."""
