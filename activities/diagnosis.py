"""Diagnosis activities: collect evidence, generate hypotheses, plan recovery (DESIGN §5).

The diagnosis child workflow calls them in that order. ``collect_evidence`` is the only one
with real I/O (the ticket's event history from Temporal, the ledger); the other two wrap
the pure engine in :mod:`diagnosis` (and the optional LLM).

Evidence is redacted before it leaves this module and capped at 256 KB
(:func:`diagnosis.evidence.fit_evidence`), so it fits comfortably in a payload, in the
child's history and in an LLM prompt.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from temporalio import activity
from temporalio.api.enums.v1 import (
    EventType,
    RetryState,
    TimeoutType,
    WorkflowTaskFailedCause,
)
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.converter import PayloadCodec, PayloadConverter
from temporalio.service import RPCError, RPCStatusCode

from core.health import PROCESS_RUNTIMES
from diagnosis.evidence import EVIDENCE_MAX_BYTES, fit_evidence
from diagnosis.llm import LLMSettings
from diagnosis.llm import generate_hypotheses as _generate_hypotheses
from diagnosis.redact import redact_model
from diagnosis.rules import plan_recovery as _plan_recovery
from infra.telemetry import read_spans
from ledger.store import Ledger
from ledger.tables import LEDGER_TABLES, TaskResultRow, ValidationReviewRow, table_of
from models.diagnosis import (
    COLLECT_EVIDENCE_ACTIVITY,
    GENERATE_HYPOTHESES_ACTIVITY,
    PLAN_RECOVERY_ACTIVITY,
    DiagnosisInput,
    Evidence,
    HistorySummary,
    HypothesisSet,
    PlanRequest,
    RecoveryPlan,
    ReviewEvidence,
    SnapshotAgent,
    TicketSnapshot,
)
from runtimes.local_process import log_tail

__all__ = ["DiagnosisActivities", "HistoryDigest"]

#: Newest task results quoted (first line each) and newest reviews read from the ledger.
LEDGER_RESULT_EXCERPTS = 20
LEDGER_REVIEWS = 50
#: The ticket's newest trace spans kept (one short line each).
MAX_SPANS = 200
#: Notable history events kept (the newest).
NOTABLE_LIMIT = 50
#: Heartbeat every this many history events (the workflow's heartbeat timeout is 30 s).
HEARTBEAT_EVERY = 200
#: Before redaction, notes and excerpts beyond this many bytes are dropped (oldest first),
#: so a pathological input does not cost seconds of regex work that is thrown away anyway.
PRE_TRIM_BYTES = 2 * EVIDENCE_MAX_BYTES


def _event_type_name(event_type: int) -> str:
    """``EVENT_TYPE_WORKFLOW_TASK_FAILED`` → ``WorkflowTaskFailed`` (as the Web UI shows it)."""
    try:
        name = EventType.Name(event_type)  # type: ignore[arg-type]
    except ValueError:
        return f"EventType{event_type}"
    return "".join(part.capitalize() for part in name.removeprefix("EVENT_TYPE_").split("_"))


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _failures(event: HistoryEvent) -> list[Failure]:
    """The failures a digest reads from ``event`` (their messages become notes)."""
    E = EventType
    kind = event.event_type
    if kind == E.EVENT_TYPE_WORKFLOW_TASK_FAILED:
        return [event.workflow_task_failed_event_attributes.failure]
    if kind == E.EVENT_TYPE_ACTIVITY_TASK_FAILED:
        return [event.activity_task_failed_event_attributes.failure]
    if kind == E.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
        return [event.activity_task_timed_out_event_attributes.failure]
    if kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
        outcome = event.workflow_execution_update_completed_event_attributes.outcome
        return [outcome.failure] if outcome.HasField("failure") else []
    if kind == E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED:
        return [event.child_workflow_execution_failed_event_attributes.failure]
    return []


async def decode_event(
    event: HistoryEvent, codec: PayloadCodec, converter: PayloadConverter | None
) -> None:
    """Decode, in place, what a digest reads of an event written under a payload codec.

    With encryption (infra.codec) a timer's summary is ciphertext and a failure's message is
    "Encoded failure" (the text moved into its encoded attributes): without this the
    evidence a diagnosis gets would say only that.
    """
    if event.user_metadata.HasField("summary"):
        (summary,) = await codec.decode([event.user_metadata.summary])
        event.user_metadata.summary.CopyFrom(summary)
    for failure in _failures(event):
        if not failure.HasField("encoded_attributes") or converter is None:
            continue
        (attributes,) = await codec.decode([failure.encoded_attributes])
        try:
            value = converter.from_payloads([attributes])[0]
        except Exception:
            continue
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            failure.message = value["message"]


@dataclass
class HistoryDigest:
    """Summarises a workflow's history events, one :meth:`add` at a time (no I/O).

    Events before ``since`` are not counted but still read: they name the activities,
    timers and updates that later events refer to.
    """

    since: datetime
    window_minutes: float
    payload_converter: PayloadConverter | None = None
    events_in_window: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    updates: Counter[str] = field(default_factory=Counter)
    signals: Counter[str] = field(default_factory=Counter)
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    notable: deque[str] = field(default_factory=lambda: deque(maxlen=NOTABLE_LIMIT))
    notable_dropped: int = 0
    _activities: dict[int, str] = field(default_factory=dict)
    _timers: dict[int, str] = field(default_factory=dict)
    _children: dict[int, str] = field(default_factory=dict)
    _update_names: dict[str, str] = field(default_factory=dict)

    def add(self, event: HistoryEvent) -> None:
        at = event.event_time.ToDatetime(tzinfo=UTC)
        kind = event.event_type
        self._remember(event, kind)
        if at < self.since:
            return
        self.events_in_window += 1
        self.by_type[_event_type_name(kind)] += 1
        self.first_event_at = self.first_event_at or at
        self.last_event_at = at
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            attrs = event.workflow_execution_update_accepted_event_attributes
            self.updates[attrs.accepted_request.input.name or "?"] += 1
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            self.signals[event.workflow_execution_signaled_event_attributes.signal_name] += 1
        if (note := self._notable(event, kind)) is not None:
            if len(self.notable) == self.notable.maxlen:
                self.notable_dropped += 1
            self.notable.append(f"{at.isoformat(timespec='seconds')} {note}")

    def _remember(self, event: HistoryEvent, kind: int) -> None:
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = event.activity_task_scheduled_event_attributes
            self._activities[event.event_id] = scheduled.activity_type.name
        elif kind == EventType.EVENT_TYPE_TIMER_STARTED:
            self._timers[event.event_id] = self._summary(event)
        elif kind == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            child = event.start_child_workflow_execution_initiated_event_attributes
            self._children[event.event_id] = f"{child.workflow_type.name} {child.workflow_id}"
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            accepted = event.workflow_execution_update_accepted_event_attributes
            self._update_names[accepted.protocol_instance_id] = accepted.accepted_request.input.name

    def _summary(self, event: HistoryEvent) -> str:
        """The event's user-metadata summary (e.g. a timer's "stuck window 60s"), if any."""
        if self.payload_converter is None or not event.user_metadata.HasField("summary"):
            return ""
        try:
            value = self.payload_converter.from_payloads([event.user_metadata.summary])[0]
        except Exception:
            return ""
        return _one_line(str(value), 200) if value else ""

    def _notable(self, event: HistoryEvent, kind: int) -> str | None:
        E = EventType
        if kind == E.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            wf = event.workflow_task_failed_event_attributes
            cause = _enum_name(WorkflowTaskFailedCause, wf.cause, "WORKFLOW_TASK_FAILED_CAUSE_")
            return f"workflow task failed ({cause}): {_one_line(wf.failure.message)}"
        if kind == E.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
            timeout = event.workflow_task_timed_out_event_attributes.timeout_type
            return f"workflow task timed out ({_enum_name(TimeoutType, timeout, 'TIMEOUT_TYPE_')})"
        if kind == E.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            act = event.activity_task_failed_event_attributes
            name = self._activities.get(act.scheduled_event_id, "?")
            retry = _enum_name(RetryState, act.retry_state, "RETRY_STATE_")
            return f"activity {name} failed ({retry}): {_one_line(act.failure.message)}"
        if kind == E.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
            timed_out = event.activity_task_timed_out_event_attributes
            name = self._activities.get(timed_out.scheduled_event_id, "?")
            return f"activity {name} timed out: {_one_line(timed_out.failure.message)}"
        if kind == E.EVENT_TYPE_TIMER_FIRED:
            fired = event.timer_fired_event_attributes
            summary = self._timers.get(fired.started_event_id, "")
            return f"timer {fired.timer_id} fired" + (f": {summary}" if summary else "")
        if kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED:
            done = event.workflow_execution_update_completed_event_attributes
            if done.outcome.HasField("failure"):
                name = self._update_names.get(done.meta.update_id, "?")
                return f"update {name} failed: {_one_line(done.outcome.failure.message)}"
            return None
        if kind in (
            E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED,
            E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TIMED_OUT,
            E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TERMINATED,
            E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_CANCELED,
        ):
            child = self._child_of(event, kind)
            verb = _event_type_name(kind).removeprefix("ChildWorkflowExecution").lower()
            return f"child workflow {child} {verb}"
        if kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started = event.workflow_execution_started_event_attributes
            if started.continued_execution_run_id:
                return f"run continued as new from run {started.continued_execution_run_id}"
        return None

    def _child_of(self, event: HistoryEvent, kind: int) -> str:
        E = EventType
        attrs: Any
        if kind == E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED:
            attrs = event.child_workflow_execution_failed_event_attributes
            detail = f": {_one_line(attrs.failure.message)}"
        elif kind == E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TIMED_OUT:
            attrs = event.child_workflow_execution_timed_out_event_attributes
            detail = ""
        elif kind == E.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_TERMINATED:
            attrs = event.child_workflow_execution_terminated_event_attributes
            detail = ""
        else:
            attrs = event.child_workflow_execution_canceled_event_attributes
            detail = ""
        name = self._children.get(
            attrs.initiated_event_id,
            f"{attrs.workflow_type.name} {attrs.workflow_execution.workflow_id}",
        )
        return name + detail

    def summary(self) -> HistorySummary:
        notable = list(self.notable)
        if self.notable_dropped:
            notable.insert(0, f"({self.notable_dropped} earlier notable events not shown)")
        return HistorySummary(
            window_minutes=self.window_minutes,
            events_in_window=self.events_in_window,
            by_type=dict(sorted(self.by_type.items())),
            updates_by_name=dict(sorted(self.updates.items())),
            signals_by_name=dict(sorted(self.signals.items())),
            first_event_at=self.first_event_at,
            last_event_at=self.last_event_at,
            notable=notable,
        )


@dataclass
class _LedgerEvidence:
    counts: dict[str, int]
    excerpts: list[str]
    reviews: list[ReviewEvidence]


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return _one_line(line.strip(), 200)
    return ""


def _progress_notes(snapshot: TicketSnapshot) -> tuple[TicketSnapshot, list[str]]:
    """The tasks' progress notes, oldest task update first, moved out of the snapshot."""
    notes: list[str] = []
    tasks = {t.id: t for t in [*snapshot.problem_tasks, *snapshot.recent_tasks]}
    for task in sorted(tasks.values(), key=lambda t: (t.updated_at, t.id)):
        notes.extend(f"{task.id} [{task.status}] {note}" for note in task.notes)

    def without_notes(tasks: Iterable[Any]) -> list[Any]:
        return [t.model_copy(update={"notes": []}) if t.notes else t for t in tasks]

    slim = snapshot.model_copy(
        update={
            "recent_tasks": without_notes(snapshot.recent_tasks),
            "problem_tasks": without_notes(snapshot.problem_tasks),
        }
    )
    return slim, notes


