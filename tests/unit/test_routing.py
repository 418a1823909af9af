"""--why's routing decisions (issue 26): the words for a decision (table
names, results by route type and by err), the row's suffix, JSON's "route"
and -r, the story's end, and the probe plan with and without the
fib:fib_table_lookup tracepoint."""

import errno
import json
import socket

import pytest
import skbt_unit_helpers  # noqa: F401  (repository on sys.path)

from skbtracer_lib import story
from skbtracer_lib.events import routing, textrow
from skbtracer_lib.events.decode import KIND_DROP, KIND_ROUTE, Event, encode, encode_event
from skbtracer_lib.outputs import jsonl
from skbtracer_lib.program import macros, probes
from skbtracer_lib.replay.rebuild import Rebuilder

PROBE_NAMES = ["netif_receive_skb", "net_dev_queue", "kfree_skb"]
SKB = 0xffff888000001a00
UDP = dict(saddr="10.244.1.3", sport=42622, daddr="10.245.0.2", dport=9000, l4proto=17,
           netns=4026532001, ifname="cni0")
RTN_UNICAST, RTN_LOCAL = 1, 2


class FixedClock:
    def column(self, ts_ns):
        return "12:34:56"

    def wall_ns(self, ts_ns):
        return 1_700_000_000_000_000_000 + ts_ns


def routed(probe="net_dev_queue", table=254, err=0, rtn=RTN_UNICAST, dev="veth1", gw=None,
           kind=KIND_ROUTE, ts_ns=2000, **fields):
    gw_bytes = socket.inet_aton(gw) + bytes(12) if gw else bytes(16)
    return Event(encode(ts_ns=ts_ns, skb=SKB, probe=PROBE_NAMES.index(probe), kind=kind,
                        route_known=1, route_table=table, route_err=err, route_type=rtn,
                        route_dev=dev, route_gw=gw_bytes, route_gw_family=2 if gw else 0,
                        route_oif=7 if dev else 0, route_iif=3, **dict(UDP, **fields)))


@pytest.mark.parametrize("table, err, rtn, dev, gw, words, suffix", [
    (254, 0, RTN_UNICAST, "veth1", None, "routed by table main dev veth1",
     " route=main:unicast dev=veth1"),
    (100, 0, RTN_UNICAST, "eth0", "10.244.1.1", "routed by table 100 via 10.244.1.1 dev eth0",
     " route=100:unicast via=10.244.1.1 dev=eth0"),
    (255, 0, RTN_LOCAL, "lo", None, "local route in table local", " route=local:local dev=lo"),
    (255, 0, 3, "eth0", None, "broadcast route in table local",
     " route=local:broadcast dev=eth0"),
    # error routes have no next hop: the result from err
    (254, -errno.EINVAL, 0, "", None, "blackhole route in table main", " route=main:blackhole"),
    (100, -errno.EACCES, 0, "", None, "prohibit route in table 100", " route=100:prohibit"),
    (254, -errno.EHOSTUNREACH, 0, "", None, "unreachable route in table main",
     " route=main:unreachable"),
    (254, -errno.EAGAIN, 0, "", None, "no route in table main", " route=main:no_route"),
    (254, -5, 0, "", None, "error -5 in table main", " route=main:error_-5"),
    # a nexthop object's route: its type is not read, err 0 says unicast
    (254, 0, 0, "eth1", None, "routed by table main dev eth1", " route=main:unicast dev=eth1"),
])
def test_words_and_row_suffix(table, err, rtn, dev, gw, words, suffix):
    e = routed(table=table, err=err, rtn=rtn, dev=dev, gw=gw)
    assert routing.words(e) == words
    assert routing.row_suffix(e) == suffix


def test_table_names_from_rt_tables(tmp_path, monkeypatch):
    rt_tables = tmp_path / "rt_tables"
    rt_tables.write_text("# comment\n255\tlocal\n254\tmain\n100 pods # policy\nbad line\n")
    monkeypatch.setattr(routing, "RT_TABLES_FILES", (str(rt_tables),))
    monkeypatch.setattr(routing, "RT_TABLES_DIRS", ())
    monkeypatch.setattr(routing, "_table_names", None)
    assert [routing.table_name(t) for t in (254, 255, 253, 100, 101)] == \
        ["main", "local", "default", "pods", "101"]
    monkeypatch.setattr(routing, "_table_names", None)


