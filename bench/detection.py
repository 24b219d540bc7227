"""Stuck-detection latency: Unstuck's one durable timer per ticket against a periodic scan.

    .venv/bin/python -m bench.detection [--tickets N --window S --spread S --period P]

Two cohorts of N tickets, driven alike one after the other: an agent completes every task at
a random offset, and the ticket becomes stuck ``window`` s later. Unstuck: the ticket's own
timer starts a diagnosis; overshoot = its ``started_at`` − the stuck moment (target p99 ≤ 1 s),
also seen from outside (polling ``diagnoses``) and split into the timer's life from the
history. Baseline: a real scanner every ``--period`` s, scaled to ``--baseline-period``
(60 s), and the same scan computed exactly. What each figure means: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console
from rich.progress import Progress
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from agent_client.session import AgentSession
from bench.harness import (
    OFF_S,
    QUANTILES,
    BenchDef,
    CpuMeter,
    at_least,
    code_fingerprint,
    environment,
    event_time,
    load_average,
    measuring,
    option,
    progress_display,
    quantile,
    secs,
    server,
    start_ticket,
    summary,
    ticket_spec,
    ticket_state,
    timer_that_woke,
    until_ready,
    utc_now,
)
from bench.report import (
    Summary,
    cpu_reason,
    fmt_f,
    fmt_ms,
    fmt_s,
    fmt_x,
    get,
    md_table,
    parts_reason,
)
from core.diagnosis import stuck_at
from core.state import TicketState
from models.messages import DiagnosisView

TICKET_QUEUE = "bench-detection"

#: Target from the issue: Unstuck notices a stuck ticket within 1 s of the moment, at p99.
TARGET_P99_S = 1.0
#: AgentSession heartbeat interval: one beat at registration, then none during the run.
HEARTBEAT_S = 3_600.0


# ---- statistics ------------------------------------------------------------------------


def analytic_scan(stuck: list[float], period: float) -> dict[str, Any]:
    """A scan every ``period`` s at a uniformly random phase φ; each stuck moment is found at
    the first scan tick after it. Exact, from the given stuck moments (seconds, any origin).

    * pooled over φ and tickets: for any fixed stuck moment the delay (φ − t) mod P is
      uniform on [0, P), so the pooled delay is uniform: quantile q = q·P, sup = P;
    * one run (one φ): its percentile over its N tickets is a function of φ. Between two
      consecutive breakpoints (φ ≡ t_i mod P) no delay wraps, every delay grows with slope
      1, so the order is fixed and every order statistic (and the interpolated percentile)
      grows with slope 1: on a segment of length L with midpoint value m it is uniform on
      [m − L/2, m + L/2]. The distribution over φ is the mixture of those uniforms
      (weights L/P): mean, 5th/50th/95th percentile over φ and range, all exact.
    """
    n = len(stuck)
    pooled: dict[str, float] = {f"p{round(q * 100)}": round(q * period, 4) for q in QUANTILES}
    pooled["max"] = period  # supremum
    pooled["mean"] = period / 2
    if n == 0:
        return {"period_s": period, "pooled": pooled, "per_run": {}}
    phases = sorted({t % period for t in stuck})
    bounds = [*phases, phases[0] + period]
    segments: list[tuple[float, float, float]] = []  # (start φ, length, φ midpoint)
    for a, b in itertools.pairwise(bounds):
        if b - a > 1e-12:
            segments.append((a, b - a, (a + b) / 2))

    def delays(phi: float) -> list[float]:
        return [(phi - t) % period for t in stuck]

    per_run: dict[str, Any] = {}
    stats: dict[str, Callable[[list[float]], float]] = {
        f"p{round(q * 100)}": functools.partial(lambda q, v: quantile(v, q), q) for q in QUANTILES
    }
    stats["max"] = max
    stats["mean"] = lambda v: sum(v) / len(v)
    for name, fn in stats.items():
        pieces = [(fn(delays(mid)), length) for _, length, mid in segments]
        # uniform on [m - L/2, m + L/2] with weight L/P
        lows = [m - length / 2 for m, length in pieces]
        highs = [m + length / 2 for m, length in pieces]

        def cdf(x: float, pieces: list[tuple[float, float]] = pieces) -> float:
            total = 0.0
            for m, length in pieces:
                lo = m - length / 2
                total += length * min(1.0, max(0.0, (x - lo) / length))
            return total / period

        def inverse(p: float, lo: float = min(lows), hi: float = max(highs)) -> float:
            for _ in range(60):
                mid = (lo + hi) / 2
                if cdf(mid) < p:
                    lo = mid
                else:
                    hi = mid
            return (lo + hi) / 2

        per_run[name] = {
            "mean_over_phase": round(sum(m * length for m, length in pieces) / period, 4),
            "p05_over_phase": round(inverse(0.05), 4),
            "median_over_phase": round(inverse(0.50), 4),
            "p95_over_phase": round(inverse(0.95), 4),
            "range_over_phase": [round(min(lows), 4), round(max(highs), 4)],
        }
    return {"period_s": period, "pooled": pooled, "per_run": per_run, "segments": len(segments)}


# ---- setup -----------------------------------------------------------------------------


def with_stuck_policy(state: TicketState, window: float, cooldown: float) -> TicketState:
    """The state as the baseline scanner judges it: its own window and cooldown."""
    policy = state.spec.policy
    stuck = policy.stuck.model_copy(update={"window_s": window, "cooldown_s": cooldown})
    spec = state.spec.model_copy(update={"policy": policy.model_copy(update={"stuck": stuck})})
    return state.model_copy(update={"spec": spec})


def last_seed_activity(state: TicketState) -> datetime:
    return max(t.updated_at for t in state.tasks.values() if t.created_by == "spec")


def stuck_moment(state: TicketState, window: float, cooldown: float) -> datetime:
    """max(last task activity before any diagnosis + window, created_at + cooldown)."""
    return max(
        last_seed_activity(state) + timedelta(seconds=window),
        state.created_at + timedelta(seconds=cooldown),
    )


# ---- the tickets -----------------------------------------------------------------------


@dataclass
class TicketRun:
    cohort: str  # "unstuck" | "baseline"
    handle: WorkflowHandle[Any, Any]
    offset_s: float
    agent_done_wall: datetime | None = None  # local time of the last complete's reply
    stuck_at: datetime | None = None  # the stuck moment (from the state)
    # unstuck
    diagnosis_started_at: datetime | None = None
    diagnosis_finished_at: datetime | None = None
    idle_seconds: float | None = None
    seen_wall: datetime | None = None  # the diagnoses query first showed a run (reply time)
    seen_on_first_poll: bool = False
    polls: int = 0
    breakdown: dict[str, float] | None = None
    # baseline
    detected_wall: datetime | None = None
    detected_scan: int | None = None
    detected_tick_wall: datetime | None = None
    errors: list[str] = field(default_factory=list)
    #: The agent or the watcher failed (e.g. an update timed out on an overloaded server):
    #: the ticket is left out of every figure and counted.
    failed: bool = False

    @property
    def id(self) -> str:
        return self.handle.id


async def drive_agent(
    run: TicketRun, client: Client, t0: float, think_s: float, rng: random.Random
) -> None:
    """One agent takes the first task at once, holds it until the ticket's offset, then
    completes every seed task. (Holding it keeps the ticket working: claimable tasks that
    nobody takes for a whole window would make it stuck before its planned moment.)"""
    async with AgentSession(
        client, run.id, name="worker", heartbeat_interval_s=HEARTBEAT_S
    ) as agent:
        task = await agent.claim()
        await asyncio.sleep(max(0.0, t0 + run.offset_s - time.monotonic()))
        while task is not None:
            if think_s > 0:
                await asyncio.sleep(rng.uniform(0, think_s))
            reply = await agent.complete(
                task.id, "# done\n\nbench", "implementation", claim_next=True
            )
            task = reply.next.task if reply.next is not None else None
    run.agent_done_wall = utc_now()


async def watch_unstuck(run: TicketRun, args: argparse.Namespace) -> None:
    """After the agent's work: the stuck moment, then poll until the diagnosis shows up."""
    state = await ticket_state(run.handle)
    run.stuck_at = stuck_moment(state, args.window, args.cooldown)
    if args.poll_ms <= 0:
        return
    if state.diagnoses:
        run.seen_wall = utc_now()
        run.seen_on_first_poll = True
        return
    lead = (run.stuck_at - utc_now()).total_seconds() - args.poll_lead
    if lead > 0:
        await asyncio.sleep(lead)
    interval = args.poll_ms / 1000
    deadline = time.monotonic() + args.window + args.timeout
    while True:
        views: list[DiagnosisView] = await run.handle.query(
            "diagnoses", result_type=list[DiagnosisView]
        )
        run.polls += 1
        if views:
            run.seen_wall = utc_now()
            run.seen_on_first_poll = run.polls == 1
            return
        if time.monotonic() > deadline:
            run.errors.append("no diagnosis within the timeout")
            return
        await asyncio.sleep(interval)


