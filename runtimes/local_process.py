"""The ``local-process`` runtime: the worker runs each agent as a local command.

Spawning
    The agent's ``command`` template is formatted per element: ``{ticket_id}``,
    ``{agent_name}``, ``{generation}`` and ``{python}`` (the worker's interpreter) are
    replaced; any other brace is left as it is (so shell snippets need no escaping). The
    environment is the worker's (without ``UNSTUCK_JOIN_KEY``), plus ``spec.env``, plus
    ``UNSTUCK_JOIN_SECRET`` (the ticket's join secret of the agent's kind, derived from the
    deployment's join key: infra.enrollment), ``UNSTUCK_TEMPORAL_ADDRESS``,
    ``UNSTUCK_NAMESPACE``, ``UNSTUCK_TICKET_ID``, ``UNSTUCK_AGENT_NAME``,
    ``UNSTUCK_AGENT_KIND`` and ``UNSTUCK_AGENT_GENERATION``. The agent starts in a new
    session, so it and every child it starts form one process group (pgid = its pid).
    stdout and stderr are appended to ``<log_dir>/<ticket>/<agent>.<generation>.log``. An
    agent that exits within :attr:`LocalProcessRuntime.startup_check_s` is an error that
    carries the tail of its log.

    Spawning is idempotent per (ticket, agent, generation): the spawned process is recorded
    next to the log (``<agent>.<generation>.json``); spawning the same generation again while
    that process is alive returns it instead of starting a second one.

Stopping
    SIGTERM to the whole process group; wait up to the grace period (``on_progress`` is
    called at least once a second); then SIGKILL to the group, and check that no process of
    the group remains. Orphans of an agent that already died (its children, still in its
    group) are stopped the same way. A child that left the group (``setsid``) escapes this;
    isolating those needs cgroups (a container runtime).

Finding a process again
    The worker that stops an agent may not be the one that started it (workers restart), so
    everything works from the recorded pid, pgid and kernel start time alone: a pid is alive
    when ``kill(pid, 0)`` succeeds, ``/proc/<pid>/stat`` is not a zombie and its start time
    (field 22) is the recorded one — a different start time means the pid was reused by an
    unrelated process. A process on another host is unknown (``None``) and is never
    signalled. Exited children of this worker are reaped (``waitpid``).

Linux gives all guarantees; elsewhere (no ``/proc``) the start-time and zombie checks are
skipped and group membership is probed with ``killpg(pgid, 0)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from infra.enrollment import JOIN_KEY_ENV, JOIN_SECRET_ENV, EnrollmentError, join_key, join_secret
from models.runtime import AgentProcess, RuntimeName, SpawnAgent, StopOutcome
from runtimes.base import AgentExitedEarly, ProgressCallback, SpawnConfigError

log = logging.getLogger("unstuck.runtime.local")

PROC = Path("/proc")
#: The placeholders a command template may use.
PLACEHOLDERS = ("ticket_id", "agent_name", "generation", "python")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")

#: Children this worker process started and has not reaped yet (pid → Popen).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
#: Exit codes of reaped children not reported yet (pid → code; negative: killed by signal).
_EXIT_CODES: dict[int, int] = {}

LOG_TAIL_BYTES = 4000


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the runtime uses."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    start_ticks: int

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X", "x")


def proc_available() -> bool:
    """Whether this system has a Linux-style ``/proc`` (start times, states, groups)."""
    return (PROC / "self" / "stat").exists()


def read_stat(pid: int) -> ProcStat | None:
    """``/proc/<pid>/stat`` parsed, or None when there is no such process (or no /proc)."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError, NotADirectoryError, PermissionError):
        return None
    # "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
    # stime cutime cstime priority nice num_threads itrealvalue starttime ...": comm may hold
    # spaces and parentheses, so split after the last ')'.
    rparen = raw.rfind(")")
    if rparen < 0:
        return None
    rest = raw[rparen + 2 :].split()
    try:
        return ProcStat(
            pid=pid,
            state=rest[0],
            ppid=int(rest[1]),
            pgrp=int(rest[2]),
            session=int(rest[3]),
            start_ticks=int(rest[19]),  # field 22
        )
    except (IndexError, ValueError):
        return None


