"""The ``write_ledger`` activity: stores a workflow's :class:`LedgerBatch` in the ledger.

At-least-once: Temporal may run it more than once for the same batch; the ledger store is
idempotent on the records' deterministic ids. Errors:

* :class:`ledger.store.LedgerConflict` (an id already stored with different content) is a
  bug in the caller, so it becomes a non-retryable ``ApplicationError`` of type
  ``"LedgerConflict"``;
* data the database refuses deterministically (e.g. a NUL character in PostgreSQL text)
  becomes a non-retryable ``ApplicationError`` of type ``"LedgerInvalidData"``;
* everything else (database down, lock timeouts) is raised as is and retried by Temporal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ledger.store import Ledger, LedgerConflict
from models.ledger import WRITE_LEDGER_ACTIVITY, LedgerBatch, LedgerWriteReport

__all__ = ["LedgerActivities"]


class LedgerActivities:
    """Ledger activities bound to one :class:`Ledger` (register ``activities()``)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def activities(self) -> list[Callable[..., Any]]:
        """The activity callables to pass to a ``Worker``."""
        return [self.write_ledger]

    @activity.defn(name=WRITE_LEDGER_ACTIVITY)
    async def write_ledger(self, batch: LedgerBatch) -> LedgerWriteReport:
        """Store ``batch`` in one transaction; return what was inserted/present/updated."""
        try:
            report = await asyncio.to_thread(self.ledger.write, batch)
        except LedgerConflict as err:
            raise ApplicationError(
                str(err),
                {"table": err.table, "record_id": err.record_id, "fields": list(err.fields)},
                type="LedgerConflict",
                non_retryable=True,
            ) from err
        except (DataError, IntegrityError) as err:
            raise ApplicationError(
                f"the ledger database refused the batch of ticket {batch.ticket_id!r}: "
                f"{err.orig or err}",
                type="LedgerInvalidData",
                non_retryable=True,
            ) from err
        activity.logger.info(
            "ledger batch of ticket %s: %d inserted, %d already present, %d updated",
            batch.ticket_id,
            report.inserted,
            report.already_present,
            report.updated,
        )
        return report