async def collect_unstuck(
    runs: list[TicketRun], args: argparse.Namespace, on_done: Callable[[], None]
) -> None:
    """Once every agent is done: wait (one slow pass a second, so the measurement adds
    little load) until each ticket's first diagnosis finished, then read it."""
    pending = [r for r in runs if not r.failed]
    for run in runs:
        if run.failed:
            on_done()
    deadline = time.monotonic() + args.timeout
    while pending:
        replies: list[TicketState | BaseException] = await asyncio.gather(
            *(ticket_state(r.handle) for r in pending),
            return_exceptions=True,
        )
        still: list[TicketRun] = []
        for run, state in zip(pending, replies, strict=True):
            if isinstance(state, BaseException):
                if time.monotonic() > deadline:
                    run.errors.append(f"state query failed at the timeout: {state}")
                    on_done()
                else:
                    still.append(run)
                continue
            if not state.diagnoses or state.diagnoses[0].status == "running":
                if time.monotonic() > deadline:
                    run.errors.append("no finished diagnosis at the timeout")
                    if state.diagnoses:
                        _record_diagnosis(run, state, args)
                    on_done()
                else:
                    still.append(run)
                continue
            _record_diagnosis(run, state, args)
            on_done()
        pending = still
        if pending:
            await asyncio.sleep(1.0)


