"""Issue 28: -H, -P and --proto also match a packet by its connection's
original tuple (a Service's ClusterIP and port), unless --header-only: the
flag's validation, what it compiles in, the same test on saved events (-r),
and the story's SERVICE lines."""

import subprocess
import sys

import pytest
import skbt_unit_helpers  # noqa: F401  (repository on sys.path)

from skbtracer_lib import config
from skbtracer_lib.events import conntrack
from skbtracer_lib.events.decode import Event, encode
from skbtracer_lib.program import layout, macros
from skbtracer_lib.replay.session import event_filter
from skbtracer_lib import story
from skbtracer_lib.story import render_json

CONN = 0xFFFF888012345600
VIP, ENDPOINT, CLIENT = "10.96.0.30", "10.244.2.3", "10.244.1.2"


def conn_fields(sport, endpoint=ENDPOINT, vip=VIP, conn=CONN, info=0, proto=17):
    """A DNATed connection CLIENT:sport -> vip:53, answered by endpoint:9000."""
    return dict(ct=conn | info, ct_known=conntrack.KNOWN_CONN, ct_l4proto=proto,
                ct_status=conntrack.STATUS_BITS["DST_NAT"],
                ct_orig_saddr=CLIENT, ct_orig_sport=sport, ct_orig_daddr=vip, ct_orig_dport=53,
                ct_reply_saddr=endpoint, ct_reply_sport=9000, ct_reply_daddr=CLIENT,
                ct_reply_dport=sport)


def event(**values):
    values.setdefault("l4proto", 17)
    return Event(encode(**values))


def request_after_dnat(sport=41000, **ct):
    return event(saddr=CLIENT, daddr=ENDPOINT, sport=sport, dport=9000, **conn_fields(sport, **ct))


def reply_before_unnat(sport=41000, **ct):
    return event(saddr=ENDPOINT, daddr=CLIENT, sport=9000, dport=sport,
                 **conn_fields(sport, info=3, **ct))


# -- the flag


def test_connection_matching_is_the_default_and_header_only_turns_it_off():
    assert config.parse_args(["-H", VIP]).matches_connection
    assert config.parse_args(["-P", "53"]).matches_connection
    assert config.parse_args(["--proto", "udp"]).matches_connection
    assert not config.parse_args(["-H", VIP, "--header-only"]).matches_connection
    assert not config.parse_args([]).matches_connection     # nothing to match: costs nothing


@pytest.mark.parametrize("argv", [["--header-only"], ["--header-only", "-N", "1"],
                                  ["--header-only", "--proto", "any"]])
