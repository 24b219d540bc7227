"""Chaos-test kit: the worker as a real OS process, agents that ride out outages, and the
cross-check of the ledger against the workflows and against what the agents were told.

* :class:`WorkerProcess` runs ``worker.py`` in its own process group; ``kill()`` SIGKILLs the
  group (a crash), ``wait_polling()`` waits until the server sees the new process poll.
* :class:`DurableSession` is an :class:`AgentSession` (which sends an update again, with the
  same request id = Temporal update id, when it fails for a transient reason: server away,
  RPC deadline) that counts its calls in flight and the retries. Temporal and the ticket's
  reply cache de-duplicate by that id, so a call is applied at most once, and the agent
  learns its outcome even when the first reply was lost.
* :class:`TicketRun` drives one ticket with two worker agents and a validator: claim,
  complete, discover tasks, review iterations (some fail), then submit the final result until
  a version is validated. Every reply the ticket accepted is written down in a
  :class:`TicketRecord`.
* :func:`agreement_problems` compares a finished ticket's ``state`` query, its ledger rows
  and its record: nothing lost, nothing duplicated, the same contents and verdicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel
from temporalio.api.enums.v1 import (
    EventType,
    PendingActivityState,
    PendingWorkflowTaskState,
    TaskQueueKind,
    TaskQueueType,
    WorkflowTaskFailedCause,
)
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError

from agent_client.session import TRANSIENT, AgentSession
from core.state import TicketState
from infra.enrollment import JOIN_KEY_ENV
from infra.settings import Settings
from ledger.store import Ledger
from models.messages import TaskView
from models.spec import AgentKind
from tests.ticketkit import Launched, launch

REPO = Path(__file__).resolve().parent.parent

R = TypeVar("R", bound=BaseModel)


#: Workflow-task failures that are part of normal operation, not bugs: the server refused a
#: completion because new events (an update, a signal) arrived meanwhile, or reset stickiness.
BENIGN_WFT_FAILURES = frozenset(
    {
        WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND,
        WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_STICKY_TASK_QUEUE,
    }
)

#: Relaxed health and stuck windows: these tests are about durability, so no agent may be
#: declared unresponsive and no diagnosis may start while the worker or the server is away.
QUIET_POLICY: dict[str, Any] = {
    "health": {"idle_deadline_s": 86_400, "running_deadline_s": 86_400},
    "stuck": {"window_s": 86_400, "cooldown_s": 86_400},
}

#: Seed tasks over the three default phases, with dependencies and validation.
SEED_TASKS: list[dict[str, Any]] = [
    {"key": "req-a", "phase": "requirements", "title": "Write the login requirements"},
    {"key": "req-b", "phase": "requirements", "title": "Threat model", "validation": True},
    {
        "key": "impl-a",
        "phase": "implementation",
        "title": "Login form",
        "depends_on": ["req-a"],
    },
    {
        "key": "impl-b",
        "phase": "implementation",
        "title": "Password hashing",
        "depends_on": ["req-a", "req-b"],
        "validation": True,
    },
    {
        "key": "test-a",
        "phase": "testing",
        "title": "Login tests",
        "depends_on": ["impl-a", "impl-b"],
    },
    {"key": "test-b", "phase": "testing", "title": "Hashing tests", "depends_on": ["impl-b"]},
]
PHASES = ("requirements", "implementation", "testing")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- the worker as an OS process ---------------------------------------------------------


class WorkerProcess:
    """``worker.py`` as a separate OS process in its own process group (session)."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        #: When the current process was started (wall clock, as the server's timestamps).
        self.started_at = datetime.now(UTC)
        self.starts = 0
        self.kills = 0

    def command(self) -> list[str]:
        s = self.settings
        return [
            sys.executable,
            str(REPO / "worker.py"),
            "--no-dev-server",
            "--address", s.temporal_address,
            "--namespace", s.namespace,
            "--task-queue", s.task_queue,
            "--database-url", s.ledger_url,
            "--data-dir", str(s.data_dir),
        ]  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> int:
        assert not self.alive, "the previous worker process is still running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("UNSTUCK_")}
        env.update(
            UNSTUCK_OTEL_EXPORTER="none",
            UNSTUCK_START_DEV_SERVER="false",
            UNSTUCK_HOST_ID=self.settings.host_id,
        )
        if JOIN_KEY_ENV in os.environ:  # the key tickets are launched with in this process
            env[JOIN_KEY_ENV] = os.environ[JOIN_KEY_ENV]
        self.starts += 1
        self.started_at = datetime.now(UTC)
        with self.log_path.open("ab") as log:
            log.write(f"---- worker start {self.starts} ----\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(),
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would, and reap the process."""
        proc = self.proc
        assert proc is not None
        if proc.poll() is not None:
            raise AssertionError(
                f"the worker (pid {proc.pid}) had exited by itself with {proc.returncode} "
                f"before it was killed:\n{self.tail()}"
            )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self.kills += 1

    async def stop(self, grace: float = 15) -> None:
        """SIGTERM (a clean shutdown), SIGKILL after ``grace`` s; nothing when not running."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    async def wait_polling(self, client: Client, timeout: float = 60) -> float:
        """Wait until the server lists this process among the workflow-task pollers of its
        task queue; returns the seconds since the call."""
        proc = self.proc
        assert proc is not None
        identity = f"{proc.pid}@"
        request = DescribeTaskQueueRequest(
            namespace=self.settings.namespace,
            task_queue=TaskQueue(
                name=self.settings.task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL
            ),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
        start = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"the worker (pid {proc.pid}) exited with {proc.returncode} while "
                    f"starting:\n{self.tail()}"
                )
            try:
                described = await client.workflow_service.describe_task_queue(
                    request, timeout=timedelta(seconds=5)
                )
            except RPCError as exc:
                if exc.status not in TRANSIENT:
                    raise
            else:
                if any(p.identity.startswith(identity) for p in described.pollers):
                    return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(
                    f"the worker (pid {proc.pid}) did not poll {self.settings.task_queue} "
                    f"within {timeout:.0f} s:\n{self.tail()}"
                )
            await asyncio.sleep(0.1)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no worker log)"
        return "\n".join(text.strip().splitlines()[-lines:])


