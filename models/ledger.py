"""Ledger records: what the ticket workflow hands to the ``write_ledger`` activity.

The ledger is the durable, SQL-queryable audit trail of a ticket (DESIGN §8). The workflow
is the source of live truth; it derives every record (and its id) deterministically from
its own state and sends them in a :class:`LedgerBatch`. Activities are at-least-once, so
the same batch may arrive twice, shuffled with others: the ledger store is idempotent on
the record ids.

These are plain pydantic v2 models, serialised as plain JSON by the pydantic data
converter. This module is imported by Temporal workflow code and must stay free of ORM,
database and I/O imports.

Adding a record kind (diagnostic runs, restart events, escalations) = a record model here,
a list field on :class:`LedgerBatch`, a counts field on :class:`LedgerWriteReport`, a table
in ``ledger/tables.py`` and one entry in the store's kind registry.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

#: Name of the ledger activity, for workflow code that must not import ``activities``.
WRITE_LEDGER_ACTIVITY = "write_ledger"

ResultType = Literal["implementation", "analysis", "fix", "design", "test", "documentation"]
Verification = Literal["unverified", "verified", "disputed"]
SubjectKind = Literal["task", "result"]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


#: A timezone-aware datetime, normalised to UTC. Naive datetimes are refused: a ledger row
#: must say which instant it means.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]

_Id = Annotated[str, Field(min_length=1, max_length=1024)]
_Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


# --------------------------------------------------------------------------- ids


def task_result_record_id(ticket_id: str, task_id: str, attempt: int, iteration: int) -> str:
    """Deterministic id of a task result: ``<ticket>/<task>/a<attempt>/i<iteration>``."""
    return f"{ticket_id}/{task_id}/a{attempt}/i{iteration}"


def workflow_result_record_id(ticket_id: str, version: int) -> str:
    """Deterministic id of a final-result version: ``<ticket>/v<version>``."""
    return f"{ticket_id}/v{version}"


def review_record_id(
    ticket_id: str, subject_kind: SubjectKind, subject_id: str, iteration: int
) -> str:
    """Deterministic id of a review: ``<ticket>/review/<kind>/<subject>/i<iteration>``.

    For a task ``subject_id`` is the task id and ``iteration`` its validation iteration;
    for a final result ``subject_id`` is the version (as a string) and ``iteration`` the
    version number.
    """
    return f"{ticket_id}/review/{subject_kind}/{subject_id}/i{iteration}"


# ----------------------------------------------------------------------- records


class LedgerRecord(BaseModel):
    """Base of every ledger record: immutable value, keyed by a deterministic ``id``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: _Id = Field(description="Deterministic primary key derived by the workflow")
    ticket_id: _Id


class TaskResultRecord(LedgerRecord):
    """A worker's result for one task attempt and validation iteration.

    Only ``verification`` and ``review_id`` change after the row is first written (when
    the task's review arrives); every other field is fixed.
    """

    task_id: _Id
    attempt: int = Field(ge=0)
    iteration: int = Field(ge=0)
    agent_id: _Id
    result_type: ResultType
    content: str = Field(description="Markdown result body")
    verification: Verification = "unverified"
    review_id: str | None = None
    submitted_at: UtcDatetime


class WorkflowResultRecord(LedgerRecord):
    """One append-only version of the ticket's final result. Never changes once stored."""

    version: int = Field(ge=1)
    agent_id: _Id
    content: str | None = Field(default=None, description="Markdown content, if inline")
    file_ref: str | None = Field(default=None, description="Path of a .md file, if by reference")
    content_sha256: _Sha256
    size_bytes: int = Field(ge=0)
    criteria_snapshot: list[str] = Field(
        default_factory=list, description="The ticket's result_criteria at submission time"
    )
    submitted_at: UtcDatetime

    @model_validator(mode="after")
    def _has_body(self) -> WorkflowResultRecord:
        if self.content is None and self.file_ref is None:
            raise ValueError("a workflow result needs content or a file_ref")
        return self


class ValidationReviewRecord(LedgerRecord):
    """A validator's verdict on a task iteration or a final-result version."""

    subject_kind: SubjectKind
    subject_id: _Id = Field(description="Task id, or the result version as a string")
    iteration: int = Field(ge=0, description="Task validation iteration; for results the version")
    validator_id: _Id
    passed: bool
    feedback: str = ""
    evidence: list[str] = Field(default_factory=list)
    created_at: UtcDatetime


# ------------------------------------------------------------------ batch/report


class LedgerBatch(BaseModel):
    """Everything one ``write_ledger`` call stores, atomically, for one ticket."""

    model_config = ConfigDict(frozen=True)

    ticket_id: _Id
    task_results: list[TaskResultRecord] = Field(default_factory=list)
    workflow_results: list[WorkflowResultRecord] = Field(default_factory=list)
    reviews: list[ValidationReviewRecord] = Field(default_factory=list)

    @model_validator(mode="after")
    def _same_ticket(self) -> LedgerBatch:
        for record in self.records():
            if record.ticket_id != self.ticket_id:
                raise ValueError(
                    f"record {record.id!r} belongs to ticket {record.ticket_id!r}, "
                    f"not to the batch's ticket {self.ticket_id!r}"
                )
        return self

    def records(self) -> list[LedgerRecord]:
        """All records of the batch, of every kind."""
        return [*self.task_results, *self.workflow_results, *self.reviews]

    def is_empty(self) -> bool:
        return not (self.task_results or self.workflow_results or self.reviews)

    @property
    def size(self) -> int:
        """Number of records in the batch."""
        return len(self.task_results) + len(self.workflow_results) + len(self.reviews)


class TableWriteCounts(BaseModel):
    """What a write did to one table (duplicate ids inside a batch count once)."""

    inserted: int = 0
    already_present: int = Field(
        default=0, description="Rows already stored with the same content (a redelivery)"
    )
    updated: int = Field(default=0, description="Rows whose mutable columns changed")

    @property
    def total(self) -> int:
        return self.inserted + self.already_present + self.updated


class LedgerWriteReport(BaseModel):
    """Returned by the ``write_ledger`` activity; one counts block per table."""

    ticket_id: str
    task_results: TableWriteCounts = Field(default_factory=TableWriteCounts)
    workflow_results: TableWriteCounts = Field(default_factory=TableWriteCounts)
    validation_reviews: TableWriteCounts = Field(default_factory=TableWriteCounts)

    def tables(self) -> dict[str, TableWriteCounts]:
        """Counts keyed by table name."""
        return {name: value for name, value in self if isinstance(value, TableWriteCounts)}

    @property
    def inserted(self) -> int:
        return sum(c.inserted for c in self.tables().values())

    @property
    def already_present(self) -> int:
        return sum(c.already_present for c in self.tables().values())

    @property
    def updated(self) -> int:
        return sum(c.updated for c in self.tables().values())
