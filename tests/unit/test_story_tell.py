"""The story as told at exit (issue 22, and the busy-flow grouping issue 27
shares): it fits the width, tells a busy flow in one row, never headlines a
packet that got through as DROPPED, says what -c or Ctrl-C cut off, and
times only the network part of a packet's way."""

import pytest
from test_story_unit import (CLIENT, KPROBES, NS, SERVER, TRACEPOINTS, Trace, flow,
                             host_scenario1, host_scenario3, host_scenario7)

from skbtracer_lib.events.decode import KIND_DROP
from skbtracer_lib.story import fit, tell
from skbtracer_lib.story.latency import story_lines
from skbtracer_lib.story.points import DURATION_STOP

WAY = [("net_dev_queue", "client/eth0"), ("net_dev_start_xmit", "client/eth0"),
       ("netif_rx", "node1/vethclient"), ("netif_receive_skb", "node1/vethclient"),
       ("net_dev_queue", "node1/vethserver"), ("net_dev_start_xmit", "node1/vethserver"),
       ("netif_rx", "server/eth0"), ("netif_receive_skb", "server/eth0")]


def busy_flow(count, sport=40248, gap=2000):
    """count datagrams of one flow, each along WAY, read by the server."""
    trace = Trace(TRACEPOINTS)
    for i in range(count):
        skb = 0xffff888000100000 + (i % 8) * 0x100
        trace.rows(skb, flow(sport, ip_id=i + 1), WAY)
        trace.add(skb, "skb_copy_datagram_iovec", "server/", flow(sport, ip_id=i + 1))
        trace.add(skb, "consume_skb", "server/", flow(sport, ip_id=i + 1))
        trace.t += gap
    return trace


# ---------------------------------------------------------------- fitting

@pytest.mark.parametrize("width", [40, 80, 120])
def test_wrap_keeps_every_line_within_the_width(width):
    text = "path: " + " > ".join("skbt12345-0-node%d/vethserver%d" % (i, i) for i in range(30))
    lines = fit.wrap(text, width)
    assert all(len(line) <= width for line in lines), lines
    assert all(line.startswith("    ") for line in lines[1:])
    assert " ".join(line.strip() for line in lines).replace("  ", " ") == text
    assert all(line.rstrip().endswith(">") for line in lines[:-1]), lines


def test_wrap_breaks_a_word_longer_than_the_line():
    lines = fit.wrap("x" * 100, 40)
    assert [len(line) for line in lines] == [40, 40, 28]


def test_table_is_tabulates_simple_layout_when_it_fits():
    assert fit.table(["A", "BB"], [["1", "two"], ["333", "4"]]).split("\n") == [
        "A    BB", "---  ---", "1    two", "333  4"]


# ---------------------------------------------------------------- busy flows

@pytest.mark.parametrize("width", [80, 120])
def test_a_busy_flow_is_one_row_and_fits(width):
    told = busy_flow(500).story(visible=TRACEPOINTS)
    lines = tell.exit_lines(told, len(busy_flow(500).events), width=width)
    lines += story_lines(told, False, width)
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    assert len(lines) <= 15, "\n".join(lines)
    rows = [line for line in lines if line.startswith("500 packets U ")]
    assert len(rows) == 1, "\n".join(lines)
    assert "7.0 us" in "\n".join(lines)


def test_flow_rows_count_what_they_group():
    trace = busy_flow(30)
    host_scenario1(trace, sport=41002)
    told = trace.story(visible=TRACEPOINTS)
    groups = tell.group_flows(told)
    assert [g.count for g in groups] == [30, 1]
    assert sum(g.count for g in groups) == len(told.packets)
    lines, left_out = tell.flow_table(told, width=1000)
    assert left_out == 0 and lines[2].split()[0] == "30" and lines[3].split()[0] == "#31"


def test_per_packet_table_keeps_every_packet():
    told = busy_flow(5).story(visible=TRACEPOINTS)
    lines = tell.exit_lines(told, 0, width=1000, per_packet=True)
    assert [line.split()[0] for line in lines if line[:1].isdigit()] == ["1", "2", "3", "4", "5"]


def test_columns_that_say_nothing_are_left_out():
    told = busy_flow(3).story(visible=TRACEPOINTS)      # no verdicts traced, one skb each
    header = tell.flow_table(told, width=1000)[0][0].split()
    assert "NETFILTER" not in header and "SKBS" not in header
    told = host_scenario1(Trace(TRACEPOINTS)).story(visible=TRACEPOINTS)
    assert "SKBS" in tell.flow_table(told, width=1000)[0][0].split()


# ---------------------------------------------------------------- never misleading

def test_a_packet_that_got_through_is_not_dropped():
    """Scenario 3: the copy passed up to cbr0 dies as OTHERHOST, the bridged
    one reaches the server: a note on the packet, no DROPPED line."""
    told = host_scenario3(Trace(TRACEPOINTS)).story()
    lines = tell.exit_lines(told, 0, width=120)
    assert not any(line.startswith("DROPPED") for line in lines), "\n".join(lines)
    assert any("a copy dropped at node1/cbr0: OTHERHOST" in line for line in lines)


