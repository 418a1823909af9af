"""Conntrack on the events (issue 23), on synthetic events: the ct fields decoded, named and
shown (JSON "ct", the --ct row suffix, the story's words), read back by -r, --ct-state's
validation and what it compiles to, and the layouts when struct nf_conn cannot be had."""

import json
import subprocess
import sys

import pytest
import skbt_unit_helpers  # noqa: F401  (repository on sys.path)

from skbtracer_lib import config
from skbtracer_lib.events import conntrack
from skbtracer_lib.events.decode import Event, encode
from skbtracer_lib.events.textrow import Clock, RowFormatter
from skbtracer_lib.outputs import jsonl
from skbtracer_lib.program import layout, macros, probes, source
from skbtracer_lib.program.btf import BTFError

CONN = 0xFFFF888012345600          # an nf_conn's address (8-byte aligned)
IPS = conntrack.STATUS_BITS
DNAT_REQUEST = dict(   # the first datagram to a ClusterIP, after DNAT chose the endpoint
    saddr="10.244.1.2", daddr="10.244.1.3", sport=41000, dport=9000,
    ct=CONN | 2, ct_known=conntrack.KNOWN_CONN | conntrack.KNOWN_MARK | conntrack.KNOWN_ZONE,
    ct_status=IPS["CONFIRMED"] | IPS["DST_NAT"] | IPS["DST_NAT_DONE"], ct_mark=0x4000,
    ct_zone=3, ct_l4proto=17,
    ct_orig_saddr="10.244.1.2", ct_orig_sport=41000, ct_orig_daddr="10.96.0.10", ct_orig_dport=53,
    ct_reply_saddr="10.244.1.3", ct_reply_sport=9000, ct_reply_daddr="10.244.1.2",
    ct_reply_dport=41000)


def event(**values):
    return Event(encode(**values))


def formatter(ct=False):
    return RowFormatter(["ip_rcv"], probes.DropReasons({}, "t"), hex, Clock(False, offset_ns=0),
                        ct=ct)


def test_json_object_of_a_dnat_request():
    obj = conntrack.json_object(event(**DNAT_REQUEST))
    assert obj == {
        "state": "NEW", "info": 2, "id": "12345600",
        "status": ["CONFIRMED", "DST_NAT", "DST_NAT_DONE"],
        "status_bits": IPS["CONFIRMED"] | IPS["DST_NAT"] | IPS["DST_NAT_DONE"],
        "mark": 0x4000, "zone": 3,
        "orig": {"proto": "udp", "src": "10.244.1.2", "dst": "10.96.0.10", "sport": 41000,
                 "dport": 53},
        "reply": {"proto": "udp", "src": "10.244.1.3", "dst": "10.244.1.2", "sport": 9000,
                  "dport": 41000}}


@pytest.mark.parametrize("info, name, word", [
    (0, "ESTABLISHED", "est"), (1, "RELATED", "rel"), (2, "NEW", "new"),
    (3, "ESTABLISHED_REPLY", "est"), (4, "RELATED_REPLY", "rel")])
def test_ctinfo_names_and_ct_state_words(info, name, word):
    e = event(**dict(DNAT_REQUEST, ct=CONN | info))
    assert conntrack.json_object(e)["state"] == name
    assert conntrack.state_word(e.ct) == word


def test_no_entry_untracked_and_an_unknown_layout():
    assert conntrack.json_object(event()) is None
    assert conntrack.state_word(0) == "inv"
    untracked = conntrack.json_object(event(ct=7))
    assert untracked["state"] == "UNTRACKED" and untracked["id"] is None
    assert untracked["status"] is untracked["orig"] is untracked["mark"] is None
    assert conntrack.state_word(7) == "untracked"
    # the state from skb->_nfct, nothing of the nf_conn (5.10: no module BTF)
    unknown = conntrack.json_object(event(ct=CONN | 2))
    assert unknown["state"] == "NEW" and unknown["id"] == "12345600"
    assert unknown["status"] is unknown["orig"] is unknown["reply"] is unknown["zone"] is None


def test_icmp_tuple_has_the_echo_id():
    e = event(family=4, l4proto=1, ct=CONN, ct_known=conntrack.KNOWN_CONN, ct_l4proto=1,
              ct_orig_saddr="10.0.0.1", ct_orig_daddr="10.0.0.2", ct_orig_sport=77,
              ct_reply_saddr="10.0.0.2", ct_reply_daddr="10.0.0.1", ct_reply_sport=77)
    assert conntrack.json_object(e)["orig"] == {"proto": "icmp", "src": "10.0.0.1",
                                                "dst": "10.0.0.2", "icmp_id": 77}
    assert conntrack.row_suffix(e) == " ct=EST"