# ---- agents that ride out outages --------------------------------------------------------


@dataclass
class Traffic:
    """Agent calls in flight right now, and the transient failures that were retried."""

    in_flight: int = 0
    retried: Counter[str] = field(default_factory=Counter)


class DurableSession(AgentSession):
    """An agent session that counts its calls in flight and the outages it rode out.

    Updates are resent by :class:`AgentSession` itself (same request id = Temporal update
    id, so applied at most once, and the agent still learns the first application's reply):
    this class only counts them. Signals, which AgentSession sends once, are resent here
    too; a signal resent after an ambiguous failure may arrive twice (tests that count
    heartbeats turn them off).
    """

    def __init__(
        self,
        client: Client,
        ticket_id: str,
        *,
        traffic: Traffic,
        retry_window_s: float = 240,
        **kwargs: Any,
    ) -> None:
        super().__init__(client, ticket_id, retry_window_s=retry_window_s, **kwargs)
        self.traffic = traffic

    async def _update(self, name: str, msg: BaseModel, result_type: type[R]) -> R:
        self.traffic.in_flight += 1
        try:
            return await super()._update(name, msg, result_type)
        finally:
            self.traffic.in_flight -= 1

    def on_retry(self, update: str, kind: str, detail: str) -> None:
        self.traffic.retried[kind] += 1
        super().on_retry(update, kind, detail)

    async def _signal(self, name: str, msg: BaseModel) -> None:
        deadline = time.monotonic() + self.retry_window_s
        delay = 0.1
        self.traffic.in_flight += 1
        try:
            while True:
                try:
                    return await AgentSession._signal(self, name, msg)
                except RPCError as exc:
                    if exc.status not in TRANSIENT:
                        raise
                    self.traffic.retried[exc.status.name] += 1
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"{self.name} on {self.ticket_id}: {name} kept failing for "
                            f"{self.retry_window_s:.0f} s (last: {exc.status.name})"
                        ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        finally:
            self.traffic.in_flight -= 1


# ---- what the agents were told -----------------------------------------------------------


