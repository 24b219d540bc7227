"""Agent health (pure): the heartbeat ladder, restarts, reassignment and quarantine.

Each live agent has a heartbeat deadline: ``running_deadline_s`` (15 s) while it runs or holds
tasks, ``idle_deadline_s`` (30 s) otherwise, counted from its last sign of life (a heartbeat
or any accepted message). Missed deadlines in a row climb a ladder: 1 → warn, 2 → degraded,
3 → unresponsive → restart. All deadlines join the ticket's single timer (core.deadlines).

A restart puts the agent's tasks back to pending (the attempt counts against the task's
retries) and asks the agent's runtime for a replacement with the same spec. Restarts of one
*lineage* (an agent and its replacements share the spec name) are at least
``restart_cooldown_s`` apart; a lineage that would need more than ``max_restarts_per_hour``
restarts in a rolling hour is quarantined instead (no new tasks), escalated (SEV-2) and
diagnosed (trigger restart_escalation). An operator releases it; it must then heartbeat
within ``running_deadline_s`` to come back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from core import diagnosis, escalations
from core.common import (
    Effect,
    Refused,
    RestartAgentProcess,
    SpawnAgentProcesses,
    Step,
    StopAgentProcesses,
    check_operator,
    log,
    record_failure,
)
from core.diagnosis import Deadline
from core.state import HELD_STATUSES, Agent, Lineage, TicketState
from models.ledger import RestartEventRecord, restart_event_id
from models.messages import ReleaseAgent, ReleaseReply
from models.runtime import AgentProcess, RestartOutcome
from models.spec import EscalationSource

LIVE_STATES = ("spawning", "idle", "running", "degraded")
HOUR = timedelta(hours=1)


# ---- deadlines -----------------------------------------------------------------------------


def interval(state: TicketState, agent: Agent) -> timedelta:
    """The agent's heartbeat deadline: shorter while it runs or holds tasks."""
    policy = state.spec.policy.health
    busy = agent.state == "running" or agent.id in state.index().held
    return timedelta(seconds=policy.running_deadline_s if busy else policy.idle_deadline_s)


def last_sign_of_life(agent: Agent) -> datetime:
    return max(
        d
        for d in (agent.last_heartbeat_at, agent.last_seen_at, agent.registered_at)
        if d is not None
    )


def agent_deadline(state: TicketState, agent: Agent) -> datetime | None:
    """When the agent misses its next heartbeat, or None if it is not watched.

    An agent holding a lease is watched by the server instead: the lease activity's
    heartbeat timeout ends it (:func:`lease_ended`), and the ladder then climbs from there.
    """
    if agent.state not in LIVE_STATES or agent.lease_held:
        return None
    return last_sign_of_life(agent) + interval(state, agent) * (agent.missed_beats + 1)


def deadlines(state: TicketState) -> list[Deadline]:
    if state.status != "open":
        return []
    found: list[Deadline] = []
    for agent in state.agents.values():
        at = agent_deadline(state, agent)
        if at is not None:
            found.append(Deadline(at, f"heartbeat deadline {agent.id}"))
        if agent.release_deadline is not None:
            found.append(Deadline(agent.release_deadline, f"release deadline {agent.id}"))
    for lineage in state.lineages.values():
        if lineage.pending_restart_agent is not None and lineage.restart_not_before is not None:
            found.append(Deadline(lineage.restart_not_before, f"restart cooldown {lineage.name}"))
    return found


