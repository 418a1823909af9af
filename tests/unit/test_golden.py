"""The golden corpus (tests/unit/golden/): the same saved events give
byte for byte the same rows, story and JSON story objects as the code
they were recorded on (before issue 9's redesign of the story model)."""

import difflib
import os
import sys

import pytest

import skbt_unit_helpers  # noqa: F401  (repository on sys.path)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden"))
import goldens  # noqa: E402


@pytest.mark.parametrize("case", goldens.case_names())
def test_golden_output_is_byte_identical(case):
    want = goldens.expected(case)
    assert want, "no recorded output for %s (tests/unit/golden/record.py)" % case
    got = goldens.outputs(case)
    assert sorted(got) == sorted(want)
    for suffix in sorted(want):
        if got[suffix] != want[suffix]:
            diff = difflib.unified_diff(want[suffix].splitlines(), got[suffix].splitlines(),
                                        "expected", "now", lineterm="", n=1)
            pytest.fail("%s.%s differs:\n%s" % (case, suffix, "\n".join(list(diff)[:40])))