@dataclass
class TicketRecord:
    """Every reply a ticket accepted, as its agents received them."""

    ticket_id: str
    seeds: int
    created: list[str] = field(default_factory=list)
    #: (task id, attempt, iteration, sha256 of the result sent)
    completes: list[tuple[str, int, int, str]] = field(default_factory=list)
    #: (task id, iteration, passed, validator id)
    task_reviews: list[tuple[str, int, bool, str]] = field(default_factory=list)
    #: (version, sha256 of the content sent, agent id)
    versions: list[tuple[int, str, str]] = field(default_factory=list)
    #: (version, passed, validator id)
    result_reviews: list[tuple[int, bool, str]] = field(default_factory=list)
    heartbeats: Counter[str] = field(default_factory=Counter)
    #: When each accepted reply arrived (time.monotonic()).
    accepted_at: list[float] = field(default_factory=list)

    def accepted(self) -> None:
        self.accepted_at.append(time.monotonic())

    @property
    def tasks(self) -> int:
        return self.seeds + len(self.created)

    def done_tasks(self) -> set[str]:
        """Tasks done as far as the replies tell: completed (no validation) or passed review."""
        done = {t for t, _, it, _ in self.completes if it == 0}
        done |= {t for t, _, passed, _ in self.task_reviews if passed}
        return done

    def all_done(self) -> bool:
        return len(self.done_tasks()) == self.tasks


# ---- driving one ticket ------------------------------------------------------------------

WORK_S = (0.05, 0.4)
IDLE_S = 0.4


@dataclass
class WorkerAgent:
    """A worker agent's loop state; it outlives its session (a new client can take over)."""

    session: DurableSession
    held: TaskView | None = None


