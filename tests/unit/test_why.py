"""--why rows (issue 26): the words for what the stack sent back because of a
packet, the row's TRACE_INFO, its JSON and -r, the story's end, the flag and
the probe plan on kernels with and without the tracepoints."""

import json

import pytest
import skbt_unit_helpers  # noqa: F401  (repository on sys.path)

from skbtracer_lib import config, story
from skbtracer_lib.events import textrow
from skbtracer_lib.events.decode import KIND_DROP, KIND_ROUTE, Event, encode, encode_event
from skbtracer_lib.events.vocabulary import (KIND_WHY, WHY_ICMP, WHY_RESET, sent_back_words,
                                             why_trace_info)
from skbtracer_lib.outputs import jsonl
from skbtracer_lib.program import probes
from skbtracer_lib.replay.rebuild import Rebuilder

PROBE_NAMES = ["netif_receive_skb", "icmp_send", "tcp_send_reset", "kfree_skb", "__icmp_send"]
SKB = 0xffff888000001a00
UDP_TO_CLOSED = dict(saddr="10.244.1.2", sport=42611, daddr="10.244.1.3", dport=9999, l4proto=17)


class FixedClock:
    def column(self, ts_ns):
        return "12:34:56"

    def wall_ns(self, ts_ns):
        return 1_700_000_000_000_000_000 + ts_ns


def why_event(func="icmp_send", why=WHY_ICMP, why_type=3, why_code=3, why_info=0, ts_ns=2000,
              **packet):
    packet = packet or UDP_TO_CLOSED
    return Event(encode(ts_ns=ts_ns, skb=SKB, probe=PROBE_NAMES.index(func), kind=KIND_WHY,
                        netns=4026532001, ifname="eth0", why=why, why_type=why_type,
                        why_code=why_code, why_info=why_info, **packet))


@pytest.mark.parametrize("family, why, icmp_type, code, info, words", [
    (4, WHY_ICMP, 3, 3, 0, "ICMP port unreachable sent back"),
    (4, WHY_ICMP, 3, 4, 1280, "ICMP frag needed (MTU 1280) sent back"),
    (4, WHY_ICMP, 3, 4, 0, "ICMP frag needed sent back"),     # the tracepoint gives no MTU
    (4, WHY_ICMP, 11, 0, 0, "ICMP TTL exceeded sent back"),
    (4, WHY_ICMP, 3, 13, 0, "ICMP admin prohibited sent back"),
    (4, WHY_ICMP, 3, 1, 0, "ICMP host unreachable sent back"),
    (4, WHY_ICMP, 3, 7, 0, "ICMP destination unreachable sent back"),   # any other code
    (4, WHY_ICMP, 42, 1, 0, "ICMP type 42 code 1 sent back"),
    (4, WHY_ICMP, 11, 0, 1500, "ICMP TTL exceeded sent back"),   # an MTU only for frag needed
    (6, WHY_ICMP, 1, 4, 0, "ICMPv6 port unreachable sent back"),
    (6, WHY_ICMP, 2, 0, 1280, "ICMPv6 packet too big (MTU 1280) sent back"),
    (6, WHY_ICMP, 3, 0, 0, "ICMPv6 hop limit exceeded sent back"),
    (4, WHY_RESET, 0, 0, 0, "TCP reset sent back"),
    (6, WHY_RESET, 0, 0, 0, "TCP reset sent back"),
])
def test_sent_back_words(family, why, icmp_type, code, info, words):
    assert sent_back_words(family, why, icmp_type, code, info) == words


def test_trace_info_words():
    assert why_trace_info(WHY_ICMP, 3, 3, None) == " type=3 code=3"
    assert why_trace_info(WHY_ICMP, 3, 4, 1400) == " type=3 code=4 mtu=1400"
    assert why_trace_info(WHY_RESET, 0, 0, None) == ""


def formatter():
    return textrow.RowFormatter(PROBE_NAMES, None, lambda a: "fn+0x%x" % a, FixedClock())


def test_the_row_names_the_error_on_the_causing_packet():
    rows = formatter()
    assert rows.trace_info(why_event()) == "%x.0:icmp_send type=3 code=3" % SKB
    frag = why_event("__icmp_send", why_type=3, why_code=4, why_info=1280)
    assert rows.trace_info(frag) == "%x.0:__icmp_send type=3 code=4 mtu=1280" % SKB
    reset = why_event("tcp_send_reset", WHY_RESET, 0, 0, l4proto=6, tcp_flags=0x02,
                      saddr="10.244.1.2", sport=42612, daddr="10.244.1.3", dport=9999)
    row = rows.row(reset)
    assert row.endswith("T_SYN:10.244.1.2:42612->10.244.1.3:9999  %x.0:tcp_send_reset" % SKB)


def test_the_row_cache_keeps_rows_of_different_errors_apart():
    rows = formatter()
    port, ttl = why_event(), why_event(why_type=11, why_code=0)
    for e in (port, ttl, port):
        assert rows.row_of_raw(encode_event(e))[0] == rows.row(e)


