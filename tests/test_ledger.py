"""The ledger: records, the SQL store on SQLite and PostgreSQL, and the activity.

PostgreSQL cases (marked ``postgres``) use ``UNSTUCK_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``), each in a schema of its own that is
dropped afterwards. Without a reachable server they are skipped, but fail under CI=true.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.ledger import LedgerActivities
from ledger.store import Ledger, LedgerConflict, normalise_url
from ledger.tables import LEDGER_TABLES, TaskResultRow, WorkflowResultRow, table_of
from models.ledger import (
    WRITE_LEDGER_ACTIVITY,
    DiagnosticRunRecord,
    EscalationRecord,
    EscalationResolutionRecord,
    LedgerBatch,
    LedgerWriteReport,
    RestartEventRecord,
    TableWriteCounts,
    TaskResultRecord,
    ValidationReviewRecord,
    WorkflowResultRecord,
    diagnostic_run_id,
    escalation_record_id,
    restart_event_id,
    review_record_id,
    task_result_record_id,
    workflow_result_record_id,
)

PG_URL = os.environ.get("UNSTUCK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


# ------------------------------------------------------------------ backends

_pg_error: list[str] = []  # cached probe result: [] = not probed, [""] = reachable


def _require_postgres() -> None:
    if not _pg_error:
        try:
            with psycopg.connect(PG_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _pg_error.append("")
        except psycopg.Error as err:
            _pg_error.append(f"PostgreSQL at {PG_URL} is unreachable: {err}".strip())
    if _pg_error[0]:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{_pg_error[0]} (CI=true: the postgres tests must run)", pytrace=False)
        pytest.skip(_pg_error[0])


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """A fresh, empty ledger on each backend."""
    if request.param == "sqlite":
        # A directory that does not exist yet: the Ledger creates it.
        with Ledger(f"sqlite:///{tmp_path / 'data' / 'ledger.db'}") as led:
            led.create_all()
            yield led
        return

    _require_postgres()
    schema = f"ledger_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        with Ledger(url) as led:
            led.create_all()
            yield led
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="module")
def sqlite_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    """One SQLite ledger shared by the property test's examples (unique tickets each)."""
    with Ledger(f"sqlite:///{tmp_path_factory.mktemp('prop') / 'ledger.db'}") as led:
        led.create_all()
        yield led


# ------------------------------------------------------------------ builders


def new_ticket() -> str:
    return f"T-{uuid.uuid4().hex[:10]}"


def task_result(
    ticket: str,
    task: str = "task-1",
    attempt: int = 1,
    iteration: int = 1,
    *,
    at: datetime = T0,
    content: str | None = None,
    verification: str = "unverified",
    review: str | None = None,
) -> TaskResultRecord:
    return TaskResultRecord.model_validate(
        {
            "id": task_result_record_id(ticket, task, attempt, iteration),
            "ticket_id": ticket,
            "task_id": task,
            "attempt": attempt,
            "iteration": iteration,
            "agent_id": "worker-1",
            "result_type": "implementation",
            "content": content if content is not None else f"# {task}\n\nDone: ✓ `code`\n",
            "verification": verification,
            "review_id": review,
            "submitted_at": at,
        }
    )


def workflow_result(
    ticket: str, version: int = 1, *, content: str = "# Result\n\nAll criteria met.\n"
) -> WorkflowResultRecord:
    return WorkflowResultRecord(
        id=workflow_result_record_id(ticket, version),
        ticket_id=ticket,
        version=version,
        agent_id="worker-2",
        content=content,
        content_sha256=hashlib.sha256(content.encode()).hexdigest(),
        size_bytes=len(content.encode()),
        criteria_snapshot=["login works", "tests pass"],
        submitted_at=T0 + timedelta(minutes=version),
    )


def review(
    ticket: str,
    kind: str = "task",
    subject: str = "task-1",
    iteration: int = 1,
    *,
    passed: bool = True,
    feedback: str = "",
    at: datetime = T0,
) -> ValidationReviewRecord:
    return ValidationReviewRecord.model_validate(
        {
            "id": review_record_id(ticket, kind, subject, iteration),  # type: ignore[arg-type]
            "ticket_id": ticket,
            "subject_kind": kind,
            "subject_id": subject,
            "iteration": iteration,
            "validator_id": "validator-1",
            "passed": passed,
            "feedback": feedback,
            "evidence": ["pytest: 12 passed", "file_exists: README.md"],
            "created_at": at,
        }
    )


HYPOTHESES = [
    {
        "signature": "missing_result_submission",
        "statement": "The worker finished but never submitted the final result.",
        "likelihood": 0.8,
        "evidence": ["all tasks done", "no result version"],
        "counterpoints": [],
    },
    {
        "signature": "other",
        "statement": "Validator unavailable",
        "likelihood": 0.15,
        "evidence": [],
        "counterpoints": ["validator heartbeats fine"],
    },
]


def diagnostic_run(
    ticket: str,
    number: int = 1,
    stage: str = "created",
    *,
    trigger: str = "no_result",
    at: datetime = T0,
) -> DiagnosticRunRecord:
    """A run as the workflow reports it at ``stage``: created, running, completed (outcome
    pending), recovered (completed, outcome recovered) or skipped."""
    done = stage in ("completed", "recovered")
    return DiagnosticRunRecord.model_validate(
        {
            "id": diagnostic_run_id(ticket, number),
            "ticket_id": ticket,
            "number": number,
            "trigger": trigger,
            "reason": "no task activity for 61 s",
            "status": "completed" if done else stage,
            "outcome": {"completed": "pending", "recovered": "recovered"}.get(stage),
            "counts_at_trigger": {"done": 3, "failed": 1},
            "idle_seconds": 61.5,
            "evidence_summary": "3 done, 1 failed; no result" if stage != "created" else "",
            "hypotheses": HYPOTHESES if done else [],
            "generator": "rules" if done else None,
            "created_task_ids": [f"{ticket}-fix-{number}"] if done else [],
            "started_at": at,
            "finished_at": at + timedelta(seconds=2) if done or stage == "skipped" else None,
        }
    )


