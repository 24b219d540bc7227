"""What a bench reports and how it is shown: its figures (a value, its target, PASS/MISS and,
for a miss, why), the tables and text of its section, the number formats; rendered as
Markdown for bench/RESULTS.md and, through Rich, on the terminal.

A bench's ``summarize(report, quick) -> Summary`` reads its own JSON report (the dict its
``measure`` returned) and declares its figures with ``Summary.target`` (one of the report's
``targets``) and ``Summary.info`` (a figure without a target), and its section as Markdown
lines. The same summary is printed after the run and rendered into RESULTS.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markdown import Markdown

# ---- reading a report, formatting numbers ------------------------------------------------


def get(d: Any, *keys: str | int, default: Any = None) -> Any:
    """d[k1][k2]…, or ``default`` when any step is missing."""
    for k in keys:
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError):
            return default
    return default if d is None else d


def num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_s(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f} s" if num(x) else "—"


def fmt_ms(x: Any) -> str:
    """Seconds shown as ms."""
    return f"{x * 1000:.0f} ms" if num(x) else "—"


def fmt_pct(x: Any, digits: int = 0) -> str:
    return f"{x * 100:.{digits}f} %" if num(x) else "—"


def fmt_x(x: Any) -> str:
    return f"{x:g}×" if num(x) else "—"


def fmt_f(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if num(x) else "—"


def fmt_bytes(x: Any) -> str:
    if not num(x):
        return "—"
    if abs(x) >= 1_000_000:
        return f"{x / 1_000_000:.1f} MB"
    return f"{x / 1000:.0f} kB"


def ratio(a: Any, b: Any) -> float | None:
    return a / b if num(a) and num(b) and b else None


def pcells(
    d: dict[str, Any], keys: Sequence[str] = ("p50", "p99", "max"), digits: int = 3
) -> list[str]:
    """Percentile cells of a ``harness.summary`` dict (seconds), then n."""
    return [*(fmt_s(d.get(k), digits) for k in keys), str(d.get("n", 0))]


def md_table(header: str | Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table; ``header`` may be one string, its cells split at ``" | "``."""

    def cell(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    if isinstance(header, str):
        header = header.split(" | ")

    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out


# ---- figures -------------------------------------------------------------------------------


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


def verdict(target: dict[str, Any] | None) -> str:
    if not target:
        return "—"
    return "PASS" if target.get("pass") else "**MISS**"


@dataclass
class Summary:
    """A bench's figures (rows of the summary table), its section and its misses."""

    rows: list[Row] = field(default_factory=list)
    section: list[str] = field(default_factory=list)  # Markdown lines
    misses: list[Miss] = field(default_factory=list)
    handled: set[str] = field(default_factory=set)  # target keys covered by rows

    def target(
        self,
        report: dict[str, Any],
        key: str,
        figure: str,
        measured: str,
        notes: str,
        reasons: Callable[[], list[str]],
        *,
        informational: bool = False,
    ) -> None:
        """A row for ``report["targets"][key]``; a Miss with its reasons when it failed."""
        tg = get(report, "targets", key)
        self.handled.add(key)
        if not tg:
            return
        self.rows.append(Row(figure, measured, str(tg.get("target", "")), verdict(tg), notes))
        if not tg.get("pass"):
            self.misses.append(
                Miss(figure, measured, str(tg.get("target", "")), reasons(), informational)
            )

    def info(self, figure: str, measured: str, notes: str = "") -> None:
        """A figure reported without a target."""
        self.rows.append(Row(figure, measured, "—", "info", notes))

    def table(self) -> list[str]:
        return md_table(
            ["figure", "measured", "target", "", "ratio / notes"],
            [[r.figure, r.measured, r.target, r.verdict, r.notes] for r in self.rows],
        )


Summarizer = Callable[[dict[str, Any], bool], Summary]


def summarize(fn: Summarizer | None, report: dict[str, Any], quick: bool) -> Summary:
    """The bench's own summary, plus a generic row (and miss) for any target it does not
    cover; a summary that cannot read the report still lists the targets."""
    try:
        s = fn(report, quick) if fn is not None else Summary()
    except Exception as exc:  # a report of an unexpected shape: fall back to the targets
        s = Summary(section=[f"_(could not summarise this report: {type(exc).__name__}: {exc})_"])
    for key, tg in (report.get("targets") or {}).items():
        if key in s.handled or not tg:
            continue
        value = tg.get("value")
        measured = fmt_f(value, 4) if num(value) else str(value)
        s.rows.append(Row(key, measured, str(tg.get("target", "")), verdict(tg)))
        if not tg.get("pass"):
            s.misses.append(
                Miss(key, measured, str(tg.get("target", "")), ["(no specific analysis)"])
            )
    return s


def misses_md(name: str, misses: Sequence[Miss]) -> list[str]:
    lines: list[str] = []
    for miss in misses:
        tag = " (informational)" if miss.informational else ""
        lines.append(
            f"* **{name} — {miss.figure}**{tag}: measured {miss.measured}, target {miss.target}."
        )
        lines += [f"  * {reason}" for reason in miss.reasons]
        lines.append("")
    return lines


def show(console: Console, name: str, s: Summary) -> None:
    """The summary on the terminal: figures, section, misses with their reasons."""
    text = [*s.table(), "", *s.section, "", *misses_md(name, s.misses)]
    console.print(Markdown("\n".join(text)))


# ---- shared reasons: the parts of a timer's life, the CPU while measuring -----------------

PART_NAMES = {
    "arm_lag_s": "arming lag (the timer starts when the arming workflow task completes)",
    "timer_late_s": "server timer lateness",
    "pickup_s": "worker pick-up (TimerFired → WorkflowTaskStarted)",
}

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


def parts_reason(parts: dict[str, Any], stat: str) -> list[str]:
    """Which part of a timer's life dominates at ``stat`` (p99 / max), in words, and why."""
    values = {k: get(parts, k, stat) for k in PART_NAMES}
    known = {k: v for k, v in values.items() if num(v)}
    if not known:
        return ["no history breakdown in the report."]
    top = max(known, key=lambda k: known[k])
    listed = ", ".join(f"{PART_NAMES[k].split(' (')[0]} {fmt_ms(v)}" for k, v in known.items())
    return [
        f"at {stat} the parts are: {listed}; **{PART_NAMES[top]}** dominates.",
        PART_EXPLANATION[top],
    ]


def cpu_reason(report: dict[str, Any]) -> list[str]:
    """The cores busy while measuring (``harness.CpuMeter``), as one sentence, if known."""
    cpu = get(report, "environment", "cpu_during_measurement")
    if not cpu:
        return []
    text = (
        f"cores busy while measuring ({cpu.get('cpus')} cpus): this process "
        f"{fmt_f(cpu.get('cores_this_process'))}, dev server {fmt_f(cpu.get('cores_dev_server'))}, "
        f"other processes {fmt_f(cpu.get('cores_other_processes'))}"
    )
    lag = cpu.get("event_loop_lag_s") or {}
    if lag.get("n"):
        text += f"; event-loop lag p99 {fmt_ms(lag.get('p99'))}, max {fmt_ms(lag.get('max'))}"
    return [text + "."]