def test_header_only_without_a_filter_is_one_line_and_exit_2(argv):
    done = subprocess.run([sys.executable, str(skbt_unit_helpers.REPO / "skbtracer.py")] + argv,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert ("--header-only applies only with -H, -P or --proto" in done.stderr
            or "-N:" in done.stderr), done.stderr


def test_nfct_joins_the_span_where_it_lies_close_enough():
    real = layout.kernel.btf()
    if real is None:
        pytest.skip("this kernel has no BTF")
    layouts = layout.Layouts("btf")
    if not layouts.ct_conn:
        pytest.skip("no struct nf_conn layout here")
    before = layouts.defines[macros.L_SKB_SPAN_LEN]
    assert layouts.conn_match()
    off = layouts.defines[macros.layout_offset("SKB_NFCT")]
    start, length = layouts.defines[macros.L_SKB_SPAN_OFF], layouts.defines[macros.L_SKB_SPAN_LEN]
    if macros.L_SKB_SPAN_HAS_NFCT in layouts.defines:
        assert start <= off and off + 8 <= start + length <= start + layout.MAX_SPAN_WITH_NFCT
        assert length >= before
    else:
        assert length == before


# -- -r: the same test of the saved "ct" objects


def objects(*events):
    """The events as saved objects: the header fields -r filters on, and "ct"."""
    out = []
    for e in events:
        out.append({"saddr": e.saddr, "daddr": e.daddr, "l4proto": e.l4proto,
                    "sport": e.sport, "dport": e.dport, "proto": "udp",
                    "netns": 1, "ct": conntrack.json_object(e)})
    return out


@pytest.mark.parametrize("argv", [["-H", VIP], ["-H", VIP, "-P", "53"], ["-P", "53"],
                                  ["-H", VIP, "--proto", "udp", "-P", "53"]])
def test_replay_matches_requests_after_dnat_and_replies_before_unnat(argv):
    keep = event_filter(config.parse_args(["-r", "x.jsonl"] + argv))
    request, reply = objects(request_after_dnat(), reply_before_unnat())
    assert keep(request) and keep(reply)
    strict = event_filter(config.parse_args(["-r", "x.jsonl", "--header-only"] + argv))
    assert not strict(request) and not strict(reply)


def test_replay_all_three_on_one_tuple_and_nothing_of_another_service():
    keep = event_filter(config.parse_args(["-r", "x.jsonl", "-H", VIP, "-P", "53",
                                           "--proto", "udp"]))
    other, = objects(request_after_dnat(vip="10.96.0.20"))           # the same endpoint
    tcp, = objects(request_after_dnat(proto=6))                       # the orig tuple is TCP
    no_entry, = objects(event(saddr=CLIENT, daddr=ENDPOINT, sport=41000, dport=9000))
    assert not keep(other) and not keep(tcp) and not keep(no_entry)
    # the headers still match alone: the request before DNAT, no entry yet
    before, = objects(event(saddr=CLIENT, daddr=VIP, sport=41000, dport=53))
    assert keep(before)
    # -H on the headers, -P on neither: the connection's tuple must have both
    port_elsewhere, = objects(event(saddr=CLIENT, daddr=VIP, sport=41000, dport=54,
                                    **dict(conn_fields(41000), ct_orig_dport=54)))
    assert not keep(port_elsewhere)


def test_replay_learns_the_translated_tuple_for_the_pods_side():
    """In the pod, the entry is gone (scrubbed crossing the veth): a packet with the translated
    tuple of a connection seen matching before is kept, either direction; one never seen is not,
    nor one before its connection matched (events are asked in time order)."""
    keep = event_filter(config.parse_args(["-r", "x.jsonl", "-H", VIP]))
    in_pod, pod_reply, stranger = objects(
        event(saddr=CLIENT, daddr=ENDPOINT, sport=41000, dport=9000),
        event(saddr=ENDPOINT, daddr=CLIENT, sport=9000, dport=41000),
        event(saddr=CLIENT, daddr=ENDPOINT, sport=41001, dport=9000))
    assert not keep(in_pod)                 # nothing learned yet
    request, = objects(request_after_dnat())
    assert keep(request)
    assert keep(in_pod) and keep(pod_reply) and not keep(stranger)
    strict = event_filter(config.parse_args(["-r", "x.jsonl", "-H", VIP, "--header-only"]))
    assert not strict(request) and not strict(in_pod)


# -- the story


def test_story_groups_a_services_connections_under_it():
    events = []
    for sport, endpoint in ((41001, ENDPOINT), (41002, ENDPOINT), (41003, "10.244.1.3")):
        events += [request_after_dnat(sport, endpoint=endpoint, conn=CONN + sport * 64),
                   reply_before_unnat(sport, endpoint=endpoint, conn=CONN + sport * 64)]
    events.append(request_after_dnat(41001, endpoint=ENDPOINT, conn=CONN + 41001 * 64))
    found = conntrack.services(events)
    assert list(found) == [(17, 4, VIP, 53)]
    service = found[(17, 4, VIP, 53)]
    counts = {service.text(*endpoint): len(conns) for endpoint, conns in service.endpoints.items()}
    assert counts == {ENDPOINT + ":9000": 2, "10.244.1.3:9000": 1}
    assert service.text() == VIP + ":53" and service.netns == {0}
    told = story_of(events)
    assert told.service_lines() == [
        "SERVICE: U 10.96.0.30:53 -> 10.244.2.3:9000 (2 connections), 10.244.1.3:9000 "
        "(1 connection)"]
    named = story_of(events, service_name=lambda s: "default/dns-pair:dns")
    assert named.service_lines() == [
        "SERVICE: default/dns-pair:dns U 10.96.0.30:53 -> 10.244.2.3:9000 (2 connections), "
        "10.244.1.3:9000 (1 connection)"]
    obj, = [o for o in render_json.story_objects(named) if o["type"] == "service"]
    assert obj == {"type": "service", "name": "default/dns-pair:dns", "proto": "udp",
                   "family": 4, "address": VIP, "port": 53, "connections": 3,
                   "endpoints": [{"address": ENDPOINT, "port": 9000, "connections": 2},
                                 {"address": "10.244.1.3", "port": 9000, "connections": 1}],
                   "text": named.service_lines()[0]}


def story_of(events, service_name=None):
    """The story of events seen at one probe, a row apart."""
    for number, e in enumerate(events):
        e.ts_ns, e.skb = 1_000_000 + number * 1000, 0xFFFF888000000100 + number * 256
    return story.build(events, ["netif_receive_skb"], service_name=service_name)


def test_no_service_line_without_dnat():
    plain = event(saddr=CLIENT, daddr=ENDPOINT, sport=1, dport=9000,
                  **dict(conn_fields(1), ct_orig_daddr=ENDPOINT, ct_orig_dport=9000))
    assert conntrack.services([plain, event(saddr=CLIENT, daddr=VIP)]) == {}


def test_replay_a_related_packet_is_not_the_connections():
    """An ICMP port unreachable about a UDP connection carries its entry as RELATED: not one of
    the connection's own packets (the kernel program asks the same)."""
    keep = event_filter(config.parse_args(["-r", "x.jsonl", "--proto", "udp", "-P", "53"]))
    error = event(saddr=ENDPOINT, daddr=CLIENT, l4proto=1, **conn_fields(41000, info=4))
    obj, = objects(error)
    assert obj["ct"]["state"] == "RELATED_REPLY" and not keep(obj)
    assert keep(objects(reply_before_unnat())[0])
