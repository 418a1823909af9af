"""kube-proxy's rulesets as text, written the way kube-proxy (v1.28-v1.31) writes them.

Three modes, one service model:
  - iptables mode: an `iptables-restore` file (filter + nat): KUBE-SERVICES -> KUBE-SVC-<hash> ->
    KUBE-SEP-<hash>, `-m statistic --mode random --probability` between endpoints, KUBE-MARK-MASQ,
    KUBE-POSTROUTING, KUBE-FORWARD (with its `--ctstate INVALID -j DROP`), KUBE-PROXY-FIREWALL (the
    DROP for LoadBalancer source ranges), REJECT for services without endpoints; kubelet's KUBE-FIREWALL.
  - nftables mode: an `nft -f` file for the `ip kube-proxy` table (service-ips verdict map, one chain
    per service and per endpoint, `numgen random mod N vmap` endpoint choice, element comments).
  - IPVS mode: in testbed/ipvsrules.py (ipvsadm, ipsets and the iptables rules that go with them).

Chain names are kube-proxy's own hashes (checked against kube-proxy's unit tests in
tests/unit/test_kuberules.py), so a chain name seen in a trace can be traced back to a service.
Pure text: nothing here touches a kernel.  testbed/kubeproxy.py applies it inside a namespace.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

MASQ_MARK = "0x4000"
# Above this many endpoints kube-proxy goes into "large cluster mode" and leaves the comments off
# its per-endpoint rules (largeClusterEndpointsThreshold in pkg/proxy/iptables/proxier.go).
LARGE_CLUSTER_ENDPOINTS = 1000


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True)
class ServicePort:
    """One port of one Service, as kube-proxy's ServicePortName sees it, with its ready endpoints."""

    namespace: str
    name: str
    port_name: str
    protocol: str  # "tcp" or "udp"
    cluster_ip: str
    port: int
    endpoints: tuple[Endpoint, ...] = ()
    lb_ip: str | None = None  # a LoadBalancer ingress IP
    lb_source_ranges: tuple[str, ...] = ()  # loadBalancerSourceRanges (with lb_ip: a firewall)

    @property
    def port_name_string(self) -> str:
        """kube-proxy's svcPortNameString: "default/ubuntu-server:dns" (the comments' text)."""
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port_name}" if self.port_name else base

    # -- iptables chain names (pkg/proxy/iptables/proxier.go: portProtoHash and friends)

    def _port_proto_hash(self) -> str:
        return _b32_sha256(self.port_name_string + self.protocol)[:16]

    @property
    def svc_chain(self) -> str:
        return "KUBE-SVC-" + self._port_proto_hash()

    @property
    def ext_chain(self) -> str:
        return "KUBE-EXT-" + self._port_proto_hash()

    @property
    def fw_chain(self) -> str:
        return "KUBE-FW-" + self._port_proto_hash()

    def sep_chain(self, ep: Endpoint) -> str:
        return "KUBE-SEP-" + _b32_sha256(self.port_name_string + self.protocol + str(ep))[:16]

    # -- nftables chain names (pkg/proxy/nftables/proxier.go: servicePortChainNameBase, hashAndTruncate)

    @property
    def _nft_base(self) -> str:
        return f"{self.namespace}/{self.name}/{self.protocol}/{self.port_name}"

    @property
    def nft_service_chain(self) -> str:
        return "service-" + _hash_and_truncate(self._nft_base)

    @property
    def nft_external_chain(self) -> str:
        return "external-" + _hash_and_truncate(self._nft_base)

    @property
    def nft_firewall_chain(self) -> str:
        return "firewall-" + _hash_and_truncate(self._nft_base)

    def nft_endpoint_chain(self, ep: Endpoint) -> str:
        return "endpoint-" + _hash_and_truncate(f"{self._nft_base}__{ep.ip}/{ep.port}")

    @property
    def firewalled(self) -> bool:
        return bool(self.endpoints and self.lb_ip and self.lb_source_ranges)


