"""Automated checks against real files and real commands, and the ``run_checks`` activity."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities.checks import run_checks as run_checks_activity
from models.spec import CommandSuccessCheck, FileContainsCheck, FileExistsCheck, ResultCriterion
from models.validation import RUN_CHECKS_ACTIVITY, CheckResult, ChecksReport, RunChecks
from validation import ChecksCancelled, run_check, run_checks
from validation.checks import KILL_GRACE_S, MAX_SEARCH_BYTES

PY = sys.executable


def check(c: Any, base: Path, *, max_output_bytes: int = 8192, **kw: Any) -> CheckResult:
    return run_check(c, base, max_output_bytes=max_output_bytes, **kw)


def py(code: str, **kw: Any) -> CommandSuccessCheck:
    return CommandSuccessCheck(command=[PY, "-c", code], **kw)


def alive(pid: int) -> bool:
    """Running (a zombie counts as gone), judged from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(*pids: int, within: float = 3.0) -> list[int]:
    """The pids still alive after ``within`` seconds (orphans are reaped asynchronously)."""
    give_up = time.monotonic() + within
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < give_up:
        time.sleep(0.02)
    return left


@pytest.fixture
def project(tmp_path: Path) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "auth.py").write_text(
        '"""Auth."""\n\nimport hashlib\n\n\ndef login(user, password):\n    return True\n'
    )
    return tmp_path


# ------------------------------------------------------------------ models


def test_models_round_trip_as_json(project: Path) -> None:
    request = RunChecks.model_validate(
        {
            "base_dir": str(project),
            "checks": [
                {"kind": "file_exists", "path": "app"},
                {"kind": "file_contains", "path": "app/auth.py", "text": "def", "regex": True},
                {"kind": "command_success", "command": ["true"], "timeout_s": 5},
            ],
        }
    )
    assert [type(c) for c in request.checks] == [
        FileExistsCheck,
        FileContainsCheck,
        CommandSuccessCheck,
    ]
    assert request.max_output_bytes == 8192
    assert RunChecks.model_validate_json(request.model_dump_json()) == request
    assert RUN_CHECKS_ACTIVITY == "run_checks"

    ok = CheckResult(kind="file_exists", passed=True, summary="file_exists: x exists")
    bad = ok.model_copy(update={"passed": False})
    assert ChecksReport(results=[ok]).passed
    assert not ChecksReport(results=[ok, bad]).passed
    assert not ChecksReport(results=[bad], passed=True).passed  # always computed
    assert ChecksReport().passed
    report = ChecksReport(results=[ok, bad])
    assert ChecksReport.model_validate_json(report.model_dump_json()) == report


# ------------------------------------------------------------------ file_exists


def test_file_exists(project: Path) -> None:
    found = check(FileExistsCheck(path="app/auth.py"), project)
    assert found.passed and found.kind == "file_exists" and found.exit_code is None
    size = (project / "app/auth.py").stat().st_size
    assert found.summary == f"file_exists: app/auth.py exists ({size} bytes)"
    assert str(project / "app/auth.py") in found.detail
    assert found.duration_s >= 0

    missing = check(FileExistsCheck(path="app/nope.py"), project)
    assert not missing.passed
    assert missing.summary == "file_exists: app/nope.py not found"
    assert str(project / "app/nope.py") in missing.detail

    directory = check(FileExistsCheck(path="app"), project)
    assert directory.passed
    assert directory.summary == "file_exists: app exists (a directory)"

    absolute = check(FileExistsCheck(path=str(project / "app/auth.py")), project / "app")
    assert absolute.passed
    under_file = check(FileExistsCheck(path="app/auth.py/x"), project)
    assert not under_file.passed and "not found" in under_file.summary


def test_file_exists_broken_symlink(project: Path) -> None:
    (project / "link").symlink_to(project / "gone")
    result = check(FileExistsCheck(path="link"), project)
    assert not result.passed
    assert "symlink whose target is missing" in result.summary


# ------------------------------------------------------------------ file_contains


