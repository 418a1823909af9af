"""--nftrace: which nftables rule decided a packet's fate, from the kernel's
own nftables trace (nft monitor trace), for kernels where the rule cannot be
read from probes (this host's tracepoints).

It changes the ruleset, and says so: a table of skbtracer's own (table.py)
marks the traced packets with `meta nftrace set 1` at the earliest priority
of prerouting and output; the kernel then reports every rule, return and
policy such a packet meets in any table of that netns (NFNLGRP_NFTRACE,
read by trace.py). ruleset.py maps (family, table, chain, handle) to the
rule as `nft -a list ruleset` prints it and its comment (python3-nftables);
decisions.py ties the traversals' verdicts to skbtracer's rows.

The modules:
  table      the trace table: filters as nft matches, added and removed
  trace      NFNLGRP_NFTRACE messages read and parsed (by hand: no library
             in Debian 12 parses them; nft 1.0.6's -j monitor trace prints text)
  ruleset    the ruleset read with python3-nftables: rule text, comment, hooks
  decisions  traversals -> decisions; a row's decision; how it reads
  netns      entering a network namespace to open its sockets there
"""

from .decisions import Decision, Decisions, Unknown, rule_words
from .session import NftraceError, Nftrace

__all__ = ["Decision", "Decisions", "Nftrace", "NftraceError", "Unknown", "rule_words"]
