"""collect_evidence against a real ticket on the session's Temporal dev server, and the cap.

The server tests run a small ticket (register, claim, a progress note with secrets,
complete), then call the activity through ``ActivityEnvironment``: history summary, notes,
ledger rows, redaction and the 256 KB cap are checked on what comes back.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.api.common.v1 import ActivityType
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import (
    ActivityTaskFailedEventAttributes,
    ActivityTaskScheduledEventAttributes,
    HistoryEvent,
    TimerFiredEventAttributes,
    TimerStartedEventAttributes,
    WorkflowExecutionSignaledEventAttributes,
    WorkflowExecutionUpdateAcceptedEventAttributes,
    WorkflowExecutionUpdateCompletedEventAttributes,
    WorkflowTaskFailedEventAttributes,
)
from temporalio.api.sdk.v1 import UserMetadata
from temporalio.api.update.v1 import Input, Meta, Outcome, Request
from temporalio.client import Client
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.diagnosis import DiagnosisActivities, HistoryDigest, decode_event
from agent_client.session import AgentSession
from core import diagnosis
from diagnosis.evidence import EVIDENCE_MAX_BYTES, evidence_size, fit_evidence
from infra.codec import EncryptionCodec, new_key
from infra.settings import Settings
from ledger.store import Ledger
from models.diagnosis import (
    DiagnosisInput,
    Evidence,
    HistorySummary,
    SnapshotAgent,
    SnapshotPhase,
    SnapshotTask,
    TicketSnapshot,
)
from tests.conftest import unique_id
from tests.ticketkit import launch, spec_dict

SECRET_NOTE = "password=hunter2 and sk-abcdefghijklmnopqrstuvwx"
ONE_MB = 1024 * 1024


async def eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def run_collect(
    client: Client, ledger: Ledger, input: DiagnosisInput
) -> tuple[Evidence, list[Any]]:
    heartbeats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: heartbeats.append(details)
    evidence = await env.run(DiagnosisActivities(client, ledger).collect_evidence, input)
    return evidence, heartbeats


@pytest.fixture
async def small_ticket(
    client: Client, settings: Settings, ledger: Ledger, worker: Any
) -> DiagnosisInput:
    """A ticket where alice claimed T1, noted a secret on it and completed it."""
    ticket = await launch(client, settings, spec_dict(unique_id("evidence")))
    async with AgentSession(client, ticket.ticket_id, name="alice") as alice:
        task = await alice.claim()
        assert task is not None
        await alice.progress(task.id, SECRET_NOTE)

        async def noted() -> bool:
            return SECRET_NOTE in (await ticket.state()).tasks[task.id].notes

        assert await eventually(noted), "the progress note never reached the ticket"
        await alice.complete(task.id, "# Requirements\n- users log in with email", "design")

    async def stored() -> bool:
        return bool(await asyncio.to_thread(ledger.task_results, ticket.ticket_id))

    assert await eventually(stored), "the task result never reached the ledger"
    state = await ticket.state()
    return DiagnosisInput(
        ticket_id=ticket.ticket_id,
        run_id=f"{ticket.ticket_id}/d1",
        number=1,
        trigger="manual",
        reason="test: password=opensesame",
        snapshot=diagnosis.snapshot(state, datetime.now(UTC)),  # what the ticket sends
        history_window_min=60,
        idle_seconds=3.0,
    )


@pytest.mark.server
async def test_collect_evidence_from_a_real_ticket(
    client: Client, ledger: Ledger, small_ticket: DiagnosisInput
) -> None:
    evidence, heartbeats = await run_collect(client, ledger, small_ticket)

    assert evidence.run_id == small_ticket.run_id and evidence.trigger == "manual"
    history = evidence.history
    assert history is not None
    assert history.events_in_window > 0 and history.window_minutes == 60
    assert history.by_type.get("WorkflowExecutionStarted") == 1
    for name in ("register", "claim", "complete"):
        assert history.updates_by_name.get(name, 0) >= 1, history.updates_by_name
    assert history.signals_by_name.get("progress") == 1
    assert history.first_event_at is not None and history.last_event_at is not None

    # the note is there, with its task, but its secrets are not
    (note,) = [n for n in evidence.progress_notes if "password=" in n]
    assert note == "T1 [done] password=[REDACTED] and [REDACTED]"
    dumped = evidence.model_dump_json()
    for secret in ("hunter2", "sk-abcdefghijklmnopqrstuvwx", "opensesame"):
        assert secret not in dumped, secret
    assert evidence.redactions >= 3

    # ledger rows and excerpts
    assert evidence.ledger["task_results"] == 1
    assert evidence.ledger["workflow_results"] == 0
    assert any("T1" in e and "# Requirements" in e for e in evidence.ledger_excerpts)

    assert evidence.metrics["idle_seconds"] == 3.0
    assert evidence.size_bytes == evidence_size(evidence) <= EVIDENCE_MAX_BYTES
    assert not evidence.truncated
    assert heartbeats, "collect_evidence must heartbeat"


@pytest.mark.server
async def test_huge_input_is_truncated_under_the_cap(
    client: Client, ledger: Ledger, small_ticket: DiagnosisInput
) -> None:
    snapshot = small_ticket.snapshot
    notes = [f"note {i}: " + "progress " * 120 for i in range(10_000)]  # ~11 MB
    first = snapshot.recent_tasks[0].model_copy(update={"notes": notes})
    huge = small_ticket.model_copy(
        update={
            "snapshot": snapshot.model_copy(
                update={"recent_tasks": [first, *snapshot.recent_tasks[1:]]}
            )
        }
    )

    started = time.monotonic()
    evidence, _ = await run_collect(client, ledger, huge)
    elapsed = time.monotonic() - started

    assert evidence.truncated
    assert evidence.size_bytes == evidence_size(evidence) <= EVIDENCE_MAX_BYTES
    assert evidence.progress_notes[-1].startswith(f"{first.id} [{first.status}] note 9999:")
    assert len(evidence.progress_notes) < 10_000
    assert evidence.history is not None and evidence.history.updates_by_name  # kept
    assert elapsed < 20, f"collect_evidence took {elapsed:.1f}s"


@pytest.mark.server
async def test_an_unknown_ticket_has_no_history(client: Client, ledger: Ledger) -> None:
    now = datetime.now(UTC)
    input = DiagnosisInput(
        ticket_id=unique_id("missing"),
        run_id="missing/d1",
        number=1,
        trigger="manual",
        snapshot=bare_snapshot(now),
    )
    evidence, _ = await run_collect(client, ledger, input)
    assert evidence.history is None
    assert evidence.ledger["task_results"] == 0


# ---- the cap itself (no server) ----------------------------------------------------------


def bare_snapshot(now: datetime, **fields: Any) -> TicketSnapshot:
    values: dict[str, Any] = {
        "ticket_id": "login",
        "title": "Build login system",
        "goal": "Users can log in",
        "result_criteria": ["login works"],
        "status": "open",
        "phases": [SnapshotPhase(name="implementation", required=True)],
        "counts_by_status": {},
        "counts_by_phase": {},
        "total_tasks": 0,
        "recent_tasks": [],
        "agents": [],
        "results": [],
        "diagnoses": [],
        "last_activity_at": now,
        "taken_at": now,
    }
    return TicketSnapshot(**(values | fields))


def test_small_evidence_is_left_alone() -> None:
    now = datetime.now(UTC)
    evidence = Evidence(run_id="r", trigger="manual", snapshot=bare_snapshot(now), collected_at=now)
    fitted = fit_evidence(evidence)
    assert not fitted.truncated
    assert fitted.size_bytes == evidence_size(fitted)
    assert fitted.model_copy(update={"size_bytes": 0}) == evidence


def test_oldest_notes_and_excerpts_go_first() -> None:
    now = datetime.now(UTC)
    evidence = Evidence(
        run_id="r",
        trigger="manual",
        snapshot=bare_snapshot(now, goal="keep me"),
        progress_notes=[f"note {i} " + "n" * 1000 for i in range(400)],
        ledger_excerpts=[f"excerpt {i} " + "e" * 1000 for i in range(400)],
        collected_at=now,
    )
    fitted = fit_evidence(evidence, 100_000)
    assert fitted.truncated and fitted.size_bytes <= 100_000
    assert fitted.progress_notes[-1].startswith("note 399 ")
    assert fitted.ledger_excerpts[-1].startswith("excerpt 399 ")
    assert 20 < len(fitted.progress_notes) < 400 and 20 < len(fitted.ledger_excerpts) < 400
    assert fitted.snapshot.goal == "keep me"  # nothing else was cut


def test_a_pathological_snapshot_never_exceeds_the_cap() -> None:
    now = datetime.now(UTC)
    tasks = [
        SnapshotTask(
            id=f"T{i}",
            phase="implementation",
            title="t" * 5_000,
            type="implementation",
            status="failed",
            priority="normal",
            depends_on=[f"T{j}" for j in range(200)],
            failure_reason="Error: " + "\x00\u2603" * 20_000,  # escapes make JSON longer
            notes=["n" * 4_000] * 20,
            updated_at=now - timedelta(seconds=i),
        )
        for i in range(60)
    ]
    snapshot = bare_snapshot(
        now,
        goal="g" * 2_000_000,
        recent_tasks=tasks,
        problem_tasks=tasks,
        counts_by_phase={f"p{i}": {f"s{j}": j for j in range(100)} for i in range(1000)},
        agents=[SnapshotAgent(id="A1", name="a" * 500, kind="worker", state="idle")] * 1000,
    )
    evidence = Evidence(
        run_id="r",
        trigger="task_failed",
        snapshot=snapshot,
        history=HistorySummary(window_minutes=60, events_in_window=1, notable=["x" * 1000] * 5000),
        progress_notes=["p" * 1000] * 5000,
        collected_at=now,
    )
    assert evidence_size(evidence) > 10 * ONE_MB
    for cap in (EVIDENCE_MAX_BYTES, 64 * 1024):
        fitted = fit_evidence(evidence, cap)
        assert fitted.truncated
        assert fitted.size_bytes == evidence_size(fitted) <= cap < ONE_MB
        assert fitted.snapshot.ticket_id == "login" and fitted.trigger == "task_failed"
        Evidence.model_validate_json(fitted.model_dump_json())  # still valid evidence


# ---- the history digest (no server) ------------------------------------------------------


def history_event(event_id: int, at: datetime, event_type: int, **attributes: Any) -> HistoryEvent:
    event = HistoryEvent(event_id=event_id, event_type=event_type, **attributes)  # type: ignore[arg-type]
    event.event_time.FromDatetime(at)
    return event


def test_history_digest_counts_the_window_and_names_what_went_wrong() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    old, recent = now - timedelta(hours=2), now - timedelta(minutes=5)
    converter = DataConverter.default.payload_converter
    (summary,) = converter.to_payloads(["stuck window 60s"])
    failure = Failure(message="database is locked")
    events = [
        history_event(1, old, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED),
        history_event(
            5,
            old,
            EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
            activity_task_scheduled_event_attributes=ActivityTaskScheduledEventAttributes(
                activity_type=ActivityType(name="write_ledger")
            ),
        ),
        history_event(
            6,
            old,
            EventType.EVENT_TYPE_TIMER_STARTED,
            timer_started_event_attributes=TimerStartedEventAttributes(timer_id="7"),
            user_metadata=UserMetadata(summary=summary),
        ),
        history_event(
            7,
            recent,
            EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
            activity_task_failed_event_attributes=ActivityTaskFailedEventAttributes(
                scheduled_event_id=5, failure=failure
            ),
        ),
        history_event(
            8,
            recent,
            EventType.EVENT_TYPE_TIMER_FIRED,
            timer_fired_event_attributes=TimerFiredEventAttributes(
                timer_id="7", started_event_id=6
            ),
        ),
        history_event(
            9,
            recent,
            EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
            workflow_task_failed_event_attributes=WorkflowTaskFailedEventAttributes(
                cause=WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR,
                failure=Failure(message="nondeterminism detected"),
            ),
        ),
        history_event(
            10,
            recent,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
            workflow_execution_update_accepted_event_attributes=(
                WorkflowExecutionUpdateAcceptedEventAttributes(
                    protocol_instance_id="u1",
                    accepted_request=Request(input=Input(name="submit_result")),
                )
            ),
        ),
        history_event(
            11,
            recent,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
            workflow_execution_update_completed_event_attributes=(
                WorkflowExecutionUpdateCompletedEventAttributes(
                    meta=Meta(update_id="u1"),
                    outcome=Outcome(failure=Failure(message="result file is missing")),
                )
            ),
        ),
        history_event(
            12,
            recent,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
            workflow_execution_signaled_event_attributes=(
                WorkflowExecutionSignaledEventAttributes(signal_name="heartbeat")
            ),
        ),
    ]
    digest = HistoryDigest(
        since=now - timedelta(minutes=60), window_minutes=60, payload_converter=converter
    )
    for event in events:
        digest.add(event)
    summary_ = digest.summary()

    assert summary_.events_in_window == 6
    assert "WorkflowExecutionStarted" not in summary_.by_type  # before the window
    assert summary_.by_type["ActivityTaskFailed"] == 1
    assert summary_.updates_by_name == {"submit_result": 1}
    assert summary_.signals_by_name == {"heartbeat": 1}
    assert summary_.first_event_at == recent and summary_.last_event_at == recent
    notable = [n.split(" ", 1)[1] for n in summary_.notable]
    assert notable == [
        "activity write_ledger failed (unspecified): database is locked",
        "timer 7 fired: stuck window 60s",
        "workflow task failed (non_deterministic_error): nondeterminism detected",
        "update submit_result failed: result file is missing",
    ]


async def test_the_digest_reads_events_written_under_the_encryption_codec() -> None:
    """With UNSTUCK_CODEC_KEYS a timer's summary is ciphertext and a failure says only
    "Encoded failure": the evidence decodes both before it summarises them."""
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    codec = EncryptionCodec.from_keys(f"k1:{new_key()}")
    converter = DataConverter.default.payload_converter
    (summary,) = await codec.encode(converter.to_payloads(["stuck window 60s"]))
    failure = Failure()
    await DataConverter(
        payload_codec=codec, failure_converter_class=DefaultFailureConverterWithEncodedAttributes
    ).encode_failure(ApplicationError("database is locked"), failure)
    assert failure.message == "Encoded failure"
    events = [
        history_event(
            6,
            now,
            EventType.EVENT_TYPE_TIMER_STARTED,
            timer_started_event_attributes=TimerStartedEventAttributes(timer_id="7"),
            user_metadata=UserMetadata(summary=summary),
        ),
        history_event(
            8,
            now,
            EventType.EVENT_TYPE_TIMER_FIRED,
            timer_fired_event_attributes=TimerFiredEventAttributes(
                timer_id="7", started_event_id=6
            ),
        ),
        history_event(
            9,
            now,
            EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
            workflow_task_failed_event_attributes=WorkflowTaskFailedEventAttributes(
                failure=failure
            ),
        ),
    ]
    digest = HistoryDigest(
        since=now - timedelta(minutes=1), window_minutes=1, payload_converter=converter
    )
    for event in events:
        await decode_event(event, codec, converter)
        digest.add(event)
    notes = " | ".join(digest.summary().notable)
    assert "timer 7 fired: stuck window 60s" in notes
    assert "database is locked" in notes and "Encoded failure" not in notes
