"""The ticket commands: launch, list, status, timeline, diagnoses, result, cancel, watch,
diagnose, release; and the functions behind them (``launch_ticket``, ``list_tickets``,
``fetch_snapshot``, ``cancel_ticket``, ...), which scripts call directly."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from cli.common import (
    QUERY_TIMEOUT,
    AddCommand,
    Context,
    StarterError,
    _call,
    _one_line,
    _operator_name,
    _operator_update,
    _positive_float,
    _positive_int,
    _query,
    _rpc_failure,
    open_client,
    token_path,
    ui_url,
)
from cli.render import (
    _print_fields,
    _styled,
    live_view,
    render_diagnoses,
    render_list,
    render_results,
    render_snapshot,
    render_timeline,
)
from infra.enrollment import EnrollmentError, join_hashes, join_key
from infra.settings import Settings
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
from models.spec import SpecError, TicketSpec, load_spec, parse_spec
from models.workflow_io import TicketInput
from workflows.ticket import OPEN_TASKS, PHASE, TICKET_STATUS

WORKFLOW_TYPE = "Ticket"
TICKET_STATUSES = ("open", "completed", "cancelled")

T = TypeVar("T")


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


# ==== commands =============================================================================


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


def add_commands(command: AddCommand) -> None:
    """Register launch, list, status, timeline, diagnoses, result, cancel, watch, diagnose and
    release (in this order in ``--help``)."""
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
