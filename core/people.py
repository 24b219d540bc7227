"""What people do with escalations, and agents asking them (DESIGN §14).

* ``ask_human``: an agent asks a person. The question is an escalation (source
  ``agent_question``, SEV-3 by default) delivered like any other; while it is open the ticket
  waits instead of counting as stuck, and the asker is not stalled.
* ``ack``: a person has the escalation (the incident stops paging; nothing else changes).
* ``resolve``: the escalation is dealt with. The note reaches the agents: a question's asker
  gets it as the answer in its inbox; otherwise every live agent gets it as feedback (and,
  ``as_task``, as a high-priority task). Diagnosing resumes with a fresh budget.
"""

from __future__ import annotations

from datetime import datetime

from core import diagnosis, escalations
from core.common import Refused, Step, add_task, check_operator, current_phase, log
from core.state import FEEDBACK_LIMIT, HELD_STATUSES, Escalation, HumanAnswer, TicketState
from core.ticket import _authenticate, _cached, _remember, _reply_key, _require_open
from models.messages import (
    AcknowledgeEscalation,
    AskHuman,
    AskReply,
    EscalationView,
    ResolveEscalation,
)


def _escalations_on(state: TicketState) -> None:
    if not state.escalations_v1:
        raise Refused(
            "ticket",
            "was started before escalations reach people (patch escalations-v1); "
            "launch a new ticket to use ask_human, ack and resolve",
        )


def ask(state: TicketState, msg: AskHuman, now: datetime, *, apply: bool = True) -> Step[AskReply]:
    """An agent asks a person; the reply names the question (its escalation id)."""
    agent = _authenticate(state, msg)
    key = _reply_key("ask_human", msg.agent_id, msg.request_id)
    if (cached := _cached(state, key, AskReply, msg)) is not None:
        return Step(cached)
    _escalations_on(state)
    _require_open(state)
    if msg.task_id is not None:
        task = state.tasks.get(msg.task_id)
        if task is None:
            raise Refused("task_id", f"unknown task {msg.task_id!r}")
        if task.assigned_agent != agent.id or task.status not in HELD_STATUSES:
            raise Refused("task_id", f"{task.id} is not held by {agent.id}; ask about your own")
    policy = state.spec.policy.escalation
    limit = policy.max_open_questions
    if (asked := escalations.open_questions(state, agent)) >= limit:
        raise Refused(
            "question",
            f"{agent.id} has {asked} unanswered question(s); the limit is {limit} "
            "(policy.escalation.max_open_questions): wait for an answer in your inbox",
        )
    everyone = escalations.open_questions(state)
    if everyone >= policy.max_open_questions_per_ticket:
        raise Refused(
            "question",
            f"the ticket has {everyone} unanswered questions; the limit is "
            f"{policy.max_open_questions_per_ticket} "
            "(policy.escalation.max_open_questions_per_ticket): wait for an answer",
        )
    severity = escalations.severity_of(state, escalations.QUESTION_SOURCE)
    if not apply:
        return Step(AskReply(question_id="", severity=severity))
    about = f" about {msg.task_id}" if msg.task_id else ""
    escalation = diagnosis.escalate(
        state,
        now,
        source=escalations.QUESTION_SOURCE,
        reason=f"{agent.id} ({agent.name}) asks{about}: {msg.question[:1_000]}",
        agent_id=agent.id,
        question=msg.question,
        task_id=msg.task_id,
    )
    assert escalation is not None  # questions are never folded into an open escalation
    agent.behaviour.progress_at = now  # asking is an act: it is not stalled
    reply = AskReply(question_id=escalation.id, severity=escalation.severity)
    _remember(state, key, reply, msg)
    return Step(reply)


def acknowledge(
    state: TicketState, msg: AcknowledgeEscalation, now: datetime, *, apply: bool = True
) -> Step[EscalationView]:
    """A person has it. Acknowledging twice is harmless (the first one counts)."""
    check_operator(state, msg.operator_token)
    _escalations_on(state)
    escalation = escalations.find(state, msg.escalation_id)
    if escalation.resolved:
        raise Refused(
            "escalation_id",
            f"{escalation.id} was resolved by {escalation.resolved_by}; there is nothing to ack",
        )
    if escalation.acknowledged or not apply:
        return Step(escalations.view(state, escalation))
    escalation.acknowledged = True
    escalation.acknowledged_at = now
    escalation.acknowledged_by = msg.operator
    escalations.queue(state, escalation, "acknowledge", now)
    state.outbox.escalations.append(escalations.ledger_record(state, escalation))
    log(
        state,
        now,
        "escalation_acknowledged",
        f"{escalation.id} acknowledged by {msg.operator}",
        agent_id=escalation.agent_id,
    )
    return Step(escalations.view(state, escalation))