def _record_diagnosis(run: TicketRun, state: TicketState, args: argparse.Namespace) -> None:
    first = state.diagnoses[0]
    # Recompute from the final state (seed tasks are untouched by the diagnosis).
    final_stuck = stuck_moment(state, args.window, args.cooldown)
    if run.stuck_at is not None and final_stuck != run.stuck_at:
        run.errors.append(f"stuck moment moved: {run.stuck_at} -> {final_stuck}")
    run.stuck_at = final_stuck
    run.diagnosis_started_at = first.started_at
    run.diagnosis_finished_at = first.finished_at
    run.idle_seconds = first.idle_seconds
    if first.trigger != "no_result":
        run.errors.append(f"first diagnosis trigger {first.trigger!r}, expected 'no_result'")


# ---- the baseline scanner --------------------------------------------------------------


@dataclass
class Scan:
    number: int
    tick_wall: datetime
    seconds: float  # tick -> last reply
    queried: int
    found: int
    errors: int


async def _scan_one(
    run: TicketRun,
    args: argparse.Namespace,
    number: int,
    tick_wall: datetime,
    on_found: Callable[[], None],
) -> tuple[bool, bool]:
    """One ticket in one scan: (found now, query failed)."""
    try:
        state = await ticket_state(run.handle)
    except RPCError as exc:
        run.errors.append(f"scan {number}: {exc}")
        return False, True
    now = utc_now()
    at = stuck_at(with_stuck_policy(state, args.window, args.cooldown))
    if run.detected_wall is None and at is not None and at <= now:
        run.detected_wall = now
        run.detected_scan = number
        run.detected_tick_wall = tick_wall
        run.stuck_at = stuck_moment(state, args.window, args.cooldown)
        if run.stuck_at != at:
            run.errors.append(f"stuck_at {at} != stuck moment {run.stuck_at}")
        on_found()
        return True, False
    return False, False


async def scanner(
    runs: list[TicketRun],
    client: Client,
    args: argparse.Namespace,
    t0: float,
    phase: float,
    stop: asyncio.Event,
    on_found: Callable[[], None],
) -> list[Scan]:
    """The seed's minimal design: every P s, query every ticket and check stuck_at."""
    scans: list[Scan] = []
    k = 0
    while not stop.is_set():
        tick_mono = t0 + phase + k * args.period
        delay = tick_mono - time.monotonic()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except TimeoutError:
                pass
        tick_wall = utc_now()
        started = time.perf_counter()
        number = k

        results = await asyncio.gather(
            *(_scan_one(r, args, number, tick_wall, on_found) for r in runs)
        )
        scans.append(
            Scan(
                number=k,
                tick_wall=tick_wall,
                seconds=time.perf_counter() - started,
                queried=len(runs),
                found=sum(f for f, _ in results),
                errors=sum(e for _, e in results),
            )
        )
        k += 1
        if all(r.detected_wall is not None or r.failed for r in runs):
            break
    return scans


# ---- history: where the overshoot goes -------------------------------------------------

_CHILD_INITIATED = EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
_WFT_TROUBLE = (
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
)


