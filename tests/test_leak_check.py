"""The session-level leak check: a run that leaves a process behind fails and names it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.leak_check import marked_processes

pytest_plugins = ("pytester",)
REPO_ROOT = Path(__file__).resolve().parent.parent

LEAKY_TEST = """
import subprocess, time

def test_leaves_a_daemon_behind(tmp_path):
    # a new session, as services do: a process-group kill by the test would not reach it either
    subprocess.Popen(["sleep", "312"], start_new_session=True)
    time.sleep(0.2)

def test_cleans_up():
    process = subprocess.Popen(["sleep", "313"])
    process.kill()
    process.wait()
"""


def _run(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=source)
    env_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    pytester._monkeypatch.setenv("PYTHONPATH", env_path)  # noqa: SLF001 - pytester's own monkeypatch
    return pytester.runpytest_subprocess("-p", "tests.leak_check", "-p", "no:cacheprovider", timeout=120)


def test_a_session_that_leaves_a_process_fails_and_names_it(pytester: pytest.Pytester) -> None:
    result = _run(pytester, LEAKY_TEST)
    output = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, output
    result.assert_outcomes(passed=2)  # every test passed: the leak alone fails the run
    assert "processes left behind" in output and "1 process(es)" in output, output
    assert "sleep 312" in output and "sleep 313" not in output, output
    assert not any("sleep 312" in command for command in marked_processes_anywhere().values())


def test_a_clean_session_passes(pytester: pytest.Pytester) -> None:
    result = _run(pytester, LEAKY_TEST.split("def test_leaves_a_daemon_behind")[0] + "def test_nothing():\n    pass\n")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()


def marked_processes_anywhere() -> dict[int, str]:
    """Every live ``sleep 312`` the inner run may have left, whatever marker it carries."""
    found: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                command = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            if "sleep 312" in command and stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X"):
                found[int(entry.name)] = command
    return found


def test_the_marker_reaches_processes_this_session_starts() -> None:
    import subprocess

    process = subprocess.Popen(["sleep", "30"])
    try:
        assert process.pid in marked_processes(os.environ["FLOPS_TEST_SESSION"])
    finally:
        process.kill()
        process.wait()
