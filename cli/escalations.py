"""Escalations for people (DESIGN §14): ``escalations``, ``ack``, ``resolve``, ``answer``.

An escalation id names its ticket (``<ticket>/escalation/<source>/<n>``), so ``ack``,
``resolve`` and ``answer`` need only the id. The open escalations across tickets come from
the visibility store (``EscalationSeverity != "none"``) and each ticket's ``escalations``
query; a delivery still on its way shows its tries and last error (the heartbeat details
of its ``deliver_escalation`` activity).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime

from rich.table import Table
from rich.text import Text
from temporalio.client import Client
from temporalio.service import RPCError

from cli.common import (
    AddCommand,
    Context,
    StarterError,
    _operator_name,
    _operator_update,
    _positive_int,
    _query,
    open_client,
)
from cli.render import _styled, _t, _when
from cli.tickets import list_tickets
from core.escalations import QUESTION_SOURCE
from infra.settings import Settings
from models.messages import AcknowledgeEscalation, EscalationView, ResolveEscalation
from models.notify import DELIVER_ESCALATION_ACTIVITY, NotifyProgress
from models.spec import SEVERITY_RANK

#: Tickets with an unresolved escalation (an unset attribute, on tickets older than the
#: escalations-v1 patch, matches none of these on every visibility store).
WAITING_QUERY = "EscalationSeverity IN (" + ", ".join(f'"{s}"' for s in SEVERITY_RANK) + ")"
SEVERITY_STYLES = {"SEV-1": "bold red", "SEV-2": "red", "SEV-3": "yellow", "SEV-4": "cyan"}


def ticket_of(escalation_id: str) -> str:
    """The ticket an escalation id belongs to (``<ticket>/escalation/<source>/<n>``)."""
    ticket, sep, rest = escalation_id.partition("/escalation/")
    if not sep or not ticket or "/" not in rest:
        raise StarterError(
            f"ESCALATION_ID: {escalation_id!r} is not an escalation id "
            "(<ticket>/escalation/<source>/<n>, as `escalations` lists them)",
            exit_code=2,
        )
    return ticket


async def fetch_escalations(
    client: Client, settings: Settings, ticket_id: str
) -> list[EscalationView]:
    handle = client.get_workflow_handle(ticket_id)
    return await _query(settings, handle, "escalations", list[EscalationView])


async def open_escalations(
    client: Client, settings: Settings, limit: int = 50
) -> list[EscalationView]:
    """Unresolved escalations of every ticket waiting for a person, worst first."""
    rows = await list_tickets(client, settings, query=WAITING_QUERY, limit=limit)
    found: list[EscalationView] = []
    for row in rows:
        found += [e for e in await fetch_escalations(client, settings, row.ticket_id) if _open(e)]
    return sorted(found, key=lambda e: (SEVERITY_RANK.get(e.severity, 9), e.created_at))


async def delivery_progress(client: Client, ticket_id: str) -> dict[str, NotifyProgress]:
    """Deliveries on their way, by escalation id: their tries and last errors."""
    try:
        described = await client.get_workflow_handle(ticket_id).describe()
    except RPCError:
        return {}
    progress: dict[str, NotifyProgress] = {}
    for pending in described.raw_description.pending_activities:
        if pending.activity_type.name != DELIVER_ESCALATION_ACTIVITY:
            continue
        if not pending.heartbeat_details.payloads:
            continue
        try:
            details = await client.data_converter.decode(
                pending.heartbeat_details.payloads, [NotifyProgress]
            )
        except Exception:
            continue
        if isinstance(seen := details[0], NotifyProgress):
            progress[seen.escalation_id] = seen
    return progress


def _open(e: EscalationView) -> bool:
    return e.status != "resolved"


def _delivery(e: EscalationView, late: NotifyProgress | None) -> Text:
    if not e.deliveries:
        return Text("-", style="dim")
    last = e.deliveries[-1]
    if last.status == "pending":
        text = Text(f"{last.event} pending", style="yellow")
        if late is not None and late.last_errors:
            text.append(f" (try {late.tries}: {'; '.join(late.last_errors)[:120]})")
        return text
    if last.status == "failed":
        return Text(f"{last.event} refused: {'; '.join(last.failed)[:120]}", style="red")
    sinks = ", ".join(last.delivered) or "no sink wants it"
    text = Text(f"{last.event} → {sinks}", style="green" if last.delivered else "dim")
    if last.failed:
        text.append(f"; refused: {'; '.join(last.failed)[:80]}", style="red")
    return text


def _age(created_at: str) -> str:
    seconds = (datetime.now(UTC) - datetime.fromisoformat(created_at)).total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render_escalations(
    escalations: Sequence[EscalationView],
    late: dict[str, NotifyProgress] | None = None,
    *,
    title: str = "Escalations",
) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("escalation", "sev", "status", "age", "agent", "why", "delivery"):
        table.add_column(column, overflow="fold")
    for e in escalations:
        why = e.question or e.reason
        if e.status == "resolved":
            cut = "…" if len(why) > 100 else ""
            why = f"{why[:100]}{cut}\n→ {e.resolved_by}: {e.note or ''}"
        table.add_row(
            _t(e.id),
            Text(e.severity, style=SEVERITY_STYLES.get(e.severity, "")),
            _styled(e.status),
            _t(_age(e.created_at)),
            _t(e.agent_id),
            _t(why[:240]),
            _delivery(e, (late or {}).get(e.id)),
        )
    return table


async def cmd_escalations(args: argparse.Namespace, ctx: Context) -> int:
    client = await open_client(ctx.settings)
    if args.ticket_id:
        found = await fetch_escalations(client, ctx.settings, args.ticket_id)
        shown = found if args.all else [e for e in found if _open(e)]
        late = await delivery_progress(client, args.ticket_id)
        title = f"Escalations of {args.ticket_id}" + ("" if args.all else " (open)")
    else:
        if args.all:
            raise StarterError("--all needs a TICKET_ID (resolved ones are listed per ticket)", 2)
        shown = await open_escalations(client, ctx.settings, limit=args.limit)
        tickets = {ticket_of(e.id) for e in shown}
        if len(tickets) >= args.limit:
            ctx.err.print(
                Text(f"(the first {args.limit} tickets only: --limit N for more)", style="yellow")
            )
        late = {}
        for ticket_id in {ticket_of(e.id) for e in shown if e.deliveries}:
            late |= await delivery_progress(client, ticket_id)
        title = "Open escalations"
    if not shown:
        ctx.out.print(Text("No open escalations." if not args.all else "No escalations."))
        return 0
    ctx.out.print(render_escalations(shown, late, title=title))
    ctx.out.print(
        Text(
            "ack ID: a person has it · resolve ID --note TEXT: done, the note goes to the agents "
            "· answer ID TEXT: answers an agent's question",
            style="dim",
        )
    )
    return 0


async def acknowledge(
    client: Client, settings: Settings, escalation_id: str, operator: str
) -> EscalationView:
    return await _operator_update(
        client,
        settings,
        ticket_of(escalation_id),
        "ack",
        lambda token: AcknowledgeEscalation(
            escalation_id=escalation_id, operator=operator, operator_token=token
        ),
        EscalationView,
    )


async def resolve(
    client: Client,
    settings: Settings,
    escalation_id: str,
    note: str,
    operator: str,
    *,
    as_task: bool = False,
) -> EscalationView:
    if not note.strip():
        raise StarterError("--note: must say what was done (the agents read it)", exit_code=2)
    return await _operator_update(
        client,
        settings,
        ticket_of(escalation_id),
        "resolve",
        lambda token: ResolveEscalation(
            escalation_id=escalation_id,
            note=note,
            as_task=as_task,
            operator=operator,
            operator_token=token,
        ),
        EscalationView,
    )


async def cmd_ack(args: argparse.Namespace, ctx: Context) -> int:
    client = await open_client(ctx.settings)
    view = await acknowledge(client, ctx.settings, args.escalation_id, args.operator)
    ctx.out.print(
        Text.assemble(
            ("Acknowledged ", ""),
            (view.id, "bold"),
            f" ({view.severity}) by {view.acknowledged_by} at {_when(view.acknowledged_at)}. "
            "The sinks are told; the ticket still waits for `resolve`.",
        )
    )
    return 0


async def cmd_resolve(args: argparse.Namespace, ctx: Context) -> int:
    client = await open_client(ctx.settings)
    view = await resolve(
        client, ctx.settings, args.escalation_id, args.note, args.operator, as_task=args.task
    )
    _print_resolved(ctx, view)
    return 0


async def cmd_answer(args: argparse.Namespace, ctx: Context) -> int:
    if f"/escalation/{QUESTION_SOURCE}/" not in args.question_id:
        raise StarterError(
            f"QUESTION_ID: {args.question_id!r} is not an agent's question; "
            "resolve other escalations with `resolve ID --note TEXT`",
            exit_code=2,
        )
    client = await open_client(ctx.settings)
    view = await resolve(client, ctx.settings, args.question_id, args.answer, args.operator)
    _print_resolved(ctx, view)
    return 0


def _print_resolved(ctx: Context, view: EscalationView) -> None:
    if view.source == QUESTION_SOURCE:
        what = f"The answer is in {view.agent_id}'s inbox."
    else:
        what = "The note went to the ticket's agents; diagnosing resumes with a fresh budget."
    ctx.out.print(
        Text.assemble(("Resolved ", ""), (view.id, "bold"), f" by {view.resolved_by}. {what}")
    )


def add_commands(command: AddCommand) -> None:
    """Register escalations, ack, resolve and answer (in this order in ``--help``)."""
    listing = command(
        "escalations",
        cmd_escalations,
        "List open escalations across tickets, or one ticket's (with --all, resolved too).",
    )
    listing.add_argument("ticket_id", metavar="TICKET_ID", nargs="?", help="only this ticket")
    listing.add_argument("--all", action="store_true", help="resolved ones too (with TICKET_ID)")
    listing.add_argument(
        "--limit", type=_positive_int, default=50, help="at most this many tickets (50)"
    )

    ack = command("ack", cmd_ack, "Acknowledge an escalation: a person has it (pages stop).")
    ack.add_argument("escalation_id", metavar="ESCALATION_ID")
    ack.add_argument("--operator", default=_operator_name(), help="who (default: current user)")

    resolve_ = command(
        "resolve",
        cmd_resolve,
        "Resolve an escalation: the note goes to the agents, diagnosing resumes afresh.",
    )
    resolve_.add_argument("escalation_id", metavar="ESCALATION_ID")
    resolve_.add_argument("--note", required=True, help="what was done; the agents read it")
    resolve_.add_argument(
        "--task", action="store_true", help="also queue the note as a high-priority task"
    )
    resolve_.add_argument(
        "--operator", default=_operator_name(), help="who (default: current user)"
    )

    answer = command("answer", cmd_answer, "Answer an agent's question (ask_human).")
    answer.add_argument("question_id", metavar="QUESTION_ID")
    answer.add_argument("answer", metavar="ANSWER", help="the answer the agent gets")
    answer.add_argument("--operator", default=_operator_name(), help="who (default: current user)")
