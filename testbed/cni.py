"""Pod interfaces made the way kubelet makes them: the real CNI plugins (Debian's
containernetworking-plugins in /usr/lib/cni) run with CNI_COMMAND=ADD/DEL inside the node's network
namespace, the network config on stdin.

    net = CniNetwork("flannel", "bridge", ["10.244.1.0/24"], data_dir, bridge="cni0", mtu=1450)
    pod = net.add(node_ns="skbt1-0-node1", pod_ns="skbt1-0-pod-a", container_id="pod-a")
    pod.ip4, pod.host_ifname, pod.mac      # what the plugin made and reported
    net.delete(...same arguments...)       # CNI DEL: veth gone, address back to host-local

host-local keeps its leases in a directory (kubelet's default /var/lib/cni/networks/<name>); each
network here gets its own `data_dir` so parallel runs and a crashed run's leftovers never collide.
The caller removes that directory at teardown (remove_data_dir()).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from .topology import NETNS_DIR, netns_path, run_in_netns

CNI_PATH = "/usr/lib/cni"
CNI_VERSION = "0.4.0"
# Per-run host-local state lives below here, in <prefix>/<network name> (host-local adds the name).
DATA_ROOT = "/run/skbt-cni"
_RUN_DIR_RE = re.compile(r"^skbt(\d+)-(\d+)$")


class CniError(RuntimeError):
    """A plugin exited non-zero; the message carries the plugin's own JSON error."""


def available() -> str | None:
    """None when the plugins are installed, else why not (a skip reason)."""
    missing = [p for p in ("bridge", "ptp", "host-local") if not os.access(f"{CNI_PATH}/{p}", os.X_OK)]
    return f"needs containernetworking-plugins ({', '.join(missing)} missing in {CNI_PATH})" if missing else None


@dataclass
class PodInterface:
    """What one CNI ADD made: the pod's addresses, its interface, the node-side veth."""

    container_id: str
    pod_ns: str
    ifname: str
    host_ifname: str
    mac: str
    ips: list = field(default_factory=list)  # ipaddress.ip_interface
    gateways: list = field(default_factory=list)  # ipaddress.ip_address
    result: dict = field(default_factory=dict)  # the plugin's JSON answer, whole

    @property
    def ip4(self) -> str | None:
        return next((str(i.ip) for i in self.ips if i.version == 4), None)

    @property
    def ip6(self) -> str | None:
        return next((str(i.ip) for i in self.ips if i.version == 6), None)


class CniNetwork:
    """One CNI network config (`bridge` or `ptp`, IPAM `host-local`) as kubelet would pass it;
    plugin "host-local" runs the IPAM plugin alone (addresses only, for interfaces made by hand).

    subnets: one host-local range per address family, e.g. ["10.244.1.0/24", "fd00:244:1::/64"].
    routes: host-local's routes for the pod (default: a default route per family, via the gateway).
    Extra keyword arguments go into the plugin's config as they are (bridge="cni0", mtu=1450,
    isGateway=True, promiscMode=True, hairpinMode=True, ...).
    """

    def __init__(self, name: str, plugin: str, subnets: list[str], data_dir: str,
                 routes: list[dict] | None = None, **plugin_options):
        if plugin not in ("bridge", "ptp", "host-local"):
            raise ValueError(f"unsupported CNI plugin {plugin!r}")
        self.name, self.plugin, self.data_dir = name, plugin, data_dir
        self.subnets = [ipaddress.ip_network(s) for s in subnets]
        if routes is None:
            routes = [{"dst": "0.0.0.0/0" if s.version == 4 else "::/0"} for s in self.subnets]
        self.routes = routes
        self.options = plugin_options

    def conf(self, **overrides) -> dict:
        """The network config on the plugin's stdin; overrides change plugin options for one pod."""
        options = {**self.options, **overrides}
        return {
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "type": self.plugin,
            **options,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(s)}] for s in self.subnets],
                "routes": self.routes,
                "dataDir": self.data_dir,
            },
        }

    def add(self, node_ns: str, pod_ns: str, container_id: str, ifname: str = "eth0", **overrides) -> PodInterface:
        result = self._run("ADD", node_ns, pod_ns, container_id, ifname, self.conf(**overrides))
        ifaces = result.get("interfaces", [])
        pod_if = next((i for i in ifaces if i.get("sandbox")), {"name": ifname})
        host_if = next((i for i in ifaces if not i.get("sandbox") and i["name"] != self.options.get("bridge")), {})
        return PodInterface(
            container_id=container_id,
            pod_ns=pod_ns,
            ifname=pod_if["name"],
            host_ifname=host_if.get("name", ""),
            mac=pod_if.get("mac", ""),
            ips=[ipaddress.ip_interface(i["address"]) for i in result.get("ips", [])],
            gateways=[ipaddress.ip_address(i["gateway"]) for i in result.get("ips", []) if i.get("gateway")],
            result=result,
        )

    def delete(self, node_ns: str, pod_ns: str, container_id: str, ifname: str = "eth0") -> None:
        self._run("DEL", node_ns, pod_ns, container_id, ifname, self.conf())

    def _run(self, command: str, node_ns: str, pod_ns: str, container_id: str, ifname: str, conf: dict) -> dict:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns_path(pod_ns),
            "CNI_IFNAME": ifname,
            "CNI_PATH": CNI_PATH,
        }
        proc = run_in_netns(node_ns, subprocess.run, [f"{CNI_PATH}/{self.plugin}"], input=json.dumps(conf),
                            env=env, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise CniError(f"CNI {command} {self.plugin} for {container_id} in {node_ns}: "
                           f"{(proc.stdout or proc.stderr).strip()}")
        return json.loads(proc.stdout) if proc.stdout.strip() else {}


def data_dir(prefix: str) -> str:
    """host-local's lease directory of one test-bed instance (host-local adds /<network name>)."""
    return f"{DATA_ROOT}/{prefix}"


def remove_data_dir(prefix: str) -> None:
    shutil.rmtree(f"{DATA_ROOT}/{prefix}", ignore_errors=True)


def remove_stale_data_dirs() -> list[str]:
    """Lease directories of default-prefix runs (skbt<pid>-<n>) that have no namespace left.

    Call after topology.cleanup_stale(): a dead run's namespaces are gone by then, and a live run
    creates its namespaces before its lease directory (so it is never taken for dead here).
    """
    removed = []
    if not os.path.isdir(DATA_ROOT):
        return removed
    live = os.listdir(NETNS_DIR) if os.path.isdir(NETNS_DIR) else []
    for prefix in os.listdir(DATA_ROOT):
        if not _RUN_DIR_RE.match(prefix) or any(n.startswith(prefix + "-") for n in live):
            continue
        if int(_RUN_DIR_RE.match(prefix).group(1)) == os.getpid():
            continue
        remove_data_dir(prefix)
        removed.append(prefix)
    return removed