def test_row_suffix_names_the_nat():
    assert conntrack.row_suffix(event()) == ""
    assert conntrack.row_suffix(event(**DNAT_REQUEST)) == \
        " ct=NEW dnat 10.96.0.10:53=>10.244.1.3:9000"
    reply = event(**dict(DNAT_REQUEST, ct=CONN | 3))
    assert conntrack.row_suffix(reply) == " ct=EST,R dnat 10.96.0.10:53=>10.244.1.3:9000"
    masqueraded = event(**dict(DNAT_REQUEST, ct=CONN | 2, ct_orig_daddr="10.244.1.3",
                               ct_orig_dport=9000, ct_reply_daddr="10.250.0.1",
                               ct_reply_dport=1024))
    assert conntrack.row_suffix(masqueraded) == " ct=NEW snat 10.244.1.2:41000=>10.250.0.1:1024"


def test_text_rows_unchanged_without_ct_and_suffixed_with_it():
    raw = encode(**DNAT_REQUEST)
    plain, with_ct = formatter(), formatter(ct=True)
    row = plain.row(Event(raw))
    assert not row.endswith("9000") or " ct=" not in row
    assert " ct=" not in plain.row_of_raw(raw)[0]
    assert with_ct.row(Event(raw)) == row + " ct=NEW dnat 10.96.0.10:53=>10.244.1.3:9000"
    assert with_ct.row_of_raw(raw)[0] == with_ct.row(Event(raw))   # never a cached row
    assert with_ct.in_c() is None                                   # the C rows have no ct


def test_json_line_is_the_event_object_and_reads_back():
    fmt = jsonl.JsonFormatter(formatter(), node="n", run_id="r")
    e = event(**DNAT_REQUEST)
    line = fmt.line(e)
    assert json.loads(line) == fmt.event(e)
    assert json.loads(fmt.line(event()))["ct"] is None
    saved = json.loads(line)["ct"]
    rebuilt = event(**{k: v for k, v in conntrack.fields_of(saved).items()
                       if not (isinstance(v, str) and not v)})
    assert conntrack.json_object(rebuilt) == saved
    assert conntrack.fields_of(None)["ct"] == 0


@pytest.mark.parametrize("saved", [
    "NEW", 7, [], {"id": 5}, {"state": "NEW", "id": "zz", "status_bits": "x", "mark": -1,
                             "zone": 1 << 20, "orig": {"proto": "udp", "src": 1, "sport": "a"},
                             "reply": []}])
def test_a_damaged_saved_ct_reads_back_as_numbers_and_text(saved):
    """-r on a file whose "ct" objects are damaged: zero or empty, never a crash later."""
    values = conntrack.fields_of(saved)
    e = event(**{k: v for k, v in values.items() if not (isinstance(v, str) and not v)})
    conntrack.json_object(e), conntrack.row_suffix(e), conntrack.story_text([e])


def test_story_words():
    request = event(**DNAT_REQUEST)
    before = event(saddr="10.244.1.2", daddr="10.96.0.10")            # before conntrack
    pod = event(**dict(DNAT_REQUEST, ct=0xFFFF888099990002, ct_status=IPS["CONFIRMED"],
                       ct_orig_daddr="10.244.1.3", ct_orig_dport=9000))  # the pod's own conntrack
    assert conntrack.story_text([before]) == ""
    assert conntrack.story_text([before, request, pod]) == \
        "NEW -> DNAT 10.96.0.10:53 => 10.244.1.3:9000, NEW"
    assert conntrack.story_text([event(ct=7)]) == "UNTRACKED"


@pytest.mark.parametrize("argv, states", [
    (["--ct-state", "new"], ["new"]),
    (["--ct-state", "NEW", "--ct-state", "est,inv", "--ct-state", "new"], ["new", "est", "inv"]),
    (["--ct-state", "untracked,rel"], ["untracked", "rel"]),
])
def test_ct_state_values(argv, states):
    cfg = config.parse_args(argv)
    assert cfg.ct_states == states
    mask = source.filter_defines(cfg)[macros.FILTER_CT_STATES]
    assert mask == sum(conntrack.CT_STATES[s] for s in states)


