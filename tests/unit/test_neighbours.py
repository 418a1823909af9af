"""--why's neighbour waits (issue 26): the words of a queueing row and of a
drop row, the row's suffix, JSON's "neigh" and -r, the story's end (one
wait per packet: the drop's, else the queueing row's up to the packet's
next row), and the probe plan."""

import json
import socket
from types import SimpleNamespace

import pytest
import skbt_unit_helpers  # noqa: F401  (repository on sys.path)

from skbtracer_lib import story
from skbtracer_lib.events import neighbours, textrow
from skbtracer_lib.events.decode import KIND_DROP, KIND_ROUTE, Event, encode
from skbtracer_lib.events.vocabulary import KIND_WHY, WHY_ICMP, WHY_NEIGH
from skbtracer_lib.outputs import jsonl
from skbtracer_lib.program import macros, probes
from skbtracer_lib.replay.rebuild import Rebuilder

PROBE_NAMES = ["neigh_event_send_done", "net_dev_queue", "kfree_skb", "icmp_send"]
SKB = 0xffff888000001a00
UDP = dict(saddr="10.244.1.2", sport=42700, daddr="10.244.1.99", dport=9000, l4proto=17,
           netns=4026532001, ifname="eth0")
UDP6 = dict(UDP, saddr="fd00:244:1::2", daddr="fd00:244:1::99", family=6)
INCOMPLETE, FAILED = neighbours.NUD_NUMBERS["INCOMPLETE"], neighbours.NUD_NUMBERS["FAILED"]
REASONS = probes.DropReasons({58: "NEIGH_FAILED", 59: "NEIGH_QUEUEFULL", 2: "NOT_SPECIFIED"},
                             "test")


def packed(address):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    raw = socket.inet_pton(family, address)
    return raw + bytes(16 - len(raw))


def queued(ts_ns=1000, header=UDP):
    return Event(encode(ts_ns=ts_ns, skb=SKB, probe=0, kind=KIND_WHY, why=WHY_NEIGH,
                        neigh_family=10 if ":" in header["daddr"] else 2, neigh_state=INCOMPLETE,
                        neigh_addr=packed(header["daddr"]), **header))


def dropped(ts_ns=600_001_000, waited_us=600_000, state=FAILED, reason=58, header=UDP):
    return Event(encode(ts_ns=ts_ns, skb=SKB, probe=2, kind=KIND_DROP, drop_reason=reason,
                        neigh_family=10 if ":" in header["daddr"] else 2, neigh_state=state,
                        neigh_addr=packed(header["daddr"]), neigh_waited_us=waited_us, **header))


def test_the_words_of_each_row():
    assert neighbours.words(queued()) == "queued for ARP 10.244.1.99 on eth0"
    assert neighbours.words(queued(), 12) == "waited 12 us for ARP 10.244.1.99 on eth0"
    assert neighbours.words(dropped()) == "waited 600.0 ms for ARP 10.244.1.99 on eth0: FAILED"
    assert neighbours.words(dropped(waited_us=3_000_000)) == \
        "waited 3.0 s for ARP 10.244.1.99 on eth0: FAILED"
    assert neighbours.words(dropped(header=UDP6)) == \
        "waited 600.0 ms for ND fd00:244:1::99 on eth0: FAILED"
    assert neighbours.state_name(0) == "NONE" and neighbours.state_name(0x21) == "0x21"


def formatter():
    clock = SimpleNamespace(column=lambda ts: "12:34:56", wall_ns=lambda ts: ts)
    return textrow.RowFormatter(PROBE_NAMES, REASONS, lambda a: "fn+0x%x" % a, clock)


def test_the_rows_end_in_the_neighbour():
    rows = formatter()
    assert rows.trace_info(queued()) == \
        "%x.0:neigh_event_send_done neigh=10.244.1.99:INCOMPLETE" % SKB
    assert rows.trace_info(dropped()).endswith(
        "kfree_skb reason=NEIGH_FAILED neigh=10.244.1.99:FAILED waited=600.0ms")