def escalation(
    ticket: str,
    key: str = "1",
    *,
    severity: str = "SEV-2",
    at: datetime = T0,
    acked_by: str | None = None,
) -> EscalationRecord:
    return EscalationRecord.model_validate(
        {
            "id": escalation_record_id(ticket, "restart_quarantine", key),
            "ticket_id": ticket,
            "severity": severity,
            "source": "restart_quarantine",
            "reason": "agent worker-1 restarted 4 times in an hour",
            "agent_id": "worker-1",
            "diagnosis_run_id": diagnostic_run_id(ticket, 1),
            "created_at": at,
            "acknowledged": acked_by is not None,
            "acknowledged_at": at + timedelta(minutes=5) if acked_by else None,
            "acknowledged_by": acked_by,
        }
    )


def restart_event(
    ticket: str,
    lineage: str = "worker",
    number: int = 1,
    outcome: str = "requested",
    *,
    at: datetime = T0,
    runtime: str = "local-process",
) -> RestartEventRecord:
    """A restart as the workflow reports it: when requested, or finished with ``outcome``
    (``restarted`` = stopped by force after the grace period, replacement running)."""
    finished = outcome != "requested"
    return RestartEventRecord.model_validate(
        {
            "id": restart_event_id(ticket, lineage, number),
            "ticket_id": ticket,
            "agent_id": f"{lineage}-g{number - 1}",
            "lineage": lineage,
            "number": number,
            "reason": "3 missed heartbeats in state running",
            "runtime": runtime,
            "outcome": outcome,
            "graceful": False if finished else None,
            "forced": True if finished else None,
            "old_pid": 4242,
            "new_pid": 4343 if outcome == "restarted" else None,
            "reassigned_task_ids": ["task-1", "task-3"],
            "requested_at": at,
            "finished_at": at + timedelta(seconds=12) if finished else None,
        }
    )


def stored_recorded_at(led: Ledger, ticket: str) -> list[tuple[str, datetime]]:
    """(id, recorded_at) of every row of a ticket, over all tables."""
    out: list[tuple[str, datetime]] = []
    with led.engine.connect() as conn:
        for table in LEDGER_TABLES:
            query = select(table.c.id, table.c.recorded_at).where(table.c.ticket_id == ticket)
            out.extend((row.id, row.recorded_at) for row in conn.execute(query))
    return sorted(out)


def dump_all(
    led: Ledger, ticket: str
) -> tuple[list[TaskResultRecord], list[WorkflowResultRecord], list[ValidationReviewRecord]]:
    return (led.task_results(ticket), led.workflow_results(ticket), led.reviews(ticket))


# ------------------------------------------------------------------ models


def test_records_normalise_datetimes_to_utc_and_refuse_naive() -> None:
    ticket = new_ticket()
    plus2 = timezone(timedelta(hours=2))
    record = task_result(ticket, at=datetime(2025, 3, 1, 14, 0, tzinfo=plus2))
    assert record.submitted_at == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert record.submitted_at.tzinfo is UTC
    with pytest.raises(ValidationError, match="timezone"):
        task_result(ticket, at=datetime(2025, 3, 1, 12, 0))


def test_batch_validation() -> None:
    ticket = new_ticket()
    with pytest.raises(ValidationError, match="belongs to ticket"):
        LedgerBatch(ticket_id=ticket, task_results=[task_result("other")])
    with pytest.raises(ValidationError, match="content or a file_ref"):
        WorkflowResultRecord.model_validate(
            {**workflow_result(ticket).model_dump(), "content": None, "file_ref": None}
        )
    with pytest.raises(ValidationError):
        task_result(ticket, verification="approved")
    run = diagnostic_run(ticket).model_dump()
    for bad in ({"trigger": "boredom"}, {"number": 0}, {"status": "done"}, {"outcome": "ok"}):
        with pytest.raises(ValidationError):
            DiagnosticRunRecord.model_validate({**run, **bad})
    with pytest.raises(ValidationError, match="finish before"):
        DiagnosticRunRecord.model_validate({**run, "finished_at": T0 - timedelta(seconds=1)})
    esc = escalation(ticket).model_dump()
    with pytest.raises(ValidationError):
        EscalationRecord.model_validate({**esc, "severity": "SEV-5"})
    with pytest.raises(ValidationError, match="needs acknowledged_at"):
        EscalationRecord.model_validate({**esc, "acknowledged": True})
    with pytest.raises(ValidationError, match="need acknowledged=True"):
        EscalationRecord.model_validate({**esc, "acknowledged_by": "ops"})
    restart = restart_event(ticket).model_dump()
    restart_changes: tuple[dict[str, object], ...] = (
        {"number": 0},
        {"outcome": "stopped"},
        {"runtime": "docker"},
        {"old_pid": 0},
        {"lineage": ""},
        {"requested_at": datetime(2025, 3, 1, 12)},
    )
    for change in restart_changes:
        with pytest.raises(ValidationError):
            RestartEventRecord.model_validate({**restart, **change})
    with pytest.raises(ValidationError, match="only requested"):
        RestartEventRecord.model_validate({**restart, "finished_at": T0})
    with pytest.raises(ValidationError, match="finish before"):
        RestartEventRecord.model_validate(
            {**restart, "outcome": "failed", "finished_at": T0 - timedelta(seconds=1)}
        )
    with pytest.raises(ValidationError, match="belongs to ticket"):
        LedgerBatch(ticket_id=ticket, restart_events=[restart_event("other")])
    batch = LedgerBatch(ticket_id=ticket)
    assert batch.is_empty() and batch.size == 0
    batch = LedgerBatch(ticket_id=ticket, reviews=[review(ticket)])
    assert not batch.is_empty() and batch.size == 1