class TicketRun:
    """One ticket driven to a validated result by two worker agents and a validator."""

    def __init__(
        self,
        launched: Launched,
        *,
        rng: random.Random,
        traffic: Traffic,
        max_tasks: int,
        heartbeats: bool = True,
    ) -> None:
        self.launched = launched
        self.ticket_id = launched.ticket_id
        self.first_run_id = launched.handle.first_execution_run_id
        self.rng = rng
        self.traffic = traffic
        self.max_tasks = max_tasks
        self.heartbeats = heartbeats
        self.record = TicketRecord(self.ticket_id, seeds=len(SEED_TASKS))
        self.workers: list[WorkerAgent] = []
        self.validator: WorkerAgent | None = None
        #: Set: stop discovering tasks, finish what is there, submit the final result.
        self.finale = asyncio.Event()
        #: Set: agents leave their loops after their current call (a hand-over to new sessions).
        self.pause = asyncio.Event()
        self.finished = False
        self.error: BaseException | None = None

    @classmethod
    async def start(
        cls,
        client: Client,
        settings: Settings,
        ticket_id: str,
        *,
        rng: random.Random,
        traffic: Traffic,
        max_tasks: int,
        task_timeout: timedelta | None = None,
        continue_as_new_after_events: int | None = None,
        heartbeats: bool = True,
    ) -> TicketRun:
        spec = {
            "id": ticket_id,
            "title": "Build login system (chaos)",
            "result_criteria": ["every task done", "the result names every phase"],
            "tasks": SEED_TASKS,
            "policy": QUIET_POLICY,
        }
        launched = await launch(
            client,
            settings,
            spec,
            task_timeout=task_timeout,
            continue_as_new_after_events=continue_as_new_after_events,
        )
        return cls(launched, rng=rng, traffic=traffic, max_tasks=max_tasks, heartbeats=heartbeats)

    def session(self, client: Client, name: str, kind: AgentKind = "worker") -> DurableSession:
        return DurableSession(client, self.ticket_id, name=name, kind=kind, traffic=self.traffic)

    async def register(self, client: Client) -> None:
        for i in range(2):
            s = self.session(client, f"worker-{i}")
            await s.register()
            self.workers.append(WorkerAgent(s))
        v = self.session(client, "vera", "validator")
        await v.register()
        self.validator = WorkerAgent(v)

    def take_over(self, client: Client) -> None:
        """New sessions on ``client`` for the same agents (ids and tokens), loop state kept."""
        for agent in [*self.workers, *([self.validator] if self.validator else [])]:
            old = agent.session
            assert old.agent_id is not None and old._token is not None
            new = self.session(client, old.name, old.kind)
            new.resume(old.agent_id, old._token)
            new._seq = old._seq
            agent.session = new

    # ---- the loops -------------------------------------------------------------------

    async def work(self, agent: WorkerAgent) -> None:
        """Claim and complete; discover tasks until the finale; stop when all is done."""
        rec, rng = self.record, self.rng
        while not self.pause.is_set():
            s = agent.session
            if agent.held is None:
                agent.held = await s.claim()
            task = agent.held
            if task is not None:
                await asyncio.sleep(rng.uniform(*WORK_S))
                content = (
                    f"# {task.title}\n\n{self.ticket_id} {task.id} attempt {task.attempt} "
                    f"by {s.agent_id}: {rng.getrandbits(64):016x}\n"
                )
                reply = await s.complete(task.id, content, "implementation")
                agent.held = None
                rec.completes.append(
                    (task.id, reply.task.attempt, reply.task.iteration, sha256(content))
                )
                rec.accepted()
                if self.heartbeats:
                    await s.heartbeat()
                    assert s.agent_id is not None
                    rec.heartbeats[s.agent_id] += 1
                continue
            if self.finale.is_set():
                if rec.all_done():
                    return
            elif rec.tasks < self.max_tasks:
                await self.discover(s)
                continue
            else:
                # Nothing left to discover: wait for the finale (or rework after a review).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.finale.wait(), 4 * IDLE_S)
                continue
            await asyncio.sleep(IDLE_S)

    async def discover(self, s: DurableSession) -> None:
        rec, rng = self.record, self.rng
        depends = [rng.choice(rec.created)] if rec.created and rng.random() < 0.5 else []
        validation = rng.random() < 0.3
        view = await s.create_task(
            rng.choice(PHASES),
            # Unique: two agents discovering at once must not name the same work alike.
            f"Discovered {len(rec.created) + 1}-{rng.randrange(10**9)}",
            depends_on=depends,
            validation=validation,
        )
        rec.created.append(view.id)
        rec.accepted()

    async def review(self) -> None:
        """The validator: review every task iteration (fail some first iterations)."""
        agent = self.validator
        assert agent is not None
        rec, rng = self.record, self.rng
        while not self.pause.is_set():
            s = agent.session
            if agent.held is None:
                agent.held = await s.claim()
            task = agent.held
            if task is None:
                if self.finale.is_set() and rec.all_done():
                    return
                await asyncio.sleep(IDLE_S)
                continue
            await asyncio.sleep(rng.uniform(*WORK_S))
            passed = task.iteration > 1 or rng.random() < 0.6
            feedback = "" if passed else f"iteration {task.iteration}: cover the error paths"
            view = await s.review_task(task.id, task.iteration, passed, feedback)
            agent.held = None
            assert s.agent_id is not None
            rec.task_reviews.append((task.id, view.iteration, passed, s.agent_id))
            rec.accepted()

    async def submit_until_validated(self) -> None:
        """The final result: v1 may be rejected; the next version is validated."""
        assert self.validator is not None
        rec, rng = self.record, self.rng
        while True:
            submitter = self.workers[len(rec.versions) % len(self.workers)].session
            content = (
                f"# Login system\n\nv{len(rec.versions) + 1} of {self.ticket_id}: "
                f"{rec.tasks} tasks over {', '.join(PHASES)}.\n"
            )
            reply = await submitter.submit_result(content)
            assert submitter.agent_id is not None
            rec.versions.append((reply.version, sha256(content), submitter.agent_id))
            rec.accepted()
            v = self.validator.session
            passed = reply.version > 1 or rng.random() < 0.5
            feedback = "" if passed else "name the tests that cover each phase"
            await v.review_result(reply.version, passed, feedback)
            assert v.agent_id is not None
            rec.result_reviews.append((reply.version, passed, v.agent_id))
            rec.accepted()
            if passed:
                return

    async def run_agents(self) -> bool:
        """The agents' loops until done or paused; True when every task is done."""
        await asyncio.gather(self.review(), *(self.work(w) for w in self.workers))
        return self.record.all_done() and self.finale.is_set()

    async def drive(self) -> None:
        """Run the agents to the end: every task done, a validated result, ticket completed."""
        try:
            if not await self.run_agents():
                return  # paused: someone else continues
            await self.finish()
        except BaseException as exc:
            self.error = exc
            raise

    async def finish(self) -> None:
        await self.submit_until_validated()
        await self.launched.handle.result()
        self.finished = True


