"""Ledger records: what the ticket workflow hands to the ``write_ledger`` activity.

The ledger is the durable, SQL-queryable audit trail of a ticket (DESIGN §8). The workflow
is the source of live truth; it derives every record (and its id) deterministically from
its own state and sends them in a :class:`LedgerBatch`. Activities are at-least-once, so
the same batch may arrive twice, shuffled with others: the ledger store is idempotent on
the record ids.

These are plain pydantic v2 models, serialised as plain JSON by the pydantic data
converter. This module is imported by Temporal workflow code and must stay free of ORM,
database and I/O imports.

Adding a record kind = a record model here, a list field on :class:`LedgerBatch`, a counts
field on :class:`LedgerWriteReport`, a table in ``ledger/tables.py`` and one entry in the
store's kind registry.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    model_validator,
)

from models.diagnosis import RunOutcome, RunStatus, Trigger

#: Name of the ledger activity, for workflow code that must not import ``activities``.
WRITE_LEDGER_ACTIVITY = "write_ledger"

ResultType = Literal["implementation", "analysis", "fix", "design", "test", "documentation"]
Verification = Literal["unverified", "verified", "disputed"]
SubjectKind = Literal["task", "result"]
Severity = Literal["SEV-1", "SEV-2", "SEV-3", "SEV-4"]
#: Agent runtimes (DESIGN §6); the same names as ``models.runtime.RuntimeName``.
RestartRuntime = Literal["external", "local-process", "command"]
#: ``requested`` when the restart is decided; then one terminal outcome: ``restarted``
#: (a replacement runs), ``quarantined`` (too many restarts: no replacement, no new tasks),
#: ``asked_to_restart`` (an external agent was told to restart itself), ``failed``.
RestartEventOutcome = Literal["requested", "restarted", "quarantined", "asked_to_restart", "failed"]

#: Progress rank of a diagnostic run's status; the three terminal statuses share the top.
RUN_STATUS_RANK: dict[str, int] = {
    "created": 0,
    "running": 1,
    "completed": 2,
    "failed": 2,
    "skipped": 2,
}
#: Progress rank of a diagnostic run's outcome (``None`` = not known yet).
RUN_OUTCOME_RANK: dict[str | None, int] = {None: 0, "pending": 1, "recovered": 2, "failed": 2}
#: Progress rank of a restart's outcome; the four terminal outcomes share the top.
RESTART_OUTCOME_RANK: dict[str, int] = {
    "requested": 0,
    "restarted": 1,
    "quarantined": 1,
    "asked_to_restart": 1,
    "failed": 1,
}


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


def diagnostic_run_id(ticket_id: str, number: int) -> str:
    """Id of a ticket's ``number``-th diagnosis (also its child workflow's run id):
    ``<ticket>-diagnosis-<number>``."""
    return f"{ticket_id}-diagnosis-{number}"


def escalation_record_id(ticket_id: str, source: str, key: str) -> str:
    """Deterministic id of an escalation: ``<ticket>/escalation/<source>/<key>``.

    ``key`` tells escalations of one source apart (e.g. the diagnosis run id, or the agent
    lineage and restart count); the same escalation raised again must reuse it.
    """
    return f"{ticket_id}/escalation/{source}/{key}"


def restart_event_id(ticket_id: str, lineage: str, number: int) -> str:
    """Deterministic id of a restart: ``<ticket>/restart/<lineage>/<number>``.

    ``lineage`` is the agent spec name shared by an agent and its replacements; ``number``
    counts the lineage's restarts (1 for its first).
    """
    return f"{ticket_id}/restart/{lineage}/{number}"


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


class DiagnosticRunRecord(LedgerRecord):
    """One diagnosis of a ticket (DESIGN §5), written as it progresses.

    Fixed once stored: ``ticket_id``, ``number``, ``trigger``, ``reason``,
    ``counts_at_trigger``, ``idle_seconds``, ``started_at``. The rest only moves forward
    (see :data:`RUN_STATUS_RANK`): the ledger keeps the most advanced state it has seen,
    whatever order the deliveries arrive in.
    """

    number: int = Field(ge=1, description="1 for the ticket's first diagnosis, 2, …")
    trigger: Trigger
    reason: str = ""
    status: RunStatus = "created"
    outcome: RunOutcome | None = Field(
        default=None, description="pending while recovery tasks run; then recovered or failed"
    )
    counts_at_trigger: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, description="Task counts by status when the diagnosis fired"
    )
    idle_seconds: float = Field(ge=0.0, description="Time since the last task activity")
    evidence_summary: str = ""
    hypotheses: list[dict[str, JsonValue]] = Field(
        default_factory=list,
        description="Serialised hypotheses (statement, likelihood, evidence, counterpoints, "
        "signature), ranked",
    )
    generator: str | None = Field(default=None, description="rules, or llm:<model>")
    created_task_ids: list[str] = Field(default_factory=list)
    started_at: UtcDatetime
    finished_at: UtcDatetime | None = None

    @model_validator(mode="after")
    def _finished_after_start(self) -> DiagnosticRunRecord:
        if self.finished_at is not None and self.finished_at < self.started_at:
            raise ValueError("a diagnostic run cannot finish before it started")
        return self


class EscalationRecord(LedgerRecord):
    """A call for a person (DESIGN §5, §6). Only the acknowledgement changes, and only once:
    an acknowledged escalation stays acknowledged."""

    severity: Severity
    source: str = Field(
        min_length=1,
        max_length=63,
        description="What escalated: diagnosis_guard, restart_quarantine, manual, …",
    )
    reason: str
    agent_id: str | None = None
    diagnosis_run_id: str | None = None
    created_at: UtcDatetime
    acknowledged: bool = False
    acknowledged_at: UtcDatetime | None = None
    acknowledged_by: str | None = Field(default=None, min_length=1, max_length=1024)

    @model_validator(mode="after")
    def _acknowledgement(self) -> EscalationRecord:
        if self.acknowledged and self.acknowledged_at is None:
            raise ValueError("an acknowledged escalation needs acknowledged_at")
        if not self.acknowledged and (
            self.acknowledged_at is not None or self.acknowledged_by is not None
        ):
            raise ValueError("acknowledged_at/acknowledged_by need acknowledged=True")
        return self


class RestartEventRecord(LedgerRecord):
    """One restart of an agent (DESIGN §6), first written when it is requested
    (``outcome="requested"``), then again when it finishes.

    Fixed once stored: ``ticket_id``, ``agent_id``, ``lineage``, ``number``, ``reason``,
    ``runtime``, ``old_pid``, ``reassigned_task_ids``, ``requested_at``. The rest only moves
    forward (see :data:`RESTART_OUTCOME_RANK`): a terminal outcome never changes, and an
    empty value (``None``) never clears a stored one.
    """

    agent_id: _Id = Field(description="The agent that was restarted")
    lineage: _Id = Field(description="Agent spec name, shared by an agent and its replacements")
    number: int = Field(ge=1, description="The lineage's restart count: 1 for its first restart")
    reason: str = ""
    runtime: RestartRuntime
    outcome: RestartEventOutcome = "requested"
    graceful: bool | None = Field(default=None, description="Exited within the grace period")
    forced: bool | None = Field(default=None, description="Had to be killed")
    old_pid: int | None = Field(default=None, gt=0)
    new_pid: int | None = Field(default=None, gt=0)
    reassigned_task_ids: list[str] = Field(
        default_factory=list, description="Tasks of the agent sent back to pending"
    )
    requested_at: UtcDatetime
    finished_at: UtcDatetime | None = None

    @model_validator(mode="after")
    def _finished(self) -> RestartEventRecord:
        if self.finished_at is not None:
            if self.outcome == "requested":
                raise ValueError("a restart that is only requested cannot have finished_at")
            if self.finished_at < self.requested_at:
                raise ValueError("a restart cannot finish before it was requested")
        return self


# ------------------------------------------------------------------ batch/report


class EscalationResolutionRecord(LedgerRecord):
    """How a person (or the ticket's end) resolved an escalation; its ``id`` is the
    escalation's. Insert-only: a resolution is never undone or edited."""

    resolved_at: UtcDatetime
    resolved_by: str = Field(min_length=1, max_length=1024)
    note: str = Field(description="the note (a question's answer) the agents were given")


class LedgerBatch(BaseModel):
    """Everything one ``write_ledger`` call stores, atomically, for one ticket."""

    model_config = ConfigDict(frozen=True)

    ticket_id: _Id
    task_results: list[TaskResultRecord] = Field(default_factory=list)
    workflow_results: list[WorkflowResultRecord] = Field(default_factory=list)
    reviews: list[ValidationReviewRecord] = Field(default_factory=list)
    diagnostic_runs: list[DiagnosticRunRecord] = Field(default_factory=list)
    restart_events: list[RestartEventRecord] = Field(default_factory=list)
    escalations: list[EscalationRecord] = Field(default_factory=list)
    escalation_resolutions: list[EscalationResolutionRecord] = Field(default_factory=list)

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
        return [
            *self.task_results,
            *self.workflow_results,
            *self.reviews,
            *self.diagnostic_runs,
            *self.restart_events,
            *self.escalations,
            *self.escalation_resolutions,
        ]

    def is_empty(self) -> bool:
        return self.size == 0

    @property
    def size(self) -> int:
        """Number of records in the batch."""
        return (
            len(self.task_results)
            + len(self.workflow_results)
            + len(self.reviews)
            + len(self.diagnostic_runs)
            + len(self.restart_events)
            + len(self.escalations)
            + len(self.escalation_resolutions)
        )

    def split(self, max_bytes: int) -> tuple[LedgerBatch, LedgerBatch]:
        """``(first, rest)``: the leading records that fit in ``max_bytes`` as JSON, the rest.

        A write is one activity input, and Temporal refuses payloads over 2 MB: an outbox
        that grew while a write was in flight (many results at once, a big final result) is
        written in pieces. ``first`` holds at least one record, so a piece always moves.
        """
        if len(self.model_dump_json().encode("utf-8")) <= max_bytes:
            return self, LedgerBatch(ticket_id=self.ticket_id)
        kinds = (
            "task_results",
            "workflow_results",
            "reviews",
            "diagnostic_runs",
            "restart_events",
            "escalations",
            "escalation_resolutions",
        )
        first: dict[str, list[Any]] = {k: [] for k in kinds}
        rest: dict[str, list[Any]] = {k: [] for k in kinds}
        used, full = 200, False  # the envelope
        for kind in kinds:
            for record in getattr(self, kind):
                cost = len(record.model_dump_json().encode("utf-8")) + 1  # bytes, not chars
                if not full and (used + cost <= max_bytes or used == 200):
                    first[kind].append(record)
                    used += cost
                else:
                    full = True
                    rest[kind].append(record)
        return (
            LedgerBatch(ticket_id=self.ticket_id, **first),
            LedgerBatch(ticket_id=self.ticket_id, **rest),
        )


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
    diagnostic_runs: TableWriteCounts = Field(default_factory=TableWriteCounts)
    restart_events: TableWriteCounts = Field(default_factory=TableWriteCounts)
    escalations: TableWriteCounts = Field(default_factory=TableWriteCounts)
    escalation_resolutions: TableWriteCounts = Field(default_factory=TableWriteCounts)

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
