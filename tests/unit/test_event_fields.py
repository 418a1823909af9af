"""The field table (events/fields.py) is struct event_t in skbtracer.c, read
out of the C text here (no root, no bcc): names, order, types, counts,
offsets and size by C's alignment rules. Then what is derived from it:
the structs, encode/decode of every field, the row caches' keys (no field
outside them changes a row), the JSON keys of table fields, and adding a
field as one line in the table and one in the struct (on a copy of the tree)."""

import json
import os
import random
import re
import shutil
import subprocess
import sys

import pytest
import skbt_unit_helpers  # noqa: F401  (repository on sys.path)
from event_struct import NotAMember, differences, members

from skbtracer_lib.events import decode, fields, ipvs, textrow
from skbtracer_lib.events.fields import FIELDS, Field
from skbtracer_lib.events.textrow import Clock, RowFormatter
from skbtracer_lib.events.vocabulary import KINDS, WHY_ICMP, WHY_NEIGH, WHY_RESET
from skbtracer_lib.outputs import jsonl
from skbtracer_lib.program import probes

REPO = str(skbt_unit_helpers.REPO)
C_SOURCE = os.path.join(REPO, "skbtracer.c")
HERE = os.path.dirname(os.path.abspath(__file__))


def c_text():
    with open(C_SOURCE) as f:
        return f.read()


def test_struct_event_t_is_the_field_table():
    c_members, size = members(c_text())
    assert differences(c_members, FIELDS) == []
    assert size == fields.EVENT_SIZE == decode.EVENT.size


def test_the_table_s_offsets_follow_c_s_alignment():
    """The reader here lays out its own made-up struct as C does: u8, u64
    (7 bytes of padding), u16[3], then the end padded to 8."""
    made_up = "struct event_t {\n    u8 a;\n    u64 b; /* x */\n    u16 c[3];\n};\n"
    c_members, size = members(made_up)
    assert [(m.name, m.offset, m.size) for m in c_members] == [("a", 0, 1), ("b", 8, 8),
                                                               ("c", 16, 6)]
    assert size == 24
    table = (Field("a", "u8"), Field("b", "u64"), Field("c", "u16", 3))
    assert fields.lay_out(table) == 24
    assert differences(c_members, table) == []


def with_member(text, after, line):
    """The C text with a line added to struct event_t after member `after`."""
    anchor = "    %s;" % after
    start = text.index("struct event_t {")
    at = text.index(anchor, start) + len(anchor)
    at = text.index("\n", at) + 1
    return text[:at] + "    %s\n" % line + text[at:]


def test_a_field_on_one_side_only_is_caught():
    text = c_text()
    c_members, _size = members(with_member(text, "s32 stack_id", "u32 made_up;"))
    said = differences(c_members, FIELDS)
    assert "made_up is in struct event_t, not in the field table" in said
    assert any(s.startswith("tcp_seq: C has") for s in said)     # and what it moved
    table = [Field(f.name, f.ctype, f.count, f.seen, f.json, f.mask) for f in FIELDS]
    table.insert(9, Field("made_up", "u32"))
    fields.lay_out(table)
    said = differences(members(text)[0], table)
    assert "made_up is in the field table, not in struct event_t" in said


@pytest.mark.parametrize("old, new", [("u16 probe;", "u32 probe;"),
                                      ("char ifname[16];", "char ifname[20];"),
                                      ("u8  dmac[6];\n    u8  smac[6];",
                                       "u8  smac[6];\n    u8  dmac[6];")],
                         ids=["type", "count", "order"])
def test_a_changed_member_is_caught(old, new):
    text = c_text()
    assert old in text
    assert differences(members(text.replace(old, new, 1))[0], FIELDS)


def test_a_line_the_reader_does_not_understand_fails():
    text = with_member(c_text(), "u32 len", "struct foo bar;")
    with pytest.raises(NotAMember, match="struct foo bar"):
        members(text)


# --- what is derived from the table ------------------------------------------

def distinct_values():
    """A value for every decoded field, each different from the others."""
    values = {}
    for k, f in enumerate(fields.DECODED):
        if f.seen == fields.TEXT:
            values[f.name] = "n%d" % k
        elif f.seen == fields.BYTES:
            values[f.name] = bytes(range(k, k + f.size))
        elif f.seen == fields.ADDRESS:
            values[f.name] = "10.0.%d.1" % k
        elif f.mask is not None:
            values[f.name] = (k + 1) & f.mask
        else:
            values[f.name] = (k + 1) * 0x0101 if f.size > 1 else k + 1
    values["family"] = 4
    return values