@pytest.mark.parametrize("event", [queued(), dropped(), dropped(header=UDP6)])
def test_json_neigh_and_r_rebuilds_it(event):
    out = jsonl.JsonFormatter(formatter(), node="n", run_id="r")
    obj = json.loads(out.line(event))
    assert obj["neigh"]["address"] == event.daddr
    assert obj["neigh"]["dev"] == "eth0"
    assert obj["neigh"]["text"] == neighbours.words(event)
    plain = Event(encode(ts_ns=1000, skb=SKB, probe=1, kind=KIND_ROUTE, **UDP))
    assert "neigh" not in json.loads(out.line(plain))
    assert jsonl.text_row(obj, "12:34:56").endswith(neighbours.row_suffix(event))

    class Run:
        node = "n"
    again = Rebuilder(False).event(Run(), obj, obj["ktime_ns"])
    assert neighbours.json_object(again) == obj["neigh"]


def tell(events):
    told = story.build(events, PROBE_NAMES, label=str, reasons=REASONS,
                       symbolize=lambda a: "neigh_invalidate+0x7e")
    (end,) = told.packets[0].ends()
    return told, end


def test_the_story_tells_the_drop_s_wait_once():
    icmp = Event(encode(ts_ns=600_000_500, skb=SKB, probe=3, kind=KIND_WHY, why=WHY_ICMP,
                        why_type=3, why_code=1, **UDP))
    told, end = tell([queued(), icmp, dropped()])
    assert end.neighbour == "waited 600.0 ms for ARP 10.244.1.99 on eth0: FAILED"
    assert told.end_text(end) == (
        "dropped at 4026532001/eth0: NEIGH_FAILED, waited 600.0 ms "
        "for ARP 10.244.1.99 on eth0: FAILED, ICMP host unreachable sent back")


def test_the_story_tells_a_resolved_wait_up_to_the_next_row():
    sent = Event(encode(ts_ns=13_000, skb=SKB, probe=1, kind=KIND_ROUTE, **UDP))
    _told, end = tell([queued(ts_ns=1000), sent])
    assert end.neighbour == "waited 12 us for ARP 10.244.1.99 on eth0"
    _told, end = tell([queued(ts_ns=1000)])
    assert end.neighbour == "queued for ARP 10.244.1.99 on eth0"


class NeighLayouts:
    def __init__(self, ok=True):
        self.ok = ok

    def neigh(self):
        return (True, "") if self.ok else (False, "no layout in BTF: neighbour")


@pytest.mark.parametrize("params, layouts_ok, backend, modes, planned, note", [
    (2, True, "tracepoint", {"why", "drop"}, True, None),
    (2, True, "tracepoint", {"why"}, True, "without --drop"),
    (None, True, "tracepoint", {"why", "drop"}, False, "no neigh:neigh_event_send_done"),
    (2, False, "tracepoint", {"why", "drop"}, False, "no layout in BTF"),
    (2, True, "kprobe", {"why", "drop"}, True, None),
])
def test_the_plan(monkeypatch, params, layouts_ok, backend, modes, planned, note):
    monkeypatch.setattr(probes, "tracepoint_params", lambda _category, _event: params)
    monkeypatch.setattr(probes, "drop_reasons", lambda: REASONS)
    plan = probes.ProbePlan(backend)
    probes._plan_neighbours(plan, NeighLayouts(layouts_ok), SimpleNamespace(modes=modes))
    assert (macros.NEIGH_WAITS in plan.defines) == planned
    assert [p.name for p in plan.probes] == (["neigh_event_send_done"] if planned else [])
    if planned:     # the reasons this kernel has; NEIGH_DEAD it has not
        assert plan.defines[macros.DROP_REASON_NEIGH_FAILED] == 58
        assert plan.defines[macros.DROP_REASON_NEIGH_QUEUEFULL] == 59
        assert macros.DROP_REASON_NEIGH_DEAD not in plan.defines
    assert note is None or any(note in n for n in plan.notes), plan.notes
