"""--names: a Service's name from kube-proxy's rules in the namespace where
its connections were DNATed (the story's SERVICE lines, outputs at exit).

kube-proxy names what each rule is for, and that is all read here:
  iptables mode (iptables-save, nft or legacy): the nat table's KUBE-SERVICES
    rules '-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment
    "default/ubuntu-server:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-...'
    (also "... loadbalancer IP", "... external IP");
  nftables mode (nft -j list map ip kube-proxy service-ips): the verdict
    map's elements '10.96.0.10 . udp . 53 : goto service-<hash>-default/
    ubuntu-server/udp/dns', the chain name carrying the Service's name.
The rules are read once per namespace, at exit, by the tools run inside it
(nsenter --net); a tool or namespace that is not there gives no names.
"""

import json
import os
import shlex
import shutil
import subprocess

from ..events.decode import printable
from ..events.vocabulary import L4_NAMES

TOOL_SECONDS = 5.0
# comments of the KUBE-SERVICES rules that jump to a Service's chain, by how it was reached
_COMMENT_ENDS = (" cluster IP", " loadbalancer IP", " external IP")
_NFT_CHAIN_KINDS = ("service-", "external-")
NFT_TABLE = "kube-proxy"


def iptables_names(text):
    """{(proto, address, port): name} from iptables-save's text."""
    names = {}
    for line in text.splitlines():
        if not line.startswith("-A KUBE-SERVICES "):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        options = _options(words)
        comment, address = options.get("--comment", ""), options.get("-d", "")
        end = next((e for e in _COMMENT_ENDS if comment.endswith(e)), None)
        if end is None or not address or "!" in words:
            continue
        try:
            port = int(options.get("--dport", "0"))
        except ValueError:
            continue
        key = (options.get("-p", ""), address.split("/")[0], port)
        names.setdefault(key, comment[:-len(end)])
    return names


def _options(words):
    """{option: the word after it} of one rule."""
    return {word: value for word, value in zip(words, words[1:]) if word.startswith("-")}


def nft_names(text):
    """{(proto, address, port): name} from `nft -j list map ... service-ips`."""
    try:
        ruleset = json.loads(text).get("nftables", [])
    except (ValueError, AttributeError):
        return {}
    names = {}
    for item in ruleset:
        elements = item.get("map", {}).get("elem", []) if isinstance(item, dict) else []
        for element in elements:
            try:
                key, verdict = element
                if isinstance(key, dict) and "elem" in key:    # an element with a comment
                    key = key["elem"]["val"]
                address, proto, port = key["concat"]
                target = (verdict.get("goto") or verdict.get("jump"))["target"]
            except (TypeError, ValueError, KeyError, AttributeError):
                continue
            name = _nft_chain_service(target)
            if name:
                names.setdefault((proto, address, int(port)), name)
    return names


def _nft_chain_service(chain):
    """'service-AB12CD34-default/ubuntu-server/udp/dns' -> 'default/ubuntu-server:dns'."""
    kind = next((k for k in _NFT_CHAIN_KINDS if chain.startswith(k)), None)
    if kind is None:
        return None
    parts = chain[len(kind):].split("-", 1)
    if len(parts) != 2:
        return None
    fields = parts[1].split("/")
    if len(fields) != 4:
        return None
    namespace, name, _proto, port_name = fields
    return "%s/%s:%s" % (namespace, name, port_name) if port_name else "%s/%s" % (namespace, name)


# (command, parser) per family; iptables-save without -t: only the tables
# there are (asking for one would load its legacy module)
_TOOLS = {4: ((["iptables-nft-save"], iptables_names), (["iptables-legacy-save"], iptables_names),
              (["nft", "-j", "list", "map", "ip", NFT_TABLE, "service-ips"], nft_names)),
          6: ((["ip6tables-nft-save"], iptables_names),
              (["ip6tables-legacy-save"], iptables_names),
              (["nft", "-j", "list", "map", "ip6", NFT_TABLE, "service-ips"], nft_names))}


class ServiceNames:
    """conntrack.Service -> its name from kube-proxy's rules in the namespaces
    its connections were seen in (read once per namespace and family).
    netns_path(inode) -> a path to open the namespace by, or None;
    note(text): -v's line for what could not be read."""

    def __init__(self, netns_path, note=lambda text: None, run=subprocess.run, which=shutil.which):
        self.netns_path = netns_path
        self.note = note
        self.run = run
        self.which = which
        self._rules = {}            # (inode, family) -> {(proto, address, port): name}

    def __call__(self, service):
        proto = L4_NAMES.get(service.l4proto)
        for inode in sorted(service.netns):
            name = self.rules(inode, service.family).get((proto, service.address, service.port))
            if name:
                return printable(name)      # someone else's text: one line, no controls
        return None

    def rules(self, inode, family):
        key = (inode, family)
        if key not in self._rules:
            self._rules[key] = self._read(inode, family)
        return self._rules[key]

    def _read(self, inode, family):
        path = self.netns_path(inode)
        if path is None:
            self.note("--names: namespace %s is gone: no Service names from its rules" % inode)
            return {}
        names = {}
        for command, parse in _TOOLS.get(family, ()):
            if self.which(command[0]) is None:      # older distributions: only iptables-save
                fallback = command[0].replace("-nft-save", "-save")
                command = [fallback] if fallback != command[0] else None
            text = self._output(path, command) if command else ""
            if text:
                for key, name in parse(text).items():
                    names.setdefault(key, name)
        if not names:
            self.note("--names: no kube-proxy Service rules readable in namespace %s" % inode)
        return names

    def _output(self, path, command):
        """command's output run in the namespace at path; "" when it fails."""
        argv = command if _same_namespace(path) else ["nsenter", "--net=" + path] + command
        try:
            done = self.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, timeout=TOOL_SECONDS, check=False)
        except (OSError, subprocess.SubprocessError):
            return ""
        if done.returncode != 0:
            return ""
        return done.stdout.decode("utf-8", "replace")


def _same_namespace(path):
    """Is path skbtracer's own network namespace (no nsenter needed)?"""
    try:
        return os.stat(path).st_ino == os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False