def test_every_field_encodes_where_the_table_puts_it_and_decodes_back():
    values = distinct_values()
    raw = decode.encode(**values)
    assert len(raw) == fields.EVENT_SIZE
    e = decode.Event(raw)
    for f in fields.DECODED:
        assert getattr(e, f.name) == values[f.name], f.name
        number = values[f.name]
        if f.seen in (fields.NUMBER, fields.NETWORK):
            order = "big" if f.seen == fields.NETWORK else "little"
            assert raw[f.span] == number.to_bytes(f.size, order, signed=f.ctype == "s32"), f.name
    assert decode.netns_of(raw) == values["netns"]
    assert decode.encode_event(e) == raw
    with pytest.raises(TypeError, match="no field nonsense"):
        decode.encode(nonsense=1)


def formatter():
    return RowFormatter(["ip_rcv", "kfree_skb", "nf_hook_slow"],
                        probes.DropReasons({2: "NOT_SPECIFIED"}, "t"),
                        lambda a: "sym+0x%x" % (a & 0xFFF), Clock(relative=False, offset_ns=0))


def events(rng, n):
    for _ in range(n):
        family = rng.choice((4, 6))
        address = "10.0.0.%d" % rng.randrange(256) if family == 4 else "fd00::%x" % rng.randrange(1 << 16)
        yield decode.encode(
            kind=rng.choice((1, 2, 3)), family=family, l4proto=rng.choice((6, 17, 1, 58, 47)),
            tcp_flags=rng.randrange(256), icmp_type=rng.choice((0, 8, 128, 3)),
            probe=rng.randrange(4), sport=rng.randrange(65536), dport=rng.randrange(65536),
            saddr=address, daddr=address, ifname=rng.choice(("eth0", "a b", "")),
            pf=rng.choice((2, 7, 10)), hook=rng.randrange(6), verdict=rng.randrange(6),
            table=rng.choice(("filter", "")), location=rng.choice((0, 0xFFFFFFFF81000000)),
            drop_reason=rng.choice((0, 2)), netns=rng.randrange(3), pkt_type=rng.randrange(8),
            ts_ns=rng.randrange(1 << 40), skb=rng.randrange(1 << 48))


def scrambled(rng, raw, names):
    """raw with the bytes of every field but names random."""
    b = bytearray(raw)
    for f in FIELDS:
        if f.name not in names:
            b[f.span] = rng.randbytes(f.size)
    return bytes(b)


def test_no_field_outside_row_fields_changes_a_row():
    """textrow.ROW_FIELDS and TRACE_FIELDS are what row_of_raw's and the C
    rows' caches key on: a field the row shows and they miss would merge rows."""
    rng = random.Random(5)
    fmt = formatter()
    shown = set(textrow.ROW_FIELDS) | {"ts_ns", "skb"}
    for raw in events(rng, 300):
        row = fmt.row(decode.Event(raw))
        assert fmt.row(decode.Event(scrambled(rng, raw, shown))) == row
        trace = fmt.trace_after_skb(decode.Event(raw))
        assert fmt.trace_after_skb(decode.Event(scrambled(rng, raw, textrow.TRACE_FIELDS))) == trace


def test_the_row_key_is_the_bytes_of_the_row_fields_and_no_others():
    raw = decode.encode()
    key = textrow._ROW_KEY.unpack_from(raw)
    shown = {i for name in textrow.ROW_FIELDS for i in range(*fields.at(name).span.indices(1 << 20))}
    for i in range(fields.EVENT_SIZE):
        b = bytearray(raw)
        b[i] ^= 0xFF
        assert (textrow._ROW_KEY.unpack_from(bytes(b)) != key) == (i in shown), i


def test_the_c_rows_are_told_the_trace_fields_and_every_offset():
    spec = textrow.c_spec()
    assert spec["event_size"] == fields.EVENT_SIZE
    assert spec["trace_fields"] == tuple((fields.at(n).offset, fields.at(n).size)
                                         for n in textrow.TRACE_FIELDS)
    assert spec["fields"]["sport"] == (fields.at("sport").offset, 2, True)


def test_no_table_field_s_json_key_is_a_key_the_object_has_by_hand():
    e = decode.Event(decode.encode())
    obj = jsonl.JsonFormatter(formatter(), node="n", run_id="r").event(e)
    for f in fields.JSON_FIELDS:
        assert list(obj).count(f.json) == 1, f.name


# --- adding a field ---------------------------------------------------------------