def tick(state: TicketState, now: datetime) -> list[Effect]:
    """Climb the ladder for every missed deadline; run deferred restarts; lapse releases."""
    effects: list[Effect] = []
    if state.status != "open":
        return effects
    for agent in list(state.agents.values()):
        while (at := agent_deadline(state, agent)) is not None and at <= now:
            agent.missed_beats += 1
            effects += _ladder(state, agent, now)
        if agent.release_deadline is not None and agent.release_deadline <= now:
            agent.release_deadline = None
            log(
                state,
                now,
                "release_lapsed",
                f"{agent.id} stays quarantined: no heartbeat within "
                f"{state.spec.policy.health.running_deadline_s:g} s of its release",
                agent_id=agent.id,
            )
    for lineage in state.lineages.values():
        if (
            lineage.pending_restart_agent is not None
            and lineage.restart_not_before is not None
            and lineage.restart_not_before <= now
        ):
            waiting = state.agents.get(lineage.pending_restart_agent)
            lineage.pending_restart_agent = None
            lineage.restart_not_before = None
            if waiting is not None and waiting.state == "unresponsive":
                effects += _restart(state, waiting, now, "3 missed heartbeats (after cooldown)")
    return effects


def _ladder(state: TicketState, agent: Agent, now: datetime) -> list[Effect]:
    missed = agent.missed_beats
    if missed == 1:
        log(state, now, "heartbeat_missed", f"{agent.id} missed a heartbeat", agent_id=agent.id)
        return []
    if missed == 2:
        agent.state = "degraded"
        log(
            state,
            now,
            "agent_degraded",
            f"{agent.id} missed 2 heartbeats in a row",
            agent_id=agent.id,
        )
        return []
    agent.state = "unresponsive"
    log(
        state,
        now,
        "agent_unresponsive",
        f"{agent.id} missed {missed} heartbeats in a row",
        agent_id=agent.id,
    )
    return _restart(state, agent, now, f"{missed} missed heartbeats")


# ---- restarts ------------------------------------------------------------------------------


def lineage_of(state: TicketState, agent: Agent) -> Lineage:
    lineage = state.lineages.get(agent.lineage)
    if lineage is None:
        lineage = Lineage(name=agent.lineage)
        state.lineages[agent.lineage] = lineage
    return lineage


def _restart(
    state: TicketState, agent: Agent, now: datetime, reason: str, *, why: str = "unresponsive"
) -> list[Effect]:
    """Reassign the agent's work, then restart, defer (cooldown) or quarantine it."""
    policy = state.spec.policy.health
    lineage = lineage_of(state, agent)
    recent = [t for t in lineage.restarts if t > now - HOUR]
    if len(recent) >= policy.max_restarts_per_hour:
        # The quarantine's restart_escalation diagnosis is the more specific one: a task that
        # runs out of retries here must not take the one diagnosis slot first.
        _release_tasks(state, agent, now, reason, diagnose=False, why=why)
        return _quarantine(state, agent, lineage, now, reason, len(recent))
    effects: list[Effect] = list(_release_tasks(state, agent, now, reason, why=why))
    cooldown = timedelta(seconds=policy.restart_cooldown_s)
    if lineage.restarts and now - lineage.restarts[-1] < cooldown:
        lineage.pending_restart_agent = agent.id
        lineage.restart_not_before = lineage.restarts[-1] + cooldown
        log(
            state,
            now,
            "restart_deferred",
            f"{agent.id}: restart waits for the {policy.restart_cooldown_s:g} s cooldown of "
            f"{lineage.name} (until {lineage.restart_not_before:%H:%M:%S})",
            agent_id=agent.id,
        )
        return effects
    lineage.restarts.append(now)
    lineage.events += 1
    number = lineage.events
    state.restarts_total += 1
    spec = lineage.spec
    runtime = spec.runtime if spec is not None else "external"
    if spec is None or runtime == "external":
        # Someone else runs this agent: reassign, escalate and ask it to restart itself.
        agent.state = "restarting"
        agent.restart_requested = True
        diagnosis.escalate(
            state,
            now,
            source="external_restart",
            reason=f"external agent {agent.id} is {why} ({reason}); "
            "its tasks were reassigned and it was asked to restart",
            agent_id=agent.id,
        )
        _record(
            state, agent, lineage, number, "asked_to_restart", now, reason=reason, finished=True
        )
        log(
            state,
            now,
            "agent_restart_requested",
            f"{agent.id}: asked to restart itself (restart {number} of {lineage.name})",
            agent_id=agent.id,
        )
        return effects
    agent.state = "restarting"
    _record(
        state,
        agent,
        lineage,
        number,
        "requested",
        now,
        reason=reason,
        old_pid=lineage.process.pid if lineage.process else None,
    )
    log(
        state,
        now,
        "agent_restarting",
        f"{agent.id}: restarting ({reason}; restart {number} of {lineage.name})",
        agent_id=agent.id,
    )
    effects.append(
        RestartAgentProcess(
            agent_id=agent.id,
            lineage=lineage.name,
            number=number,
            spec=spec,
            previous=lineage.process,
            generation=lineage.generation + 1,
        )
    )
    return effects


