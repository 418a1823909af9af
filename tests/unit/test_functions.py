"""--all/--func: function discovery from BTF against bpftool on this host,
glob matching, and bad --func values (one line, exit 2)."""

import subprocess

import pytest
import skbt_unit_helpers  # noqa: F401  (repository on sys.path)
from test_btf import BpftoolBTF, pytestmark, ref  # noqa: F401  (bpftool's side, its skips)

from skbtracer_lib import config
from skbtracer_lib.program import functions


def bpftool_skb_functions(ref):
    """{name: skb position} from bpftool's dump, followed by hand."""
    found = {}
    for (kind, name), _type_id in ref.first.items():
        if kind != "FUNC":
            continue
        for position, (_pname, type_id) in enumerate(ref.func_params(name)[:5], 1):
            if ref.pointee(type_id) == ("sk_buff", 1):
                found[name] = position
                break
    return found


@pytest.fixture(scope="module")
def discovered():
    from skbtracer_lib.program.btf import KernelBTF
    return functions.btf_skb_functions(KernelBTF(), modules=[])


def test_discovery_matches_bpftool(ref, discovered):
    expected = bpftool_skb_functions(ref)
    assert len(expected) > 1000
    assert {n: f.position for n, f in discovered.items()} == expected


@pytest.mark.parametrize("name, position", [
    ("ip_rcv_core", 1), ("ip_rcv", 1), ("__dev_queue_xmit", 1), ("ip_output", 3),
    ("ip_finish_output", 3), ("kfree_skb_reason", 1), ("skb_clone", 1), ("napi_gro_receive", 2),
])
def test_sample_positions(ref, discovered, name, position):
    if name not in discovered:
        pytest.skip("%s is not in this kernel's BTF" % name)
    assert discovered[name].position == position == bpftool_skb_functions(ref)[name]


def test_no_skb_argument_is_not_found(discovered):
    assert "schedule" not in discovered and "tcp_v4_connect" not in discovered


def test_glob_matching():
    names = {"br_forward": 0, "br_pass_frame_up": 0, "ip_rcv": 0, "ip_rcv_core": 0, "nf_hook_slow": 0}
    assert functions.match(names, ["br_*"]) == {"br_forward", "br_pass_frame_up"}
    assert functions.match(names, ["ip_rcv", "nf_*"]) == {"ip_rcv", "nf_hook_slow"}
    assert functions.match(names, ["ip_rcv?core", "br_[fp]*"]) == {"ip_rcv_core", "br_forward",
                                                                  "br_pass_frame_up"}


@pytest.mark.parametrize("pattern", ["no_such_function_xyz", "schedule", "zz*"])
def test_pattern_matching_nothing_is_an_error(discovered, pattern):
    with pytest.raises(functions.FunctionError, match="matches no kernel function"):
        functions.match(discovered, ["ip_rcv", pattern])


@pytest.mark.parametrize("value", ["a;b", "", "ip rcv", "x" * 200, "$(reboot)", "br_*\n"])
def test_bad_func_values_exit_2(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        config.parse_args(["--func", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--func" in err


def test_all_and_func_parse():
    cfg = config.parse_args(["--all", "--func", "ip_*", "--func", "br_forward"])
    assert cfg.all_functions and cfg.functions == ["ip_*", "br_forward"]
    assert not config.parse_args([]).all_functions


def test_func_naming_nothing_exits_2_before_any_bpf():
    """skbtracer.py itself: the kprobe check comes first on a host without
    kprobes (exit 1, one line); --ebpf plans the probes with kprobes forced."""
    proc = subprocess.run(["/usr/bin/python3", "-c",
                           "import sys; sys.path.insert(0, '.');"
                           "from skbtracer_lib import config\n"
                           "from skbtracer_lib.program import functions, source\n"
                           "cfg = config.parse_args(['--func', 'no_such_function_xyz'])\n"
                           "try:\n source.Program(cfg, backend='kprobe')\n"
                           "except functions.FunctionError as e:\n print(e); sys.exit(2)\n"],
                          capture_output=True, text=True, cwd=skbt_unit_helpers.REPO)
    assert proc.returncode == 2, proc.stderr
    assert "no_such_function_xyz" in proc.stdout