async def overshoot_breakdown(client: Client, run: TicketRun) -> dict[str, float] | None:
    """Split started_at − stuck moment into the timer's life, from the ticket's history.

    arm: the timer is armed in the workflow task that handled the last complete, with
    delay = deadline − workflow.now() (that task's start); the server starts it when the
    task completes, so the timer is late by the task's processing time (arming lag).
    fire: TimerFired − (TimerStarted + delay): the server's timer lateness.
    pick-up: from TimerFired to the WorkflowTaskStarted of the task that starts the diagnosis
    (its time is the diagnosis' started_at, workflow.now() of that task). The task may have
    been scheduled before the timer fired (for an activity result, say) and still waiting;
    workflow tasks that failed or timed out in between are counted.
    """
    history = await run.handle.fetch_history()
    events = list(history.events)
    by_id = {e.event_id: e for e in events}
    child = next((e for e in events if e.event_type == _CHILD_INITIATED), None)
    if child is None:
        return None
    wftc = by_id[
        child.start_child_workflow_execution_initiated_event_attributes.workflow_task_completed_event_id
    ]
    wfts = by_id[wftc.workflow_task_completed_event_attributes.started_event_id]
    wftsch = by_id[wfts.workflow_task_started_event_attributes.scheduled_event_id]
    life = timer_that_woke(events, wfts)
    if life is None:
        return None
    intended = life.intended

    def s(a: datetime, b: datetime) -> float:
        return round((a - b).total_seconds(), 4)

    out = {
        **life.parts(),
        "pickup_schedule_to_start_s": s(
            event_time(wfts), max(event_time(wftsch), event_time(life.fired))
        ),
        "wft_failed_or_timed_out": sum(
            1
            for e in events
            if e.event_type in _WFT_TROUBLE and life.timer.event_id < e.event_id < wfts.event_id
        ),
    }
    if run.stuck_at is not None:
        out["intended_minus_stuck_moment_s"] = s(intended, run.stuck_at)
    if run.diagnosis_started_at is not None:
        out["wft_started_minus_started_at_s"] = s(event_time(wfts), run.diagnosis_started_at)
    return out


# ---- one run ---------------------------------------------------------------------------


async def warm_up(client: Client, prefix: str, tasks: int) -> None:
    """One ticket through a diagnosis (workflow sandbox, activities, child workflow warm)."""
    spec = ticket_spec(f"{prefix}-warm", min(tasks, 2), stuck=(0.5, 0.5))
    handle = await start_ticket(client, spec, TICKET_QUEUE)
    run = TicketRun("unstuck", handle, 0.0)
    await drive_agent(run, client, time.monotonic(), 0.0, random.Random(0))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        views: list[DiagnosisView] = await handle.query(
            "diagnoses", result_type=list[DiagnosisView]
        )
        if views and views[0].status != "running":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("warm-up ticket was not diagnosed within 60 s")


def _failed(run: TicketRun, exc: Exception) -> None:
    run.failed = True
    run.errors.append(f"{type(exc).__name__}: {exc}")


def _limit(args: argparse.Namespace) -> float:
    return args.spread + args.window + 3 * args.period + 2 * args.timeout


async def drive_unstuck(
    runs: list[TicketRun],
    client: Client,
    args: argparse.Namespace,
    rng: random.Random,
    progress: Progress,
) -> None:
    """The Unstuck cohort: agents work, then each ticket's own timer detects it is stuck."""
    agents_bar = progress.add_task("[cyan]unstuck: agents done", total=len(runs))
    seen_bar = progress.add_task(
        f"[green]Unstuck: diagnosis seen (poll {args.poll_ms} ms)"
        if args.poll_ms > 0
        else "[green]Unstuck: stuck moment known",
        total=len(runs),
    )
    t0 = time.monotonic()

    async def one(run: TicketRun) -> None:
        try:
            await drive_agent(run, client, t0, args.think, random.Random(rng.random()))
            progress.advance(agents_bar)
            await watch_unstuck(run, args)
        except Exception as exc:
            _failed(run, exc)
        progress.advance(seen_bar)

    await asyncio.wait_for(asyncio.gather(*(one(r) for r in runs)), _limit(args))
    done_bar = progress.add_task("[green]Unstuck: diagnoses finished", total=len(runs))
    await asyncio.wait_for(
        collect_unstuck(runs, args, lambda: progress.advance(done_bar)), _limit(args)
    )


async def drive_baseline(
    runs: list[TicketRun],
    client: Client,
    args: argparse.Namespace,
    rng: random.Random,
    phase: float,
    progress: Progress,
) -> list[Scan]:
    """The baseline cohort: agents work while a scanner queries every ticket every P s."""
    agents_bar = progress.add_task("[cyan]baseline: agents done", total=len(runs))
    scan_bar = progress.add_task(
        f"[magenta]baseline: scan every {args.period:g} s found", total=len(runs)
    )
    t0 = time.monotonic()
    stop = asyncio.Event()
    scan_task = asyncio.create_task(
        scanner(runs, client, args, t0, phase, stop, lambda: progress.advance(scan_bar))
    )

    async def one(run: TicketRun) -> None:
        try:
            await drive_agent(run, client, t0, args.think, random.Random(rng.random()))
        except Exception as exc:
            _failed(run, exc)
        progress.advance(agents_bar)

    try:
        await asyncio.wait_for(asyncio.gather(*(one(r) for r in runs)), _limit(args))
        await asyncio.wait_for(asyncio.shield(scan_task), _limit(args))
    finally:
        stop.set()
    return await scan_task