ONE_FIELD_CHECKS = r"""
import json, random, sys
sys.path.insert(0, sys.argv[1])                     # tests/unit: event_struct
from event_struct import differences, members
from skbtracer_lib.events import decode, fields, textrow
from skbtracer_lib.events.textrow import Clock, RowFormatter
from skbtracer_lib.outputs import jsonl
from skbtracer_lib.program import probes
from skbtracer_lib.replay.rebuild import Rebuilder

assert differences(members(open("skbtracer.c").read())[0], fields.FIELDS) == []
raw = decode.encode(made_up=0xC0FFEE, sport=80, dport=8080, l4proto=6, saddr="10.0.0.1",
                    daddr="10.0.0.2", ifname="eth0", ts_ns=10**9, skb=0xABC, pid=7)
e = decode.Event(raw)
assert e.made_up == 0xC0FFEE and e.sport == 80 and e.pid == 7
fmt = RowFormatter(["ip_rcv"], probes.DropReasons({}, "t"), hex, Clock(False, offset_ns=0))
jf = jsonl.JsonFormatter(fmt, node="n", run_id="r")
line = jf.line(e)
assert line == jsonl.dumps(jf.event(e))
assert '"made_up": 12648430, ' in line.split('"pid": 7, ', 1)[1].split('"nf": null', 1)[0], line
class Run:
    node = "n"
back = Rebuilder(False).event(Run, json.loads(line), 10**9)
assert back.made_up == 0xC0FFEE
assert fmt.row_of_raw(raw)[0] == fmt.row(e)
fast = fmt.in_c()
rows_in_c = fast is not None
if rows_in_c:
    rng = random.Random(1)
    for _ in range(2000):
        b = bytearray(rng.randbytes(fields.EVENT_SIZE))
        b[fields.at("ts_ns").span] = rng.randrange(1 << 50).to_bytes(8, "little")
        b[fields.at("family").span] = bytes([rng.choice((4, 6))])
        made = fast.row(bytes(b))
        assert made is None or made.decode() == fmt.row(decode.Event(bytes(b))) + "\n"
print(json.dumps({"event_size": fields.EVENT_SIZE, "rows_in_c": rows_in_c}))
"""


def test_a_new_field_is_one_line_in_the_table_and_one_in_the_struct(tmp_path):
    """On a copy of the tree: a u32 between stack_id and tcp_seq (moving
    every field after it, and the end's padding) in fields.FIELDS and in
    struct event_t, nothing else. Decoding, encoding, the text rows (Python
    and C), the JSON event object and -r's rebuild follow."""
    shutil.copytree(os.path.join(REPO, "skbtracer_lib"), tmp_path / "skbtracer_lib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    table = tmp_path / "skbtracer_lib" / "events" / "fields.py"
    text = table.read_text()
    anchor = '    Field("stack_id",'
    at = text.index("\n", text.index(anchor)) + 1
    table.write_text(text[:at] + '    Field("made_up",     "u32"),\n' + text[at:])
    c_with_it = with_member(c_text(), "s32 stack_id", "u32 made_up;")
    (tmp_path / "skbtracer.c").write_text(c_with_it)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", ONE_FIELD_CHECKS, HERE], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["event_size"] == members(c_with_it)[1]
    assert result["rows_in_c"] == (textrow.rows_in_c() is not None)


def test_the_kinds_skbtracer_c_defines_are_vocabulary_s():
    """skbtracer.c still writes KIND_* itself (until Python defines them for
    it): the same numbers as vocabulary.KINDS."""
    defined = {name.lower(): int(number) for name, number in
               re.findall(r"^#define KIND_(\w+)\s+(\d+)\s*$", c_text(), re.M)}
    assert defined == {name: number for number, name in KINDS.items()}


def test_the_why_numbers_skbtracer_c_defines_are_vocabulary_s():
    """--why rows: skbtracer.c's WHY_* are vocabulary.WHY_NAMES' numbers."""
    defined = {name.lower(): int(number) for name, number in
               re.findall(r"^#define WHY_(\w+)\s+(\d+)\s*(?:/\*.*\*/)?$", c_text(), re.M)}
    assert defined == {"icmp": WHY_ICMP, "reset": WHY_RESET, "neigh": WHY_NEIGH}


def test_the_ipvs_decisions_skbtracer_c_defines_are_ipvs_s():
    """--iptable's IPVS rows: skbtracer.c's IPVS_CHOSE/IPVS_NO_DEST are
    events/ipvs.py's CHOSE/NO_DEST."""
    defined = {name: int(number) for name, number in
               re.findall(r"^#define IPVS_(CHOSE|NO_DEST)\s+(\d+)\s*(?:/\*.*\*/)?$", c_text(),
                          re.M)}
    assert defined == {"CHOSE": ipvs.CHOSE, "NO_DEST": ipvs.NO_DEST}
