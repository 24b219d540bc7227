"""Read-only views of the ticket state, as queries return them (tokens never leave)."""

from __future__ import annotations

from datetime import datetime

from core import behaviour
from core.diagnosis import display_status
from core.state import Agent, ResultVersion, TicketState
from core.ticket import current_phase, open_tasks, validated_version
from models.messages import (
    AgentView,
    AnomalyView,
    ResultVersionView,
    StatusView,
    TimelineEntry,
)

#: The AnomalyScore search attribute shows scores from this up (lower ones are noise), to
#: one decimal: a filter such as ``AnomalyScore >= 0.7`` finds tickets with a suspect agent.
PUBLISHED_FROM = 0.5


def anomalies(state: TicketState, now: datetime | None = None) -> list[AnomalyView]:
    """Every live agent with a non-zero anomaly score, highest first, explained."""
    if not state.behaviour_v1:
        return []
    at = now or state.last_activity_at
    threshold = state.spec.policy.anomaly.threshold
    found = [
        AnomalyView(
            agent_id=s.agent_id,
            score=s.score,
            anomalous=s.score >= threshold,
            signature=s.signature,
            signals=s.explain(),
        )
        for s in behaviour.scores(state, at)
        if s.score > 0
    ]
    return sorted(found, key=lambda a: (-a.score, a.agent_id))


def published_anomaly(state: TicketState) -> float:
    """The highest live agent's score as last computed, for the AnomalyScore attribute."""
    top = max(
        (a.behaviour.score for a in state.agents.values() if a.state in behaviour.LIVE),
        default=0.0,
    )
    return round(top, 1) if top >= PUBLISHED_FROM else 0.0


def status_view(state: TicketState, now: datetime | None = None) -> StatusView:
    index = state.index()  # counts kept current: no pass over the tasks per query
    by_status = +index.by_status
    by_phase: dict[str, dict[str, int]] = {p.name: {} for p in state.spec.phases}
    for (name, status), n in (+index.by_phase_status).items():
        by_phase.setdefault(name, {})[status] = n
    return StatusView(
        ticket_id=state.ticket_id,
        title=state.spec.title,
        status=state.status,
        ticket_status=display_status(state),
        phase=current_phase(state),
        counts_by_status=dict(sorted(by_status.items())),
        counts_by_phase=by_phase,
        open_tasks=open_tasks(state),
        agents=sum(1 for a in state.agents.values() if a.state != "terminated"),
        results=len(state.results),
        validated_version=validated_version(state),
        last_activity_at=state.last_activity_at.isoformat(),
        created_at=state.created_at.isoformat(),
        finished_at=state.finished_at.isoformat() if state.finished_at else None,
        outcome=state.outcome,
        ignored_messages=state.ignored_messages,
        anomalies=anomalies(state, now),
    )


def agent_view(state: TicketState, agent: Agent) -> AgentView:
    return AgentView(
        id=agent.id,
        name=agent.name,
        kind=agent.kind,
        state=agent.state,
        registered_at=agent.registered_at.isoformat(),
        last_heartbeat_at=agent.last_heartbeat_at.isoformat() if agent.last_heartbeat_at else None,
        last_seq=agent.last_seq,
        tasks=sorted(state.index().held.get(agent.id, ()), key=lambda t: state.tasks[t].seq),
        heartbeats=agent.heartbeats,
        seq_gaps=agent.seq_gaps,
        out_of_order=agent.out_of_order,
    )


def result_view(version: ResultVersion) -> ResultVersionView:
    return ResultVersionView(
        version=version.version,
        agent_id=version.agent_id,
        source=version.source,
        file_ref=version.file_ref,
        sha256=version.sha256,
        size_bytes=version.size_bytes,
        preview=version.preview,
        submitted_at=version.submitted_at.isoformat(),
        status=version.status,
        criteria=list(version.criteria),
        validator_id=version.validator_id,
        feedback=version.feedback,
        evidence=list(version.evidence),
        verdict_at=version.verdict_at.isoformat() if version.verdict_at else None,
        checks=list(version.checks),
    )


def timeline_view(state: TicketState, limit: int | None = None) -> list[TimelineEntry]:
    events = state.timeline if limit is None else state.timeline[-limit:]
    return [
        TimelineEntry(
            at=e.at.isoformat(),
            kind=e.kind,
            message=e.message,
            agent_id=e.agent_id,
            task_id=e.task_id,
        )
        for e in events
    ]


def readable_state(state: TicketState, *, operator: bool) -> TicketState:
    """The state as the ``state`` query shows it: nothing derived from a secret, ever.

    Token and join-secret hashes are blanked for everyone. Without the operator token the
    agents' private channel is left out too: their inbox feedback, interrupts and stop
    reasons (read by each agent with its own credentials) and the reply cache (replies carry
    the inbox), so another client of the namespace cannot read an agent's review feedback.
    """
    shown = state.model_copy(deep=True)
    shown.operator_token_sha256 = None
    shown.join_sha256 = None
    for agent in shown.agents.values():
        agent.token_sha256 = ""
        if not operator:
            agent.feedback = []
            agent.interrupted = []
            agent.stop_reason = None
    if not operator:
        shown.replies = {}
        shown.reply_digests = {}
    return shown