def _pre_trim(items: list[str], max_bytes: int) -> tuple[list[str], bool]:
    """The newest items whose total size is ≤ max_bytes (oldest dropped first)."""
    total, start = 0, len(items)
    while start > 0:
        size = len(items[start - 1].encode()) + 4
        if total + size > max_bytes:
            break
        total += size
        start -= 1
    return items[start:], start > 0


def _finish(evidence: Evidence) -> Evidence:
    """Redact every string, then cap the size (CPU work: runs in a thread)."""
    redacted, count = redact_model(evidence)
    return fit_evidence(redacted.model_copy(update={"redactions": count}), EVIDENCE_MAX_BYTES)


#: Process log tail per involved agent in the evidence: at most this many lines and bytes.
AGENT_LOG_LINES = 40
AGENT_LOG_BYTES = 4000


def involved_agents(snapshot: TicketSnapshot, reason: str) -> list[SnapshotAgent]:
    """Agents a diagnosis is about: an anomaly score that counts, named by the trigger's
    reason, or restarted again and again."""
    return [
        a
        for a in snapshot.agents
        if a.anomaly >= 0.5 or a.id in reason or a.restarts >= 2 or a.state == "quarantined"
    ]


def agent_log_tails(log_dir: Path, snapshot: TicketSnapshot, reason: str) -> dict[str, list[str]]:
    """The tail of each involved local-process agent's newest process log (redacted later,
    with the rest of the evidence)."""
    tails: dict[str, list[str]] = {}
    folder = log_dir / snapshot.ticket_id
    for agent in involved_agents(snapshot, reason):
        if agent.runtime not in PROCESS_RUNTIMES:
            continue
        name = agent.lineage or agent.name
        logs = sorted(
            folder.glob(f"{glob.escape(name)}.*.log"),
            key=lambda p: int(p.suffixes[-2][1:]) if p.suffixes[-2][1:].isdigit() else -1,
        )
        if not logs:
            continue
        text = log_tail(logs[-1], AGENT_LOG_BYTES)
        lines = [line for line in text.splitlines() if line.strip()][-AGENT_LOG_LINES:]
        if lines:
            tails[agent.id] = [f"({logs[-1].name})", *lines]
    return tails