def test_file_contains_text(project: Path) -> None:
    found = check(FileContainsCheck(path="app/auth.py", text="def login"), project)
    assert found.passed
    assert found.summary == "file_contains: 'def login' found in app/auth.py (line 6)"
    assert found.detail.endswith(":6: def login(user, password):")

    first = check(FileContainsCheck(path="app/auth.py", text='"""Auth'), project)
    assert first.passed and "(line 1)" in first.summary

    absent = check(FileContainsCheck(path="app/auth.py", text="def logout"), project)
    assert not absent.passed
    assert absent.summary == "file_contains: 'def logout' not found in app/auth.py"

    # text is literal, not a pattern
    dot = check(FileContainsCheck(path="app/auth.py", text="def login(.*)"), project)
    assert not dot.passed


def test_file_contains_regex(project: Path) -> None:
    found = check(
        FileContainsCheck(path="app/auth.py", text=r"^\s+return \w+$", regex=True), project
    )
    assert found.passed  # MULTILINE: ^ and $ at line boundaries
    assert found.summary == (
        "file_contains: regex '^\\\\s+return \\\\w+$' matched in app/auth.py (line 7)"
    )
    assert found.detail.endswith(":7:     return True")

    logout = FileContainsCheck(path="app/auth.py", text=r"^def logout\b", regex=True)
    absent = check(logout, project)
    assert not absent.passed and "not found in app/auth.py" in absent.summary

    invalid = check(FileContainsCheck(path="app/auth.py", text="def (login", regex=True), project)
    assert not invalid.passed
    assert invalid.summary.startswith("file_contains: invalid regex 'def (login': missing )")


def test_file_contains_problems(project: Path) -> None:
    missing = check(FileContainsCheck(path="app/nope.py", text="x"), project)
    assert not missing.passed and missing.summary == "file_contains: app/nope.py not found"

    directory = check(FileContainsCheck(path="app", text="x"), project)
    assert not directory.passed and "is a directory" in directory.summary

    big = project / "big.log"
    with big.open("wb") as f:  # sparse: cheap to create
        f.truncate(MAX_SEARCH_BYTES + 1)
    too_large = check(FileContainsCheck(path="big.log", text="x"), project)
    assert not too_large.passed and "too large" in too_large.summary

    binary = project / "mixed.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage\nline two: NEEDLE\n\x80")
    found = check(FileContainsCheck(path="mixed.bin", text="NEEDLE"), project)
    assert found.passed and "(line 2)" in found.summary


def test_summaries_stay_on_one_line(project: Path) -> None:
    result = check(FileContainsCheck(path="app/auth.py", text="a\nb" + "x" * 200), project)
    assert not result.passed
    assert "\n" not in result.summary and len(result.summary) < 200


# ------------------------------------------------------------------ command_success


def test_command_passes(project: Path) -> None:
    result = check(py("print('ok')"), project)
    assert result.passed and result.exit_code == 0 and result.kind == "command_success"
    assert result.summary.startswith(f"command_success: `{shlex.join([PY, '-c'])}")
    assert "passed (exit code 0" in result.summary
    assert result.detail.endswith("ok\n")
    assert f"cwd: {project}" in result.detail


def test_command_fails_with_its_exit_code_and_output(project: Path) -> None:
    result = check(py("import sys; print('3 tests failed'); sys.exit(3)"), project)
    assert not result.passed and result.exit_code == 3
    assert "failed with exit code 3: 3 tests failed" in result.summary
    assert "3 tests failed" in result.detail


def test_command_stderr_is_captured_interleaved(project: Path) -> None:
    code = (
        "import sys\n"
        "print('to stdout', flush=True)\n"
        "print('Traceback: boom', file=sys.stderr, flush=True)\n"
        "print('stdout again', flush=True)\n"
        "sys.exit(1)\n"
    )
    result = check(py(code), project)
    assert not result.passed and result.exit_code == 1
    assert "to stdout\nTraceback: boom\nstdout again\n" in result.detail
    assert result.summary.endswith(": stdout again")