@pytest.mark.parametrize("value", ["bogus", "", "new,", "established"])
def test_bad_ct_state_is_one_line_and_exit_2(value):
    done = subprocess.run([sys.executable, str(skbt_unit_helpers.REPO / "skbtracer.py"),
                           "--ct-state", value], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--ct-state must be one of new, est, rel, inv, " \
        "untracked" in done.stderr, done.stderr


class _NoConntrackModuleBTF:
    """The kernel's BTF as 5.10 has it: vmlinux only, no module BTF for nf_conntrack."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def member(self, struct_name, path, module=None):
        if struct_name.startswith("nf_conn"):
            raise BTFError("no struct %s in BTF" % struct_name)
        return self.real.member(struct_name, path, module)


def test_layouts_without_nf_conn_keep_the_state_and_say_why(monkeypatch):
    real = layout.kernel.btf()
    if real is None:
        pytest.skip("this kernel has no BTF")
    monkeypatch.setattr(layout.kernel, "btf", lambda: _NoConntrackModuleBTF(real))
    layouts = layout.Layouts("btf")
    assert layouts.ct_entry and not layouts.ct_conn
    assert macros.HAVE_CT_NFCT in layouts.defines and macros.HAVE_CT_CONN not in layouts.defines
    assert any("state only" in note for note in layouts.ct_notes), layouts.ct_notes


# --- --ct-mark and --ct-zone (issue 23's mark/zone filter) ---

@pytest.mark.parametrize("argv, mark, zone, defines", [
    (["--ct-mark", "42"], (42, 0xFFFFFFFF), None,
     {macros.FILTER_CT_MARK: "42U", macros.FILTER_CT_MARK_MASK: "4294967295U"}),
    (["--ct-mark", "0x2A/0xff"], (42, 0xFF), None,
     {macros.FILTER_CT_MARK: "42U", macros.FILTER_CT_MARK_MASK: "255U"}),
    (["--ct-mark", " 0/0x4000 "], (0, 0x4000), None,
     {macros.FILTER_CT_MARK: "0U", macros.FILTER_CT_MARK_MASK: "16384U"}),
    (["--ct-zone", "7"], None, 7, {macros.FILTER_CT_ZONE: 7}),
    (["--ct-zone", "0xffff", "--ct-mark", "0xffffffff"], (0xFFFFFFFF, 0xFFFFFFFF), 0xFFFF,
     {macros.FILTER_CT_ZONE: 65535, macros.FILTER_CT_MARK: "4294967295U",
      macros.FILTER_CT_MARK_MASK: "4294967295U"}),
    (["--ct-zone", "0"], None, 0, {macros.FILTER_CT_ZONE: 0}),
    ([], None, None, {}),
])
def test_ct_mark_and_zone_values_and_what_they_compile_to(argv, mark, zone, defines):
    cfg = config.parse_args(argv)
    assert (cfg.ct_mark, cfg.ct_zone) == (mark, zone)
    compiled = source.filter_defines(cfg)
    assert {k: v for k, v in compiled.items() if k.startswith("FILTER_CT_")} == defines


@pytest.mark.parametrize("argv, said", [
    (["--ct-mark", "abc"], "--ct-mark's MARK must be a number (decimal or 0x hex), not 'abc'"),
    (["--ct-mark", ""], "--ct-mark's MARK must be a number"),
    (["--ct-mark", "-1"], "--ct-mark's MARK must be a number"),
    (["--ct-mark", "0x"], "--ct-mark's MARK must be a number"),
    (["--ct-mark", "1;system()"], "--ct-mark's MARK must be a number"),
    (["--ct-mark", "0x100000000"], "--ct-mark's MARK must be between 0 and 4294967295"),
    (["--ct-mark", "1/"], "--ct-mark's MASK must be a number"),
    (["--ct-mark", "1/2/3"], "--ct-mark's MASK must be a number"),
    (["--ct-mark", "0/0"], "--ct-mark's MASK must be between 1 and 4294967295"),
    (["--ct-mark", "3/0x1"], "--ct-mark 3/0x1: MARK has bits outside MASK (0x2), it would never "
                             "match"),
    (["--ct-zone", "65536"], "--ct-zone must be between 0 and 65535 (0xffff), not 65536"),
    (["--ct-zone", "seven"], "--ct-zone must be a number (decimal or 0x hex), not 'seven'"),
    (["--ct-zone", "1.5"], "--ct-zone must be a number"),
])
def test_bad_ct_mark_or_zone_is_one_line_and_exit_2(argv, said):
    done = subprocess.run([sys.executable, str(skbt_unit_helpers.REPO / "skbtracer.py"), *argv],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("skbtracer: error: " + said), \
        done.stderr


ALL_KNOWN = conntrack.KNOWN_CONN | conntrack.KNOWN_MARK | conntrack.KNOWN_ZONE


@pytest.mark.parametrize("fields, mark, zone, matches", [
    (dict(ct=CONN | 2, ct_known=ALL_KNOWN, ct_mark=0x12A, ct_zone=7), (0x2A, 0xFF), 7, True),
    (dict(ct=CONN | 2, ct_known=ALL_KNOWN, ct_mark=0x12A, ct_zone=7), (0x2A, 0xFFFFFFFF), None,
     False),
    (dict(ct=CONN | 2, ct_known=ALL_KNOWN, ct_mark=0x12A, ct_zone=7), None, 7, True),
    (dict(ct=CONN | 2, ct_known=ALL_KNOWN, ct_mark=0x12A, ct_zone=7), None, 0, False),
    (dict(ct=CONN | 2, ct_known=ALL_KNOWN, ct_mark=0, ct_zone=0), (0, 0xFFFFFFFF), 0, True),
    # no entry: a zero mark and zone are not "mark 0, zone 0"
    (dict(ct=0, ct_known=0, ct_mark=0, ct_zone=0), (0, 0xFFFFFFFF), None, False),
    (dict(ct=0, ct_known=0, ct_mark=0, ct_zone=0), None, 0, False),
    # the entry's nf_conn was not read (5.10 without module BTF), or has no mark/zone
    (dict(ct=CONN | 2, ct_known=0, ct_mark=0, ct_zone=0), (0, 0xFFFFFFFF), None, False),
    (dict(ct=CONN | 2, ct_known=conntrack.KNOWN_CONN | conntrack.KNOWN_ZONE, ct_mark=0,
          ct_zone=0), (0, 0xFFFFFFFF), 0, False),
    (dict(ct=CONN | 2, ct_known=conntrack.KNOWN_CONN | conntrack.KNOWN_MARK, ct_mark=0,
          ct_zone=0), (0, 0xFFFFFFFF), 0, False),
    (dict(ct=7, ct_known=0, ct_mark=0, ct_zone=0), None, 0, False),     # untracked
])
def test_mark_zone_match_as_the_kernel_applies_it(fields, mark, zone, matches):
    assert conntrack.mark_zone_match(fields, mark, zone) is matches
    # the same on an event's saved "ct" object, as -r reads it
    saved = conntrack.json_object(event(**fields))
    assert conntrack.mark_zone_match(conntrack.fields_of(saved), mark, zone) is matches


def test_comment_suffix_has_the_entry_with_or_without_ct():
    request = event(**DNAT_REQUEST)
    details = " id=12345600 status=CONFIRMED,DST_NAT,DST_NAT_DONE mark=0x4000 zone=3"
    assert conntrack.comment_suffix(request) == conntrack.row_suffix(request) + details
    assert conntrack.comment_suffix(request) == \
        " ct=NEW dnat 10.96.0.10:53=>10.244.1.3:9000" + details
    assert conntrack.comment_suffix(request, in_row=True) == details
    assert conntrack.comment_suffix(event()) == ""
    assert conntrack.comment_suffix(event(ct=7)) == " ct=UNTR"
    assert conntrack.comment_suffix(event(ct=CONN | 3)) == " ct=EST,R id=12345600"   # 5.10


def _layouts_missing(monkeypatch, missing):
    """Layouts("btf") of this kernel's BTF with some of struct nf_conn's members missing."""
    real = layout.kernel.btf()
    if real is None:
        pytest.skip("this kernel has no BTF")

    class Missing(_NoConntrackModuleBTF):
        def member(self, struct_name, path, module=None):
            if (struct_name, path) in missing or (struct_name, None) in missing:
                raise BTFError("no %s.%s in BTF" % (struct_name, path))
            return self.real.member(struct_name, path, module)

    monkeypatch.setattr(layout.kernel, "btf", lambda: Missing(real))


@pytest.mark.parametrize("missing, refused, started", [
    ({("nf_conn", None), ("nf_conntrack_tuple_hash", None), ("nf_conntrack_tuple", None)},
     {"--ct-mark": "state only", "--ct-zone": "state only"}, ()),
    ({("nf_conn", "mark")}, {"--ct-mark": "CONFIG_NF_CONNTRACK_MARK is off"}, ("--ct-zone",)),
    ({("nf_conn", "zone.id")}, {"--ct-zone": "CONFIG_NF_CONNTRACK_ZONES is off"}, ("--ct-mark",)),
])
def test_a_kernel_that_cannot_read_the_mark_or_zone_refuses_the_filter(monkeypatch, missing,
                                                                       refused, started):
    """Start-up error, one line: a filter on a field never read could only match nothing.
    The other one starts."""
    _layouts_missing(monkeypatch, missing)
    value = {"--ct-mark": "0x2a", "--ct-zone": "7"}
    for flag, why in refused.items():
        cfg = config.parse_args(["--route", flag, value[flag]])
        with pytest.raises(layout.kernel.KernelError) as raised:
            source.Program(cfg, backend="tracepoint")
        text = str(raised.value)
        assert "\n" not in text and text.startswith(
            "%s: the conntrack %s cannot be read on this kernel: conntrack: "
            % (flag, flag[5:])) and why in text, text
    for flag in started:
        program = source.Program(config.parse_args(["--route", flag, value[flag]]),
                                 backend="tracepoint")
        assert "#define FILTER_CT_%s " % flag[5:].upper() in program.text


def test_the_story_says_what_the_ct_filters_hide():
    """A packet's rows before conntrack gave it the entry asked for are not traced: the story's
    "not visible in this run" says so, naming the flags."""
    from skbtracer_lib.runinfo import ProbeInfo, RunInfo
    info = RunInfo("tracepoint", ["netif_receive_skb"],
                   attached=[ProbeInfo("netif_receive_skb", "route")])
    said = info.unseen(config.parse_args(["--ct-mark", "1", "--ct-zone", "2"]))
    assert "a packet's rows without the conntrack entry --ct-mark/--ct-zone asks for (before " \
        "conntrack saw it, after it left for another namespace)" in said
    assert not any("conntrack" in note for note in info.unseen(config.parse_args([])))


# ---------------------------------------------------------------- conntrack's own drops

@pytest.mark.parametrize("fault, nfct, netfilter, table, here, words", [
    (conntrack.FAULT_INSERT, CONN | 2, True, None, True, "lost the race to insert"),
    (conntrack.FAULT_TABLE_FULL, 0, True, None, False, "(table full)"),
    (0, 0, True, "filter", True, "no conntrack entry: INVALID"),
    (0, 0, True, None, False, "no conntrack entry: INVALID, or not seen by conntrack"),
    (0, 0, True, "raw", True, "no conntrack entry yet (the raw table runs before conntrack)"),
    (0, CONN | 2, True, "filter", True, ""),     # a rule dropped a tracked packet
    (0, 0, False, None, True, ""),               # not netfilter's drop (NO_SOCKET ...)
])
def test_drop_words(fault, nfct, netfilter, table, here, words):
    said = conntrack.drop_words(fault, nfct, netfilter, table, here)
    assert (words in said) if words else said == ""


def test_a_rule_matching_invalid_makes_it_certain():
    """--nftrace named a rule that matches INVALID: no "or not seen by conntrack", though no row
    of the namespace carried an entry; the raw table's drop and a tracked packet stay as they were."""
    assert conntrack.drop_words(0, 0, True, None, False, invalid_rule=True) == \
        "no conntrack entry: INVALID"
    assert conntrack.drop_words(0, CONN | 2, True, "filter", False, invalid_rule=True) == ""
    assert "raw table" in conntrack.drop_words(0, 0, True, "raw", False, invalid_rule=True)


def test_fault_names_read_back():
    for code, (name, _words) in conntrack.FAULTS.items():
        assert conntrack.fault_name(code) == name and conntrack.fault_code(name) == code
    assert conntrack.fault_name(0) is None and conntrack.fault_code(None) == 0
    assert conntrack.fault_code("a fault of a later version") == 0


def test_a_failed_insert_in_json_rows_and_read_back():
    e = event(**dict(DNAT_REQUEST, kind=3, ct_fault=conntrack.FAULT_INSERT,
                     ct_status=IPS["DST_NAT"]))
    assert conntrack.row_suffix(e).endswith(" ct_drop=insert_failed")
    table_full = event(kind=3, ct_fault=conntrack.FAULT_TABLE_FULL)
    assert conntrack.row_suffix(table_full) == " ct_drop=table_full"      # no entry: no ct=
    obj = jsonl.JsonFormatter(formatter(), node="n", run_id="r").event(e)
    assert obj["drop"]["conntrack"] == "insert_failed"
