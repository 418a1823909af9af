"""Trace messages -> decisions (what ended each base chain's traversal of a
packet, and by which rule or policy) -> the decision of a row.

A traversal is one base chain run on one packet (nft_do_chain): its first
message carries the packet's headers; its last has a final verdict (a
rule's accept/drop/queue/stolen, or the base chain's policy). Messages
come in the order the kernel made them; the trace id ties a traversal's
messages together (not a packet's across hooks: since 6.4 it is a keyed
hash of the skb, its hash and iif).

A row is tied to a decision by the packet's headers (addresses, protocol,
ports, IPv4 id), the hook and, for verdict rows, the table and verdict;
of several, the latest not yet taken by a row. Time is the order of the
messages, not a timestamp: the trace has none."""

import collections
import re
from typing import NamedTuple

from ..events.decode import printable
from ..events.vocabulary import PORTED
from .trace import FINAL, TYPE_POLICY, TYPE_RULE, PacketHeader

KEPT = 4096                     # decisions kept for rows not yet seen (and the story)
# a NAT statement in `nft list` text, a NAT target in `iptables -S` text; comments left out
_NFT_NAT = re.compile(r"\b(?:dnat|snat)(?: ip6?)? to\b|\bmasquerade\b|\bredirect\b|"
                      r"xt target \"(?:DNAT|SNAT|MASQUERADE|REDIRECT)\"")
_NFT_COMMENT = re.compile(r'comment "(?:[^"\\]|\\.)*"')
_XT_NAT = re.compile(r"(?:^| )-j (?:DNAT|SNAT|MASQUERADE|REDIRECT)\b")
_XT_COMMENT = re.compile(r'--comment (?:"(?:[^"\\]|\\.)*"|\S+)')
# (the other causes, iptables-legacy, IPVS, a namespace not watched: in the man page)
NAT_UNKNOWN = "no NAT rule traced for it (conntrack NATs a connection's later packets without one)"


def packet_key(e):
    """PacketHeader.key() of an event, a story Header or a saved header."""
    ported = e.l4proto in PORTED
    return (e.family, e.saddr, e.daddr, e.l4proto, e.ip_id if e.family == 4 else 0,
            e.sport if ported else 0, e.dport if ported else 0)


class Decision(NamedTuple):
    family: str                 # the table's
    table: str
    chain: str                  # where the deciding rule is (a jump's target), or the base chain
    base_chain: str
    hook: str                   # the base chain's (prerouting, input ...); None: not in the ruleset
    verdict: str                # accept, drop, queue, stolen
    policy: bool                # True: no rule decided, the base chain's policy did
    handle: int                 # the rule's; None for a policy
    rule: object                # ruleset.Rule; None: policy, or not in the ruleset read
    packet: PacketHeader
    sequence: int               # order among the namespace's decisions

    @property
    def is_nat(self):
        """Did a NAT statement or target decide (not words in a comment)?"""
        rule = self.rule
        if self.policy or rule is None:
            return False
        if rule.iptables:
            return bool(_XT_NAT.search(_XT_COMMENT.sub("", rule.iptables)))
        return bool(_NFT_NAT.search(_NFT_COMMENT.sub("", rule.text)))

    def json(self):
        rule = self.rule
        return {"family": self.family, "table": self.table, "chain": self.chain,
                "base_chain": self.base_chain, "hook": self.hook, "verdict": self.verdict,
                "policy": self.policy, "handle": self.handle,
                "position": rule.position if rule else None,
                "text": rule.text if rule else None,
                "iptables": rule.iptables if rule else None,
                "comment": rule.comment if rule else None}


class Unknown(NamedTuple):
    """No decision for a row, and why."""
    reason: str

    def json(self):
        return {"unknown": self.reason}


def decision_of_json(obj):
    """A saved "rule" object (Decision.json, Unknown.json) as a decision
    again, for -r; one it cannot read is an Unknown saying so."""
    from .ruleset import Rule
    if "unknown" in obj:
        return Unknown(str(obj["unknown"]))
    try:
        family, table, chain = (str(obj[k]) for k in ("family", "table", "chain"))
        policy, handle = bool(obj["policy"]), obj["handle"]
        rule = None
        if not policy:
            handle = int(handle)
            rule = Rule(family, table, chain, handle, obj.get("position") or 0,
                        obj.get("text") or "", obj.get("comment"), obj.get("iptables"))
        return Decision(family, table, chain, str(obj.get("base_chain") or chain),
                        obj.get("hook"), str(obj["verdict"]), policy, handle, rule, None, 0)
    except (KeyError, TypeError, ValueError):
        return Unknown("the saved rule object is unreadable")


