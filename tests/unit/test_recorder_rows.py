"""--on-trouble's rows that are not the kernel's own (program/recorder.py):
the rows --slow's sweep rebuilds from a record (told_rows), on a record laid
out as skbtracer.c's struct flight (read from its text), and the marker of a
path longer than the record's sightings (unkept) in the text row, the JSON
object and -r's rebuild of both."""

import ctypes
import json
import os

import skbt_unit_helpers  # noqa: F401  (repository on sys.path)
from event_struct import members

from skbtracer_lib.events import textrow
from skbtracer_lib.events.decode import KIND_ROUTE, Event, encode
from skbtracer_lib.outputs import jsonl
from skbtracer_lib.program import recorder
from skbtracer_lib.replay.rebuild import Rebuilder

C_TEXT = open(os.path.join(os.path.dirname(__file__), "..", "..", "skbtracer.c")).read()
CTYPES = {"u64": ctypes.c_uint64, "u32": ctypes.c_uint32, "u16": ctypes.c_uint16,
          "u8": ctypes.c_uint8, "char": ctypes.c_char}
SKB = 0xffff888000001a00


def struct_type(name, extra=()):
    """A ctypes struct of skbtracer.c's struct name, as bcc makes a map's leaf."""
    text = C_TEXT.replace("struct sighting s[RECORDER_SIGHTINGS];", "")
    fields = [(m.name, CTYPES[m.ctype] * m.count if m.count > 1 else CTYPES[m.ctype])
              for m in members(text, name)[0]]
    return type(name, (ctypes.Structure,), {"_fields_": fields + list(extra)})


Sighting = struct_type("sighting")
Flight = struct_type("flight", [("s", Sighting * recorder.SIGHTINGS)])


class FixedClock:
    def column(self, ts_ns):
        return "12:34:56"

    def wall_ns(self, ts_ns):
        return 1_700_000_000_000_000_000 + ts_ns


def formatter():
    return textrow.RowFormatter(["net_dev_queue", "netif_rx"], None, lambda a: "fn",
                                FixedClock())


def flight_of(rows):
    """A record of rows sightings: sighting n at ts 1000 + n, netns n."""
    f = Flight(first_ns=1000, seen=rows, family=4, l4proto=17, ip_id=0x1234)
    for n in range(rows):
        s = f.s[n % recorder.SIGHTINGS]
        s.ts_ns, s.netns, s.probe, s.kind, s.ttl = 1000 + n, n, n % 2, KIND_ROUTE, 64 - n
        s.ifname = b"eth%d" % n
        s.saddr[:4] = [10, 244, 1, 2]
        s.daddr[:4] = [10, 244, 2, 77]
        s.sport, s.dport = 0x5aa1, 0xf023        # network order, as the C copies them
    return f


def test_struct_sizes_are_what_memory_bytes_counts():
    assert ctypes.sizeof(Sighting) == recorder.SIGHTING_BYTES
    assert ctypes.sizeof(Flight) - ctypes.sizeof(Sighting) * recorder.SIGHTINGS == \
        recorder.FLIGHT_HEAD_BYTES


def test_a_short_record_is_told_whole_without_a_marker():
    raws = recorder.told_rows(flight_of(5), SKB)
    events = [Event(raw) for raw in raws]
    assert [e.ts_ns for e in events] == [1000, 1001, 1002, 1003, 1004]
    assert [e.netns for e in events] == [0, 1, 2, 3, 4]
    assert all(e.skb == SKB and e.stack_id == -1 and e.unkept == 0 for e in events)
    e = events[3]
    assert (e.family, e.l4proto, e.ip_id, e.ttl, e.ifname) == (4, 17, 0x3412, 61, "eth3")
    assert (e.saddr, e.daddr, e.sport, e.dport) == ("10.244.1.2", "10.244.2.77", 0xa15a, 0x23f0)
    row = formatter().row(e)
    assert "U:10.244.1.2:41306->10.244.2.77:9200" in row and row.endswith("netif_rx")


def test_a_long_record_tells_its_last_sightings_and_how_many_it_lost():
    raws = recorder.told_rows(flight_of(40), SKB)
    events = [Event(raw) for raw in raws]
    assert len(events) == recorder.SIGHTINGS
    assert [e.ts_ns for e in events] == list(range(1008, 1040))
    assert [e.unkept for e in events] == [8] + [0] * 31
    assert formatter().row(events[0]).endswith(
        "%x.0:net_dev_queue (8 more sightings not kept)" % SKB)
    assert "not kept" not in formatter().row(events[1])


def test_rows_already_told_are_not_told_again():
    f = flight_of(40)
    f.told = 35
    assert [Event(raw).ts_ns for raw in recorder.told_rows(f, SKB)] == list(range(1035, 1040))
    assert all(Event(raw).unkept == 0 for raw in recorder.told_rows(f, SKB))


def test_the_marker_in_json_and_after_r():
    out = jsonl.JsonFormatter(formatter(), node="n", run_id="r")
    marked = Event(encode(ts_ns=1000, skb=SKB, probe=0, kind=KIND_ROUTE, netns=7, ifname="eth0",
                          saddr="10.244.1.2", daddr="10.244.2.77", l4proto=17, unkept=8))
    obj = json.loads(out.line(marked))
    assert obj["unkept"] == 8
    assert "unkept" not in json.loads(out.line(Event(encode(ts_ns=1, skb=SKB, netns=7))))
    assert jsonl.text_row(obj, "12:34:56") == formatter().row(marked)

    class Run:
        node = "n"
    again = Rebuilder(False).event(Run(), obj, obj["ktime_ns"])
    assert formatter().trace_info(again) == formatter().trace_info(marked)


def test_sweep_period_is_a_fraction_of_slow_within_bounds():
    assert recorder.sweep_period_ns(100 * 10**6) == 25 * 10**6
    assert recorder.sweep_period_ns(10**3) == recorder.MIN_SWEEP_NS
    assert recorder.sweep_period_ns(3600 * 10**9) == recorder.MAX_SWEEP_NS


def test_the_story_says_what_was_not_kept():
    from skbtracer_lib import story
    from skbtracer_lib.story import render_json
    events = [Event(raw) for raw in recorder.told_rows(flight_of(40), SKB)]
    told = story.build(events, ["net_dev_queue", "netif_rx"], label=str, reasons=None,
                       symbolize=lambda a: "?")
    assert told.path_text(told.packets[0]).startswith("(8 more sightings not kept) ")
    copies = render_json._summary(told, told.packets[0])["copies"]
    assert [c.get("unkept") for c in copies] == [8]
