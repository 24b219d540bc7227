"""Escalations as people see them (DESIGN §14): severity, deliveries, views.

An escalation is raised by :func:`core.diagnosis.escalate`. With patch escalations-v1 every
escalation queues deliveries to the ticket's sinks: ``trigger`` when raised, ``acknowledge``
when a person takes it, ``resolve`` when a person resolves it or the ticket ends. The
workflow sends each delivery with an activity that retries until the sinks took it; this
module only keeps the books (pure, replay-safe).
"""

from __future__ import annotations

from datetime import datetime

from core.common import Refused, log
from core.state import Agent, Delivery, Escalation, TicketState
from models.ledger import EscalationRecord, EscalationResolutionRecord
from models.messages import DeliveryView, EscalationView
from models.notify import settled
from models.spec import SEVERITY_RANK

#: Sources a person resolves by answering: the note is the answer, the asker gets it.
QUESTION_SOURCE = "agent_question"


def ledger_record(state: TicketState, escalation: Escalation) -> EscalationRecord:
    """The escalation's ledger row as it stands (the ledger keeps the first acknowledgement)."""
    return EscalationRecord(
        id=escalation.id,
        ticket_id=state.ticket_id,
        severity=escalation.severity,  # type: ignore[arg-type]
        source=escalation.source,
        reason=escalation.reason,
        agent_id=escalation.agent_id,
        diagnosis_run_id=escalation.diagnosis_run_id,
        created_at=escalation.created_at,
        acknowledged=escalation.acknowledged,
        acknowledged_at=escalation.acknowledged_at if escalation.acknowledged else None,
        acknowledged_by=escalation.acknowledged_by if escalation.acknowledged else None,
    )


def severity_of(state: TicketState, source: str) -> str:
    return state.spec.policy.escalation.severity_of(source)


def queue(state: TicketState, escalation: Escalation, event: str, now: datetime) -> None:
    """Queue a delivery of ``event`` about ``escalation`` (only on escalations-v1 runs)."""
    if state.escalations_v1:
        escalation.deliveries.append(Delivery(event=event, queued_at=now))  # type: ignore[arg-type]


def find(state: TicketState, escalation_id: str) -> Escalation:
    for escalation in state.escalations:
        if escalation.id == escalation_id:
            return escalation
    known = ", ".join(e.id for e in state.escalations[-3:]) or "none"
    raise Refused(
        "escalation_id",
        f"no escalation {escalation_id!r} on ticket {state.ticket_id} (latest: {known})",
    )


#: EscalationSeverity when no escalation is open (a keyword; unset on older tickets).
NO_ESCALATION = "none"


def open_severity(state: TicketState) -> str:
    """The most severe unresolved escalation ("SEV-1" … "SEV-4"), or "none": the search
    attribute EscalationSeverity (``EscalationSeverity != "none"``: tickets waiting for a
    person)."""
    open_ = [e.severity for e in state.escalations if not e.resolved]
    return min(open_, key=lambda s: SEVERITY_RANK.get(s, 9)) if open_ else NO_ESCALATION


#: Agent states in which an asker (or its replacement) still waits for its answer.
WAITING = ("spawning", "idle", "running", "degraded", "restarting", "unresponsive")


def asker(state: TicketState, escalation: Escalation) -> Agent | None:
    """The agent that asked or, when it was restarted since, its live replacement."""
    agent = state.agents.get(escalation.agent_id or "")
    if agent is None or agent.state in WAITING:
        return agent
    for other in reversed(list(state.agents.values())):
        if other.lineage and other.lineage == agent.lineage and other.state in WAITING:
            return other
    return None


def waiting_for_person(state: TicketState) -> bool:
    """An agent waits for a person's answer: the ticket is not stuck. A question whose asker
    left (and was not replaced) holds up nothing: the ticket goes on as if unasked."""
    return any(
        e.source == QUESTION_SOURCE and not e.resolved and asker(state, e) is not None
        for e in state.escalations
    )


def waits_for_answer(state: TicketState, agent: Agent) -> bool:
    """``agent`` (or the agent it replaced) asked a question no person answered yet."""
    for e in state.escalations:
        if e.source == QUESTION_SOURCE and not e.resolved:
            if e.agent_id == agent.id:
                return True
            found = asker(state, e)
            if found is not None and found.id == agent.id:
                return True
    return False


def open_questions(state: TicketState, agent: Agent | None = None) -> int:
    """Unanswered questions of the ticket, or of ``agent``'s lineage (it and the agents it
    replaced: a restart does not reset its allowance)."""
    count = 0
    for e in state.escalations:
        if e.source != QUESTION_SOURCE or e.resolved:
            continue
        if agent is None or e.agent_id == agent.id:
            count += 1
        elif agent.lineage and (asker_ := state.agents.get(e.agent_id or "")) is not None:
            count += asker_.lineage == agent.lineage
    return count


