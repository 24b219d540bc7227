"""The ledger store: idempotent, transactional writes of a :class:`LedgerBatch`.

Rules (DESIGN §2.4, §4, §8):

* One batch = one transaction: either every record of it is stored or none.
* At-least-once delivery: the same batch may be written any number of times, in any order
  with other batches. Records are keyed by their deterministic id, so a redelivery is a
  no-op (``already_present``).
* Workflow results and reviews are insert-only: a stored version never changes. The same id
  with different content raises :class:`LedgerConflict` (and the transaction rolls back).
* Task results: inserted if absent; afterwards only the mutable columns ``verification``
  and ``review_id`` are updated. A change to any other column is a :class:`LedgerConflict`.
  A stale redelivery (``unverified``) never overwrites a reviewed row.
* Diagnostic runs, restart events and escalations progress monotonically: the stored row
  and a redelivery are merged (see ``_merge_diagnostic_run`` / ``_merge_restart_event`` /
  ``_merge_escalation``), so a late, duplicate or out-of-order delivery never takes a row
  back. Their fixed columns differing is a :class:`LedgerConflict`.

Each kind is written with a dialect-specific ``INSERT ... ON CONFLICT DO NOTHING
RETURNING id``; the ids that were not inserted are read back in one ``SELECT`` and compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from sqlalchemy import Table, bindparam, create_engine, event, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel

from ledger.tables import (
    LEDGER_TABLES,
    DiagnosticRunRow,
    EscalationResolutionRow,
    EscalationRow,
    RestartEventRow,
    TaskResultRow,
    ValidationReviewRow,
    WorkflowResultRow,
)
from ledger.tables import table_of as _table_of
from models.ledger import (
    RESTART_OUTCOME_RANK,
    RUN_OUTCOME_RANK,
    RUN_STATUS_RANK,
    DiagnosticRunRecord,
    EscalationRecord,
    EscalationResolutionRecord,
    LedgerBatch,
    LedgerRecord,
    LedgerWriteReport,
    RestartEventRecord,
    TableWriteCounts,
    TaskResultRecord,
    ValidationReviewRecord,
    WorkflowResultRecord,
)

__all__ = ["Ledger", "LedgerConflict", "normalise_url"]

#: Ids per ``IN (...)`` list: well under SQLite's and PostgreSQL's parameter limits.
_IN_CHUNK = 500
#: Execution option read by the SQLite ``begin`` hook: the BEGIN mode of a transaction.
_SQLITE_BEGIN = "ledger_sqlite_begin"


class LedgerConflict(Exception):
    """A record id is already stored with different immutable content.

    A stored version never changes, so this is a bug in the caller (the same id derived
    for two different records), not a transient failure: retrying cannot help.
    """

    def __init__(
        self, table: str, record_id: str, fields: Sequence[str] = (), reason: str = ""
    ) -> None:
        self.table = table
        self.record_id = record_id
        self.fields = tuple(fields)
        self.reason = reason or "already stored with different content"
        detail = f" (differs in: {', '.join(self.fields)})" if self.fields else ""
        super().__init__(
            f"{table} row {record_id!r} {self.reason}{detail}; a stored ledger record never changes"
        )


# ----------------------------------------------------------------- record kinds


R = TypeVar("R", bound=LedgerRecord)


def _merge_task_result(stored: TaskResultRecord, incoming: TaskResultRecord) -> TaskResultRecord:
    """The later state wins, except that an ``unverified`` delivery arriving after the
    review must not undo it."""
    if incoming.verification == "unverified" and stored.verification != "unverified":
        return stored
    return incoming


#: Columns of a diagnostic run that follow its status (taken from the more advanced state).
_RUN_PROGRESS_COLUMNS = (
    "evidence_summary",
    "hypotheses",
    "generator",
    "created_task_ids",
    "finished_at",
)


def _merge_diagnostic_run(
    stored: DiagnosticRunRecord, incoming: DiagnosticRunRecord
) -> DiagnosticRunRecord:
    """The most advanced state of a run, whatever order its deliveries arrive in.

    * ``status`` only moves up ``created < running < completed|failed|skipped``; a terminal
      status never changes (another terminal status arriving later is ignored).
    * ``outcome`` only moves up ``None < pending < recovered|failed``, terminal stays.
    * The progress columns are taken from ``incoming`` when its status is the stored one or
      a more advanced one, but an empty value (``None``, ``""``, ``[]``) never erases a
      stored one.
    """
    update: dict[str, Any] = {}
    if incoming.status == stored.status or (
        RUN_STATUS_RANK[incoming.status] > RUN_STATUS_RANK[stored.status]
    ):
        update["status"] = incoming.status
        for column in _RUN_PROGRESS_COLUMNS:
            value = getattr(incoming, column)
            if value is not None and value != "" and value != []:
                update[column] = value
    if RUN_OUTCOME_RANK[incoming.outcome] > RUN_OUTCOME_RANK[stored.outcome]:
        update["outcome"] = incoming.outcome
    return stored.model_copy(update=update) if update else stored


#: Columns of a restart event filled in when it finishes (taken from the more advanced state).
_RESTART_PROGRESS_COLUMNS = ("graceful", "forced", "new_pid", "finished_at")


def _merge_restart_event(
    stored: RestartEventRecord, incoming: RestartEventRecord
) -> RestartEventRecord:
    """The most advanced state of a restart, whatever order its deliveries arrive in.

    * ``outcome`` only moves up ``requested < restarted|quarantined|asked_to_restart|failed``;
      a terminal outcome never changes (another terminal outcome arriving later is ignored,
      with everything it carries).
    * The progress columns are taken from ``incoming`` when its outcome is the stored one or
      a more advanced one, but ``None`` never clears a stored value (``False`` is a value).
    """
    if incoming.outcome != stored.outcome and (
        RESTART_OUTCOME_RANK[incoming.outcome] <= RESTART_OUTCOME_RANK[stored.outcome]
    ):
        return stored
    update: dict[str, Any] = {"outcome": incoming.outcome}
    for column in _RESTART_PROGRESS_COLUMNS:
        value = getattr(incoming, column)
        if value is not None:
            update[column] = value
    return stored.model_copy(update=update)


def _merge_escalation(stored: EscalationRecord, incoming: EscalationRecord) -> EscalationRecord:
    """The first acknowledgement wins; nothing un-acknowledges an escalation."""
    if stored.acknowledged or not incoming.acknowledged:
        return stored
    return incoming


@dataclass(frozen=True, slots=True)
class _Kind(Generic[R]):
    """How one record kind maps to its table and batch/report fields."""

    table: Table
    record_type: type[R]
    batch_field: str
    order_by: tuple[str, ...]
    #: Columns an existing row may change; empty = insert-only.
    mutable: tuple[str, ...] = ()
    #: (stored, incoming) -> the record to keep, when they differ only in ``mutable``
    #: columns. ``None`` = the incoming record wins.
    merge: Callable[[R, R], R] | None = None

    @property
    def name(self) -> str:
        return self.table.name


_TASK_RESULTS: _Kind[TaskResultRecord] = _Kind(
    table=_table_of(TaskResultRow),
    record_type=TaskResultRecord,
    batch_field="task_results",
    order_by=("submitted_at", "task_id", "attempt", "iteration", "id"),
    mutable=("verification", "review_id"),
    merge=_merge_task_result,
)
_WORKFLOW_RESULTS: _Kind[WorkflowResultRecord] = _Kind(
    table=_table_of(WorkflowResultRow),
    record_type=WorkflowResultRecord,
    batch_field="workflow_results",
    order_by=("version", "id"),
)
_REVIEWS: _Kind[ValidationReviewRecord] = _Kind(
    table=_table_of(ValidationReviewRow),
    record_type=ValidationReviewRecord,
    batch_field="reviews",
    order_by=("created_at", "id"),
)

_DIAGNOSTIC_RUNS: _Kind[DiagnosticRunRecord] = _Kind(
    table=_table_of(DiagnosticRunRow),
    record_type=DiagnosticRunRecord,
    batch_field="diagnostic_runs",
    order_by=("number", "id"),
    mutable=("status", "outcome", *_RUN_PROGRESS_COLUMNS),
    merge=_merge_diagnostic_run,
)
_RESTART_EVENTS: _Kind[RestartEventRecord] = _Kind(
    table=_table_of(RestartEventRow),
    record_type=RestartEventRecord,
    batch_field="restart_events",
    order_by=("requested_at", "number", "lineage", "id"),
    mutable=("outcome", *_RESTART_PROGRESS_COLUMNS),
    merge=_merge_restart_event,
)
_ESCALATIONS: _Kind[EscalationRecord] = _Kind(
    table=_table_of(EscalationRow),
    record_type=EscalationRecord,
    batch_field="escalations",
    order_by=("created_at", "id"),
    mutable=("acknowledged", "acknowledged_at", "acknowledged_by"),
    merge=_merge_escalation,
)

_RESOLUTIONS: _Kind[EscalationResolutionRecord] = _Kind(
    table=_table_of(EscalationResolutionRow),
    record_type=EscalationResolutionRecord,
    batch_field="escalation_resolutions",
    order_by=("resolved_at", "id"),
)

#: Every kind, in write order. The report has one counts field per table name.
_KINDS: tuple[_Kind[Any], ...] = (
    _TASK_RESULTS,
    _WORKFLOW_RESULTS,
    _REVIEWS,
    _DIAGNOSTIC_RUNS,
    _RESTART_EVENTS,
    _ESCALATIONS,
    _RESOLUTIONS,
)


# ------------------------------------------------------------------------ engine


def normalise_url(url: str | URL) -> URL:
    """Parse a database URL; plain ``postgresql://`` / ``postgres://`` use psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_is_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or (
        database.startswith("file:") and "mode=memory" in database
    )