def test_ids_are_deterministic() -> None:
    assert task_result_record_id("T", "k", 2, 3) == "T/k/a2/i3"
    assert workflow_result_record_id("T", 4) == "T/v4"
    assert review_record_id("T", "result", "4", 4) == "T/review/result/4/i4"
    assert diagnostic_run_id("T", 3) == "T-diagnosis-3"
    assert escalation_record_id("T", "manual", "k") == "T/escalation/manual/k"
    assert restart_event_id("T", "worker", 2) == "T/restart/worker/2"
    assert restart_event("T", "worker", 2).id == "T/restart/worker/2"
    assert WRITE_LEDGER_ACTIVITY == "write_ledger"


async def test_batch_and_report_survive_the_pydantic_data_converter() -> None:
    ticket = new_ticket()
    batch = LedgerBatch(
        ticket_id=ticket,
        task_results=[task_result(ticket)],
        workflow_results=[workflow_result(ticket)],
        reviews=[review(ticket)],
        diagnostic_runs=[diagnostic_run(ticket, stage="recovered")],
        restart_events=[restart_event(ticket, outcome="restarted")],
        escalations=[escalation(ticket, acked_by="ops")],
    )
    report = LedgerWriteReport(ticket_id=ticket, restart_events=TableWriteCounts(inserted=1))
    payloads = await pydantic_data_converter.encode([batch, report])
    decoded = await pydantic_data_converter.decode(payloads, [LedgerBatch, LedgerWriteReport])
    assert decoded == [batch, report]
    assert decoded[0].task_results[0].submitted_at.tzinfo is not None