async def cohorts(
    client: Client, args: argparse.Namespace, console: Console, meter: CpuMeter
) -> tuple[list[TicketRun], list[TicketRun], list[Scan], float, dict[str, Any]]:
    rng = random.Random(args.seed)
    prefix = f"det-{uuid.uuid4().hex[:6]}"
    with progress_display(console) as progress:
        bar = progress.add_task("[dim]warm-up", total=1)
        await warm_up(client, prefix, args.tasks)
        progress.advance(bar)

        # The cohorts run one after the other on the same server: two designs measured under
        # the same load, neither slowed down by the other's tickets and agents (run together
        # they shared two cores; that is a measure of the machine, not of either design).
        cohorts = [("unstuck", args.window, args.cooldown)]
        if args.scan:
            cohorts.append(("baseline", OFF_S, OFF_S))
        runs: dict[str, list[TicketRun]] = {}
        cpu: dict[str, dict[str, Any]] = {}
        phase = rng.uniform(0, args.period)
        scans: list[Scan] = []
        for cohort, window, cooldown in cohorts:
            bar = progress.add_task(f"[cyan]{cohort}: start tickets", total=args.tickets)
            runs[cohort] = []
            for i in range(args.tickets):
                spec = ticket_spec(f"{prefix}-{cohort[0]}{i}", args.tasks, stuck=(window, cooldown))
                handle = await start_ticket(client, spec, TICKET_QUEUE, ready=False)
                runs[cohort].append(TicketRun(cohort, handle, rng.uniform(0, args.spread)))
                progress.advance(bar)
            await asyncio.gather(*(until_ready(r.handle) for r in runs[cohort]))
            async with measuring(meter) as cpu[cohort]:
                if cohort == "unstuck":
                    await drive_unstuck(runs[cohort], client, args, rng, progress)
                else:
                    scans = await drive_baseline(runs[cohort], client, args, rng, phase, progress)
        unstuck = runs["unstuck"]
        baseline = runs.get("baseline", [])

        hist_bar = progress.add_task("[green]fetch histories", total=len(unstuck))
        for run in unstuck:
            try:
                if not run.failed and run.diagnosis_started_at is not None:
                    run.breakdown = await overshoot_breakdown(client, run)
            except Exception as exc:  # informational only
                run.errors.append(f"history: {exc}")
            progress.advance(hist_bar)

        # Stop every ticket: nothing more happens while the worker drains.
        for run in unstuck + baseline:
            with contextlib.suppress(RPCError):
                await run.handle.terminate("benchmark over")
    meta = {"prefix": prefix, "cpu": cpu["unstuck"], "cpu_baseline": cpu.get("baseline")}
    return unstuck, baseline, scans, phase, meta


# ---- report ----------------------------------------------------------------------------


def _ratio(a: Any, b: Any) -> float | None:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or b <= 0:
        return None
    return round(a / b, 1)


