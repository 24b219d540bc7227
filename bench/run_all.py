"""Every benchmark in one command, and ``bench/RESULTS.md`` from their reports.

    .venv/bin/python -m bench                      # = python -m bench.run_all
    .venv/bin/python -m bench --quick              # smoke run, small sizes (< 3 minutes)
    .venv/bin/python -m bench --only lifecycle,memory

Runs every bench of ``NAMES`` one after the other, each through its ``BENCH``
(``bench.harness.BenchDef``) in a fresh event loop (each starts and stops its own server),
writes each report's JSON (``bench/out/<name>.json``; ``bench/out/quick/`` with ``--quick``)
and then a Markdown summary (``--results``, default ``bench/RESULTS.md``;
``bench/out/RESULTS-quick.md`` with ``--quick``): machine, versions, date, a table of every
figure against its target, one section per bench and, for every missed target, why — all
from each bench's own ``summarize``. A bench that raises is recorded as failed and the
others still run.

Exit code: 1 when a bench failed, or (``--strict``) when a target was missed; else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path
from typing import Any

from bench.harness import (
    BenchDef,
    git_state,
    load_average,
    machine,
    make_console,
    versions,
    write_json,
)
from bench.report import fmt_f, fmt_s, md_table, misses_md, summarize

#: The benches, in the order they run: a module bench/<name>.py with a ``BENCH``.
NAMES = (
    "lifecycle",
    "detection",
    "heartbeat_history",
    "reassignment",
    "liveness",
    "memory",
    "anomaly",
    "hostile",
    "faults",
)
BENCHES: tuple[BenchDef, ...] = tuple(import_module(f"bench.{n}").BENCH for n in NAMES)
BY_NAME = {b.name: b for b in BENCHES}


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
        o.name: summarize(BY_NAME[o.name].summarize if o.name in BY_NAME else None, o.report, quick)
        for o in outcomes
        if o.report is not None
    }
    rows: list[list[str]] = []
    for o in outcomes:
        if o.report is None:
            rows.append([f"{o.name}: bench failed", "—", "—", "**FAILED**", o.error or ""])
            continue
        rows += [
            [r.figure, r.measured, r.target, r.verdict, r.notes] for r in summaries[o.name].rows
        ]
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
    failed = [o for o in outcomes if o.report is None]
    if not failed and not any(s.misses for s in summaries.values()):
        lines += ["Every target was met.", ""]
    for o in failed:
        lines += [f"* **{o.name}** did not run to the end: {o.error}", ""]
    for name, s in summaries.items():
        lines += misses_md(name, s.misses)
    return "\n".join(lines).rstrip() + "\n"


def judged_misses(outcomes: Sequence[Outcome]) -> list[str]:
    """Targets missed (informational ones left out), as ``bench.target``."""
    return [
        f"{o.name}.{key}"
        for o in outcomes
        if o.report is not None and o.name in BY_NAME
        for key in BY_NAME[o.name].missed(o.report)
    ]


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
    """One bench through its BenchDef: run, shown, its JSON written."""
    argv = list(bench.quick) if quick else list(bench.full)
    out = out_dir / f"{bench.name}.json"
    console.rule(f"[bold]{bench.name}[/] {' '.join(argv)}")
    started = time.monotonic()
    try:
        args = bench.parse_args([*argv, "--out", str(out)])
        report: dict[str, Any] = asyncio.run(bench.run(args, console))
        wall = time.monotonic() - started
        report["config"]["wall_seconds"] = round(wall, 1)
        bench.show(console, report, quick)
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
