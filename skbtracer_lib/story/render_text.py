"""The story in words: the places, ends, flows and paths of the model, and
the DUPLICATE / DROPPED / VANISHED lines (tell.py lays them out at exit)."""

from ..events import conntrack
from ..events.textrow import unkept_suffix
from ..nftrace.decisions import Unknown, rule_matches_invalid, rule_words
from ..events.vocabulary import KIND_IPTABLE, endpoint_text, pf_prefix, proto_letter
from .model import EndKind, Place, SocketPlace, StoryModel
from .paths import Fork, factor_suffix, hops, packet_tree
from .points import MAX_FLAG_LINES, SOCKET_POINTS, stopped_after

NODE_CROSSING = "\0=>"     # marks a hop on another node than the one before


# the drop reason netfilter gives a packet a hook dropped (5.17+)
NETFILTER_DROP = "NETFILTER_DROP"
NF_HOOK_SLOW = "nf_hook_slow+"      # where a hook's NF_DROP frees the skb (every kernel)


def unkept_sightings(packet):
    """--on-trouble: the sightings of the packet's skbs their records could
    not keep (the rows' unkept)."""
    return sum(getattr(e, "unkept", 0) for copy in packet.copies for e in copy.events)


class Story(StoryModel):
    """The model with its words: every text the story prints is made here."""

    # -- places and ends

    def place_text(self, netns, ifname, previous_netns=None):
        if not netns and not ifname:
            return "?"
        if netns == previous_netns and ifname:
            return ifname
        ns = self.label(netns) if netns else "?"
        return "%s/%s" % (ns, ifname) if ifname else ns

    def where_text(self, place):
        """An interface or a socket."""
        if isinstance(place, SocketPlace):
            family = 6 if ":" in place.daddr else 4
            return "a socket %s in %s" % (endpoint_text(place.daddr, place.dport, True, family),
                                          self.label(place.netns))
        return self.place_text(*place)

    def reason_text(self, end):
        """The drop reason's name; "" where the kernel gives none (before 5.17)."""
        if end.reason_code is None or self.reasons is None or not self.reasons.names:
            return ""
        return self.reasons.name(end.reason_code)

    def end_text(self, end):
        """Where and how the copy ended; --iptable: IPVS's choice; --why:
        its routing decisions, the neighbour it waited for and what was sent
        back because of it."""
        return ", ".join(t for t in (self._end_place_text(end), end.balanced, end.routed,
                                     end.neighbour,
                                     end.sent_back) if t)

    def _end_place_text(self, end):
        kind = end.kind
        if kind == EndKind.DELIVERED:
            return "%s in %s" % (SOCKET_POINTS[end.func], self.label(end.netns))
        if kind == EndKind.LOCAL:
            return "delivered to the local stack in %s (%s)" % (self.label(end.netns), end.func)
        if kind == EndKind.DROPPED:
            return self._dropped_text(end)
        if kind == EndKind.CUT:
            return self._cut_text(end)
        words = END_WORDS.get(kind)
        if words is None:
            return kind.value
        where = self.place_text(end.netns, end.ifname)
        return words % ((where, end.func) if kind in (EndKind.ARRIVED, EndKind.VANISHED)
                        else where)

    def _cut_text(self, end):
        where = "%s (%s)" % (self.place_text(end.netns, end.ifname), end.func)
        if self.stopped_by == "-c":
            return "cut off by -c at %s" % where
        after = stopped_after(self.stopped_by)
        if after:
            return "still on its way when tracing stopped after %s (--duration), at %s" % (
                after, where)
        return "still on its way when tracing stopped (%s), at %s" % (self.stopped_by, where)

    def _dropped_text(self, end):
        text = "dropped at %s" % self.place_text(end.netns, end.ifname)
        reason = self.reason_text(end)
        if reason:
            text += ": %s" % reason
        if end.location:
            text += " (%s)" % self.symbolize(end.location)
        decision = self.rules.decision_at(end.skb, end.ts_ns) if self.rules else None
        ct = self.conntrack_text(end, reason, rule_matches_invalid(decision))
        if ct:
            text += ": %s" % ct
        if decision is not None:        # --nftrace
            words = rule_words(decision)
            text += (", " if isinstance(decision, Unknown) else " by ") + words
        return text

    def conntrack_text(self, end, reason, invalid_rule=False):
        """conntrack's part in a drop (conntrack.drop_words), or ""."""
        if not end.ct_fault and not self.conntrack_read:
            return ""
        # netfilter's drop: by its reason (5.17+), a DROP verdict row, or its place
        netfilter = (reason == NETFILTER_DROP or end.nf_table is not None or
                     bool(end.location) and self.symbolize(end.location).startswith(NF_HOOK_SLOW))
        return conntrack.drop_words(end.ct_fault, end.nfct, netfilter, end.nf_table,
                                    netfilter and end.netns in self.conntrack_netns,
                                    invalid_rule)

    def packet_end_text(self, packet):
        """How its copies ended; where one got through, the drops of others
        are notes after it ("a copy dropped at ...")."""
        ends = packet.ends()
        if self.got_through(packet):
            ends = sorted(ends, key=lambda e: e.kind == EndKind.DROPPED)
        texts = []
        counts = {}
        for end in ends:
            text = self.end_text(end)
            if end.kind == EndKind.DROPPED and self.got_through(packet):
                text = "a copy " + text
            if text not in counts:
                texts.append(text)
            counts[text] = counts.get(text, 0) + 1
        if not texts:
            return "-"
        return "; ".join(("%dx %s" % (counts[t], t)) if counts[t] > 1 else t for t in texts)

    # -- flows

    def flow_text(self, packet):
        """'U 10.0.0.1:5->10.96.0.10:53 (DNAT ->10.0.0.3:9000)'."""
        first = packet.headers[0]
        text = "%s %s" % (proto_letter(first.family, first.l4proto), _endpoints(first))
        for before, change in self.nat_steps(packet):
            by = self.rules.nat_words(None, before) if self.rules else ""
            text += " (%s%s)" % (change, by)
        return text

    @staticmethod
    def nat_steps(packet):
        """[(the header before, 'DNAT ->A:P')] of each NAT change the packet's
        headers show, in order."""
        headers = packet.headers
        steps, previous = [], headers[0]
        for header in headers[1:]:
            change = _nat_change(previous, header)
            if change:
                steps.append((previous, change))
                previous = header
        return steps

    def final_flow(self, copy):
        last = copy.last_header
        return "%s %s" % (proto_letter(last.family, last.l4proto),
                          _endpoints(copy.travel_header()))

    # -- paths and netfilter

    def hops(self, copy, start=None, stop=None):
        return hops(copy, start, stop)

    def path_text(self, packet):
        text = self._tree_text(packet_tree(packet, self.node_of is not None)) or "-"
        unkept = unkept_sightings(packet)
        return unkept_suffix(unkept).lstrip() + " " + text if unkept else text

    def _tree_text(self, tree, previous_netns=None):
        parts = []
        for item in tree:
            if isinstance(item, Place):
                text = self.place_text(item.netns, item.ifname, previous_netns)
                if (self.node_of is not None and previous_netns is not None
                        and self.node_of(item.netns) != self.node_of(previous_netns)):
                    text = NODE_CROSSING + text
                parts.append(text)
                previous_netns = item.netns
            elif isinstance(item, Fork):
                previous_netns = self._fork_text(item, parts)
            elif parts:
                parts[-1] += " " + item
            else:
                parts.append(item)
        return " > ".join(p for p in parts if p).replace(" > " + NODE_CROSSING, " => ")

    def _fork_text(self, fork, parts):
        """Appends the fork's text (and the branches' common tail) to parts;
        the namespace the path is in after it, or None."""
        rendered, suffix = factor_suffix(fork.branches)
        alternatives = []
        for branch, label in zip(rendered, fork.labels):
            text = self._tree_text(branch) or "-"
            alternatives.append("%s: %s" % (label, text) if label else text)
        parts.append("{%s}" % " | ".join(alternatives))
        if not suffix:
            return None
        parts.append(self._tree_text(suffix))
        last = [x for x in suffix if isinstance(x, Place)]
        return last[-1].netns if last else None

    def netfilter_text(self, packet):
        if not self.iptable_traced:
            return "(not traced)"
        seen = []
        for e in packet.events:
            if e.kind == KIND_IPTABLE:
                text = "%s%s %s %s" % (pf_prefix(e.pf), e.table or "?", e.hook_name,
                                       e.verdict_name)
                decision = (self.rules.decision_at(e.skb, e.ts_ns)
                            if self.rules is not None and e.verdict_name == "DROP" else None)
                if decision is not None:    # --nftrace: the rule of a DROP, or why unknown
                    text += (" by " if not isinstance(decision, Unknown) else ", ") + \
                        rule_words(decision)
                if not seen or seen[-1] != text:
                    seen.append(text)
        return ", ".join(seen) if seen else "-"

    # -- conntrack

    @staticmethod
    def ct_text(packet):
        """The connections it met, as it went ('NEW -> DNAT 10.96.0.10:53 =>
        10.244.1.3:5353'); '-' when no row saw a conntrack entry."""
        return conntrack.story_text(packet.events) or "-"

    def service_text(self, service, name):
        """'SERVICE: default/dns-pair:dns U 10.96.0.30:53 -> 10.244.1.3:9000
        (1 connection), 10.244.2.3:9000 (3 connections)': the endpoints
        conntrack chose; the name where known (--names)."""
        chosen = ", ".join("%s (%s)" % (service.text(*endpoint),
                                        _counted_words(len(conns), "connection"))
                           for endpoint, conns in service.endpoints.items())
        return "SERVICE: %s%s %s -> %s" % (name + " " if name else "",
                                          proto_letter(service.family, service.l4proto),
                                          service.text(), chosen)

    def service_lines(self):
        return [self.service_text(service, name) for service, name in self.services]

    # -- flags

    def steps_text(self, steps):
        """[Step] -> ['ip_rcv(node1/cbr0)', 'ip_forward']."""
        out = []
        previous_netns = None
        for step in steps:
            if step.show and step.place.ifname:
                out.append("%s(%s)" % (step.func, self.place_text(*step.place, previous_netns)))
                previous_netns = step.place.netns
            else:
                out.append(step.func)
        return out

    def duplicate_text(self, dup):
        where = self.where_text(dup.place)
        parts = []
        for i, route in enumerate(dup.routes, 1):
            text = " → ".join(self.steps_text(route.steps) + [where])
            if route.end_kind == EndKind.DELIVERED:
                text += ", delivered to a socket"
            desc = "%s, TTL %d" % (route.label, route.ttl) if route.label else "TTL %d" % route.ttl
            parts.append("(%d) %s: %s" % (i, desc, text))
        return "DUPLICATE: %s reached %s %d times (%s apart): %s" % (
            self.final_flow(dup.copies[0]), where, len(dup.copies),
            duration_text(dup.copies[-1].end.ts_ns - dup.copies[0].end.ts_ns), "; ".join(parts))

    def duplicate_lines(self):
        return [self.duplicate_text(d) for d in self.duplicates]

    def drop_flags(self):
        """[(packet, 'DROPPED: ...')] for packets that got nowhere: a packet
        one of whose copies got through is not dropped (its end says what
        became of the others)."""
        lines = []
        for packet in self.packets:
            ends = packet.ends()
            dropped = [e for e in ends if e.kind == EndKind.DROPPED]
            if not dropped or self.got_through(packet):
                continue
            others = [e for e in ends if e.kind != EndKind.DROPPED]
            text = "DROPPED: %s %s" % (self.flow_text(packet),
                                       "; ".join(self.end_text(e) for e in dropped))
            if others:
                text += " (another copy: %s)" % "; ".join(self.end_text(e) for e in others)
            lines.append((packet, text))
        return lines

    def vanished_flags(self):
        """[(packet, 'VANISHED: ...')]"""
        if not self.routes_traced:
            return []
        return [(packet, self._vanished_text(packet, end)) for packet in self.packets
                for end in packet.ends() if end.kind == EndKind.VANISHED]

    def _vanished_text(self, packet, end):
        notes = list(self.caveats)
        gap = (self.ended_ns - end.ts_ns) / 1e9
        if gap < 1.0:
            notes.append("it was last seen %.3f s before tracing stopped and may "
                         "have been in flight" % gap)
        text = "VANISHED: %s last seen at %s (%s): no delivery, drop, free or exit seen" % (
            self.flow_text(packet), self.place_text(end.netns, end.ifname), end.func)
        if notes:
            text += "; not visible here: " + "; ".join(notes)
        return text

    def drop_lines(self):
        return [text for _packet, text in self.drop_flags()]

    def vanished_lines(self):
        return [text for _packet, text in self.vanished_flags()]

    def footnote(self):
        """What this run could not see, when a copy's end depends on it."""
        if self.caveats and self.end_kinds() & {EndKind.ARRIVED, EndKind.VANISHED}:
            return "not visible in this run: " + "; ".join(self.caveats)
        return None

    def flag_lines(self):
        lines = []
        for found in (self.service_lines(), self.duplicate_lines(), self.drop_lines(),
                      self.vanished_lines()):
            lines += found[:MAX_FLAG_LINES]
            if len(found) > MAX_FLAG_LINES:
                kind = found[0].split(":", 1)[0]
                lines.append("%s: ... and %d more" % (kind, len(found) - MAX_FLAG_LINES))
        return lines


END_WORDS = {EndKind.FREED: "reached %s, freed",
             EndKind.ARRIVED: "reached %s (not seen after %s)",      # where, func
             EndKind.LEFT: "left via %s",
             EndKind.VANISHED: "vanished after %s (%s)",             # where, func
             EndKind.TAP: "a copy freed at %s"}


def _counted_words(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def duration_text(ns):
    if ns >= 1_000_000_000:
        return "%.3f s" % (ns / 1e9)
    if ns >= 1_000_000:
        return "%.3f ms" % (ns / 1e6)
    return "%.1f us" % (ns / 1e3)


def _endpoints(header):
    ported = header.ported
    return "%s->%s" % (endpoint_text(header.saddr, header.sport, ported, header.family),
                       endpoint_text(header.daddr, header.dport, ported, header.family))


def _nat_change(before, after):
    ported = after.ported
    parts = []
    if before.source != after.source:
        parts.append("SNAT %s->" % endpoint_text(after.saddr, after.sport, ported, after.family))
    if before.destination != after.destination:
        parts.append("DNAT ->%s" % endpoint_text(after.daddr, after.dport, ported, after.family))
    return ", ".join(parts)
