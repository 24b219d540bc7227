"""Run the automated checks validators and result validation use.

* ``file_exists``: the path (relative to ``base_dir``; absolute allowed) exists. A directory
  counts, and the result says so; a regular file's size is reported.
* ``file_contains``: the file contains ``text`` (plain substring) or matches it as a regular
  expression (``regex: true``, ``re.MULTILINE``). Read as UTF-8 with undecodable bytes
  replaced; files over 10 MB are refused. The first match's line number is reported.
* ``command_success``: the command exits 0 within ``timeout_s``, run in ``cwd`` (relative to
  ``base_dir``) without a shell. With ``shell: true`` it runs through ``/bin/sh -c``: a
  one-element command is the shell script itself (``["pytest -q && ruff check ."]``);
  several elements are quoted word by word with :func:`shlex.join`.

A failing check is a :class:`~models.validation.CheckResult` with ``passed=False`` and a
reason; nothing here raises for a failing check. The exceptions are programming errors and
:class:`ChecksCancelled` (the caller asked to stop).

Commands run in their own session, so in their own process group; whatever is left of the
group when the check ends (timeout, cancellation, or background processes outliving the
command) gets SIGTERM and, 2 s later, SIGKILL. stdin is ``/dev/null``; stdout and stderr go
to one pipe (so they stay interleaved) of which the last ``max_output_bytes`` are kept.
Commands run with the worker's privileges and environment: only operators and validators
should be able to specify them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from models.spec import MB, CommandSuccessCheck, FileContainsCheck, FileExistsCheck
from models.validation import CheckKind, CheckResult, ChecksReport, RunChecks

Check = FileExistsCheck | FileContainsCheck | CommandSuccessCheck
Progress = Callable[[], None]

MAX_SEARCH_BYTES = 10 * MB
"""file_contains refuses files larger than this."""
KILL_GRACE_S = 2.0
"""Between SIGTERM and SIGKILL to a command's process group."""
PROGRESS_INTERVAL_S = 0.5
"""How often ``on_progress`` is called while a command runs (the promise is: every second)."""
READER_JOIN_S = 1.0
"""How long to wait for the rest of the output once the command's process group is gone."""

_SHOWN_TEXT = 60
_SHOWN_COMMAND = 80
_SHOWN_LINE = 120
_DETAIL_LINE = 500


class ChecksCancelled(Exception):
    """The caller set ``cancel``; a running command's process group has been killed."""


def run_checks(
    request: RunChecks,
    on_progress: Callable[[int], None] | None = None,
    *,
    cancel: threading.Event | None = None,
) -> ChecksReport:
    """Run every check of ``request`` in order; one failing check does not stop the others.

    ``on_progress(index)`` is called when check ``index`` starts and at least every second
    while it runs a command. Setting ``cancel`` stops the run: the running command is killed
    and :class:`ChecksCancelled` is raised.
    """
    results = [
        run_check(
            check,
            request.base_dir,
            max_output_bytes=request.max_output_bytes,
            on_progress=functools.partial(on_progress, index) if on_progress else None,
            cancel=cancel,
        )
        for index, check in enumerate(request.checks)
    ]
    return ChecksReport(results=results)


