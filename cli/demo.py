"""The demo: the whole story in one process (``run_demo``, the ``demo`` command)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text
from temporalio.client import Client, WorkflowFailureError

from cli.common import (
    AddCommand,
    Context,
    StarterError,
    _one_line,
    _positive_float,
    _query,
    open_client,
)
from cli.render import _print_fields, _styled, _t, live_view
from cli.tickets import (
    _print_launched,
    cancel_ticket,
    fetch_snapshot,
    launch_ticket,
    with_ticket_id,
)
from core.state import TicketState
from infra.devserver import DevServer, DevServerError, ensure_server
from infra.settings import Settings
from ledger.store import Ledger
from models.messages import DiagnosisView, StatusView
from models.spec import SpecError, TicketSpec, load_spec

# ==== demo =================================================================================
#
# The whole story in one process: a dev server (started if none answers), a worker, the
# login ticket, three worker agents and a validator talking to it through AgentSession, and
# a live view of the ticket. Kept apart from the operator commands (cli.tickets) so that the
# stuck scenario (DESIGN §10: nobody submits the result, a diagnosis does it) can plug in here.

DEMO_SPEC = Path(__file__).resolve().parent.parent / "examples" / "login.yaml"
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


async def cmd_demo(args: argparse.Namespace, ctx: Context) -> int:
    outcome = await run_demo(
        ctx.settings,
        ctx.out,
        spec_path=Path(args.spec),
        timeout_s=args.timeout,
        keep_server=args.keep_server,
    )
    return 0 if outcome.ok else 1


def add_commands(command: AddCommand) -> None:
    """Register demo."""
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
