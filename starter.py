"""Operate Unstuck tickets from the command line.

    python starter.py launch examples/login.yaml --id login-1
    python starter.py list --status open
    python starter.py status login-1            (--json for scripts)
    python starter.py timeline login-1
    python starter.py watch login-1             (live, until the ticket finishes)
    python starter.py diagnose login-1 --reason "looks stuck"
    python starter.py result login-1 --version 2
    python starter.py cancel login-1 --reason "superseded"
    python starter.py schema --out schemas
    python starter.py demo                      (the whole story, end to end)
    python starter.py worker                    (the worker; as `python worker.py`)

Installed as the `unstuck` command (`.venv/bin/unstuck launch ...`).

Settings come from ``UNSTUCK_*`` environment variables; ``--address``, ``--namespace``,
``--task-queue``, ``--database-url`` and ``--data-dir`` override them (as in ``worker.py``).
Only ``demo`` and ``worker`` start a Temporal dev server; every other command talks to the
server that answers at the address and needs a worker (``python starter.py worker``) for
queries.

Exit codes: 0 success; 1 failure (ticket not found, server unreachable, message refused);
2 bad usage or an invalid ticket spec.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import hashlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

from pydantic import BaseModel
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.state import TicketState
from infra.client import connect
from infra.devserver import DevServer, DevServerError, ensure_server
from infra.enrollment import JOIN_KINDS, EnrollmentError, join_hashes, join_key, join_secret
from infra.settings import Settings
from infra.telemetry import CORE_LOGGER, core_log_to_file, forward_core_logs
from ledger.store import Ledger
from models.messages import (
    AgentView,
    CancelTicket,
    DiagnoseReply,
    DiagnoseTicket,
    DiagnosisView,
    ReleaseAgent,
    ReleaseReply,
    ResultVersionView,
    StatusView,
    TaskView,
    TimelineEntry,
)
from models.schema import json_schemas, write_schemas
from models.spec import SpecError, TicketSpec, load_spec, parse_spec
from models.workflow_io import TicketInput
from workflows.dashboard import STATUS_ORDER
from workflows.ticket import OPEN_TASKS, PHASE, TICKET_STATUS

__all__ = [
    "Launched",
    "StarterError",
    "TicketRow",
    "TicketSnapshot",
    "build_parser",
    "cancel_ticket",
    "diagnose_ticket",
    "fetch_result",
    "fetch_snapshot",
    "launch_ticket",
    "list_tickets",
    "live_view",
    "main",
    "open_client",
    "run",
    "run_demo",
    "token_path",
    "ui_url",
]

WORKFLOW_TYPE = "Ticket"
TICKET_STATUSES = ("open", "completed", "cancelled")
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
    host = settings.host.strip("[]")
    host = f"[{host}]" if ":" in host else host
    base = f"http://{host}:{settings.ui_port}/namespaces/{quote(settings.namespace, safe='')}"
    return f"{base}/workflows/{quote(ticket_id, safe='')}" if ticket_id else f"{base}/workflows"


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


# ==== launch ===============================================================================


@dataclass(frozen=True)
class Launched:
    """A started ticket: where to see it and where its operator token is."""

    ticket_id: str
    run_id: str | None
    token_path: Path
    ui_url: str
    spec: TicketSpec


def static_summary(spec: TicketSpec) -> str:
    """One line for the Web UI's workflow list: title · N tasks · phases."""
    phases = " → ".join(p.name for p in spec.phases)
    count = len(spec.tasks)
    return f"{spec.title} · {count} task{'s' if count != 1 else ''} · {phases}"


def static_details(spec: TicketSpec) -> str:
    """Markdown for the Web UI's workflow page: the goal and the result criteria."""
    lines = [f"## {spec.title}", ""]
    if spec.description.strip():
        lines += [spec.description.strip(), ""]
    lines += ["**Goal**", "", spec.goal.strip() or "_not stated_", "", "**Result criteria**", ""]
    lines += [f"- {c}" for c in spec.criteria_text()] or ["- _none: any validated result_"]
    lines += [
        "",
        f"Priority **{spec.priority}** · phases {' → '.join(p.name for p in spec.phases)} · "
        f"on result: **{spec.policy.results.on_result_found}**",
    ]
    return "\n".join(lines)


def with_ticket_id(spec: TicketSpec, ticket_id: str | None) -> TicketSpec:
    """The spec under another id (validated like the file's own id)."""
    if ticket_id is None or ticket_id == spec.id:
        return spec
    return parse_spec({**spec.model_dump(mode="json"), "id": ticket_id}, source="--id")


async def launch_ticket(client: Client, settings: Settings, spec: TicketSpec) -> Launched:
    """Start the ``Ticket`` workflow for ``spec`` (id = ticket id) with a new operator token.

    The token file (mode 0600) takes its final name only once the workflow started, so a
    refused launch never replaces the token of an existing ticket. Ticket ids are never
    reused: the ledger keys every record by ticket id.
    """
    try:
        joins = join_hashes(join_key(settings.data_dir, create=True), spec.id)
    except EnrollmentError as exc:
        raise StarterError(str(exc)) from None
    token = secrets.token_urlsafe(32)
    final = token_path(settings, spec.id)
    final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pending = final.with_name(f".{final.name}.{secrets.token_hex(4)}")
    _write_secret(pending, token)
    try:
        handle = await client.start_workflow(
            WORKFLOW_TYPE,
            TicketInput(
                spec=spec,
                operator_token_sha256=hashlib.sha256(token.encode()).hexdigest(),
                join_sha256=joins,
            ),
            id=spec.id,
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            # Visible in list filters before the worker's first workflow task runs.
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(TICKET_STATUS, "open"),
                    SearchAttributePair(OPEN_TASKS, len(spec.tasks)),
                ]
            ),
            static_summary=static_summary(spec),
            static_details=static_details(spec),
        )
    except WorkflowAlreadyStartedError:
        pending.unlink(missing_ok=True)
        raise StarterError(
            f"ticket {spec.id} already exists in namespace {settings.namespace!r} (ticket ids "
            "are never reused); choose another id with --id"
        ) from None
    except RPCError as exc:
        pending.unlink(missing_ok=True)
        raise _rpc_failure(exc, settings) from None
    except BaseException:
        pending.unlink(missing_ok=True)
        raise
    pending.replace(final)
    return Launched(
        ticket_id=spec.id,
        run_id=handle.result_run_id,
        token_path=final,
        ui_url=ui_url(settings, spec.id),
        spec=spec,
    )