def test_models_module_does_not_import_the_orm() -> None:
    """Workflow code imports models.ledger: it must not pull SQLAlchemy into the sandbox."""
    code = (
        "import sys, models.ledger\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'sqlmodel', 'psycopg', 'ledger', 'activities'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_urls_are_normalised() -> None:
    assert normalise_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("sqlite:///x.db").drivername == "sqlite"
    with pytest.raises(ValueError, match="unsupported"):
        Ledger("mysql://u@h/db")
    assert "secret" not in repr(Ledger("postgresql://u:secret@h/db"))


# ------------------------------------------------------------------ store


def test_round_trip_every_kind(ledger: Ledger) -> None:
    ticket = new_ticket()
    plus5 = timezone(timedelta(hours=5, minutes=30))
    by_ref = WorkflowResultRecord(
        id=workflow_result_record_id(ticket, 2),
        ticket_id=ticket,
        version=2,
        agent_id="worker-3",
        file_ref="docs/result.md",
        content_sha256="0" * 64,
        size_bytes=2048,
        criteria_snapshot=[],
        submitted_at=datetime(2025, 3, 1, 18, 0, tzinfo=plus5),
    )
    batch = LedgerBatch(
        ticket_id=ticket,
        task_results=[
            task_result(ticket, "task-2", at=T0 + timedelta(seconds=5)),
            task_result(ticket, "task-1", verification="verified", review="r-1"),
        ],
        workflow_results=[by_ref, workflow_result(ticket, 1)],
        reviews=[
            review(ticket, "result", "1", 1, at=T0 + timedelta(hours=1)),
            review(ticket, "task", "task-1", 1, passed=False, feedback="missing tests"),
        ],
        diagnostic_runs=[
            diagnostic_run(ticket, 2, "running", trigger="manual", at=T0 - timedelta(hours=1)),
            diagnostic_run(ticket, 1, "recovered", at=datetime(2025, 3, 1, 9, tzinfo=plus5)),
        ],
        restart_events=[
            restart_event(ticket, "worker", 2, "restarted"),
            restart_event(
                ticket,
                "validator",
                1,
                "asked_to_restart",
                at=datetime(2025, 3, 1, 17, 30, tzinfo=plus5),  # = T0 - 0.123456 s
                runtime="external",
            ).model_copy(update={"graceful": None, "forced": None, "old_pid": None}),
        ],
        escalations=[
            escalation(ticket, "2", severity="SEV-1", at=T0 + timedelta(seconds=1)),
            escalation(ticket, "1", acked_by="ops@example.com"),
        ],
        escalation_resolutions=[
            EscalationResolutionRecord(
                id=escalation_record_id(ticket, "restart_quarantine", "2"),
                ticket_id=ticket,
                resolved_at=datetime(2025, 3, 1, 19, 0, tzinfo=plus5),
                resolved_by="ops@example.com",
                note="rotated the key; agents may retry",
            ),
            EscalationResolutionRecord(
                id=escalation_record_id(ticket, "restart_quarantine", "1"),
                ticket_id=ticket,
                resolved_at=T0 + timedelta(hours=2),
                resolved_by="unstuck",
                note="the ticket is completed",
            ),
        ],
    )
    report = ledger.write(batch)
    assert report.ticket_id == ticket
    assert len(report.tables()) == len(LEDGER_TABLES)
    for counts in report.tables().values():
        assert counts == TableWriteCounts(inserted=2)
    assert (report.inserted, report.already_present, report.updated) == (14, 0, 0)
    resolutions = ledger.escalation_resolutions(ticket)
    assert resolutions == batch.escalation_resolutions  # by resolved_at (14:00 UTC first)
    assert all(r.resolved_at.utcoffset() == timedelta(0) for r in resolutions)

    tasks, results, reviews = dump_all(ledger, ticket)
    assert tasks == [batch.task_results[1], batch.task_results[0]]  # by submitted_at
    assert results == [batch.workflow_results[1], by_ref]  # by version
    assert reviews == [batch.reviews[1], batch.reviews[0]]  # by created_at
    assert by_ref.submitted_at == datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    for when in (
        *(r.submitted_at for r in tasks),
        *(r.submitted_at for r in results),
        *(r.created_at for r in reviews),
    ):
        assert when.tzinfo is not None and when.utcoffset() == timedelta(0)
    for _, recorded in stored_recorded_at(ledger, ticket):
        assert recorded.utcoffset() == timedelta(0)

    assert ledger.task_results(ticket, task_id="task-2") == [batch.task_results[0]]
    assert ledger.reviews(ticket, subject_kind="result") == [batch.reviews[0]]
    assert ledger.reviews(ticket, subject_kind="task", subject_id="task-1") == [batch.reviews[1]]
    assert dump_all(ledger, new_ticket()) == ([], [], [])

    runs, escalations = ledger.diagnostic_runs(ticket), ledger.escalations(ticket)
    assert runs == [batch.diagnostic_runs[1], batch.diagnostic_runs[0]]  # by number
    assert escalations == [batch.escalations[1], batch.escalations[0]]  # by created_at
    assert runs[0].hypotheses == HYPOTHESES
    assert runs[0].counts_at_trigger == {"done": 3, "failed": 1}
    for moment in (
        *(r.started_at for r in runs),
        runs[0].finished_at,
        *(e.created_at for e in escalations),
        escalations[0].acknowledged_at,
    ):
        assert moment is not None and moment.utcoffset() == timedelta(0)
    assert ledger.diagnostic_runs(new_ticket()) == ledger.escalations(new_ticket()) == []

    restarts = ledger.restart_events(ticket)
    assert restarts == [batch.restart_events[1], batch.restart_events[0]]  # by requested_at
    assert ledger.restart_events(ticket, lineage="worker") == [batch.restart_events[0]]
    assert ledger.restart_events(ticket, lineage="nope") == []
    assert ledger.restart_events(new_ticket()) == []
    restarted, asked = restarts[1], restarts[0]
    assert (restarted.graceful, restarted.forced) == (False, True)
    assert (restarted.old_pid, restarted.new_pid) == (4242, 4343)
    assert restarted.reassigned_task_ids == ["task-1", "task-3"]
    assert (asked.runtime, asked.graceful, asked.old_pid, asked.new_pid) == (
        "external",
        None,
        None,
        None,
    )
    for moment in (
        *(r.requested_at for r in restarts),
        *(r.finished_at for r in restarts),
    ):
        assert moment is not None and moment.utcoffset() == timedelta(0)


def test_same_batch_twice_is_a_no_op(ledger: Ledger) -> None:
    ticket = new_ticket()
    batch = LedgerBatch(
        ticket_id=ticket,
        task_results=[task_result(ticket), task_result(ticket, "task-2")],
        workflow_results=[workflow_result(ticket)],
        reviews=[review(ticket)],
        diagnostic_runs=[diagnostic_run(ticket, 1, "recovered"), diagnostic_run(ticket, 2)],
        restart_events=[restart_event(ticket, "worker", 1, "restarted"), restart_event(ticket)],
        escalations=[escalation(ticket), escalation(ticket, "2", acked_by="ops")],
    )

    def everything() -> object:
        return (
            dump_all(ledger, ticket),
            ledger.diagnostic_runs(ticket),
            ledger.restart_events(ticket),
            ledger.escalations(ticket),
            stored_recorded_at(ledger, ticket),
        )

    first = ledger.write(batch)
    before = everything()

    second = ledger.write(batch)

    assert first.inserted == 9
    assert first.restart_events == TableWriteCounts(inserted=1)  # requested merged in
    assert second.task_results == TableWriteCounts(already_present=2)
    assert second.workflow_results == TableWriteCounts(already_present=1)
    assert second.validation_reviews == TableWriteCounts(already_present=1)
    assert second.diagnostic_runs == TableWriteCounts(already_present=2)
    assert second.restart_events == TableWriteCounts(already_present=1)
    assert second.escalations == TableWriteCounts(already_present=2)
    assert (second.inserted, second.updated) == (0, 0)
    assert everything() == before


def test_empty_batch(ledger: Ledger) -> None:
    ticket = new_ticket()
    report = ledger.write(LedgerBatch(ticket_id=ticket))
    assert report == LedgerWriteReport(ticket_id=ticket)
    assert report.inserted == report.already_present == report.updated == 0


def test_changed_workflow_result_conflicts_and_nothing_is_written(ledger: Ledger) -> None:
    ticket = new_ticket()
    original = workflow_result(ticket, 1)
    ledger.write(LedgerBatch(ticket_id=ticket, workflow_results=[original]))
    changed = workflow_result(ticket, 1, content="# Result\n\nRewritten.\n")

    batch = LedgerBatch(
        ticket_id=ticket,
        task_results=[task_result(ticket, "task-new")],  # would be new: must roll back
        workflow_results=[changed],
    )
    with pytest.raises(LedgerConflict) as caught:
        ledger.write(batch)

    err = caught.value
    assert (err.table, err.record_id) == ("workflow_results", original.id)
    assert set(err.fields) == {"content", "content_sha256", "size_bytes"}
    assert "never changes" in str(err)
    assert ledger.workflow_results(ticket) == [original]
    assert ledger.task_results(ticket) == []


def test_changed_review_conflicts(ledger: Ledger) -> None:
    ticket = new_ticket()
    original = review(ticket, passed=False, feedback="no tests")
    ledger.write(LedgerBatch(ticket_id=ticket, reviews=[original]))
    flipped = original.model_copy(update={"passed": True})
    with pytest.raises(LedgerConflict, match="passed"):
        ledger.write(LedgerBatch(ticket_id=ticket, reviews=[flipped]))
    assert ledger.reviews(ticket) == [original]


def test_a_result_version_is_stored_and_validated_once(ledger: Ledger) -> None:
    ticket = new_ticket()
    v1 = workflow_result(ticket, 1)
    verdict = review(ticket, "result", "1", 1)
    ledger.write(LedgerBatch(ticket_id=ticket, workflow_results=[v1], reviews=[verdict]))

    same_version = v1.model_copy(update={"id": f"{ticket}/other-v1"})
    with pytest.raises(LedgerConflict, match="unique key"):
        ledger.write(LedgerBatch(ticket_id=ticket, workflow_results=[same_version]))
    second_verdict = verdict.model_copy(update={"id": f"{ticket}/second-verdict"})
    with pytest.raises(LedgerConflict, match="unique key"):
        ledger.write(LedgerBatch(ticket_id=ticket, reviews=[second_verdict]))
    assert ledger.workflow_results(ticket) == [v1]
    assert ledger.reviews(ticket) == [verdict]


def test_task_result_immutable_columns_conflict(ledger: Ledger) -> None:
    ticket = new_ticket()
    original = task_result(ticket)
    ledger.write(LedgerBatch(ticket_id=ticket, task_results=[original]))
    changed = original.model_copy(update={"content": "other", "verification": "verified"})
    with pytest.raises(LedgerConflict) as caught:
        ledger.write(LedgerBatch(ticket_id=ticket, task_results=[changed]))
    assert caught.value.fields == ("content", "verification")
    assert ledger.task_results(ticket) == [original]


def test_task_result_verification_update(ledger: Ledger) -> None:
    ticket = new_ticket()
    unverified = task_result(ticket)
    other = task_result(ticket, "task-2")
    ledger.write(LedgerBatch(ticket_id=ticket, task_results=[unverified, other]))
    before = stored_recorded_at(ledger, ticket)

    verified = unverified.model_copy(update={"verification": "verified", "review_id": "rv-1"})
    report = ledger.write(LedgerBatch(ticket_id=ticket, task_results=[verified, other]))
    assert report.task_results == TableWriteCounts(updated=1, already_present=1)
    assert ledger.task_results(ticket) == [verified, other]
    assert stored_recorded_at(ledger, ticket) == before  # an update, not a new row

    # The same update again is a no-op; a late redelivery of the unreviewed state does not
    # undo the review.
    assert ledger.write(LedgerBatch(ticket_id=ticket, task_results=[verified])).task_results == (
        TableWriteCounts(already_present=1)
    )
    late = ledger.write(LedgerBatch(ticket_id=ticket, task_results=[unverified]))
    assert late.task_results == TableWriteCounts(already_present=1)
    assert ledger.task_results(ticket, "task-1") == [verified]

    disputed = unverified.model_copy(update={"verification": "disputed", "review_id": "rv-2"})
    report = ledger.write(LedgerBatch(ticket_id=ticket, task_results=[disputed]))
    assert report.task_results == TableWriteCounts(updated=1)
    assert ledger.task_results(ticket, "task-1") == [disputed]


def test_diagnostic_run_progresses_monotonically(ledger: Ledger) -> None:
    ticket = new_ticket()
    created, running, completed, recovered = (
        diagnostic_run(ticket, 1, stage)
        for stage in ("created", "running", "completed", "recovered")
    )

    def write(run: DiagnosticRunRecord) -> TableWriteCounts:
        return ledger.write(LedgerBatch(ticket_id=ticket, diagnostic_runs=[run])).diagnostic_runs

    assert write(created) == TableWriteCounts(inserted=1)
    before = stored_recorded_at(ledger, ticket)
    assert write(running) == TableWriteCounts(updated=1)
    assert write(completed) == TableWriteCounts(updated=1)
    assert ledger.diagnostic_runs(ticket) == [completed]
    assert completed.outcome == "pending"

    # Late redeliveries of earlier states change nothing.
    assert write(running) == TableWriteCounts(already_present=1)
    assert write(created) == TableWriteCounts(already_present=1)
    assert ledger.diagnostic_runs(ticket) == [completed]

    assert write(recovered) == TableWriteCounts(updated=1)
    assert write(completed) == TableWriteCounts(already_present=1)  # outcome stays recovered
    # A terminal status or outcome never changes to another one.
    failed = recovered.model_copy(update={"status": "failed", "outcome": "failed"})
    assert write(failed) == TableWriteCounts(already_present=1)
    assert ledger.diagnostic_runs(ticket) == [recovered]
    assert stored_recorded_at(ledger, ticket) == before  # updates, never a new row


def test_diagnostic_runs_converge_in_any_delivery_order(ledger: Ledger) -> None:
    """Every order of a run's states, one batch each or all in one batch, ends recovered."""
    stages = ("created", "running", "completed", "recovered")
    for order in itertools.permutations(stages):
        one_by_one, together = new_ticket(), new_ticket()
        for stage in order:
            ledger.write(
                LedgerBatch(
                    ticket_id=one_by_one, diagnostic_runs=[diagnostic_run(one_by_one, 1, stage)]
                )
            )
        ledger.write(
            LedgerBatch(
                ticket_id=together, diagnostic_runs=[diagnostic_run(together, 1, s) for s in order]
            )
        )
        assert ledger.diagnostic_runs(one_by_one) == [diagnostic_run(one_by_one, 1, "recovered")]
        assert ledger.diagnostic_runs(together) == [diagnostic_run(together, 1, "recovered")]


def test_diagnostic_run_and_escalation_conflicts(ledger: Ledger) -> None:
    ticket = new_ticket()
    run, esc = diagnostic_run(ticket, 1, "running"), escalation(ticket)
    ledger.write(LedgerBatch(ticket_id=ticket, diagnostic_runs=[run], escalations=[esc]))

    retriggered = diagnostic_run(ticket, 1, "completed", trigger="manual")
    with pytest.raises(LedgerConflict) as caught:
        ledger.write(
            LedgerBatch(
                ticket_id=ticket,
                diagnostic_runs=[retriggered],
                escalations=[escalation(ticket, "new")],  # would be new: must roll back
            )
        )
    assert caught.value.table == "diagnostic_runs" and "trigger" in caught.value.fields
    changes: list[dict[str, object]] = [
        {"idle_seconds": 1.0},
        {"counts_at_trigger": {}},
        {"started_at": T0 + timedelta(1)},
    ]
    for change in changes:
        with pytest.raises(LedgerConflict, match=next(iter(change))):
            ledger.write(
                LedgerBatch(ticket_id=ticket, diagnostic_runs=[run.model_copy(update=change)])
            )
    with pytest.raises(LedgerConflict, match="unique key"):
        other_id = run.model_copy(update={"id": f"{ticket}/another-id"})
        ledger.write(LedgerBatch(ticket_id=ticket, diagnostic_runs=[other_id]))

    raised = esc.model_copy(
        update={"severity": "SEV-1", "acknowledged": True, "acknowledged_at": T0}
    )
    with pytest.raises(LedgerConflict) as caught:
        ledger.write(LedgerBatch(ticket_id=ticket, escalations=[raised]))
    assert (caught.value.table, caught.value.fields) == (
        "escalations",
        ("severity", "acknowledged", "acknowledged_at"),
    )
    assert ledger.diagnostic_runs(ticket) == [run]
    assert ledger.escalations(ticket) == [esc]


def test_restart_event_progresses_monotonically(ledger: Ledger) -> None:
    ticket = new_ticket()
    requested, restarted = restart_event(ticket), restart_event(ticket, outcome="restarted")

    def write(*events: RestartEventRecord) -> TableWriteCounts:
        report = ledger.write(LedgerBatch(ticket_id=ticket, restart_events=list(events)))
        return report.restart_events

    assert write(requested) == TableWriteCounts(inserted=1)
    assert write(requested) == TableWriteCounts(already_present=1)  # idempotent
    assert ledger.restart_events(ticket) == [requested]
    before = stored_recorded_at(ledger, ticket)

    assert write(restarted) == TableWriteCounts(updated=1)
    assert ledger.restart_events(ticket) == [restarted]
    # An out-of-order redelivery of "requested" leaves it restarted; so does a duplicate.
    assert write(requested) == TableWriteCounts(already_present=1)
    assert write(restarted) == TableWriteCounts(already_present=1)
    assert ledger.restart_events(ticket) == [restarted]
    # A terminal outcome never changes to another one, nor takes its values.
    failed = restarted.model_copy(
        update={"outcome": "failed", "new_pid": None, "finished_at": T0 + timedelta(minutes=1)}
    )
    assert write(failed) == TableWriteCounts(already_present=1)
    # The same outcome again without the details: empty values never clear stored ones.
    bare = restarted.model_copy(
        update={"graceful": None, "forced": None, "new_pid": None, "finished_at": None}
    )
    assert write(bare) == TableWriteCounts(already_present=1)
    assert ledger.restart_events(ticket) == [restarted]
    assert stored_recorded_at(ledger, ticket) == before  # updates, never a new row

    # ...and a later delivery of the same outcome may fill in what was missing.
    other = new_ticket()
    partial = restart_event(other, outcome="restarted").model_copy(update={"new_pid": None})
    complete = restart_event(other, outcome="restarted")
    for event_, expected in (
        (partial, TableWriteCounts(inserted=1)),
        (complete, TableWriteCounts(updated=1)),
        (partial, TableWriteCounts(already_present=1)),
    ):
        report = ledger.write(LedgerBatch(ticket_id=other, restart_events=[event_]))
        assert report.restart_events == expected
    assert ledger.restart_events(other) == [complete]


def test_restart_events_converge_in_any_delivery_order(ledger: Ledger) -> None:
    """Requested, restarted (twice) in any order, one batch each or all in one batch: the
    ledger ends with the restarted row; a later restart of the lineage is a row of its own."""
    for order in set(itertools.permutations(("requested", "restarted", "restarted"))):
        one_by_one, together = new_ticket(), new_ticket()
        for outcome in order:
            ledger.write(
                LedgerBatch(
                    ticket_id=one_by_one,
                    restart_events=[restart_event(one_by_one, outcome=outcome)],
                )
            )
        report = ledger.write(
            LedgerBatch(
                ticket_id=together,
                restart_events=[restart_event(together, outcome=o) for o in order],
            )
        )
        assert report.restart_events == TableWriteCounts(inserted=1)
        for ticket in (one_by_one, together):
            assert ledger.restart_events(ticket) == [restart_event(ticket, outcome="restarted")]

    ticket = new_ticket()
    second = restart_event(ticket, number=2, outcome="quarantined", at=T0 + timedelta(minutes=5))
    ledger.write(LedgerBatch(ticket_id=ticket, restart_events=[second, restart_event(ticket)]))
    assert ledger.restart_events(ticket) == [restart_event(ticket), second]
    assert [e.number for e in ledger.restart_events(ticket, lineage="worker")] == [1, 2]


def test_restart_event_immutable_columns_conflict(ledger: Ledger) -> None:
    ticket = new_ticket()
    requested = restart_event(ticket)
    ledger.write(LedgerBatch(ticket_id=ticket, restart_events=[requested]))

    changes: list[dict[str, object]] = [
        {"agent_id": "worker-g7"},
        {"reason": "cooldown"},
        {"runtime": "external"},
        {"old_pid": 999},
        {"old_pid": None},
        {"reassigned_task_ids": ["task-1"]},
        {"requested_at": T0 + timedelta(seconds=1)},
    ]
    for change in changes:
        with pytest.raises(LedgerConflict) as caught:
            ledger.write(
                LedgerBatch(
                    ticket_id=ticket,
                    restart_events=[requested.model_copy(update=change)],
                    escalations=[escalation(ticket)],  # would be new: must roll back
                )
            )
        assert (caught.value.table, caught.value.fields) == ("restart_events", tuple(change))

    # An immutable change next to a legitimate progression is still a conflict.
    moved = restart_event(ticket, outcome="restarted").model_copy(update={"reason": "manual"})
    with pytest.raises(LedgerConflict) as caught:
        ledger.write(LedgerBatch(ticket_id=ticket, restart_events=[moved]))
    assert set(caught.value.fields) == {
        "reason",
        "outcome",
        "graceful",
        "forced",
        "new_pid",
        "finished_at",
    }
    with pytest.raises(LedgerConflict, match="twice in one batch"):
        ledger.write(
            LedgerBatch(
                ticket_id=ticket,
                restart_events=[
                    restart_event(ticket, number=5),
                    moved.model_copy(
                        update={"id": restart_event_id(ticket, "worker", 5), "number": 5}
                    ),
                ],
            )
        )
    with pytest.raises(LedgerConflict, match="unique key"):
        other_id = requested.model_copy(update={"id": f"{ticket}/another-id"})
        ledger.write(LedgerBatch(ticket_id=ticket, restart_events=[other_id]))
    assert ledger.restart_events(ticket) == [requested]
    assert ledger.escalations(ticket) == []


def test_escalation_acknowledgement_is_monotone(ledger: Ledger) -> None:
    ticket = new_ticket()
    open_, acked = escalation(ticket), escalation(ticket, acked_by="alice")

    def write(*records: EscalationRecord) -> TableWriteCounts:
        return ledger.write(LedgerBatch(ticket_id=ticket, escalations=list(records))).escalations

    assert write(open_) == TableWriteCounts(inserted=1)
    assert write(acked) == TableWriteCounts(updated=1)
    assert write(open_) == TableWriteCounts(already_present=1)  # no un-acknowledging
    assert write(escalation(ticket, acked_by="bob")) == TableWriteCounts(already_present=1)
    assert ledger.escalations(ticket) == [acked]

    other = new_ticket()
    report = ledger.write(
        LedgerBatch(
            ticket_id=other,
            escalations=[escalation(other, acked_by="carol"), escalation(other)],
        )
    )
    assert report.escalations == TableWriteCounts(inserted=1)
    assert ledger.escalations(other) == [escalation(other, acked_by="carol")]


def test_acknowledge_escalation(ledger: Ledger) -> None:
    ticket = new_ticket()
    open_ = escalation(ticket)
    ledger.write(LedgerBatch(ticket_id=ticket, escalations=[open_]))
    plus2 = timezone(timedelta(hours=2))

    with pytest.raises(KeyError, match="no escalation 'nope'"):
        ledger.acknowledge_escalation("nope", by="alice", at=T0)
    with pytest.raises(ValidationError, match="timezone"):
        ledger.acknowledge_escalation(open_.id, by="alice", at=datetime(2025, 3, 1, 12))
    assert ledger.escalations(ticket) == [open_]

    acked = ledger.acknowledge_escalation(
        open_.id, by="alice", at=datetime(2025, 3, 1, 14, tzinfo=plus2)
    )
    assert (acked.acknowledged, acked.acknowledged_by) == (True, "alice")
    assert acked.acknowledged_at == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert (
        acked.model_copy(
            update={"acknowledged": False, "acknowledged_at": None, "acknowledged_by": None}
        )
        == open_
    )
    assert ledger.escalations(ticket) == [acked]

    # The first acknowledgement wins; the workflow's unacknowledged redelivery keeps it.
    assert ledger.acknowledge_escalation(open_.id, by="bob", at=T0) == acked
    report = ledger.write(LedgerBatch(ticket_id=ticket, escalations=[open_]))
    assert report.escalations == TableWriteCounts(already_present=1)
    assert ledger.escalations(ticket) == [acked]


def test_duplicate_ids_inside_one_batch(ledger: Ledger) -> None:
    ticket = new_ticket()
    unverified = task_result(ticket)
    verified = unverified.model_copy(update={"verification": "verified", "review_id": "rv"})
    result = workflow_result(ticket)
    report = ledger.write(
        LedgerBatch(
            ticket_id=ticket,
            task_results=[unverified, verified, unverified],
            workflow_results=[result, result],
        )
    )
    assert report.task_results == TableWriteCounts(inserted=1)
    assert report.workflow_results == TableWriteCounts(inserted=1)
    assert ledger.task_results(ticket) == [verified]

    with pytest.raises(LedgerConflict, match="twice in one batch"):
        ledger.write(
            LedgerBatch(
                ticket_id=ticket,
                workflow_results=[
                    workflow_result(ticket, 7),
                    workflow_result(ticket, 7, content="other"),
                ],
            )
        )


def test_many_rows_in_one_batch(ledger: Ledger) -> None:
    ticket = new_ticket()
    tasks = [
        task_result(ticket, f"task-{i:04d}", at=T0 + timedelta(seconds=i)) for i in range(1500)
    ]
    results = [workflow_result(ticket, v) for v in range(1, 41)]
    reviews = [
        review(ticket, "task", f"task-{i:04d}", at=T0 + timedelta(seconds=i)) for i in range(600)
    ]
    batch = LedgerBatch(
        ticket_id=ticket, task_results=tasks, workflow_results=results, reviews=reviews
    )

    first = ledger.write(batch)
    assert first.task_results == TableWriteCounts(inserted=1500)
    assert first.workflow_results == TableWriteCounts(inserted=40)
    assert first.validation_reviews == TableWriteCounts(inserted=600)

    verified = [
        t.model_copy(update={"verification": "verified", "review_id": f"rv-{t.task_id}"})
        for t in tasks[:600]
    ]
    second = ledger.write(
        LedgerBatch(ticket_id=ticket, task_results=verified + tasks[600:], reviews=reviews)
    )
    assert second.task_results == TableWriteCounts(updated=600, already_present=900)
    assert second.validation_reviews == TableWriteCounts(already_present=600)

    stored = ledger.task_results(ticket)
    assert stored == verified + tasks[600:]
    assert ledger.workflow_results(ticket) == results
    assert len(ledger.reviews(ticket)) == 600


def test_concurrent_redeliveries(ledger: Ledger) -> None:
    """Overlapping attempts of one activity (e.g. after a timeout) write the batch once."""
    ticket = new_ticket()
    batch = LedgerBatch(
        ticket_id=ticket,
        task_results=[task_result(ticket, f"task-{i}") for i in range(50)],
        workflow_results=[workflow_result(ticket)],
        reviews=[review(ticket, "task", f"task-{i}") for i in range(20)],
    )
    with ThreadPoolExecutor(max_workers=6) as pool:
        reports = list(pool.map(ledger.write, [batch] * 6))
    assert sum(r.inserted for r in reports) == batch.size
    assert all(r.inserted + r.already_present == batch.size for r in reports)
    assert len(ledger.task_results(ticket)) == 50


def test_sqlite_settings(tmp_path: Path) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'a' / 'b' / 'ledger.db'}") as led:
        led.create_all()
        led.create_all()  # idempotent
        with led.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    assert (tmp_path / "a" / "b" / "ledger.db").exists()