def restart_agent(state: TicketState, agent: Agent, now: datetime, reason: str) -> list[Effect]:
    """The remedy restart_agent: as for an unresponsive agent, its work goes back to pending
    and the lineage's restart cooldown and hourly limit apply (past it: quarantine)."""
    return _restart(state, agent, now, reason, why="restarted by a diagnosis")


def _quarantine(
    state: TicketState, agent: Agent, lineage: Lineage, now: datetime, reason: str, recent: int
) -> list[Effect]:
    policy = state.spec.policy.health
    why = (
        f"{agent.id} would need restart {recent + 1} within an hour (the limit is "
        f"{policy.max_restarts_per_hour}): quarantined, no new tasks"
    )
    effects = _quarantined(state, agent, lineage, now, reason, why, why, "restart_quarantine")
    effects += diagnosis.request_diagnosis(state, "restart_escalation", now, reason=why)
    return effects


def quarantine_for_behaviour(
    state: TicketState, agent: Agent, now: datetime, reason: str
) -> list[Effect]:
    """The remedy quarantine_agent: an agent that went on misbehaving after an interrupt and
    a restart gets no more tasks and its process is stopped; its tasks go back to pending
    with no retry used (the agent failed, not the tasks), for the agents that can do them.
    A person is told (``behaviour_quarantine``, which does not stop the ticket's healing)
    and may release it (``unstuck release``)."""
    taken = diagnosis.take_back(state, agent, now, f"{agent.id} quarantined")
    why = f"{agent.id} quarantined, no new tasks: {reason}"
    logged = why + (f"; {', '.join(taken)} back to pending" if taken else "")
    lineage = lineage_of(state, agent)
    return _quarantined(state, agent, lineage, now, reason, why, logged, "behaviour_quarantine")


def _quarantined(
    state: TicketState,
    agent: Agent,
    lineage: Lineage,
    now: datetime,
    reason: str,
    why: str,
    logged: str,
    source: EscalationSource,
) -> list[Effect]:
    """The lineage takes no new tasks, a person is told (``source``), its process stops."""
    agent.state = "quarantined"
    lineage.quarantined = True
    log(state, now, "agent_quarantined", logged, agent_id=agent.id)
    diagnosis.escalate(state, now, source=source, reason=why, agent_id=agent.id)
    lineage.events += 1
    _record(
        state,
        agent,
        lineage,
        lineage.events,
        "quarantined",
        now,
        reason=reason,
        finished=True,
        old_pid=lineage.process.pid if lineage.process else None,
    )
    if lineage.process is None:
        return []
    return [StopAgentProcesses((lineage.process,), f"{agent.id} quarantined")]