def build_report(
    args: argparse.Namespace,
    unstuck: list[TicketRun],
    baseline: list[TicketRun],
    scans: list[Scan],
    phase: float,
    load_before: list[float],
) -> dict[str, Any]:
    overshoot = [x for r in unstuck if (x := secs(r.diagnosis_started_at, r.stuck_at)) is not None]
    external = [x for r in unstuck if (x := secs(r.seen_wall, r.stuck_at)) is not None]
    diag_seconds = [
        x
        for r in unstuck
        if (x := secs(r.diagnosis_finished_at, r.diagnosis_started_at)) is not None
    ]
    idle_check = [
        abs(r.idle_seconds - x)
        for r in unstuck
        if r.idle_seconds is not None
        and r.diagnosis_started_at is not None
        and r.stuck_at is not None
        and (x := secs(r.diagnosis_started_at, r.stuck_at - timedelta(seconds=args.window)))
        is not None
    ]
    agent_to_state = [
        x
        for r in unstuck + baseline
        if r.stuck_at is not None
        and (x := secs(r.agent_done_wall, r.stuck_at - timedelta(seconds=args.window))) is not None
    ]
    parts: dict[str, list[float]] = {}
    for r in unstuck:
        for k, v in (r.breakdown or {}).items():
            parts.setdefault(k, []).append(v)

    scale = args.baseline_period / args.period
    found = [r for r in baseline if r.detected_wall is not None and r.stuck_at is not None]
    emp = [secs(r.detected_wall, r.stuck_at) or 0.0 for r in found]
    wait: list[float] = []
    query: list[float] = []
    scaled: list[float] = []
    for r in found:
        assert r.detected_tick_wall is not None and r.stuck_at is not None
        assert r.detected_wall is not None
        w = max(0.0, (r.detected_tick_wall - r.stuck_at).total_seconds())
        q = (r.detected_wall - max(r.detected_tick_wall, r.stuck_at)).total_seconds()
        wait.append(w)
        query.append(q)
        scaled.append(w * scale + q)

    origin = min((r.stuck_at for r in unstuck if r.stuck_at), default=utc_now())
    moments = [(r.stuck_at - origin).total_seconds() for r in unstuck if r.stuck_at]
    analytic = analytic_scan(moments, args.baseline_period)
    analytic_scaled = analytic_scan(
        [(r.stuck_at - origin).total_seconds() for r in found if r.stuck_at], args.period
    )

    u = summary(overshoot)
    ext = summary(external)
    pooled = analytic["pooled"]
    per_run = {k: v["mean_over_phase"] for k, v in analytic.get("per_run", {}).items()}
    emp_s = summary(emp)
    scaled_s = summary(scaled)
    p99 = u.get("p99")
    against = {
        "analytic_pooled_P60": pooled,
        "analytic_one_run_mean_P60": per_run,
        "empirical_scaled_P60": scaled_s,
        f"empirical_P{args.period:g}": emp_s,
    }
    ratios: dict[str, Any] = {
        k: {p: _ratio(v.get(p), u.get(p)) for p in ("p50", "p99")} for k, v in against.items()
    }
    ratios |= {
        "against_unstuck_external": {
            "analytic_pooled_P60_p50": _ratio(pooled["p50"], ext.get("p50")),
            "analytic_pooled_P60_p99": _ratio(pooled["p99"], ext.get("p99")),
        },
    }
    errors = {r.id: r.errors for r in unstuck + baseline if r.errors}
    missing_unstuck = sum(r.diagnosis_started_at is None and not r.failed for r in unstuck)
    missing_baseline = sum(r.detected_wall is None and not r.failed for r in baseline)
    failed_unstuck = sum(r.failed for r in unstuck)
    failed_baseline = sum(r.failed for r in baseline)
    return {
        "config": {
            "tickets_per_cohort": args.tickets,
            "tasks_per_ticket": args.tasks,
            "window_s": args.window,
            "cooldown_s": args.cooldown,
            "spread_s": args.spread,
            "think_s": args.think,
            "scan_period_s": args.period,
            "baseline_period_s": args.baseline_period,
            "scan_phase_s": round(phase, 4),
            "poll_ms": args.poll_ms,
            "baseline_cohort_and_scanner": args.scan,
            "poll_lead_s": args.poll_lead,
            "seed": args.seed,
            "heartbeat_interval_s": HEARTBEAT_S,
            "health_deadlines_s": OFF_S,
        },
        "environment": {**environment(), "load_average_at_start": load_before},
        "code": code_fingerprint(["workflows/ticket.py", "core/diagnosis.py"]),
        "unstuck": {
            "overshoot_s": u,
            "external_latency_s": ext,
            "external_seen_on_first_poll": sum(r.seen_on_first_poll for r in unstuck),
            "breakdown_s": {k: summary(v) for k, v in parts.items()},
            "diagnosis_duration_s": summary(diag_seconds),
            "idle_seconds_check_max_abs_error_s": round(max(idle_check), 6) if idle_check else None,
            "agent_reply_after_last_activity_s": summary(agent_to_state),
            "not_diagnosed": missing_unstuck,
            "failed_tickets": failed_unstuck,
        },
        "baseline": {
            "analytic_P60": analytic,
            f"analytic_P{args.period:g}_same_moments_as_empirical": {
                "pooled": analytic_scaled["pooled"],
                "per_run": analytic_scaled.get("per_run", {}),
            },
            "empirical": {
                "overshoot_s": emp_s,
                "wait_for_tick_s": summary(wait),
                "query_part_s": summary(query),
                "scans": [
                    {
                        "number": s.number,
                        "tick_wall": s.tick_wall.isoformat(),
                        "seconds": round(s.seconds, 4),
                        "queried": s.queried,
                        "found": s.found,
                        "errors": s.errors,
                    }
                    for s in scans
                ],
                "scan_seconds": summary([s.seconds for s in scans]),
                "not_found": missing_baseline,
                "failed_tickets": failed_baseline,
            },
            "empirical_scaled_P60": {"overshoot_s": scaled_s},
        },
        "ratios": ratios,
        "targets": {
            "unstuck_overshoot_p99": {
                "target": f"<= {TARGET_P99_S:g} s",
                "value": p99,
                "pass": isinstance(p99, float)
                and p99 <= TARGET_P99_S
                and missing_unstuck == 0
                and failed_unstuck == 0,
            },
        },
        "tickets": [
            {
                "id": r.id,
                "cohort": r.cohort,
                "offset_s": round(r.offset_s, 3),
                "stuck_moment": r.stuck_at.isoformat() if r.stuck_at else None,
                "overshoot_s": secs(r.diagnosis_started_at, r.stuck_at),
                "external_s": secs(r.seen_wall, r.stuck_at),
                "breakdown": r.breakdown,
                "detected_s": secs(r.detected_wall, r.stuck_at),
                "scan": r.detected_scan,
            }
            for r in unstuck + baseline
        ],
        "errors": errors,
    }


