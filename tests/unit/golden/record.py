#!/usr/bin/python3
"""Write the golden outputs (expected/) from the corpus, on the code as it
is: run it only on code whose output is known good (the goldens were first
recorded before issue 9's redesign), and review the diff.

    /usr/bin/python3 tests/unit/golden/record.py [--synth] [CASE ...]

--synth first remakes the synthetic raw streams (synth.py) and the skewed
copy of the two-node run's second file (node2's clock 3.7 s ahead).
"""

import gzip
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))  # the repository
sys.path.insert(0, HERE)

import goldens  # noqa: E402

SKEW_NS = 3_700_000_000


def skewed_copy():
    lines = []
    with open(goldens.corpus("merge-node2-tracepoint.jsonl")) as f:
        for text in f:
            obj = json.loads(text)
            if obj.get("type") == "event":
                obj["time_ns"] += SKEW_NS
            lines.append(json.dumps(obj))
    with open(goldens.corpus("merge-node2-skewed.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(args):
    if "--synth" in args:
        import synth
        synth.main()
        skewed_copy()
    cases = [a for a in args if not a.startswith("--")] or goldens.case_names()
    os.makedirs(goldens.EXPECTED, exist_ok=True)
    for case in cases:
        for suffix, text in goldens.outputs(case).items():
            path = goldens.expected_path(case, suffix, text)
            for old in (path, path[:-3] if path.endswith(".gz") else path + ".gz"):
                if os.path.exists(old):
                    os.remove(old)
            data = text.encode("utf-8")
            if path.endswith(".gz"):
                with gzip.GzipFile(path, "wb", mtime=0) as f:
                    f.write(data)
            else:
                with open(path, "wb") as f:
                    f.write(data)
        sys.stderr.write("recorded %s\n" % case)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