def _release_tasks(
    state: TicketState,
    agent: Agent,
    now: datetime,
    reason: str,
    *,
    diagnose: bool = True,
    why: str = "unresponsive",
) -> list[Effect]:
    """The agent's tasks go back to pending; the attempt counts against their retries."""
    effects: list[Effect] = []
    retries = state.spec.policy.tasks.max_retries
    mine = state.index().held_or_reviewing(agent.id)  # not every task; in creation order
    for task in sorted((state.tasks[t] for t in mine), key=lambda t: t.seq):
        if task.reviewer == agent.id and task.status == "validation_in_progress":
            task.status = "under_review"  # another validator may take the review
            task.reviewer = None
            task.updated_at = now
            continue
        if task.assigned_agent != agent.id or task.status not in HELD_STATUSES:
            continue
        record_failure(task, f"agent {agent.id} was {why} ({reason})")
        task.assigned_agent = None
        task.updated_at = now
        agent.released_task_ids.append(task.id)
        if task.failures > retries:
            task.status = "failed"
            log(
                state,
                now,
                "task_failed",
                f"{task.id} failed for good: {task.failure_reason}",
                task_id=task.id,
            )
            diagnosis.recovery_task_failed(state, task, now)
            if diagnose:
                effects += diagnosis.request_diagnosis(
                    state, "task_failed", now, reason=f"{task.id}: {task.failure_reason}"
                )
        else:
            task.status = "pending"
            log(
                state,
                now,
                "task_reassigned",
                f"{task.id} back to pending ({task.failures}/{retries} retries used): "
                f"{agent.id} {why}",
                task_id=task.id,
            )
    if agent.released_task_ids:
        state.last_activity_at = now
    return effects


def restart_finished(
    state: TicketState, agent_id: str, number: int, outcome: RestartOutcome, now: datetime
) -> None:
    """The runtime replaced the process: the old agent is gone; the new one registers itself."""
    agent = state.agents.get(agent_id)
    if agent is None:
        return
    lineage = lineage_of(state, agent)
    old_pid = lineage.process.pid if lineage.process is not None else None
    lineage.process = outcome.process
    lineage.generation = outcome.process.generation
    agent.state = "terminated"
    stop = outcome.stop
    _record(
        state,
        agent,
        lineage,
        number,
        "restarted",
        now,
        finished=True,
        graceful=stop.graceful if stop else None,
        forced=stop.forced if stop else None,
        old_pid=old_pid,
        new_pid=outcome.process.pid,
    )
    how = "forced" if stop and stop.forced else "graceful" if stop and stop.graceful else "gone"
    log(
        state,
        now,
        "agent_restarted",
        f"{agent.id} replaced: old pid {old_pid or '-'} ({how}), new pid {outcome.process.pid}",
        agent_id=agent_id,
    )


def restart_failed(
    state: TicketState, agent_id: str, number: int, error: str, now: datetime
) -> None:
    """The runtime could not replace the agent: a person must look."""
    agent = state.agents.get(agent_id)
    if agent is None:
        return
    lineage = lineage_of(state, agent)
    agent.state = "terminated"
    _record(
        state,
        agent,
        lineage,
        number,
        "failed",
        now,
        finished=True,
        old_pid=lineage.process.pid if lineage.process else None,
    )
    diagnosis.escalate(
        state,
        now,
        source="restart_failed",
        reason=f"restart of {agent_id} failed: {error[:300]}",
        agent_id=agent_id,
    )


def agent_spawned(state: TicketState, process: AgentProcess, now: datetime) -> None:
    """A spec agent's first process is running (it registers itself next)."""
    lineage = state.lineages.get(process.agent_name)
    if lineage is None:
        return
    lineage.process = process
    lineage.generation = process.generation
    log(state, now, "agent_spawned", f"{process.agent_name} started (pid {process.pid})")


def _record(
    state: TicketState,
    agent: Agent,
    lineage: Lineage,
    number: int,
    outcome: str,
    now: datetime,
    *,
    reason: str | None = None,
    finished: bool = False,
    graceful: bool | None = None,
    forced: bool | None = None,
    old_pid: int | None = None,
    new_pid: int | None = None,
) -> None:
    """Write (or complete) the ledger row of restart ``number`` of the lineage."""
    key = str(number)
    if reason is not None:
        lineage.restart_reasons[key] = reason
    requested = lineage.restart_requested_at.setdefault(key, now)
    state.outbox.restart_events.append(
        RestartEventRecord(
            id=restart_event_id(state.ticket_id, lineage.name, number),
            ticket_id=state.ticket_id,
            agent_id=agent.id,
            lineage=lineage.name,
            number=number,
            reason=lineage.restart_reasons.get(key, ""),
            runtime=lineage.spec.runtime if lineage.spec is not None else "external",
            outcome=outcome,  # type: ignore[arg-type]
            graceful=graceful,
            forced=forced,
            old_pid=old_pid,
            new_pid=new_pid,
            reassigned_task_ids=list(agent.released_task_ids),
            requested_at=requested,
            finished_at=now if finished else None,
        )
    )


