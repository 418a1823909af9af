"""Nftrace: --nftrace for one run. In each traced namespace (-N's, else
skbtracer's own): the trace table, the trace socket, the ruleset and the
decisions; the decision of a row (drop, verdict) and of a NAT change."""

from ..events.vocabulary import KIND_DROP, KIND_IPTABLE
from ..outputs.names import NetnsNames
from . import table
from .decisions import Decisions, Unknown, nat_words, packet_key
from .netns import NetnsError, inside
from .ruleset import Ruleset
from .trace import TraceSocket

NETFILTER_DROP = "NETFILTER_DROP"
ROWS_KEPT = 1 << 17             # rows' decisions kept for the story (its events are fewer)
NETFILTER_PLACES = ("nf_hook_slow", "nft_do_chain", "ipt_do_table", "ip6t_do_table")
HOOK_NAMES = {"PREROUTING": "prerouting", "INPUT": "input", "FORWARD": "forward",
              "OUTPUT": "output", "POSTROUTING": "postrouting"}


class NftraceError(Exception):
    pass


class Watched:
    """One namespace: its nft context (whose socket owns the table), trace
    socket, ruleset and decisions."""

    def __init__(self, inode, path, rule_matches):
        import nftables
        self.inode, self.path = inode, path
        self.owner = None           # once the table is made: whether it has the owner flag
        with inside(path):
            self.nft = nftables.Nftables()
            self.socket = TraceSocket()
        try:
            self.owner, self.removed_stale = table.install(self.nft, rule_matches)
            self.ruleset = Ruleset(self.nft, path, (table.FAMILY, table.NAME))
            self.ruleset.read()
        except BaseException:   # a table made is removed (without the owner flag too)
            self.close()
            raise
        self.decisions = Decisions(self.ruleset, (table.FAMILY, table.NAME))

    def drain(self):
        self.decisions.feed(self.socket.drain())

    def close(self):
        try:
            if self.owner is not None:      # ours: another run's is not touched
                table.remove(self.nft)
        finally:
            self.socket.close()
            del self.nft        # frees the context: its socket, the owner of the table


class Nftrace:
    def __init__(self, cfg, say):
        self.watched = []
        self.by_row = {}            # (skb, ts_ns) -> the row's decision
        try:
            import nftables  # noqa: F401
        except ImportError:
            raise NftraceError("--nftrace needs python3-nftables (apt install python3-nftables)")
        rule_matches = table.matches(cfg.addr, cfg.proto, cfg.port)
        netns = NetnsNames()
        places = [(inode, netns.path(inode)) for inode in cfg.netns_all] or [(None, None)]
        try:
            for inode, path in places:
                if inode is not None and path is None:
                    raise NftraceError("--nftrace: network namespace %d is gone" % inode)
                self.watched.append(Watched(inode, path, rule_matches))
        except (table.TableError, NetnsError, OSError) as e:
            self.close()
            raise NftraceError("--nftrace: %s" % e) from None
        except (ValueError, KeyError, TypeError) as e:     # a listing not of nft's shape
            self.close()
            raise NftraceError("--nftrace: cannot read the ruleset: %s: %s"
                               % (type(e).__name__, e)) from None
        except BaseException:
            self.close()
            raise
        where = "in -N's namespaces" if cfg.netns_all else "in this namespace"
        for w in self.watched:
            if w.removed_stale:
                say("removed table %s %s a killed skbtracer left behind%s"
                    % (table.FAMILY, table.NAME, "" if w.path is None else " in " + w.path))
        owner = all(w.owner for w in self.watched)
        say("--nftrace changed the ruleset: added table %s %s %s (meta nftrace set 1 at "
            "prerouting and output); it is removed at exit%s"
            % (table.FAMILY, table.NAME, where,
               ", and by the kernel if skbtracer is killed (owner flag)" if owner else
               "; if skbtracer is killed, at the next --nftrace start"))

    def drain(self):
        for w in self.watched:
            w.drain()

    def _decisions_of(self, netns):
        if len(self.watched) == 1 and self.watched[0].inode is None:
            return self.watched[0].decisions
        for w in self.watched:
            if w.inode == netns:
                return w.decisions
        return None

    def of_row(self, e, drop_reason=None, location=None):
        """The decision (or Unknown) for a verdict row or a netfilter drop
        row; None for other rows. Kept for the story (decision_at)."""
        if e.kind == KIND_DROP:
            netfilter = drop_reason == NETFILTER_DROP or (
                location is not None and location.startswith(NETFILTER_PLACES))
            if not netfilter:
                return None
        elif e.kind != KIND_IPTABLE:
            return None
        key = (e.skb, e.ts_ns)
        if key in self.by_row:      # the text row's and the JSON line's: one decision
            return self.by_row[key]
        self.drain()
        found = self.by_row[key] = self._find(e)
        if len(self.by_row) > ROWS_KEPT:
            del self.by_row[next(iter(self.by_row))]
        return found

    def _find(self, e):
        decisions = self._decisions_of(e.netns)
        if decisions is None:
            return Unknown("--nftrace does not watch namespace %d" % e.netns)
        overflows = sum(w.socket.overflows for w in self.watched)
        if e.kind == KIND_DROP:
            def want(d):
                return d.verdict == "drop"
        else:
            hook = HOOK_NAMES.get(e.hook_name)

            def want(d):
                return (d.verdict == e.verdict_name.lower() and d.table == e.table
                        and (hook is None or d.hook == hook))
        found = decisions.find(packet_key(e), want)
        if found is not None:
            return decisions.take(found)
        if overflows:
            return Unknown("trace messages were lost (socket buffer full %d times)" % overflows)
        if e.kind == KIND_DROP:
            return Unknown("no nftables drop traced for this packet (an iptables-legacy "
                           "rule, or it was not marked: see --nftrace in the man page)")
        return Unknown("no nftables trace of this verdict (iptables-legacy, or not marked)")

    def decision_at(self, skb, ts_ns):
        """The decision a row had (of_row), for the story."""
        return self.by_row.get((skb, ts_ns))

    def nat_decision(self, netns, before):
        """The decision that NATed a packet whose header was before (a story
        Header), in namespace netns (None: any watched)."""
        self.drain()
        key = packet_key(before)
        for w in self.watched:
            if netns is not None and w.inode not in (None, netns):
                continue
            found = w.decisions.find(key, lambda d: d.is_nat)
            if found is not None:
                return found
        return None

    def nat_words(self, netns, before):
        return nat_words(self.nat_decision(netns, before))

    def close(self):
        errors = []
        while self.watched:
            w = self.watched.pop()
            try:
                w.close()
            except Exception as e:  # the others are still removed
                errors.append(e)
        if errors:
            raise NftraceError("--nftrace: cannot remove table %s %s: %s"
                               % (table.FAMILY, table.NAME, errors[0]))
