"""Time from the start of an agent's loop to the ``anomaly`` diagnosis (DESIGN §12).

    .venv/bin/python -m bench.anomaly                      # windows 2 s and 5 s, 8 runs each
    .venv/bin/python -m bench.anomaly --windows 3 --runs 20

Each run: one ticket, one agent that claims its task and sends the same note every
``--every`` s (0.25 s: the spell's timer is then armed well over the server's 1 s minimum
timer ahead); ticket time from the first note to the ``anomaly`` event, target window + 1 s.
What runs and why: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from rich.console import Console
from temporalio.client import Client

import starter
from agent_client.session import AgentSession
from bench.harness import BenchDef, environment, option, percentiles, server
from bench.report import Summary, fmt_s, get, md_table, num
from core.state import TicketState
from infra.settings import Settings
from models.spec import AnomalyPolicy, parse_spec

TARGET_SLACK_S = 1.0
#: The Temporal server fires no timer sooner than this after it was created
#: (``history.timerProcessorMaxTimeShift``).
SERVER_MIN_TIMER_S = 1.0
REPEATS = AnomalyPolicy().repeats
NOTE = "checking the build again"


async def one_run(
    client: Client, settings: Settings, window: float, every: float, timeout: float
) -> dict[str, Any]:
    """One looping agent on one ticket: the loop's start and the anomaly, ticket time."""
    tid = f"anomaly-{uuid.uuid4().hex[:8]}"
    spec = parse_spec(
        {
            "id": tid,
            "title": "A loop",
            "result_criteria": ["it works"],
            "tasks": [{"key": "a", "phase": "implementation", "title": "Make it work"}],
            "policy": {
                "anomaly": {"window_s": window},
                "stuck": {"window_s": 600, "cooldown_s": 600},
            },
        }
    )
    launched = await starter.launch_ticket(client, settings, spec)
    handle = client.get_workflow_handle(launched.ticket_id)
    started = time.monotonic()
    detected = False
    async with AgentSession(client, launched.ticket_id, name="looper") as agent:
        task = await agent.claim()
        assert task is not None, agent.last_claim_reason
        while time.monotonic() - started < timeout:
            if agent.interrupted(task.id):
                detected = True
                break
            await agent.progress(task.id, NOTE)
            await asyncio.sleep(every)
            await agent.refresh_inbox()
    state = await handle.query("state", result_type=TicketState)
    await starter.cancel_ticket(client, settings, tid, "bench done", "bench")
    notes = [e.at for e in state.timeline if e.kind == "progress" and e.message == NOTE]
    anomaly = next((e.at for e in state.timeline if e.kind == "anomaly"), None)
    latency = (anomaly - notes[0]).total_seconds() if anomaly is not None and notes else None
    # The spell begins (back-dated to the first note) when the REPEATS-th note arrives: the
    # ticket then arms its timer for first note + window, this far ahead.
    on = (notes[REPEATS - 1] - notes[0]).total_seconds() if len(notes) >= REPEATS else None
    return {
        "ticket_id": tid,
        "window_s": window,
        "detected": detected and latency is not None,
        "latency_s": None if latency is None else round(latency, 4),
        "overshoot_s": None if latency is None else round(latency - window, 4),
        "notes_before": sum(1 for at in notes if anomaly is None or at <= anomaly),
        "signal_on_s": None if on is None else round(on, 4),
        "armed_ahead_s": None if on is None else round(window - on, 4),
        "signature": next(
            (d.hypotheses[0].signature for d in state.diagnoses if d.hypotheses), None
        ),
    }


async def looping_agents(
    client: Client, settings: Settings, args: argparse.Namespace, console: Console
) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    gate = asyncio.Semaphore(args.concurrency)

    async def gated(window: float) -> dict[str, Any]:
        async with gate:
            return await one_run(client, settings, window, args.every, args.timeout)

    for window in args.windows:
        console.log(f"window {window:g} s: {args.runs} looping agents")
        runs += await asyncio.gather(*(gated(window) for _ in range(args.runs)))
    return runs