# ---- liveness leases (DESIGN §15) ------------------------------------------------------------
#
# A beat signal costs ~4.5 history events; an activity heartbeat costs none. An agent whose
# beat names a lease queue (agent_client.lease: a worker inside the agent's own process) gets
# a lease: a ``hold_lease`` activity on that queue whose heartbeat timeout is the running
# deadline. While it is scheduled the agent is not on the ticket's timer and sends no beats
# (only changes of its status). When the lease ends, the agent's last sign of life is set
# from how it ended and the usual ladder takes over; its next beat (it resumes beating as soon
# as it loses its lease) offers the queue again. A dead agent is thus found as early as with
# beats: the lease lapses one deadline after its last heartbeat reached the server.

LeaseEnd = Literal["lapsed", "released", "refused", "cancelled"]


def lease_timeout(state: TicketState) -> timedelta:
    """The lease activity's heartbeat (and schedule-to-start) timeout: one running deadline."""
    return timedelta(seconds=state.spec.policy.health.running_deadline_s)


def lease_offered(state: TicketState, agent: Agent, queue: str) -> None:
    """A beat named the agent's lease queue: it gets a lease when it has none (leases_wanted)."""
    agent.lease_queue = queue


def leases_wanted(state: TicketState) -> list[Agent]:
    """Live agents that offered a lease queue and hold no lease."""
    if not state.fleet_v1 or state.status != "open":
        return []
    return [
        a
        for a in state.agents.values()
        if a.lease_queue is not None and not a.lease_held and a.state in LIVE_STATES
    ]


def leases_moot(state: TicketState) -> list[Agent]:
    """Agents holding a lease that must end: the agent left, is restarted, or the ticket ended."""
    return [
        a
        for a in state.agents.values()
        if a.lease_held and (state.status != "open" or a.state not in LIVE_STATES)
    ]


def leases_carried_over(state: TicketState, now: datetime) -> None:
    """A new run holds no lease yet (the last one cancelled its own before continuing as new):
    any marked held are taken as cancelled now, and offered again."""
    for agent in state.agents.values():
        if agent.lease_held:
            lease_ended(state, agent.id, "cancelled", now)


def lease_never_held(state: TicketState, agent_id: str) -> None:
    """A lease the ticket cancelled before its activity was ever scheduled: not held (the
    agent's last sign of life stands; its next beat offers the queue again)."""
    agent = state.agents.get(agent_id)
    if agent is not None and agent.lease_held:
        agent.lease_held = False


def lease_started(state: TicketState, agent: Agent) -> None:
    agent.lease_held = True
    agent.leases += 1


def lease_ended(state: TicketState, agent_id: str, end: LeaseEnd, now: datetime) -> None:
    """The agent's lease ended; set its last sign of life from how.

    ``lapsed``: no heartbeat reached the server for one lease timeout (or the agent never
    took the lease): its last sign of life was that long ago. ``released``: the agent's
    process ended it (it stopped beating or closed its session): alive until now.
    ``refused``: its lease host does not know the agent (its process restarted): no news.
    ``cancelled``: the ticket ended it (continue-as-new, the agent left): alive until now, and
    the ticket offers it a new lease at once if it is still live.
    """
    agent = state.agents.get(agent_id)
    if agent is None or not agent.lease_held:
        return
    agent.lease_held = False
    alive: datetime | None = None
    if end == "lapsed":
        alive = now - lease_timeout(state)
    elif end in ("released", "cancelled"):
        alive = now
    if alive is not None and (agent.last_heartbeat_at is None or alive > agent.last_heartbeat_at):
        agent.last_heartbeat_at = alive
    if end != "cancelled":
        agent.lease_queue = None  # its next beat offers it again


