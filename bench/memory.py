"""Worker memory per open ticket: the Unstuck worker's RSS with 100 and 1,000 tickets open.

    .venv/bin/python -m bench.memory [--counts 100,1000 --step 100 --concurrency 32]

The worker runs as a separate OS process (``python worker.py --no-dev-server …``) so its
memory is measured alone. After a warm-up, tickets of examples/login.yaml (its agents
removed, every deadline a day away) are opened in steps and brought mid-work through
``AgentSession``; after each step the worker's RSS is sampled, and at each of ``--counts``
also PSS/USS, its workflow-cache metrics and a ``status`` query of every ticket. Per open
ticket = (RSS at N − baseline) / N; target ≤ 1 MB at every count. What runs and what each
figure means: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, get_args

from rich.console import Console
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from agent_client.session import AgentSession
from bench.harness import (
    REPO,
    BenchDef,
    at_least,
    code_fingerprint,
    cpu_seconds,
    environment,
    load_average,
    option,
    progress_display,
    server,
    start_ticket,
    until_ready,
)
from bench.report import Summary, fmt_bytes, fmt_f, fmt_pct, get, md_table, num, ratio
from infra.devserver import DevServer, free_port
from infra.settings import Settings
from models.messages import CancelTicket, StatusView
from models.spec import HealthPolicy, ResultType, StuckPolicy, TicketSpec, load_spec

TICKET_QUEUE = "bench-memory"
SPEC_FILE = REPO / "examples" / "login.yaml"

#: Target from the issue: at most 1 MB (10^6 bytes) of worker RSS per open ticket.
TARGET_BYTES = 1_000_000
MB = 1_000_000
#: Health deadlines, stuck window/cooldown and validator timeout: far beyond the run.
OFF_S = 86_400.0
#: Worker CPU allowed while every ticket is open and quiet (% of one core).
IDLE_CPU_PCT = 2.0
#: AgentSession heartbeat interval (only used for the one beat the bench sends).
HEARTBEAT_S = 3_600.0
RESULT_TYPES: tuple[str, ...] = get_args(ResultType)

T = TypeVar("T")


# ---- the worker process and its memory ---------------------------------------------------


def _kb_fields(text: str) -> dict[str, int]:
    """``Name:   123 kB`` lines → {name: bytes}; lines without ``kB`` → the plain number."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        out[name.strip()] = value * 1024 if len(parts) > 1 and parts[1] == "kB" else value
    return out


def proc_status(pid: int) -> dict[str, int]:
    """``/proc/<pid>/status``: VmRSS, VmHWM, RssAnon, RssFile, Threads, … (bytes / count)."""
    return _kb_fields(Path(f"/proc/{pid}/status").read_text())


