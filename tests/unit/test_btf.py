"""btf.py against bpftool: struct member offsets (through anonymous unions
and structs), bitfields, function parameters and enum skb_drop_reason.

The reference side parses `bpftool btf dump file /sys/kernel/btf/vmlinux`
(its raw text format) and follows type ids itself."""

import os
import re
import shutil
import subprocess

import pytest
import skbt_unit_helpers  # noqa: F401  (repository on sys.path)

from skbtracer_lib.program import btf as btf_mod
from skbtracer_lib.program import layout, probes

VMLINUX = "/sys/kernel/btf/vmlinux"

pytestmark = [
    pytest.mark.skipif(not os.path.exists(VMLINUX),
                       reason="this kernel has no BTF (%s is absent)" % VMLINUX),
    pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool is not installed"),
]

_HEAD = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_ITEM = re.compile(r"^\s+'([^']*)'(.*)$")
_KV = re.compile(r"(\w+)=(\S+)")
_MODIFIERS = ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG")


def _name(text):
    return "" if text == "(anon)" else text


class BpftoolBTF:
    """Types from bpftool's raw dump: id -> (kind, name, attrs, items)."""

    def __init__(self, text):
        self.types = {}
        self.first = {}          # (kind, name) -> lowest id
        current = None
        for line in text.splitlines():
            head = _HEAD.match(line)
            if head:
                type_id, kind, name = int(head.group(1)), head.group(2), _name(head.group(3))
                current = (kind, name, dict(_KV.findall(head.group(4))), [])
                self.types[type_id] = current
                self.first.setdefault((kind, name), type_id)
                continue
            item = _ITEM.match(line)
            if item and current is not None:
                current[3].append((_name(item.group(1)), dict(_KV.findall(item.group(2)))))

    def id_of(self, kind, name):
        return self.first.get((kind, name))

    def kind(self, type_id):
        return self.types[type_id][0]

    def resolve(self, type_id):
        while type_id and self.kind(type_id) in _MODIFIERS:
            type_id = int(self.types[type_id][2]["type_id"])
        return type_id

    def size(self, type_id):
        type_id = self.resolve(type_id)
        kind, _name, attrs, _items = self.types[type_id]
        if kind == "PTR":
            return 8
        if kind == "ARRAY":
            return int(attrs["nr_elems"]) * self.size(int(attrs["type_id"]))
        return int(attrs["size"])

    def find_member(self, struct_id, name):
        """(bits_offset, bitfield_size, type_id, crossed_anonymous) or None."""
        for member, attrs in self.types[struct_id][3]:
            bits = int(attrs["bits_offset"])
            if member == name:
                return bits, int(attrs.get("bitfield_size", 0)), int(attrs["type_id"]), False
            if not member:
                inner = self.resolve(int(attrs["type_id"]))
                if self.kind(inner) in ("STRUCT", "UNION"):
                    found = self.find_member(inner, name)
                    if found:
                        return found[0] + bits, found[1], found[2], True
        return None

    def member(self, struct_name, path):
        """(bit offset, bitfield size, byte size, crossed an anonymous member)."""
        type_id = self.id_of("STRUCT", struct_name) or self.id_of("UNION", struct_name)
        assert type_id, "bpftool: no struct %s" % struct_name
        bits, bitfield, anon = 0, 0, False
        for part in path.split("."):
            type_id = self.resolve(type_id)
            found = self.find_member(type_id, part)
            assert found, "bpftool: no %s.%s" % (struct_name, path)
            bits += found[0]
            bitfield, type_id = found[1], found[2]
            anon = anon or found[3]
        return bits, bitfield, self.size(type_id), anon

    def func_params(self, name):
        func = self.id_of("FUNC", name)
        if func is None:
            return None
        proto = int(self.types[func][2]["type_id"])
        assert self.kind(proto) == "FUNC_PROTO"
        return [(n, int(a["type_id"])) for n, a in self.types[proto][3]]

    def pointee(self, type_id):
        """(struct name, pointer depth) of a parameter type."""
        depth = 0
        type_id = self.resolve(type_id)
        while type_id and self.kind(type_id) == "PTR":
            depth += 1
            type_id = self.resolve(int(self.types[type_id][2]["type_id"]))
        if not type_id:      # void
            return None, depth
        kind, name, _attrs, _items = self.types[type_id]
        return (name if kind in ("STRUCT", "UNION", "FWD") else None), depth

    def enum(self, name):
        type_id = self.id_of("ENUM", name) or self.id_of("ENUM64", name)
        return {int(a["val"]): n for n, a in self.types[type_id][3]} if type_id else None


