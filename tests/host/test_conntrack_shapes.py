"""Ground truth of the conntrack scenarios (testbed/conntrack.py) from conntrack-tools and rule
counters, no tracer.  Host and guests; the full table only in a guest (nf_conntrack_max is global).

The races are bounded (rounds and seconds).  Where a race does not make the kernel count what it
is meant to show, the test is skipped with a reason that starts "race did not reproduce" and gives
the counts, rather than passing.
"""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from testbed.conntrack import ConntrackLab  # noqa: E402
from testbed.kubeproxy import SERVER, SERVER2  # noqa: E402
from testbed.topology import IP, cleanup_stale  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
IN_GUEST = bool(os.environ.get("TESTBED_GUEST"))
# Under TCG a round costs far more; the bounds are what CI can afford, not what the race needs.
RACE_ROUNDS, RACE_SECONDS = (600, 90.0) if IN_GUEST else (1000, 30.0)


@pytest.fixture(scope="module")
def lab():
    cleanup_stale()
    with ConntrackLab() as lab:
        yield lab


def test_udp_through_service_new_then_reply(lab):
    ex = lab.udp_exchange(sport=47001)
    assert ex.replies == 2
    assert (ex.entry.orig["dst"], ex.entry.orig["dport"]) == (IP["service"], "53")
    assert (ex.entry.reply["src"], ex.entry.reply["sport"]) == (SERVER.ip, str(SERVER.port))
    kinds = [(e.kind, "UNREPLIED" in e.entry.flags) for e in ex.events]
    assert kinds[:2] == [("NEW", True), ("UPDATE", False)]  # the reply makes it ESTABLISHED


def test_tcp_through_service_states(lab):
    ex = lab.tcp_exchange(sport=47002)
    assert ex.replies == 2
    states = [e.entry.state for e in ex.events]
    assert states[:3] == ["SYN_SENT", "SYN_RECV", "ESTABLISHED"]
    assert "ASSURED" in ex.events[2].entry.flags
    assert ex.entry.reply["src"] == SERVER.ip


def test_invalid_tcp_dropped_by_rule(lab):
    result = lab.invalid_tcp(sport=47003)
    assert result.stats.get("invalid") == 1
    assert result.rule_packets == 1
    assert result.echoed == 0


def _say_if_not_reproduced(result, what):
    """Skip, saying so, when the race made no insert fail (the counts are printed)."""
    if not result.insert_failed:
        pytest.skip(f"race did not reproduce ({what})")


@pytest.fixture(scope="module")
def dns_race(lab):
    """The A/AAAA race through a two-endpoint service, run once for the tests below: rounds until
    insert_failed moves, within the bounds."""
    result = lab.dns_race(rounds=RACE_ROUNDS, seconds=RACE_SECONDS)
    print("\ndns race:", result.describe())
    return result


def test_dns_race_clashes(dns_race):
    """The kernel counts the clashes.  Since Linux 5.6 a UDP clash is resolved (clash_resolve: the
    loser kept with its own DNAT) rather than dropped, so every datagram arrives."""
    if not dns_race.clashes:
        pytest.skip("race did not reproduce (DNAT, one socket)")
    assert dns_race.delivered == dns_race.sent - dns_race.insert_failed


def test_dns_race_is_resolved_not_dropped(dns_race):
    """What every kernel here (5.10 and later) does with the one-socket DNAT
    race: the clash is resolved, no insert fails, nothing is dropped (the
    drops of kubernetes #56903 need the SNAT variant below)."""
    if not dns_race.clashes:
        pytest.skip("race did not reproduce (DNAT, one socket)")
    assert dns_race.insert_failed == 0 and dns_race.stats.get("drop", 0) == 0
    assert dns_race.delivered == dns_race.sent


def test_snat_race_insert_failed(lab):
    """Two pods, one source port, MASQUERADE without --random-fully: the loser's reply tuple is
    taken, insert_failed and drop move, and exactly that many datagrams never arrive."""
    result = lab.snat_race(rounds=RACE_ROUNDS, seconds=RACE_SECONDS)
    print("\nsnat race:", result.describe())
    _say_if_not_reproduced(result, "SNAT, two pods")
    assert result.stats.get("drop") == result.insert_failed
    assert result.delivered == result.sent - result.insert_failed


def test_stale_entry_to_dead_endpoint(lab):
    result = lab.stale_endpoint(sport=47004)
    assert result.first == b"before"
    assert result.stale_entry.reply["src"] == SERVER.ip  # the rules now say server2
    assert result.during is None and result.new_endpoint_saw == 0
    assert result.after_flush == b"after"
    assert lab.entry("udp", 47004).reply["src"] == SERVER2.ip


@pytest.mark.skipif(not IN_GUEST, reason="needs the global nf_conntrack_max (guest)")
def test_table_full(lab):
    result = lab.fill_table(spare=3)
    assert result.established == 3
    assert result.refused == "timeout"
    assert result.stats.get("drop", 0) >= 1 and not result.stats.get("early_drop")
    assert result.count == result.max
