"""Pieces every part of the ticket core shares: refusals, effects, steps, the timeline,
task creation and the counters that several rules read."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

from core.state import (
    ACTIVE_STATUSES,
    TIMELINE_LIMIT,
    Agent,
    Task,
    TicketState,
    TimelineEvent,
)
from models.diagnosis import DiagnosisInput
from models.runtime import AgentProcess
from models.spec import AgentSpec

#: Per task, the reasons of this many latest failed attempts are kept (for the diagnosis:
#: the same error on one task's attempts is a signature from its first repetition).
FAILURE_REASONS_KEPT = 5
FAILURE_REASON_CHARS = 500

ReplyT = TypeVar("ReplyT")


class Refused(Exception):
    """A message the ticket will not accept: which field, which rule."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


@dataclass(frozen=True)
class StopAgents:
    """Tell these agents to stop (and, for managed runtimes, stop their processes)."""

    agent_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class FinishTicket:
    """The ticket is over; the workflow completes once its handlers and ledger are done."""

    outcome: str
    reason: str


@dataclass
class Step(Generic[ReplyT]):
    """The result of a transition: the reply to the sender and the effects to perform."""

    reply: ReplyT
    effects: list[Effect] = field(default_factory=list)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_operator(state: TicketState, token: str) -> None:
    """Operator messages carry the token ``starter.py launch`` created for the ticket."""
    if state.operator_token_sha256 is None:
        raise Refused("operator_token", "this ticket was launched without an operator token")
    if not hmac.compare_digest(hash_token(token), state.operator_token_sha256):
        raise Refused("operator_token", "does not match the ticket's operator token")


def note(state: TicketState, now: datetime, kind: str, message: str) -> None:
    """Add a line to the ticket's timeline (for facts the shell learns, e.g. ledger errors)."""
    log(state, now, kind, message)


def add_task(
    state: TicketState,
    now: datetime,
    *,
    key: str | None,
    phase: str,
    title: str,
    description: str,
    type: str,
    priority: str,
    depends_on: list[str],
    validation: bool,
    created_by: str,
) -> Task:
    number = state.next_task_number
    state.next_task_number += 1
    task = Task(
        id=f"T{number}",
        key=key,
        phase=phase,
        title=title,
        description=description,
        type=type,
        priority=priority,
        depends_on=depends_on,
        validation=validation,
        created_by=created_by,
        created_at=now,
        updated_at=now,
        seq=number,
    )
    index = state.index()  # before the task joins: the index must not count it twice
    state.tasks[task.id] = task
    index.add(task)
    if created_by != "spec":
        log(
            state,
            now,
            "task_created",
            f"{task.id} {title!r} created in {phase}",
            agent_id=created_by,
            task_id=task.id,
        )
    return task


def log(
    state: TicketState,
    now: datetime,
    kind: str,
    message: str,
    *,
    agent_id: str | None = None,
    task_id: str | None = None,
) -> None:
    state.timeline.append(
        TimelineEvent(at=now, kind=kind, message=message, agent_id=agent_id, task_id=task_id)
    )
    if len(state.timeline) > TIMELINE_LIMIT:
        drop = len(state.timeline) - TIMELINE_LIMIT
        del state.timeline[:drop]
        state.timeline_dropped += drop


def open_tasks(state: TicketState) -> int:
    counts = state.index().by_status
    return sum(counts[s] for s in ACTIVE_STATUSES)


def claimable(state: TicketState, task: Task, phases: list[str] | None = None) -> bool:
    """Pending, every dependency done, in ``phases`` (all when None): a claim could take it."""
    return (
        task.status == "pending"
        and (not phases or task.phase in phases)
        and all(
            (dep := state.tasks.get(d)) is not None and dep.status == "done"
            for d in task.depends_on
        )
    )


def avoided(state: TicketState, task: Task, agent: Agent) -> bool:
    """reassign_task: ``agent``'s lineage is not given ``task`` while another live agent
    that may take it exists (the task never waits for nobody)."""
    if agent.lineage not in task.avoid and agent.id not in task.avoid:
        return False
    return any(
        other.kind == agent.kind
        and other.state in ("idle", "running", "spawning", "degraded")
        and not other.stop
        and other.lineage not in task.avoid
        and other.id not in task.avoid
        for other in state.agents.values()
    )


def waits_on_dead(state: TicketState, task: Task) -> bool:
    """Pending, with a dependency that failed for good or was cancelled (directly)."""
    return task.status == "pending" and any(
        (dep := state.tasks.get(d)) is not None and dep.status in ("failed", "cancelled")
        for d in task.depends_on
    )


def record_failure(task: Task, reason: str) -> None:
    """A failed attempt of ``task``: its reason, and the latest few reasons (for diagnosis)."""
    task.failures += 1
    task.failure_reason = reason
    task.failure_reasons = [*task.failure_reasons, reason[:FAILURE_REASON_CHARS]][
        -FAILURE_REASONS_KEPT:
    ]


def blocked_tasks(state: TicketState) -> set[str]:
    """Pending tasks that can never become eligible: a dependency, directly or through other
    blocked tasks, failed for good or was cancelled. A walk from the failed and cancelled
    tasks to the tasks waiting on them (the index's dependants), not a pass over all tasks."""
    index = state.index()
    blocked: set[str] = set()
    frontier = list(index.dead)
    while frontier:
        for waiting in index.dependants.get(frontier.pop(), ()):
            task = state.tasks.get(waiting)
            if task is not None and task.status == "pending" and waiting not in blocked:
                blocked.add(waiting)
                frontier.append(waiting)
    return blocked


def moving_tasks(state: TicketState) -> int:
    """Active tasks that are not blocked: work that can still happen without help."""
    if not state.healing_v2 or not state.index().dead:
        return open_tasks(state)  # nothing can be blocked
    return open_tasks(state) - len(blocked_tasks(state))  # blocked tasks are pending: active


def current_phase(state: TicketState) -> str | None:
    """The first phase (in order) with unfinished tasks; else the last phase that had tasks."""
    last = None
    index = state.index()
    for phase in state.spec.phases:
        unfinished, total = index.phase_counts(phase.name)
        if unfinished:
            return phase.name
        if total:
            last = phase.name
    return last


def validated_version(state: TicketState) -> int | None:
    return next((r.version for r in state.results if r.status == "validated"), None)


@dataclass(frozen=True)
class StartDiagnosis:
    """Start the diagnostic child workflow for this run."""

    input: DiagnosisInput


@dataclass(frozen=True)
class RestartAgentProcess:
    """Ask the agent's runtime to stop the old process and spawn a replacement."""

    agent_id: str
    lineage: str
    number: int
    spec: AgentSpec
    previous: AgentProcess | None
    generation: int


@dataclass(frozen=True)
class SpawnAgentProcesses:
    """Start the ticket's local-process agents (at ticket start)."""

    specs: tuple[AgentSpec, ...]


@dataclass(frozen=True)
class StopAgentProcesses:
    """Stop these local processes (the ticket finished, or a lineage was quarantined)."""

    processes: tuple[AgentProcess, ...]
    reason: str


Effect = (
    StopAgents
    | FinishTicket
    | StartDiagnosis
    | RestartAgentProcess
    | SpawnAgentProcesses
    | StopAgentProcesses
)