async def test_sqlite_in_memory_is_shared_across_threads() -> None:
    with Ledger("sqlite://") as led:
        led.create_all()
        ticket = new_ticket()
        report = await ActivityEnvironment().run(
            LedgerActivities(led).write_ledger,
            LedgerBatch(ticket_id=ticket, reviews=[review(ticket)]),
        )
        assert report.validation_reviews.inserted == 1
        assert led.reviews(ticket) == [review(ticket)]


def test_sqlite_without_returning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback for SQLite < 3.35 (no RETURNING) gives the same answers."""
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as led:
        led.create_all()
        monkeypatch.setattr(led.engine.dialect, "insert_returning", False)
        ticket = new_ticket()
        batch = LedgerBatch(
            ticket_id=ticket,
            task_results=[task_result(ticket)],
            workflow_results=[workflow_result(ticket)],
        )
        assert led.write(batch).inserted == 2
        again = led.write(batch)
        assert (again.inserted, again.already_present) == (0, 2)
        other_id = workflow_result(ticket).model_copy(update={"id": "other"})
        with pytest.raises(LedgerConflict, match="unique key"):
            led.write(LedgerBatch(ticket_id=ticket, workflow_results=[other_id]))


# ------------------------------------------------------------------ activity


async def test_activity_writes_and_reports(ledger: Ledger) -> None:
    ticket = new_ticket()
    batch = LedgerBatch(
        ticket_id=ticket,
        task_results=[task_result(ticket)],
        workflow_results=[workflow_result(ticket)],
        reviews=[review(ticket)],
    )
    acts = LedgerActivities(ledger)
    assert acts.activities() == [acts.write_ledger]
    env = ActivityEnvironment()

    report = await env.run(acts.write_ledger, batch)
    assert isinstance(report, LedgerWriteReport)
    assert (report.inserted, report.already_present) == (3, 0)
    report = await env.run(acts.write_ledger, batch)
    assert (report.inserted, report.already_present) == (0, 3)


async def test_activity_turns_a_conflict_into_a_non_retryable_error(ledger: Ledger) -> None:
    ticket = new_ticket()
    acts = LedgerActivities(ledger)
    env = ActivityEnvironment()
    await env.run(
        acts.write_ledger, LedgerBatch(ticket_id=ticket, workflow_results=[workflow_result(ticket)])
    )
    changed = workflow_result(ticket, content="changed")

    with pytest.raises(ApplicationError) as caught:
        await env.run(acts.write_ledger, LedgerBatch(ticket_id=ticket, workflow_results=[changed]))

    err = caught.value
    assert err.type == "LedgerConflict"
    assert err.non_retryable
    assert isinstance(err.__cause__, LedgerConflict)
    assert err.details[0] == {
        "table": "workflow_results",
        "record_id": changed.id,
        "fields": ["content", "content_sha256", "size_bytes"],
    }
    assert ledger.workflow_results(ticket) == [workflow_result(ticket)]


async def test_activity_lets_other_errors_retry(tmp_path: Path) -> None:
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")  # tables never created
    ticket = new_ticket()
    with pytest.raises(Exception) as caught:
        await ActivityEnvironment().run(
            LedgerActivities(led).write_ledger,
            LedgerBatch(ticket_id=ticket, reviews=[review(ticket)]),
        )
    assert not isinstance(caught.value, ApplicationError)
    led.dispose()


# ------------------------------------------------------------------ property


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[str, list[LedgerBatch], list[int]]:
    """A ticket's records split into batches, and a shuffled delivery order in which
    every batch arrives at least once and some arrive again."""
    ticket = new_ticket()
    n_tasks = draw(st.integers(1, 6))
    n_results = draw(st.integers(0, 3))
    n_reviews = draw(st.integers(0, 4))
    n_batches = draw(st.integers(1, 4))

    tasks = [task_result(ticket, f"task-{i}", at=T0 + timedelta(seconds=i)) for i in range(n_tasks)]
    verified = [
        t.model_copy(update={"verification": "verified", "review_id": f"rv-{t.task_id}"})
        for t in tasks
        if draw(st.booleans())
    ]
    results = [workflow_result(ticket, v) for v in range(1, n_results + 1)]
    reviews = [review(ticket, "task", f"task-{i}") for i in range(n_reviews)]

    slots: list[dict[str, list[object]]] = [
        {"task_results": [], "workflow_results": [], "reviews": []} for _ in range(n_batches)
    ]
    for field, records in (
        ("task_results", [*tasks, *verified]),
        ("workflow_results", results),
        ("reviews", reviews),
    ):
        for record in records:
            slots[draw(st.integers(0, n_batches - 1))][field].append(record)
    batches = [LedgerBatch.model_validate({"ticket_id": ticket, **slot}) for slot in slots]

    extra = draw(st.lists(st.integers(0, n_batches - 1), max_size=6))
    order = draw(st.permutations([*range(n_batches), *extra]))
    return ticket, batches, list(order)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=deliveries())
def test_any_delivery_order_stores_each_id_exactly_once(
    sqlite_ledger: Ledger, case: tuple[str, list[LedgerBatch], list[int]]
) -> None:
    ticket, batches, order = case
    expected: dict[str, dict[str, object]] = {
        "task_results": {},
        "workflow_results": {},
        "reviews": {},
    }
    for batch in batches:
        for field in expected:
            for record in getattr(batch, field):
                current = expected[field].get(record.id)
                # A reviewed task result wins over its unreviewed delivery, in any order.
                if current is None or getattr(record, "verification", "") == "verified":
                    expected[field][record.id] = record

    inserted = 0
    for index in order:
        inserted += sqlite_ledger.write(batches[index]).inserted

    stored = dump_all(sqlite_ledger, ticket)
    for field, rows in zip(expected, stored, strict=True):
        ids = [row.id for row in rows]  # type: ignore[attr-defined]
        assert len(ids) == len(set(ids))
        assert {row.id: row for row in rows} == expected[field]  # type: ignore[attr-defined]
    assert inserted == sum(len(v) for v in expected.values())
    with sqlite_ledger.engine.connect() as conn:
        for model in (TaskResultRow, WorkflowResultRow):
            table = table_of(model)
            per_id = select(table.c.id, func.count()).where(table.c.ticket_id == ticket)
            counts = conn.execute(per_id.group_by(table.c.id)).all()
            assert all(count == 1 for _, count in counts)
