"""kube-proxy's IPVS mode as text: `ipvsadm -R` input (rr, masquerade to every endpoint), the
ipsets its iptables rules match, and those rules (pkg/proxy/ipvs/proxier.go, v1.28: the jump
chains in the order EnsureRule(Prepend) leaves them; KUBE-IPVS-FILTER rejects new connections to
a ClusterIP on a port that is no service).  testbed/kubeproxy.py applies it in node1.
"""

from __future__ import annotations

from .kuberules import MASQ_MARK, ClusterConfig, ServicePort

IPVS_SETS = {  # name: (type, kube-proxy's comment) - the sets the rules below use
    "KUBE-CLUSTER-IP": ("hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"),
    "KUBE-LOOP-BACK": ("hash:ip,port,ip", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    "KUBE-IPVS-IPS": ("hash:ip", "IPVS service IPs"),
    "KUBE-LOAD-BALANCER": ("hash:ip,port", "Kubernetes service lb portal"),
    "KUBE-EXTERNAL-IP": ("hash:ip,port", "Kubernetes service external ip + port for masquerade and filter purpose"),
    "KUBE-EXTERNAL-IP-LOCAL": ("hash:ip,port", "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    "KUBE-HEALTH-CHECK-NODE-PORT": ("bitmap:port", "Kubernetes health check node port"),
}


def ipvs_ipset(services: list[ServicePort]) -> str:
    """`ipset restore` input: kube-proxy's sets and their members for these services."""
    lines = []
    for name, (kind, _comment) in IPVS_SETS.items():
        extra = " range 0-65535" if kind.startswith("bitmap") else " family inet hashsize 1024 maxelem 65536"
        lines.append(f"create {name} {kind}{extra}")
    for svc in services:
        lines.append(f"add KUBE-CLUSTER-IP {svc.cluster_ip},{svc.protocol}:{svc.port}")
        lines.append(f"add KUBE-IPVS-IPS {svc.cluster_ip} -exist")
        for ep in svc.endpoints:
            lines.append(f"add KUBE-LOOP-BACK {ep.ip},{svc.protocol}:{ep.port},{ep.ip}")
    return "\n".join(lines) + "\n"


def ipvs_services(services: list[ServicePort], scheduler: str = "rr") -> str:
    """`ipvsadm -R` input: one virtual service per ServicePort, masquerade (-m) to every endpoint,
    as kube-proxy does (it uses only the masquerade forwarding method)."""
    flag = {"tcp": "-t", "udp": "-u"}
    lines = []
    for svc in services:
        vip = f"{flag[svc.protocol]} {svc.cluster_ip}:{svc.port}"
        lines.append(f"-A {vip} -s {scheduler}")
        lines += [f"-a {vip} -r {ep} -m -w 1" for ep in svc.endpoints]
    return "\n".join(lines) + "\n"


def ipvs_iptables(config: ClusterConfig = ClusterConfig()) -> str:
    """The filter and nat tables kube-proxy's IPVS mode writes (set matches instead of per-service chains)."""
    return "\n".join([
        "*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        *(f":{c} - [0:0]" for c in ("KUBE-FORWARD", "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER", "KUBE-NODE-PORT",
                                    "KUBE-PROXY-FIREWALL", "KUBE-SOURCE-RANGES-FIREWALL")),
        '-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER',
        '-A INPUT -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL',
        '-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT',
        '-A FORWARD -m comment --comment "kube-proxy firewall rules" -j KUBE-PROXY-FIREWALL',
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        '-A OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER',
        *(["-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"] if config.drop_invalid else []),
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
        "RELATED,ESTABLISHED -j ACCEPT",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN",
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst "
        "-j REJECT --reject-with icmp-port-unreachable",
        "COMMIT",
        "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
        *(f":{c} - [0:0]" for c in ("KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ", "KUBE-NODE-PORT", "KUBE-POSTROUTING",
                                    "KUBE-SERVICES")),
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving '
        'hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE',
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
        '-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" '
        f"-m set --match-set KUBE-CLUSTER-IP dst,dst ! -s {config.cluster_cidr} -j KUBE-MARK-MASQ",
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
        "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
        *config.extra_nat,
        "COMMIT",
    ]) + "\n"
