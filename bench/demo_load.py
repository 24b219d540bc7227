"""The demo's story under load: N demo runs in a row while busy loops hog every core.

    .venv/bin/python -m bench.demo_load               # 20 runs, one busy loop per core
    .venv/bin/python -m bench.demo_load --runs 3 --hogs 0

Every run must tell the whole story (a crashed agent restarted and its task reassigned, a
failed review, the forgotten result diagnosed and recovered, v1 rejected and v2 validated):
a run that validates a result with a beat missing counts as a failure. Writes a Markdown
table to ``bench/RESULTS-demo-under-load.md`` (``--out``) and exits 1 when a run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

import starter
from bench.harness import REPO, environment, fresh_server, progress_display, temp_dir
from infra.settings import Settings
from infra.telemetry import core_log_to_file, forward_core_logs

OUT = REPO / "bench" / "RESULTS-demo-under-load.md"


def _spin() -> None:
    while True:
        pass


@dataclass
class Run:
    ok: bool
    seconds: float
    missing: list[str] = field(default_factory=list)
    tasks_by_agent: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    reassignment_s: float | None = None
    overshoot_ms: float | None = None


async def one_run(settings: Settings, data_dir: Path) -> Run:
    quiet = Console(file=io.StringIO(), width=200)  # the demo's own live view, discarded
    run_settings = settings.model_copy(
        update={"task_queue": f"demo-load-{uuid.uuid4().hex[:8]}", "data_dir": data_dir}
    )
    outcome = await starter.run_demo(run_settings, quiet)
    f = outcome.figures
    return Run(
        ok=outcome.ok,
        seconds=outcome.seconds,
        missing=outcome.missing_beats,
        tasks_by_agent=dict(f.tasks_by_agent),
        restarts=f.restarts,
        reassignment_s=max(f.reassignments) if f.reassignments else None,
        overshoot_ms=None if f.detection_overshoot_s is None else f.detection_overshoot_s * 1000,
    )


def markdown(runs: list[Run], hogs: int, env: dict[str, object]) -> str:
    ok = sum(r.ok for r in runs)
    secs = [r.seconds for r in runs]
    grace = [r.tasks_by_agent.get("grace", 0) for r in runs]
    lines = [
        "# The demo under load",
        "",
        f"`python -m bench.demo_load --runs {len(runs)} --hogs {hogs}`: {len(runs)} demo runs in "
        f"a row, {hogs} busy loop(s) hogging the CPU ({env['cpus']} cores), python "
        f"{env['python']}, temporalio {env['temporalio']}.",
        "",
        f"**{ok} of {len(runs)} runs told the whole story** (every beat, validated result). "
        f"Time per run: median {statistics.median(secs):.1f} s, max {max(secs):.1f} s. Tasks "
        f"done by *grace* (the agent that polls and crashes after 2 claims): min {min(grace)}, "
        f"median {statistics.median(grace):g}.",
        "",
        "| run | story | time | tasks by agent | restarts | reassignment | overshoot |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        story = "whole" if r.ok else "MISSING: " + "; ".join(r.missing or ["no validated result"])
        by_agent = ", ".join(f"{a} {n}" for a, n in sorted(r.tasks_by_agent.items()))
        reassign = "-" if r.reassignment_s is None else f"{r.reassignment_s:.1f} s"
        over = "-" if r.overshoot_ms is None else f"{r.overshoot_ms:.0f} ms"
        lines.append(
            f"| {i} | {story} | {r.seconds:.1f} s | {by_agent} | {r.restarts} | {reassign} "
            f"| {over} |"
        )
    return "\n".join(lines) + "\n"


async def amain(args: argparse.Namespace) -> int:
    console = Console()
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    runs: list[Run] = []
    try:
        async with fresh_server(console, task_queue="demo-load-unused") as bench:
            with progress_display(console) as progress:
                bar = progress.add_task("demo runs", total=args.runs)
                for _ in range(args.runs):
                    with temp_dir("unstuck-demo-load-") as data:
                        runs.append(await one_run(bench.settings, data))
                    progress.advance(bar)
    finally:
        for hog in hogs:
            hog.kill()
    table = Table(title=f"The demo under load ({args.hogs} busy loops)")
    for column in ("run", "story", "time", "grace's tasks", "restarts"):
        table.add_column(column)
    for i, r in enumerate(runs, 1):
        table.add_row(
            str(i),
            "whole" if r.ok else "[red]" + "; ".join(r.missing or ["not validated"]),
            f"{r.seconds:.1f} s",
            str(r.tasks_by_agent.get("grace", 0)),
            str(r.restarts),
        )
    console.print(table)
    args.out.write_text(markdown(runs, args.hogs, environment(temporal_cli=False)))
    console.print(f"wrote {args.out}")
    return 0 if all(r.ok for r in runs) else 1


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.demo_load", description=__doc__)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--hogs", type=int, default=os.cpu_count() or 2, help="busy loops (one/core)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    forward_core_logs()  # "Query not found" when a ticket finishes mid-query: to a log file
    core_log_to_file(REPO / "bench" / "out")
    started = time.monotonic()
    code = asyncio.run(amain(args))
    print(f"{time.monotonic() - started:.0f} s in all")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
