"""Saved event objects rebuilt as the live decoder's Event objects, with
the names, symbols and probes the saved run had."""

from ..events import conntrack, fields, ipvs, neighbours, routing, tunnel
from ..events.decode import Event
from ..events.vocabulary import (KIND_NUMBERS, KIND_ROUTE, TCP_FLAG_BITS, WHY_NUMBERS,
                                 hook_number)
from ..runinfo import ProbeInfo, RunInfo


def _mac(text):
    return bytes.fromhex(text.replace(":", "")) if text else bytes(6)


# The fields the event object shows from the table as they are (none by
# hand) and those it does not show: rebuilt from their keys, or zero
_TABLE_FIELDS = tuple(f for f in fields.DECODED if f.json != fields.HAND)


def _table_value(f, value):
    """A table field's value from the JSON (jsonl._json_value's inverse)."""
    if f.seen == fields.BYTES:
        return bytes.fromhex(value) if value else bytes(f.size)
    if f.seen in (fields.TEXT, fields.ADDRESS):
        return value or ""
    return value or 0


class Rebuilder:
    """Saved event objects -> Event objects (the live decoder's), with one
    probe number per function name, a namespace key per (node, inode), an
    skb address per node and the saved drop reason names and symbols."""

    def __init__(self, several_nodes):
        self.several = several_nodes
        self.probe_names = []
        self._probe = {}
        self.netns_keys = {}           # (node, inode) -> netns number in the story
        self.netns_info = {}           # netns number -> (node, label)
        self.reason_names = {}
        self.conntrack_saved = False   # some event has "ct" (saved since issue 23)
        self.symbols = {}
        self.node_index = {}

    def probe(self, name):
        number = self._probe.get(name)
        if number is None:
            number = self._probe[name] = len(self.probe_names)
            self.probe_names.append(name)
        return number

    def netns(self, node, obj):
        inode = obj["netns"]
        if not inode:
            return 0
        key = (node, inode)
        number = self.netns_keys.get(key)
        if number is None:
            # one node: the inode itself (rows and story read as live); several:
            # inodes of different nodes may collide, so each gets its own number
            number = len(self.netns_keys) + 1 if self.several else inode
            self.netns_keys[key] = number
        label = obj.get("netns_name") or str(inode)
        if number not in self.netns_info or obj.get("netns_name"):
            self.netns_info[number] = (node, label)
        return number

    def event(self, run, obj, ts_ns):
        e = Event.__new__(Event)
        node = self.node_index.setdefault(run.node, len(self.node_index))
        e.ts_ns = ts_ns
        # skb addresses of different nodes are different skbs
        e.skb = int(obj["skb"], 16) + (node << 64 if self.several else 0)
        e.netns = self.netns(run.node, obj)
        e.ifindex = obj.get("ifindex") or 0
        e.pid = obj.get("pid") or 0
        e.stack_id = -1
        e.len = obj.get("len") or 0
        e.probe = self.probe(obj["func"])
        e.kind = KIND_NUMBERS.get(obj["kind"], KIND_ROUTE)
        e.pkt_type = obj.get("pkt_type") or 0
        e.family = obj["family"]
        e.l4proto = obj["l4proto"]
        e.ttl = obj["ttl"]
        e.ifname = obj["ifname"] or ""
        e.dmac = _mac(obj.get("dmac"))
        e.smac = _mac(obj.get("smac"))
        e.saddr, e.daddr = obj["saddr"], obj["daddr"]
        e.sport = obj.get("sport") or 0
        e.dport = obj.get("dport") or 0
        e.ip_id = obj.get("ip_id") or 0
        e.tcp_seq = obj.get("tcp_seq") or 0
        e.tcp_flags = TCP_FLAG_BITS.get(obj.get("tcp_flags") or "", 0)
        e.icmp_type = obj.get("icmp_type") or 0
        e.icmp_id = obj.get("icmp_id") or 0
        e.pf = e.hook = e.verdict = 0
        e.table = e.chain = ""
        e.drop_reason = e.location = e.ct_fault = 0
        nf = obj.get("nf")
        if nf:
            e.pf = nf.get("pf") or 0
            e.hook = hook_number(e.pf, nf.get("hook"))
            e.verdict = nf.get("verdict_code") or 0
            e.table = nf.get("table") or ""
            e.chain = nf.get("chain") or ""
        drop = obj.get("drop")
        if drop:
            if drop.get("reason_code") is not None:
                e.drop_reason = drop["reason_code"]
                self.reason_names[e.drop_reason] = drop.get("reason")
            if drop.get("location_addr"):
                e.location = int(drop["location_addr"], 16)
                self.symbols[e.location] = drop.get("location") or "%#x" % e.location
            e.ct_fault = conntrack.fault_code(drop.get("conntrack"))
        e.why = e.why_type = e.why_code = e.why_info = 0
        why = obj.get("why")
        if why:
            e.why = WHY_NUMBERS.get(why.get("sent"), 0)
            e.why_type = why.get("icmp_type") or 0
            e.why_code = why.get("icmp_code") or 0
            e.why_info = why.get("mtu") or 0
        for name, value in routing.fields_of(obj.get("route")).items():
            setattr(e, name, value)
        for name, value in ipvs.fields_of(obj.get("ipvs")).items():
            setattr(e, name, value)
        for name, value in tunnel.fields_of(obj.get("tunnel")).items():
            setattr(e, name, value)
        for name, value in neighbours.fields_of(obj.get("neigh")).items():
            setattr(e, name, value)
        e.unkept = obj.get("unkept") or 0       # --on-trouble: only rows that have it
        if "ct" in obj:
            self.conntrack_saved = True
        for name, value in conntrack.fields_of(obj.get("ct")).items():
            setattr(e, name, value)
        for f in _TABLE_FIELDS:
            setattr(e, f.name, _table_value(f, obj.get(f.json) if f.json else None))
        return e