# ---- what was in flight when the worker died ----------------------------------------------


@dataclass
class KillRecord:
    number: int
    at_s: float
    open_tickets: int
    calls_in_flight: int
    workflow_tasks_started: int = 0
    activities_started: int = 0
    restart_s: float = 0.0


async def started_on_dead_worker(
    client: Client, ticket_ids: list[str], worker: WorkerProcess
) -> tuple[int, int]:
    """(workflow tasks, activities) the worker just killed was running: after the kill and
    before the restart, STARTED since that process started (workflow tasks) or last started
    by it (activities)."""
    assert worker.pid is not None
    identity = f"{worker.pid}@"
    since = worker.started_at

    async def one(ticket_id: str) -> tuple[int, int]:
        try:
            d = await client.get_workflow_handle(ticket_id).describe(
                rpc_timeout=timedelta(seconds=5)
            )
        except RPCError:
            return 0, 0
        raw = d.raw_description
        wft = raw.pending_workflow_task
        w = int(
            raw.HasField("pending_workflow_task")
            and wft.state == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_STARTED
            and wft.started_time.ToDatetime(tzinfo=UTC) >= since
        )
        a = sum(
            1
            for p in raw.pending_activities
            if p.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            and p.last_worker_identity.startswith(identity)
        )
        return w, a

    counts = await asyncio.gather(*(one(t) for t in ticket_ids))
    return sum(w for w, _ in counts), sum(a for _, a in counts)


# ---- the cross-check ---------------------------------------------------------------------