def smaps_rollup(pid: int) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` in bytes, plus USS = Private_Clean + Private_Dirty."""
    try:
        fields = _kb_fields(Path(f"/proc/{pid}/smaps_rollup").read_text())
    except OSError:
        return {}
    if "Private_Clean" in fields and "Private_Dirty" in fields:
        fields["Uss"] = fields["Private_Clean"] + fields["Private_Dirty"]
    return fields


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text format → {metric name without ``temporal_`` / ``_total``: sum over
    all label sets}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0].removeprefix("temporal_").removesuffix("_total")
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


def worker_cache_limit() -> tuple[int | None, str]:
    """The worker's workflow cache size and where it comes from: the worker process runs with
    every ``UNSTUCK_*`` variable removed, so it is the setting's default."""
    default = Settings.model_fields["max_cached_tickets"].default
    return int(default), "UNSTUCK_MAX_CACHED_TICKETS default"


class WorkerProcess:
    """``python worker.py`` against the bench's server, in its own session; log to a file."""

    def __init__(self, settings: Settings, tmp: Path, *, otel: str) -> None:
        self.settings = settings
        self.log_path = tmp / "worker.log"
        self.metrics_address = f"127.0.0.1:{free_port()}"
        self.otel = otel
        self.command = [
            sys.executable,
            str(REPO / "worker.py"),
            "--no-dev-server",
            "--address",
            settings.temporal_address,
            "--task-queue",
            settings.task_queue,
            "--database-url",
            settings.ledger_url,
            "--data-dir",
            str(settings.data_dir),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("UNSTUCK_")}
        env["UNSTUCK_OTEL_EXPORTER"] = self.otel
        env["UNSTUCK_METRICS_ADDRESS"] = self.metrics_address
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError(
                f"the worker process exited with {self.proc.returncode}:\n" + "\n".join(tail)
            )

    def memory(self) -> dict[str, int]:
        self.check_alive()
        return proc_status(self.pid)

    async def metrics(self) -> dict[str, float]:
        def fetch() -> str:
            url = f"http://{self.metrics_address}/metrics"
            with urllib.request.urlopen(url, timeout=10) as reply:
                body: bytes = reply.read()
            return body.decode()

        try:
            return parse_prometheus(await asyncio.to_thread(fetch))
        except OSError:
            return {}

    async def stop(self, grace: float = 30) -> int | None:
        """SIGTERM (the worker shuts down gracefully), SIGKILL after ``grace`` s."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            deadline = time.monotonic() + wait
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if proc.poll() is not None:
                break
        return proc.returncode


@dataclass
class Sample:
    """The worker's memory after a settle pause: median of several VmRSS readings."""

    open_tickets: int
    rss: int
    rss_min: int
    rss_max: int
    samples: int
    at_s: float  # seconds since the bench started
    status: dict[str, int]
    rollup: dict[str, int] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {
            "open_tickets": self.open_tickets,
            "rss_bytes": self.rss,
            "rss_min_bytes": self.rss_min,
            "rss_max_bytes": self.rss_max,
            "samples": self.samples,
            "at_s": round(self.at_s, 1),
            "rss_anon_bytes": self.status.get("RssAnon"),
            "rss_file_bytes": self.status.get("RssFile"),
            "vm_hwm_bytes": self.status.get("VmHWM"),
            "threads": self.status.get("Threads"),
            **(
                {
                    "pss_bytes": self.rollup.get("Pss"),
                    "pss_anon_bytes": self.rollup.get("Pss_Anon"),
                    "uss_bytes": self.rollup.get("Uss"),
                }
                if self.rollup
                else {}
            ),
        }


async def sample_memory(
    proc: WorkerProcess,
    open_tickets: int,
    settle: float,
    samples: int,
    started: float,
    rollup: bool,
) -> Sample:
    """Median of ``samples`` VmRSS readings 0.25 s apart, after ``settle`` s."""
    await asyncio.sleep(settle)
    readings: list[int] = []
    for k in range(samples):
        if k:
            await asyncio.sleep(0.25)
        readings.append(proc.memory()["VmRSS"])
    return Sample(
        open_tickets=open_tickets,
        rss=int(statistics.median(readings)),
        rss_min=min(readings),
        rss_max=max(readings),
        samples=len(readings),
        at_s=time.monotonic() - started,
        status=proc.memory(),
        rollup=smaps_rollup(proc.pid) if rollup else {},
    )


# ---- the tickets -------------------------------------------------------------------------


def base_spec() -> TicketSpec:
    """examples/login.yaml without its local-process agents, every deadline one day away."""
    spec = load_spec(SPEC_FILE)
    policy = spec.policy.model_copy(
        update={
            "stuck": StuckPolicy(window_s=OFF_S, cooldown_s=OFF_S),
            "health": HealthPolicy(idle_deadline_s=OFF_S, running_deadline_s=OFF_S),
            "validation": spec.policy.validation.model_copy(update={"validator_timeout_s": OFF_S}),
        }
    )
    return spec.model_copy(update={"agents": [], "policy": policy})


@dataclass
class Opened:
    handle: WorkflowHandle[Any, StatusView]
    completed: int = 0
    claimed: int = 0
    updates: int = 0
    error: str | None = None


async def open_ticket(
    client: Client, spec: TicketSpec, token: str, args: argparse.Namespace, result: str
) -> Opened:
    """Start one ticket and bring it to a realistic mid-work state; it stays open."""
    opened = Opened(await start_ticket(client, spec, TICKET_QUEUE, token=token, ready=False))
    try:
        workers = [
            AgentSession(client, spec.id, name=f"worker-{k}", heartbeat_interval_s=HEARTBEAT_S)
            for k in range(args.workers)
        ]
        validator = AgentSession(
            client, spec.id, name="validator", kind="validator", heartbeat_interval_s=HEARTBEAT_S
        )
        everyone = [*workers, validator]
        for agent in everyone:
            await agent.register()
            opened.updates += 1
        first = workers[0]
        task = await first.claim()
        opened.updates += 1
        while task is not None and opened.completed < args.completes:
            rtype: Any = task.type if task.type in RESULT_TYPES else "implementation"
            reply = await first.complete(task.id, result, rtype, claim_next=True)
            opened.updates += 1
            opened.completed += 1
            task = reply.next.task if reply.next is not None else None
        opened.claimed += task is not None
        for w in workers[1:]:
            claimed = await w.claim()
            opened.updates += 1
            if claimed is not None:
                opened.claimed += 1
                await w.progress(claimed.id, "started")
        for agent in everyone:
            await agent.heartbeat()
    except Exception as exc:  # reported; the ticket still counts as open
        opened.error = f"{spec.id}: {type(exc).__name__}: {exc}"
    return opened


async def bounded(
    jobs: Iterable[Callable[[], Awaitable[T]]], limit: int, on_done: Callable[[], None]
) -> list[T]:
    """Run the jobs, at most ``limit`` at a time, in order of the results."""
    sem = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with sem:
            out = await job()
        on_done()
        return out

    return list(await asyncio.gather(*(one(j) for j in jobs)))


async def query_pass(
    handles: Sequence[WorkflowHandle[Any, StatusView]], limit: int
) -> dict[str, Any]:
    """``status`` of every ticket: how many answer ``open``, how long the pass took."""
    statuses: dict[str, int] = {}
    errors: list[str] = []
    done_tasks = 0
    started = time.perf_counter()

    async def one(h: WorkflowHandle[Any, StatusView]) -> None:
        nonlocal done_tasks
        try:
            view: StatusView = await h.query("status", result_type=StatusView)
        except RPCError as exc:
            errors.append(f"{h.id}: {exc}")
            return
        statuses[view.status] = statuses.get(view.status, 0) + 1
        done_tasks += view.counts_by_status.get("done", 0)

    await bounded([functools.partial(one, h) for h in handles], limit, lambda: None)
    return {
        "queried": len(handles),
        "by_status": statuses,
        "open": statuses.get("open", 0),
        "tasks_done": done_tasks,
        "seconds": round(time.perf_counter() - started, 2),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


# ---- run ---------------------------------------------------------------------------------


def _points(counts: list[int], step: int) -> list[int]:
    top = max(counts)
    points = set(counts)
    if step > 0:
        points.update(range(step, top + 1, step))
    return sorted(points)


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs (None with fewer than two distinct xs)."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    num = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    den = sum((x - mx) ** 2 for x in xs)
    return num / den


async def open_tickets(
    client: Client,
    proc: WorkerProcess,
    server: DevServer,
    args: argparse.Namespace,
    console: Console,
    started: float,
) -> dict[str, Any]:
    token = secrets.token_urlsafe(16)
    spec0 = base_spec()
    prefix = f"mem-{uuid.uuid4().hex[:6]}"
    result = ("# done\n\n" + "x" * args.result_bytes)[: args.result_bytes]
    timing: dict[str, float] = {}
    problems: list[str] = []

    def spec_for(name: str) -> TicketSpec:
        return spec0.model_copy(update={"id": f"{prefix}-{name}"})

    def opening(name: str) -> Callable[[], Awaitable[Opened]]:
        return functools.partial(open_ticket, client, spec_for(name), token, args, result)

    with progress_display(console) as progress:
        # The worker process is up once a ticket answers a query.
        t = time.monotonic()
        bar = progress.add_task("[dim]worker process starting", total=1)
        ready = await start_ticket(
            client, spec_for("ready"), TICKET_QUEUE, token=token, ready=False
        )
        try:
            await until_ready(ready, "status", timeout=args.timeout)
        except RPCError:
            proc.check_alive()
            raise
        progress.advance(bar)
        timing["worker_ready_s"] = round(time.monotonic() - t, 2)

        # Warm-up: tickets like the measured ones, then cancelled (they leave the cache).
        t = time.monotonic()
        bar = progress.add_task("[dim]warm-up tickets", total=args.warmup + 1)
        warm = await bounded(
            [opening(f"warm{k}") for k in range(args.warmup)], args.concurrency, lambda: None
        )
        for handle in [ready, *(w.handle for w in warm)]:
            await handle.execute_update(
                "cancel", CancelTicket(reason="bench warm-up over", operator_token=token)
            )
            await handle.result()
            progress.advance(bar)
        problems += [w.error for w in warm if w.error]
        timing["warmup_s"] = round(time.monotonic() - t, 2)
        baseline_metrics = await proc.metrics()
        baseline = await sample_memory(proc, 0, args.settle + 1, args.samples * 2, started, True)

        points = _points(args.counts, args.step)
        opened: list[Opened] = []
        samples: list[Sample] = [baseline]
        at_counts: dict[str, dict[str, Any]] = {}
        bar = progress.add_task(
            f"[cyan]open tickets ({args.concurrency} at a time)", total=points[-1]
        )
        opening_s = 0.0
        cpu0 = cpu_seconds(proc.pid)
        for point in points:
            t = time.monotonic()
            jobs = [opening(f"t{i}") for i in range(len(opened), point)]
            batch = await asyncio.wait_for(
                bounded(jobs, args.concurrency, lambda: progress.advance(bar)), args.timeout
            )
            opening_s += time.monotonic() - t
            opened += batch
            problems += [o.error for o in batch if o.error]
            is_count = point in args.counts
            sample = await sample_memory(proc, point, args.settle, args.samples, started, is_count)
            samples.append(sample)
            if is_count:
                before = await proc.metrics()
                check = await query_pass([o.handle for o in opened], args.concurrency)
                after = await proc.metrics()
                at_counts[str(point)] = {
                    **sample.json(),
                    "sticky_cache_size": _gauge(before, "sticky_cache_size"),
                    # A counter appears once it was first incremented: absent = 0.
                    "forced_evictions": _counter(before, "sticky_cache_total_forced_eviction"),
                    "cache_metrics": {k: v for k, v in before.items() if "sticky" in k},
                    "query_pass": check,
                    "cache_misses_during_query_pass": _delta(before, after, "sticky_cache_miss"),
                    "cache_hits_during_query_pass": _delta(before, after, "sticky_cache_hit"),
                    "rss_after_query_pass_bytes": proc.memory()["VmRSS"],
                    "server_rss_bytes": _server_rss(server),
                }
                if check["open"] != point:
                    problems.append(
                        f"at {point}: {check['open']} of {point} tickets answer 'open' "
                        f"({check['by_status']}, {check['errors']} query errors)"
                    )
        # Idle: every ticket open, nothing happening; the worker should do (almost) nothing.
        bar = progress.add_task(f"[dim]worker idle with {len(opened)} tickets open", total=1)
        cpu_idle0 = cpu_seconds(proc.pid)
        await asyncio.sleep(args.idle)
        idle = {
            "open_tickets": len(opened),
            "seconds": args.idle,
            "cpu_s": round(cpu_seconds(proc.pid) - cpu_idle0, 3),
        }
        progress.advance(bar)
        timing["opening_s"] = round(opening_s, 2)
        timing["tickets_per_s"] = round(points[-1] / opening_s, 1) if opening_s else 0.0
        worker_cpu_opening = cpu_seconds(proc.pid) - cpu0

        # One ticket's size, for scale: its state as JSON and its history length.
        one: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            first = opened[0].handle
            state = await first.query("state")
            one["state_json_bytes"] = len(
                client.data_converter.payload_converter.to_payloads([state])[0].data
            )
            history = await first.fetch_history()
            one["history_events"] = len(history.events)
            one["workflow_id"] = first.id

        t = time.monotonic()
        bar = progress.add_task("[green]terminate tickets", total=len(opened))

        ends = [functools.partial(_terminate, o.handle) for o in opened]
        await bounded(ends, args.concurrency, lambda: progress.advance(bar))
        timing["terminate_s"] = round(time.monotonic() - t, 2)
    return {
        "baseline": baseline,
        "baseline_metrics": baseline_metrics,
        "samples": samples,
        "at_counts": at_counts,
        "opened": opened,
        "timing": timing,
        "worker_cpu_opening_s": round(worker_cpu_opening, 2),
        "one_ticket": one,
        "idle": idle,
        "problems": problems,
    }


async def _terminate(h: WorkflowHandle[Any, Any]) -> None:
    with contextlib.suppress(RPCError):
        await h.terminate("benchmark over")


def _counter(metrics: dict[str, float], name: str) -> int | None:
    """A counter's value; 0 when the endpoint answered without it (never incremented)."""
    if not metrics:
        return None  # no metrics at all: unknown
    return round(metrics.get(name, 0.0))


def _gauge(metrics: dict[str, float], name: str) -> int | None:
    value = metrics.get(name)
    return None if value is None else round(value)


def _delta(before: dict[str, float], after: dict[str, float], name: str) -> int | None:
    a, b = _counter(before, name), _counter(after, name)
    return None if a is None or b is None else b - a


def _server_rss(server: DevServer) -> int | None:
    if server.pid is None:
        return None
    try:
        return proc_status(server.pid).get("VmRSS")
    except OSError:
        return None


# ---- report ------------------------------------------------------------------------------


def build_report(
    args: argparse.Namespace,
    m: dict[str, Any],
    proc: WorkerProcess,
    load_before: list[float],
    wall_s: float,
) -> dict[str, Any]:
    baseline: Sample = m["baseline"]
    samples: list[Sample] = m["samples"]
    at_counts: dict[str, dict[str, Any]] = m["at_counts"]
    opened: list[Opened] = m["opened"]
    limit, limit_source = worker_cache_limit()
    per_ticket: dict[str, dict[str, Any]] = {}
    for key, c in at_counts.items():
        n = c["open_tickets"]

        def per(field_name: str, c: dict[str, Any] = c, n: int = n) -> float | None:
            base = baseline.json().get(field_name)
            now = c.get(field_name)
            if not isinstance(base, int) or not isinstance(now, int) or n == 0:
                return None
            return round((now - base) / n)

        per_ticket[key] = {
            "open_tickets": n,
            "rss_bytes": c["rss_bytes"],
            "delta_rss_bytes": c["rss_bytes"] - baseline.rss,
            "rss_bytes_per_ticket": per("rss_bytes"),
            "pss_bytes_per_ticket": per("pss_bytes"),
            "uss_bytes_per_ticket": per("uss_bytes"),
            "rss_anon_bytes_per_ticket": per("rss_anon_bytes"),
        }
    counts = sorted(args.counts)
    marginal: dict[str, float] = {}
    for a, b in itertools.pairwise(counts):
        ra, rb = at_counts[str(a)]["rss_bytes"], at_counts[str(b)]["rss_bytes"]
        marginal[f"{a}->{b}"] = round((rb - ra) / (b - a))
    slope = _slope([float(s.open_tickets) for s in samples], [float(s.rss) for s in samples])
    targets = {
        f"rss_per_open_ticket_at_{key}": {
            "target": "<= 1 MB",
            "value": round(v["rss_bytes_per_ticket"] / MB, 4)
            if v["rss_bytes_per_ticket"] is not None
            else None,
            "pass": v["rss_bytes_per_ticket"] is not None
            and v["rss_bytes_per_ticket"] <= TARGET_BYTES,
        }
        for key, v in per_ticket.items()
    }
    idle = m["idle"]
    idle_pct = round(100 * idle["cpu_s"] / idle["seconds"], 2)
    targets[f"idle_cpu_at_{idle['open_tickets']}"] = {
        "target": f"<= {IDLE_CPU_PCT:g} % of a core",
        "value": idle_pct,
        "pass": idle_pct <= IDLE_CPU_PCT,
    }
    top = str(counts[-1])
    resident = at_counts[top].get("sticky_cache_size")
    return {
        "config": {
            "counts": counts,
            "step": args.step,
            "concurrency": args.concurrency,
            "workers_per_ticket": args.workers,
            "validators_per_ticket": 1,
            "completes_per_ticket": args.completes,
            "result_bytes": args.result_bytes,
            "warmup_tickets": args.warmup,
            "settle_s": args.settle,
            "samples": args.samples,
            "otel_exporter": args.otel,
            "spec": str(SPEC_FILE.relative_to(REPO)),
            "seed_tasks_per_ticket": len(base_spec().tasks),
            "deadlines_s": OFF_S,
            "worker_command": " ".join(proc.command[1:]),
            "workflow_cache_limit": limit,
            "workflow_cache_limit_source": limit_source,
            "wall_seconds": round(wall_s, 1),
        },
        "environment": {**environment(), "load_average_at_start": load_before},
        "code": code_fingerprint(["workflows/ticket.py", "worker.py"]),
        "baseline": baseline.json(),
        "steps": [s.json() for s in samples],
        "at_counts": at_counts,
        "figures": {
            "baseline_rss_bytes": baseline.rss,
            "per_open_ticket": per_ticket,
            "marginal_rss_bytes_per_ticket": marginal,
            "slope_rss_bytes_per_ticket": round(slope) if slope is not None else None,
            "peak_rss_bytes": max((s.status.get("VmHWM", 0) for s in samples), default=None),
            "resident_at_max_count": resident,
            "all_resident": resident is not None
            and int(resident) >= counts[-1]
            and not at_counts[top].get("forced_evictions"),
        },
        "one_ticket": m["one_ticket"],
        "idle": {**idle, "cpu_pct_of_core": idle_pct},
        "tickets": {
            "opened": len(opened),
            "with_errors": sum(1 for o in opened if o.error),
            "updates": sum(o.updates for o in opened),
            "tasks_completed": sum(o.completed for o in opened),
            "tasks_held": sum(o.claimed for o in opened),
        },
        "timing": {**m["timing"], "worker_cpu_opening_s": m["worker_cpu_opening_s"]},
        "problems": m["problems"],
        "targets": targets,
    }


def summarize(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    cfg, fig = r["config"], r["figures"]
    per = fig.get("per_open_ticket", {})
    one = r.get("one_ticket", {})
    marginal = fig.get("marginal_rss_bytes_per_ticket", {})
    for key, v in per.items():
        c = get(r, "at_counts", key, default={})

        def reasons(v: dict[str, Any] = v, c: dict[str, Any] = c) -> list[str]:
            return [
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
                        "per-ticket figure: part of the growth is one-off (bench/README.md)."
                    ]
                    if marginal
                    and num(v.get("rss_bytes_per_ticket"))
                    and min(marginal.values()) < 0.8 * v["rss_bytes_per_ticket"]
                    else []
                ),
            ]

        s.target(
            r,
            f"rss_per_open_ticket_at_{key}",
            f"Worker memory per open ticket, {v.get('open_tickets')} open",
            fmt_bytes(v.get("rss_bytes_per_ticket")),
            f"RSS {fmt_bytes(v.get('rss_bytes'))} vs baseline "
            f"{fmt_bytes(fig.get('baseline_rss_bytes'))}; PSS "
            f"{fmt_bytes(v.get('pss_bytes_per_ticket'))} / USS "
            f"{fmt_bytes(v.get('uss_bytes_per_ticket'))} per ticket; {c.get('sticky_cache_size')} "
            f"cached; {fmt_pct(ratio(v.get('rss_bytes_per_ticket'), 1_000_000))} of the target",
            reasons,
        )
    idle = r.get("idle", {})
    s.target(
        r,
        f"idle_cpu_at_{idle.get('open_tickets')}",
        f"Worker CPU while {idle.get('open_tickets')} tickets stay open and quiet",
        f"{fmt_f(idle.get('cpu_pct_of_core'), 2)} % of a core",
        f"{fmt_f(idle.get('cpu_s'), 2)} s of CPU in {fmt_f(idle.get('seconds'), 0)} s",
        lambda: [
            f"the worker used {fmt_f(idle.get('cpu_s'), 2)} s of CPU in "
            f"{fmt_f(idle.get('seconds'), 0)} s with every ticket open and no timer due: "
            "something polls or wakes per open ticket"
        ],
    )
    for span, x in marginal.items():
        s.info(
            f"Worker memory, marginal per ticket {span.replace('->', '→')}",
            fmt_bytes(x),
            f"slope over all steps {fmt_bytes(fig.get('slope_rss_bytes_per_ticket'))}",
        )
    rows = [
        [
            key,
            *(fmt_bytes(c.get(f"{k}_bytes")) for k in ("rss", "pss", "uss")),
            str(c.get("sticky_cache_size")),
            str(c.get("forced_evictions")),
            f"{get(c, 'query_pass', 'open')}/{get(c, 'query_pass', 'queried')} open in "
            f"{fmt_f(get(c, 'query_pass', 'seconds'), 1)} s, "
            f"{c.get('cache_hits_during_query_pass')} hits / "
            f"{c.get('cache_misses_during_query_pass')} misses",
            fmt_bytes(c.get("server_rss_bytes")),
        ]
        for key, c in r.get("at_counts", {}).items()
    ]
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
            "open tickets | RSS | PSS | USS | cached | forced evictions | "
            "status query of every ticket | server RSS",
            rows,
        ),
        "",
        f"RSS (MB) by open tickets: {steps}.",
        "",
        f"All open tickets resident in the cache: {'yes' if fig.get('all_resident') else 'no'} "
        "([README](README.md#benchmemory-worker-memory-per-open-ticket)).",
        "",
        f"One ticket: state {fmt_bytes(one.get('state_json_bytes'))} as JSON, "
        f"{one.get('history_events')} history events. Worker ready in "
        f"{tm.get('worker_ready_s')} s, warm-up {tm.get('warmup_s')} s, opening "
        f"{tm.get('opening_s')} s ({tm.get('tickets_per_s')} tickets/s, worker CPU "
        f"{tm.get('worker_cpu_opening_s')} s), terminating {tm.get('terminate_s')} s; load "
        f"average {get(r, 'environment', 'load_average_at_start')} → "
        f"{get(r, 'environment', 'load_average_at_end')}; problems: {len(r.get('problems', []))}.",
        *(f"* problem: {x}" for x in r.get("problems", [])[:10]),
    ]
    return s


def _counts(text: str) -> list[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("counts must be positive")
    return values


def arguments(p: argparse.ArgumentParser) -> None:
    option(p, "--counts", [100, 1000], "open-ticket counts judged against the target", type=_counts)
    option(p, "--step", 100, "also sample RSS every this many tickets")
    option(p, "--concurrency", 32, "tickets being opened at a time")
    option(p, "--workers", 2, "worker agents per ticket")
    option(p, "--completes", 3, "tasks worker 0 completes per ticket")
    option(p, "--result-bytes", 1000, "size of each result")
    option(p, "--warmup", 5, "warm-up tickets")
    option(p, "--settle", 2.0, "pause before sampling RSS, seconds")
    option(p, "--samples", 6, "RSS readings per step")
    option(p, "--otel", "file", "the worker's UNSTUCK_OTEL_EXPORTER", choices=["file", "none"])
    option(p, "--idle", 30.0, "seconds the worker's CPU is read with every ticket open and quiet")
    option(p, "--timeout", 600.0, "limit per step, seconds")


def check(args: argparse.Namespace) -> str | None:
    if args.idle <= 0:
        return "--idle must be > 0"
    if not 1 <= args.result_bytes <= 100 * 1024:
        return "--result-bytes must be 1..102400"
    return at_least(args, 1, "workers", "concurrency", "samples") or at_least(
        args, 0, "step", "completes", "warmup"
    )


async def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """The dev server, and the worker as its own process (not this one: measured alone)."""
    started = time.monotonic()
    load_before = load_average()
    async with server(args, console, task_queue=TICKET_QUEUE, worker=False) as bench:
        proc = WorkerProcess(bench.settings, bench.data_dir, otel=args.otel)
        try:
            proc.start()
            console.log(f"worker process pid {proc.pid} (log: {proc.log_path})")
            m = await open_tickets(bench.client, proc, bench.server, args, console, started)
        finally:
            code = await proc.stop()
            if code not in (None, 0):
                console.log(f"[yellow]worker process exited with {code}[/]")
    return build_report(args, m, proc, load_before, time.monotonic() - started)


BENCH = BenchDef.of(
    globals(),
    "memory",
    "Worker memory per open ticket",
    quick="--counts 20,100 --step 0 --warmup 2 --idle 10",
)
parse_args, run, main = BENCH.parse_args, BENCH.run, BENCH.main

if __name__ == "__main__":
    raise SystemExit(main())
