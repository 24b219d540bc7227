"""Rich renderings of tickets: tables, the diagnoses, the live view (``watch``, ``demo``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from models.messages import (
    AgentView,
    DiagnosisView,
    ResultVersionView,
    StatusView,
    TaskView,
    TimelineEntry,
)
from workflows.dashboard import STATUS_ORDER

if TYPE_CHECKING:
    from cli.tickets import TicketRow, TicketSnapshot

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


def _print_fields(out: Console, fields: Sequence[tuple[str, str]]) -> None:
    """``label  value`` lines, never wrapped or cropped: URLs and paths must stay copyable."""
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        style = f"link {value}" if value.startswith("http") else ""
        line = Text.assemble(("  " + label.ljust(width + 2), "dim"), (value, style))
        out.print(line, soft_wrap=True)
