"""Agent runtime activities: spawn, stop, restart and probe agent processes (DESIGN §6).

The ticket workflow decides when an agent must be restarted; these activities do it through
the agent's runtime (``runtimes/``). They are at-least-once like every activity:

* ``spawn_agent`` is idempotent per (ticket, agent, generation) for ``local-process``: a
  retry while the first process lives returns that process (the runtime records it next
  to the agent's log).
* ``restart_agent`` records its progress in its heartbeat details (:class:`RestartProgress`:
  the stop outcome, then the spawned replacement). A retried attempt reads them back from
  ``activity.info().heartbeat_details`` and resumes: it never stops twice what was stopped,
  and never spawns a second replacement while the first one lives. It also refuses to
  spawn while the previous process is still (or possibly) running.
* ``stop_agent`` heartbeats while it waits for the grace period.

Errors: a spec that cannot be started is a non-retryable ``ApplicationError`` of type
``AgentSpawnConfig``; an agent that exits at once is ``AgentExitedEarly`` (retryable, with
its log tail in the details); a previous agent that could not be stopped is
``AgentNotStopped`` (retryable: a later attempt, maybe on the right host, tries again).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.runtime import (
    AGENT_ALIVE_ACTIVITY,
    RESTART_AGENT_ACTIVITY,
    SPAWN_AGENT_ACTIVITY,
    STOP_AGENT_ACTIVITY,
    AgentProcess,
    RestartAgent,
    RestartOutcome,
    RestartProgress,
    SpawnAgent,
    StopAgent,
    StopOutcome,
)
from runtimes.base import AgentExitedEarly, AgentRuntime, SpawnConfigError
from runtimes.command import CommandRuntime
from runtimes.external import ExternalRuntime
from runtimes.local_process import LocalProcessRuntime

__all__ = ["AgentActivities", "resume_progress"]


class AgentActivities:
    """Agent runtime activities for one worker (register ``activities()``).

    ``data_dir`` is the worker's data directory; ``local-process`` agents log to
    ``<data_dir>/agents/<ticket>/<agent>.<generation>.log``. ``runtimes`` replaces the
    built-in runtimes (by name), e.g. to add a container runtime.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        runtimes: Mapping[str, AgentRuntime] | None = None,
        temporal_address: str = "",
        namespace: str = "default",
        host: str | None = None,
    ) -> None:
        self.log_dir = Path(data_dir) / "agents"
        #: Where spawned agents connect when the ticket does not say (the worker's own server).
        self.temporal_address = temporal_address
        self.namespace = namespace
        self.runtimes: dict[str, AgentRuntime] = {
            "external": ExternalRuntime(),
            "local-process": LocalProcessRuntime(self.log_dir, host=host, data_dir=Path(data_dir)),
            "command": CommandRuntime(self.log_dir, host=host, data_dir=Path(data_dir)),
        }
        self.runtimes.update(runtimes or {})

    def activities(self) -> list[Callable[..., Any]]:
        """The activity callables to pass to a ``Worker``."""
        return [self.spawn_agent, self.stop_agent, self.restart_agent, self.agent_alive]

    def runtime(self, name: str) -> AgentRuntime:
        try:
            return self.runtimes[name]
        except KeyError:
            raise ApplicationError(
                f"unknown agent runtime {name!r} (known: {', '.join(sorted(self.runtimes))})",
                type="UnknownAgentRuntime",
                non_retryable=True,
            ) from None

    # ---- activities --------------------------------------------------------------------

    @activity.defn(name=SPAWN_AGENT_ACTIVITY)
    async def spawn_agent(self, request: SpawnAgent) -> AgentProcess:
        """Start an agent; idempotent per (ticket, agent, generation) while it lives."""
        return await self._spawn(request)

    @activity.defn(name=STOP_AGENT_ACTIVITY)
    async def stop_agent(self, request: StopAgent) -> StopOutcome:
        """Stop an agent: graceful, then forced after ``grace_s``; heartbeats while waiting."""
        process = request.process
        outcome = await self.runtime(process.runtime).stop(
            process, request.grace_s, on_progress=activity.heartbeat
        )
        activity.logger.info(
            "stop agent %s of %s (pid %s): %s",
            process.agent_name,
            process.ticket_id,
            process.pid,
            outcome.detail,
        )
        return outcome

    @activity.defn(name=RESTART_AGENT_ACTIVITY)
    async def restart_agent(self, request: RestartAgent) -> RestartOutcome:
        """Stop the previous process (graceful, then forced), then spawn a replacement.

        Resumes from the progress an earlier attempt left in the heartbeat details.
        """
        progress = resume_progress(activity.info().heartbeat_details)
        name = request.spawn.spec.name
        if progress.process is not None:
            replacement = progress.process
            alive = await self.runtime(replacement.runtime).is_alive(replacement)
            if alive is not False:
                activity.logger.info(
                    "restart of agent %s: an earlier attempt already spawned pid %s; resuming",
                    name,
                    replacement.pid,
                )
                return RestartOutcome(stop=progress.stop, process=replacement)
            activity.logger.warning(
                "restart of agent %s: the replacement an earlier attempt spawned (pid %s) is "
                "dead; spawning another",
                name,
                replacement.pid,
            )

        stop = progress.stop
        previous = request.previous
        if previous is not None and (stop is None or not stop.stopped):
            stop = await self._stop_previous(previous, request.grace_s)
        if previous is not None and previous.runtime != "external":
            alive = await self.runtime(previous.runtime).is_alive(previous)
            if alive is not False:
                detail = stop.detail if stop is not None else ""
                state = "still runs" if alive else "may still run (cannot tell from here)"
                raise ApplicationError(
                    f"agent {previous.agent_name!r} (pid {previous.pid}) {state}: not "
                    f"spawning a replacement. {detail}".strip(),
                    {"stop": stop.model_dump(mode="json") if stop else None},
                    type="AgentNotStopped",
                )

        process = await self._spawn(request.spawn)
        _beat(RestartProgress(stage="spawned", stop=stop, process=process))
        activity.logger.info(
            "restarted agent %s of %s: pid %s → pid %s (generation %d)",
            name,
            request.spawn.ticket_id,
            previous.pid if previous else None,
            process.pid,
            request.spawn.generation,
        )
        return RestartOutcome(stop=stop, process=process)

    @activity.defn(name=AGENT_ALIVE_ACTIVITY)
    async def agent_alive(self, process: AgentProcess) -> bool | None:
        """True: it runs; False: it does not; None: unknown (external, another host)."""
        return await self.runtime(process.runtime).is_alive(process)

    # ---- helpers -----------------------------------------------------------------------

    async def _stop_previous(self, previous: AgentProcess, grace_s: float) -> StopOutcome:
        def note(text: str) -> None:
            _beat(RestartProgress(stage="stopping", note=text))

        stop = await self.runtime(previous.runtime).stop(previous, grace_s, on_progress=note)
        _beat(RestartProgress(stage="stopped", stop=stop))
        activity.logger.info(
            "restart of agent %s: stopped pid %s: %s",
            previous.agent_name,
            previous.pid,
            stop.detail,
        )
        return stop

    async def _spawn(self, request: SpawnAgent) -> AgentProcess:
        if not request.temporal_address:
            request = request.model_copy(
                update={"temporal_address": self.temporal_address, "namespace": self.namespace}
            )
        if not request.temporal_address:
            raise ApplicationError(
                f"agent {request.spec.name}: no Temporal address to give it (the ticket has no "
                "agent_address and the worker was built without one)",
                type="AgentSpawnConfig",
                non_retryable=True,
            )
        runtime = self.runtime(request.spec.runtime)
        try:
            return await runtime.spawn(request)
        except SpawnConfigError as exc:
            raise ApplicationError(str(exc), type="AgentSpawnConfig", non_retryable=True) from exc
        except AgentExitedEarly as exc:
            raise ApplicationError(
                str(exc),
                {"returncode": exc.returncode, "log_path": exc.log_path, "log_tail": exc.log_tail},
                type="AgentExitedEarly",
            ) from exc


def resume_progress(details: Sequence[Any]) -> RestartProgress:
    """The latest :class:`RestartProgress` in heartbeat details (a fresh one when none)."""
    for item in reversed(details):
        try:
            return RestartProgress.model_validate(item)
        except ValidationError:
            continue
    return RestartProgress()


def _beat(progress: RestartProgress) -> None:
    activity.heartbeat(progress.model_dump(mode="json"))