def summarize(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    cfg, un, base, ratios = r["config"], r["unstuck"], r["baseline"], r["ratios"]
    over = un.get("overshoot_s", {})
    pooled = get(base, "analytic_P60", "pooled", default={})
    scaled = get(base, "empirical_scaled_P60", "overshoot_s", default={})
    emp = get(base, "empirical", "overshoot_s", default={})
    P, P60 = cfg.get("scan_period_s"), cfg.get("baseline_period_s")
    rp = ratios.get("analytic_pooled_P60", {})
    rs = ratios.get("empirical_scaled_P60", {})

    def reasons() -> list[str]:
        out = [
            f"overshoot p50 {fmt_ms(over.get('p50'))}, p99 {fmt_ms(over.get('p99'))}, max "
            f"{fmt_ms(over.get('max'))} over {over.get('n', 0)} tickets.",
            *parts_reason(un.get("breakdown_s", {}), "p99"),
            *cpu_reason(r),
        ]
        if un.get("not_diagnosed") or un.get("failed_tickets"):
            out.append(
                f"{un.get('not_diagnosed')} ticket(s) not diagnosed and "
                f"{un.get('failed_tickets')} whose agent failed: the target counts them as a miss."
            )
        if quick:
            out.append("Smoke sizes: few tickets; p99 is close to the maximum.")
        return out

    s.target(
        r,
        "unstuck_overshoot_p99",
        "Stuck-detection overshoot p99 (the ticket's own timer)",
        fmt_ms(get(r, "targets", "unstuck_overshoot_p99", "value")),
        f"p50 {fmt_ms(over.get('p50'))}, max {fmt_ms(over.get('max'))}, n {over.get('n', 0)}; "
        f"vs polling every {P60:g} s: {fmt_x(rp.get('p50'))} faster at p50, "
        f"{fmt_x(rp.get('p99'))} at p99",
        reasons,
    )
    s.info(
        f"Polling baseline, a scan every {P60:g} s (same run)",
        f"p50 {fmt_s(pooled.get('p50'), 1)}, p99 {fmt_s(pooled.get('p99'), 1)}",
        f"analytic, pooled over the scan phase, from this run's stuck moments; a real "
        f"scanner every {P:g} s measured and scaled to {P60:g} s: p50 "
        f"{fmt_s(scaled.get('p50'), 1)}, p99 {fmt_s(scaled.get('p99'), 1)} "
        f"({fmt_x(rs.get('p99'))} Unstuck's p99)",
    )

    def cells(d: dict[str, Any], unit: Callable[[Any], str]) -> list[str]:
        return [*(unit(d.get(k)) for k in ("p50", "p90", "p99", "max")), str(d.get("n", ""))]

    parts = un.get("breakdown_s", {})
    rows = [["**Unstuck overshoot**", *cells(over, fmt_ms)]]
    ext = un.get("external_latency_s", {})
    if ext.get("n"):
        rows.append(
            [f"Unstuck seen from outside (poll {cfg.get('poll_ms')} ms)", *cells(ext, fmt_ms)]
        )
    for key, label in (
        ("arm_lag_s", "part: arming workflow task"),
        ("timer_late_s", "part: server timer late"),
        ("pickup_s", "part: worker pick-up"),
    ):
        if key in parts:
            rows.append([label, *cells(parts[key], fmt_ms)])
    rows.append([f"scan every {P60:g} s, analytic, pooled", *cells(pooled, fmt_s)])
    one_run = get(base, "analytic_P60", "per_run", default={})
    if one_run:
        stats = ("p50", "p90", "p99", "max")
        rows.append(
            [
                f"scan every {P60:g} s, analytic, one run: mean over the phase",
                *(fmt_s(get(one_run, k, "mean_over_phase")) for k in stats),
                str(over.get("n", "")),
            ]
        )
        rows.append(
            [
                "… one run, 5th–95th percentile over the phase",
                *(
                    f"{fmt_f(get(one_run, k, 'p05_over_phase'), 1)}–"
                    f"{fmt_f(get(one_run, k, 'p95_over_phase'), 1)} s"
                    for k in stats
                ),
                "",
            ]
        )
    if emp.get("n"):
        rows.append([f"scan every {P:g} s, measured", *cells(emp, fmt_s)])
        query = get(base, "empirical", "query_part_s", default={})
        rows.append(["… its query part (does not scale with P)", *cells(query, fmt_ms)])
        rows.append([f"… scaled to {P60:g} s", *cells(scaled, fmt_s)])
    diag = un.get("diagnosis_duration_s", {})
    scan_s = get(base, "empirical", "scan_seconds", default={})
    env = r.get("environment", {})
    errors = r.get("errors") or {}
    notes = [
        f"Diagnosis duration (started → completed) p50 {fmt_s(diag.get('p50'))}, p99 "
        f"{fmt_s(diag.get('p99'))}; baseline scan duration p50 {fmt_ms(scan_s.get('p50'))}, max "
        f"{fmt_ms(scan_s.get('max'))}; the external poll saw the run on its first poll for "
        f"{un.get('external_seen_on_first_poll')} of {over.get('n', 0)}; not diagnosed / not "
        f"found by the scan {un.get('not_diagnosed')} / "
        f"{get(base, 'empirical', 'not_found')} (agent failed, left out: "
        f"{un.get('failed_tickets')} / {get(base, 'empirical', 'failed_tickets')}); load "
        f"average {env.get('load_average_at_start')} → {env.get('load_average_at_end')}."
    ]
    if errors:
        notes.append(f"{len(errors)} ticket(s) with notes, e.g. {next(iter(errors.items()))}.")
    s.section += [
        f"{cfg.get('tickets_per_cohort')} tickets per cohort × {cfg.get('tasks_per_ticket')} "
        f"tasks; window {cfg.get('window_s'):g} s, cooldown {cfg.get('cooldown_s'):g} s, stuck "
        f"moments spread over ~{cfg.get('spread_s'):g} s; real scanner every {P:g} s.",
        "",
        *md_table(["from the stuck moment", "p50", "p90", "p99", "max", "n"], rows),
        "",
        "Ratios (baseline ÷ Unstuck, p50 / p99): "
        + "; ".join(
            f"{k} {fmt_x(v.get('p50'))} / {fmt_x(v.get('p99'))}"
            for k, v in ratios.items()
            if isinstance(v, dict) and "p50" in v
        )
        + ".",
    ]
    s.section += ["", *(c[0].upper() + c[1:] for c in cpu_reason(r)), "", *notes]
    return s


def arguments(p: argparse.ArgumentParser) -> None:
    option(p, "--tickets", 40, "N tickets per cohort")
    option(p, "--tasks", 3, "seed tasks per ticket")
    option(p, "--window", 3.0, "stuck window_s")
    option(p, "--cooldown", None, "stuck cooldown_s (None: = --window)", type=float)
    option(p, "--spread", 10.0, "agents start at uniform random offsets in [0, spread) s")
    option(p, "--think", 0.2, "agent pause before each complete, uniform [0, think) s")
    option(p, "--period", 6.0, "the real baseline scanner's period P, seconds")
    option(p, "--baseline-period", 60.0, "the period the issue names; analytic and scaling")
    option(p, "--poll-ms", 50, "poll interval of the diagnoses query; 0 = no external figure")
    option(p, "--poll-lead", 0.3, "start polling this many seconds before the stuck moment")
    option(p, "--no-scan", True, "no baseline cohort, no real scanner (the analytic one stays)")
    option(p, "--seed", None, "random seed (offsets, scan phase)", type=int)
    option(p, "--timeout", 120.0, "per-ticket limit, seconds")


def check(args: argparse.Namespace) -> str | None:
    if args.cooldown is None:
        args.cooldown = args.window
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**31)
    if args.window <= 0 or args.period <= 0 or args.baseline_period <= 0:
        return "--window, --period and --baseline-period must be positive"
    return at_least(args, 1, "tickets", "tasks")


async def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    load_before = load_average()
    async with server(args, console, task_queue=TICKET_QUEUE) as bench:
        unstuck, baseline, scans, phase, meta = await cohorts(
            bench.client, args, console, CpuMeter(bench.server.pid)
        )
    report = build_report(args, unstuck, baseline, scans, phase, load_before)
    report["environment"]["cpu_during_measurement"] = meta["cpu"]
    report["environment"]["cpu_during_baseline"] = meta["cpu_baseline"]
    return report


BENCH = BenchDef.of(
    globals(),
    "detection",
    "Stuck-detection overshoot against a 60 s polling baseline",
    quick="--tickets 8 --spread 3 --period 3",
    width=140,
)
parse_args, run, main = BENCH.parse_args, BENCH.run, BENCH.main

if __name__ == "__main__":
    raise SystemExit(main())
