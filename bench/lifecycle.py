"""Task-lifecycle throughput and history cost of the Ticket workflow, against a raw ceiling.

    .venv/bin/python -m bench.lifecycle [--tickets N --tasks M --agents K --rounds R]

Per round: N tickets of M tasks worked by K ``AgentSession`` agents each (register, claim,
``complete(claim_next=True)`` until none is left; timed), then validated; and N
``BenchCeiling`` workflows (bench/ceiling.py) sent the same updates by as many concurrent
callers. R rounds, interleaved. Then every ticket's history, events per lifecycle. Targets:
ours ≥ 50 % of the ceiling's updates/s; ≤ 10 events per lifecycle. What runs and what each
figure means: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import Progress
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from agent_client.session import AgentSession
from bench.ceiling import Bump, CeilingWorkflow
from bench.harness import (
    HEALTH_OFF,
    BenchDef,
    CpuMeter,
    at_least,
    code_fingerprint,
    environment,
    option,
    progress_display,
    server,
    start_ticket,
    ticket_spec,
    until_ready,
)
from bench.history import HistoryStats, analyse, fetch_runs, source_of
from bench.report import Summary, fmt_f, fmt_pct, fmt_s, get, md_table, num
from models.messages import StatusView

TICKET_QUEUE = "bench-unstuck"
CEILING_QUEUE = "bench-ceiling"

#: Targets from the issue.
TARGET_RATIO = 0.50
TARGET_EVENTS_PER_LIFECYCLE = 10.0

T = TypeVar("T")


# ---- measurements ----------------------------------------------------------------------


@dataclass
class CallerRun:
    """One agent (ours) or one caller (ceiling)."""

    workflow_id: str
    name: str
    updates: int = 0
    lifecycles: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    session: AgentSession | None = None
    error: str | None = None

    async def timed(self, call: Awaitable[T]) -> T:
        start = time.perf_counter()
        result = await call
        self.latencies_ms.append((time.perf_counter() - start) * 1000)
        self.updates += 1
        return result


@dataclass
class Phase:
    """A timed phase: wall time, what it sent, CPU it cost."""

    seconds: float
    updates: int
    latencies_ms: list[float]
    window: tuple[datetime, datetime]
    python_cpu_s: float = 0.0
    server_cpu_s: float = 0.0

    @property
    def updates_per_s(self) -> float:
        return self.updates / self.seconds if self.seconds else 0.0


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "max_ms": 0.0}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(p95, 2),
        "max_ms": round(ordered[-1], 2),
    }


async def _timed_phase(
    meter: CpuMeter, runs: list[CallerRun], work: Awaitable[Any], timeout: float
) -> Phase:
    window_start = datetime.now(UTC)
    meter.start()
    t0 = time.perf_counter()
    await asyncio.wait_for(work, timeout)
    seconds = time.perf_counter() - t0
    py_cpu, server_cpu = meter.seconds()
    return Phase(
        seconds=seconds,
        updates=sum(r.updates for r in runs),
        latencies_ms=[x for r in runs for x in r.latencies_ms],
        window=(window_start, datetime.now(UTC)),
        python_cpu_s=py_cpu,
        server_cpu_s=server_cpu,
    )


# ---- ours: tickets ---------------------------------------------------------------------


@dataclass
class TicketsRun:
    handles: list[WorkflowHandle[Any, StatusView]]
    agents: list[list[CallerRun]]
    working: Phase
    validation_seconds: float
    final: list[StatusView | None]
    errors: list[str]

    @property
    def lifecycles(self) -> int:
        return sum(a.lifecycles for row in self.agents for a in row)


async def _agent(
    run: CallerRun, client: Client, result: str, heartbeats: bool, on_lifecycle: Callable[[], None]
) -> None:
    session = AgentSession(client, run.workflow_id, name=run.name)
    run.session = session
    try:
        await run.timed(session.register())
        if heartbeats:
            session.start_heartbeats()
        task = await run.timed(session.claim())
        while task is not None:
            reply = await run.timed(
                session.complete(task.id, result, "implementation", claim_next=True)
            )
            run.lifecycles += 1
            on_lifecycle()
            task = reply.next.task if reply.next is not None else None
    except Exception as exc:  # reported, not fatal: the history says more
        run.error = f"{run.workflow_id} agent {run.name}: {type(exc).__name__}: {exc}"
    finally:
        await session.stop_heartbeats()


async def _validate(
    client: Client, handle: WorkflowHandle[Any, StatusView], submitter: AgentSession
) -> StatusView:
    validator = AgentSession(client, handle.id, name="validator", kind="validator")
    await validator.register()
    submitted = await submitter.submit_result("# Benchmark result\n\nEvery task is done.\n")
    await validator.review_result(submitted.version, True, "benchmark: accepted")
    return await handle.result()


async def run_tickets(
    client: Client,
    *,
    prefix: str,
    tickets: int,
    tasks: int,
    agents: int,
    heartbeats: bool,
    result: str,
    progress: Progress,
    meter: CpuMeter,
    timeout: float,
    label: str,
) -> TicketsRun:
    handles: list[WorkflowHandle[Any, StatusView]] = []
    for i in range(tickets):
        # Without heartbeats, health deadlines are out of the way: the run measures the
        # task protocol, not agents being declared unresponsive.
        spec = ticket_spec(
            f"{prefix}-t{i}", tasks, stuck=None, health=None if heartbeats else HEALTH_OFF
        )
        handles.append(await start_ticket(client, spec, TICKET_QUEUE, ready=False))
    await asyncio.gather(*(until_ready(h, "status") for h in handles))

    bar = progress.add_task(f"[cyan]{label}: task lifecycles", total=tickets * tasks)
    runs = [[CallerRun(workflow_id=h.id, name=f"w{k}") for k in range(agents)] for h in handles]
    flat = [r for row in runs for r in row]
    working = await _timed_phase(
        meter,
        flat,
        asyncio.gather(
            *(_agent(r, client, result, heartbeats, lambda: progress.advance(bar)) for r in flat)
        ),
        timeout,
    )

    validating = progress.add_task(f"[cyan]{label}: validate + finish", total=tickets)

    errors = [r.error for r in flat if r.error]

    async def validate_one(i: int) -> StatusView | None:
        submitter = runs[i][0].session
        assert submitter is not None
        try:
            status: StatusView | None = await asyncio.wait_for(
                _validate(client, handles[i], submitter), timeout
            )
        except Exception as exc:  # reported, not fatal
            errors.append(f"{handles[i].id} validation: {type(exc).__name__}: {exc}")
            status = None
        progress.advance(validating)
        return status

    t1 = time.perf_counter()
    final = await asyncio.gather(*(validate_one(i) for i in range(tickets)))
    return TicketsRun(
        handles=handles,
        agents=runs,
        working=working,
        validation_seconds=time.perf_counter() - t1,
        final=list(final),
        errors=errors,
    )


# ---- ceiling ---------------------------------------------------------------------------


@dataclass
class CeilingRun:
    handles: list[WorkflowHandle[Any, int]]
    working: Phase
    counts: list[int]


async def _caller(
    run: CallerRun, handle: WorkflowHandle[Any, int], n: int, tick: Callable[[], None]
) -> None:
    for seq in range(n):
        request_id = uuid.uuid4().hex
        _ = await run.timed(
            handle.execute_update(
                CeilingWorkflow.bump,
                Bump(caller=run.name, request_id=request_id, seq=seq),
                id=request_id,
            )
        )
        tick()


async def run_ceiling(
    client: Client,
    *,
    prefix: str,
    plan: list[list[int]],
    progress: Progress,
    meter: CpuMeter,
    timeout: float,
    label: str,
) -> CeilingRun:
    """``plan[i][k]``: updates caller k of workflow i sends (mirrors agent k of ticket i)."""
    handles: list[WorkflowHandle[Any, int]] = []
    for i in range(len(plan)):
        handles.append(
            await client.start_workflow(
                CeilingWorkflow.run, id=f"{prefix}-c{i}", task_queue=CEILING_QUEUE
            )
        )
    await asyncio.gather(*(until_ready(h, "count") for h in handles))
    bar = progress.add_task(f"[magenta]{label}: updates", total=sum(sum(row) for row in plan))
    runs = [
        [CallerRun(workflow_id=h.id, name=f"c{k}") for k in range(len(row))]
        for h, row in zip(handles, plan, strict=True)
    ]
    jobs = [
        _caller(run, handle, n, lambda: progress.advance(bar))
        for handle, row_runs, row in zip(handles, runs, plan, strict=True)
        for run, n in zip(row_runs, row, strict=True)
    ]
    working = await _timed_phase(
        meter, [r for row in runs for r in row], asyncio.gather(*jobs), timeout
    )
    counts = []
    for handle in handles:
        _ = await handle.execute_update(CeilingWorkflow.finish)
        counts.append(await handle.result())
    expected = [sum(row) for row in plan]
    if counts != expected:
        raise RuntimeError(f"ceiling workflows counted {counts}, expected {expected}")
    return CeilingRun(handles=handles, working=working, counts=counts)


# ---- histories -------------------------------------------------------------------------


async def histories(
    client: Client,
    handles: list[WorkflowHandle[Any, Any]],
    window: tuple[datetime, datetime],
) -> list[HistoryStats]:
    async def one(handle: WorkflowHandle[Any, Any]) -> HistoryStats:
        run_id = handle.first_execution_run_id or handle.run_id
        assert run_id is not None
        return analyse(handle.id, await fetch_runs(client, handle.id, run_id), window)

    return list(await asyncio.gather(*(one(h) for h in handles)))


# ---- report ----------------------------------------------------------------------------


@dataclass
class Round:
    ours: TicketsRun
    ceiling: CeilingRun
    ours_hist: list[HistoryStats]
    ceiling_hist: list[HistoryStats]
    order: str = "ours→ceiling"


def _per_lc(counter: Counter[str], n: int) -> dict[str, dict[str, float]]:
    return {
        k: {"count": v, "per_lifecycle": round(v / n, 3)}
        for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    }


def _phase_json(p: Phase) -> dict[str, Any]:
    return {
        "seconds": round(p.seconds, 3),
        "updates": p.updates,
        "updates_per_s": round(p.updates_per_s, 2),
        "update_latency": _percentiles(p.latencies_ms),
        "python_cpu_s": round(p.python_cpu_s, 3),
        "server_cpu_s": round(p.server_cpu_s, 3),
        "python_cpu_ms_per_update": round(1000 * p.python_cpu_s / max(p.updates, 1), 3),
        "server_cpu_ms_per_update": round(1000 * p.server_cpu_s / max(p.updates, 1), 3),
    }


def build_report(args: argparse.Namespace, rounds: list[Round]) -> dict[str, Any]:
    ours_s = sum(r.ours.working.seconds for r in rounds)
    ceil_s = sum(r.ceiling.working.seconds for r in rounds)
    ours_updates = sum(r.ours.working.updates for r in rounds)
    ceil_updates = sum(r.ceiling.working.updates for r in rounds)
    lifecycles = sum(r.ours.lifecycles for r in rounds)
    ours_ups = ours_updates / ours_s
    ceil_ups = ceil_updates / ceil_s
    lifecycles_per_s = lifecycles / ours_s
    updates_per_lifecycle = ours_updates / lifecycles
    ceiling_equiv_lps = ceil_ups / updates_per_lifecycle
    per_round_ratio = [
        r.ours.working.updates_per_s / r.ceiling.working.updates_per_s for r in rounds
    ]
    pooled_ratio = ours_ups / ceil_ups
    ratio_updates = statistics.median(per_round_ratio)
    ratio_strict = ratio_updates / updates_per_lifecycle

    ours_hist = [h for r in rounds for h in r.ours_hist]
    ceiling_hist = [h for r in rounds for h in r.ceiling_hist]
    total_events = sum(h.events for h in ours_hist)
    window_events = sum(h.in_window for h in ours_hist)
    events_per_lifecycle = total_events / lifecycles
    by_type: Counter[str] = Counter()
    window_by_type: Counter[str] = Counter()
    triggers: Counter[str] = Counter()
    for h in ours_hist:
        by_type.update(h.by_type)
        window_by_type.update(h.in_window_by_type)
        triggers.update(h.wft_triggers)
    by_source: Counter[str] = Counter()
    for name, n in by_type.items():
        by_source[source_of(name)] += n
    one = rounds[0].ours_hist[0]
    ceiling_events = sum(h.events for h in ceiling_hist)
    # Each ceiling workflow also got one `finish` update.
    ceiling_updates_total = sum(sum(r.ceiling.counts) + len(r.ceiling.counts) for r in rounds)

    def sum_phase(phases: list[Phase]) -> Phase:
        return Phase(
            seconds=sum(p.seconds for p in phases),
            updates=sum(p.updates for p in phases),
            latencies_ms=[x for p in phases for x in p.latencies_ms],
            window=(phases[0].window[0], phases[-1].window[1]),
            python_cpu_s=sum(p.python_cpu_s for p in phases),
            server_cpu_s=sum(p.server_cpu_s for p in phases),
        )

    ours_phase = sum_phase([r.ours.working for r in rounds])
    ceil_phase = sum_phase([r.ceiling.working for r in rounds])
    finals = [s for r in rounds for s in r.ours.final if s is not None]
    problems = [e for r in rounds for e in r.ours.errors]
    problems += [
        f"{h.workflow_id} WorkflowTaskFailed {f}" for h in ours_hist for f in h.wft_failures
    ]
    tickets_total = sum(len(r.ours.final) for r in rounds)
    return {
        "config": {
            "tickets": args.tickets,
            "tasks_per_ticket": args.tasks,
            "agents_per_ticket": args.agents,
            "rounds": args.rounds,
            "heartbeats": (
                "on (AgentSession's normal rate: the interval from Registration)"
                if args.heartbeats
                else "off (health deadlines set to 1 day)"
            ),
            "result_bytes": args.result_bytes,
            "warmup": args.warmup,
        },
        "environment": environment(load_digits=None),
        "code": code_fingerprint(["workflows/ticket.py"]),
        "ours": {
            "lifecycles": lifecycles,
            "updates_per_lifecycle": round(updates_per_lifecycle, 3),
            "lifecycles_per_s": round(lifecycles_per_s, 2),
            **_phase_json(ours_phase),
            "validation_seconds": round(sum(r.ours.validation_seconds for r in rounds), 3),
            "tickets_completed": sum(1 for s in finals if s.status == "completed"),
            "tickets": tickets_total,
            "tasks_done": sum(s.counts_by_status.get("done", 0) for s in finals),
        },
        "ceiling": {
            "workflows": sum(len(r.ceiling.handles) for r in rounds),
            **_phase_json(ceil_phase),
            "equivalent_lifecycles_per_s": round(ceiling_equiv_lps, 2),
            "events": ceiling_events,
            "events_per_update": round(ceiling_events / ceiling_updates_total, 3),
        },
        "ratios": {
            "ratio_updates": round(ratio_updates, 4),
            "ratio_updates_pooled": round(pooled_ratio, 4),
            "ratio_strict": round(ratio_strict, 4),
            "ratio_updates_per_round": [round(x, 4) for x in per_round_ratio],
            "ratio_cpu": round(
                (ceil_phase.python_cpu_s + ceil_phase.server_cpu_s)
                / max(ours_phase.python_cpu_s + ours_phase.server_cpu_s, 1e-9),
                4,
            ),
        },
        "rounds": [
            {
                "order": r.order,
                "ours": _phase_json(r.ours.working),
                "ceiling": _phase_json(r.ceiling.working),
                "ratio_updates": round(x, 4),
            }
            for r, x in zip(rounds, per_round_ratio, strict=True)
        ],
        "history": {
            "events_total": total_events,
            "runs_total": sum(h.runs for h in ours_hist),
            "events_per_lifecycle": round(events_per_lifecycle, 3),
            "events_in_working_phase": window_events,
            "events_per_lifecycle_working": round(window_events / lifecycles, 3),
            "by_source_all_tickets": _per_lc(by_source, lifecycles),
            "by_type_all_tickets": _per_lc(by_type, lifecycles),
            "by_type_working_phase": _per_lc(window_by_type, lifecycles),
            "workflow_task_triggers_all_tickets": _per_lc(triggers, lifecycles),
            "one_ticket": {
                "workflow_id": one.workflow_id,
                "runs": one.runs,
                "events": one.events,
                "events_per_lifecycle": round(one.events / args.tasks, 3),
                "by_type": _per_lc(one.by_type, args.tasks),
                "workflow_task_triggers": _per_lc(one.wft_triggers, args.tasks),
            },
        },
        "problems": problems,
        "targets": {
            "throughput_vs_ceiling": {
                "target": f">= {TARGET_RATIO:.0%}",
                "value": round(ratio_updates, 4),
                "pass": ratio_updates >= TARGET_RATIO,
            },
            "events_per_lifecycle": {
                "target": f"<= {TARGET_EVENTS_PER_LIFECYCLE:g}",
                "value": round(events_per_lifecycle, 3),
                "pass": events_per_lifecycle <= TARGET_EVENTS_PER_LIFECYCLE,
            },
        },
    }


def summarize(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    cfg, ours, ceil, ratios, hist = (
        r[k] for k in ("config", "ours", "ceiling", "ratios", "history")
    )
    per_round = ratios.get("ratio_updates_per_round", [])
    rounds_text = " / ".join(fmt_pct(x) for x in per_round)
    smoke = "Smoke sizes: few {}; not the target's definition."

    def cpu_ms(side: dict[str, Any], part: str = "") -> float:
        parts = [part] if part else ["python", "server"]
        return sum(side.get(f"{p}_cpu_ms_per_update") or 0 for p in parts)

    def throughput_reasons() -> list[str]:
        spread = fmt_pct(max(per_round) - min(per_round)) if per_round else "—"
        out = [
            f"per-round ratios {rounds_text} (spread {spread}), pooled "
            f"{fmt_pct(ratios.get('ratio_updates_pooled'))}."
        ]
        ours_cpu, ceil_cpu = cpu_ms(ours), cpu_ms(ceil)
        if ours_cpu and ceil_cpu:
            extra_py = cpu_ms(ours, "python") - cpu_ms(ceil, "python")
            extra_srv = cpu_ms(ours, "server") - cpu_ms(ceil, "server")
            side = (
                "the dev server"
                if extra_srv > extra_py
                else "the Python process (worker, ledger activity, agents)"
            )
            out.append(
                f"CPU per update: ours {ours_cpu:.2f} ms (python "
                f"{ours.get('python_cpu_ms_per_update')} + server "
                f"{ours.get('server_cpu_ms_per_update')}) vs ceiling {ceil_cpu:.2f} ms: ours "
                f"costs {ours_cpu / ceil_cpu:.1f}× the CPU per update, most of the extra on "
                f"{side}; the CPU-cost ratio alone predicts {fmt_pct(ratios.get('ratio_cpu'))}."
            )
        measured, predicted = ratios.get("ratio_updates"), ratios.get("ratio_cpu")
        if num(measured) and num(predicted) and predicted - measured > 0.1:
            out.append(
                f"The measured ratio ({fmt_pct(measured)}) is well below what the CPU cost "
                f"predicts ({fmt_pct(predicted)}): not CPU-bound alone (outside load, contention)."
            )
        out.append("What costs CPU per update, and what moved it: bench/README.md (lifecycle).")
        return out + ([smoke.format("tickets and tasks")] if quick else [])

    s.target(
        r,
        "throughput_vs_ceiling",
        "Lifecycle throughput ÷ raw Temporal update ceiling (same server, same run)",
        fmt_pct(get(r, "targets", "throughput_vs_ceiling", "value"), 1),
        f"median of rounds {rounds_text}; ours {fmt_f(ours.get('updates_per_s'), 0)} updates/s "
        f"= {fmt_f(ours.get('lifecycles_per_s'), 0)} lifecycles/s, ceiling "
        f"{fmt_f(ceil.get('updates_per_s'), 0)} updates/s; CPU-cost ratio "
        f"{fmt_pct(ratios.get('ratio_cpu'))}",
        throughput_reasons,
    )

    def events_reasons() -> list[str]:
        tickets = ours.get("tickets") or 1
        outside = (hist.get("events_total", 0) - hist.get("events_in_working_phase", 0)) / tickets
        top = list(hist.get("by_source_all_tickets", {}).items())[:3]
        return [
            f"all-in {fmt_f(hist.get('events_per_lifecycle'))} vs working phase "
            f"{fmt_f(hist.get('events_per_lifecycle_working'))} events per lifecycle: "
            f"{outside:.0f} events per ticket fall outside the working phase (start, "
            f"registrations, validation, finish), spread over only {cfg['tasks_per_ticket']} "
            "lifecycles per ticket.",
            "largest sources per lifecycle: "
            + ", ".join(f"{k} {fmt_f(v.get('per_lifecycle'))}" for k, v in top)
            + ".",
            *([smoke.format("tasks per ticket")] if quick else []),
        ]

    s.target(
        r,
        "events_per_lifecycle",
        "History events per task lifecycle (all-in)",
        fmt_f(get(r, "targets", "events_per_lifecycle", "value")),
        f"working phase {fmt_f(hist.get('events_per_lifecycle_working'))}; ceiling "
        f"{fmt_f(ceil.get('events_per_update'))} events per update",
        events_reasons,
    )

    def both(cell: Callable[[dict[str, Any]], str]) -> list[str]:
        return [cell(ours), cell(ceil)]

    def lat(p: dict[str, Any]) -> str:
        u = p.get("update_latency", {})
        return f"{fmt_f(u.get('p50_ms'), 0)} / {fmt_f(u.get('p95_ms'), 0)} ms"

    def cpu(p: dict[str, Any]) -> str:
        return " / ".join(fmt_f(p.get(f"{x}_cpu_ms_per_update")) for x in ("python", "server"))

    per_lc_working = fmt_f(hist.get("events_per_lifecycle_working"))
    problems = r.get("problems", [])
    s.section += [
        f"{cfg['tickets']} tickets × {cfg['tasks_per_ticket']} tasks × "
        f"{cfg['agents_per_ticket']} agents × {cfg['rounds']} rounds; heartbeats "
        f"{cfg['heartbeats']}.",
        "",
        *md_table(
            "figure | ours | ceiling",
            [
                ["working phase (sum of rounds)", *both(lambda p: fmt_s(p.get("seconds")))],
                ["updates sent", *both(lambda p: str(p.get("updates")))],
                ["updates/s", *both(lambda p: fmt_f(p.get("updates_per_s"), 1))],
                [
                    "task lifecycles/s",
                    fmt_f(ours.get("lifecycles_per_s"), 1),
                    f"{fmt_f(ceil.get('equivalent_lifecycles_per_s'), 1)} (equivalent)",
                ],
                ["update latency p50 / p95", *both(lat)],
                ["CPU ms per update: python / server", *both(cpu)],
                [
                    "history events",
                    f"{fmt_f(hist.get('events_per_lifecycle'))} per lifecycle "
                    f"(working phase {per_lc_working})",
                    f"{fmt_f(ceil.get('events_per_update'))} per update",
                ],
            ],
        ),
        "",
        *md_table(
            "round | order | ours updates/s | ceiling updates/s | ours ÷ ceiling",
            [
                [str(i + 1), rd.get("order", "")]
                + [fmt_f(get(rd, side, "updates_per_s"), 1) for side in ("ours", "ceiling")]
                + [fmt_pct(rd.get("ratio_updates"), 1)]
                for i, rd in enumerate(r.get("rounds", []))
            ],
        ),
        "",
        f"Ratios: median {fmt_pct(ratios.get('ratio_updates'), 1)}, pooled "
        f"{fmt_pct(ratios.get('ratio_updates_pooled'), 1)}, strict (one update per lifecycle) "
        f"{fmt_pct(ratios.get('ratio_strict'), 1)}, CPU-cost "
        f"{fmt_pct(ratios.get('ratio_cpu'), 1)}. "
        f"Tickets completed {ours.get('tickets_completed')}/{ours.get('tickets')}, tasks done "
        f"{ours.get('tasks_done')}/{ours.get('lifecycles')}; problems: {len(problems)}.",
        *(f"* problem: {p}" for p in problems[:10]),
    ]
    one = hist.get("one_ticket", {})

    def per_lc(d: dict[str, Any], label: str = "{}") -> list[list[str]]:
        return [[label.format(k), str(v["count"]), fmt_f(v["per_lifecycle"])] for k, v in d.items()]

    s.section += [
        "",
        f"History of {one.get('workflow_id')}: {one.get('events')} events, {one.get('runs')} "
        f"run(s), {cfg['tasks_per_ticket']} lifecycles; then all tickets.",
        "",
        *md_table(
            "event type (charged to) | events | per lifecycle",
            [
                [f"{k} ({source_of(k)})", str(v["count"]), fmt_f(v["per_lifecycle"])]
                for k, v in one.get("by_type", {}).items()
            ]
            + per_lc(hist.get("by_source_all_tickets", {}), "all tickets, events: {}")
            + per_lc(hist.get("workflow_task_triggers_all_tickets", {}), "workflow tasks for: {}"),
        ),
    ]
    return s


def arguments(p: argparse.ArgumentParser) -> None:
    option(p, "--tickets", 8, "N tickets per round")
    option(p, "--tasks", 100, "M seed tasks per ticket")
    option(p, "--agents", 4, "K agents per ticket")
    option(p, "--rounds", 4, "R interleaved ours/ceiling rounds")
    option(p, "--heartbeats", False, "agents heartbeat at the normal rate (default: off)")
    option(p, "--result-bytes", 200, "size of each task result")
    option(p, "--no-warmup", True, "skip the untimed warm-up round")
    option(p, "--timeout", 900.0, "limit per phase, seconds")


def check(args: argparse.Namespace) -> str | None:
    if not 1 <= args.result_bytes <= 100 * 1024:
        return "--result-bytes must be 1..102400"
    return at_least(args, 1, "tickets", "tasks", "agents", "rounds")


async def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    rounds: list[Round] = []
    async with server(args, console, task_queue=TICKET_QUEUE) as bench:
        client = bench.client
        meter = CpuMeter(bench.server.pid)
        ceiling_worker = Worker(client, task_queue=CEILING_QUEUE, workflows=[CeilingWorkflow])
        result = ("# done\n\n" + "x" * args.result_bytes)[: args.result_bytes]
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        async with ceiling_worker:
            with progress_display(console) as progress:
                tickets = functools.partial(
                    run_tickets, client, result=result, progress=progress, meter=meter,
                    timeout=args.timeout,
                )  # fmt: skip
                ceiling = functools.partial(
                    run_ceiling, client, progress=progress, meter=meter, timeout=args.timeout
                )
                if args.warmup:
                    warm = min(args.tickets, 2)
                    await tickets(
                        prefix=f"{prefix}-warm", tickets=warm, tasks=5, agents=2,
                        heartbeats=False, label="[dim]warm-up",
                    )  # fmt: skip
                    await ceiling(
                        prefix=f"{prefix}-warm", plan=[[5, 5]] * warm, label="[dim]warm-up ceiling"
                    )
                plan: list[list[int]] | None = None
                for r in range(args.rounds):
                    # Odd rounds measure the ceiling first (with the previous round's
                    # per-agent update counts; the per-ticket total is always M + 2K), so
                    # drift in machine load does not always favour the same side.
                    ceiling_first = r % 2 == 1 and plan is not None
                    order = ["ceiling", "ours"] if ceiling_first else ["ours", "ceiling"]
                    ours_run: TicketsRun | None = None
                    ceiling_run: CeilingRun | None = None
                    for side in order:
                        if side == "ours":
                            ours_run = await tickets(
                                prefix=f"{prefix}-r{r}", tickets=args.tickets, tasks=args.tasks,
                                agents=args.agents, heartbeats=args.heartbeats,
                                label=f"round {r + 1} ours",
                            )  # fmt: skip
                            plan = [[a.updates for a in row] for row in ours_run.agents]
                        else:
                            assert plan is not None
                            ceiling_run = await ceiling(
                                prefix=f"{prefix}-r{r}", plan=plan, label=f"round {r + 1} ceiling"
                            )
                    assert ours_run is not None and ceiling_run is not None
                    rounds.append(Round(ours_run, ceiling_run, [], [], order="→".join(order)))
                fetching = progress.add_task("[green]fetch histories", total=len(rounds))
                for rd in rounds:
                    rd.ours_hist = await histories(client, rd.ours.handles, rd.ours.working.window)
                    rd.ceiling_hist = await histories(
                        client, rd.ceiling.handles, rd.ceiling.working.window
                    )
                    progress.advance(fetching)
    return build_report(args, rounds)


BENCH = BenchDef.of(
    globals(),
    "lifecycle",
    "Task-lifecycle throughput and history events per lifecycle",
    quick="--tickets 2 --tasks 20 --agents 2 --rounds 2",
    width=120,
)
parse_args, run, main = BENCH.parse_args, BENCH.run, BENCH.main

if __name__ == "__main__":
    raise SystemExit(main())
