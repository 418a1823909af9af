"""kube-proxy's rulesets as text (testbed/kuberules.py), checked against lines and chain names
from kube-proxy's own unit tests (pkg/proxy/iptables and pkg/proxy/nftables, v1.28-v1.31), and
the ground-truth parsers of testbed/groundtruth.py on saved tool output.  No kernel needed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from testbed import groundtruth  # noqa: E402
from testbed.ipvsrules import ipvs_iptables, ipvs_services  # noqa: E402
from testbed.kuberules import (  # noqa: E402
    ClusterConfig,
    Endpoint,
    ServicePort,
    iptables_ruleset,
    nft_ruleset,
    rule_count,
    synthetic_services,
)

SVC1 = ServicePort("ns1", "svc1", "p80", "tcp", "172.30.0.41", 80, (Endpoint("10.180.0.1", 80),))
SVC4 = ServicePort("ns4", "svc4", "p80", "tcp", "172.30.0.44", 80,
                   (Endpoint("10.180.0.4", 80), Endpoint("10.180.0.5", 80)))
KUBE_TEST_CONFIG = ClusterConfig(cluster_cidr="10.0.0.0/8", service_cidr="172.30.0.0/16")


def test_iptables_chain_names_are_kube_proxys():
    assert SVC1.svc_chain == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert SVC1.sep_chain(SVC1.endpoints[0]) == "KUBE-SEP-SXIVWICOYRO3J4NJ"


def test_nft_chain_names_are_kube_proxys():
    assert SVC1.nft_service_chain == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert SVC1.nft_endpoint_chain(SVC1.endpoints[0]) == "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    assert [SVC4.nft_endpoint_chain(ep) for ep in SVC4.endpoints] == [
        "endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80", "endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"]
    svc5 = ServicePort("ns5", "svc5", "p80", "tcp", "172.30.0.45", 80)
    assert svc5.nft_firewall_chain == "firewall-HVFWP5L3-ns5/svc5/tcp/p80"


def test_nft_service_lines_match_kube_proxys():
    text = nft_ruleset([SVC4], KUBE_TEST_CONFIG)
    for line in (
        "add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 172.30.0.44 ip saddr != 10.0.0.0/8 "
        "jump mark-for-masquerade",
        "add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto "
        "endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 , 1 : goto endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }",
        "add rule ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 meta l4proto tcp dnat to 10.180.0.5:80",
        "add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }",
        'add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16 } drop comment "Drop traffic to '
        'unallocated ClusterIPs"',
    ):
        assert line in text.splitlines(), line


def test_iptables_two_endpoints_random_then_the_rest():
    lines = iptables_ruleset([SVC4], KUBE_TEST_CONFIG).splitlines()
    svc = [l for l in lines if l.startswith(f"-A {SVC4.svc_chain} ")]
    assert svc == [
        f'-A {SVC4.svc_chain} -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 '
        "--dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
        f'-A {SVC4.svc_chain} -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random '
        f"--probability 0.5000000000 -j {SVC4.sep_chain(SVC4.endpoints[0])}",
        f'-A {SVC4.svc_chain} -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j {SVC4.sep_chain(SVC4.endpoints[1])}',
    ]
    sep = SVC4.sep_chain(SVC4.endpoints[1])
    assert f"-A {sep} -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80" in lines


def test_firewall_reject_and_policy_rules():
    lb = ServicePort("default", "lb", "http", "tcp", "10.96.0.40", 80, (Endpoint("10.244.1.3", 9000),),
                     lb_ip="10.250.1.40", lb_source_ranges=("10.250.0.0/30",))
    none = ServicePort("default", "none", "http", "tcp", "10.96.0.50", 80)
    text = iptables_ruleset([lb, none], ClusterConfig(node_firewall=True))
    assert ":INPUT DROP [0:0]" in text
    assert (f'-A KUBE-PROXY-FIREWALL -m comment --comment "default/lb:http traffic not accepted by {lb.fw_chain}" '
            "-m tcp -p tcp -d 10.250.1.40 --dport 80 -j DROP") in text
    assert '-A KUBE-SERVICES -m comment --comment "default/none:http has no endpoints"' in text
    assert "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP" in text
    assert "--ctstate INVALID" not in iptables_ruleset([lb], ClusterConfig(drop_invalid=False))


def test_ten_thousand_rules_in_large_cluster_mode():
    services = synthetic_services(10_000)
    text = iptables_ruleset(services)
    assert rule_count(text) >= 10_000
    assert len({s.cluster_ip for s in services}) == len(services)
    # more than 1000 endpoints: kube-proxy leaves the per-endpoint comments off
    sep = services[0].sep_chain(services[0].endpoints[0])
    assert f"-A {sep} -s {services[0].endpoints[0].ip} -j KUBE-MARK-MASQ" in text
    assert rule_count(nft_ruleset(synthetic_services(10_000, mode="nft"))) >= 10_000


def test_ipvs_services_masquerade_rr():
    assert ipvs_services([SVC4]).splitlines() == [
        "-A -t 172.30.0.44:80 -s rr", "-a -t 172.30.0.44:80 -r 10.180.0.4:80 -m -w 1",
        "-a -t 172.30.0.44:80 -r 10.180.0.5:80 -m -w 1"]
    rules = ipvs_iptables().splitlines()
    inputs = [line for line in rules if line.startswith("-A INPUT ")]
    assert [line.rsplit(" ", 1)[1] for line in inputs] == ["KUBE-IPVS-FILTER", "KUBE-PROXY-FIREWALL", "KUBE-NODE-PORT"]


SAVED = """# Generated by iptables-save v1.8.9 on Mon Dec  7 02:28:39 2026
*filter
:INPUT DROP [3:120]
:KUBE-FORWARD - [0:0]
[0:0] -A INPUT -i lo -j ACCEPT
[1:43] -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
[0:0] -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
COMMIT
"""


def test_parse_iptables_save():
    state = groundtruth.parse_iptables_save(SAVED)
    rule = state.rule(chain="KUBE-FORWARD", comment="kubernetes forwarding rules")
    assert (rule.number, rule.target, rule.packets) == (2, "ACCEPT", 0)
    assert state.hits() == {("filter", "KUBE-FORWARD", 1): 1}
    assert state.policy_hits() == {("filter", "INPUT"): 3}


def test_parse_conntrack_and_trace_lines():
    e = groundtruth.parse_conntrack_line(
        "tcp      6 431999 ESTABLISHED src=10.244.1.2 dst=10.96.0.10 sport=54662 dport=53 src=10.244.1.3 "
        "dst=10.244.1.2 sport=9000 dport=54662 [ASSURED] mark=0 use=1 id=3466")
    assert (e.state, e.orig["dst"], e.reply["src"], e.assured, e.extra["id"]) == (
        "ESTABLISHED", "10.96.0.10", "10.244.1.3", True, "3466")
    t = groundtruth.parse_trace("trace id 9686c060 ip kube-proxy services rule ip daddr . meta l4proto . th dport "
                                "vmap @service-ips # handle 44 (verdict goto service-X)")
    assert (t.chain, t.kind, t.handle, t.verdict) == ("services", "rule", 44, "goto service-X")
    assert groundtruth.parse_trace("trace id 1 ip node-firewall input policy drop").verdict == "drop"
