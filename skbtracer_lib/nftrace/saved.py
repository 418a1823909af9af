"""-r: the rules a --nftrace run saved, told again. Its JSON rows carry
"rule" (verdict and netfilter drop rows), its story "nat_rule" objects (the
rule behind each NAT change): the story and the text rows are made of
them as the run made them of its trace."""

from .decisions import decision_of_json, nat_words, packet_key


class _SavedHeader:
    """A saved header object as packet_key reads it."""

    def __init__(self, obj):
        self.family, self.l4proto = obj["family"], obj["l4proto"]
        self.saddr, self.daddr = obj["saddr"], obj["daddr"]
        self.ip_id = obj.get("ip_id") or 0
        self.sport, self.dport = obj.get("sport") or 0, obj.get("dport") or 0


class SavedRules:
    """What nftrace.Nftrace answers the story, from saved objects."""

    def __init__(self, nat_objects):
        self.by_row = {}
        self.nat = {}
        for obj in nat_objects:
            try:
                key = packet_key(_SavedHeader(obj["header"]))
            except (KeyError, TypeError):
                continue            # not of this shape: that NAT's rule is unknown
            if isinstance(obj.get("rule"), dict):
                self.nat[key] = decision_of_json(obj["rule"])

    def keep_row(self, event, obj):
        """The decision of a rebuilt event's saved row, or None."""
        rule = obj.get("rule")
        if not isinstance(rule, dict):
            return None
        decision = self.by_row[(event.skb, event.ts_ns)] = decision_of_json(rule)
        return decision

    def decision_at(self, skb, ts_ns):
        return self.by_row.get((skb, ts_ns))

    def nat_decision(self, netns, before):
        return self.nat.get(packet_key(before))

    def nat_words(self, netns, before):
        return nat_words(self.nat_decision(netns, before))
