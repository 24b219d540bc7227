"""Agent runtime messages: what the ticket asks the worker to do with agent processes.

An *agent runtime* starts, stops and watches agents (DESIGN §6): ``external`` (someone else
runs them) or ``local-process`` (the worker runs a command template per agent). The ticket
workflow decides *when* to restart an agent; these models carry the request to the agent
activities (``activities/agents.py``) and their answers back.

Plain pydantic v2 models serialised as plain JSON by the pydantic data converter. Workflow
code imports this module: it must stay free of I/O and of anything non-deterministic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field

from models.spec import AgentSpec, Slug

#: Activity names, for workflow code that must not import ``activities``.
SPAWN_AGENT_ACTIVITY = "spawn_agent"
STOP_AGENT_ACTIVITY = "stop_agent"
RESTART_AGENT_ACTIVITY = "restart_agent"
AGENT_ALIVE_ACTIVITY = "agent_alive"
#: Run by the agent's own process (agent_client.lease), not by the worker: it heartbeats for
#: as long as the agent lives, so its heartbeat timeout carries the agent's liveness.
HOLD_LEASE_ACTIVITY = "hold_lease"
#: Every lease host's task queue starts with this (a worker's queue never does): a message
#: cannot point the ticket's leases at a worker.
LEASE_QUEUE_PREFIX = "unstuck-lease/"
LEASE_QUEUE_PATTERN = r"^unstuck-lease/[A-Za-z0-9._:@/-]{1,150}$"

RuntimeName = Literal["external", "local-process", "command"]
#: Runtimes whose agents are processes on the host of the worker that started them.
HOSTED_RUNTIMES: tuple[RuntimeName, ...] = ("local-process", "command")


def host_queue(task_queue: str, host: str) -> str:
    """The task queue only the worker on ``host`` polls (stop and restart its processes)."""
    return f"{task_queue}@{host}"


#: Default time an agent gets between SIGTERM and SIGKILL (DESIGN §6: graceful stop 10 s).
DEFAULT_STOP_GRACE_S = 10.0


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


#: A timezone-aware datetime normalised to UTC; naive datetimes are refused.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


class AgentProcess(BaseModel):
    """A running (or once running) agent, as the runtime that started it recorded it.

    Everything needed to find the process again from *another* worker process: ``pid``,
    ``pgid`` (the agent and its children form one process group), the host, and the kernel
    start time of the process (``proc_start_ticks``, field 22 of ``/proc/<pid>/stat``) that
    tells the agent apart from an unrelated process that later got the same pid.
    """

    agent_name: str
    runtime: RuntimeName
    ticket_id: str = ""
    generation: int = Field(default=0, ge=0)
    pid: int | None = Field(default=None, gt=0)
    pgid: int | None = Field(default=None, gt=0)
    proc_start_ticks: int | None = Field(
        default=None, ge=0, description="start time in clock ticks since boot (pid reuse guard)"
    )
    started_at: UtcDatetime
    command: list[str] = Field(default_factory=list)
    host: str = ""
    log_path: str | None = Field(default=None, description="where stdout and stderr go")


class SpawnAgent(BaseModel):
    """Start one agent of a ticket (a fresh one, or the replacement of a restarted one)."""

    ticket_id: Slug
    spec: AgentSpec
    temporal_address: str = Field(
        default="", description="where the agent connects; empty = the worker's own Temporal"
    )
    namespace: str = Field(default="default", min_length=1)
    generation: int = Field(
        default=0,
        ge=0,
        description="0 for the first process, +1 per restart; names the log file and makes "
        "spawning idempotent per (ticket, agent, generation)",
    )
    enrolled: bool = Field(
        default=True,
        description="the ticket admits agents only with a join secret (infra.enrollment): "
        "the runtime must hand one over; False for tickets started before enrollment",
    )


class StopAgent(BaseModel):
    """Stop an agent: SIGTERM (or the runtime's equivalent), ``grace_s``, then force."""

    process: AgentProcess
    grace_s: float = Field(default=DEFAULT_STOP_GRACE_S, ge=0, le=600)


class StopOutcome(BaseModel):
    """How a stop went.

    ``stopped``: nothing of the agent runs any more (also true when it was already gone);
    ``graceful``: it exited within the grace period; ``forced``: it had to be killed;
    ``was_alive``: it was running when the stop began.
    """

    stopped: bool
    graceful: bool = False
    forced: bool = False
    was_alive: bool = False
    detail: str = ""


class RestartAgent(BaseModel):
    """Replace an agent: stop ``previous`` (graceful, then forced), then spawn ``spawn``."""

    spawn: SpawnAgent
    previous: AgentProcess | None = None
    grace_s: float = Field(default=DEFAULT_STOP_GRACE_S, ge=0, le=600)


class RestartOutcome(BaseModel):
    """The stop of the previous process (None when there was none) and its replacement."""

    stop: StopOutcome | None
    process: AgentProcess


class RestartProgress(BaseModel):
    """What ``restart_agent`` has done so far, kept in its heartbeat details.

    A retried attempt reads it back from ``activity.info().heartbeat_details`` and resumes:
    a recorded stop is not repeated, a recorded replacement is not spawned twice.
    """

    stage: Literal["stopping", "stopped", "spawned"] = "stopping"
    stop: StopOutcome | None = None
    process: AgentProcess | None = None
    note: str = ""