@pytest.fixture(scope="module")
def ref():
    dump = subprocess.run(["bpftool", "btf", "dump", "file", VMLINUX], capture_output=True,
                          text=True, check=True)
    parsed = BpftoolBTF(dump.stdout)
    assert parsed.id_of("STRUCT", "sk_buff"), "bpftool output has no STRUCT 'sk_buff'"
    return parsed


@pytest.fixture(scope="module")
def kbtf():
    # the parser itself answers here, not answers kept by an earlier start
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(btf_mod, "CACHE_DIR", None)
        yield btf_mod.KernelBTF()


@pytest.fixture(scope="module")
def vmlinux(kbtf):
    return kbtf.vmlinux


def expected_member(ref, struct_name, path):
    bits, bitfield, size, _anon = ref.member(struct_name, path)
    if bitfield:
        first, last = bits // 8, (bits + bitfield - 1) // 8
        return (first, last - first + 1, bits % 8, bitfield)
    assert bits % 8 == 0
    return (bits // 8, size, 0, 0)


def as_tuple(member):
    return (member.byte_offset, member.size, member.bit_shift, member.bit_size)


FIELDS = sorted({v for v in list(layout.CORE_FIELDS.values()) + list(layout.NF_STATE_FIELDS.values())}
                | {("sk_buff", "len"), ("sk_buff", "head"), ("sk_buff", "data"),
                   ("sk_buff", "dev"), ("sk_buff", "pkt_type"), ("net_device", "ifindex"),
                   ("net", "ns.inum"), ("sk_buff", "tstamp"), ("sk_buff", "cloned"),
                   ("sk_buff", "fclone"), ("sk_buff", "mark"), ("sk_buff", "cb")})


@pytest.mark.parametrize("struct_name, path", FIELDS, ids=["%s.%s" % f for f in FIELDS])
def test_member_matches_bpftool(vmlinux, ref, struct_name, path):
    assert as_tuple(vmlinux.member(struct_name, path)) == expected_member(ref, struct_name, path)


@pytest.mark.parametrize("path", ["dev", "head", "data", "len", "sk", "tstamp"])
def test_skb_fields_at_bpftool_offsets(vmlinux, ref, path):
    bits, bitfield, size, _anon = ref.member("sk_buff", path)
    member = vmlinux.member("sk_buff", path)
    assert bitfield == 0
    assert member.byte_offset * 8 == bits
    assert member.size == size
    assert member.bit_size == 0


def test_skb_dev_is_inside_an_anonymous_union(vmlinux, ref):
    skb = ref.id_of("STRUCT", "sk_buff")
    assert "dev" not in [name for name, _a in ref.types[skb][3]]
    _bits, _bf, size, anon = ref.member("sk_buff", "dev")
    assert anon and size == 8
    assert vmlinux.member("sk_buff", "dev").size == 8


def test_skb_pkt_type_bitfield(vmlinux, ref):
    bits, bitfield, _size, _anon = ref.member("sk_buff", "pkt_type")
    assert bitfield == 3
    m = vmlinux.member("sk_buff", "pkt_type")
    assert m.bit_size == 3
    assert m.byte_offset * 8 + m.bit_shift == bits
    assert m.bit_shift + m.bit_size <= m.size * 8


def test_pointer_and_int_sizes(vmlinux):
    assert vmlinux.member("sk_buff", "head").size == 8
    assert vmlinux.member("sk_buff", "data").size == 8
    assert vmlinux.member("sk_buff", "len").size == 4
    assert vmlinux.member("net_device", "ifindex").size == 4
    assert vmlinux.member("net", "ns.inum").size == 4
    assert vmlinux.member("net_device", "name").size == 16     # IFNAMSIZ


def test_layout_defines_match_bpftool(ref):
    defines = layout.Layouts("btf").defines
    for macro, (struct_name, path) in list(layout.CORE_FIELDS.items()) + list(
            layout.NF_STATE_FIELDS.items()):
        off, size, shift, bits = expected_member(ref, struct_name, path)
        assert defines["L_%s_OFF" % macro] == off, macro
        assert defines["L_%s_SIZE" % macro] == size, macro
        if bits:
            assert defines["L_%s_SHIFT" % macro] == shift, macro
            assert defines["L_%s_BITS" % macro] == bits, macro
        else:
            assert "L_%s_BITS" % macro not in defines, macro


def test_missing_struct_and_member(vmlinux):
    with pytest.raises(btf_mod.BTFError):
        vmlinux.member("no_such_struct_skbt", "x")
    with pytest.raises(btf_mod.BTFError):
        vmlinux.member("sk_buff", "no_such_member")
    with pytest.raises(btf_mod.BTFError):
        vmlinux.member("sk_buff", "len.x")     # len is not a struct


# --- function parameters --------------------------------------------------------

@pytest.mark.parametrize("function", ["ip_output", "br_handle_frame", "__netif_receive_skb",
                                      "ip_rcv", "ip6_output", "ipt_do_table", "nft_do_chain",
                                      "__dev_queue_xmit"])
def test_func_params_match_bpftool(vmlinux, ref, function):
    expected = ref.func_params(function)
    if expected is None:
        pytest.skip("%s is not in vmlinux BTF on this kernel" % function)
    got = vmlinux.func_params(function)
    assert got == expected
    assert [vmlinux.pointee_struct(t) for _n, t in got] == [ref.pointee(t) for _n, t in expected]


def test_ip_output_skb_is_third(vmlinux, ref):
    params = vmlinux.func_params("ip_output")
    assert [n for n, _t in params] == [n for n, _t in ref.func_params("ip_output")]
    assert len(params) == 3
    assert vmlinux.pointee_struct(params[2][1]) == ("sk_buff", 1)
    assert ref.pointee(params[2][1]) == ("sk_buff", 1)
    assert vmlinux.pointee_struct(params[0][1]) == ("net", 1)
    assert probes.skb_argument("ip_output", "", 1) == (3, False, "BTF")


def test_br_handle_frame_takes_skb_pointer_pointer(vmlinux, ref):
    params = vmlinux.func_params("br_handle_frame")
    if params is None:
        pytest.skip("br_handle_frame is not in vmlinux BTF (bridge is a module)")
    assert ref.pointee(params[0][1]) == ("sk_buff", 2)
    assert vmlinux.pointee_struct(params[0][1]) == ("sk_buff", 2)
    assert probes.skb_argument("br_handle_frame", "", 1) == (1, True, "BTF")


def test_unknown_function(vmlinux):
    assert vmlinux.func_params("no_such_function_skbt") is None


def test_kfree_skb_tracepoint_args(vmlinux, ref):
    typedef = ref.id_of("TYPEDEF", "btf_trace_kfree_skb")
    if typedef is None:
        pytest.skip("no btf_trace_kfree_skb on this kernel")
    ptr = ref.resolve(typedef)
    proto = int(ref.types[ptr][2]["type_id"])
    expected = [(n, int(a["type_id"])) for n, a in ref.types[proto][3]]
    assert vmlinux.typedef_func_params("btf_trace_kfree_skb") == expected
    names = [ref.types[ref.resolve(t)][1] if t else "" for _n, t in expected]
    if "skb_drop_reason" in names:
        # args[] of the raw tracepoint do not include the leading void *__data
        assert probes.drop_reason_arg() == names.index("skb_drop_reason") - 1
    else:
        assert probes.drop_reason_arg() is None


# --- enum skb_drop_reason -------------------------------------------------------

def u32(values):
    """{value as the kernel's u32 reason: name}."""
    return {v & 0xFFFFFFFF: n for v, n in values.items()}


def test_drop_reason_enum_matches_bpftool(vmlinux, ref):
    expected = ref.enum("skb_drop_reason")
    if expected is None:
        pytest.skip("no enum skb_drop_reason (kernel before 5.17)")
    assert u32(vmlinux.enum_values("skb_drop_reason")) == expected
    assert "SKB_DROP_REASON_NOT_SPECIFIED" in expected.values()




def test_drop_reason_enum_values_are_unsigned(vmlinux, ref):
    expected = ref.enum("skb_drop_reason")
    if expected is None or max(expected) < 2**31:
        pytest.skip("no enum value >= 2**31 on this kernel")
    assert vmlinux.enum_values("skb_drop_reason") == expected


def test_drop_reason_names_strip_the_prefix(ref):
    expected = ref.enum("skb_drop_reason")
    if expected is None:
        pytest.skip("no enum skb_drop_reason (kernel before 5.17)")
    reasons = probes.drop_reasons()
    assert reasons.source == "BTF enum skb_drop_reason"
    assert set(u32(reasons.names)) == set(expected)
    for value, name in expected.items():
        short = name[len("SKB_DROP_REASON_"):] if name.startswith("SKB_DROP_REASON_") else name
        assert reasons.name(value) == short
    consumed = [v for v, n in expected.items() if n == "SKB_CONSUMED"]
    if consumed:
        assert reasons.get_value("SKB_CONSUMED") == consumed[0]
    netfilter = [v for v, n in expected.items() if n == "SKB_DROP_REASON_NETFILTER_DROP"]
    if netfilter:
        assert reasons.name(netfilter[0]) == "NETFILTER_DROP"


def test_other_enums_match_bpftool(vmlinux, ref):
    for name in ("nf_inet_hooks", "pkt_hash_types"):
        expected = ref.enum(name)
        if expected is not None:
            assert vmlinux.enum_values(name) == expected, name


def test_kept_answers_are_the_parsers_and_spare_the_parse(tmp_path, monkeypatch, vmlinux):
    """A second KernelBTF answers from the first one's AnswerCache, errors
    included, without scanning the blob; a cache file others may write is
    not read."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(btf_mod, "CACHE_DIR", str(cache))

    def ask(k):
        params = k.vmlinux.func_params("ip_rcv")
        try:
            k.member("sk_buff", "no_such_member")
            missing = None
        except btf_mod.BTFError as e:
            missing = str(e)
        return (as_tuple(k.member("sk_buff", "len")), params,
                [k.vmlinux.pointee_struct(t) for _n, t in params],
                k.vmlinux.enum_values("skb_drop_reason"), missing)

    first = btf_mod.KernelBTF()
    answers = ask(first)
    assert answers[0] == as_tuple(vmlinux.member("sk_buff", "len"))
    assert answers[1] == vmlinux.func_params("ip_rcv") and answers[4]
    first.vmlinux._answers.save()
    assert oct(cache.stat().st_mode & 0o777) == "0o700"

    second = btf_mod.KernelBTF()
    assert ask(second) == answers
    assert second.vmlinux._types is None, "the blob was parsed although every answer was kept"

    (kept,) = cache.iterdir()
    kept.chmod(0o666)
    third = btf_mod.KernelBTF()
    assert ask(third) == answers and third.vmlinux._types is not None
