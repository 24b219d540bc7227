"""Stuck detection, diagnosis triggers, runaway guards and recovery outcomes (pure).

A ticket is *stuck* when all of these hold (DESIGN §5):

1. the ticket is not finished;
2. it has at least one task;
3. no task is active;
4. no result version is validated;
5. at least ``cooldown_s`` passed since the last diagnosis started (or since the ticket
   started, when there was none: a fresh ticket gets the same grace);
6. at least ``window_s`` passed since the last task activity.

Conditions 1–4 are facts about the state; 5–6 give the *time* at which the ticket becomes
stuck, :func:`stuck_at`. The workflow sleeps on one durable timer until the earliest such
deadline (:func:`next_deadline`) and then calls :func:`tick`: detection happens at the end of
the window, not a poll later.

Other triggers (:data:`models.diagnosis.TRIGGERS`) go through :func:`request_diagnosis`,
which applies the skip rules: never two diagnoses at once, none while a recovery task of an
earlier one is active, and none once 3 consecutive diagnoses failed or 10 ran — then the
ticket escalates to a person instead. ``manual`` skips cooldown, window and recovery-task
rules (an operator decided), but not "one at a time".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from core import escalations
from core.common import (
    Effect,
    Refused,
    SpawnAgentProcesses,
    StartDiagnosis,
    Step,
    add_task,
    blocked_tasks,
    check_operator,
    claimable,
    log,
    moving_tasks,
    validated_version,
    waits_on_dead,
)
from core.state import (
    ACTIVE_STATUSES,
    FEEDBACK_LIMIT,
    HELD_STATUSES,
    NOTES_LIMIT,
    WORKED_STATUSES,
    Agent,
    Behaviour,
    DiagnosisRun,
    Escalation,
    Task,
    TicketState,
)
from models.diagnosis import (
    BEHAVIOUR_SIGNATURES,
    DiagnosisInput,
    DiagnosisReport,
    Recommendation,
    SnapshotAgent,
    SnapshotCreated,
    SnapshotDiagnosis,
    SnapshotPhase,
    SnapshotResult,
    SnapshotSpawnable,
    SnapshotTask,
    TicketSnapshot,
)
from models.ledger import (
    DiagnosticRunRecord,
    diagnostic_run_id,
    escalation_record_id,
)
from models.messages import DiagnoseReply, DiagnoseTicket, DiagnosisView
from models.spec import AgentSpec, boost

RECENT_TASKS = 15


@dataclass(frozen=True)
class Deadline:
    """The next moment the ticket must look at itself, and why (the timer's summary)."""

    at: datetime
    label: str


# ---- detection ---------------------------------------------------------------------------


def stuck_at(state: TicketState) -> datetime | None:
    """When the ticket is (or will be, if nothing happens) stuck; None if it cannot be."""
    if state.status != "open" or not state.tasks:
        return None
    if validated_version(state) is not None:
        return None
    if moving_tasks(state) > 0 and not idle_queue(state):
        return None
    if (
        state.healing_v2
        and any(r.status == "pending_validation" and not r.timeout_reported for r in state.results)
        and any(
            a.kind == "validator" and a.state in ("idle", "running", "spawning", "degraded")
            for a in state.agents.values()
        )
    ):
        return None  # a validator's turn: its own timeout covers a verdict that never comes
    if running_diagnosis(state) is not None:
        return None
    if escalations.waiting_for_person(state):
        return None  # an agent asked a person: the ticket waits for the answer (ask_human)
    if guard_reason(state) is not None and (not state.healing_v2 or guard_escalated(state)):
        # With healing v2 the stuck check still fires once more, to escalate (a spent
        # budget must reach a person, not leave the ticket silently open).
        return None
    policy = state.spec.policy.stuck
    window_end = state.last_activity_at + timedelta(seconds=policy.window_s)
    cooldown_from = state.last_diagnosis_at or state.created_at
    if state.behaviour_v1 and state.stuck_skipped_at is not None:
        # A stuck check whose diagnosis was skipped waits a cooldown before the next one:
        # a deadline left in the past would spin the workflow's loop.
        cooldown_from = max(cooldown_from, state.stuck_skipped_at)
    cooldown_end = cooldown_from + timedelta(seconds=policy.cooldown_s)
    return max(window_end, cooldown_end)


def next_deadline(state: TicketState) -> Deadline | None:
    """The earliest deadline of the ticket (the workflow keeps one timer on it)."""
    at = stuck_at(state)
    if at is None:
        return None
    policy = state.spec.policy.stuck
    window_end = state.last_activity_at + timedelta(seconds=policy.window_s)
    label = (
        f"stuck window {policy.window_s:g}s"
        if at == window_end
        else (f"diagnosis cooldown {policy.cooldown_s:g}s")
    )
    return Deadline(at, label)


def tick(state: TicketState, now: datetime) -> list[Effect]:
    """Handle every deadline that has passed: today, the stuck check."""
    at = stuck_at(state)
    if at is None or at > now:
        return []
    if state.stuck_since is None:
        state.stuck_since = now
    idle = (now - state.last_activity_at).total_seconds()
    why, reason = "no active task, no validated result", f"no task activity for {idle:.0f}s"
    blocked = (
        sorted(blocked_tasks(state), key=lambda t: state.tasks[t].seq) if state.healing_v2 else []
    )
    idle_ones = (
        sorted((t for t in state.tasks.values() if claimable(state, t)), key=lambda t: t.seq)
        if idle_queue(state)
        else []
    )
    if blocked and not idle_ones:
        more = f" and {len(blocked) - 5} more" if len(blocked) > 5 else ""
        shown = ", ".join(blocked[:5]) + more
        why = reason = (
            f"only blocked tasks remain ({shown}: a dependency failed for good or was cancelled)"
        )
    elif idle_ones:
        more = f" and {len(idle_ones) - 5} more" if len(idle_ones) > 5 else ""
        shown = ", ".join(t.id for t in idle_ones[:5]) + more
        why = reason = f"nobody claimed the tasks waiting to be claimed ({shown})"
    log(state, now, "stuck", f"ticket stuck: {why}, idle {idle:.0f}s")
    effects = request_diagnosis(state, "no_result", now, reason=reason)
    if not effects and state.behaviour_v1:
        state.stuck_skipped_at = now
    return effects


def note_activity(state: TicketState) -> None:
    """Work is moving again: the current stuck spell is over."""
    if state.stuck_since is not None and moving_tasks(state) > 0 and not idle_queue(state):
        state.stuck_since = None


def idle_queue(state: TicketState) -> bool:
    """Nobody works on anything, yet a task could be claimed right now (patch
    behaviour-signals): after a whole window of that, the ticket is stuck too — its agents
    are gone, wedged or filtered to other phases, and nobody else would notice."""
    if not state.behaviour_v1:
        return False
    index = state.index()
    if any(index.by_status[s] for s in WORKED_STATUSES):
        return False
    return any(claimable(state, state.tasks[task_id]) for _, task_id in index.pending)


# ---- triggers and guards -----------------------------------------------------------------


def running_diagnosis(state: TicketState) -> DiagnosisRun | None:
    return next((d for d in reversed(state.diagnoses) if d.status == "running"), None)


def active_recovery_task(state: TicketState) -> Task | None:
    return next(
        (
            t
            for t in state.tasks.values()
            if t.diagnosis_run_id is not None and t.status in ACTIVE_STATUSES
        ),
        None,
    )


#: Escalations after which automatic diagnosing stops until a person acts.
GUARD_SOURCES = ("diagnosis_guard", "diagnosis_ladder")


def guard_reason(state: TicketState) -> str | None:
    """Why no more automatic diagnoses may run, or None."""
    if state.healing_v2:
        for e in state.escalations:
            if e.source == "diagnosis_ladder" and not e.resolved:
                return f"escalated to a person ({e.reason[:200]})"
    policy = state.spec.policy.stuck
    if state.consecutive_failed_diagnoses >= policy.max_consecutive_failures:
        return f"{state.consecutive_failed_diagnoses} consecutive diagnoses failed"
    started = sum(1 for d in state.diagnoses[state.budget_from :] if d.status != "skipped")
    if started >= policy.max_runs:
        return f"{started} diagnoses ran (the limit is {policy.max_runs})"
    return None


def guard_escalated(state: TicketState) -> bool:
    """A person was told that automatic diagnosing stopped (and has not acknowledged it)."""
    return any(e.source in GUARD_SOURCES and not e.resolved for e in state.escalations)


def request_diagnosis(
    state: TicketState,
    trigger: str,
    now: datetime,
    *,
    reason: str = "",
    apply: bool = True,
) -> list[Effect]:
    """Start a diagnosis for ``trigger`` if the rules allow it; else skip or escalate.

    ``manual`` raises :class:`Refused` when it cannot run (the operator gets an answer);
    automatic triggers never raise: they are skipped (noted in the timeline) or escalated.
    """
    manual = trigger == "manual"
    if state.status != "open":
        if manual:
            raise Refused("ticket", f"is {state.status}; there is nothing to diagnose")
        return []
    running = running_diagnosis(state)
    if running is not None:
        if manual:
            raise Refused("ticket", f"diagnosis {running.run_id} is still running")
        if apply:
            log(
                state,
                now,
                "diagnosis_skipped",
                f"{trigger}: skipped, diagnosis {running.run_id} is still running",
            )
        return []
    if not manual:
        # An anomaly is about an agent, which may well be looping on a recovery task; a
        # stuck check of an idle queue found nobody working on the recovery task either,
        # for a whole window (other triggers may see the queue idle for an instant only).
        exempt = trigger == "anomaly" or (trigger == "no_result" and idle_queue(state))
        recovery = None if exempt else active_recovery_task(state)
        if recovery is not None:
            if apply:
                log(
                    state,
                    now,
                    "diagnosis_skipped",
                    f"{trigger}: skipped, recovery task {recovery.id} of "
                    f"{recovery.diagnosis_run_id} is still active",
                    task_id=recovery.id,
                )
            return []
        if apply and state.healing_v2:
            # A run still in its verification window when the ticket needs another
            # diagnosis did not clear what it was for: it failed (the ladder sees it).
            for earlier in state.diagnoses:
                if earlier.outcome == "pending" and earlier.verify_by is not None:
                    _end_verification(
                        state, earlier, now, f"the ticket needed another diagnosis ({trigger})"
                    )
        guard = guard_reason(state)
        if guard is not None:
            if apply:
                escalate(
                    state,
                    now,
                    source="diagnosis_guard",
                    reason=f"no more automatic diagnoses: {guard}; {trigger}: {reason}",
                )
            return []
    if not apply:
        return []
    number = len(state.diagnoses) + 1
    run_id = diagnostic_run_id(state.ticket_id, number)
    counts: dict[str, int] = dict(Counter(str(t.status) for t in state.tasks.values()))
    idle = max(0.0, (now - state.last_activity_at).total_seconds())
    run = DiagnosisRun(
        run_id=run_id,
        number=number,
        trigger=trigger,
        reason=reason,
        started_at=now,
        counts_at_trigger=counts,
        idle_seconds=idle,
    )
    state.diagnoses.append(run)
    state.last_diagnosis_at = now
    _record_run(state, run)
    log(
        state,
        now,
        "diagnosis_started",
        f"{run_id} started ({trigger}){': ' + reason if reason else ''}",
    )
    return [
        StartDiagnosis(
            DiagnosisInput(
                ticket_id=state.ticket_id,
                run_id=run_id,
                number=number,
                trigger=trigger,  # type: ignore[arg-type]
                reason=reason,
                snapshot=snapshot(state, now),
                history_window_min=state.spec.policy.stuck.history_window_min,
                idle_seconds=idle,
            )
        )
    ]


def escalate(
    state: TicketState,
    now: datetime,
    *,
    source: str,
    reason: str,
    agent_id: str | None = None,
    diagnosis_run_id: str | None = None,
    question: str | None = None,
    task_id: str | None = None,
) -> Escalation | None:
    """Hand a problem to a person, at the severity the policy gives its source; one
    unresolved escalation per source and subject (each question of an agent is its own)."""
    if question is None:
        for existing in state.escalations:
            if (
                not existing.resolved
                and existing.source == source
                and existing.agent_id == agent_id
            ):
                return None
    key = f"{len(state.escalations) + 1}"
    severity = escalations.severity_of(state, source)
    escalation = Escalation(
        id=escalation_record_id(state.ticket_id, source, key),
        severity=severity,
        source=source,
        reason=reason,
        created_at=now,
        agent_id=agent_id,
        diagnosis_run_id=diagnosis_run_id,
        question=question,
        task_id=task_id,
    )
    state.escalations.append(escalation)
    escalations.queue(state, escalation, "trigger", now)
    state.outbox.escalations.append(escalations.ledger_record(state, escalation))
    log(state, now, "escalated", f"{severity} escalated to a person: {reason}", agent_id=agent_id)
    return escalation


# ---- the diagnosis finishes --------------------------------------------------------------


def diagnosis_finished(
    state: TicketState,
    report: DiagnosisReport,
    now: datetime,
    effects: list[Effect] | None = None,
) -> list[str]:
    """Apply the run's remedies: recovery tasks (priority boosted one level, linked to the
    run), replacements, agents to spawn (appended to ``effects``), escalations. Returns the
    ids of the tasks created."""
    run = _run(state, report.run_id)
    if run is None or run.status != "running":
        return []
    last_phase = state.spec.phases[-1].name
    phases = {p.name for p in state.spec.phases}
    created: list[str] = []
    # Condition "unblocked": the tasks waiting directly on a failed or cancelled one.
    blocked_before = [t.id for t in state.tasks.values() if waits_on_dead(state, t)]
    to_people: list[str] = []
    agents_acted_on: list[str] = []
    if state.status == "open":
        for rec in report.plan.tasks:
            if rec.remedy == "escalate":
                why = f"{rec.title}: {rec.description}" if rec.description else rec.title
                to_people.append(why)
                continue
            if rec.remedy in (
                "interrupt_agent",
                "restart_agent",
                "quarantine_agent",
                "reassign_task",
                "cancel_tasks",
            ):
                done = _act(state, rec, run.run_id, now, effects)
                if done is not None:
                    run.acted.append(done)
                    if rec.agent and rec.remedy != "cancel_tasks":
                        agents_acted_on.append(rec.agent)
                continue
            if rec.remedy == "retry_task":
                retried = _retry(state, rec.task_id, run.run_id, now)
                if retried is not None:
                    created.append(retried.id)  # the run follows it like a recovery task
                continue
            if rec.remedy == "spawn_agent":
                spawned = _spawn_on_demand(state, rec.agent, run.run_id, now)
                if spawned is not None:
                    run.spawned.append(spawned.name)
                    if effects is not None:
                        effects.append(SpawnAgentProcesses((spawned,)))
                continue
            task = add_task(
                state,
                now,
                key=None,
                phase=rec.phase if rec.phase in phases else last_phase,
                title=rec.title,
                description=rec.description,
                type=rec.type,
                priority=boost(rec.priority),
                depends_on=[],
                validation=False,
                created_by=run.run_id,
            )
            task.diagnosis_run_id = run.run_id
            created.append(task.id)
            if rec.remedy == "replace_task" and rec.replaces is not None:
                _replace(state, rec.replaces, task, now)
    run.status = "completed"
    run.finished_at = now
    run.task_ids = created
    run.plan = [rec.key() for rec in report.plan.tasks]
    run.outcome = "pending" if created or run.spawned or run.acted else None
    nothing_applied = (
        state.healing_v2
        and state.status == "open"
        and not (created or run.spawned or run.acted or to_people)
    )
    run.hypotheses = list(report.hypotheses.hypotheses)
    if state.healing_v2 and (created or run.spawned or run.acted):
        signature = run.hypotheses[0].signature if run.hypotheses else None
        run.condition = condition_for(run.trigger, signature, behaviour=state.behaviour_v1)
        if run.condition == "unblocked":
            run.subjects = blocked_before
        elif run.condition == "calm":
            run.subjects = agents_acted_on or _anomalous(state)
        elif run.condition == "quiet":
            hour_ago = now - timedelta(hours=1)
            run.subjects = [
                name
                for name, lineage in state.lineages.items()
                if lineage.quarantined or sum(1 for t in lineage.restarts if t > hour_ago) >= 2
            ]
    run.generator = report.hypotheses.generator
    run.evidence_summary = report.evidence_summary
    if created:
        state.last_activity_at = now
    if to_people:
        escalate(
            state,
            now,
            source="diagnosis_ladder",
            reason=f"{run.run_id}: " + "; ".join(to_people),
            diagnosis_run_id=run.run_id,
        )
    _record_run(state, run)
    top = run.hypotheses[0].statement if run.hypotheses else "no hypothesis"
    log(
        state,
        now,
        "diagnosis_completed",
        f"{run.run_id}: {top}; recovery tasks {', '.join(created) or 'none'}",
    )
    if nothing_applied:  # every remedy was skipped: it cannot help, and must not loop
        _failed(state, run, now, "none of its remedies could be applied")
    return created


def _act(
    state: TicketState,
    rec: Recommendation,
    run_id: str,
    now: datetime,
    effects: list[Effect] | None,
) -> str | None:
    """Apply a remedy that acts on agents or tasks; what it did, or None when skipped."""
    if rec.remedy == "cancel_tasks":
        return _cancel(state, rec.task_ids, rec.description or rec.title, run_id, now)
    if rec.remedy == "reassign_task":
        return _reassign(state, rec.task_id, run_id, now)
    agent = state.agents.get(rec.agent or "")
    if agent is None or agent.state in ("terminated", "restarting", "quarantined"):
        why = "no such agent" if agent is None else f"it is {agent.state}"
        log(state, now, "remedy_skipped", f"{run_id}: {rec.remedy} {rec.agent}: {why}")
        return None
    if rec.remedy == "interrupt_agent":
        feedback = f"{run_id}: {rec.description or rec.title}"
        taken = _take_back(state, agent, now, f"interrupted by {run_id}")
        agent.interrupted = [*agent.interrupted, *taken][-10:]
        agent.feedback = [*agent.feedback, feedback[:2000]][-FEEDBACK_LIMIT:]
        behaviour_reset(agent, now)
        log(
            state,
            now,
            "agent_interrupted",
            f"{agent.id} interrupted by {run_id}"
            + (f"; {', '.join(taken)} back to pending" if taken else "")
            + f"; feedback: {(rec.description or rec.title)[:200]}",
            agent_id=agent.id,
        )
        return f"interrupted {agent.id}"
    from core import health  # core.health builds on this module

    behaviour_reset(agent, now)
    if rec.remedy == "quarantine_agent":
        quarantine = health.quarantine_for_behaviour(state, agent, now, f"{run_id}: {rec.title}")
        if effects is not None:
            effects.extend(quarantine)
        return f"quarantined {agent.id}"
    restart = health.restart_agent(state, agent, now, f"restarted by {run_id}: {rec.title}")
    if effects is not None:
        effects.extend(restart)
    return f"restarted {agent.id}"


def behaviour_reset(agent: Agent, now: datetime) -> None:
    """A remedy acted on the agent: its behaviour signals start afresh (core.behaviour)."""
    agent.behaviour = Behaviour(progress_at=now)


def _take_back(state: TicketState, agent: Agent, now: datetime, why: str) -> list[str]:
    """The agent's held tasks go back to pending (no retry used), its reviews to the queue."""
    taken = []
    mine = state.index().held_or_reviewing(agent.id)  # not every task; in creation order
    for task in sorted((state.tasks[t] for t in mine), key=lambda t: t.seq):
        if task.reviewer == agent.id and task.status == "validation_in_progress":
            task.status = "under_review"  # any validator may review it again, this one too
            task.reviewer = None
            task.updated_at = now
        elif task.assigned_agent == agent.id and task.status in HELD_STATUSES:
            task.status = "pending"
            task.assigned_agent = None
            task.claimed_at = None
            task.notes = [*task.notes, why][-NOTES_LIMIT:]
            task.updated_at = now
            taken.append(task.id)
    if taken:
        state.last_activity_at = now
    return taken


#: The agent's held tasks back to the queue, no retry used (an interrupt, an agent leaving).
take_back = _take_back


def _reassign(state: TicketState, task_id: str | None, run_id: str, now: datetime) -> str | None:
    """The remedy reassign_task: a held task back to pending, away from its holder."""
    task = state.tasks.get(task_id or "")
    holder = state.agents.get(task.assigned_agent or "") if task is not None else None
    if task is None or holder is None or task.status not in HELD_STATUSES:
        why = "no such task" if task is None else f"it is {task.status}, held by nobody"
        log(state, now, "remedy_skipped", f"{run_id}: reassign_task {task_id}: {why}")
        return None
    task.status = "pending"
    task.assigned_agent = None
    task.claimed_at = None
    task.avoid = [*task.avoid, holder.lineage or holder.id][-10:]
    task.notes = [*task.notes, f"reassigned by {run_id}, away from {holder.id}"][-NOTES_LIMIT:]
    task.updated_at = now
    state.last_activity_at = now
    holder.interrupted = [*holder.interrupted, task.id][-10:]
    log(
        state,
        now,
        "task_reassigned",
        f"{task.id} taken from {holder.id} by {run_id}, back to pending for another agent",
        agent_id=holder.id,
        task_id=task.id,
    )
    return f"reassigned {task.id}"


def _cancel(
    state: TicketState, task_ids: list[str], why: str, run_id: str, now: datetime
) -> str | None:
    """The remedy cancel_tasks: open tasks nobody works on are cancelled (kept, visible)."""
    cancelled, skipped = [], []
    waited_on = {
        d for t in state.tasks.values() if t.status in ACTIVE_STATUSES for d in t.depends_on
    }
    for task_id in task_ids:
        task = state.tasks.get(task_id)
        if (
            task is None
            or task.status not in ("pending", "needs_work")
            or task.assigned_agent
            or task_id in waited_on  # cancelling it would block work that waits on it
        ):
            skipped.append(task_id)
            continue
        task.status = "cancelled"
        task.failure_reason = f"cancelled by {run_id}: {why[:200]}"
        task.updated_at = now
        cancelled.append(task_id)
    if skipped:
        log(
            state,
            now,
            "remedy_skipped",
            f"{run_id}: cancel_tasks left {len(skipped)} task(s) that are held, finished, "
            f"waited on or unknown: {', '.join(skipped[:8])}",
        )
    if not cancelled:
        return None
    state.last_activity_at = now
    shown = ", ".join(cancelled[:8]) + (
        f" and {len(cancelled) - 8} more" if len(cancelled) > 8 else ""
    )
    log(state, now, "tasks_cancelled", f"{run_id} cancelled {shown}: {why[:200]}")
    return f"cancelled {len(cancelled)} tasks"


def _anomalous(state: TicketState) -> list[str]:
    return [a.id for a in state.agents.values() if a.behaviour.anomaly_since is not None]


def _retry(state: TicketState, task_id: str | None, run_id: str, now: datetime) -> Task | None:
    """The remedy retry_task: a task that failed for good goes back to pending, with fresh
    retries; the tasks waiting on it keep waiting, now for something that can happen."""
    task = state.tasks.get(task_id or "")
    if task is None or task.status not in ("failed", "cancelled"):
        why = "no such task" if task is None else f"it is {task.status}"
        log(state, now, "remedy_skipped", f"{run_id}: retry_task {task_id}: {why}")
        return None
    before = task.status
    task.status = "pending"
    task.failures = 0
    task.iteration = 0  # fresh review iterations too
    task.consecutive_review_failures = 0
    task.assigned_agent = None
    task.diagnosis_run_id = run_id
    task.updated_at = now
    state.last_activity_at = now
    log(
        state,
        now,
        "task_retried",
        f"{task.id} ({before}) back to pending with fresh retries by {run_id}"
        + (f"; it failed with: {task.failure_reason[:200]}" if task.failure_reason else ""),
        task_id=task.id,
    )
    return task


def _spawn_on_demand(
    state: TicketState, name: str | None, run_id: str, now: datetime
) -> AgentSpec | None:
    """The spec agent ``name`` (spawn: on_demand) to start, if it exists and is not running."""
    spec = next((a for a in state.spec.agents if a.name == name), None)
    lineage = state.lineages.get(name or "")
    if spec is None or spec.spawn != "on_demand" or lineage is None:
        log(state, now, "remedy_skipped", f"{run_id}: spawn_agent {name!r}: no on-demand agent")
        return None
    if lineage.process is not None or lineage.quarantined:
        state_now = "quarantined" if lineage.quarantined else "running"
        log(state, now, "remedy_skipped", f"{run_id}: spawn_agent {name!r}: it is {state_now}")
        return None
    log(state, now, "agent_spawn_requested", f"{run_id}: starting on-demand agent {name!r}")
    return spec


def _replace(state: TicketState, old_id: str, new: Task, now: datetime) -> None:
    """The remedy replace_task: ``new`` takes over the dependants of ``old_id``.

    Only a task that failed for good or was cancelled is replaced (anything else may still
    finish); dependants that already finished or failed keep their history as it is.
    """
    old = state.tasks.get(old_id)
    if old is None or old.status not in ("failed", "cancelled"):
        log(
            state,
            now,
            "remedy_skipped",
            f"{new.id} does not replace {old_id}: "
            + ("no such task" if old is None else f"it is {old.status}"),
            task_id=new.id,
        )
        return
    moved = []
    for task in state.tasks.values():
        if old_id in task.depends_on and task.status in ACTIVE_STATUSES:
            task.depends_on = [new.id if d == old_id else d for d in task.depends_on]
            task.updated_at = now
            moved.append(task.id)
    new.replaces = old_id
    new.validation = old.validation  # reviewed work stays reviewed
    log(
        state,
        now,
        "task_replaced",
        f"{new.id} replaces {old.status} {old_id}"
        + (f"; {', '.join(moved)} now wait on {new.id}" if moved else ""),
        task_id=new.id,
    )


def diagnosis_failed(state: TicketState, run_id: str, error: str, now: datetime) -> None:
    """The diagnosis itself failed: it counts as a failed diagnosis."""
    run = _run(state, run_id)
    if run is None or run.status != "running":
        return
    run.status = "failed"
    run.outcome = "failed"
    run.finished_at = now
    run.error = error[:2000]
    state.consecutive_failed_diagnoses += 1
    _record_run(state, run)
    log(state, now, "diagnosis_failed", f"{run_id} failed: {error[:200]}")
    _escalate_if_guarded(state, now, run_id)


def recovery_task_done(state: TicketState, task: Task, now: datetime) -> None:
    """A completed recovery task resets the failure count; its run recovered the ticket.

    With healing v2 a done task is not yet a success: the run recovered the ticket only
    when its condition cleared (see :func:`settle_runs`).
    """
    if task.diagnosis_run_id is None:
        return
    run = _run(state, task.diagnosis_run_id)
    if state.healing_v2 and run is not None and run.condition is not None:
        settle_runs(state, now)
        return
    state.consecutive_failed_diagnoses = 0
    if run is not None and run.outcome != "recovered":
        run.outcome = "recovered"
        _record_run(state, run)
        log(
            state,
            now,
            "diagnosis_recovered",
            f"{run.run_id}: recovery task {task.id} done",
            task_id=task.id,
        )


def result_validated(state: TicketState, now: datetime) -> None:
    """A validated result is what every diagnosis was for: runs still pending recovered."""
    for run in state.diagnoses:
        if run.outcome == "pending":
            run.outcome = "recovered"
            _record_run(state, run)
            log(
                state,
                now,
                "diagnosis_recovered",
                f"{run.run_id}: the ticket's result was validated",
            )
    state.consecutive_failed_diagnoses = 0


def recovery_task_failed(state: TicketState, task: Task, now: datetime) -> None:
    """When every task of a run failed, the run failed: one more consecutive failure."""
    if task.diagnosis_run_id is None:
        return
    run = _run(state, task.diagnosis_run_id)
    if run is None or run.outcome != "pending":
        return
    if state.healing_v2 and run.condition is not None:
        settle_runs(state, now)
        return
    statuses = [state.tasks[t].status for t in run.task_ids if t in state.tasks]
    if statuses and all(s in ("failed", "cancelled") for s in statuses):
        _failed(state, run, now, "all its recovery tasks failed")


# ---- verified healing (healing v2) ----------------------------------------------------------

#: What a diagnosis must achieve to count as a success, by condition.
CONDITIONS: dict[str, str] = {
    "result_submitted": "a result version is submitted",
    "unblocked": "no task waits on a failed or cancelled one",
    "validator_verdict": "a validator gives a verdict",
    "review_passed": "a review passes",
    "moving": "work moves again (a task in progress, or a result submitted)",
    "calm": "the agents it acted on stay below the anomaly threshold",
    "quiet": "the restarting agents run a restart cooldown x 3 without a restart, unquarantined",
}


def condition_for(trigger: str, signature: str | None, *, behaviour: bool = True) -> str:
    """The condition a diagnosis must clear, from its trigger and its top signature
    (``behaviour``: the patch behaviour-signals; runs before it keep the old mapping)."""
    if behaviour and (
        signature in BEHAVIOUR_SIGNATURES or (trigger == "anomaly" and signature == "other")
    ):
        return "calm"
    if behaviour and (signature == "crash_looping_agent" or trigger == "restart_escalation"):
        return "quiet"
    if signature in ("missing_result_submission", "premature_completion"):
        return "result_submitted"
    if signature == "dependency_deadlock":
        return "unblocked"
    if signature == "validator_unavailable" or trigger == "validation_timeout":
        return "validator_verdict"
    if signature == "validation_loop" or trigger == "repeated_validation_failures":
        return "review_passed"
    return "moving"


def condition_cleared(state: TicketState, run: DiagnosisRun, *, final: bool = False) -> bool:
    """Whether what ``run`` was for has happened (a validated result clears every one).

    ``calm`` is judged only at the end of its window (``final``): an agent told to stop
    looping is calm at once, and must stay calm for the whole window.
    """
    if validated_version(state) is not None:
        return True
    since = run.started_at
    submitted = any(r.submitted_at >= since for r in state.results)
    kind = run.condition
    if kind == "calm":
        return final and _calm(state, run)
    if kind == "quiet":
        return final and _quiet(state, run)
    if kind == "result_submitted":
        return submitted
    if kind == "unblocked" and run.subjects:  # every task blocked then is claimable or done
        return all(_claimable_or_beyond(state, t) for t in run.subjects)
    reviews = (r for t in state.tasks.values() for r in t.reviews if r.at >= since)
    if kind == "validator_verdict":
        verdicts = (r for r in state.results if r.verdict_at is not None and r.verdict_at >= since)
        return any(True for _ in reviews) or any(True for _ in verdicts)
    if kind == "review_passed":
        return any(r.passed for r in reviews)
    # Moving: since the run's remedies were applied, a task it did not create was claimed,
    # worked on or finished (a task merely pending, e.g. a rewired dependant, is not movement).
    own = set(run.task_ids)
    after = run.finished_at or run.started_at
    moved = any(
        t.id not in own
        and t.updated_at > after
        and t.status in ("assigned", "running", "under_review", "validation_in_progress", "done")
        for t in state.tasks.values()
    )
    return moved or submitted


def _calm(state: TicketState, run: DiagnosisRun) -> bool:
    """No agent of the lineages the run acted on is (or was since) anomalous."""
    threshold = state.spec.policy.anomaly.threshold
    lineages = {(a.lineage or a.id) for a in state.agents.values() if a.id in run.subjects} or set(
        run.subjects
    )
    after = run.finished_at or run.started_at
    if any(state.lineages[n].quarantined for n in lineages if n in state.lineages):
        return False  # calm because it may not work at all is no cure
    for agent in state.agents.values():
        if (agent.lineage or agent.id) not in lineages:
            continue
        b = agent.behaviour
        if b.score >= threshold or (b.anomaly_since is not None and b.anomaly_reported):
            return False
        if b.anomaly_since is not None and b.anomaly_since >= after:
            return False
    return True


def _quiet(state: TicketState, run: DiagnosisRun) -> bool:
    """The lineages that were restarting are out of quarantine and were not restarted since
    the run's remedies were applied."""
    after = run.finished_at or run.started_at
    for name in run.subjects:
        lineage = state.lineages.get(name)
        if lineage is None:
            continue
        if lineage.quarantined or any(t > after for t in lineage.restarts):
            return False
    return True


def _claimable_or_beyond(state: TicketState, task_id: str) -> bool:
    task = state.tasks.get(task_id)
    if task is None or task.status in ("failed", "cancelled"):
        return False
    return task.status != "pending" or claimable(state, task)  # claimed, reviewed, done


def _verify_seconds(state: TicketState, run: DiagnosisRun) -> float:
    """How long a run's condition has to clear once its remedies are done."""
    policy = state.spec.policy
    if run.condition == "calm":
        return policy.anomaly.window_s or policy.stuck.window_s
    if run.condition == "quiet":  # a full restart cooldown x 3 without a restart
        return max(policy.stuck.window_s, 3 * policy.health.restart_cooldown_s)
    return policy.stuck.window_s


def settle_runs(state: TicketState, now: datetime) -> None:
    """After any change: runs whose condition cleared recovered the ticket; a run whose
    remedies all finished while its condition persists is verified for one stuck window.

    Pure and idempotent; only runs with a condition (healing v2) are looked at.
    """
    if not state.healing_v2 or state.status != "open":
        return
    for run in state.diagnoses:
        if run.outcome != "pending" or run.condition is None:
            continue
        if condition_cleared(state, run):
            _recovered(state, run, now, f"{CONDITIONS[run.condition]}: done")
            continue
        if run.verify_by is not None:
            continue
        statuses = [state.tasks[t].status for t in run.task_ids if t in state.tasks]
        if not statuses and (run.spawned or run.acted) and run.finished_at is not None:
            # Only agents were started or acted on: they have one window to make the
            # difference, a validator as long as any validator has for a verdict.
            seconds = _verify_seconds(state, run)
            if run.condition == "validator_verdict":
                seconds = max(seconds, state.spec.policy.validation.validator_timeout_s)
            run.verify_by = run.finished_at + timedelta(seconds=seconds)
            continue
        if statuses and all(st in ("failed", "cancelled") for st in statuses):
            _failed(state, run, now, "all its recovery tasks failed")
        elif statuses and all(st in ("done", "failed", "cancelled") for st in statuses):
            window = timedelta(seconds=_verify_seconds(state, run))
            run.verify_by = now + window
            log(
                state,
                now,
                "diagnosis_verifying",
                f"{run.run_id}: its recovery tasks are finished; it succeeds if "
                f"{CONDITIONS[run.condition]} within {window.total_seconds():g} s",
            )


def verification_deadline(state: TicketState) -> Deadline | None:
    """The earliest moment a run's verification window ends (on the ticket's one timer)."""
    due = [
        run.verify_by
        for run in state.diagnoses
        if run.outcome == "pending" and run.verify_by is not None
    ]
    if not due or state.status != "open":
        return None
    return Deadline(min(due), "verify diagnosis outcome")


def verify_tick(state: TicketState, now: datetime) -> None:
    """Runs whose verification window ended with the condition still there failed."""
    if state.status != "open":
        return
    for run in state.diagnoses:
        if run.outcome == "pending" and run.verify_by is not None and run.verify_by <= now:
            what = "its recovery tasks finished" if run.task_ids else "its window ended"
            _end_verification(
                state, run, now, f"{what} but not {CONDITIONS[run.condition or 'moving']}"
            )


def _end_verification(state: TicketState, run: DiagnosisRun, now: datetime, why: str) -> None:
    """The verification window of ``run`` is over: recovered if its condition cleared."""
    if condition_cleared(state, run, final=True):
        _recovered(state, run, now, f"{CONDITIONS[run.condition or 'moving']}: done")
    else:
        _failed(state, run, now, why)


def _failed(state: TicketState, run: DiagnosisRun, now: datetime, why: str) -> None:
    run.outcome = "failed"
    run.verify_by = None
    state.consecutive_failed_diagnoses += 1
    _record_run(state, run)
    log(
        state,
        now,
        "diagnosis_ineffective",
        f"{run.run_id}: {why} ({state.consecutive_failed_diagnoses} consecutive)",
    )
    _escalate_if_guarded(state, now, run.run_id)


def _recovered(state: TicketState, run: DiagnosisRun, now: datetime, why: str) -> None:
    run.outcome = "recovered"
    run.verify_by = None
    state.consecutive_failed_diagnoses = 0
    _record_run(state, run)
    log(state, now, "diagnosis_recovered", f"{run.run_id}: {why}")


def _escalate_if_guarded(state: TicketState, now: datetime, run_id: str) -> None:
    guard = guard_reason(state)
    if guard is not None:
        escalate(
            state,
            now,
            source="diagnosis_guard",
            reason=f"no more automatic diagnoses: {guard}",
            diagnosis_run_id=run_id,
        )


def _run(state: TicketState, run_id: str) -> DiagnosisRun | None:
    return next((d for d in state.diagnoses if d.run_id == run_id), None)


def _record_run(state: TicketState, run: DiagnosisRun) -> None:
    state.outbox.diagnostic_runs.append(
        DiagnosticRunRecord(
            id=run.run_id,
            ticket_id=state.ticket_id,
            number=run.number,
            trigger=run.trigger,  # type: ignore[arg-type]
            reason=run.reason,
            status=run.status,
            outcome=run.outcome,
            counts_at_trigger=dict(run.counts_at_trigger),
            idle_seconds=run.idle_seconds,
            evidence_summary=run.evidence_summary,
            hypotheses=[h.model_dump(mode="json") for h in run.hypotheses],
            generator=run.generator,
            created_task_ids=list(run.task_ids),
            started_at=run.started_at,
            finished_at=run.finished_at,
        )
    )


# ---- the snapshot a diagnosis starts from -------------------------------------------------


def snapshot(state: TicketState, now: datetime) -> TicketSnapshot:
    """The ticket as evidence: counts, the last 15 tasks, problem tasks, agents, results."""
    by_status = Counter(t.status for t in state.tasks.values())
    by_phase: dict[str, dict[str, int]] = {p.name: {} for p in state.spec.phases}
    for task in state.tasks.values():
        phase = by_phase.setdefault(task.phase, {})
        phase[task.status] = phase.get(task.status, 0) + 1
    recent = sorted(state.tasks.values(), key=lambda t: (t.updated_at, t.seq))[-RECENT_TASKS:]
    problems = [
        t
        for t in state.tasks.values()
        if t.status == "failed" or t.failures > 0 or waits_on_dead(state, t)
    ][-RECENT_TASKS:]
    return TicketSnapshot(
        ticket_id=state.ticket_id,
        title=state.spec.title,
        goal=state.spec.goal,
        result_criteria=state.spec.criteria_text(),
        status=state.status,
        phases=[
            SnapshotPhase(
                name=p.name,
                required=p.required,
                description=p.description,
                done_definitions=list(p.done_definitions),
            )
            for p in state.spec.phases
        ],
        counts_by_status=dict(sorted(by_status.items())),
        counts_by_phase=by_phase,
        total_tasks=len(state.tasks),
        recent_tasks=[_snapshot_task(t) for t in reversed(recent)],
        problem_tasks=[_snapshot_task(t) for t in problems],
        agents=[_snapshot_agent(state, a, now) for a in state.agents.values()],
        claimable=[t.id for t in state.tasks.values() if claimable(state, t)][:20],
        spawnable=[
            SnapshotSpawnable(
                name=spec.name,
                kind=spec.kind,
                running=(lineage := state.lineages.get(spec.name)) is not None
                and lineage.process is not None,
            )
            for spec in state.spec.agents
            if spec.spawn == "on_demand"
        ],
        results=[
            SnapshotResult(
                version=r.version,
                agent_id=r.agent_id,
                status=r.status,
                preview=r.preview,
                feedback=r.feedback,
                validator_id=r.validator_id,
                submitted_at=r.submitted_at,
            )
            for r in state.results
        ],
        diagnoses=[
            SnapshotDiagnosis(
                run_id=d.run_id,
                trigger=d.trigger,
                status=d.status,
                outcome=d.outcome,
                started_at=d.started_at,
                top_hypothesis=d.hypotheses[0].statement if d.hypotheses else None,
                top_signature=d.hypotheses[0].signature if d.hypotheses else None,
                task_ids=list(d.task_ids),
                plan=list(d.plan),
                condition=d.condition,
            )
            for d in state.diagnoses
        ],
        validated_version=validated_version(state),
        last_activity_at=state.last_activity_at,
        taken_at=now,
    )


def _snapshot_agent(state: TicketState, agent: Agent, now: datetime) -> SnapshotAgent:
    from core import behaviour  # core.behaviour builds on this module

    lineage = state.lineages.get(agent.lineage)
    spec = lineage.spec if lineage is not None else None
    score = behaviour.score(state, agent, now) if state.behaviour_v1 else None
    return SnapshotAgent(
        id=agent.id,
        name=agent.name,
        kind=agent.kind,
        state=agent.state,
        last_heartbeat_at=agent.last_heartbeat_at,
        restarts=len(lineage.restarts) if lineage is not None else 0,
        tasks=[
            t.id
            for t in state.tasks.values()
            if t.assigned_agent == agent.id and t.status in HELD_STATUSES
        ],
        lineage=agent.lineage,
        runtime=spec.runtime if spec is not None else "external",
        anomaly=score.score if score is not None else 0.0,
        signals=score.explain() if score is not None else [],
        anomaly_signature=score.signature if score is not None else None,
        notes=[f"{m.task_id}: {m.text}" for m in agent.behaviour.notes],
        created_last_minute=len(behaviour.recent_creates(agent, now)),
        created_open=[
            SnapshotCreated(id=t.id, title=t.title, phase=t.phase)
            for t in state.tasks.values()
            if t.created_by == agent.id
            and t.status == "pending"
            and t.created_at > now - behaviour.MINUTE
        ][:200],
    )


def _snapshot_task(task: Task) -> SnapshotTask:
    return SnapshotTask(
        id=task.id,
        phase=task.phase,
        title=task.title,
        type=task.type,
        status=task.status,
        priority=task.priority,
        depends_on=list(task.depends_on),
        assigned_agent=task.assigned_agent,
        attempt=task.attempt,
        failures=task.failures,
        failure_reason=task.failure_reason,
        failure_reasons=list(task.failure_reasons),
        result_preview=task.result_preview,
        notes=list(task.notes[-5:]),
        created_by=task.created_by,
        diagnosis_run_id=task.diagnosis_run_id,
        updated_at=task.updated_at,
    )


def manual(
    state: TicketState, msg: DiagnoseTicket, now: datetime, *, apply: bool = True
) -> Step[DiagnoseReply]:
    """An operator asks for a diagnosis now: no cooldown, no stuck window."""
    check_operator(state, msg.operator_token)
    effects = request_diagnosis(
        state, "manual", now, reason=f"{msg.operator}: {msg.reason}", apply=apply
    )
    run_id = effects[0].input.run_id if effects else ""  # type: ignore[union-attr]
    return Step(DiagnoseReply(run_id=run_id, trigger="manual"), effects)


def diagnosis_view(run: DiagnosisRun) -> DiagnosisView:
    return DiagnosisView(
        run_id=run.run_id,
        number=run.number,
        trigger=run.trigger,
        reason=run.reason,
        status=run.status,
        outcome=run.outcome,
        started_at=run.started_at.isoformat(),
        finished_at=run.finished_at.isoformat() if run.finished_at else None,
        idle_seconds=run.idle_seconds,
        counts_at_trigger=dict(run.counts_at_trigger),
        task_ids=list(run.task_ids),
        generator=run.generator,
        hypotheses=[h.model_dump(mode="json") for h in run.hypotheses],
        evidence_summary=run.evidence_summary,
        error=run.error,
    )


def display_status(state: TicketState) -> str:
    """The status people filter on: open, stuck, diagnosing, escalated, completed, cancelled."""
    if state.status != "open":
        return state.status
    if running_diagnosis(state) is not None:
        return "diagnosing"
    if any(not e.resolved for e in state.escalations) and guard_reason(state) is not None:
        return "escalated"
    if state.stuck_since is not None:
        return "stuck"
    return "open"
