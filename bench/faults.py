"""The fault suite (DESIGN §11): common faults, end to end, on a real server with real agents.

    .venv/bin/python -m bench.faults                  # every fault kind, then the table
    .venv/bin/python -m bench.faults --only dependency_failed,validator_absent
    .venv/bin/python -m bench.faults --healthy 20     # 20 healthy runs: no diagnosis allowed

Each fault is a small ticket whose fleet (``agents/demo_agent.py`` processes started by the
ticket's local-process runtime) is told to fail one way. A run ends when the ticket completes
with a validated result (**healed**), is escalated to a person (**escalated**), or at its
time limit (**not healed**). Prints fault · expected · outcome · time · diagnoses · remedies ·
history events, writes ``bench/RESULTS-faults.md`` and exits 1 when an outcome differs from
the expected one. ``tests/test_faults.py`` runs the short form (``QUICK``) in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from temporalio.client import Client

import starter
from agents import demo_agent
from bench.harness import REPO, BenchDef, environment, option, progress_display, server
from bench.report import Summary, get
from core.state import TicketState
from infra.settings import Settings
from infra.telemetry import core_log_to_file, forward_core_logs
from models.messages import StatusView
from models.spec import parse_spec

OUT = REPO / "bench" / "RESULTS-faults.md"
Outcome = Literal["healed", "escalated", "not healed"]

#: Demo-scaled windows (production: 60 s) so that a fault heals in seconds.
POLICY: dict[str, Any] = {
    "stuck": {"window_s": 3, "cooldown_s": 3},
    "health": {
        "idle_deadline_s": 3,
        "running_deadline_s": 2,
        "restart_cooldown_s": 2,
        "stop_grace_s": 1,
    },
    "validation": {"validator_timeout_s": 6},
    "tasks": {"stall_s": 4},
}
CRITERIA = ["the feature works", "it is tested"]


def agent(name: str, *knobs: str, kind: str = "worker") -> dict[str, Any]:
    """A demo agent process the ticket starts, with fault knobs."""
    command = demo_agent.command("--kind", kind, "--work-seconds", "0.1", "0.3", *knobs)
    return {"name": name, "kind": kind, "runtime": "local-process", "command": command}


def tasks(validation: bool = False) -> list[dict[str, Any]]:
    """Four tasks over three phases; the implementation depends on the design."""
    # fmt: off
    return [
        {"key": "design", "phase": "requirements", "title": "Design the API", "type": "design"},
        {"key": "build", "phase": "implementation", "title": "Build the endpoint",
         "depends_on": ["design"], "validation": validation},
        {"key": "docs", "phase": "implementation", "title": "Write the docs",
         "type": "documentation"},
        {"key": "tests", "phase": "testing", "title": "Test the endpoint", "type": "test",
         "depends_on": ["build"]},
    ]
    # fmt: on


def spec(ticket_id: str, agents: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    return {
        "id": ticket_id,
        "title": "Add the export endpoint",
        "result_criteria": CRITERIA,
        "tasks": tasks(),
        "agents": agents,
        "policy": POLICY,
        **overrides,
    }


VALIDATOR = agent("vera", kind="validator")
SUBMITTER = ("--submit-when-done",)
ONE_RETRY = {**POLICY, "tasks": {**POLICY["tasks"], "max_retries": 1}}


@dataclass(frozen=True)
class Fault:
    kind: str
    what: str
    expected: Outcome
    build: Callable[[str], dict[str, Any]]
    timeout_s: float = 60.0


# fmt: off
FAULTS: tuple[Fault, ...] = (
    Fault("healthy", "no fault: a fleet that submits its result when the work is done", "healed",
          lambda tid: spec(tid, [agent("ada", *SUBMITTER), agent("linus"), VALIDATOR])),
    Fault("missing_result", "every task done, nobody submits the final result", "healed",
          lambda tid: spec(tid, [agent("ada"), agent("linus"), VALIDATOR])),
    Fault("crashed_agent", "an agent is SIGKILLed holding a task (once)", "healed",
          lambda tid: spec(tid, [
              agent("ada", *SUBMITTER),
              agent("grace", "--crash-after-claims", "1", "--crash-only-in-generation", "0"),
              VALIDATOR,
          ])),
    Fault("crash_looping_agent", "an agent crashes on every claim, in every generation", "healed",
          lambda tid: spec(tid, [
              agent("ada", *SUBMITTER), agent("grace", "--crash-after-claims", "1"), VALIDATOR,
          ]), timeout_s=90),
    Fault("dependency_failed", "a task fails for good; the tasks behind it wait on it", "healed",
          lambda tid: spec(tid, [
              agent("ada", "--fail-tasks", "^T2$", "--fail-reason", "SMTP_HOST is not set",
                    *SUBMITTER),
              VALIDATOR,
          ], policy=ONE_RETRY)),
    Fault("environment_error",
          "one missing module fails every implementation task until someone fixes it", "healed",
          lambda tid: spec(tid, [
              agent(name, "--fail-tasks", "Build|Write", "--fail-reason",
                    "ModuleNotFoundError: No module named 'bcrypt'", "--fixed-by",
                    "Fix the environment", *SUBMITTER)
              for name in ("ada", "linus")
          ] + [VALIDATOR], policy=ONE_RETRY), timeout_s=90),
    Fault("validator_absent", "a reviewed task and no validator at all", "escalated",
          lambda tid: spec(tid, [agent("ada", *SUBMITTER)], tasks=tasks(validation=True))),
    Fault("validator_on_demand",
          "a reviewed task; the spec's validator starts only on demand and nobody started it",
          "healed",
          lambda tid: spec(tid, [
              agent("ada", *SUBMITTER), {**agent("vera", kind="validator"), "spawn": "on_demand"},
          ], tasks=tasks(validation=True))),
    Fault("validator_timeout", "the validator takes the review and never answers", "escalated",
          lambda tid: spec(tid, [
              agent("ada", *SUBMITTER), agent("vera", "--never-review", kind="validator"),
          ], tasks=tasks(validation=True))),
    Fault("validation_loop", "the validator rejects every iteration of the reviewed task",
          "escalated",
          lambda tid: spec(tid, [
              agent("ada", *SUBMITTER), agent("vera", "--reject-reviews", kind="validator"),
          ], tasks=tasks(validation=True)), timeout_s=90),
    Fault("premature_completion",
          "a result is submitted before the work is done and never revised by its author",
          "healed",
          lambda tid: spec(tid, [agent("ada", "--submit-early"), agent("linus"), VALIDATOR])),
    Fault("trivial_results",
          "every result, the final one too, is just 'ok' (interrupt and restart do not help)",
          "escalated",
          lambda tid: spec(tid, [agent("ada", "--trivial-results", *SUBMITTER), VALIDATOR]),
          timeout_s=60),
    # 20 accepted (the rate bound), the duplicates cancelled, the agent told
    Fault("task_storm", "an agent tries to create 300 tasks as fast as it can, once, then works",
          "healed",
          lambda tid: spec(tid, [agent("ada", "--storm", "300", *SUBMITTER), VALIDATOR]),
          timeout_s=45),
    # interrupted, then restarted, then a person
    Fault("looping_agent",
          "an agent holds a task and reports the same note every second, in every generation",
          "escalated",
          lambda tid: spec(tid, [agent("ada", "--loop", *SUBMITTER), VALIDATOR],
                           tasks=tasks()[:1]), timeout_s=60),
    Fault("flip_flopping_agent",
          "an agent alternates between two notes on one task (A/B/A/B), never finishing",
          "escalated",
          lambda tid: spec(tid, [agent("ada", "--loop", "--alternate", *SUBMITTER), VALIDATOR],
                           tasks=tasks()[:1]), timeout_s=60),
    # nobody claims for a whole window: the wedged worker is restarted
    Fault("wedged_worker",
          "the only worker heartbeats but never claims (its first process is wedged)", "healed",
          lambda tid: spec(tid, [agent("ada", "--wedged", *SUBMITTER), VALIDATOR]),
          timeout_s=45),
    # a person is told at once: the ticket cannot start a worker
    Fault("no_worker", "a fleet of one validator: nobody can take the work", "escalated",
          lambda tid: spec(tid, [VALIDATOR]), timeout_s=30),
    # interrupted: the task goes back to the queue, the agent works again
    Fault("stalled_agent",
          "an agent hangs on its first task, heartbeats going, until someone takes the task",
          "healed",
          lambda tid: spec(tid, [agent("ada", "--stall", *SUBMITTER), VALIDATOR]),
          timeout_s=45),
    # two faults at once, each healable alone: both must heal, neither may hide the other
    Fault("two_faults",
          "a task fails for good while another agent stalls on the task it holds", "healed",
          lambda tid: spec(tid, [
              agent("ada", "--fail-tasks", "^T2$", "--fail-reason", "SMTP_HOST is not set",
                    *SUBMITTER),
              agent("linus", "--stall"),
              VALIDATOR,
          ], policy=ONE_RETRY), timeout_s=60),
    # a healable fault beside one that needs a person: the crash is healed, a person is told
    Fault("crash_without_validator",
          "an agent is SIGKILLed holding a task (once), and the reviewed task has no validator",
          "escalated",
          lambda tid: spec(tid, [
              agent("ada", *SUBMITTER),
              agent("grace", "--crash-after-claims", "1", "--crash-only-in-generation", "0"),
          ], tasks=tasks(validation=True)), timeout_s=60),
    # two at once, each healable alone: the stall is interrupted, the validator spawned
    Fault("stall_beside_on_demand_validator",
          "an agent stalls on its task, and the reviewed task's validator starts only on demand",
          "healed",
          lambda tid: spec(tid, [
              agent("ada", *SUBMITTER), agent("linus", "--stall"),
              {**agent("vera", kind="validator"), "spawn": "on_demand"},
          ], tasks=tasks(validation=True)), timeout_s=60),
    # two at once: the storm is cut to the bound, the failed task retried by another agent
    Fault("storm_beside_failure",
          "an agent storms 300 tasks once while another's task fails for good", "healed",
          lambda tid: spec(tid, [
              agent("ada", "--storm", "300", *SUBMITTER),
              agent("linus", "--fail-tasks", "^T2$", "--fail-reason", "SMTP_HOST is not set"),
              VALIDATOR,
          ], policy=ONE_RETRY), timeout_s=60),
    # interrupted, restarted, then quarantined (a person told): the other agent heals the rest
    Fault("loop_beside_failure",
          "an agent loops in every generation while another's task fails for good", "healed",
          lambda tid: spec(tid, [
              agent("ada", "--loop"),
              agent("linus", "--fail-tasks", "^T2$", "--fail-reason", "SMTP_HOST is not set",
                    *SUBMITTER),
              VALIDATOR,
          ], policy=ONE_RETRY), timeout_s=60),
)
#: The short form CI runs (tests/test_faults.py): one of each kind of ending.
QUICK = (
    "healthy", "missing_result", "dependency_failed", "validator_absent", "validator_on_demand",
    "looping_agent", "stalled_agent", "task_storm", "wedged_worker", "two_faults",
    "loop_beside_failure",
)
# fmt: on


@dataclass
class FaultRun:
    fault: Fault
    outcome: Outcome
    seconds: float
    diagnoses: int
    remedies: dict[str, int] = field(default_factory=dict)
    timeline: list[str] = field(default_factory=list)
    history_events: int = 0
    signatures: list[str] = field(default_factory=list)

    @property
    def as_expected(self) -> bool:
        if self.fault.kind == "healthy" and self.diagnoses:
            return False  # a healthy run must not be diagnosed at all
        return self.outcome == self.fault.expected


def remedies(state: TicketState) -> dict[str, int]:
    """What the ticket did about it, counted from its timeline and state."""
    kinds = Counter(e.kind for e in state.timeline)
    found = {
        "recovery tasks": sum(1 for t in state.tasks.values() if t.diagnosis_run_id),
        "replaced": kinds["task_replaced"],
        "interrupts": kinds["agent_interrupted"],
        "cancelled": sum(
            1 for t in state.tasks.values() if (t.failure_reason or "").startswith("cancelled by")
        ),
        "restarts": state.restarts_total,
        "quarantined": kinds["agent_quarantined"],
        "escalations": len(state.escalations),
    }
    return {k: v for k, v in found.items() if v}


async def run_fault(
    client: Client, settings: Settings, fault: Fault, *, ticket_id: str | None = None
) -> FaultRun:
    """Launch the fault's ticket on the worker at ``settings`` and wait for its ending."""
    tid = ticket_id or f"fault-{fault.kind.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    launched = await starter.launch_ticket(client, settings, parse_spec(fault.build(tid)))
    handle = client.get_workflow_handle(launched.ticket_id)
    started = time.monotonic()
    outcome: Outcome = "not healed"
    while time.monotonic() - started < fault.timeout_s:
        status = await handle.query("status", result_type=StatusView)
        if status.status == "completed" and status.validated_version is not None:
            outcome = "healed"
            break
        if status.ticket_status == "escalated":
            outcome = "escalated"
            break
        if status.finished_at is not None:
            break
        await asyncio.sleep(0.2)
    seconds = time.monotonic() - started
    state = await handle.query("state", result_type=TicketState)
    if state.status == "open":  # stop its agent processes
        await starter.cancel_ticket(client, settings, tid, f"fault suite: {outcome}", "bench")
    events = len((await handle.fetch_history()).events)
    return FaultRun(
        fault=fault,
        outcome=outcome,
        seconds=seconds,
        diagnoses=len(state.diagnoses),
        remedies=remedies(state),
        history_events=events,
        signatures=[d.hypotheses[0].signature for d in state.diagnoses if d.hypotheses],
        timeline=[
            f"{(e.at - state.created_at).total_seconds():6.1f}s {e.kind}: {e.message[:160]}"
            for e in state.timeline
            if e.kind not in ("heartbeat_missed", "progress")
        ],
    )