def formatter():
    return textrow.RowFormatter(PROBE_NAMES, None, lambda a: "fn+0x%x" % a, FixedClock())


def test_the_row_ends_in_the_decision_and_the_cache_keeps_decisions_apart():
    rows = formatter()
    main, policy = routed(), routed(table=100)
    plain = Event(encode(ts_ns=2000, skb=SKB, probe=1, kind=KIND_ROUTE, **UDP))
    assert rows.trace_info(main) == "%x.0:net_dev_queue route=main:unicast dev=veth1" % SKB
    assert rows.trace_info(plain) == "%x.0:net_dev_queue" % SKB     # without --why: as before
    for e in (main, policy, plain, main):
        assert rows.row_of_raw(encode_event(e))[0] == rows.row(e)


def test_json_route_on_rows_with_a_decision_only_and_r_rebuilds_it():
    out = jsonl.JsonFormatter(formatter(), node="n", run_id="r")
    obj = json.loads(out.line(routed(table=100, gw="10.244.1.1", dev="eth0")))
    assert obj["route"] == {"table": "100", "table_id": 100, "result": "unicast", "err": 0,
                            "rtn": RTN_UNICAST, "gateway": "10.244.1.1", "dev": "eth0",
                            "oif": 7, "iif": 3, "prefix": None, "reverse": False,
                            "text": "routed by table 100 via 10.244.1.1 dev eth0"}
    plain = Event(encode(ts_ns=1000, skb=SKB, probe=0, kind=KIND_ROUTE, **UDP))
    assert "route" not in json.loads(out.line(plain))
    assert jsonl.text_row(obj, "12:34:56").endswith(
        "net_dev_queue route=100:unicast via=10.244.1.1 dev=eth0")

    class Run:
        node = "n"
    e = Rebuilder(False).event(Run(), obj, obj["ktime_ns"])
    assert routing.json_object(e) == obj["route"]
    e = Rebuilder(False).event(Run(), json.loads(out.line(plain)), 1000)
    assert not e.route_known


def test_the_story_names_the_decision_and_the_drop():
    events = [Event(encode(ts_ns=1000, skb=SKB, probe=0, **UDP)),
              routed("kfree_skb", err=-errno.EINVAL, rtn=0, dev="", kind=KIND_DROP,
                     drop_reason=2)]
    told = story.build(events, PROBE_NAMES, label=str, reasons=probes.DropReasons(
        {2: "NOT_SPECIFIED"}, "test"), symbolize=lambda a: "?")
    (end,) = told.packets[0].ends()
    assert end.routed == "blackhole route in table main"
    assert told.end_text(end) == ("dropped at 4026532001/cni0: NOT_SPECIFIED, "
                                  "blackhole route in table main")


class FibLayouts:
    def __init__(self, ok=True):
        self.ok = ok

    def fib(self):
        return (True, "") if self.ok else (False, "no layout in BTF: flowi4")

    def fib6(self):
        return (True, "") if self.ok else (False, "no layout in BTF: flowi6")


@pytest.mark.parametrize("params, layouts_ok, backend, planned, note", [
    (4, True, "tracepoint", True, None),
    (None, True, "tracepoint", False, "no fib:fib_table_lookup tracepoint"),
    (4, False, "tracepoint", False, "no layout in BTF"),
    (4, True, "kprobe", True, None),
])
def test_the_plan(monkeypatch, params, layouts_ok, backend, planned, note):
    monkeypatch.setattr(probes, "tracepoint_params", lambda _category, _event: params)
    plan = probes.ProbePlan(backend)
    probes._plan_route_decisions(plan, FibLayouts(layouts_ok), backend)
    assert (macros.ROUTE_DECISIONS in plan.defines) == planned
    assert (macros.ROUTE6_DECISIONS in plan.defines) == planned
    assert [p.name for p in plan.probes] == (["fib_table_lookup", "fib6_table_lookup"]
                                             if planned else [])
    assert note is None or any(note in n for n in plan.notes), plan.notes


def test_the_plan_without_fib6(monkeypatch):
    """A kernel with IPv4's tracepoint only: IPv4's decisions, a note for IPv6."""
    monkeypatch.setattr(probes, "tracepoint_params",
                        lambda category, _event: None if category == "fib6" else 4)
    plan = probes.ProbePlan("tracepoint")
    probes._plan_route_decisions(plan, FibLayouts(), "tracepoint")
    assert [p.name for p in plan.probes] == ["fib_table_lookup"]
    assert any("no IPv6 routing decisions" in n for n in plan.notes), plan.notes


