"""The ruleset of one namespace, read with Debian's python3-nftables (the
libnftables JSON API): for each (family, table, chain, handle) the rule as
`nft -a list ruleset` prints it, its position in the chain and its
comment; each base chain's hook and policy.

iptables-nft's `-m comment --comment` is an xt match nft cannot show (its
JSON has {"xt": {"name": "comment"}}, its text nothing): for tables that
iptables-nft manages, the comment and the rule as `iptables -S` prints it
come from iptables-nft-save (ip6tables-nft-save), whose rules of a chain are
the nft chain's rules in the same order."""

import json
import re
import shutil
import subprocess
import time
from typing import NamedTuple

from .netns import inside

# iptables-nft's tables (the ones iptables-nft-save prints)
XT_TABLES = ("filter", "nat", "mangle", "raw", "security")
XT_SAVE = {"ip": "iptables-nft-save", "ip6": "ip6tables-nft-save"}
_TABLE_LINE = re.compile(r'^table (\S+) ("(?:[^"\\]|\\.)*"|\S+) \{')
_CHAIN_LINE = re.compile(r'^\tchain ("(?:[^"\\]|\\.)*"|\S+) \{')
_RULE_LINE = re.compile(r'^\t\t(.*?)\s*# handle (\d+)$')
REREAD_SECONDS = 5.0
_COMMENT = re.compile(r'--comment ("(?:[^"\\]|\\.)*"|\S+)')


class Rule(NamedTuple):
    family: str
    table: str
    chain: str
    handle: int
    position: int           # 1-based, in the chain
    text: str               # as `nft -a list ruleset` prints it, without the handle
    comment: str            # nft's comment, or iptables-nft's --comment; None: none
    iptables: str           # iptables-nft's tables: as `iptables -S` prints it


class BaseChain(NamedTuple):
    hook: str
    policy: str


def _unquote(name):
    return name[1:-1].replace('\\"', '"') if name.startswith('"') else name


def parse_text(text):
    """{(family, table, chain, handle): rule text} from `nft -a list ruleset`."""
    found, family, table, chain = {}, None, None, None
    for line in text.splitlines():
        m = _TABLE_LINE.match(line)
        if m:
            family, table, chain = m.group(1), _unquote(m.group(2)), None
            continue
        m = _CHAIN_LINE.match(line)
        if m:
            chain = _unquote(m.group(1))
            continue
        m = _RULE_LINE.match(line)
        if m and chain is not None:
            found[(family, table, chain, int(m.group(2)))] = re.sub(r"\s{2,}", " ", m.group(1))
    return found


def parse_xt_save(text, table):
    """{chain: [(rule as `iptables -S` prints it, comment or None)]} of one
    table in iptables-save output."""
    chains, current = {}, None
    for line in text.splitlines():
        if line.startswith("*"):
            current = line[1:].strip()
        elif current == table and line.startswith("-A "):
            chain = line.split(" ", 2)[1]
            m = _COMMENT.search(line)
            comment = _unquote(m.group(1)) if m else None
            chains.setdefault(chain, []).append((line, comment))
    return chains


def parse_json(document, texts, xt_rules=None):
    """(rules, base chains) from `nft -j -a list ruleset` and its text
    (parse_text); xt_rules: {(family, table): parse_xt_save()} for the
    tables iptables-nft manages."""
    rules, chains, positions = {}, {}, {}
    for item in document.get("nftables", []):
        if "chain" in item:
            c = item["chain"]
            if "hook" in c:
                chains[(c["family"], c["table"], c["name"])] = BaseChain(
                    c["hook"], c.get("policy", "accept"))
        elif "rule" in item:
            r = item["rule"]
            where = (r["family"], r["table"], r["chain"])
            position = positions[where] = positions.get(where, 0) + 1
            key = where + (r["handle"],)
            comment, iptables = r.get("comment"), None
            saved = (xt_rules or {}).get(where[:2])
            if saved is not None:
                listed = saved.get(r["chain"], [])
                if position <= len(listed):
                    iptables, xt_comment = listed[position - 1]
                    comment = comment or xt_comment
            rules[key] = Rule(r["family"], r["table"], r["chain"], r["handle"], position,
                              texts.get(key, ""), comment, iptables)
    return rules, chains


def xt_managed(document):
    """(family, table) pairs whose rules use xt expressions: iptables-nft's."""
    found = set()
    for item in document.get("nftables", []):
        r = item.get("rule")
        if r and r["family"] in XT_SAVE and r["table"] in XT_TABLES and any(
                "xt" in e for e in r.get("expr", ())):
            found.add((r["family"], r["table"]))
    return found


class Ruleset:
    """One namespace's ruleset, read again when a trace names a rule or
    chain it does not have (a rule added since: handles are never reused),
    at most every REREAD_SECONDS: kube-proxy's 10,000 rules take 2 s to read
    (iptables-nft-save included), and the rows wait for it."""

    def __init__(self, nft, netns_path, skip):
        self.nft = nft                  # an nftables.Nftables made in that namespace
        self.skip = skip                # (family, name) of skbtracer's own table
        self.netns_path = netns_path
        self.rules, self.chains = {}, {}
        self.reads = 0
        self.read_at = None             # time.monotonic() of the last read

    def read(self):
        nft = self.nft
        nft.set_handle_output(True)
        nft.set_stateless_output(True)      # no counters: the text stays the same
        nft.set_json_output(False)
        listed = self._cmd("list tables")
        document, text = {"nftables": []}, ""
        # table by table, ours left out: nft 1.0.6's JSON of a table with
        # `flags owner` is broken (the flags' value is garbage or missing)
        for line in listed.splitlines():
            words = line.split(" ", 2)
            if len(words) != 3 or words[0] != "table" or tuple(words[1:]) == self.skip:
                continue
            nft.set_json_output(True)
            try:
                part = json.loads(self._cmd("list table %s %s" % (words[1], words[2])))
            except ValueError as e:
                raise OSError("nft -j list table %s %s: %s" % (words[1], words[2], e)) from None
            finally:
                nft.set_json_output(False)
            document["nftables"] += part.get("nftables", [])
            text += self._cmd("list table %s %s" % (words[1], words[2]))
        xt_rules = {}
        for family, table in xt_managed(document):
            saved = self._xt_save(family, table)
            if saved is not None:
                xt_rules[(family, table)] = parse_xt_save(saved, table)
        self.rules, self.chains = parse_json(document, parse_text(text), xt_rules)
        self.reads += 1
        self.read_at = time.monotonic()

    def _cmd(self, command):
        rc, out, err = self.nft.cmd(command)
        if rc != 0:
            raise OSError("nft %s: %s" % (command, err.strip()))
        return out

    def _xt_save(self, family, table):
        program = shutil.which(XT_SAVE[family])
        if program is None:
            return None
        with inside(self.netns_path):
            done = subprocess.run([program, "-t", table], capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None

    def rule(self, family, table, chain, handle):
        key = (family, table, chain, handle)
        if key not in self.rules and (self.read_at is None
                                      or time.monotonic() - self.read_at >= REREAD_SECONDS):
            try:
                self.read()
            except (OSError, ValueError, KeyError, TypeError):
                self.read_at = time.monotonic()     # the rule is unknown; tracing goes on
        return self.rules.get(key)

    def base_chain(self, family, table, chain):
        key = (family, table, chain)
        if key not in self.chains and not self.reads:
            self.read()
        return self.chains.get(key)
