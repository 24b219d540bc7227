"""What every command shares: errors, connecting, queries and operator updates, operator
tokens, the command context, and the connection flags and argument types."""

from __future__ import annotations

import argparse
import asyncio
import getpass
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from rich.console import Console
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from infra.client import connect
from infra.settings import Settings

#: How long connecting to Temporal, and a query (which needs a worker), may take.
CONNECT_TIMEOUT = 10.0
QUERY_TIMEOUT = 10.0
#: A query failing in transit or unanswered in QUERY_TIMEOUT is asked this many times in all:
#: a query that reaches a worker while it evicts a just-finished ticket is dropped by the SDK
#: ("leftover buffered tasks when evicting run") and would otherwise wait out its timeout.
QUERY_ATTEMPTS = 3

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


# ==== errors ===============================================================================


class StarterError(Exception):
    """A failure to report as one clear line (no traceback) and an exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _rpc_failure(exc: RPCError, settings: Settings, ticket_id: str | None = None) -> StarterError:
    """Turn a Temporal RPC error into a message that says what is wrong, in one line."""
    where = f"namespace {settings.namespace!r} at {settings.temporal_address}"
    message = exc.message or str(exc)
    lowered = message.lower()
    if exc.status == RPCStatusCode.NOT_FOUND and "namespace" in lowered:
        return StarterError(
            f"namespace {settings.namespace!r} does not exist at {settings.temporal_address}"
        )
    if exc.status == RPCStatusCode.NOT_FOUND and "already completed" in lowered:
        return StarterError(f"ticket {ticket_id} is closed; it accepts no more messages")
    if exc.status == RPCStatusCode.NOT_FOUND and ticket_id is not None:
        return StarterError(f"ticket {ticket_id} not found in {where}")
    if exc.status == RPCStatusCode.UNAVAILABLE:
        return StarterError(
            f"lost the Temporal server at {settings.temporal_address}: {_one_line(message)}"
        )
    if exc.status == RPCStatusCode.DEADLINE_EXCEEDED or (
        exc.status == RPCStatusCode.CANCELLED and "timeout" in lowered
    ):
        if ticket_id is not None:
            # Queries are answered by a worker; with none polling they wait until the timeout.
            return StarterError(
                f"no answer about ticket {ticket_id} within "
                f"{QUERY_TIMEOUT * QUERY_ATTEMPTS:.0f} s from {where}: is a worker "
                "(unstuck worker) running on the ticket's task queue?"
            )
        return StarterError(f"the Temporal server at {settings.temporal_address} did not answer")
    return StarterError(f"Temporal ({where}) refused the request: {_one_line(message)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ==== connection and ticket plumbing =======================================================


async def open_client(settings: Settings) -> Client:
    """A client for the settings' server; :class:`StarterError` when nothing answers."""
    try:
        return await asyncio.wait_for(connect(settings), CONNECT_TIMEOUT)
    except TimeoutError:
        reason = f"no answer within {CONNECT_TIMEOUT:.0f} s"
    except (RuntimeError, RPCError) as exc:
        text = str(exc)
        reason = "connection refused" if "refused" in text.lower() else _one_line(text)
    raise StarterError(
        f"cannot reach the Temporal server at {settings.temporal_address} ({reason}); start one "
        "(`temporal server start-dev`, or `python worker.py` which starts a dev server) or "
        "pass --address"
    )


def ui_url(settings: Settings, ticket_id: str | None = None) -> str:
    """The Temporal Web UI: the namespace's workflow list, or one ticket's page."""
    return settings.web_ui(ticket_id)


def token_path(settings: Settings, ticket_id: str) -> Path:
    """Where ``launch`` keeps a ticket's operator token (needed to cancel it)."""
    return settings.data_dir / "operators" / f"{ticket_id}.token"


async def _call(settings: Settings, ticket_id: str, call: Awaitable[T]) -> T:
    """Await a query or update on a ticket, turning Temporal errors into StarterErrors."""
    try:
        return await call
    except RPCError as exc:
        raise _rpc_failure(exc, settings, ticket_id) from None
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        detail = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
        raise StarterError(f"ticket {ticket_id} refused: {_one_line(detail)}") from None
    except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as exc:
        raise StarterError(f"query on ticket {ticket_id} failed: {_one_line(str(exc))}") from None