def _create_sqlite_engine(url: URL, echo: bool) -> Engine:
    memory = _sqlite_is_memory(url)
    if not memory and url.database and not url.database.startswith("file:"):
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        echo=echo,
        connect_args={"check_same_thread": False, "timeout": 30.0},
        # One shared connection for an in-memory database, or every thread sees its own.
        poolclass=StaticPool if memory else None,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy emits BEGIN itself (below), so sqlite3 must not.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _differing_fields(a: LedgerRecord, b: LedgerRecord) -> list[str]:
    left, right = a.model_dump(), b.model_dump()
    return [name for name in type(a).model_fields if left.get(name) != right.get(name)]


# ------------------------------------------------------------------------ ledger


class Ledger:
    """The durable audit trail of tickets, in SQLite (default) or PostgreSQL.

    Thread-safe; every method blocks (call it from a thread in async code).
    """

    def __init__(self, url: str | URL, *, echo: bool = False) -> None:
        self.url = normalise_url(url)
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            self.engine = _create_sqlite_engine(self.url, echo)
        elif self.dialect == "postgresql":
            self.engine = create_engine(self.url, echo=echo, pool_pre_ping=True)
        else:
            raise ValueError(
                f"unsupported ledger database {self.url.drivername!r}: use sqlite or postgresql"
            )
        # Writers take SQLite's write lock up front (waiting on busy_timeout) instead of
        # failing when a read transaction has to be upgraded.
        self._write_engine = self.engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})

    def __repr__(self) -> str:
        return f"Ledger({self.url.render_as_string(hide_password=True)!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.dispose()

    # -------------------------------------------------------------- schema

    def create_all(self) -> None:
        """Create the ledger tables and indexes that do not exist yet."""
        with self._write_engine.begin() as conn:
            SQLModel.metadata.create_all(conn, tables=list(LEDGER_TABLES))

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    # --------------------------------------------------------------- write

    def write(self, batch: LedgerBatch) -> LedgerWriteReport:
        """Store a batch in one transaction, idempotently (see the module docstring).

        Raises :class:`LedgerConflict` (nothing of the batch is stored) when a record
        contradicts a stored one.
        """
        counts: dict[str, TableWriteCounts] = {}
        if not batch.is_empty():
            recorded_at = datetime.now(UTC)
            with self._write_engine.begin() as conn:
                for kind in _KINDS:
                    records: list[LedgerRecord] = list(getattr(batch, kind.batch_field))
                    if records:
                        counts[kind.name] = self._write_kind(conn, kind, records, recorded_at)
        return LedgerWriteReport(ticket_id=batch.ticket_id, **counts)

    def _insert(self, table: Table) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing()
        return sqlite.insert(table).on_conflict_do_nothing()

    def _write_kind(
        self,
        conn: Connection,
        kind: _Kind[R],
        records: list[R],
        recorded_at: datetime,
    ) -> TableWriteCounts:
        incoming = _dedupe(kind, records)
        table = kind.table

        # 1. Insert everything that is new; RETURNING tells which ids that was.
        # Sorted by id: concurrent writers lock rows in the same order (no deadlocks).
        rows = [
            {**incoming[record_id].model_dump(), "recorded_at": recorded_at}
            for record_id in sorted(incoming)
        ]
        if conn.dialect.insert_returning:
            stmt = self._insert(table).returning(table.c.id)
            inserted = set(conn.execute(stmt, rows).scalars())
        else:
            # SQLite < 3.35 has no RETURNING. The IMMEDIATE transaction already holds the
            # write lock, so "which ids exist" cannot change before the insert.
            existing: set[str] = set()
            for chunk in _chunks(list(incoming)):
                existing.update(
                    conn.execute(select(table.c.id).where(table.c.id.in_(chunk))).scalars()
                )
            new_rows = [row for row in rows if row["id"] not in existing]
            if new_rows:
                try:
                    conn.execute(insert(table), new_rows)
                except IntegrityError as err:
                    raise LedgerConflict(
                        kind.name,
                        str(new_rows[0]["id"]) if len(new_rows) == 1 else f"<{len(new_rows)} rows>",
                        reason="collides with a stored row of another id on a unique key",
                    ) from err
            inserted = {row["id"] for row in new_rows}

        # 2. One read of the rows that were already there, and compare.
        present = [record_id for record_id in sorted(incoming) if record_id not in inserted]
        already_present = 0
        updates: list[R] = []
        for chunk in _chunks(present):
            query = select(table).where(table.c.id.in_(chunk)).order_by(table.c.id)
            if kind.mutable:
                query = query.with_for_update()  # PostgreSQL row locks; no-op on SQLite
            stored_by_id = {
                row.id: kind.record_type.model_validate(dict(row._mapping))
                for row in conn.execute(query)
            }
            for record_id in chunk:
                new = incoming[record_id]
                stored = stored_by_id.get(record_id)
                if stored is None:
                    # Not inserted, yet no row with this id: another unique key collided.
                    raise LedgerConflict(
                        kind.name,
                        record_id,
                        reason="collides with a stored row of another id on a unique key "
                        "(the same result version, review, diagnosis or restart number "
                        "stored twice)",
                    )
                diff = _differing_fields(stored, new)
                if not diff:
                    already_present += 1
                elif kind.mutable and set(diff) <= set(kind.mutable):
                    merged = new if kind.merge is None else kind.merge(stored, new)
                    if _differing_fields(stored, merged):
                        updates.append(merged)
                    else:
                        already_present += 1  # an outdated redelivery: keep the row
                else:
                    raise LedgerConflict(kind.name, record_id, diff)

        # 3. Update the mutable columns of the rows that changed.
        if updates:
            stmt = (
                update(table)
                .where(table.c.id == bindparam("_id"))
                .values({column: bindparam(f"_{column}") for column in kind.mutable})
            )
            params = [
                {"_id": r.id, **{f"_{column}": getattr(r, column) for column in kind.mutable}}
                for r in updates
            ]
            conn.execute(stmt, params)

        return TableWriteCounts(
            inserted=len(inserted), already_present=already_present, updated=len(updates)
        )

    # ---------------------------------------------------------------- read

    def task_results(self, ticket_id: str, task_id: str | None = None) -> list[TaskResultRecord]:
        """A ticket's task results (optionally of one task), oldest first."""
        filters = {"task_id": task_id} if task_id is not None else {}
        return self._read(_TASK_RESULTS, ticket_id, filters)

    def workflow_results(self, ticket_id: str) -> list[WorkflowResultRecord]:
        """A ticket's final-result versions, v1 first."""
        return self._read(_WORKFLOW_RESULTS, ticket_id, {})

    def reviews(
        self,
        ticket_id: str,
        subject_kind: str | None = None,
        subject_id: str | None = None,
    ) -> list[ValidationReviewRecord]:
        """A ticket's reviews (optionally of one subject), oldest first."""
        filters = {
            name: value
            for name, value in (("subject_kind", subject_kind), ("subject_id", subject_id))
            if value is not None
        }
        return self._read(_REVIEWS, ticket_id, filters)

    def diagnostic_runs(self, ticket_id: str) -> list[DiagnosticRunRecord]:
        """A ticket's diagnoses, by number (the first first)."""
        return self._read(_DIAGNOSTIC_RUNS, ticket_id, {})

    def restart_events(
        self, ticket_id: str, lineage: str | None = None
    ) -> list[RestartEventRecord]:
        """A ticket's agent restarts (optionally of one lineage), by ``requested_at`` then
        ``number``."""
        filters = {"lineage": lineage} if lineage is not None else {}
        return self._read(_RESTART_EVENTS, ticket_id, filters)

    def escalations(self, ticket_id: str) -> list[EscalationRecord]:
        """A ticket's escalations, oldest first."""
        return self._read(_ESCALATIONS, ticket_id, {})

    def escalation_resolutions(self, ticket_id: str) -> list[EscalationResolutionRecord]:
        """How a ticket's escalations were resolved, in the order they were."""
        return self._read(_RESOLUTIONS, ticket_id, {})

    # ----------------------------------------------------------- operators

    def acknowledge_escalation(self, escalation_id: str, by: str, at: datetime) -> EscalationRecord:
        """Mark an escalation acknowledged by ``by`` at ``at`` (timezone-aware) and return it.

        Idempotent: an escalation that is already acknowledged is returned unchanged (the
        first acknowledgement wins). Raises :class:`KeyError` for an unknown id.
        """
        table = _ESCALATIONS.table
        with self._write_engine.begin() as conn:
            query = select(table).where(table.c.id == escalation_id).with_for_update()
            row = conn.execute(query).first()
            if row is None:
                raise KeyError(f"no escalation {escalation_id!r} in the ledger")
            stored = EscalationRecord.model_validate(dict(row._mapping))
            if stored.acknowledged:
                return stored
            acknowledged = EscalationRecord.model_validate(
                {
                    **stored.model_dump(),
                    "acknowledged": True,
                    "acknowledged_at": at,
                    "acknowledged_by": by,
                }
            )
            conn.execute(
                update(table)
                .where(table.c.id == escalation_id)
                .values(
                    acknowledged=True,
                    acknowledged_at=acknowledged.acknowledged_at,
                    acknowledged_by=acknowledged.acknowledged_by,
                )
            )
            return acknowledged

    def _read(self, kind: _Kind[R], ticket_id: str, filters: dict[str, str]) -> list[R]:
        table = kind.table
        query = select(table).where(table.c.ticket_id == ticket_id)
        for column, value in filters.items():
            query = query.where(table.c[column] == value)
        query = query.order_by(*(table.c[column] for column in kind.order_by))
        with self.engine.connect() as conn:
            return [
                kind.record_type.model_validate(dict(row._mapping)) for row in conn.execute(query)
            ]


def _dedupe(kind: _Kind[R], records: list[R]) -> dict[str, R]:
    """Collapse repeated ids inside one batch (same rules as against stored rows)."""
    unique: dict[str, R] = {}
    for record in records:
        previous = unique.get(record.id)
        if previous is None:
            unique[record.id] = record
            continue
        diff = _differing_fields(previous, record)
        if not diff:
            continue
        if not (kind.mutable and set(diff) <= set(kind.mutable)):
            raise LedgerConflict(
                kind.name,
                record.id,
                diff,
                reason="appears twice in one batch with different content",
            )
        # The later state wins, as far as the kind's merge allows.
        unique[record.id] = record if kind.merge is None else kind.merge(previous, record)
    return unique