def _b32_sha256(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()


def _hash_and_truncate(name: str, limit: int = 256) -> str:
    name = _b32_sha256(name)[:8] + "-" + name
    return name if len(name) <= limit else name[: limit - 3] + "..."


@dataclass(frozen=True)
class ClusterConfig:
    """The node-wide knobs kube-proxy's rules depend on."""

    cluster_cidr: str = "10.244.0.0/16"  # --cluster-cidr: "! -s" of the masquerade rules
    service_cidr: str = "10.96.0.0/16"  # nft mode drops traffic to unallocated ClusterIPs in it
    node_firewall: bool = False  # filter INPUT policy DROP (a hardened node), see iptables_ruleset
    # KUBE-FORWARD's "--ctstate INVALID -j DROP" (kube-proxy since 1.15; left out since 1.29 when
    # --conntrack-tcp-be-liberal is set).  It also drops the seed's routed duplicate, which has no
    # conntrack entry in FORWARD: False brings the duplicate back.
    drop_invalid: bool = True
    extra_filter: tuple[str, ...] = ()  # more "-A ..." lines for *filter (iptables modes)
    extra_nat: tuple[str, ...] = ()  # more "-A ..." lines for *nat, e.g. a CNI's MASQUERADE


def _q(text: str) -> str:
    return f'"{text}"'


def _proto_match(svc: ServicePort) -> str:
    return f"-m {svc.protocol} -p {svc.protocol}"


def _probability(remaining: int) -> str:
    return "%0.10f" % (1.0 / remaining)


# ---------------------------------------------------------------- iptables mode


def iptables_ruleset(services: list[ServicePort], config: ClusterConfig = ClusterConfig()) -> str:
    """The whole filter and nat tables of a kube-proxy node, as `iptables-save` would print them
    (apply without --noflush: it replaces both tables).  Jump rules in the built-in chains are in
    the order kube-proxy's EnsureRule(Prepend) leaves them; KUBE-FIREWALL is kubelet's."""
    total_endpoints = sum(len(s.endpoints) for s in services)
    large = total_endpoints > LARGE_CLUSTER_ENDPOINTS
    filter_rules: list[str] = []
    nat_chains: list[str] = []
    nat_rules: list[str] = []
    for svc in services:
        _write_service(svc, config, large, filter_rules, nat_chains, nat_rules)
    return "\n".join(_filter_table(filter_rules, config) + _nat_table(nat_chains, nat_rules, config.extra_nat)) + "\n"


def _write_service(svc, config, large, filter_rules, nat_chains, nat_rules):
    name = svc.port_name_string
    match = f"{_proto_match(svc)} -d {svc.cluster_ip} --dport {svc.port}"
    if not svc.endpoints:
        filter_rules.append(f"-A KUBE-SERVICES -m comment --comment {_q(name + ' has no endpoints')} {match} -j REJECT")
        return
    nat_rules.append(f"-A KUBE-SERVICES -m comment --comment {_q(name + ' cluster IP')} {match} -j {svc.svc_chain}")
    if svc.lb_ip:
        lb_match = f"{_proto_match(svc)} -d {svc.lb_ip} --dport {svc.port}"
        target = svc.fw_chain if svc.firewalled else svc.ext_chain
        nat_rules.append(f"-A KUBE-SERVICES -m comment --comment {_q(name + ' loadbalancer IP')} {lb_match} -j {target}")
        nat_chains.append(svc.ext_chain)
        nat_rules.append(f"-A {svc.ext_chain} -m comment --comment "
                         f"{_q('masquerade traffic for ' + name + ' external destinations')} -j KUBE-MARK-MASQ")
        nat_rules.append(f"-A {svc.ext_chain} -j {svc.svc_chain}")
    if svc.firewalled:
        filter_rules.append(f"-A KUBE-PROXY-FIREWALL -m comment --comment "
                            f"{_q(name + ' traffic not accepted by ' + svc.fw_chain)} {lb_match} -j DROP")
        nat_chains.append(svc.fw_chain)
        for src in svc.lb_source_ranges:
            nat_rules.append(f"-A {svc.fw_chain} -m comment --comment {_q(name + ' loadbalancer IP')} "
                             f"-s {src} -j {svc.ext_chain}")
        nat_rules.append(f"-A {svc.fw_chain} -m comment --comment "
                         f"{_q('other traffic to ' + name + ' will be dropped by KUBE-PROXY-FIREWALL')}")
    nat_chains.append(svc.svc_chain)
    nat_rules.append(f"-A {svc.svc_chain} -m comment --comment {_q(name + ' cluster IP')} {match} "
                     f"! -s {config.cluster_cidr} -j KUBE-MARK-MASQ")
    count = len(svc.endpoints)
    for i, ep in enumerate(svc.endpoints):
        comment = "" if large else f" -m comment --comment {_q(f'{name} -> {ep}')}"
        chance = f" -m statistic --mode random --probability {_probability(count - i)}" if i < count - 1 else ""
        nat_rules.append(f"-A {svc.svc_chain}{comment}{chance} -j {svc.sep_chain(ep)}")
    for ep in svc.endpoints:
        sep = svc.sep_chain(ep)
        comment = "" if large else f" -m comment --comment {name}"
        nat_chains.append(sep)
        nat_rules.append(f"-A {sep}{comment} -s {ep.ip} -j KUBE-MARK-MASQ")
        nat_rules.append(f"-A {sep}{comment} {_proto_match(svc)} -j DNAT --to-destination {ep}")


def _filter_table(service_rules: list[str], config: ClusterConfig) -> list[str]:
    new = "-m conntrack --ctstate NEW"
    lines = ["*filter",
             f":INPUT {'DROP' if config.node_firewall else 'ACCEPT'} [0:0]",
             ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    lines += [f":{c} - [0:0]" for c in ("KUBE-EXTERNAL-SERVICES", "KUBE-FIREWALL", "KUBE-FORWARD",
                                        "KUBE-NODEPORTS", "KUBE-PROXY-CANARY", "KUBE-PROXY-FIREWALL",
                                        "KUBE-SERVICES")]
    if config.node_firewall:
        # What a hardened node keeps open below kube-proxy's jumps; everything else meets the policy.
        lines += ["-A INPUT -i lo -j ACCEPT",
                  "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    lines += [
        f'-A INPUT {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        f'-A INPUT {new} -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
        "-A INPUT -j KUBE-FIREWALL",
        f'-A FORWARD {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD',
        f'-A FORWARD {new} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        f'-A FORWARD {new} -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES',
        f'-A OUTPUT {new} -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL',
        f'-A OUTPUT {new} -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A OUTPUT -j KUBE-FIREWALL",
        '-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet '
        'connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP',
    ]
    lines += service_rules
    if config.drop_invalid:
        lines.append("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP")
    lines += [
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate '
        "RELATED,ESTABLISHED -j ACCEPT",
    ]
    return lines + list(config.extra_filter) + ["COMMIT"]


def _nat_table(chains: list[str], rules: list[str], extra_nat: tuple[str, ...]) -> list[str]:
    lines = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]"]
    lines += [f":{c} - [0:0]" for c in ("KUBE-MARK-MASQ", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
                                        "KUBE-PROXY-CANARY", "KUBE-SERVICES")]
    lines += [f":{c} - [0:0]" for c in dict.fromkeys(chains)]
    lines += [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
    ]
    lines += rules
    lines.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the '
                 'last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    return lines + list(extra_nat) + ["COMMIT"]


# ---------------------------------------------------------------- nftables mode

NFT_TABLE = "kube-proxy"


def nft_ruleset(services: list[ServicePort], config: ClusterConfig = ClusterConfig()) -> str:
    """An `nft -f` file that (re)creates the `ip kube-proxy` table as kube-proxy's nftables mode
    writes it (pkg/proxy/nftables/proxier.go; its unit tests show the same lines)."""
    t = f"ip {NFT_TABLE}"
    vmap3 = "type ipv4_addr . inet_proto . inet_service : verdict"
    lines = [
        f"add table {t} {{ comment {_q('rules for kube-proxy')} ; }}",
        f"delete table {t}",  # add + delete + add: a fresh table whether or not one was there
        f"add table {t} {{ comment {_q('rules for kube-proxy')} ; }}",
        f"add set {t} cluster-ips {{ type ipv4_addr ; comment {_q('Active ClusterIPs')} ; }}",
        f"add set {t} nodeport-ips {{ type ipv4_addr ; comment {_q('IPs that accept NodePort traffic')} ; }}",
        f"add map {t} firewall-ips {{ {vmap3} ; comment "
        f"{_q('destinations that are subject to LoadBalancerSourceRanges')} ; }}",
        f"add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "
        f"{_q('vmap to drop or reject packets to service nodeports with no endpoints')} ; }}",
        f"add map {t} no-endpoint-services {{ {vmap3} ; comment "
        f"{_q('vmap to drop or reject packets to services with no endpoints')} ; }}",
        f"add map {t} service-ips {{ {vmap3} ; comment {_q('ClusterIP, ExternalIP and LoadBalancer IP traffic')} ; }}",
        f"add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment {_q('NodePort traffic')} ; }}",
    ]
    for chain, hook in (("cluster-ips-check", ""), ("filter-prerouting-pre-dnat", "prerouting priority -110"),
                        ("filter-output-pre-dnat", "output priority -110"), ("filter-forward", "forward priority 0"),
                        ("filter-input", "input priority 0"), ("filter-output", "output priority 0"),
                        ("firewall-check", ""), ("mark-for-masquerade", ""), ("masquerading", ""),
                        ("nat-output", "output priority -100"), ("nat-postrouting", "postrouting priority 100"),
                        ("nat-prerouting", "prerouting priority -100"), ("nodeport-endpoints-check", ""),
                        ("services", ""), ("service-endpoints-check", "")):
        kind = "nat" if chain.startswith("nat-") else "filter"
        lines.append(f"add chain {t} {chain}" + (f" {{ type {kind} hook {hook} ; }}" if hook else ""))
    lines.append(f"add chain {t} reject-chain {{ comment {_q('helper for @no-endpoint-services / @no-endpoint-nodeports')} ; }}")
    r = f"add rule {t}"
    lines += [
        f"{r} cluster-ips-check ip daddr @cluster-ips reject comment {_q('Reject traffic to invalid ports of ClusterIPs')}",
        f"{r} cluster-ips-check ip daddr {{ {config.service_cidr} }} drop comment {_q('Drop traffic to unallocated ClusterIPs')}",
        f"{r} filter-prerouting-pre-dnat ct state new jump firewall-check",
        f"{r} filter-forward ct state new jump service-endpoints-check",
        f"{r} filter-forward ct state new jump cluster-ips-check",
        f"{r} filter-input ct state new jump nodeport-endpoints-check",
        f"{r} filter-input ct state new jump service-endpoints-check",
        f"{r} filter-output ct state new jump service-endpoints-check",
        f"{r} filter-output-pre-dnat ct state new jump firewall-check",
        f"{r} filter-output ct state new jump cluster-ips-check",
        f"{r} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        f"{r} mark-for-masquerade mark set mark or {MASQ_MARK}",
        f"{r} masquerading mark and {MASQ_MARK} == 0 return",
        f"{r} masquerading mark set mark xor {MASQ_MARK}",
        f"{r} masquerading masquerade fully-random",
        f"{r} nat-output jump services",
        f"{r} nat-postrouting jump masquerading",
        f"{r} nat-prerouting jump services",
        f"{r} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
        f"{r} reject-chain reject",
        f"{r} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"{r} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        f"{r} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
    ]
    for svc in services:
        lines += _nft_service(svc, config, t)
    return "\n".join(lines) + "\n"


def _nft_service(svc: ServicePort, config: ClusterConfig, t: str) -> list[str]:
    key = f"{svc.cluster_ip} . {svc.protocol} . {svc.port}"
    lines = [f"add element {t} cluster-ips {{ {svc.cluster_ip} }}"]
    if not svc.endpoints:
        return lines + [f"add element {t} no-endpoint-services {{ {key} comment {_q(svc.port_name_string)} : goto reject-chain }}"]
    chain = svc.nft_service_chain
    # Every chain before the rules that jump to it: a vmap naming a chain not yet there fails.
    lines += [f"add chain {t} {c}" for c in [chain, *map(svc.nft_endpoint_chain, svc.endpoints)]]
    lines.append(f"add rule {t} {chain} ip daddr {svc.cluster_ip} ip saddr != {config.cluster_cidr} jump mark-for-masquerade")
    choices = " , ".join(f"{i} : goto {svc.nft_endpoint_chain(ep)}" for i, ep in enumerate(svc.endpoints))
    lines.append(f"add rule {t} {chain} numgen random mod {len(svc.endpoints)} vmap {{ {choices} }}")
    for ep in svc.endpoints:
        ep_chain = svc.nft_endpoint_chain(ep)
        lines += [f"add rule {t} {ep_chain} ip saddr {ep.ip} jump mark-for-masquerade",
                  f"add rule {t} {ep_chain} meta l4proto {svc.protocol} dnat to {ep}"]
    lines.append(f"add element {t} service-ips {{ {key} : goto {chain} }}")
    if svc.lb_ip:
        ext = svc.nft_external_chain
        lines += [f"add chain {t} {ext}", f"add rule {t} {ext} jump mark-for-masquerade",
                  f"add rule {t} {ext} goto {chain}",
                  f"add element {t} service-ips {{ {svc.lb_ip} . {svc.protocol} . {svc.port} : goto {ext} }}"]
    if svc.firewalled:
        fw = svc.nft_firewall_chain
        lines += [f"add chain {t} {fw}",
                  f"add rule {t} {fw} ip saddr != {{ {', '.join(svc.lb_source_ranges)} }} drop",
                  f"add element {t} firewall-ips {{ {svc.lb_ip} . {svc.protocol} . {svc.port} : goto {fw} }}"]
    return lines


# A hardened node's own firewall in nft mode (not kube-proxy's): input policy drop.
NODE_FIREWALL_TABLE = "node-firewall"


def nft_node_firewall() -> str:
    t = f"ip {NODE_FIREWALL_TABLE}"
    return "\n".join([f"add table {t}", f"delete table {t}", f"add table {t}",
                      f"add chain {t} input {{ type filter hook input priority 0 ; policy drop ; }}",
                      f"add rule {t} input iif lo accept",
                      f"add rule {t} input ct state established,related accept comment {_q('replies')}"]) + "\n"


# ---------------------------------------------------------------- kube-proxy at scale


def synthetic_services(rules: int = 10_000, endpoints_per_service: int = 2, mode: str = "iptables") -> list[ServicePort]:
    """Enough ClusterIP services for about `rules` rules (with E endpoints a service writes 2 + 3E
    nat rules in iptables mode, 2 + 2E in nft mode), in 10.97.0.0/16 with endpoints in
    10.245.0.0/16: addresses no test sends to, so they only make the tables big."""
    per_service = 2 + (3 if mode == "iptables" else 2) * endpoints_per_service
    out = []
    for n in range(max(1, rules // per_service)):
        eps = tuple(Endpoint(f"10.245.{(n * endpoints_per_service + e) // 250 % 250}."
                             f"{(n * endpoints_per_service + e) % 250 + 1}", 8080)
                    for e in range(endpoints_per_service))
        out.append(ServicePort("scale", f"svc-{n}", "http", "tcp", f"10.97.{n // 250}.{n % 250 + 1}", 80, eps))
    return out


def rule_count(restore_text: str) -> int:
    """Rules ("-A" lines) in an iptables-restore text, or rules in an nft -f text."""
    return sum(1 for line in restore_text.splitlines() if line.startswith(("-A ", "add rule ")))
