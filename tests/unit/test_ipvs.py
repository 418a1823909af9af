"""--iptable's IPVS decisions (issue 25): the row's suffix, the story's
words, JSON's "ipvs" and -r, the row cache keeping choices apart, and the
probe plan with and without ip_vs."""

import json
import socket

import pytest
import skbt_unit_helpers  # noqa: F401  (repository on sys.path)

from skbtracer_lib import story
from skbtracer_lib.events import ipvs, textrow
from skbtracer_lib.events.decode import KIND_ROUTE, Event, encode, encode_event
from skbtracer_lib.outputs import jsonl
from skbtracer_lib.program import macros, probes
from skbtracer_lib.replay.rebuild import Rebuilder

PROBE_NAMES = ["netif_receive_skb", "ip_vs_schedule", "net_dev_queue"]
SKB = 0xffff888000001a00
UDP = dict(saddr="10.244.1.2", sport=43101, daddr="10.96.0.30", dport=53, l4proto=17,
           netns=4026532001, ifname="cbr0")


class FixedClock:
    def column(self, ts_ns):
        return "12:34:56"

    def wall_ns(self, ts_ns):
        return 1_700_000_000_000_000_000 + ts_ns


def chose(real="10.244.1.3", port=9000, fwd=0, sched="rr", known=ipvs.CHOSE, ts_ns=2000, **fields):
    family = socket.AF_INET6 if ":" in real else socket.AF_INET
    raddr = socket.inet_pton(family, real).ljust(16, b"\0")
    return Event(encode(ts_ns=ts_ns, skb=SKB, probe=1, kind=KIND_ROUTE, ipvs_known=known,
                        ipvs_raddr=raddr, ipvs_rport=port, ipvs_fwd=fwd, ipvs_sched=sched,
                        ipvs_daf=10 if family == socket.AF_INET6 else 2, **dict(UDP, **fields)))


@pytest.mark.parametrize("event, suffix, words", [
    (chose(), " ipvs=rr:masq->10.244.1.3:9000",
     "IPVS 10.96.0.30:53/udp rr -> 10.244.1.3:9000 (masq)"),
    (chose(fwd=3, sched="wlc"), " ipvs=wlc:droute->10.244.1.3:9000",
     "IPVS 10.96.0.30:53/udp wlc -> 10.244.1.3:9000 (droute)"),
    (chose(real="fd00::3", port=53, fwd=2), " ipvs=rr:tunnel->[fd00::3]:53",
     "IPVS 10.96.0.30:53/udp rr -> [fd00::3]:53 (tunnel)"),
    (chose(known=ipvs.NO_DEST, real="0.0.0.0", port=0), " ipvs=rr:no_real_server",
     "IPVS 10.96.0.30:53/udp rr: no real server"),
])
def test_row_suffix_and_words(event, suffix, words):
    assert ipvs.row_suffix(event) == suffix
    assert ipvs.words(event, "10.96.0.30:53") == words


def formatter():
    return textrow.RowFormatter(PROBE_NAMES, None, lambda a: "fn+0x%x" % a, FixedClock())


def test_the_row_ends_in_the_choice_and_the_cache_keeps_choices_apart():
    rows = formatter()
    one, two = chose(), chose(real="10.244.1.4")
    plain = Event(encode(ts_ns=2000, skb=SKB, probe=2, kind=KIND_ROUTE, **UDP))
    assert rows.trace_info(one) == "%x.0:ip_vs_schedule ipvs=rr:masq->10.244.1.3:9000" % SKB
    assert rows.trace_info(plain) == "%x.0:net_dev_queue" % SKB
    for e in (one, two, plain, one):
        assert rows.row_of_raw(encode_event(e))[0] == rows.row(e)


@pytest.mark.parametrize("event", [chose(), chose(known=ipvs.NO_DEST, real="0.0.0.0", port=0),
                                   chose(real="fd00::3", fwd=1)])
def test_json_ipvs_and_r_rebuilds_it(event):
    out = jsonl.JsonFormatter(formatter(), node="n", run_id="r")
    obj = json.loads(out.line(event))
    assert obj["ipvs"] == ipvs.json_object(event)
    assert jsonl.text_row(obj, "12:34:56").endswith(ipvs.row_suffix(event))

    class Run:
        node = "n"
    again = Rebuilder(False).event(Run(), obj, obj["ktime_ns"])
    assert ipvs.json_object(again) == obj["ipvs"] and ipvs.row_suffix(again) == ipvs.row_suffix(event)
    plain = Event(encode(ts_ns=1000, skb=SKB, probe=0, kind=KIND_ROUTE, **UDP))
    assert "ipvs" not in json.loads(out.line(plain))


def test_the_story_names_the_choice():
    events = [Event(encode(ts_ns=1000, skb=SKB, probe=0, **UDP)), chose(),
              Event(encode(ts_ns=3000, skb=SKB, probe=2, **UDP))]
    told = story.build(events, PROBE_NAMES, label=str, reasons=None, symbolize=lambda a: "?")
    (end,) = told.packets[0].ends()
    assert end.balanced == "IPVS 10.96.0.30:53/udp rr -> 10.244.1.3:9000 (masq)"
    assert end.balanced in told.end_text(end)


class IpvsLayouts:
    def __init__(self, ok=True):
        self.ok = ok

    def ipvs(self, module):
        return (True, "") if self.ok else (False, "no layout in BTF: ip_vs_conn")


@pytest.mark.parametrize("symbols, skb_arg, layouts_ok, planned, said", [
    ({"ip_vs_schedule": ("ip_vs", [])}, 2, True, True, ""),
    ({}, 2, True, False, "no IPVS decisions: ip_vs_schedule not in /proc/kallsyms"),
    ({"ip_vs_schedule": ("ip_vs", [])}, 3, True, False, "skb is arg 3"),
    ({"ip_vs_schedule": ("ip_vs", [])}, 2, False, False, "no layout in BTF"),
])
def test_the_plan(monkeypatch, symbols, skb_arg, layouts_ok, planned, said):
    monkeypatch.setattr(probes, "known_symbols", lambda: symbols)
    monkeypatch.setattr(probes, "skb_argument", lambda f, m, d: (skb_arg, False, "BTF"))
    plan = probes.ProbePlan("kprobe")
    probes._plan_ipvs(plan, IpvsLayouts(layouts_ok))
    assert (macros.IPVS_DECISIONS in plan.defines) == planned
    assert [p.name for p in plan.probes] == (["ip_vs_schedule"] if planned else [])
    if planned:
        (probe,) = plan.probes
        assert plan.defines[macros.IPVS_PROBE_ID] == probe.id
        assert [a[0] for a in probe.attach] == ["kprobe", "kretprobe"]
    else:
        assert any(said in text for text in plan.notes + [r for _n, r in plan.skipped]), \
            (plan.notes, plan.skipped)