class SavedNames:
    """The namespace labels the events were saved with (names.NetnsNames'
    interface); with several nodes each label says its node: node1:client."""

    def __init__(self, rebuilder):
        self.rebuilder = rebuilder
        self.labels = self

    def __contains__(self, _netns):
        return True

    def label(self, netns):
        node, label = self.rebuilder.netns_info.get(netns, (None, str(netns)))
        if not self.rebuilder.several or node is None:
            return label
        return node if label == node else "%s:%s" % (node, label)

    def node(self, netns):
        return self.rebuilder.netns_info.get(netns, (None, None))[0]

    def retry(self, force=False):
        pass


def saved_names(start, key):
    """A start object's list of probe names; [] when absent or not one."""
    names = start.get(key)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return []
    return names


class SavedLoaded:
    """What the run loop reads of a loaded program (runinfo), from the start objects."""

    def __init__(self, runs, rebuilder):
        attached = []
        extra = set()      # --all/--func functions of any run
        for run in runs:
            names = saved_names(run.start, "attached") or sorted(
                {o["func"] for o in run.objects if o["kind"] == "route"})
            for name in names:
                if name not in attached:
                    attached.append(name)
            extra.update(saved_names(run.start, "functions"))
        probes = [ProbeInfo(n, "route") for n in attached]
        if any(r.start.get("iptable_traced") for r in runs):
            probes.append(ProbeInfo("nf_hook_slow", "iptable"))
        backends = sorted({r.start.get("backend") or "?" for r in runs})
        # probe names grow as the events are rebuilt: the story reads them at exit
        self.info = RunInfo("/".join(backends), rebuilder.probe_names, attached=probes,
                            saved_extra=frozenset(extra))
        self.rebuilder = rebuilder

    def symbolize(self, address):
        return self.rebuilder.symbols.get(address, "%#x" % address)

    def stack(self, _stack_id):
        return None

    def lost_events(self):
        return 0