def test_command_output_is_truncated_keeping_the_tail(project: Path) -> None:
    code = "import sys; sys.stdout.write('x' * 20000 + 'é' * 10 + 'THE END'); sys.exit(2)"
    result = check(py(code), project, max_output_bytes=100)
    assert not result.passed and result.exit_code == 2
    total = 20000 + 20 + 7
    assert "THE END" in result.detail
    assert f"{total} bytes; {total - 100} bytes cut, the last 100 kept" in result.detail
    kept = result.detail.split("bytes cut ...]\n", 1)[1]
    assert kept == "x" * 73 + "é" * 10 + "THE END"
    assert len(result.detail) < 600

    # a cut in the middle of a UTF-8 sequence does not leave a replacement character
    odd = check(py("print('é' * 100, end='')"), project, max_output_bytes=51)
    assert odd.detail.endswith("\n" + "é" * 25)
    assert "151 bytes cut" not in odd.detail and "151 bytes" not in odd.detail
    assert "200 bytes; 150 bytes cut, the last 50 kept" in odd.detail

    none = check(py("pass"), project, max_output_bytes=0)
    assert none.passed and none.detail.endswith("output: (none)")


def test_command_timeout_kills_the_process_group(project: Path) -> None:
    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "print('pids', os.getpid(), child.pid, flush=True)\n"
        "time.sleep(30)\n"
    )
    started = time.monotonic()
    result = check(py(code, timeout_s=0.5), project)
    took = time.monotonic() - started
    assert took < 5, took
    assert not result.passed and result.exit_code is None
    assert "timed out after 0.5 s (process group killed)" in result.summary
    found = re.search(r"pids (\d+) (\d+)", result.detail)
    assert found, result.detail  # output up to the timeout is kept
    assert wait_gone(int(found[1]), int(found[2])) == []


def test_command_ignoring_sigterm_gets_sigkill(project: Path) -> None:
    code = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('pid', os.getpid(), flush=True)\n"
        "time.sleep(30)\n"
    )
    started = time.monotonic()
    result = check(py(code, timeout_s=0.5), project)
    took = time.monotonic() - started
    assert KILL_GRACE_S <= took < 0.5 + KILL_GRACE_S + 2, took
    assert not result.passed and "timed out" in result.summary
    assert "SIGKILL" in result.detail
    found = re.search(r"pid (\d+)", result.detail)
    assert found and wait_gone(int(found[1])) == []


def test_background_processes_left_behind_are_stopped(project: Path) -> None:
    check_ = CommandSuccessCheck(command=["sleep 30 & echo bg $!"], shell=True)
    result = check(check_, project)
    assert result.passed, result.detail
    assert "background processes outlived the command" in result.detail
    found = re.search(r"bg (\d+)", result.detail)
    assert found and wait_gone(int(found[1])) == []


def test_command_missing_program(project: Path) -> None:
    result = check(CommandSuccessCheck(command=["no-such-program-xyz", "--version"]), project)
    assert not result.passed and result.exit_code is None
    assert result.summary == "command_success: program 'no-such-program-xyz' not found"
    assert "on PATH" in result.detail


def test_command_permission_denied(project: Path) -> None:
    script = project / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    if os.access(script, os.X_OK):  # root can execute anything with an x bit; 644 has none
        pytest.skip("running as a user that can execute non-executable files")
    result = check(CommandSuccessCheck(command=["./run.sh"]), project)
    assert not result.passed
    assert result.summary == "command_success: permission denied running './run.sh'"


def test_command_cwd_is_relative_to_base_dir(project: Path) -> None:
    result = check(py("import os; print(os.getcwd())", cwd="app"), project)
    assert result.passed
    assert result.detail.endswith(f"{project / 'app'}\n")

    script = project / "app" / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from app\n")
    script.chmod(0o755)
    relative_program = check(CommandSuccessCheck(command=["./hello.sh"], cwd="app"), project)
    assert relative_program.passed and "hello from app" in relative_program.detail

    missing = check(py("pass", cwd="build"), project)
    assert not missing.passed
    assert missing.summary == "command_success: working directory 'build' does not exist"
    not_dir = check(py("pass", cwd="app/auth.py"), project)
    assert not not_dir.passed and "is not a directory" in not_dir.summary