V6 = dict(saddr="fd00:244:1::2", sport=42631, daddr="fd00:245::2", dport=9000, l4proto=17,
          netns=4026532001, ifname="cni0", family=6)


def routed6(prefix="fd00:245::", plen=64, rtn=RTN_UNICAST, dev="veth1", err=0, table=254):
    return Event(encode(ts_ns=2000, skb=SKB, probe=1, kind=KIND_ROUTE,
                        route_known=routing.KNOWN | routing.HAS_PREFIX, route_table=table,
                        route_err=err, route_type=rtn, route_dev=dev, route_oif=7, route_iif=3,
                        route_prefix=socket.inet_pton(socket.AF_INET6, prefix),
                        route_prefix_len=plen, **V6))


@pytest.mark.parametrize("rtn, dev, words, suffix", [
    (RTN_UNICAST, "veth1", "routed by table main fd00:245::/64 dev veth1",
     " route=main:unicast dst=fd00:245::/64 dev=veth1"),
    (6, "lo", "blackhole route fd00:245::/64 in table main",
     " route=main:blackhole dst=fd00:245::/64 dev=lo"),
    (8, "lo", "prohibit route fd00:245::/64 in table main",
     " route=main:prohibit dst=fd00:245::/64 dev=lo"),
])
def test_ipv6_decisions_name_the_prefix(rtn, dev, words, suffix):
    e = routed6(rtn=rtn, dev=dev)
    assert routing.words(e) == words
    assert routing.row_suffix(e) == suffix
    out = jsonl.JsonFormatter(formatter(), node="n", run_id="r")
    obj = json.loads(out.line(e))
    assert obj["route"]["prefix"] == "fd00:245::/64"
    assert jsonl.text_row(obj, "12:34:56").endswith("net_dev_queue" + suffix)

    class Run:
        node = "n"
    again = Rebuilder(False).event(Run(), obj, obj["ktime_ns"])
    assert routing.json_object(again) == obj["route"]


def test_an_rp_filter_drop_names_the_way_back():
    """An IP_RPFILTER drop row takes rp_filter's own lookup (the addresses swapped, flagged
    REVERSE): where the way back to the source goes instead of the packet's device."""
    e = Event(encode(ts_ns=2000, skb=SKB, probe=2, kind=KIND_DROP, drop_reason=16,
                     route_known=routing.KNOWN | routing.REVERSE, route_table=254, route_type=1,
                     route_dev="cni0", route_oif=5, route_iif=1,
                     **dict(UDP, saddr="10.244.1.77", daddr="10.244.1.2", ifname="veth9")))
    assert routing.words(e) == ("rp_filter: the way back to 10.244.1.77 is routed by table main "
                                "dev cni0, not veth9")
    assert routing.row_suffix(e) == " rpf_route=main:unicast dev=cni0"
    out = jsonl.JsonFormatter(formatter(), node="n", run_id="r")
    obj = json.loads(out.line(e))
    assert obj["route"]["reverse"] is True

    class Run:
        node = "n"
    again = Rebuilder(False).event(Run(), obj, obj["ktime_ns"])
    assert routing.json_object(again) == obj["route"]


@pytest.mark.parametrize("backend, returns", [("kprobe", True), ("tracepoint", False)])
def test_icmp_senders_kprobed_end_their_own_lookups(monkeypatch, backend, returns):
    """With kprobes, an ICMP error's row comes at its sender's entry, before ICMP's own lookups:
    a kretprobe on the sender ends them (skbtracer.c on_icmp_sent); tracepoints need none."""
    monkeypatch.setattr(probes, "tracepoint_params", lambda _category, _event: 4)
    plan = probes.ProbePlan(backend)
    sender = plan.add("icmp6_send", "why", attach=[("kprobe", "icmp6_send", "why_icmp_0")])
    reset = plan.add("tcp_v4_send_reset", "why",
                     attach=[("kprobe", "tcp_v4_send_reset", "why_reset_1")])
    probes._plan_route_decisions(plan, FibLayouts(), backend)
    assert (("kretprobe", "icmp6_send", macros.ON_ICMP_SENT) in sender.attach) == returns
    assert [kind for kind, _t, _f in reset.attach] == ["kprobe"]
