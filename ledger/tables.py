"""SQLModel tables of the ledger (DESIGN §8).

One table per record kind of ``models.ledger``; the columns mirror the record fields by
name (so a row converts to its record with ``Record.model_validate``) plus ``recorded_at``,
the time the ledger first stored the row. Primary key = the record's deterministic id.

Portable between SQLite (default) and PostgreSQL (production):

* lists and mappings are JSON columns (``jsonb`` on PostgreSQL);
* datetimes are :class:`UtcDateTime`: ``timestamptz`` on PostgreSQL, ISO text holding UTC
  on SQLite, and always read back as timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    Index,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

#: Ids are derived by the workflow (``<ticket>/<task>/a1/i2``): unbounded strings.
_ID = String()
#: Lists of strings: ``jsonb`` on PostgreSQL (queryable, indexable), JSON text on SQLite.
_JSON_LIST = JSON().with_variant(JSONB(), "postgresql")
#: JSON objects (and lists of them): the same column type.
_JSON = _JSON_LIST


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored as UTC; naive values are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the ledger stores timezone-aware UTC")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # SQLite has no timezone type: store the UTC wall time, re-attach UTC on read.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TaskResultRow(SQLModel, table=True):
    """``task_results``: a worker's result per task attempt and validation iteration."""

    __tablename__ = "task_results"
    __table_args__ = (
        Index("ix_task_results_ticket_task", "ticket_id", "task_id"),
        Index("ix_task_results_task_id", "task_id"),
        CheckConstraint(
            "verification IN ('unverified', 'verified', 'disputed')",
            name="ck_task_results_verification",
        ),
    )

    id: str = Field(primary_key=True, sa_type=_ID)
    ticket_id: str = Field(sa_type=_ID)
    task_id: str = Field(sa_type=_ID)
    attempt: int
    iteration: int
    agent_id: str = Field(sa_type=_ID)
    result_type: str = Field(sa_type=String(32))
    content: str = Field(sa_type=Text)
    verification: str = Field(default="unverified", sa_type=String(16))
    review_id: str | None = Field(default=None, sa_type=_ID)
    submitted_at: datetime = Field(sa_type=UtcDateTime)
    recorded_at: datetime = Field(
        default_factory=_utc_now, sa_type=UtcDateTime, sa_column_kwargs={"default": _utc_now}
    )


class WorkflowResultRow(SQLModel, table=True):
    """``workflow_results``: append-only versions of a ticket's final result."""

    __tablename__ = "workflow_results"
    __table_args__ = (
        Index("uq_workflow_results_ticket_version", "ticket_id", "version", unique=True),
        CheckConstraint("version >= 1", name="ck_workflow_results_version"),
    )

    id: str = Field(primary_key=True, sa_type=_ID)
    ticket_id: str = Field(sa_type=_ID)
    version: int
    agent_id: str = Field(sa_type=_ID)
    content: str | None = Field(default=None, sa_type=Text)
    file_ref: str | None = Field(default=None, sa_type=Text)
    content_sha256: str = Field(sa_type=String(64))
    size_bytes: int
    criteria_snapshot: list[str] = Field(default_factory=list, sa_type=_JSON_LIST)
    submitted_at: datetime = Field(sa_type=UtcDateTime)
    recorded_at: datetime = Field(
        default_factory=_utc_now, sa_type=UtcDateTime, sa_column_kwargs={"default": _utc_now}
    )


_RESULT_REVIEW = text("subject_kind = 'result'")


class ValidationReviewRow(SQLModel, table=True):
    """``validation_reviews``: validators' verdicts on task iterations and result versions.

    A result version is validated exactly once (DESIGN §4): enforced by a partial unique
    index on (ticket, version) for result reviews.
    """

    __tablename__ = "validation_reviews"
    __table_args__ = (
        Index("ix_validation_reviews_ticket_subject", "ticket_id", "subject_kind", "subject_id"),
        Index(
            "uq_validation_reviews_result_version",
            "ticket_id",
            "subject_id",
            unique=True,
            sqlite_where=_RESULT_REVIEW,
            postgresql_where=_RESULT_REVIEW,
        ),
        CheckConstraint(
            "subject_kind IN ('task', 'result')", name="ck_validation_reviews_subject_kind"
        ),
    )

    id: str = Field(primary_key=True, sa_type=_ID)
    ticket_id: str = Field(sa_type=_ID)
    subject_kind: str = Field(sa_type=String(16))
    subject_id: str = Field(sa_type=_ID)
    iteration: int
    validator_id: str = Field(sa_type=_ID)
    passed: bool
    feedback: str = Field(default="", sa_type=Text)
    evidence: list[str] = Field(default_factory=list, sa_type=_JSON_LIST)
    created_at: datetime = Field(sa_type=UtcDateTime)
    recorded_at: datetime = Field(
        default_factory=_utc_now, sa_type=UtcDateTime, sa_column_kwargs={"default": _utc_now}
    )


_RUN_STATUSES = "'created', 'running', 'completed', 'failed', 'skipped'"