def nat_words(decision):
    """What follows 'DNAT ->A:P' in the story: ' by nat/KUBE-SEP-X handle 12
    ...', or ', rule unknown: ...' (decision None: none was traced)."""
    if decision is None:
        return ", " + rule_words(Unknown(NAT_UNKNOWN))
    return " by " + rule_words(decision)


def _where(family, table, chain):
    prefix = "" if family == "ip" else family + " "
    return "%s%s/%s" % (prefix, printable(table), printable(chain))


def rule_words(decision):
    """'nat/KUBE-SEP-X handle 12 "default/svc:dns"', 'policy DROP of
    filter/INPUT', 'rule unknown: ...'."""
    if isinstance(decision, Unknown):
        return "rule unknown: %s" % decision.reason
    if decision.policy:
        return "policy %s of %s" % (decision.verdict.upper(),
                                    _where(decision.family, decision.table, decision.chain))
    text = "%s handle %d" % (_where(decision.family, decision.table, decision.chain),
                             decision.handle)
    rule = decision.rule
    if rule is not None and rule.iptables:
        text += " #%d" % rule.position
    if rule is not None and rule.comment:
        text += " " + quoted(rule.comment)
    return text


# a rule that matches conntrack's INVALID state: in `nft list` text, in `iptables -S` text
INVALID_MATCH = re.compile(r"\bct state (\{ )?([a-z]+, )*invalid\b|--c?t?state (\S+,)?INVALID\b")


def rule_matches_invalid(decision):
    """True when the deciding rule matches conntrack's INVALID state: a drop
    by it was of a packet conntrack found INVALID, for certain."""
    rule = getattr(decision, "rule", None)
    if rule is None:
        return False
    return bool(INVALID_MATCH.search(_NFT_COMMENT.sub("", rule.text or "")) or
                INVALID_MATCH.search(_XT_COMMENT.sub("", rule.iptables or "")))


def quoted(comment):
    """A comment in double quotes, escaped as names are (one line, no
    controls) but for its spaces: a kube-proxy comment reads as one."""
    return '"%s"' % printable(comment).replace("\\x20", " ").replace('"', '\\"')


def row_suffix(decision):
    """The text row's ' rule=...' (one column: no spaces but in the comment's quotes)."""
    if decision is None:
        return ""
    if isinstance(decision, Unknown):
        return " rule=unknown"
    if decision.policy:
        return " rule=policy:%s" % _where(decision.family, decision.table,
                                          decision.chain).replace(" ", ":")
    return " rule=%s#%d" % (_where(decision.family, decision.table, decision.chain)
                           .replace(" ", ":"), decision.handle)


class Decisions:
    """The decisions of one namespace's traced packets, made from its trace
    messages (feed) and handed to rows (for_row, for_nat)."""

    def __init__(self, ruleset, own_table):
        self.ruleset = ruleset
        self.own_table = own_table      # skbtracer's trace table: its rules decide nothing
        self.kept = collections.deque(maxlen=KEPT)
        self.open = {}                  # trace id -> [packet, base chain, family, table, chain]
        self.sequence = 0
        self.taken = set()              # sequences a row already has

    def feed(self, messages):
        for m in messages:
            if m.packet is not None:    # a base chain's traversal begins
                self.open[m.trace_id] = [m.packet, m.chain, m.family, m.table]
            current = self.open.get(m.trace_id)
            if current is None or (m.family, m.table) == self.own_table:
                continue
            final = (m.kind == TYPE_RULE and m.verdict in FINAL) or m.kind == TYPE_POLICY
            if final:
                self._decided(m, current)
                del self.open[m.trace_id]
            if len(self.open) > KEPT:   # traversals whose end never came
                self.open.pop(next(iter(self.open)))

    def _decided(self, m, current):
        packet, base_chain, family, table = current
        chain = self.ruleset.base_chain(family, table, base_chain)
        policy = m.kind == TYPE_POLICY
        rule = None if policy else self.ruleset.rule(m.family, m.table, m.chain, m.handle)
        self.sequence += 1
        self.kept.append(Decision(m.family, m.table, m.chain, base_chain,
                                  chain.hook if chain else None, m.verdict, policy,
                                  None if policy else m.handle, rule, packet, self.sequence))

    def find(self, header, want):
        """The latest decision for a packet with this header (a PacketHeader
        key) that want(decision) accepts and no row has taken."""
        for d in reversed(self.kept):
            if d.sequence not in self.taken and d.packet.key() == header and want(d):
                return d
        return None

    def take(self, decision):
        self.taken.add(decision.sequence)
        if len(self.taken) > 2 * KEPT:      # forget what has left the kept window
            oldest = self.kept[0].sequence
            self.taken = {s for s in self.taken if s >= oldest}
        return decision