def test_command_through_the_shell(project: Path) -> None:
    script = CommandSuccessCheck(
        command=['echo one > out.txt && test -f out.txt && echo "home=${HOME:+set}"'],
        shell=True,
    )
    result = check(script, project)
    assert result.passed, result.detail
    assert result.detail.endswith("home=set\n")
    assert (project / "out.txt").read_text() == "one\n"

    # several elements: each is one quoted word (no globbing, no expansion)
    words = check(CommandSuccessCheck(command=["echo", "$HOME", "*"], shell=True), project)
    assert words.passed and words.detail.endswith("$HOME *\n")

    failing = check(CommandSuccessCheck(command=["exit 4"], shell=True), project)
    assert not failing.passed and failing.exit_code == 4
    missing = check(CommandSuccessCheck(command=["no-such-program-xyz"], shell=True), project)
    assert not missing.passed and missing.exit_code == 127


def test_command_killed_by_a_signal(project: Path) -> None:
    result = check(py("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"), project)
    assert not result.passed and result.exit_code == -11
    assert "was killed by signal SIGSEGV" in result.summary


def test_progress_is_reported_while_a_command_runs(project: Path) -> None:
    calls: list[float] = []
    started = time.monotonic()
    result = check(
        py("import time; time.sleep(1.2)"),
        project,
        on_progress=lambda: calls.append(time.monotonic() - started),
    )
    assert result.passed
    assert len(calls) >= 3, calls  # at the start, then every 0.5 s
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert max(gaps) < 2.0, gaps  # every 0.5 s, with room for a loaded machine


def test_a_failing_progress_callback_kills_the_command(project: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    calls = 0

    def progress() -> None:
        nonlocal calls
        calls += 1
        if calls > 1 and pid_file.exists() and pid_file.read_text():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        check(py(code), project, on_progress=progress)
    assert wait_gone(int(pid_file.read_text())) == []


def test_cancel_event_stops_the_command(project: Path, tmp_path: Path) -> None:
    cancel = threading.Event()
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    threading.Timer(0.5, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(ChecksCancelled):
        check(py(code), project, cancel=cancel)
    assert time.monotonic() - started < 3
    assert wait_gone(int(pid_file.read_text())) == []
    with pytest.raises(ChecksCancelled):  # already cancelled: nothing runs
        check(FileExistsCheck(path="app"), project, cancel=cancel)


def test_run_checks_reports_every_check_in_order(project: Path) -> None:
    criterion = ResultCriterion(
        description="login exists", check=FileContainsCheck(path="app/auth.py", text="def login")
    )
    assert criterion.check is not None
    request = RunChecks(
        base_dir=str(project),
        checks=[
            FileExistsCheck(path="app/nope.py"),
            criterion.check,
            py("print('ok')"),
        ],
    )
    indexes: list[int] = []
    report = run_checks(request, indexes.append)
    assert [r.kind for r in report.results] == ["file_exists", "file_contains", "command_success"]
    assert [r.passed for r in report.results] == [False, True, True]
    assert not report.passed
    assert indexes[:1] == [0] and sorted(set(indexes)) == [0, 1, 2]
    assert run_checks(RunChecks(base_dir=str(project))).passed


# ------------------------------------------------------------------ the activity


async def test_activity_heartbeats_with_the_check_index(project: Path) -> None:
    env = ActivityEnvironment()
    heartbeats: list[tuple[Any, ...]] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details)
    request = RunChecks(
        base_dir=str(project),
        checks=[FileExistsCheck(path="app"), py("import time; time.sleep(1.1)")],
    )
    report = await env.run(run_checks_activity, request)
    assert isinstance(report, ChecksReport) and report.passed
    assert heartbeats[0] == (0,)
    assert heartbeats.count((1,)) >= 3, heartbeats  # start, then every 0.5 s
    assert set(heartbeats) == {(0,), (1,)}


async def test_activity_cancellation_kills_the_command(project: Path, tmp_path: Path) -> None:
    env = ActivityEnvironment()
    pid_file = tmp_path / "pid"
    code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        f"open({str(pid_file)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(30)\n"
    )
    request = RunChecks(base_dir=str(project), checks=[py(code, timeout_s=60)])
    task = asyncio.create_task(env.run(run_checks_activity, request))
    give_up = time.monotonic() + 5
    while not (pid_file.exists() and len(pid_file.read_text().split()) == 2):
        assert time.monotonic() < give_up, "the command never started"
        await asyncio.sleep(0.02)
    pids = [int(p) for p in pid_file.read_text().split()]
    assert all(alive(p) for p in pids)

    started = time.monotonic()
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 3
    assert wait_gone(*pids) == []