def agreement_problems(
    state: TicketState, ledger: Ledger, rec: TicketRecord, *, check_heartbeats: bool = True
) -> list[str]:
    """Everything on which the workflow's state, the ledger and the agents' record disagree.

    Checked: the ticket completed with an empty outbox and no ledger error; its tasks are
    exactly the seeds plus the tasks the agents were told they created, each once and done;
    every task result, task review, result version and result verdict is in all three,
    exactly once, with the same content hash, attempt, iteration, verdict and author; no
    diagnosis, escalation or restart happened that the ledger does not hold (or vice versa).
    """
    t = rec.ticket_id
    problems: list[str] = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"{t}: {what}")

    expect(state.status == "completed", f"status is {state.status}, not completed")
    expect(state.outbox.is_empty(), f"ledger outbox not empty: {state.outbox.size} row(s)")
    errors = [e.message for e in state.timeline if e.kind == "ledger_error"]
    expect(not errors, f"ledger errors: {errors}")

    # Tasks: the seeds and the created ones, each exactly once, all done.
    seeds = [x for x in state.tasks.values() if x.created_by == "spec"]
    expect(
        sorted(x.key or "" for x in seeds) == sorted(s["key"] for s in SEED_TASKS),
        f"seed tasks {sorted(x.key or '' for x in seeds)}",
    )
    created = sorted(x.id for x in state.tasks.values() if x.created_by != "spec")
    expect(
        created == sorted(rec.created) and len(set(rec.created)) == len(rec.created),
        f"created tasks: workflow {created}, agents were told {sorted(rec.created)}",
    )
    not_done = {x.id: x.status for x in state.tasks.values() if x.status != "done"}
    expect(not not_done, f"tasks not done: {not_done}")
    expect(
        rec.done_tasks() == set(state.tasks),
        f"done per replies {sorted(rec.done_tasks())} != workflow tasks {sorted(state.tasks)}",
    )

    # Task results: workflow state -> expected (task, attempt, iteration, verification).
    want_results: dict[tuple[str, int, int], str] = {}
    for task in state.tasks.values():
        if task.validation:
            for review in task.reviews:
                verdict = "verified" if review.passed else "disputed"
                want_results[(task.id, task.attempt, review.iteration)] = verdict
            reviewed = [r.iteration for r in task.reviews]
            expect(
                reviewed == list(range(1, task.iteration + 1)),
                f"{task.id} iterations {task.iteration}, reviews {reviewed}",
            )
        elif task.status == "done":
            want_results[(task.id, task.attempt, 0)] = "unverified"
    told = Counter((task_id, a, i) for task_id, a, i, _ in rec.completes)
    dupes = {k: n for k, n in told.items() if n > 1}
    expect(not dupes, f"completes accepted twice: {dupes}")
    expect(
        set(told) == set(want_results),
        f"task results: agents {sorted(set(told) - set(want_results))} not in workflow, "
        f"workflow {sorted(set(want_results) - set(told))} not told to agents",
    )
    last_sha = {task_id: sha for task_id, _, _, sha in rec.completes}
    for task in state.tasks.values():
        expect(task.attempt == 1, f"{task.id} was claimed {task.attempt} times")
        expect(
            task.result_sha256 == last_sha.get(task.id),
            f"{task.id} result hash in workflow differs from the last result sent",
        )
    sent_sha = {(task_id, a, i): sha for task_id, a, i, sha in rec.completes}
    rows = ledger.task_results(t)
    by_key = Counter((r.task_id, r.attempt, r.iteration) for r in rows)
    expect(
        all(n == 1 for n in by_key.values()),
        f"duplicate task result rows: {[k for k, n in by_key.items() if n > 1]}",
    )
    expect(
        set(by_key) == set(want_results),
        f"task result rows: missing {sorted(set(want_results) - set(by_key))}, "
        f"unexpected {sorted(set(by_key) - set(want_results))}",
    )
    for row in rows:
        key = (row.task_id, row.attempt, row.iteration)
        expect(sha256(row.content) == sent_sha.get(key), f"ledger content of {row.id} differs")
        expect(
            row.verification == want_results.get(key),
            f"{row.id} is {row.verification}, the workflow says {want_results.get(key)}",
        )
        owner = state.tasks[row.task_id].assigned_agent if row.task_id in state.tasks else None
        expect(row.agent_id == owner, f"{row.id} by {row.agent_id}, the task is {owner}'s")

    # Task reviews.
    wf_reviews = sorted(
        (task.id, r.iteration, r.passed, r.validator_id)
        for task in state.tasks.values()
        for r in task.reviews
    )
    expect(
        wf_reviews == sorted(rec.task_reviews),
        f"task reviews: workflow {wf_reviews}, agents {sorted(rec.task_reviews)}",
    )
    ledger_reviews = sorted(
        (r.subject_id, r.iteration, r.passed, r.validator_id)
        for r in ledger.reviews(t, subject_kind="task")
    )
    expect(wf_reviews == ledger_reviews, f"task reviews: ledger {ledger_reviews}")

    # Final-result versions and their verdicts.
    wf_versions = [(v.version, v.sha256, v.agent_id) for v in state.results]
    expect(wf_versions == rec.versions, f"versions: workflow {wf_versions}, agents {rec.versions}")
    ledger_versions = [
        (v.version, v.content_sha256, v.agent_id) for v in ledger.workflow_results(t)
    ]
    expect(wf_versions == ledger_versions, f"versions: ledger {ledger_versions}")
    for v in ledger.workflow_results(t):
        expect(
            v.content is not None and sha256(v.content) == v.content_sha256,
            f"ledger content of v{v.version} does not match its hash",
        )
    wf_verdicts = [
        (v.version, v.status == "validated", v.validator_id or "")
        for v in state.results
        if v.status != "pending_validation"
    ]
    expect(
        wf_verdicts == rec.result_reviews,
        f"result verdicts: workflow {wf_verdicts}, agents {rec.result_reviews}",
    )
    ledger_verdicts = sorted(
        (int(r.subject_id), r.passed, r.validator_id)
        for r in ledger.reviews(t, subject_kind="result")
    )
    expect(wf_verdicts == ledger_verdicts, f"result verdicts: ledger {ledger_verdicts}")

    # Nothing else happened, or the ledger holds exactly what did.
    expect(
        sorted(d.run_id for d in state.diagnoses)
        == sorted(r.id for r in ledger.diagnostic_runs(t)),
        "diagnostic runs differ",
    )
    expect(
        sorted(e.id for e in state.escalations) == sorted(e.id for e in ledger.escalations(t)),
        "escalations differ",
    )
    expect(
        not state.diagnoses and not state.escalations and state.restarts_total == 0,
        f"unexpected self-healing: {len(state.diagnoses)} diagnoses, "
        f"{len(state.escalations)} escalations, {state.restarts_total} restarts",
    )
    expect(not ledger.restart_events(t), "restart events in the ledger")

    # The timeline agrees too: one claim per task, one completion event per result.
    if state.timeline_dropped == 0:
        claims = Counter(e.task_id for e in state.timeline if e.kind == "task_claimed")
        expect(
            all(n == 1 for n in claims.values()) and set(claims) == set(state.tasks),
            f"claims per task {dict(claims)}",
        )
        completions = Counter(
            e.task_id for e in state.timeline if e.kind in ("task_done", "task_under_review")
        )
        expect(
            completions == Counter(task_id for task_id, _, _, _ in rec.completes),
            f"completion events per task {dict(completions)}",
        )

    if check_heartbeats:
        beats = {a.id: a.heartbeats for a in state.agents.values() if a.heartbeats}
        sent = dict(rec.heartbeats)
        expect(beats == sent, f"heartbeats: workflow {beats}, sent {sent}")
        gaps = {
            a.id: (a.seq_gaps, a.out_of_order)
            for a in state.agents.values()
            if a.seq_gaps or a.out_of_order
        }
        expect(not gaps, f"heartbeat sequence gaps / out of order: {gaps}")
    return problems