def group_members(pgid: int, *, since_ticks: int | None = None) -> list[int]:
    """Pids of the live (non-zombie) processes in process group ``pgid``.

    With ``since_ticks``, processes that started before it are left out: a member of an
    agent's group cannot be older than the agent.
    """
    if not proc_available():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        st = read_stat(int(entry.name))
        if st is None or st.pgrp != pgid or st.zombie:
            continue
        if since_ticks is not None and st.start_ticks < since_ticks:
            continue
        members.append(st.pid)
    return sorted(members)


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` if it is an exited child of this process."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if (code := child.poll()) is not None:
            del _CHILDREN[pid]
            _EXIT_CODES[pid] = code
        return
    st = read_stat(pid)
    if st is not None and st.ppid == os.getpid() and st.zombie:
        with contextlib.suppress(ChildProcessError):
            reaped, status = os.waitpid(pid, os.WNOHANG)
            if reaped == pid:
                _EXIT_CODES[pid] = os.waitstatus_to_exitcode(status)


async def _collect(pid: int, timeout: float = 1.0) -> None:
    """Reap ``pid`` if it is this worker's exited child, waiting briefly for it.

    A multi-threaded process shows as a zombie as soon as its main thread exits, but can be
    waited for only once all its threads are gone: give it a moment, so no zombie is left
    behind and its exit code can be reported.
    """
    child = _CHILDREN.get(pid)
    if child is None:
        _reap(pid)
        return
    deadline = time.monotonic() + timeout
    while child.poll() is None and time.monotonic() < deadline:
        st = read_stat(pid)
        if st is not None and not st.zombie:
            return  # still running: nothing to collect
        await asyncio.sleep(0.01)
    _reap(pid)


def _exit_note(pid: int) -> str:
    """`` (exit code N)`` when this worker reaped ``pid``, else ''."""
    code = _EXIT_CODES.pop(pid, None)
    if code is None:
        return ""
    if code < 0:
        try:
            return f" (killed by {signal.Signals(-code).name})"
        except ValueError:
            return f" (killed by signal {-code})"
    return f" (exit code {code})"


def _reap_all() -> None:
    for pid in list(_CHILDREN):
        _reap(pid)


LeaderState = Literal["alive", "gone", "reused"]


def leader_state(process: AgentProcess) -> LeaderState:
    """Whether the recorded process itself still runs, is gone, or its pid now belongs to
    another process (start time differs)."""
    if process.pid is None:
        return "gone"
    _reap(process.pid)
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass  # it exists but belongs to another user: the start time decides
    if not proc_available():
        return "alive"
    st = read_stat(process.pid)
    if st is None or st.zombie:
        _reap(process.pid)  # it may have exited since the first look
        return "gone"
    if process.proc_start_ticks is not None and st.start_ticks != process.proc_start_ticks:
        return "reused"
    return "alive"


def format_command(template: list[str], values: dict[str, str]) -> list[str]:
    """Replace the placeholders ``values`` names (``{name}``) in each element; other braces
    stay as they are. One element stays one argument (no shell), whatever a value holds."""
    pattern = _PLACEHOLDER if values.keys() == set(PLACEHOLDERS) else _placeholders(values)
    return [pattern.sub(lambda m: values[m.group(1)], part) for part in template]


def _placeholders(values: dict[str, str]) -> re.Pattern[str]:
    return re.compile(r"\{(" + "|".join(re.escape(k) for k in values) + r")\}")


def log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a log file as text ('' when it does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace")
    if size > limit:
        text = "…" + text.split("\n", 1)[-1]
    return text


#: Worker secrets an agent process is not given.
WITHHELD_ENV = frozenset({JOIN_KEY_ENV, "UNSTUCK_CODEC_AUTH_TOKEN"})


class LocalProcessRuntime:
    """Runs agents as local processes; see the module docstring for the guarantees."""

    name: RuntimeName = "local-process"

    #: An agent that exits within this many seconds of its start failed to start.
    startup_check_s: float = 0.2
    #: How often the group is polled while waiting for it to exit.
    poll_s: float = 0.1
    #: How long to wait for SIGKILLed processes to disappear before giving up.
    kill_wait_s: float = 5.0

    def __init__(
        self, log_dir: Path, *, host: str | None = None, data_dir: Path | None = None
    ) -> None:
        self.log_dir = Path(log_dir)
        self.host = host or socket.gethostname()
        #: Where the deployment's join key is looked for (infra.enrollment), after the
        #: environment: by default the data directory that holds ``log_dir``.
        self.data_dir = Path(data_dir) if data_dir is not None else self.log_dir.parent

    # ---- paths -----------------------------------------------------------------------

    def log_path(self, ticket_id: str, agent_name: str, generation: int) -> Path:
        return self.log_dir / ticket_id / f"{agent_name}.{generation}.log"

    def record_path(self, ticket_id: str, agent_name: str, generation: int) -> Path:
        return self.log_dir / ticket_id / f"{agent_name}.{generation}.json"

    # ---- spawn -------------------------------------------------------------------------

    async def spawn(self, request: SpawnAgent) -> AgentProcess:
        spec = request.spec
        if spec.runtime != "local-process" or not spec.command:
            raise SpawnConfigError(
                f"agent {spec.name!r}: runtime {spec.runtime!r} has no command to run locally"
            )
        _reap_all()
        record = self.record_path(request.ticket_id, spec.name, request.generation)
        existing = self._recorded(record)
        if (
            existing is not None
            and existing.host == self.host
            and leader_state(existing) == "alive"
        ):
            log.info(
                "agent %s of %s generation %d already runs as pid %s: not spawning again",
                spec.name,
                request.ticket_id,
                request.generation,
                existing.pid,
            )
            return existing

        command = format_command(
            spec.command,
            {
                "ticket_id": request.ticket_id,
                "agent_name": spec.name,
                "generation": str(request.generation),
                "python": sys.executable,
            },
        )
        joining: dict[str, str] = {}
        try:
            key = join_key(self.data_dir)
        except EnrollmentError as exc:
            if request.enrolled:  # its registration would be refused: say why, here
                raise SpawnConfigError(f"agent {spec.name!r}: {exc}") from None
        else:
            joining[JOIN_SECRET_ENV] = join_secret(key, request.ticket_id, spec.kind)
        env = {
            # The agent gets the one join secret of its kind, never the deployment's key.
            # (nor the codec server's token, which no agent uses).
            **{k: v for k, v in os.environ.items() if k not in WITHHELD_ENV},
            **spec.env,
            **joining,
            "UNSTUCK_TEMPORAL_ADDRESS": request.temporal_address,
            "UNSTUCK_NAMESPACE": request.namespace,
            "UNSTUCK_TICKET_ID": request.ticket_id,
            "UNSTUCK_AGENT_NAME": spec.name,
            "UNSTUCK_AGENT_KIND": spec.kind,
            "UNSTUCK_AGENT_GENERATION": str(request.generation),
        }
        cwd = Path(spec.cwd) if spec.cwd else None
        if cwd is not None and not cwd.is_dir():
            raise SpawnConfigError(f"agent {spec.name!r}: cwd {str(cwd)!r} is not a directory")

        log_path = self.log_path(request.ticket_id, spec.name, request.generation)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started_at = datetime.now(UTC)
        with log_path.open("ab") as log_file:
            header = f"=== {started_at.isoformat()} spawn generation {request.generation}: "
            log_file.write((header + " ".join(command) + "\n").encode())
            log_file.flush()
            try:
                child = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cwd,
                    start_new_session=True,
                    close_fds=True,
                )
            except FileNotFoundError as exc:
                raise SpawnConfigError(
                    f"agent {spec.name!r}: command not found: {command[0]!r} ({exc.strerror})"
                ) from None
            except PermissionError as exc:
                raise SpawnConfigError(
                    f"agent {spec.name!r}: cannot execute {command[0]!r} ({exc.strerror})"
                ) from None
        _CHILDREN[child.pid] = child
        _EXIT_CODES.pop(child.pid, None)
        st = read_stat(child.pid)
        process = AgentProcess(
            agent_name=spec.name,
            runtime="local-process",
            ticket_id=request.ticket_id,
            generation=request.generation,
            pid=child.pid,
            pgid=child.pid,  # start_new_session: the agent leads its own group
            proc_start_ticks=st.start_ticks if st is not None else None,
            started_at=started_at,
            command=command,
            host=self.host,
            log_path=str(log_path),
        )
        _write_record(record, process)

        deadline = time.monotonic() + self.startup_check_s
        while time.monotonic() < deadline:
            await asyncio.sleep(min(0.02, self.startup_check_s))
            if child.poll() is not None:
                break
        if child.poll() is not None:
            returncode = child.returncode
            _CHILDREN.pop(child.pid, None)
            self._sweep(process)  # children it may have left behind
            record.unlink(missing_ok=True)
            tail = log_tail(log_path)
            raise AgentExitedEarly(
                f"agent {spec.name!r} exited with code {returncode} right after it started "
                f"(within {self.startup_check_s}s); log {log_path}:\n{tail}",
                returncode=returncode,
                log_path=str(log_path),
                log_tail=tail,
            )
        log.info(
            "agent %s of %s generation %d started: pid %d, log %s",
            spec.name,
            request.ticket_id,
            request.generation,
            child.pid,
            log_path,
        )
        return process

    @staticmethod
    def _recorded(path: Path) -> AgentProcess | None:
        try:
            return AgentProcess.model_validate_json(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None

    # ---- is_alive ----------------------------------------------------------------------

    async def is_alive(self, process: AgentProcess) -> bool | None:
        if process.pid is None:
            return False
        if process.host and process.host != self.host:
            return None
        return leader_state(process) == "alive"

    # ---- stop --------------------------------------------------------------------------

    async def stop(
        self,
        process: AgentProcess,
        grace_s: float,
        on_progress: ProgressCallback | None = None,
    ) -> StopOutcome:
        if process.pid is None:
            return StopOutcome(stopped=True, detail="no pid recorded: nothing to stop")
        if process.host and process.host != self.host:
            return StopOutcome(
                stopped=False,
                detail=f"agent {process.agent_name!r} runs on host {process.host!r}, this "
                f"worker on {self.host!r}: it cannot be signalled from here",
            )
        name, pid = process.agent_name, process.pid
        pgid = process.pgid or pid
        state = leader_state(process)
        if state == "reused":
            # A pid is not reused while it names a live process group, so the agent's group
            # is gone too; the process now behind that pid is someone else's.
            return StopOutcome(
                stopped=True,
                detail=f"agent {name!r} (pid {pid}) already exited; the pid now belongs to "
                "another process, left alone",
            )
        was_alive = state == "alive"
        members = self._members(process)
        if not was_alive and not members:
            await _collect(pid)
            return StopOutcome(
                stopped=True, detail=f"agent {name!r} (pid {pid}) already exited{_exit_note(pid)}"
            )
        what = (
            f"agent {name!r} (pid {pid})"
            if was_alive
            else (f"{len(members)} orphan(s) of agent {name!r} in process group {pgid}")
        )

        started = time.monotonic()
        _signal_group(pgid, signal.SIGTERM)
        last_report = -1.0
        while True:
            elapsed = time.monotonic() - started
            if not self._running(process):
                await _collect(pid)
                return StopOutcome(
                    stopped=True,
                    graceful=True,
                    was_alive=was_alive,
                    detail=f"{what} exited {elapsed:.1f}s after SIGTERM{_exit_note(pid)}",
                )
            if elapsed >= grace_s:
                break
            if on_progress is not None and elapsed - last_report >= 0.5:
                on_progress(f"SIGTERM sent to {what}: waiting {elapsed:.1f}s of {grace_s:.1f}s")
                last_report = elapsed
            await asyncio.sleep(min(self.poll_s, max(grace_s - elapsed, 0.01)))

        survivors = self._members(process)
        log.warning(
            "%s did not exit within %.1fs of SIGTERM: SIGKILL to group %d (%d process(es))",
            what,
            grace_s,
            pgid,
            len(survivors),
        )
        kill_started = time.monotonic()
        last_kill = -1.0
        while True:
            waited = time.monotonic() - kill_started
            if waited - last_kill >= 0.5:
                _signal_group(pgid, signal.SIGKILL)
                last_kill = waited
                if on_progress is not None:
                    on_progress(f"SIGKILL sent to process group {pgid} of {what}")
            await asyncio.sleep(0.02)
            if not self._running(process):
                await _collect(pid)
                return StopOutcome(
                    stopped=True,
                    forced=True,
                    was_alive=was_alive,
                    detail=f"{what} ignored SIGTERM for {grace_s:.1f}s; SIGKILLed "
                    f"{len(survivors) or 1} process(es) of group {pgid}{_exit_note(pid)}",
                )
            if waited >= self.kill_wait_s:
                left = self._members(process)
                return StopOutcome(
                    stopped=False,
                    forced=True,
                    was_alive=was_alive,
                    detail=f"{what}: {len(left)} process(es) of group {pgid} survived SIGKILL "
                    f"for {self.kill_wait_s:.0f}s: pids {left}",
                )

    # ---- helpers -----------------------------------------------------------------------

    def _members(self, process: AgentProcess) -> list[int]:
        assert process.pid is not None
        return group_members(process.pgid or process.pid, since_ticks=process.proc_start_ticks)

    def _running(self, process: AgentProcess) -> bool:
        """Whether the agent or anything in its process group still runs (reaps it)."""
        assert process.pid is not None
        _reap(process.pid)
        return leader_state(process) == "alive" or bool(self._members(process))

    def _sweep(self, process: AgentProcess) -> None:
        """SIGKILL whatever is left in the agent's group (after it died at startup)."""
        if process.pid is not None and self._members(process):
            _signal_group(process.pgid or process.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group emptied meanwhile
    except PermissionError as exc:
        log.warning("cannot send %s to process group %d: %s", sig.name, pgid, exc)


def _write_record(path: Path, process: AgentProcess) -> None:
    """Record the spawned process next to its log (atomically: write, then rename)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(process.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