def test_a_ping_answered_while_a_copy_is_freed_as_no_socket():
    """The echo request reaches icmp_rcv (answered); a second copy is freed
    with NO_SOCKET by ping_rcv: the packet is not DROPPED."""
    probes = KPROBES + ["icmp_rcv"]
    trace = Trace(probes)
    ping = dict(saddr=CLIENT, daddr=SERVER, l4proto=1, icmp_type=8, icmp_id=7, ip_id=9)
    trace.rows(0xa00, ping, [("__dev_queue_xmit", "client/eth0"),
                             ("__netif_receive_skb", "server/eth0"), ("ip_rcv", "server/eth0"),
                             ("ip_local_deliver", "server/eth0"), ("icmp_rcv", "server/eth0")])
    trace.add(0xb00, "skb_clone", "server/eth0", ping)
    trace.add(0xb00, "kfree_skb", "server/eth0", ping, drop_reason=2)
    told = trace.story()
    assert told.drop_lines() == []
    assert told.packet_end_text(told.packets[0]).startswith("delivered to the local stack")
    assert "a copy dropped at server/eth0" in told.packet_end_text(told.packets[0])


def test_a_packet_dropped_everywhere_is_still_dropped():
    told = host_scenario7(Trace(TRACEPOINTS))
    told.add(0xeee, "net_dev_queue", "client/eth0", flow(5555, ip_id=77))
    told.add(0xeee, "kfree_skb", "client/eth0", flow(5555, ip_id=77), kind=KIND_DROP,
             drop_reason=6)
    story = told.story()
    assert [line for line in story.drop_lines() if ":5555->" in line]


def test_minus_c_cut_off_is_said_as_such():
    trace = busy_flow(2)
    trace.rows(0xccc, flow(40999, ip_id=999), WAY[:5])   # stopped by -c on its way
    told = trace.story(visible=TRACEPOINTS, stopped_by="-c")
    text = told.packet_end_text(told.packets[-1])
    assert text == "cut off by -c at node1/vethserver (net_dev_queue)"
    lines = tell.exit_lines(told, 0, width=120)
    assert lines[1].startswith("skbtracer: 1 packet still on its way when -c stopped the trace")
    assert not any(line.startswith("VANISHED") for line in lines)
    # without -c the same copy is what it looks like: it left through vethserver
    told = trace.story(visible=TRACEPOINTS)
    assert told.packet_end_text(told.packets[-1]) == "left via node1/vethserver"


def test_ctrl_c_in_flight_is_said_as_such():
    trace = busy_flow(1)
    trace.rows(0xccc, flow(40999, ip_id=999), WAY[:5])
    told = trace.story(visible=TRACEPOINTS, stopped_by="Ctrl-C", ended_ns=trace.t + 5_000_000)
    assert told.packet_end_text(told.packets[-1]).startswith(
        "still on its way when tracing stopped (Ctrl-C), at node1/vethserver")
    # a packet that left long before the stop did leave
    told = trace.story(visible=TRACEPOINTS, stopped_by="Ctrl-C", ended_ns=trace.t + 5 * 10**9)
    assert told.packet_end_text(told.packets[-1]) == "left via node1/vethserver"


def test_a_duration_stop_is_said_as_such():
    trace = busy_flow(1)
    trace.rows(0xccc, flow(40999, ip_id=999), WAY[:5])
    told = trace.story(visible=TRACEPOINTS, stopped_by=DURATION_STOP % 2.5,
                       ended_ns=trace.t + 5_000_000)
    assert told.packet_end_text(told.packets[-1]) == (
        "still on its way when tracing stopped after 2.5 s (--duration), at node1/vethserver "
        "(net_dev_queue)")
    lines = tell.exit_lines(told, 0, width=120)
    assert lines[1].startswith("skbtracer: 1 packet still on its way when tracing stopped "
                               "after 2.5 s (--duration): told as far as it was seen")


# ---------------------------------------------------------------- time

def test_time_is_the_network_part_and_the_socket_wait_is_named():
    trace = Trace(TRACEPOINTS)
    trace.rows(0xa00, flow(4000), WAY)
    trace.t += 5_000_000                                    # the application reads late
    trace.add(0xa00, "skb_copy_datagram_iovec", "server/", flow(4000))
    told = trace.story(visible=TRACEPOINTS)
    [line] = story_lines(told, False, 1000)
    assert "packet #1, 7.0 us in the network;" in line, line
    assert "then 5.001 ms in a socket until the application read it" in line, line
    assert "slowest hop" in line and "skb_copy_datagram_iovec" not in line.split("slowest")[1]


def test_no_time_line_for_a_packet_seen_once():
    trace = Trace(TRACEPOINTS)
    trace.add(0xa00, "netif_receive_skb", "server/eth0", flow(4000))
    told = trace.story(visible=TRACEPOINTS)
    assert story_lines(told, False, 100) == []
    assert NS["server"] in {c.netns for p in told.packets for c in p.copies}
