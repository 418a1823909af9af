"""skbtracer.c against program/macros.py, the list of what Python tells it
(unit stage; no root, no bcc): every name the C tests with #if/#ifdef/
#ifndef/#elif/defined() or uses as a macro is listed there, or defined by
the C itself, or one of the few kernel/bcc names below; every listed macro
and layout field is used by the C; the probe macros, functions and maps
Python names exist in the C; the generated #defines come from the list, of
the kind it gives them (a flag is 1 and only asked #ifdef, a number a number).
A misspelt #ifdef compiles as false: these tests are what notices it."""

import os
import re

import pytest
import skbt_unit_helpers  # noqa: F401  (repository on sys.path)

from skbtracer_lib import config
from skbtracer_lib.program import layout, macros, pcapfilter
from skbtracer_lib.program.source import Program

C_SOURCE = os.path.join(str(skbt_unit_helpers.REPO), "skbtracer.c")

# names skbtracer.c takes from the kernel headers or bcc, not from skbtracer
EXTERNAL = {
    "LINUX_VERSION_CODE": "linux/version.h (bcc includes it): the headers fallback's struct stubs",
    "KERNEL_VERSION": "linux/version.h, with LINUX_VERSION_CODE",
    "BPF_PERCPU_ARRAY": "bcc's map declarations (helpers.h)",
    "BPF_ARRAY": "bcc's map declarations (learned tuples: global, inlined lookups)",
    "BPF_HASH": "bcc's map declarations",
    "BPF_TABLE": "bcc's map declarations (lru_hash)",
    "BPF_PERF_OUTPUT": "bcc's map declarations",
    "BPF_RINGBUF_OUTPUT": "bcc's map declarations",
    "BPF_STACK_TRACE": "bcc's map declarations",
    "PT_REGS_IP": "bcc's pt_regs accessors (bpf_tracing.h)",
    "PT_REGS_RC": "bcc's pt_regs accessors",
    "PT_REGS_PARM1": "bcc's pt_regs accessors (others are pasted: PT_REGS_PARM##argn)",
    "PT_REGS_PARM2": "bcc's pt_regs accessors",
    "PT_REGS_PARM3": "bcc's pt_regs accessors",
    "PT_REGS_PARM4": "bcc's pt_regs accessors",
    "IS_ENABLED": "linux/kconfig.h: the headers fallback asks the kernel's configuration",
    "CONFIG_NF_CONNTRACK": "the headers fallback: sk_buff has _nfct, struct nf_conn exists",
    "CONFIG_NF_CONNTRACK_MARK": "the headers fallback: struct nf_conn has mark",
    "CONFIG_NF_CONNTRACK_ZONES": "the headers fallback: struct nf_conn has zone",
}
LAYOUT_NAME = re.compile(r"L_(\w+?)_(OFF|SIZE|SHIFT|BITS)")
MACRO_LIKE = re.compile(r"\b_*[A-Z][A-Z0-9_]*\b")


def c_text():
    with open(C_SOURCE) as f:
        return f.read()


def logical_lines(text):
    """(line number, line) of C text without comments and string literals,
    continuation lines joined."""
    def blank(match):
        return "\n" * match.group(0).count("\n") + " "
    text = re.sub(r"/\*.*?\*/|//[^\n]*|\"(?:\\.|[^\"\\])*\"", blank, text, flags=re.S)
    lines, pending, start = [], "", None
    for number, line in enumerate(text.split("\n"), 1):
        if start is None:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending, start = "", None
    return lines


class CNames:
    """What skbtracer.c defines, tests and uses, name -> first line number."""

    def __init__(self, text):
        self.defined = {}         # #define NAME
        self.params = {}          # function-like #define NAME -> its parameters
        self.bodies = {}          # #define NAME -> its replacement text
        self.tested = {}          # in #if/#ifdef/#ifndef/#elif
        self.used = {}            # macro-like names elsewhere
        for number, line in logical_lines(text):
            directive = re.match(r"\s*#\s*(\w+)\s*(.*)", line)
            if not directive:
                self._note_uses(line, number, ())
                continue
            keyword, rest = directive.groups()
            if keyword == "define":
                self._define(rest, number)
            elif keyword in ("ifdef", "ifndef"):
                self.tested.setdefault(rest.split()[0], number)
            elif keyword in ("if", "elif"):
                for name in re.findall(r"\b\w+\b", rest):
                    if name != "defined" and not name[0].isdigit():
                        self.tested.setdefault(name, number)

    def _define(self, rest, number):
        found = re.match(r"(\w+)(\(([^)]*)\))?\s*(.*)", rest)
        name, has_params, params, body = found.groups()
        self.defined.setdefault(name, number)
        params = tuple(p.strip() for p in params.split(",")) if has_params else ()
        if has_params:
            self.params[name] = params
        self.bodies[name] = body
        self._note_uses(body, number, params)

    def _note_uses(self, code, number, params):
        code = re.sub(r"\w*(##\w+)+", " ", code)     # pasted names: fragments, not names
        for name in MACRO_LIKE.findall(code):
            if name not in params:
                self.used.setdefault(name, number)

    def functions(self, text):
        return set(re.findall(r"^int (\w+)\(", text, re.M))

    def maps(self, text):
        return (set(re.findall(r"\bBPF_\w+\((\w+)[,)]", text))
                | set(re.findall(r"\bBPF_TABLE\(\"\w+\",[^,]+,[^,]+,\s*(\w+),", text)))


def layout_fields():
    return {name for table in layout.FIELD_TABLES for name in table}