# ---- signs of life, registration and release ------------------------------------------------


def seen(state: TicketState, agent_id: str | None, now: datetime) -> None:
    """An accepted message from the agent is a sign of life."""
    agent = state.agents.get(agent_id or "")
    if agent is None or agent.state not in (*LIVE_STATES, "unresponsive"):
        return
    agent.last_seen_at = now
    _alive_again(state, agent, now)


def heartbeat_received(state: TicketState, agent: Agent, now: datetime) -> None:
    """Called for every accepted heartbeat: the ladder starts over; a release completes."""
    if agent.state == "quarantined":
        if agent.release_deadline is not None and now <= agent.release_deadline:
            agent.release_deadline = None
            agent.state = "idle"
            agent.missed_beats = 0
            lineage_of(state, agent).quarantined = False
            log(
                state,
                now,
                "agent_released",
                f"{agent.id} is back after its release",
                agent_id=agent.id,
            )
        return
    _alive_again(state, agent, now)


def _alive_again(state: TicketState, agent: Agent, now: datetime) -> None:
    if agent.missed_beats == 0 and agent.state != "unresponsive":
        return
    if agent.state in ("degraded", "unresponsive"):
        log(
            state,
            now,
            "agent_recovered",
            f"{agent.id} is alive again after {agent.missed_beats} missed heartbeat(s)",
            agent_id=agent.id,
        )
        agent.state = "idle"
        lineage = state.lineages.get(agent.lineage)
        if lineage is not None and lineage.pending_restart_agent == agent.id:
            lineage.pending_restart_agent = None
            lineage.restart_not_before = None
    agent.missed_beats = 0


def replaces(state: TicketState, name: str) -> Agent | None:
    """The agent a registration under ``name`` replaces (one being restarted), if any."""
    for agent in state.agents.values():
        if agent.name == name and agent.state in ("restarting", "unresponsive"):
            return agent
    return None


def release(
    state: TicketState, msg: ReleaseAgent, now: datetime, *, apply: bool = True
) -> Step[ReleaseReply]:
    """An operator releases a quarantined agent; it must heartbeat within the running deadline."""
    check_operator(state, msg.operator_token)
    if state.status != "open":
        raise Refused("ticket", f"is {state.status}")
    agent = state.agents.get(msg.agent_id)
    if agent is None:
        raise Refused("agent_id", f"unknown agent {msg.agent_id!r}")
    if agent.state != "quarantined":
        raise Refused(
            "agent_id",
            f"{agent.id} is {agent.state}, not quarantined; only a "
            "quarantined agent can be released",
        )
    window = state.spec.policy.health.running_deadline_s
    if not apply:
        return Step(ReleaseReply(agent_id=agent.id, heartbeat_within_s=window))
    agent.release_deadline = now + timedelta(seconds=window)
    log(
        state,
        now,
        "agent_release",
        f"{agent.id} released by {msg.operator}: it must heartbeat within {window:g} s",
        agent_id=agent.id,
    )
    escalations.resolve_quarantine(state, agent.id, now, msg.operator)
    return Step(ReleaseReply(agent_id=agent.id, heartbeat_within_s=window))


#: Runtimes whose agents the ticket starts as processes (through the worker).
PROCESS_RUNTIMES = ("local-process", "command")


def start(state: TicketState) -> list[Effect]:
    """At ticket start: one lineage per spec agent; spawn the local-process ones."""
    local = []
    for spec in state.spec.agents:
        state.lineages.setdefault(spec.name, Lineage(name=spec.name, spec=spec))
        if spec.runtime in PROCESS_RUNTIMES and spec.spawn == "at_start":
            local.append(spec)
    return [SpawnAgentProcesses(tuple(local))] if local else []


def processes(state: TicketState) -> tuple[AgentProcess, ...]:
    return tuple(
        lineage.process for lineage in state.lineages.values() if lineage.process is not None
    )
