"""The seed's six scenarios (and the ebtables dedup variant) under ONE
skbtracer run: each scenario's datagram gets its own client source port,
so its rows can be told apart afterwards. One tracer start per run matters
in the TCG guest, where compiling the BPF program costs seconds."""

from dataclasses import dataclass, field

from .topology import SCENARIOS, SeedCluster
from .tracer import TracerRun, skb_paths

FIRST_SPORT = 41001
DEDUP = 7          # scenario 1 again, with kubenet's ebtables dedup rule


@dataclass
class ScenarioResult:
    number: int
    sport: int
    received: int                 # datagrams the target pod got
    target_pod: str
    rows: list = field(default_factory=list)

    @property
    def paths(self):
        return skb_paths(self.rows)

    def skbs_reaching(self, cluster, pod, functions):
        """Distinct skbs seen on the pod's eth0 in one of functions."""
        inode = cluster.ns_inode[pod]
        return {r.skb for r in self.rows
                if r.netns == inode and r.ifname == "eth0" and r.function in functions}


def run_scenarios(cluster: SeedCluster, tracer_args, settle=0.5, with_dedup=True):
    """Run scenarios 1-6 (+ 7 = 1 with the dedup rule) while skbtracer traces
    the client's UDP. Returns ({number: ScenarioResult}, TracerRun)."""
    plan = [(s.number, s.promisc, s.target, False) for s in SCENARIOS]
    if with_dedup:
        plan.append((DEDUP, True, "service", True))
    results = {}
    args = ["-H", cluster.ip["client"], "--proto", "udp"] + list(tracer_args)
    for pod in ("server", "server2"):
        cluster.start_udp_receiver(pod)
    with TracerRun(args) as run:
        for number, promisc, target, dedup in plan:
            if cluster.get_promisc() != promisc:
                cluster.set_promisc(promisc)
            if cluster.dedup_rule != dedup:
                cluster.set_dedup(dedup)
            pod, dst_ip, dst_port = cluster.targets[target]
            sport = FIRST_SPORT + number
            cluster.reset_counts()
            cluster.send_udp("client", dst_ip, dst_port, sport=sport)
            received = cluster.received(pod, settle=settle)
            results[number] = ScenarioResult(number, sport, received, pod)
        if cluster.dedup_rule:
            cluster.set_dedup(False)
    for result in results.values():
        marker = ":%d->" % result.sport
        result.rows = [r for r in run.rows if marker in r.pkt]
    return results, run