class DiagnosticRunRow(SQLModel, table=True):
    """``diagnostic_runs``: one row per diagnosis of a ticket, updated as it progresses.

    ``trigger`` is not constrained here (new triggers need no migration); the record model
    validates it.
    """

    __tablename__ = "diagnostic_runs"
    __table_args__ = (
        Index("uq_diagnostic_runs_ticket_number", "ticket_id", "number", unique=True),
        CheckConstraint("number >= 1", name="ck_diagnostic_runs_number"),
        CheckConstraint(f"status IN ({_RUN_STATUSES})", name="ck_diagnostic_runs_status"),
        CheckConstraint(
            "outcome IS NULL OR outcome IN ('pending', 'recovered', 'failed')",
            name="ck_diagnostic_runs_outcome",
        ),
    )

    id: str = Field(primary_key=True, sa_type=_ID)
    ticket_id: str = Field(sa_type=_ID)
    number: int
    trigger: str = Field(sa_type=String(64))
    reason: str = Field(default="", sa_type=Text)
    status: str = Field(default="created", sa_type=String(16))
    outcome: str | None = Field(default=None, sa_type=String(16))
    counts_at_trigger: dict[str, int] = Field(default_factory=dict, sa_type=_JSON)
    idle_seconds: float = Field(sa_type=Float)
    evidence_summary: str = Field(default="", sa_type=Text)
    hypotheses: list[dict[str, Any]] = Field(default_factory=list, sa_type=_JSON)
    generator: str | None = Field(default=None, sa_type=Text)
    created_task_ids: list[str] = Field(default_factory=list, sa_type=_JSON_LIST)
    started_at: datetime = Field(sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    recorded_at: datetime = Field(
        default_factory=_utc_now, sa_type=UtcDateTime, sa_column_kwargs={"default": _utc_now}
    )


_RESTART_OUTCOMES = "'requested', 'restarted', 'quarantined', 'asked_to_restart', 'failed'"


class RestartEventRow(SQLModel, table=True):
    """``restart_events``: one row per restart of an agent lineage, updated when it finishes.

    ``runtime`` is not constrained here (new runtimes need no migration); the record model
    validates it.
    """

    __tablename__ = "restart_events"
    __table_args__ = (
        Index(
            "uq_restart_events_ticket_lineage_number", "ticket_id", "lineage", "number", unique=True
        ),
        Index("ix_restart_events_agent_id", "agent_id"),
        CheckConstraint("number >= 1", name="ck_restart_events_number"),
        CheckConstraint(f"outcome IN ({_RESTART_OUTCOMES})", name="ck_restart_events_outcome"),
    )

    id: str = Field(primary_key=True, sa_type=_ID)
    ticket_id: str = Field(sa_type=_ID)
    agent_id: str = Field(sa_type=_ID)
    lineage: str = Field(sa_type=_ID)
    number: int
    reason: str = Field(default="", sa_type=Text)
    runtime: str = Field(sa_type=String(32))
    outcome: str = Field(default="requested", sa_type=String(32))
    graceful: bool | None = Field(default=None, sa_type=Boolean)
    forced: bool | None = Field(default=None, sa_type=Boolean)
    old_pid: int | None = Field(default=None, sa_type=BigInteger)
    new_pid: int | None = Field(default=None, sa_type=BigInteger)
    reassigned_task_ids: list[str] = Field(default_factory=list, sa_type=_JSON_LIST)
    requested_at: datetime = Field(sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    recorded_at: datetime = Field(
        default_factory=_utc_now, sa_type=UtcDateTime, sa_column_kwargs={"default": _utc_now}
    )


class EscalationRow(SQLModel, table=True):
    """``escalations``: calls for a person; only the acknowledgement changes, once."""

    __tablename__ = "escalations"
    __table_args__ = (
        Index("ix_escalations_ticket_created", "ticket_id", "created_at"),
        CheckConstraint(
            "severity IN ('SEV-1', 'SEV-2', 'SEV-3', 'SEV-4')", name="ck_escalations_severity"
        ),
    )

    id: str = Field(primary_key=True, sa_type=_ID)
    ticket_id: str = Field(sa_type=_ID)
    severity: str = Field(sa_type=String(8))
    source: str = Field(sa_type=String(64))
    reason: str = Field(sa_type=Text)
    agent_id: str | None = Field(default=None, sa_type=_ID)
    diagnosis_run_id: str | None = Field(default=None, sa_type=_ID)
    created_at: datetime = Field(sa_type=UtcDateTime)
    acknowledged: bool = Field(default=False, sa_type=Boolean)
    acknowledged_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    acknowledged_by: str | None = Field(default=None, sa_type=_ID)
    recorded_at: datetime = Field(
        default_factory=_utc_now, sa_type=UtcDateTime, sa_column_kwargs={"default": _utc_now}
    )


class EscalationResolutionRow(SQLModel, table=True):
    """``escalation_resolutions``: how each escalation was resolved (insert-only; the id is
    the escalation's). A table of its own, so ledgers created before it need no migration."""

    __tablename__ = "escalation_resolutions"
    __table_args__ = (Index("ix_escalation_resolutions_ticket", "ticket_id", "resolved_at"),)

    id: str = Field(primary_key=True, sa_type=_ID)
    ticket_id: str = Field(sa_type=_ID)
    resolved_at: datetime = Field(sa_type=UtcDateTime)
    resolved_by: str = Field(sa_type=_ID)
    note: str = Field(sa_type=Text)
    recorded_at: datetime = Field(
        default_factory=_utc_now, sa_type=UtcDateTime, sa_column_kwargs={"default": _utc_now}
    )


def table_of(model: type[SQLModel]) -> Table:
    """The SQLAlchemy ``Table`` behind a SQLModel table class."""
    return cast(Table, cast(Any, model).__table__)


#: Every ledger table, in creation order.
LEDGER_TABLES: tuple[Table, ...] = (
    table_of(TaskResultRow),
    table_of(WorkflowResultRow),
    table_of(ValidationReviewRow),
    table_of(DiagnosticRunRow),
    table_of(RestartEventRow),
    table_of(EscalationRow),
    table_of(EscalationResolutionRow),
)