def resolve(
    state: TicketState, msg: ResolveEscalation, now: datetime, *, apply: bool = True
) -> Step[EscalationView]:
    """A person dealt with it: the note reaches the agents, diagnosing resumes afresh.

    Resolving again with the same note answers as the first time (a retried command);
    with another note it is refused: what the agents were told stays what they were told.
    """
    check_operator(state, msg.operator_token)
    _escalations_on(state)
    escalation = escalations.find(state, msg.escalation_id)
    if escalation.resolved:
        if escalation.note == msg.note and escalation.resolved_by == msg.operator:
            return Step(escalations.view(state, escalation))
        raise Refused(
            "escalation_id",
            f"{escalation.id} was already resolved by {escalation.resolved_by} "
            f"({(escalation.note or '')[:200]!r})",
        )
    _require_open(state)
    if escalation.source == escalations.QUESTION_SOURCE and msg.as_task:
        raise Refused("as_task", "an answer goes to the agent that asked, not to the queue")
    if not apply:
        return Step(escalations.view(state, escalation))
    escalations.mark_resolved(state, escalation, now, msg.operator, msg.note)
    if escalation.source == escalations.QUESTION_SOURCE:
        _answer(state, escalation, msg, now)
    else:
        _tell_agents(state, escalation, msg, now)
    if escalation.source in diagnosis.GUARD_SOURCES:
        # The same condition (diagnosing stopped) may have been raised twice (the budget
        # and the ladder): the person dealt with it, so all of it is resolved.
        for other in state.escalations:
            if other.source in diagnosis.GUARD_SOURCES and not other.resolved:
                escalations.mark_resolved(
                    state, other, now, msg.operator, f"with {escalation.id}: {msg.note}"
                )
        _fresh_budget(state, escalation, now)
    state.last_activity_at = now  # the agents get a whole stuck window to act on the note
    return Step(escalations.view(state, escalation))


def _answer(
    state: TicketState, escalation: Escalation, msg: ResolveEscalation, now: datetime
) -> None:
    agent = escalations.asker(state, escalation)
    if agent is None:
        log(
            state,
            now,
            "answer_undelivered",
            f"{escalation.id}: {escalation.agent_id} is gone; the answer stays on the "
            "escalation (escalations query)",
            agent_id=escalation.agent_id,
        )
        return
    agent.answers = [
        *agent.answers,
        HumanAnswer(
            question_id=escalation.id,
            question=escalation.question or "",
            answer=msg.note,
            answered_by=msg.operator,
            answered_at=now,
        ),
    ][-FEEDBACK_LIMIT:]
    agent.behaviour.progress_at = now
    log(
        state,
        now,
        "question_answered",
        f"{msg.operator} answered {agent.id}: {msg.note[:300]}",
        agent_id=agent.id,
        task_id=escalation.task_id,
    )


def _tell_agents(
    state: TicketState, escalation: Escalation, msg: ResolveEscalation, now: datetime
) -> None:
    line = f"{msg.operator} resolved {escalation.id}: {msg.note}"
    told = 0
    for agent in state.agents.values():
        if agent.state in escalations.WAITING:
            agent.feedback = [*agent.feedback, line][-FEEDBACK_LIMIT:]
            told += 1
    created = ""
    if msg.as_task:
        phase = current_phase(state) or state.spec.phases[0].name
        task = add_task(
            state,
            now,
            key=None,
            phase=phase,
            title=f"Operator note on {escalation.source}: {msg.note.splitlines()[0][:150]}",
            description=f"{msg.operator} resolved {escalation.id} ({escalation.reason[:500]}) "
            f"with this note:\n\n{msg.note}",
            type="fix",
            priority="high",
            depends_on=[],
            validation=False,
            created_by=msg.operator,
        )
        created = f"; queued as {task.id}"
    log(state, now, "operator_note", f"note to {told} agent(s){created}: {msg.note[:300]}")


def _fresh_budget(state: TicketState, escalation: Escalation, now: datetime) -> None:
    """Diagnosing resumes: failures and runs so far no longer count against the budget."""
    state.consecutive_failed_diagnoses = 0
    state.budget_from = len(state.diagnoses)
    state.stuck_skipped_at = None
    log(
        state,
        now,
        "diagnosis_budget",
        f"{escalation.id} resolved: diagnosing resumes with a fresh budget "
        f"({state.spec.policy.stuck.max_runs} runs, "
        f"{state.spec.policy.stuck.max_consecutive_failures} failures in a row)",
    )
