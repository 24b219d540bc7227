"""The ticket's live markdown dashboard (the Web UI's "current details")."""

from __future__ import annotations

from datetime import datetime

from core import ticket as core
from core import views
from core.state import TicketState

STATUS_ORDER = (
    "pending",
    "assigned",
    "running",
    "under_review",
    "validation_in_progress",
    "needs_work",
    "done",
    "failed",
    "cancelled",
)


def render_dashboard(
    state: TicketState, timeline_lines: int = 8, now: datetime | None = None
) -> str:
    """Markdown: status line, tasks by phase and status, agents, results, latest events."""
    lines = [
        f"## {state.spec.title}",
        f"**{state.status}** · phase **{core.current_phase(state) or '-'}** · "
        f"{core.open_tasks(state)} open task(s) · last activity "
        f"{state.last_activity_at:%Y-%m-%d %H:%M:%S} UTC",
        "",
        "| phase | " + " | ".join(STATUS_ORDER) + " |",
        "|---|" + "---|" * len(STATUS_ORDER),
    ]
    # From the tasks' index (this runs after every message: no pass over the tasks).
    index = state.index()
    for phase in state.spec.phases:
        row = " | ".join(str(index.by_phase_status[phase.name, s]) for s in STATUS_ORDER)
        lines.append(f"| {phase.name} | {row} |")
    held = {
        agent: [t.id for t in sorted((state.tasks[i] for i in ids), key=lambda t: t.seq)]
        for agent, ids in index.held.items()
    }
    live = [a for a in state.agents.values() if a.state != "terminated"]
    if live:
        lines += ["", "| agent | kind | state | tasks |", "|---|---|---|---|"]
        for agent in live:
            mine = ", ".join(held.get(agent.id, [])) or "-"
            lines.append(f"| {agent.id} | {agent.kind} | {agent.state} | {mine} |")
    suspects = views.anomalies(state, now)
    if suspects:
        lines += ["", "| agent | anomaly | signature | signals |", "|---|---|---|---|"]
        for a in suspects[:5]:
            flag = " ⚠" if a.anomalous else ""
            lines.append(
                f"| {a.agent_id} | {a.score:.2f}{flag} | {a.signature or '-'} | "
                + "; ".join(s.replace("|", "/") for s in a.signals[:2])
                + " |"
            )
    waiting = [e for e in state.escalations if not e.resolved]
    if waiting:
        lines += [
            "",
            "| escalation | severity | status | delivered | why |",
            "|---|---|---|---|---|",
        ]
        for e in waiting[-5:]:
            sent = e.deliveries[-1] if e.deliveries else None
            told = (
                "-"
                if sent is None
                else f"{sent.event}: {sent.status}"
                + (f" ({', '.join(sent.delivered)})" if sent.delivered else "")
            )
            why = (e.question or e.reason)[:160].replace("|", "/").replace("\n", " ")
            lines.append(f"| `{e.id}` | {e.severity} | {e.status} | {told} | {why} |")
    if state.results:
        lines += ["", "Results: " + ", ".join(f"v{r.version} {r.status}" for r in state.results)]
    if state.timeline:
        lines += ["", "Latest:"]
        lines += [
            f"- {e.at:%H:%M:%S} {e.kind}: {e.message}" for e in state.timeline[-timeline_lines:]
        ]
    return "\n".join(lines)