def _write_secret(path: Path, secret: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")


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


# ==== list =================================================================================


@dataclass(frozen=True)
class TicketRow:
    """One ticket as the visibility store sees it (search attributes, no query needed)."""

    ticket_id: str
    status: str | None
    phase: str | None
    open_tasks: int | None
    execution: str
    started: datetime | None
    closed: datetime | None


def list_query(status: str | None = None, query: str | None = None) -> str:
    """The visibility query for Ticket workflows (latest run of each, optionally filtered)."""
    parts = [f'WorkflowType="{WORKFLOW_TYPE}"', 'ExecutionStatus!="ContinuedAsNew"']
    if status is not None:
        parts.append(f'TicketStatus="{status}"')
    if query:
        parts.append(f"({query})")
    return " AND ".join(parts)


def _row(execution: WorkflowExecution) -> TicketRow:
    attrs = execution.typed_search_attributes
    return TicketRow(
        ticket_id=execution.id,
        status=attrs.get(TICKET_STATUS),
        phase=attrs.get(PHASE) or None,
        open_tasks=attrs.get(OPEN_TASKS),
        execution=execution.status.name.lower() if execution.status is not None else "unknown",
        started=execution.start_time,
        closed=execution.close_time,
    )


async def list_tickets(
    client: Client,
    settings: Settings,
    *,
    status: str | None = None,
    query: str | None = None,
    limit: int = 50,
) -> list[TicketRow]:
    """Tickets, newest first as the server orders them, at most ``limit``."""
    rows: list[TicketRow] = []
    try:
        async for execution in client.list_workflows(list_query(status, query), limit=limit):
            rows.append(_row(execution))
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            raise StarterError(f"invalid list query: {_one_line(exc.message)}") from None
        raise _rpc_failure(exc, settings) from None
    return rows


# ==== status, timeline, result, cancel =====================================================


@dataclass(frozen=True)
class TicketSnapshot:
    """Everything ``status`` shows, read with one round of queries."""

    status: StatusView
    tasks: list[TaskView]
    agents: list[AgentView]
    results: list[ResultVersionView]
    timeline: list[TimelineEntry]


async def fetch_snapshot(client: Client, settings: Settings, ticket_id: str) -> TicketSnapshot:
    handle = client.get_workflow_handle(ticket_id)
    # Every query is awaited even when one fails: an RPC still in flight when the event
    # loop closes keeps the SDK's runtime threads (and so the process) from exiting.
    status, tasks, agents, results, timeline = await asyncio.gather(
        _query(settings, handle, "status", StatusView),
        _query(settings, handle, "tasks", list[TaskView]),
        _query(settings, handle, "agents", list[AgentView]),
        _query(settings, handle, "results", list[ResultVersionView]),
        _query(settings, handle, "timeline", list[TimelineEntry]),
        return_exceptions=True,
    )
    return TicketSnapshot(
        _unwrap(status), _unwrap(tasks), _unwrap(agents), _unwrap(results), _unwrap(timeline)
    )


def _unwrap(outcome: T | BaseException) -> T:
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


async def fetch_timeline(client: Client, settings: Settings, ticket_id: str) -> list[TimelineEntry]:
    handle = client.get_workflow_handle(ticket_id)
    return await _query(settings, handle, "timeline", list[TimelineEntry])


@dataclass(frozen=True)
class ResultContent:
    """The versions of a ticket's final result and the content of one of them."""

    versions: list[ResultVersionView]
    version: ResultVersionView
    content: str
    #: Where the content came from: ``workflow`` (awaiting a verdict) or ``ledger``.
    source: str


async def fetch_result(
    client: Client, settings: Settings, ticket_id: str, version: int | None = None
) -> ResultContent:
    """A result version's content: from the workflow while it awaits a verdict, else the ledger."""
    handle = client.get_workflow_handle(ticket_id)
    versions = await _query(settings, handle, "results", list[ResultVersionView])
    if not versions:
        raise StarterError(f"ticket {ticket_id} has no final result yet")
    if version is None:
        chosen = versions[-1]
    else:
        matches = [v for v in versions if v.version == version]
        if not matches:
            raise StarterError(
                f"ticket {ticket_id} has no result v{version} (versions: v1..v{len(versions)})"
            )
        chosen = matches[0]
    # No result_type: the reply is plain JSON, a string or null (content no longer held).
    content: object = await _call(
        settings,
        ticket_id,
        handle.query(
            "result_content", chosen.version, rpc_timeout=timedelta(seconds=QUERY_TIMEOUT)
        ),
    )
    if isinstance(content, str):
        return ResultContent(versions, chosen, content, "workflow")
    stored = await asyncio.to_thread(_ledger_result, settings, ticket_id, chosen.version)
    return ResultContent(versions, chosen, stored, "ledger")


def _ledger_result(settings: Settings, ticket_id: str, version: int) -> str:
    ledger = Ledger(settings.ledger_url)
    where = ledger.url.render_as_string(hide_password=True)
    try:
        if ledger.dialect == "sqlite" and ledger.url.database:
            db = Path(ledger.url.database)
            if not db.exists():
                raise StarterError(
                    f"result v{version} of {ticket_id} is no longer in the workflow and there "
                    f"is no ledger at {db} (pass the worker's --database-url or --data-dir)"
                )
        records = ledger.workflow_results(ticket_id)
    except SQLAlchemyError as exc:
        detail = _one_line(str(exc).split("\n", 1)[0])
        raise StarterError(f"cannot read the ledger {where}: {detail}") from None
    finally:
        ledger.dispose()
    for record in records:
        if record.version == version:
            if record.content is not None:
                return record.content
            raise StarterError(
                f"result v{version} of {ticket_id} was submitted as file {record.file_ref}; "
                "the ledger holds no inline copy"
            )
    raise StarterError(
        f"result v{version} of {ticket_id} is no longer in the workflow and not in the ledger "
        f"{where} (yet?)"
    )


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


async def cancel_ticket(
    client: Client, settings: Settings, ticket_id: str, reason: str, operator: str
) -> StatusView:
    """Cancel the ticket: open tasks cancelled, agents told to stop."""
    return await _operator_update(
        client,
        settings,
        ticket_id,
        "cancel",
        lambda token: CancelTicket(reason=reason, operator=operator, operator_token=token),
        StatusView,
    )


async def diagnose_ticket(
    client: Client, settings: Settings, ticket_id: str, reason: str, operator: str
) -> DiagnoseReply:
    """Diagnose now (the manual trigger: no cooldown, no stuck window)."""
    return await _operator_update(
        client,
        settings,
        ticket_id,
        "diagnose",
        lambda token: DiagnoseTicket(reason=reason, operator=operator, operator_token=token),
        DiagnoseReply,
    )


async def release_agent(
    client: Client, settings: Settings, ticket_id: str, agent_id: str, operator: str
) -> ReleaseReply:
    """Release a quarantined agent; it must heartbeat soon after to come back."""
    return await _operator_update(
        client,
        settings,
        ticket_id,
        "release",
        lambda token: ReleaseAgent(agent_id=agent_id, operator=operator, operator_token=token),
        ReleaseReply,
    )


async def is_running(client: Client, settings: Settings, ticket_id: str) -> bool:
    """Whether the ticket's workflow is still running (terminated counts as not running)."""
    description = await _call(settings, ticket_id, client.get_workflow_handle(ticket_id).describe())
    return description.status == WorkflowExecutionStatus.RUNNING


# ==== rendering ============================================================================

STATUS_STYLES: dict[str, str] = {
    "open": "cyan",
    "completed": "green",
    "cancelled": "yellow",
    "pending": "white",
    "assigned": "cyan",
    "running": "cyan",
    "under_review": "magenta",
    "validation_in_progress": "magenta",
    "needs_work": "yellow",
    "done": "green",
    "failed": "red",
    "pending_validation": "magenta",
    "validated": "green",
    "rejected": "red",
    "idle": "white",
    "degraded": "yellow",
    "unresponsive": "red",
    "restarting": "yellow",
    "quarantined": "red",
    "terminated": "dim",
}


def _styled(value: str | None) -> Text:
    if value is None:
        return Text("-", style="dim")
    return Text(value, style=STATUS_STYLES.get(value, ""))


def _t(value: object) -> Text:
    """Plain text: user data never goes through Rich markup."""
    return Text("-" if value is None or value == "" else str(value))


def _when(value: str | datetime | None) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MM:SS`` UTC."""
    if value is None:
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return f"{moment:%Y-%m-%d %H:%M:%S}"


def _clock(value: str) -> str:
    return f"{datetime.fromisoformat(value):%H:%M:%S}"


def render_list(rows: Sequence[TicketRow]) -> Table:
    table = Table(title="Tickets", box=box.SIMPLE_HEAVY)
    for name in ("ticket", "status", "phase", "open tasks", "started (UTC)", "closed (UTC)"):
        table.add_column(name, justify="right" if name == "open tasks" else "left")
    for row in rows:
        status = _styled(row.status or row.execution)
        if row.status is not None and row.execution not in ("running", "completed"):
            status.append(f" ({row.execution})", style="red")
        table.add_row(
            _t(row.ticket_id),
            status,
            _t(row.phase),
            _t(row.open_tasks),
            _when(row.started),
            _when(row.closed),
        )
    return table


def render_header(view: StatusView) -> Text:
    text = Text()
    text.append(view.ticket_id, style="bold")
    text.append(" · ")
    text.append(view.title)
    text.append(" · ")
    text.append_text(_styled(view.ticket_status or view.status))
    text.append(f" · phase {view.phase or '-'} · {view.open_tasks} open task(s)")
    text.append(f" · {view.agents} agent(s) · {view.results} result version(s)")
    if view.validated_version is not None:
        text.append(f" · v{view.validated_version} validated", style="green")
    text.append(f"\nstarted {_when(view.created_at)} UTC · last activity ")
    text.append(f"{_when(view.last_activity_at)} UTC")
    if view.finished_at:
        text.append(f" · finished {_when(view.finished_at)} UTC")
    if view.outcome:
        text.append(f"\noutcome: {view.outcome}")
    return text


def render_phase_counts(view: StatusView, *, bars: bool = False) -> Table:
    """Tasks by phase (rows) and status (columns)."""
    used = {s for counts in view.counts_by_phase.values() for s in counts}
    statuses = [s for s in STATUS_ORDER if s in used or s in ("pending", "done")]
    statuses += sorted(used - set(statuses))
    table = Table(title="Tasks by phase", box=box.SIMPLE_HEAVY)
    table.add_column("phase")
    for status in statuses:
        table.add_column(status.replace("_", " "), justify="right", style=STATUS_STYLES.get(status))
    table.add_column("total", justify="right", style="bold")
    if bars:
        table.add_column("progress", min_width=20)
    for phase, counts in view.counts_by_phase.items():
        total = sum(counts.values())
        cells: list[RenderableType] = [_t(phase)]
        cells += [str(counts.get(s, 0)) if counts.get(s) else "·" for s in statuses]
        cells.append(str(total))
        if bars:
            finished = sum(counts.get(s, 0) for s in ("done", "failed", "cancelled"))
            cells.append(ProgressBar(total=max(total, 1), completed=finished, width=20))
        table.add_row(*cells)
    return table


def render_tasks(tasks: Sequence[TaskView]) -> Table:
    table = Table(title="Tasks", box=box.SIMPLE_HEAVY)
    for name in ("task", "phase", "title", "status", "priority", "agent", "depends on", "attempt"):
        table.add_column(name, justify="right" if name == "attempt" else "left")
    for task in tasks:
        table.add_row(
            _t(task.id),
            _t(task.phase),
            _t(task.title),
            _styled(task.status),
            _t(task.priority),
            _t(task.assigned_agent),
            _t(", ".join(task.depends_on)),
            str(task.attempt),
        )
    return table


def render_agents(agents: Sequence[AgentView]) -> Table:
    table = Table(title="Agents", box=box.SIMPLE_HEAVY)
    for name in ("agent", "kind", "state", "tasks", "last heartbeat (UTC)", "heartbeats"):
        table.add_column(name, justify="right" if name == "heartbeats" else "left")
    for agent in agents:
        table.add_row(
            _t(agent.id),
            _t(agent.kind),
            _styled(agent.state),
            _t(", ".join(agent.tasks)),
            _when(agent.last_heartbeat_at),
            str(agent.heartbeats),
        )
    return table


def render_results(results: Sequence[ResultVersionView]) -> Table:
    table = Table(title="Final result versions", box=box.SIMPLE_HEAVY)
    for name in ("version", "status", "agent", "size", "submitted (UTC)", "validator", "feedback"):
        table.add_column(name, justify="right" if name in ("version", "size") else "left")
    for result in results:
        table.add_row(
            f"v{result.version}",
            _styled(result.status),
            _t(result.agent_id),
            f"{result.size_bytes} B",
            _when(result.submitted_at),
            _t(result.validator_id),
            _t(result.feedback),
        )
    return table


def render_timeline(entries: Sequence[TimelineEntry], title: str = "Timeline") -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAVY)
    for name in ("at (UTC)", "event", "agent", "task", "message"):
        table.add_column(name)
    for entry in entries:
        table.add_row(
            _when(entry.at),
            _t(entry.kind),
            _t(entry.agent_id),
            _t(entry.task_id),
            _t(entry.message),
        )
    return table


def render_snapshot(snapshot: TicketSnapshot, timeline_entries: int = 10) -> list[RenderableType]:
    parts: list[RenderableType] = [
        render_header(snapshot.status),
        render_phase_counts(snapshot.status),
    ]
    if snapshot.tasks:
        parts.append(render_tasks(snapshot.tasks))
    if snapshot.agents:
        parts.append(render_agents(snapshot.agents))
    if snapshot.results:
        parts.append(render_results(snapshot.results))
    if snapshot.timeline and timeline_entries > 0:
        last = snapshot.timeline[-timeline_entries:]
        parts.append(render_timeline(last, title=f"Timeline (last {len(last)})"))
    return parts


def live_view(
    ticket_id: str, snapshot: TicketSnapshot | None, elapsed: float | None = None
) -> RenderableType:
    """The live picture of a ticket (``watch`` and ``demo``)."""
    if snapshot is None:
        return Text(f"Waiting for ticket {ticket_id} ...", style="dim")
    view = snapshot.status
    total = sum(view.counts_by_status.values())
    finished = sum(view.counts_by_status.get(s, 0) for s in ("done", "failed", "cancelled"))
    overall = Table.grid(padding=(0, 1))
    overall.add_row(
        Text(f"{finished}/{total} tasks", style="bold"),
        ProgressBar(total=max(total, 1), completed=finished, width=40),
        Text(f"{elapsed:4.1f} s" if elapsed is not None else "", style="dim"),
    )
    agents = Table(box=box.SIMPLE, title="Agents")
    for name in ("agent", "kind", "state", "working on"):
        agents.add_column(name)
    titles = {t.id: t.title for t in snapshot.tasks}
    for agent in snapshot.agents:
        current = ", ".join(f"{tid} {titles.get(tid, '')}" for tid in agent.tasks)
        agents.add_row(_t(agent.id), _t(agent.kind), _styled(agent.state), _t(current))
    events = Table.grid(padding=(0, 1), expand=True)
    events.add_column(style="dim", no_wrap=True, min_width=8)
    events.add_column(style="cyan", no_wrap=True, min_width=16)
    events.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    for entry in snapshot.timeline[-6:]:
        events.add_row(_clock(entry.at), entry.kind, _t(entry.message))
    return Group(
        render_header(view),
        overall,
        render_phase_counts(view, bars=True),
        agents,
        Panel(events, title="Latest events", title_align="left"),
    )


# ==== commands =============================================================================


@dataclass
class Context:
    """What every command gets: its settings and where to print."""

    settings: Settings
    out: Console
    err: Console


Command = Callable[[argparse.Namespace, Context], Coroutine[Any, Any, int]]


async def cmd_launch(args: argparse.Namespace, ctx: Context) -> int:
    try:
        spec = with_ticket_id(load_spec(args.spec), args.id)
    except SpecError as exc:
        raise StarterError(str(exc), exit_code=2) from None
    client = await open_client(ctx.settings)
    launched = await launch_ticket(client, ctx.settings, spec)
    _print_launched(ctx.out, launched)
    return 0


def _print_launched(out: Console, launched: Launched) -> None:
    out.print(Text.assemble("Launched ticket ", (launched.ticket_id, "bold green")))
    _print_fields(
        out,
        [
            ("summary", static_summary(launched.spec)),
            ("Web UI", launched.ui_url),
            ("operator token", str(launched.token_path)),
        ],
    )


def _print_fields(out: Console, fields: Sequence[tuple[str, str]]) -> None:
    """``label  value`` lines, never wrapped or cropped: URLs and paths must stay copyable."""
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        style = f"link {value}" if value.startswith("http") else ""
        line = Text.assemble(("  " + label.ljust(width + 2), "dim"), (value, style))
        out.print(line, soft_wrap=True)


async def cmd_list(args: argparse.Namespace, ctx: Context) -> int:
    client = await open_client(ctx.settings)
    rows = await list_tickets(
        client, ctx.settings, status=args.status, query=args.query, limit=args.limit
    )
    if not rows:
        what = f"{args.status} " if args.status else ""
        ctx.out.print(f"No {what}tickets in namespace {ctx.settings.namespace!r}.")
        return 0
    ctx.out.print(render_list(rows))
    return 0


async def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    client = await open_client(ctx.settings)
    if args.json:
        handle = client.get_workflow_handle(args.ticket_id)
        view = await _query(ctx.settings, handle, "status", StatusView)
        sys.stdout.write(view.model_dump_json(indent=2) + "\n")
        return 0
    snapshot = await fetch_snapshot(client, ctx.settings, args.ticket_id)
    for part in render_snapshot(snapshot, args.timeline):
        ctx.out.print(part)
    ctx.out.print(Text(ui_url(ctx.settings, args.ticket_id), style="dim"))
    return 0


async def cmd_timeline(args: argparse.Namespace, ctx: Context) -> int:
    client = await open_client(ctx.settings)
    entries = await fetch_timeline(client, ctx.settings, args.ticket_id)
    if args.last is not None:
        entries = entries[-args.last :] if args.last > 0 else []
    ctx.out.print(render_timeline(entries, title=f"Timeline of {args.ticket_id}"))
    return 0


async def fetch_diagnoses(
    client: Client, settings: Settings, ticket_id: str
) -> list[DiagnosisView]:
    handle = client.get_workflow_handle(ticket_id)
    return await _query(settings, handle, "diagnoses", list[DiagnosisView])


def render_diagnoses(runs: Sequence[DiagnosisView], *, title: str) -> RenderableType:
    """One table row per run, then each run's ranked hypotheses."""
    table = Table(title=title, box=box.SIMPLE_HEAVY)
    for column in ("run", "trigger", "status", "outcome", "started", "idle", "recovery tasks"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            str(run.number),
            run.trigger,
            _styled(run.status),
            _t(run.outcome),
            run.started_at[11:19],
            f"{run.idle_seconds:.0f}s",
            ", ".join(run.task_ids) or "-",
        )
    parts: list[RenderableType] = [table]
    for run in runs:
        ranked = Table(
            box=box.MINIMAL, title=f"{run.run_id} · {run.generator or '-'}", title_justify="left"
        )
        ranked.add_column("likelihood", justify="right")
        ranked.add_column("hypothesis")
        ranked.add_column("evidence")
        for hypothesis in run.hypotheses:
            evidence = hypothesis.get("evidence") or []
            ranked.add_row(
                f"{float(str(hypothesis.get('likelihood', 0))):.2f}",
                str(hypothesis.get("statement", "")),
                "\n".join(f"· {e}" for e in list(evidence)[:3])
                if isinstance(evidence, list)
                else "",
            )
        if run.error:
            ranked.caption = f"error: {run.error}"
        parts.append(ranked)
    return Group(*parts)


async def cmd_diagnoses(args: argparse.Namespace, ctx: Context) -> int:
    client = await open_client(ctx.settings)
    runs = await fetch_diagnoses(client, ctx.settings, args.ticket_id)
    if not runs:
        ctx.out.print(f"{args.ticket_id} has not been diagnosed yet.")
        return 0
    ctx.out.print(render_diagnoses(runs, title=f"Diagnoses of {args.ticket_id}"))
    return 0


async def cmd_result(args: argparse.Namespace, ctx: Context) -> int:
    client = await open_client(ctx.settings)
    found = await fetch_result(client, ctx.settings, args.ticket_id, args.version)
    if args.raw:
        sys.stdout.write(found.content if found.content.endswith("\n") else found.content + "\n")
        return 0
    ctx.out.print(render_results(found.versions))
    v = found.version
    title = Text.assemble(f"v{v.version} · ", _styled(v.status), f" · from the {found.source}")
    ctx.out.print(Panel(Markdown(found.content), title=title, title_align="left"))
    return 0


async def cmd_cancel(args: argparse.Namespace, ctx: Context) -> int:
    client = await open_client(ctx.settings)
    view = await cancel_ticket(client, ctx.settings, args.ticket_id, args.reason, args.operator)
    ctx.out.print(Text.assemble("Ticket ", (view.ticket_id, "bold"), " is ", _styled(view.status)))
    ctx.out.print(Text.assemble(("outcome: ", "dim"), view.outcome or "-"))
    return 0


async def cmd_diagnose(args: argparse.Namespace, ctx: Context) -> int:
    client = await open_client(ctx.settings)
    reply = await diagnose_ticket(client, ctx.settings, args.ticket_id, args.reason, args.operator)
    ctx.out.print(
        Text.assemble(
            "Diagnosis ",
            (reply.run_id, "bold"),
            f" requested on ticket {args.ticket_id} (trigger {reply.trigger})",
        )
    )
    ctx.out.print(Text(f"Follow it: python starter.py status {args.ticket_id}", style="dim"))
    return 0


async def cmd_release(args: argparse.Namespace, ctx: Context) -> int:
    client = await open_client(ctx.settings)
    reply = await release_agent(client, ctx.settings, args.ticket_id, args.agent_id, args.operator)
    ctx.out.print(
        Text.assemble(
            "Released ",
            (reply.agent_id, "bold"),
            f" on ticket {args.ticket_id}: it must heartbeat within "
            f"{reply.heartbeat_within_s:g} s to come back, or it stays quarantined.",
        )
    )
    return 0


async def cmd_watch(args: argparse.Namespace, ctx: Context) -> int:
    client = await open_client(ctx.settings)
    snapshot = await fetch_snapshot(client, ctx.settings, args.ticket_id)
    running = await is_running(client, ctx.settings, args.ticket_id)
    with Live(live_view(args.ticket_id, snapshot), console=ctx.out, auto_refresh=False) as live:
        while running and snapshot.status.status == "open":
            await asyncio.sleep(args.interval)
            snapshot = await fetch_snapshot(client, ctx.settings, args.ticket_id)
            running = await is_running(client, ctx.settings, args.ticket_id)
            live.update(live_view(args.ticket_id, snapshot), refresh=True)
    if not ctx.out.is_terminal:
        ctx.out.line()
    state = snapshot.status.status if running or snapshot.status.status != "open" else "closed"
    ctx.out.print(
        Text.assemble("Ticket ", (args.ticket_id, "bold"), " is ", _styled(state)),
        Text(f"({snapshot.status.outcome})" if snapshot.status.outcome else ""),
    )
    return 0


async def cmd_join_secret(args: argparse.Namespace, ctx: Context) -> int:
    """Print the secret an agent of ``--kind`` registers with on the ticket (enrollment).

    Derived from the deployment's join key (UNSTUCK_JOIN_KEY or <data dir>/join.key), so
    only who holds the key can mint it; the ticket keeps only its hash. Printed alone on
    stdout, for ``export UNSTUCK_JOIN_SECRET=$(python starter.py join-secret ID)``.
    """
    try:
        key = join_key(ctx.settings.data_dir)
    except EnrollmentError as exc:
        raise StarterError(str(exc)) from None
    print(join_secret(key, args.ticket_id, args.kind))
    return 0


async def cmd_schema(args: argparse.Namespace, ctx: Context) -> int:
    names = list(json_schemas())
    written = write_schemas(args.out)
    table = Table(title=f"JSON Schemas in {args.out}", box=box.SIMPLE_HEAVY)
    table.add_column("schema")
    table.add_column("file")
    for name, path in zip(names, written, strict=False):
        table.add_row(name, str(path))
    ctx.out.print(table)
    ctx.out.print(f"{len(names)} schemas and {written[-1].name} written to {args.out}")
    return 0


# ==== demo =================================================================================
#
# The whole story in one process: a dev server (started if none answers), a worker, the
# login ticket, three worker agents and a validator talking to it through AgentSession, and
# a live view of the ticket. Kept apart from the operator commands above so that the stuck
# scenario (DESIGN §10: nobody submits the result, a diagnosis does it) can plug in here.

DEMO_SPEC = Path(__file__).resolve().parent / "examples" / "login.yaml"
DEMO_REFRESH_S = 0.25
#: How long the view gets to notice the finished ticket before being stopped.
DEMO_WIND_DOWN_S = 2.0


@dataclass
class DemoFigures:
    """What the demo measured, read back from the ticket's own state."""

    tasks_by_agent: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    reassignments: list[float] = field(default_factory=list)
    reassignment_floor_s: float = 0.0
    review_iterations: int = 0
    failed_reviews: int = 0
    rejected_versions: int = 0
    diagnoses: list[DiagnosisView] = field(default_factory=list)
    detection_overshoot_s: float | None = None


@dataclass
class DemoOutcome:
    status: StatusView
    seconds: float
    ui_url: str
    token_path: Path
    figures: DemoFigures

    @property
    def missing_beats(self) -> list[str]:
        """The beats of the demo's story that did not happen (the README tells all four)."""
        f = self.figures
        beats = {
            "an agent killed mid-task was restarted": f.restarts >= 1,
            "its task was reassigned": bool(f.reassignments),
            "a review failed once and the next iteration passed": f.failed_reviews >= 1,
            "the forgotten result was diagnosed and recovered": any(
                d.trigger == "no_result" and d.outcome == "recovered" for d in f.diagnoses
            ),
            "a result version was rejected before one was validated": f.rejected_versions >= 1,
        }
        return [beat for beat, happened in beats.items() if not happened]

    @property
    def ok(self) -> bool:
        validated = self.status.status == "completed" and self.status.validated_version is not None
        return validated and not self.missing_beats


async def _wait_or_timeout(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


async def _watch(
    client: Client,
    settings: Settings,
    ticket_id: str,
    live: Live,
    started: float,
    stop: asyncio.Event,
) -> None:
    """Refresh the live view until ``stop`` is set (a client-side view, not workflow logic)."""
    while not stop.is_set():
        with contextlib.suppress(StarterError):
            snapshot = await fetch_snapshot(client, settings, ticket_id)
            live.update(live_view(ticket_id, snapshot, time.monotonic() - started))
        await _wait_or_timeout(stop, DEMO_REFRESH_S)


async def run_demo(
    settings: Settings,
    out: Console,
    *,
    spec_path: Path = DEMO_SPEC,
    timeout_s: float = 170.0,
    keep_server: bool = False,
) -> DemoOutcome:
    """Run the demo story end to end and return how it ended (raises StarterError on setup)."""
    from worker import build_worker  # the demo hosts the worker in-process

    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        raise StarterError(str(exc), exit_code=2) from None
    ticket_id = f"{spec.id}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    spec = with_ticket_id(spec, ticket_id)

    def say(line: str) -> None:
        out.print(Text(line, style="dim"))

    try:
        server = await ensure_server(settings, log=say)
    except DevServerError as exc:
        raise StarterError(_one_line(str(exc))) from None
    ledger = Ledger(settings.ledger_url)
    try:
        await asyncio.to_thread(ledger.create_all)
        client = await open_client(settings)
        async with build_worker(client, settings, ledger):
            say(f"Worker running on task queue {settings.task_queue!r}")
            return await _demo_story(client, settings, out, spec, timeout_s)
    finally:
        ledger.dispose()
        await _finish_server(server, out, keep_server)


async def _demo_story(
    client: Client, settings: Settings, out: Console, spec: TicketSpec, timeout_s: float
) -> DemoOutcome:
    """Launch the ticket; it starts its own agent fleet (local processes) and heals itself."""
    started = time.monotonic()
    launched = await launch_ticket(client, settings, spec)
    _print_launched(out, launched)
    names = ", ".join(f"{a.name} ({a.kind})" for a in spec.agents)
    out.print(Text(f"The ticket starts its agents as local processes: {names}", style="dim"))
    handle = client.get_workflow_handle(spec.id, result_type=StatusView)
    stop_watch = asyncio.Event()
    errors: list[str] = []
    final: StatusView | None = None
    with Live(live_view(spec.id, None, 0.0), console=out, refresh_per_second=8) as live:
        watcher = asyncio.create_task(_watch(client, settings, spec.id, live, started, stop_watch))
        try:
            final = await asyncio.wait_for(handle.result(), timeout_s)
        except TimeoutError:
            errors.append(f"the ticket did not finish within {timeout_s:.0f} s; cancelling it")
            with contextlib.suppress(StarterError):  # stops its agent processes too
                await cancel_ticket(client, settings, spec.id, "demo timed out", "demo")
        except WorkflowFailureError as exc:
            errors.append(f"the ticket workflow failed: {exc.cause or exc}")
        finally:
            seconds = time.monotonic() - started
            stop_watch.set()
            # A query in flight while the workflow completes may go unanswered until its
            # timeout: stop the view instead of waiting for it. (Cancelled and awaited here:
            # a call left pending at loop close hangs the SDK.)
            _, late = await asyncio.wait([watcher], timeout=DEMO_WIND_DOWN_S)
            for task in late:
                task.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            with contextlib.suppress(StarterError, TimeoutError):
                snapshot = await asyncio.wait_for(
                    fetch_snapshot(client, settings, spec.id), DEMO_WIND_DOWN_S
                )
                live.update(live_view(spec.id, snapshot, seconds))
    if not out.is_terminal:
        out.line()  # a non-terminal Live prints its last frame without a final newline
    if final is None:
        final = await _query(settings, client.get_workflow_handle(spec.id), "status", StatusView)
    outcome = DemoOutcome(
        status=final,
        seconds=seconds,
        ui_url=launched.ui_url,
        token_path=launched.token_path,
        figures=await demo_figures(client, spec.id),
    )
    _print_demo_summary(out, outcome)
    for error in errors:
        out.print(Text(f"problem: {error}", style="red"))
    return outcome


async def demo_figures(client: Client, ticket_id: str) -> DemoFigures:
    """The story's figures, from the ticket's state and timeline (workflow time)."""
    handle = client.get_workflow_handle(ticket_id)
    state: TicketState = await handle.query("state", result_type=TicketState)
    runs: list[DiagnosisView] = await handle.query("diagnoses", result_type=list[DiagnosisView])
    figures = DemoFigures(diagnoses=runs, restarts=state.restarts_total)
    for event in state.timeline:
        agent = state.agents.get(event.agent_id or "")
        if event.kind in ("task_done", "task_under_review") and agent is not None:
            figures.tasks_by_agent[agent.name] = figures.tasks_by_agent.get(agent.name, 0) + 1
    health = state.spec.policy.health
    figures.reassignment_floor_s = 3 * health.running_deadline_s
    dead_since: dict[str, datetime] = {}
    for event in state.timeline:
        if event.kind == "agent_unresponsive" and event.agent_id in state.agents:
            dead = state.agents[event.agent_id]
            life = [d for d in (dead.last_heartbeat_at, dead.last_seen_at) if d is not None]
            if life:
                dead_since[event.agent_id] = max(life)
        elif event.kind == "task_reassigned" and dead_since:
            since = max(dead_since.values())
            figures.reassignments.append((event.at - since).total_seconds())
    for task in state.tasks.values():
        figures.review_iterations = max(figures.review_iterations, task.iteration)
        figures.failed_reviews += sum(1 for r in task.reviews if not r.passed)
    figures.rejected_versions = sum(1 for r in state.results if r.status == "rejected")
    first = next((d for d in state.diagnoses if d.trigger == "no_result"), None)
    if first is not None:
        figures.detection_overshoot_s = first.idle_seconds - state.spec.policy.stuck.window_s
    return figures


def _print_demo_summary(out: Console, outcome: DemoOutcome) -> None:
    view, figures = outcome.status, outcome.figures
    table = Table(title="Demo summary: measured", box=box.SIMPLE_HEAVY, show_header=False)
    table.add_column(style="dim")
    table.add_column()
    table.add_row("ticket", _t(view.ticket_id))
    table.add_row("status", _styled(view.status))
    table.add_row("outcome", _t(view.outcome))
    done = view.counts_by_status.get("done", 0)
    table.add_row("tasks", f"{done}/{sum(view.counts_by_status.values())} done")
    table.add_row(
        "tasks by agent", ", ".join(f"{a}: {n}" for a, n in sorted(figures.tasks_by_agent.items()))
    )
    floor = figures.reassignment_floor_s
    reassign = ", ".join(f"{s:.1f} s" for s in figures.reassignments) or "-"
    table.add_row("agent restarts", str(figures.restarts))
    table.add_row("time to reassignment", f"{reassign} (floor: 3 deadlines = {floor:g} s)")
    table.add_row(
        "review iterations",
        f"max {figures.review_iterations}, {figures.failed_reviews} failed review(s)",
    )
    for run in figures.diagnoses:
        top = run.hypotheses[0]["statement"] if run.hypotheses else "-"
        table.add_row(
            f"diagnosis {run.number}",
            f"{run.trigger} after {run.idle_seconds:.1f} s idle: {top} "
            f"(recovery {', '.join(run.task_ids) or '-'}: {run.outcome or '-'})",
        )
    if figures.detection_overshoot_s is not None:
        table.add_row(
            "detection overshoot",
            f"{figures.detection_overshoot_s * 1000:.0f} ms after the stuck window",
        )
    table.add_row(
        "final result", f"{view.results} version(s), {figures.rejected_versions} rejected"
    )
    table.add_row(
        "validated version", f"v{view.validated_version}" if view.validated_version else "none"
    )
    table.add_row("time", f"{outcome.seconds:.1f} s")
    out.print(table)
    _print_fields(out, [("Web UI", outcome.ui_url), ("operator token", str(outcome.token_path))])
    for beat in outcome.missing_beats:
        out.print(Text(f"missing from the story: {beat}", style="red"))
    if outcome.ok:
        verdict = "completed with a validated result"
    elif outcome.status.validated_version is not None:
        verdict = "validated a result but did NOT tell the whole story"
    else:
        verdict = "did NOT complete as expected"
    out.print(Text(f"Demo {verdict}.", style="bold green" if outcome.ok else "bold red"))


async def _finish_server(server: DevServer, out: Console, keep_server: bool) -> None:
    if not server.owned:
        return
    if keep_server:
        out.print(
            Text(
                f"Dev server left running at {server.address} (pid {server.pid}), Web UI "
                f"{server.ui_url}; stop it with: kill {server.pid}",
                style="dim",
            )
        )
        return
    await server.stop()
    out.print(
        Text("Dev server stopped (use --keep-server to browse the Web UI afterwards).", style="dim")
    )


async def cmd_worker(args: argparse.Namespace, ctx: Context) -> int:
    from worker import serve

    logging.getLogger().setLevel(logging.INFO)  # the worker's log is its output,
    logging.getLogger(CORE_LOGGER).propagate = True  # the SDK core's warnings included
    settings = ctx.settings
    if args.no_dev_server:
        settings = settings.model_copy(update={"start_dev_server": False})
    return await serve(settings)


#: The bearer token the MCP server's HTTP transport requires.
MCP_TOKEN_ENV = "UNSTUCK_MCP_TOKEN"


def _log_to_stderr() -> None:
    """The MCP server's log on stderr: on stdio, stdout is the protocol's channel."""
    logger = logging.getLogger("unstuck")
    if not any(h.get_name() == "unstuck-mcp" for h in logger.handlers):
        handler: logging.Handler = logging.StreamHandler(sys.__stderr__)
        handler.set_name("unstuck-mcp")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


async def cmd_mcp(args: argparse.Namespace, ctx: Context) -> int:
    """Serve the ticket's tools over MCP: one agent on stdio, or many over HTTP."""
    from agent_client.mcp_server import Identity, Sessions, serve_http, serve_stdio

    if args.http is None:
        if not args.ticket or not args.name:
            raise StarterError("mcp: --ticket and --name say which agent this server is", 2)
        _log_to_stderr()
        client = await open_client(ctx.settings)
        who = Identity(args.ticket, args.name, args.kind, os.environ.get("UNSTUCK_JOIN_SECRET"))
        await serve_stdio(
            Sessions(client, fixed=who, state_dir=Path(ctx.settings.data_dir) / "mcp")
        )
        return 0
    host, _, port_text = args.http.rpartition(":")
    if not host or not port_text.isdigit():
        raise StarterError(f"--http: give HOST:PORT, got {args.http!r}", 2)
    token = os.environ.get(MCP_TOKEN_ENV, "")
    if len(token) < 16:
        raise StarterError(
            f"--http needs a bearer token of at least 16 characters in {MCP_TOKEN_ENV}: every "
            "client sends it as Authorization: Bearer <token>",
            2,
        )
    _log_to_stderr()
    client = await open_client(ctx.settings)
    ctx.err.print(f"MCP over streamable HTTP at http://{host}:{port_text}/mcp")
    await serve_http(Sessions(client, idle_s=args.idle_timeout), host, int(port_text), token)
    return 0


async def cmd_demo(args: argparse.Namespace, ctx: Context) -> int:
    outcome = await run_demo(
        ctx.settings,
        ctx.out,
        spec_path=Path(args.spec),
        timeout_s=args.timeout,
        keep_server=args.keep_server,
    )
    return 0 if outcome.ok else 1


async def cmd_codec_server(args: argparse.Namespace, ctx: Context) -> int:
    """Serve Temporal's codec protocol with the UNSTUCK_CODEC_KEYS keys until Ctrl-C."""
    from infra.codec import EncryptionCodec
    from infra.codec_server import CodecServer, serve

    settings = ctx.settings
    if settings.codec_keys is None:
        raise StarterError(
            "codec-server needs the payload keys: set UNSTUCK_CODEC_KEYS (id:base64key,...)", 2
        )
    codec = EncryptionCodec.from_keys(settings.codec_keys.get_secret_value())
    token = settings.codec_auth_token
    origins = args.origin or [
        f"http://localhost:{settings.ui_port}",
        f"http://127.0.0.1:{settings.ui_port}",
    ]
    try:
        server = CodecServer(
            codec,
            host=args.host,
            port=args.port,
            origins=origins,
            token=token.get_secret_value() if token is not None else None,
            certfile=Path(args.https_cert) if args.https_cert else None,
            keyfile=Path(args.https_key) if args.https_key else None,
        )
    except OSError as exc:
        raise StarterError(f"cannot serve the codec on {args.host}:{args.port}: {exc}") from None
    except ValueError as exc:
        raise StarterError(str(exc), 2) from None
    _print_fields(
        ctx.out,
        [
            ("codec server", f"{server.url} (POST /encode, /decode)"),
            ("keys", f"{', '.join(codec.ring.ids)}; encrypting with {codec.ring.encrypting_id}"),
            ("CORS origins", ", ".join(origins)),
            ("auth", "bearer token (UNSTUCK_CODEC_AUTH_TOKEN)" if token else "none"),
            ("Web UI", f"temporal server start-dev --ui-codec-endpoint {server.url}"),
            ("CLI", f"temporal workflow show -w ID --codec-endpoint {server.url}"),
        ],
    )
    await serve(server)
    return 0


# ==== command line =========================================================================


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


def build_parser(prog: str = "starter.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Launch, watch and operate Unstuck tickets.",
        epilog="Exit codes: 0 success, 1 failure, 2 bad usage or invalid ticket spec.",
    )
    _common_flags(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Command, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _common_flags(sub, suppress=True)
        sub.set_defaults(handler=handler)
        return sub

    launch = command("launch", cmd_launch, "Launch a ticket from a YAML or JSON spec.")
    launch.add_argument("spec", metavar="SPEC", help="ticket spec file (YAML or JSON)")
    launch.add_argument("--id", help="ticket id to use instead of the spec's id")

    lister = command("list", cmd_list, "List tickets (from the Temporal visibility store).")
    lister.add_argument("--status", choices=TICKET_STATUSES, help="only tickets in this status")
    lister.add_argument(
        "--query", metavar="Q", help="extra visibility query, e.g. 'Phase=\"testing\"'"
    )
    lister.add_argument("--limit", type=_positive_int, default=50, help="at most this many (50)")

    status = command("status", cmd_status, "Show a ticket: tasks, agents, results, latest events.")
    status.add_argument("ticket_id", metavar="TICKET_ID")
    status.add_argument("--json", action="store_true", help="print the status as JSON (scripts)")
    status.add_argument(
        "--timeline", type=int, default=10, metavar="N", help="latest N timeline entries (10)"
    )

    timeline = command("timeline", cmd_timeline, "Show a ticket's timeline.")
    timeline.add_argument("ticket_id", metavar="TICKET_ID")
    timeline.add_argument("--last", type=int, metavar="N", help="only the latest N entries")

    diagnoses = command(
        "diagnoses", cmd_diagnoses, "List a ticket's diagnoses with their ranked hypotheses."
    )
    diagnoses.add_argument("ticket_id", metavar="TICKET_ID")

    result = command("result", cmd_result, "Show a ticket's final result versions and content.")
    result.add_argument("ticket_id", metavar="TICKET_ID")
    result.add_argument(
        "--version", type=_positive_int, metavar="N", help="this version (default: the latest)"
    )
    result.add_argument("--raw", action="store_true", help="print only the markdown content")

    cancel = command("cancel", cmd_cancel, "Cancel a ticket (needs the operator token file).")
    cancel.add_argument("ticket_id", metavar="TICKET_ID")
    cancel.add_argument("--reason", required=True, help="why; recorded in the ticket's timeline")
    cancel.add_argument(
        "--operator", default=_operator_name(), help="who cancels (default: the current user)"
    )

    watch = command("watch", cmd_watch, "Watch a ticket live until it finishes (Ctrl-C stops).")
    watch.add_argument("ticket_id", metavar="TICKET_ID")
    watch.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="S",
        help="refresh every S seconds (1)",
    )

    diagnose = command(
        "diagnose", cmd_diagnose, "Diagnose a ticket now (needs the operator token file)."
    )
    diagnose.add_argument("ticket_id", metavar="TICKET_ID")
    diagnose.add_argument(
        "--reason", default="requested by an operator", help="why; recorded with the diagnosis"
    )
    diagnose.add_argument(
        "--operator", default=_operator_name(), help="who asks (default: the current user)"
    )

    release = command(
        "release", cmd_release, "Release a quarantined agent (needs the operator token file)."
    )
    release.add_argument("ticket_id", metavar="TICKET_ID")
    release.add_argument("agent_id", metavar="AGENT_ID")
    release.add_argument(
        "--operator", default=_operator_name(), help="who releases (default: the current user)"
    )

    join = command(
        "join-secret",
        cmd_join_secret,
        "Print the secret an agent of one kind registers with on a ticket "
        "(UNSTUCK_JOIN_SECRET; keep it like a password).",
    )
    join.add_argument("ticket_id", metavar="TICKET_ID")
    join.add_argument("--kind", choices=JOIN_KINDS, default="worker", help="agent kind (worker)")

    schema = command("schema", cmd_schema, "Write the JSON Schema of every message.")
    schema.add_argument("--out", default="schemas", metavar="DIR", help="directory (./schemas)")

    demo = command(
        "demo",
        cmd_demo,
        "Run the whole story: dev server, worker, the login ticket, agents, validation.",
    )
    demo.add_argument(
        "--keep-server", action="store_true", help="leave a dev server this demo started running"
    )
    demo.add_argument(
        "--spec", default=str(DEMO_SPEC), metavar="SPEC", help="ticket spec (examples/login.yaml)"
    )
    demo.add_argument(
        "--timeout",
        type=_positive_float,
        default=120.0,
        metavar="S",
        help="give up after S seconds (120)",
    )
    worker = command(
        "worker",
        cmd_worker,
        "Run the Unstuck worker (starts the embedded dev server when nothing answers).",
    )
    worker.add_argument(
        "--no-dev-server",
        action="store_true",
        help="never start the embedded dev server; fail if Temporal does not answer",
    )
    mcp = command(
        "mcp",
        cmd_mcp,
        "Serve a ticket's tools to coding agents over MCP (stdio: one agent; --http: many).",
    )
    mcp.add_argument("--ticket", help="stdio: the ticket the agent works on")
    mcp.add_argument("--name", help="stdio: the agent's name on the ticket")
    mcp.add_argument(
        "--kind", choices=("worker", "validator", "diagnostic"), default="worker", help="(worker)"
    )
    mcp.add_argument(
        "--idle-timeout",
        type=_positive_float,
        default=600.0,
        metavar="SECONDS",
        help="--http: stop heartbeating for an agent that called no tool for this long (600)",
    )
    mcp.add_argument(
        "--http",
        metavar="HOST:PORT",
        help=f"serve many agents over streamable HTTP at /mcp (bearer token: {MCP_TOKEN_ENV})",
    )
    codec = command(
        "codec-server",
        cmd_codec_server,
        "Serve the payload codec (UNSTUCK_CODEC_KEYS) for the Web UI and the temporal CLI.",
    )
    codec.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    codec.add_argument("--port", type=_positive_int, default=8888, help="port (8888)")
    codec.add_argument(
        "--origin",
        action="append",
        metavar="URL",
        help="Web UI origin allowed by CORS, repeatable (http://localhost:<ui port>)",
    )
    codec.add_argument("--https-cert", metavar="PEM", help="serve HTTPS with this certificate")
    codec.add_argument("--https-key", metavar="PEM", help="the HTTPS certificate's private key")
    return parser


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


async def run(argv: Sequence[str] | None = None, *, prog: str = "starter.py") -> int:
    """Parse ``argv``, run one command and return its exit code, in the running event loop.

    Expected failures are printed as one ``error: ...`` line on stderr, never raised.
    """
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: argparse already printed it
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    out, err = Console(), Console(stderr=True)
    try:
        settings = _settings(args)
    except ValueError as exc:
        err.print(Text(f"error: invalid settings: {_one_line(str(exc))}", style="red"))
        return 2
    handler: Command = args.handler
    with contextlib.suppress(OSError):  # a log we cannot write is no reason to fail
        core_log_to_file(settings.data_dir)
    try:
        return await handler(args, Context(settings, out, err))
    except StarterError as exc:
        # Spec errors list one field per line; every other failure is one line.
        err.print(Text(f"error: {exc}", style="red"), soft_wrap=True)
        return exc.exit_code


def main(argv: Sequence[str] | None = None, *, prog: str = "starter.py") -> int:
    """Run one command in a new event loop; returns the exit code."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    forward_core_logs()
    try:
        return asyncio.run(run(argv, prog=prog))
    except KeyboardInterrupt:
        Console(stderr=True).print(Text("interrupted", style="yellow"))
        return 130


def _exit(code: int) -> NoReturn:
    """Leave without interpreter teardown.

    The SDK's Rust runtime threads can crash CPython's teardown of a short-lived client
    process ("PyGILState_Release ... finalizing", temporalio/sdk-python#300). Everything
    is done and flushed here, so skip the teardown.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cli() -> NoReturn:
    """The installed ``unstuck`` command ([project.scripts])."""
    _exit(main(prog="unstuck"))


if __name__ == "__main__":
    _exit(main())