# ---- histories ---------------------------------------------------------------------------


@dataclass
class HistoryFacts:
    events: int = 0
    runs: int = 1
    wft_timeouts: int = 0
    wft_failures: Counter[str] = field(default_factory=Counter)
    activity_timeouts: int = 0
    activity_attempts_max: int = 1


async def history_facts(client: Client, ticket_id: str, first_run_id: str | None) -> HistoryFacts:
    """Figures over every run of a ticket (following continue-as-new from the first run)."""
    facts = HistoryFacts(runs=0)
    run_id = first_run_id
    while True:
        facts.runs += 1
        next_run = ""
        handle = client.get_workflow_handle(ticket_id, run_id=run_id)
        async for event in handle.fetch_history_events():
            facts.events += 1
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT:
                facts.wft_timeouts += 1
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                cause = event.workflow_task_failed_event_attributes.cause
                facts.wft_failures[WorkflowTaskFailedCause.Name(cause)] += 1
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
                facts.activity_timeouts += 1
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                facts.activity_attempts_max = max(
                    facts.activity_attempts_max,
                    event.activity_task_started_event_attributes.attempt,
                )
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                next_run = (
                    event.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                )
        if not next_run or run_id is None:
            return facts
        run_id = next_run


def bad_wft_failures(facts: HistoryFacts) -> dict[str, int]:
    benign = {WorkflowTaskFailedCause.Name(c) for c in BENIGN_WFT_FAILURES}
    return {k: n for k, n in facts.wft_failures.items() if k not in benign}


# ---- reporting a stuck ticket --------------------------------------------------------------


async def stuck_report(client: Client, runs: list[TicketRun]) -> str:
    """What every unfinished ticket looks like: its record, description and status."""
    lines: list[str] = []
    for run in runs:
        if run.finished:
            continue
        rec = run.record
        line = (
            f"{run.ticket_id}: tasks {rec.tasks} (done per replies {len(rec.done_tasks())}), "
            f"completes {len(rec.completes)}, reviews {len(rec.task_reviews)}, versions "
            f"{rec.versions}, finale {run.finale.is_set()}, error {run.error!r}"
        )
        try:
            d = await client.get_workflow_handle(run.ticket_id).describe(
                rpc_timeout=timedelta(seconds=5)
            )
            raw = d.raw_description
            line += (
                f"; workflow {d.status.name if d.status else '?'}, history {d.history_length}, "
                f"pending wft {raw.pending_workflow_task.state if raw.HasField('pending_workflow_task') else '-'} "  # noqa: E501
                f"attempt {raw.pending_workflow_task.attempt if raw.HasField('pending_workflow_task') else '-'}, "  # noqa: E501
                f"pending activities {[(p.activity_type.name, p.state, p.attempt) for p in raw.pending_activities]}"  # noqa: E501
            )
            if d.status == WorkflowExecutionStatus.RUNNING:
                status = await run.launched.handle.query("status", rpc_timeout=timedelta(seconds=5))
                line += f"; status {status}"
        except Exception as exc:  # a report must not fail on the way
            line += f"; (describe/query failed: {exc})"
        lines.append(line)
    return "\n".join(lines) or "(every ticket finished)"