def run_check(
    check: Check,
    base_dir: str | os.PathLike[str],
    *,
    max_output_bytes: int,
    on_progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> CheckResult:
    """Run one check; relative paths and ``cwd`` resolve against ``base_dir``.

    ``on_progress()`` is called when the check starts and at least every second while a
    command runs; an exception it raises kills the command and propagates.
    """
    if max_output_bytes < 0:
        raise ValueError(f"max_output_bytes must be >= 0, got {max_output_bytes}")
    if cancel is not None and cancel.is_set():
        raise ChecksCancelled("cancelled before the check started")
    if on_progress is not None:
        on_progress()
    base = Path(base_dir)
    started = time.monotonic()
    if isinstance(check, FileExistsCheck):
        result = _file_exists(check, base)
    elif isinstance(check, FileContainsCheck):
        result = _file_contains(check, base)
    elif isinstance(check, CommandSuccessCheck):
        result = _command_success(check, base, max_output_bytes, on_progress, cancel)
    else:
        raise TypeError(f"not an automated check: {type(check).__name__}")
    return result.model_copy(update={"duration_s": round(time.monotonic() - started, 3)})


# ------------------------------------------------------------------ files


def _file_exists(check: FileExistsCheck, base: Path) -> CheckResult:
    path = _resolve(base, check.path)
    shown = _one_line(check.path)
    st, problem = _stat(path)
    if st is None:
        return _result("file_exists", False, f"{shown} {problem}", f"looked at {path}")
    if stat.S_ISDIR(st.st_mode):
        return _result("file_exists", True, f"{shown} exists (a directory)", f"{path}: directory")
    if stat.S_ISREG(st.st_mode):
        size = _size(st.st_size)
        return _result("file_exists", True, f"{shown} exists ({size})", f"{path}: {size}")
    what = _file_type(st.st_mode)
    return _result("file_exists", True, f"{shown} exists (a {what})", f"{path}: {what}")


def _file_contains(check: FileContainsCheck, base: Path) -> CheckResult:
    path = _resolve(base, check.path)
    shown = _one_line(check.path)
    what = f"regex {_show_text(check.text)}" if check.regex else _show_text(check.text)

    def fail(summary: str, detail: str = "") -> CheckResult:
        return _result("file_contains", False, summary, detail or f"looked at {path}")

    pattern: re.Pattern[str] | None = None
    if check.regex:
        try:
            pattern = re.compile(check.text, re.MULTILINE)
        except re.error as exc:
            return fail(f"invalid regex {_show_text(check.text)}: {exc}", f"pattern: {check.text}")
    st, problem = _stat(path)
    if st is None:
        return fail(f"{shown} {problem}")
    if stat.S_ISDIR(st.st_mode):
        return fail(f"{shown} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        return fail(f"{shown} is not a regular file (a {_file_type(st.st_mode)})")
    if st.st_size > MAX_SEARCH_BYTES:
        return fail(f"{shown} is too large to search ({_size(st.st_size)}; limit 10 MB)")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SEARCH_BYTES + 1)
    except OSError as exc:
        return fail(f"{shown} cannot be read: {_os_reason(exc)}")
    if len(data) > MAX_SEARCH_BYTES:  # it grew since stat()
        return fail(f"{shown} is too large to search (over 10 MB)")
    content = data.decode("utf-8", errors="replace")

    if pattern is not None:
        match = pattern.search(content)
        at = match.start() if match else -1
    else:
        at = content.find(check.text)
    if at < 0:
        return fail(f"{what} not found in {shown}", f"searched {path} ({_size(len(data))})")
    line_no = content.count("\n", 0, at) + 1
    line_start = content.rfind("\n", 0, at) + 1
    line_end = content.find("\n", at)
    line = content[line_start : line_end if line_end >= 0 else len(content)].rstrip("\r")
    verb = "matched" if check.regex else "found"
    return _result(
        "file_contains",
        True,
        f"{what} {verb} in {shown} (line {line_no})",
        f"{path}:{line_no}: {_clip(line, _DETAIL_LINE)}",
    )


def _stat(path: Path) -> tuple[os.stat_result | None, str]:
    """``path.stat()`` (symlinks followed) or None and why, as words after the path."""
    try:
        return path.stat(), ""
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            return None, "not found (a symlink whose target is missing)"
        return None, "not found"
    except OSError as exc:
        return None, f"cannot be checked: {_os_reason(exc)}"


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


# ------------------------------------------------------------------ commands


def _command_success(
    check: CommandSuccessCheck,
    base: Path,
    max_output_bytes: int,
    on_progress: Progress | None,
    cancel: threading.Event | None,
) -> CheckResult:
    shown = f"`{_clip(_one_line(shlex.join(check.command)), _SHOWN_COMMAND)}`"
    cwd = _resolve(base, check.cwd)
    if check.shell:
        script = check.command[0] if len(check.command) == 1 else shlex.join(check.command)
        argv = ["/bin/sh", "-c", script]
    else:
        argv = list(check.command)
    header = f"command: {shlex.join(argv)}\ncwd: {cwd}"

    def fail(summary: str, detail: str = "") -> CheckResult:
        return _result("command_success", False, summary, f"{header}\n{detail}".rstrip())

    shown_cwd = repr(check.cwd)
    if not cwd.exists():
        return fail(f"working directory {shown_cwd} does not exist", f"looked at {cwd}")
    if not cwd.is_dir():
        return fail(f"working directory {shown_cwd} is not a directory")

    program = repr(argv[0])
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        about_cwd = exc.filename is not None and os.fspath(exc.filename) == os.fspath(cwd)
        if about_cwd:
            return fail(f"working directory {shown_cwd} cannot be used: {_os_reason(exc)}")
        if isinstance(exc, FileNotFoundError):
            where = "relative to the working directory" if "/" in argv[0] else "on PATH"
            return fail(f"program {program} not found", f"looked for {argv[0]!r} {where}")
        if isinstance(exc, PermissionError):
            return fail(f"permission denied running {program}", _os_reason(exc))
        return fail(f"cannot run {program}: {_os_reason(exc)}")

    assert proc.stdout is not None
    output = _TailBuffer(max_output_bytes)
    reader = threading.Thread(
        target=output.drain, args=(proc.stdout,), name=f"check-output-{proc.pid}", daemon=True
    )
    reader.start()
    started = time.monotonic()
    deadline = started + check.timeout_s
    stopped: str | None = None  # "timeout" | "cancel"
    notes: list[str] = []
    try:
        next_progress = started + PROGRESS_INTERVAL_S
        delay = 0.001
        while proc.poll() is None:
            now = time.monotonic()
            if now >= deadline:
                stopped = "timeout"
                break
            if cancel is not None and cancel.is_set():
                stopped = "cancel"
                break
            if on_progress is not None and now >= next_progress:
                on_progress()
                next_progress = now + PROGRESS_INTERVAL_S
            pause = max(0.0, min(delay, deadline - now, next_progress - now))
            if cancel is not None:
                cancel.wait(pause)
            else:
                time.sleep(pause)
            delay = min(delay * 2, 0.05)
        elapsed = time.monotonic() - started
        if stopped is not None:
            notes.append(_terminate_group(proc))
        elif _group_alive(proc.pid):
            notes.append("background processes outlived the command: " + _terminate_group(proc))
    finally:
        if proc.returncode is None:  # on_progress raised, or an interrupt: never leave it running
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(READER_JOIN_S)
    if reader.is_alive():
        notes.append("output may be incomplete: a process outside the group still holds the pipe")
    if stopped == "cancel":
        raise ChecksCancelled(f"cancelled while running {shown}")

    code = proc.returncode
    detail = "\n".join([header, *notes, output.describe()])
    last = output.last_line()
    tail = f": {_clip(last, _SHOWN_LINE)}" if last else ""
    if stopped == "timeout":
        return _result(
            "command_success",
            False,
            f"{shown} timed out after {check.timeout_s:g} s (process group killed)",
            f"timed out after {elapsed:.2f} s\n{detail}",
        )
    if code == 0:
        return _result(
            "command_success",
            True,
            f"{shown} passed (exit code 0, {elapsed:.2f} s)",
            f"exit code 0 after {elapsed:.2f} s\n{detail}",
            exit_code=0,
        )
    if code is not None and code < 0:
        how = f"was killed by signal {_signal_name(-code)}"
    else:
        how = f"failed with exit code {code}"
    return _result(
        "command_success",
        False,
        f"{shown} {how}{tail}",
        f"{how} after {elapsed:.2f} s\n{detail}",
        exit_code=code,
    )


def _terminate_group(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM the command's process group, SIGKILL it after ``KILL_GRACE_S``; reap the leader.

    Returns what was done, for the detail text.
    """
    pgid = proc.pid
    _signal_group(pgid, signal.SIGTERM)
    give_up = time.monotonic() + KILL_GRACE_S
    while time.monotonic() < give_up:
        if proc.poll() is not None and not _group_alive(pgid):
            return "process group stopped by SIGTERM"
        time.sleep(0.02)
    _signal_group(pgid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return f"process group sent SIGKILL after {KILL_GRACE_S:g} s; pid {pgid} did not exit"
    return f"process group sent SIGTERM, then SIGKILL after {KILL_GRACE_S:g} s"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # ProcessLookupError: nothing left in the group; PermissionError: nothing we may signal
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: orphans wait for
    init to reap them (forever when the worker is PID 1 in a container without an init)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True  # no procfs: trust kill(0)
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        # after "pid (comm)": state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] != b"Z":
            return True
    return False


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


class _TailBuffer:
    """Collects a pipe's bytes, keeping only the last ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._data = bytearray()
        self._lock = threading.Lock()

    def drain(self, pipe: IO[bytes]) -> None:
        """Read until end of file (every writer gone), then close the pipe."""
        fd = pipe.fileno()
        with pipe:
            while chunk := os.read(fd, 65536):
                with self._lock:
                    self.total += len(chunk)
                    self._data += chunk
                    if len(self._data) > self.limit:
                        del self._data[: len(self._data) - self.limit]

    def text(self) -> tuple[str, int]:
        """The kept bytes as text and how many bytes were cut from the front."""
        with self._lock:
            data = bytes(self._data)
            total = self.total
        cut = total - len(data)
        if cut:  # do not start in the middle of a UTF-8 sequence
            skip = 0
            while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
                skip += 1
            data = data[skip:]
            cut += skip
        return data.decode("utf-8", errors="replace"), cut

    def describe(self) -> str:
        text, cut = self.text()
        if not self.total:
            return "output: (none)"
        if not cut:
            return f"output (stdout and stderr, {self.total} bytes):\n{text}"
        return (
            f"output (stdout and stderr, {self.total} bytes; {cut} bytes cut, "
            f"the last {self.total - cut} kept):\n[... {cut} bytes cut ...]\n{text}"
        )

    def last_line(self) -> str:
        text, _ = self.text()
        for line in reversed(text.splitlines()):
            if line.strip():
                return line.strip()
        return ""


# ------------------------------------------------------------------ helpers


def _result(
    kind: CheckKind, passed: bool, summary: str, detail: str, *, exit_code: int | None = None
) -> CheckResult:
    return CheckResult(
        kind=kind,
        passed=passed,
        summary=_one_line(f"{kind}: {summary}"),
        detail=detail,
        exit_code=exit_code,
    )


def _resolve(base: Path, path: str) -> Path:
    """``path`` against ``base`` (an absolute ``path`` stays), made absolute, ``..`` folded."""
    return Path(os.path.abspath(base / path))


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _size(n: int) -> str:
    if n < 10 * 1024:
        return f"{n} bytes" if n != 1 else "1 byte"
    if n < MB:
        return f"{n / 1024:.1f} KB"
    return f"{n / MB:.1f} MB"


def _show_text(text: str) -> str:
    return repr(_clip(text, _SHOWN_TEXT))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")
