"""stdout and stderr as a shell leaves them: `| head` and `2>&1 | head` (a
reader that went: EPIPE) end with status 0 and no noise; a closed stdout or
stderr (`>&-`, `2>&-`) is as /dev/null, and no file the run opens takes its
place. Through -r of a saved trace: the same run() ends live tracing."""

import os
import subprocess

import pytest

from skbt_unit_helpers import REPO, SKBTRACER, SYSTEM_PYTHON

SAVED = str(REPO / "tests" / "unit" / "golden" / "corpus" / "keep-kprobe.jsonl")
HEADER_START = "time       NETWORK_NS"


def gone_reader():
    """The write end of a pipe whose reader has gone (as `head` exits)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def run(*args, close=(), **streams):
    """skbtracer.py -r SAVED args, with the fds in close closed."""
    def close_fds():
        for fd in close:
            os.close(fd)
    return subprocess.run([SYSTEM_PYTHON, SKBTRACER, "-r", SAVED, *args], timeout=60,
                          preexec_fn=close_fds, **streams)


def test_rows_to_a_reader_that_went():
    pipe = gone_reader()
    try:
        result = run(stdout=pipe, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(pipe)
    assert result.returncode == 0
    assert "Traceback" not in result.stderr and "Broken pipe" not in result.stderr
    assert "Exception ignored" not in result.stderr


def test_rows_and_stderr_to_a_reader_that_went():
    """`2>&1 | head`: the same status as `| head`."""
    pipe = gone_reader()
    try:
        result = run(stdout=pipe, stderr=pipe)
    finally:
        os.close(pipe)
    assert result.returncode == 0


def test_shell_pipe_to_head():
    command = ('%s %s -r %s 2>&1 | head -1; echo "status ${PIPESTATUS[0]}"'
               % (SYSTEM_PYTHON, SKBTRACER, SAVED))
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines()[-1] == "status 0" and result.stderr == ""


def test_stderr_closed():
    result = run(close=[2], stdout=subprocess.PIPE, text=True)
    assert result.returncode == 0 and result.stdout.startswith(HEADER_START)


def test_usage_error_with_stderr_closed():
    result = run("--no-such-flag", close=[2], stdout=subprocess.PIPE, text=True)
    assert result.returncode == 2 and result.stdout == ""


@pytest.mark.parametrize("closed", [[1], [1, 2]], ids=["stdout", "stdout-and-stderr"])
def test_rows_file_does_not_take_a_closed_fd(tmp_path, closed):
    rows = tmp_path / "rows.txt"
    result = run("-o", str(rows), close=closed, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 0
    assert rows.read_text().startswith(HEADER_START)
    if 2 not in closed:
        assert "rows written to" in result.stderr and "Traceback" not in result.stderr
