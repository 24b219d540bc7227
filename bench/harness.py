"""What the benchmark scripts share: a fresh dev server + in-process worker + temp ledger,
the environment and code-fingerprint report, percentiles, Rich helpers, JSON writing."""

from __future__ import annotations

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
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
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

from infra.client import connect
from infra.devserver import DevServer, ensure_server, find_temporal_binary, free_port
from infra.enrollment import JOIN_KEY_ENV
from infra.settings import Settings
from ledger.store import Ledger
from worker import build_worker

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
    worker_kwargs: dict[str, Any] | None = None,
) -> AsyncIterator[Bench]:
    """Start a Temporal dev server on free ports (data in a temp dir, or in ``data_dir``,
    which is then left in place), a temp SQLite ledger and, in this process, the Unstuck
    worker (``build_worker(..., **worker_kwargs)``) on ``task_queue``; stop all on leaving."""
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
                async with build_worker(client, settings, ledger, **(worker_kwargs or {})):
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


# ---- statistics ------------------------------------------------------------------------


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


def verdict(ok: bool) -> str:
    return "[bold green]PASS[/]" if ok else "[bold red]MISS[/]"


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