def withdraw_questions(state: TicketState, agent: Agent, now: datetime, why: str) -> None:
    """The agent left for good: its open questions are withdrawn (resolved; the people
    paged hear that nobody waits for the answer any more)."""
    for e in state.escalations:
        if e.source == QUESTION_SOURCE and e.agent_id == agent.id and not e.resolved:
            mark_resolved(state, e, now, "unstuck", f"withdrawn: {agent.id} left ({why[:200]})")


def mark_resolved(
    state: TicketState, escalation: Escalation, now: datetime, by: str, note: str
) -> None:
    escalation.resolved_at = now
    escalation.resolved_by = by
    escalation.note = note
    queue(state, escalation, "resolve", now)
    state.outbox.escalation_resolutions.append(
        EscalationResolutionRecord(
            id=escalation.id, ticket_id=state.ticket_id, resolved_at=now, resolved_by=by, note=note
        )
    )
    log(
        state,
        now,
        "escalation_resolved",
        f"{escalation.id} resolved by {by}: {note[:300]}",
        agent_id=escalation.agent_id,
    )


def resolve_all(state: TicketState, now: datetime, why: str) -> None:
    """The ticket ended: every escalation still open is resolved (a resolve message goes to
    the sinks that heard of it, so an incident does not stay open on a finished ticket)."""
    if not state.escalations_v1:
        return
    for escalation in state.escalations:
        if not escalation.resolved:
            mark_resolved(state, escalation, now, "unstuck", why)


def resolve_quarantine(state: TicketState, agent_id: str, now: datetime, by: str) -> None:
    """A person released a quarantined agent: its quarantine escalation is dealt with."""
    if not state.escalations_v1:
        return
    released = state.agents.get(agent_id)
    for escalation in state.escalations:
        quarantined = state.agents.get(escalation.agent_id or "")
        same = escalation.agent_id == agent_id or (
            quarantined is not None
            and released is not None
            and quarantined.lineage != ""
            and quarantined.lineage == released.lineage
        )
        quarantine = escalation.source in ("restart_quarantine", "behaviour_quarantine")
        if quarantine and same and not escalation.resolved:
            mark_resolved(state, escalation, now, by, f"{agent_id} released from quarantine")


def pending(state: TicketState) -> list[Escalation]:
    """Escalations with a delivery not sent yet (oldest first)."""
    return [e for e in state.escalations if any(d.status == "pending" for d in e.deliveries)]


def next_delivery(escalation: Escalation) -> tuple[int, Delivery] | None:
    """The first pending delivery: deliveries of one escalation go out in order (a resolve
    never overtakes its trigger)."""
    for index, delivery in enumerate(escalation.deliveries):
        if delivery.status == "pending":
            return index, delivery
    return None


def settled_sinks(delivery: Delivery) -> list[str]:
    """Sinks that took the message or refused it for good (not to be sent it again)."""
    return sorted(settled(delivery.delivered, delivery.failed))


def delivery_finished(
    state: TicketState,
    escalation_id: str,
    index: int,
    now: datetime,
    *,
    delivered: list[str],
    failed: list[str],
    complete: bool = True,
) -> None:
    """Record what a delivery activity did; ``complete=False``: it was cancelled with sinks
    still owed (the ticket continued as new), so the delivery stays pending."""
    escalation = find(state, escalation_id)
    delivery = escalation.deliveries[index]
    delivery.delivered += [d for d in delivered if d not in delivery.delivered]
    delivery.failed += [f for f in failed if f not in delivery.failed]
    if not complete:
        return
    delivered, failed = delivery.delivered, delivery.failed
    delivery.status = "failed" if failed and not delivered else "delivered"
    delivery.finished_at = now
    if not delivered and not failed:
        return  # no sink wants it: nothing to tell
    told = f" to {', '.join(delivered)}" if delivered else ""
    lost = f"; refused by {'; '.join(failed)}" if failed else ""
    log(
        state,
        now,
        "escalation_delivered" if delivered else "escalation_undeliverable",
        f"{escalation.severity} {delivery.event} of {escalation.id} delivered{told}{lost}",
        agent_id=escalation.agent_id,
    )


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def view(state: TicketState, escalation: Escalation) -> EscalationView:
    return EscalationView(
        id=escalation.id,
        ticket_id=state.ticket_id,
        severity=escalation.severity,
        source=escalation.source,
        status=escalation.status,
        reason=escalation.reason,
        created_at=escalation.created_at.isoformat(),
        agent_id=escalation.agent_id,
        task_id=escalation.task_id,
        diagnosis_run_id=escalation.diagnosis_run_id,
        question=escalation.question,
        acknowledged_by=escalation.acknowledged_by,
        acknowledged_at=_iso(escalation.acknowledged_at),
        resolved_by=escalation.resolved_by,
        resolved_at=_iso(escalation.resolved_at),
        note=escalation.note,
        deliveries=[
            DeliveryView(
                event=d.event,
                status=d.status,
                delivered=list(d.delivered),
                failed=list(d.failed),
                queued_at=d.queued_at.isoformat(),
                finished_at=_iso(d.finished_at),
            )
            for d in escalation.deliveries
        ],
    )


def views(state: TicketState) -> list[EscalationView]:
    return [view(state, e) for e in state.escalations]