def build_report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_window: dict[str, Any] = {}
    worst: float | None = None
    missed = [r for r in runs if not r["detected"]]
    for window in args.windows:
        mine = [r for r in runs if r["window_s"] == window and r["latency_s"] is not None]
        lat = [r["latency_s"] for r in mine]
        over = [r["overshoot_s"] for r in mine]
        p50, p90, p99, top = percentiles(lat, (0.5, 0.9, 0.99, 1.0)) if lat else [None] * 4
        o50, o99, omax = percentiles(over, (0.5, 0.99, 1.0)) if over else [None] * 3
        by_window[f"{window:g}"] = {
            "n": len(mine),
            "latency_s": {"p50": p50, "p90": p90, "p99": p99, "max": top},
            "overshoot_s": {"p50": o50, "p99": o99, "max": omax},
            "signatures": sorted({str(r["signature"]) for r in mine}),
        }
        if omax is not None:
            worst = omax if worst is None else max(worst, omax)
    return {
        "config": {
            "windows_s": args.windows,
            "runs_per_window": args.runs,
            "concurrency": args.concurrency,
            "note_every_s": args.every,
        },
        "environment": environment(temporal_cli=False),
        "by_window": by_window,
        "runs": runs,
        "not_detected": len(missed),
        "targets": {
            "overshoot_max": {
                "target": f"<= {TARGET_SLACK_S:g} s (loop start to anomaly <= window + 1 s)",
                "value": None if worst is None else round(worst, 4),
                "pass": worst is not None and worst <= TARGET_SLACK_S and not missed,
            }
        },
    }


def summarize(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    cfg = r["config"]

    def reasons() -> list[str]:
        out = [
            f"window {w} s: max {fmt_s(get(row, 'latency_s', 'max'))}"
            for w, row in r["by_window"].items()
        ]
        ahead = [x.get("armed_ahead_s") for x in r.get("runs", [])]
        short = [a for a in ahead if num(a) and a < SERVER_MIN_TIMER_S]
        if short:
            out.append(
                f"{len(short)} run(s) armed the window's timer under {SERVER_MIN_TIMER_S:g} s "
                "ahead: the server fires it no sooner than 1 s after it was created."
            )
        if r.get("not_detected"):
            out.append(f"{r['not_detected']} looping agent(s) were never diagnosed.")
        return out

    s.target(
        r,
        "overshoot_max",
        "Loop start → anomaly diagnosis, minus the window (worst run)",
        fmt_s(get(r, "targets", "overshoot_max", "value")),
        f"{cfg.get('runs_per_window')} looping agents per window, a note every "
        f"{cfg.get('note_every_s')} s; not detected: {r.get('not_detected')}",
        reasons,
    )
    rows = [
        [
            f"{w} s",
            str(row["n"]),
            *(fmt_s(get(row, "latency_s", k)) for k in ("p50", "p90", "max")),
            fmt_s(get(row, "overshoot_s", "max")),
            ", ".join(row.get("signatures", [])),
        ]
        for w, row in r["by_window"].items()
    ]
    s.section += [
        "First note → `anomaly`, ticket time ([README](README.md#benchanomaly-looping-agent-to-"
        "anomaly-diagnosis)).",
        "",
        *md_table(["window", "n", "p50", "p90", "max", "max − window", "signature"], rows),
    ]
    return s


def arguments(p: argparse.ArgumentParser) -> None:
    option(p, "--windows", "2,5", "anomaly windows to measure, seconds")
    option(p, "--runs", 8, "looping agents per window")
    option(p, "--concurrency", 4, "runs in flight at a time")
    option(p, "--every", 0.25, "seconds between two notes")
    option(p, "--timeout", 60.0, "per run, seconds")


def check(args: argparse.Namespace) -> str | None:
    args.windows = [float(w) for w in str(args.windows).split(",") if w.strip()]
    if not args.windows or min(args.windows) <= 0 or args.runs < 1:
        return "--windows must be positive seconds and --runs at least 1"
    if min(args.windows) - (REPEATS - 1) * args.every < SERVER_MIN_TIMER_S:
        return (
            f"--every: the {REPEATS}th note must come at least {SERVER_MIN_TIMER_S:g} s before "
            "the window ends (the server's minimum timer), or the bench measures that minimum"
        )
    return None


async def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    async with server(args, console) as bench:
        runs = await looping_agents(bench.client, bench.settings, args, console)
    return build_report(args, runs)


BENCH = BenchDef.of(
    globals(),
    "anomaly",
    "Loop start → anomaly diagnosis, against the anomaly window",
    quick="--windows 2 --runs 3",
    miss_exits_1=True,
)
parse_args, run, main = BENCH.parse_args, BENCH.run, BENCH.main

if __name__ == "__main__":
    raise SystemExit(main())