async def _query(
    settings: Settings,
    handle: WorkflowHandle[Any, Any],
    name: str,
    result_type: type[T],
    *args: Any,
) -> T:
    result: T = await _call(
        settings,
        handle.id,
        _read(
            lambda: handle.query(
                name,
                args=list(args),
                result_type=result_type,
                rpc_timeout=timedelta(seconds=QUERY_TIMEOUT),
            )
        ),
    )
    return result


async def _read(make_call: Callable[[], Awaitable[T]]) -> T:
    """A read (query), asked again when the connection fails in transit.

    Seen with the suite under load: "h2 protocol error" on a query right after a cancel, and
    a query of a just-finished ticket never answered. Reads have no effect, so asking again
    is always safe; the last failure is raised.
    """
    for attempt in range(1, QUERY_ATTEMPTS + 1):
        try:
            return await make_call()
        except RPCError as exc:
            if attempt == QUERY_ATTEMPTS or not _transient(exc):
                raise
            await asyncio.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def _transient(exc: RPCError) -> bool:
    """A failure of the connection, or no answer in time, rather than an answer."""
    text = str(exc).lower()
    return exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED) or any(
        marker in text for marker in ("h2 protocol error", "connection reset", "transport error")
    )


# ==== operator messages ====================================================================


def read_token(settings: Settings, ticket_id: str) -> str:
    """The operator token ``launch`` saved for the ticket; StarterError when missing."""
    path = token_path(settings, ticket_id)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise StarterError(
            f"no operator token for ticket {ticket_id} at {path}: it is written by "
            "`starter.py launch` (use the same --data-dir / UNSTUCK_DATA_DIR)"
        ) from None
    except OSError as exc:
        raise StarterError(f"cannot read the operator token {path}: {exc.strerror}") from None
    if not token:
        raise StarterError(f"the operator token file {path} is empty")
    return token


async def _operator_update(
    client: Client,
    settings: Settings,
    ticket_id: str,
    update: str,
    message: Callable[[str], BaseModel],
    result_type: type[M],
) -> M:
    """Send an operator update, signed with the operator token ``launch`` saved."""
    token = read_token(settings, ticket_id)
    handle = client.get_workflow_handle(ticket_id)
    reply: M = await _call(
        settings,
        ticket_id,
        handle.execute_update(update, message(token), result_type=result_type),
    )
    return reply


# ==== the command context and flags ========================================================


@dataclass
class Context:
    """What every command gets: its settings and where to print."""

    settings: Settings
    out: Console
    err: Console


Command = Callable[[argparse.Namespace, Context], Coroutine[Any, Any, int]]


#: ``command(name, handler, help)``: a subcommand with the connection flags, run by ``handler``
#: (what each command group's ``add_commands`` gets; see cli/main.py).
AddCommand = Callable[[str, Command, str], argparse.ArgumentParser]


def _common_flags(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Connection flags; on subcommands they only override when given."""
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--address", default=default, help="Temporal frontend host:port (UNSTUCK_TEMPORAL_ADDRESS)"
    )
    group.add_argument(
        "--namespace", default=default, help="Temporal namespace (UNSTUCK_NAMESPACE)"
    )
    group.add_argument("--task-queue", default=default, help="task queue (UNSTUCK_TASK_QUEUE)")
    group.add_argument(
        "--database-url", default=default, help="ledger SQLAlchemy URL (UNSTUCK_DATABASE_URL)"
    )
    group.add_argument(
        "--data-dir",
        default=default,
        help="local data directory: operator tokens, default ledger, dev server (UNSTUCK_DATA_DIR)",
    )
    # --tls, --tls-ca, --tls-cert, --tls-key, --tls-server-name, --api-key-file: each sets its
    # UNSTUCK_* variable (so a worker's agent processes inherit it); no flag for the key itself.
    from infra.settings import add_connection_flags

    add_connection_flags(group)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _operator_name() -> str:
    try:
        return getpass.getuser()[:100] or "operator"
    except (OSError, KeyError):
        return "operator"


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(
        temporal_address=args.address,
        namespace=args.namespace,
        task_queue=args.task_queue,
        database_url=args.database_url,
        data_dir=args.data_dir,
    )
