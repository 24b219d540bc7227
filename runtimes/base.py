"""The agent runtime interface (DESIGN §6): spawn, stop, is_alive.

A runtime knows how to start an agent from its :class:`~models.spec.AgentSpec`, how to stop
it (gracefully, then by force) and whether it still runs. ``external`` and
``local-process`` ship with Unstuck; docker or kubernetes runtimes plug in behind the same
protocol.

All three calls are coroutines: a runtime may wait (a grace period, a container API) and
runs inside an async Temporal activity.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from models.runtime import AgentProcess, RuntimeName, SpawnAgent, StopOutcome

#: Called by :meth:`AgentRuntime.stop` at least once a second while it waits (the activity
#: turns it into a Temporal heartbeat); the argument says what it is waiting for.
ProgressCallback = Callable[[str], None]

#: Where agent logs go when nothing else is configured: ``<data_dir>/agents``.
DEFAULT_LOG_DIR = Path(".unstuck") / "agents"


class AgentRuntimeError(Exception):
    """A runtime could not do what was asked."""


class SpawnConfigError(AgentRuntimeError):
    """The agent cannot be started as specified (bad template, missing command or cwd).

    Retrying does not help: the spec must change.
    """


class AgentExitedEarly(AgentRuntimeError):
    """The agent exited right after it was started; ``log_tail`` shows why."""

    def __init__(
        self, message: str, *, returncode: int | None, log_path: str | None, log_tail: str
    ) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log_path = log_path
        self.log_tail = log_tail


@runtime_checkable
class AgentRuntime(Protocol):
    """Starts, stops and watches agents of one kind of runtime."""

    name: RuntimeName

    async def spawn(self, request: SpawnAgent) -> AgentProcess:
        """Start the agent and return where it runs.

        Raises :class:`SpawnConfigError` when the spec cannot work and
        :class:`AgentExitedEarly` when the agent died at once.
        """
        ...

    async def stop(
        self,
        process: AgentProcess,
        grace_s: float,
        on_progress: ProgressCallback | None = None,
    ) -> StopOutcome:
        """Ask the agent to stop, wait up to ``grace_s``, then force it.

        Never raises for an agent that is already gone: that is ``stopped=True,
        was_alive=False``.
        """
        ...

    async def is_alive(self, process: AgentProcess) -> bool | None:
        """True: it runs; False: it certainly does not; None: this runtime cannot tell
        (an external agent, or a process on another host)."""
        ...


def runtime_for(name: str, *, log_dir: Path | None = None) -> AgentRuntime:
    """The runtime called ``name`` (``external``, ``local-process`` or ``command``).

    ``log_dir`` is where ``local-process`` writes agent logs (default
    :data:`DEFAULT_LOG_DIR`).
    """
    # Imported here: the implementations import this module for the protocol and errors.
    from runtimes.external import ExternalRuntime
    from runtimes.local_process import LocalProcessRuntime

    if name == "external":
        return ExternalRuntime()
    if name == "local-process":
        return LocalProcessRuntime(log_dir or DEFAULT_LOG_DIR)
    if name == "command":
        from runtimes.command import CommandRuntime

        return CommandRuntime(log_dir or DEFAULT_LOG_DIR)
    raise ValueError(f"unknown agent runtime {name!r} (known: external, local-process, command)")