def test_json_has_the_why_object_on_why_rows_only_and_r_rebuilds_it():
    out = jsonl.JsonFormatter(formatter(), node="n", run_id="r")
    obj = json.loads(out.line(why_event(why_type=3, why_code=4, why_info=1280)))
    assert obj["kind"] == "why" and obj["func"] == "icmp_send"
    assert obj["why"] == {"sent": "icmp", "icmp_type": 3, "icmp_code": 4, "mtu": 1280,
                          "text": "ICMP frag needed (MTU 1280) sent back"}
    reset = json.loads(out.line(why_event("tcp_send_reset", WHY_RESET, 0, 0)))
    assert reset["why"]["sent"] == "tcp_reset" and reset["why"]["icmp_type"] is None
    route = Event(encode(ts_ns=1000, skb=SKB, probe=0, kind=KIND_ROUTE, **UDP_TO_CLOSED))
    assert "why" not in json.loads(out.line(route))      # other rows as before
    # -r: the saved row and the event rebuilt from it say the same
    assert jsonl.text_row(obj, "12:34:56").endswith("icmp_send type=3 code=4 mtu=1280")

    class Run:
        node = "n"
    e = Rebuilder(False).event(Run(), obj, obj["ktime_ns"])
    assert (e.kind, e.why, e.why_type, e.why_code, e.why_info) == (KIND_WHY, WHY_ICMP, 3, 4, 1280)


def test_the_story_ends_with_what_was_sent_back():
    events = [Event(encode(ts_ns=1000, skb=SKB, probe=0, netns=4026532001, ifname="eth0",
                           **UDP_TO_CLOSED)),
              why_event(ts_ns=2000),
              Event(encode(ts_ns=3000, skb=SKB, probe=PROBE_NAMES.index("kfree_skb"),
                           kind=KIND_DROP, netns=4026532001, ifname="eth0", drop_reason=2,
                           **UDP_TO_CLOSED))]
    told = story.build(events, PROBE_NAMES, label=str, reasons=probes.DropReasons(
        {2: "NO_SOCKET"}, "test"), symbolize=lambda a: "?")
    (packet,) = told.packets
    (end,) = packet.ends()
    assert end.sent_back == "ICMP port unreachable sent back"
    assert told.end_text(end) == ("dropped at 4026532001/eth0: NO_SOCKET, "
                                  "ICMP port unreachable sent back")
    # without --why rows the end is as before
    told = story.build([events[0], events[2]], PROBE_NAMES, label=str, reasons=probes.DropReasons(
        {2: "NO_SOCKET"}, "test"), symbolize=lambda a: "?")
    (end,) = told.packets[0].ends()
    assert end.sent_back == "" and told.end_text(end) == "dropped at 4026532001/eth0: NO_SOCKET"


def test_the_flag():
    assert "why" not in config.parse_args([]).modes
    assert config.parse_args(["--why"]).modes == {"why"}
    assert config.parse_args(["--why", "--route"]).modes == {"why", "route"}
    assert "why" in config.parse_args(["--all"]).modes


@pytest.mark.parametrize("backend, params, functions, planned, noted", [
    # 6.12+: both tracepoints; the kprobe backend adds icmp6_send
    ("tracepoint", {"icmp_send": 3, "tcp_send_reset": 3}, set(),
     {"icmp_send", "tcp_send_reset"}, ["ICMPv6"]),
    ("kprobe", {"icmp_send": 3, "tcp_send_reset": 3}, {"icmp6_send"},
     {"icmp_send", "icmp6_send", "tcp_send_reset"}, []),
    # 5.10: no icmp_send tracepoint; a tcp_send_reset without reason misses no-socket resets
    ("kprobe", {"icmp_send": None, "tcp_send_reset": 2},
     {"__icmp_send", "icmp6_send", "tcp_v4_send_reset", "tcp_v6_send_reset"},
     {"__icmp_send", "icmp6_send", "tcp_v4_send_reset", "tcp_v6_send_reset"}, []),
    ("tracepoint", {"icmp_send": None, "tcp_send_reset": 2}, set(),
     {"tcp_send_reset"}, ["no ICMP error rows", "ICMPv6", "resets without a socket"]),
    ("tracepoint", {"icmp_send": None, "tcp_send_reset": None}, set(), set(),
     ["no ICMP error rows", "ICMPv6", "no TCP reset rows"]),
])
def test_the_plan(monkeypatch, backend, params, functions, planned, noted):
    monkeypatch.setattr(probes, "tracepoint_params", lambda _category, event: params[event])
    monkeypatch.setattr(probes, "known_symbols",
                        lambda: {f: ("", [0xffffffff81000000]) for f in functions})
    monkeypatch.setattr(probes, "skb_argument", lambda f, m, default: (default, False, "test"))
    plan = probes.ProbePlan(backend)
    probes._plan_why(plan, backend)
    assert {p.name for p in plan.probes} == planned
    assert all(p.kind == "why" for p in plan.probes)
    assert len(plan.notes) == len(noted)
    for note, words in zip(plan.notes, noted):
        assert words in note
