"""Encapsulated packets (issue 24; skbtracer_lib/events/tunnel.py): the row's TRACE_INFO suffix,
the JSON "tunnel" object, -r's rebuild and filters, and the ports the C is given."""

import json

import skbt_unit_helpers  # noqa: F401  (repository on sys.path)

from skbtracer_lib import config
from skbtracer_lib.events import textrow, tunnel
from skbtracer_lib.events.decode import KIND_ROUTE, Event, encode, encode_event
from skbtracer_lib.outputs import jsonl
from skbtracer_lib.program import macros
from skbtracer_lib.replay.rebuild import Rebuilder
from skbtracer_lib.replay.session import event_filter

SKB = 0xffff888000001a00
INNER = dict(saddr="10.244.1.2", sport=40000, daddr="10.244.2.2", dport=9000, l4proto=17)
VXLAN = dict(tunnel=tunnel.VXLAN, tunnel_id=1, tunnel_sport=51234, tunnel_dport=8472,
             tunnel_saddr=bytes([192, 168, 0, 1]), tunnel_daddr=bytes([192, 168, 0, 2]))
IPIP = dict(tunnel=tunnel.IPIP, tunnel_saddr=bytes([192, 168, 0, 1]),
            tunnel_daddr=bytes([192, 168, 0, 2]))


class FixedClock:
    def column(self, ts_ns):
        return "12:34:56"

    def wall_ns(self, ts_ns):
        return 1_700_000_000_000_000_000 + ts_ns


def event(**outer):
    return Event(encode(ts_ns=1000, skb=SKB, probe=0, kind=KIND_ROUTE, netns=4026532001,
                        ifname="eth0", **INNER, **outer))


def formatter():
    return textrow.RowFormatter(["net_dev_queue"], None, lambda a: "fn", FixedClock())


def test_the_row_shows_the_inner_flow_and_ends_in_the_tunnel():
    rows = formatter()
    row = rows.row(event(**VXLAN))
    assert "U:10.244.1.2:40000->10.244.2.2:9000" in row
    assert row.endswith("%x.0:net_dev_queue vxlan vni 1 192.168.0.1->192.168.0.2" % SKB)
    assert rows.trace_info(event(**IPIP)).endswith(":net_dev_queue ipip 192.168.0.1->192.168.0.2")
    assert rows.trace_info(event()) == "%x.0:net_dev_queue" % SKB     # not encapsulated: as before
    for e in (event(**VXLAN), event(**IPIP), event(), event(**dict(VXLAN, tunnel_id=2))):
        assert rows.row_of_raw(encode_event(e))[0] == rows.row(e)    # the cache keeps them apart


def test_json_has_the_tunnel_object_on_encapsulated_rows_only_and_r_rebuilds_it():
    out = jsonl.JsonFormatter(formatter(), node="n", run_id="r")
    obj = json.loads(out.line(event(**VXLAN)))
    assert obj["saddr"] == "10.244.1.2" and obj["dport"] == 9000
    assert obj["tunnel"] == {"type": "vxlan", "vni": 1, "saddr": "192.168.0.1",
                             "daddr": "192.168.0.2", "sport": 51234, "dport": 8472}
    assert json.loads(out.line(event(**IPIP)))["tunnel"] == {
        "type": "ipip", "vni": None, "saddr": "192.168.0.1", "daddr": "192.168.0.2",
        "sport": None, "dport": None}
    assert "tunnel" not in json.loads(out.line(event()))
    assert jsonl.text_row(obj, "12:34:56").endswith("vxlan vni 1 192.168.0.1->192.168.0.2")

    class Run:
        node = "n"
    e = Rebuilder(False).event(Run(), obj, obj["ktime_ns"])
    assert formatter().trace_info(e) == formatter().trace_info(event(**VXLAN))
    plain = Rebuilder(False).event(Run(), json.loads(out.line(event())), 1000)
    assert plain.tunnel == 0


def test_r_filters_match_the_inner_or_the_outer_header():
    out = jsonl.JsonFormatter(formatter(), node="n", run_id="r")
    vxlan, plain = (json.loads(out.line(e)) for e in (event(**VXLAN), event()))

    def kept(*argv):
        test = event_filter(config.parse_args(["-r", "x.jsonl", *argv]))
        return [o is vxlan for o in (vxlan, plain) if test(o)]

    assert kept("-H", "10.244.2.2") == [True, False]
    assert kept("-H", "192.168.0.2") == [True]
    assert kept("-P", "8472") == [True]
    assert kept("-P", "9000") == [True, False]
    assert kept("-H", "192.168.0.9") == []


def test_the_c_gets_the_port_sets_in_network_byte_order_as_loaded():
    d = tunnel.defines()
    assert d["%s(p)" % macros.VXLAN_PORT] == "((p) == %d || (p) == %d)" % (0xB512, 0x1821)
    assert d["%s(p)" % macros.GENEVE_PORT] == "((p) == %d)" % 0xC117
    assert d[macros.TUNNEL_VXLAN] == tunnel.VXLAN and d[macros.TUNNEL_SIT] == tunnel.SIT