def stray_names(text):
    """Messages for names skbtracer.c tests or uses that nobody defines."""
    c = CNames(text)
    fields = layout_fields()
    problems = []
    for what, names in (("tests", c.tested), ("uses", c.used)):
        for name, number in sorted(names.items(), key=lambda item: item[1]):
            family = LAYOUT_NAME.fullmatch(name)
            if (name in macros.MACROS or name in c.defined or name in EXTERNAL or name in fields
                    or (family and family.group(1) in fields)):
                continue
            problems.append("skbtracer.c:%d %s %s, which skbtracer_lib/program/macros.py does not "
                            "list and neither skbtracer.c, the kernel headers nor bcc define "
                            "(a misspelt #ifdef compiles as false)" % (number, what, name))
    return problems


def test_every_name_the_c_tests_or_uses_is_defined_somewhere():
    problems = stray_names(c_text())
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("line, correct, stray", [
    ("#ifdef FILTER_PORT", "FILTER_PORT", "FILTER_PROT"),
    ("#if defined(STACK_ALL) || defined(STACK_DROPS)", "STACK_ALL", "STACK_AL"),
    ("#ifdef L_SKB_VLAN_TCI_OFF", "L_SKB_VLAN_TCI_OFF", "L_SKB_VLAN_TIC_OFF"),  # a layout field
])
def test_a_misspelt_name_is_named(line, correct, stray):
    """The check's positive control: skbtracer.c with one name misspelt."""
    text = c_text()
    assert line in text
    problems = stray_names(text.replace(line, line.replace(correct, stray, 1), 1))
    assert len(problems) == 1 and " tests %s," % stray in problems[0], problems


def test_every_listed_macro_and_layout_field_is_used_by_the_c():
    c = CNames(c_text())
    seen = set(c.tested) | set(c.used)
    assert sorted(set(macros.MACROS) - seen) == [], "listed in macros.py, never used in skbtracer.c"
    seen_fields = seen | {m.group(1) for m in map(LAYOUT_NAME.fullmatch, seen) if m}
    assert sorted(layout_fields() - seen_fields) == [], "layout fields skbtracer.c never reads"


def test_flags_are_only_asked_whether_defined():
    """A flag is defined as 1 or not at all: the C only asks #ifdef of it."""
    c = CNames(c_text())
    flags = [m.name for m in macros.MACROS.values() if m.kind == macros.FLAG]
    assert sorted(n for n in flags if n in c.used) == [], "flags used as values"


def test_the_list_is_its_own_names():
    """A constant and the name it holds are one spelling; EXTERNAL stays true."""
    for name, macro in macros.MACROS.items():
        assert getattr(macros, name) == name == macro.name
        assert macro.kind in (macros.FLAG, macros.NUMBER, macros.TEXT) and macro.why
    c = CNames(c_text())
    assert sorted(n for n in EXTERNAL if n not in c.tested and n not in c.used) == []
    assert sorted(n for n in EXTERNAL if n in c.defined or n in macros.MACROS) == []
    # the C must never define what Python defines (the generated head comes first)
    defined_by_c = [n for n in macros.MACROS if n in c.defined
                    and not re.search(r"#ifndef %s\n#define %s " % (n, n), c_text())]
    assert defined_by_c == []


def test_probe_macros_functions_and_maps_exist_in_the_c():
    text = c_text()
    c = CNames(text)
    for instantiator in macros.INSTANTIATORS:
        assert c.params.get(instantiator.name) == instantiator.params, instantiator.name
        for function in instantiator.functions:
            pasted = re.sub(r"\{(\w+)\}", r"##\1", function)
            assert "int %s(" % pasted in c.bodies[instantiator.name], (instantiator.name, function)
    assert sorted(set(macros.C_FUNCTIONS) - c.functions(text)) == []
    assert sorted(set(macros.MAPS) - c.maps(text)) == []
    assert text.count(macros.PCAP_FUNCTIONS_MARKER) == 1
    for view, _linktype, _description in pcapfilter.VIEWS:
        assert re.search(r"\b%s\(" % macros.pcap_match(view), text), view


def generated_defines(program):
    """(name, value) of the generated head's #defines."""
    head = program.text.split("\n\n", 1)[0]
    return re.findall(r"^#define (\w+)(?:\(\w+\))? (.*)$", head, re.M)


@pytest.mark.parametrize("backend", ["kprobe", "tracepoint"])
def test_generated_defines_come_from_the_list(backend, tmp_path):
    fields = layout_fields()
    flags = [["--route", "--iptable", "--drop", "--callstack", "--keep", "-H", "10.0.0.1",
              "-P", "53", "-p", "1", "-N", "/proc/self/ns/net", "--proto", "tcp",
              "-w", str(tmp_path / "x.pcap"), "tcp", "and", "len", ">", "40"],
             ["--dropstack", "-H", "fd00::1", "--proto", "icmp", "--icmpid", "7", "vlan",
              "--ct-state", "new", "--ct-mark", "0x2a/0xff", "--ct-zone", "7"],
             ["--layout", "headers", "--route", "--iptable"]]
    for argv in flags:
        program = Program(config.parse_args(argv), backend=backend)
        for name, value in generated_defines(program):
            family = LAYOUT_NAME.fullmatch(name)
            assert name in macros.MACROS or (family and family.group(1) in fields), name
            kind = macros.MACROS[name].kind if name in macros.MACROS else macros.NUMBER
            if kind == macros.FLAG:
                assert value == "1", (name, value)
            elif kind == macros.NUMBER:
                assert re.fullmatch(r"[0-9]+(U|ULL)?", value), (name, value)