class DiagnosisActivities:
    """Diagnosis activities bound to a Temporal client, the ledger and optional LLM settings."""

    def __init__(
        self,
        client: Client,
        ledger: Ledger,
        llm: LLMSettings | None = None,
        *,
        span_file: Path | None = None,
        agent_log_dir: Path | None = None,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.llm = llm
        self.span_file = span_file  # the tracing file exporter's output; None = no spans
        self.agent_log_dir = agent_log_dir  # where local-process agents log; None = no logs

    def activities(self) -> list[Callable[..., Any]]:
        """The activity callables to pass to a ``Worker``."""
        return [self.collect_evidence, self.generate_hypotheses, self.plan_recovery]

    # ---- collect_evidence ---------------------------------------------------------------

    @activity.defn(name=COLLECT_EVIDENCE_ACTIVITY)
    async def collect_evidence(self, input: DiagnosisInput) -> Evidence:
        """Snapshot + event history window + progress notes + ledger; redacted, ≤ 256 KB."""
        now = datetime.now(UTC)
        history = await self._history(input.ticket_id, input.history_window_min, now)
        activity.heartbeat("history read")
        stored = await asyncio.to_thread(self._read_ledger, input.ticket_id)
        activity.heartbeat("ledger read")
        spans: list[str] = []
        if self.span_file is not None:
            spans = await asyncio.to_thread(read_spans, self.span_file, input.ticket_id, MAX_SPANS)
        snapshot, notes = _progress_notes(input.snapshot)
        notes, notes_cut = _pre_trim(notes, PRE_TRIM_BYTES)
        excerpts, excerpts_cut = _pre_trim(stored.excerpts, PRE_TRIM_BYTES)
        metrics: dict[str, float] = {
            "idle_seconds": input.idle_seconds,
            "tasks_total": float(snapshot.total_tasks),
            "earlier_diagnoses": float(len(snapshot.diagnoses)),
        }
        if history is not None:
            metrics["history_events_in_window"] = float(history.events_in_window)
        if spans:
            metrics["spans"] = float(len(spans))
        agent_logs: dict[str, list[str]] = {}
        if self.agent_log_dir is not None:
            agent_logs = await asyncio.to_thread(
                agent_log_tails, self.agent_log_dir, snapshot, input.reason
            )
        evidence = Evidence(
            run_id=input.run_id,
            trigger=input.trigger,
            reason=input.reason,
            snapshot=snapshot,
            history=history,
            progress_notes=notes,
            ledger=stored.counts,
            ledger_excerpts=excerpts,
            reviews=stored.reviews,
            spans=spans,
            agent_logs=agent_logs,
            metrics=metrics,
            truncated=notes_cut or excerpts_cut,
            collected_at=now,
        )
        evidence = await asyncio.to_thread(_finish, evidence)
        activity.logger.info(
            "evidence for %s: %d bytes, %d redactions%s",
            input.run_id,
            evidence.size_bytes,
            evidence.redactions,
            ", truncated" if evidence.truncated else "",
        )
        return evidence

    async def _history(
        self, ticket_id: str, window_min: float, now: datetime
    ) -> HistorySummary | None:
        """The ticket workflow's (current run's) history in the window, summarised."""
        digest = HistoryDigest(
            since=now - timedelta(minutes=window_min),
            window_minutes=window_min,
            payload_converter=self.client.data_converter.payload_converter,
        )
        handle = self.client.get_workflow_handle(ticket_id)
        codec = self.client.data_converter.payload_codec
        seen = 0
        try:
            async for event in handle.fetch_history_events(page_size=1000):
                if codec is not None:  # encrypted payloads (infra.codec): read them in clear
                    await decode_event(event, codec, digest.payload_converter)
                digest.add(event)
                seen += 1
                if seen % HEARTBEAT_EVERY == 0:
                    activity.heartbeat(f"{seen} history events")
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise  # transient: Temporal retries the activity
            activity.logger.warning("no history for ticket %s: %s", ticket_id, exc.message)
            return None
        return digest.summary()

    def _read_ledger(self, ticket_id: str) -> _LedgerEvidence:
        """Row counts per ledger table, the newest task results' first lines, newest reviews.

        Bounded queries (LIMIT, a prefix of each result): a ticket may have thousands of
        100 KB results, and only their beginnings matter here.
        """
        counts: dict[str, int] = {}
        results = table_of(TaskResultRow)
        reviews = table_of(ValidationReviewRow)
        with self.ledger.engine.connect() as conn:
            for table in LEDGER_TABLES:
                if "ticket_id" in table.c:
                    query = select(func.count()).select_from(table)
                    counts[table.name] = int(
                        conn.execute(query.where(table.c.ticket_id == ticket_id)).scalar_one()
                    )
            result_rows = conn.execute(
                select(
                    results.c.task_id,
                    results.c.attempt,
                    results.c.iteration,
                    results.c.agent_id,
                    results.c.result_type,
                    results.c.verification,
                    results.c.submitted_at,
                    func.substr(results.c.content, 1, 1000).label("head"),
                )
                .where(results.c.ticket_id == ticket_id)
                .order_by(results.c.submitted_at.desc(), results.c.id.desc())
                .limit(LEDGER_RESULT_EXCERPTS)
            ).all()
            review_rows = conn.execute(
                select(
                    reviews.c.subject_kind,
                    reviews.c.subject_id,
                    reviews.c.iteration,
                    reviews.c.validator_id,
                    reviews.c.passed,
                    reviews.c.created_at,
                    func.substr(reviews.c.feedback, 1, 2000).label("feedback"),
                )
                .where(reviews.c.ticket_id == ticket_id)
                .order_by(reviews.c.created_at.desc(), reviews.c.id.desc())
                .limit(LEDGER_REVIEWS)
            ).all()
        dated: list[tuple[datetime, str]] = [
            (
                row.submitted_at,
                f"task result {row.task_id} a{row.attempt}/i{row.iteration} by {row.agent_id} "
                f"({row.result_type}, {row.verification}) at "
                f"{row.submitted_at.isoformat(timespec='seconds')}: {_first_line(row.head or '')}",
            )
            for row in result_rows
        ]
        dated.extend(
            (
                row.created_at,
                f"review of {row.subject_kind} {row.subject_id} iteration {row.iteration} by "
                f"{row.validator_id} at {row.created_at.isoformat(timespec='seconds')}: "
                f"rejected: {_one_line(row.feedback or '', 500)}",
            )
            for row in review_rows
            if not row.passed
        )
        dated.sort(key=lambda item: item[0])
        return _LedgerEvidence(
            counts=counts,
            excerpts=[text for _, text in dated],
            reviews=[
                ReviewEvidence(
                    subject_kind=row.subject_kind,
                    subject_id=row.subject_id,
                    iteration=row.iteration,
                    validator_id=row.validator_id,
                    passed=row.passed,
                    feedback=row.feedback or "",
                    created_at=row.created_at,
                )
                for row in reversed(review_rows)
            ],
        )

    # ---- generate_hypotheses / plan_recovery ---------------------------------------------

    @activity.defn(name=GENERATE_HYPOTHESES_ACTIVITY)
    async def generate_hypotheses(self, evidence: Evidence) -> HypothesisSet:
        """Hypotheses from the LLM when configured, else (or when it fails) from the rules.

        Heartbeats while it waits (an LLM call takes seconds to minutes): a worker that dies
        mid-call costs the workflow's heartbeat timeout, not the activity's whole time limit.
        """
        async with _heartbeating("generating hypotheses"):
            return await _generate_hypotheses(evidence, self.llm)

    @activity.defn(name=PLAN_RECOVERY_ACTIVITY)
    async def plan_recovery(self, request: PlanRequest) -> RecoveryPlan:
        """1–5 recovery tasks from the ranked hypotheses (phases checked against the ticket)."""
        return _plan_recovery(request.hypotheses, request.snapshot)


#: How often a long activity heartbeats while it waits (the workflow's heartbeat timeouts
#: are several of these).
HEARTBEAT_EVERY_S = 2.0


@contextlib.asynccontextmanager
async def _heartbeating(detail: str) -> AsyncIterator[None]:
    """Heartbeat every HEARTBEAT_EVERY_S while the body runs (the body must await)."""

    async def beat() -> None:
        while True:
            activity.heartbeat(detail)
            await asyncio.sleep(HEARTBEAT_EVERY_S)

    beating = asyncio.create_task(beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