def diagnoses_cell(r: dict[str, Any]) -> str:
    signatures = r["signatures"]
    return f"{r['diagnoses']} ({', '.join(signatures)})" if signatures else str(r["diagnoses"])


def remedies_cell(r: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in r["remedies"].items()) or "-"


def markdown_table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| fault | what | expected | outcome | time | diagnoses | remedies | events |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        mark = "" if r["as_expected"] else " ✗"
        lines.append(
            f"| {r['fault']} | {r['what']} | {r['expected']} | {r['outcome']}{mark} "
            f"| {r['seconds']:.1f} s | {diagnoses_cell(r)} | {remedies_cell(r)} "
            f"| {r['history_events']} |"
        )
    h = report["healthy"]
    if h["runs"]:
        why = "; ".join(h["signatures"])
        lines += [
            "",
            f"Healthy runs: {h['runs']}, diagnosed: **{h['diagnosed']}** (target 0)"
            + (f" ({why})" if why else "")
            + f"; time median {h['median_s']:.1f} s, max {h['max_s']:.1f} s.",
        ]
    return lines


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    rows = report["rows"]
    good = sum(r["as_expected"] for r in rows)
    lines = [
        "# The fault suite",
        "",
        f"`python -m bench.faults`: {len(rows)} fault kinds (a healthy control included) end to "
        f"end on a real Temporal dev "
        f"server, agents as real processes (python {env['python']}, temporalio "
        f"{env['temporalio']}, {env['cpus']} cores). **{good} of {len(rows)} ended as "
        "expected.**",
        "",
        *markdown_table(report),
    ]
    return "\n".join(lines) + "\n"


async def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    chosen = [f for f in FAULTS if not args.only or f.kind in args.only.split(",")]
    healthy_fault = next(f for f in FAULTS if f.kind == "healthy")
    runs: list[FaultRun] = []
    healthy: list[FaultRun] = []
    async with server(args, console, task_queue="faults") as bench:
        with progress_display(console) as progress:
            bar = progress.add_task("faults", total=len(chosen) + args.healthy)
            for fault in chosen:
                runs.append(await run_fault(bench.client, bench.settings, fault))
                progress.advance(bar)
            for _ in range(args.healthy):
                healthy.append(await run_fault(bench.client, bench.settings, healthy_fault))
                progress.advance(bar)
    if args.timelines:
        for r in runs:
            if not r.as_expected:
                console.rule(f"{r.fault.kind}: {r.outcome} (expected {r.fault.expected})")
                console.print("\n".join(r.timeline[-120:]), markup=False, highlight=False)
    return build_report(runs, healthy)


def build_report(runs: list[FaultRun], healthy: list[FaultRun]) -> dict[str, Any]:
    """The suite as JSON (bench/out/faults.json; bench/RESULTS.md through bench.run_all)."""
    good = sum(r.as_expected for r in runs)
    diagnosed = [r for r in healthy if r.diagnoses]
    secs = sorted(r.seconds for r in healthy)
    return {
        "config": {"kinds": len(runs), "healthy_runs": len(healthy)},
        "environment": environment(temporal_cli=False),
        "rows": [
            {
                "fault": r.fault.kind,
                "what": r.fault.what,
                "expected": r.fault.expected,
                "outcome": r.outcome,
                "as_expected": r.as_expected,
                "seconds": round(r.seconds, 1),
                "diagnoses": r.diagnoses,
                "signatures": r.signatures,
                "remedies": r.remedies,
                "history_events": r.history_events,
            }
            for r in runs
        ],
        "healthy": {
            "runs": len(healthy),
            "diagnosed": len(diagnosed),
            "signatures": ["; ".join(r.signatures) for r in diagnosed],
            "median_s": secs[len(secs) // 2] if secs else None,
            "max_s": secs[-1] if secs else None,
        },
        "targets": {
            "as_expected": {
                "target": "every fault kind ends as expected (healed or escalated)",
                "value": f"{good} of {len(runs)}",
                "pass": good == len(runs),
            },
            "healthy_diagnosed": {
                "target": "0 diagnoses over the healthy runs",
                "value": len(diagnosed),
                "pass": not diagnosed,
            },
        },
    }


def summarize(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    wrong = [row for row in r["rows"] if not row["as_expected"]]
    s.target(
        r,
        "as_expected",
        "Fault kinds that ended as expected",
        str(get(r, "targets", "as_expected", "value")),
        "healed when recoverable, else escalated to a person",
        lambda: [f"{row['fault']}: {row['outcome']} (expected {row['expected']})" for row in wrong],
    )
    s.target(
        r,
        "healthy_diagnosed",
        "Healthy runs diagnosed (false positives)",
        str(get(r, "targets", "healthy_diagnosed", "value")),
        f"of {get(r, 'healthy', 'runs')} healthy runs",
        lambda: [f"diagnosed: {'; '.join(get(r, 'healthy', 'signatures', default=[]))}"],
    )
    s.section += markdown_table(r)
    return s


def arguments(p: argparse.ArgumentParser) -> None:
    option(p, "--only", "", "comma list of fault kinds")
    option(p, "--healthy", 0, "extra healthy runs (0 diagnoses)")
    option(p, "--markdown", OUT, "the table (full runs only)", type=Path)
    option(p, "--timelines", False, "print the timeline of unexpected outcomes")


def write_markdown(args: argparse.Namespace, report: dict[str, Any], console: Console) -> None:
    if not args.only:
        args.markdown.write_text(markdown(report))
        console.print(f"wrote {args.markdown}")


BENCH = BenchDef.of(
    globals(),
    "faults",
    "The fault suite: every fault kind end to end, and healthy runs",
    quick="--only healthy,missing_result,looping_agent,task_storm --healthy 2",
    full=("--healthy", "20"),
    miss_exits_1=True,
    width=170,
    on_report=write_markdown,
)
parse_args, run = BENCH.parse_args, BENCH.run


def main(argv: list[str] | None = None) -> int:
    forward_core_logs()
    core_log_to_file(REPO / "bench" / "out")
    return BENCH.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
