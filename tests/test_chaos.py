"""Chaos tests with real processes: the worker SIGKILLed again and again, the dev server
killed and restarted from its database file. Every ticket must finish, and the ledger, the
workflows and what the agents were told must agree: no task, result or review lost or
duplicated.

Reproduce a run with ``UNSTUCK_CHAOS_SEED=<seed>`` (printed, and recorded as the junit
property ``chaos_seed``); scale the worker kills with ``UNSTUCK_CHAOS_KILLS`` (default 20).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.service import RPCError

from agent_client.session import TRANSIENT, AgentSession
from core.state import TicketState
from infra.client import connect
from infra.devserver import DevServer, DevServerError, ensure_server
from infra.settings import Settings
from ledger.store import Ledger
from tests.chaoskit import (
    KillRecord,
    TicketRun,
    Traffic,
    WorkerProcess,
    agreement_problems,
    bad_wft_failures,
    history_facts,
    started_on_dead_worker,
    stuck_report,
)
from tests.conftest import two_free_ports, unique_id
from tests.ticketkit import Launched, launch, spec_dict

pytestmark = pytest.mark.chaos

#: Worker kills in the first test (the issue asks for at least 20).
KILLS = int(os.environ.get("UNSTUCK_CHAOS_KILLS", "20"))
TICKETS = 8
#: Tasks per ticket: the 6 seeds plus tasks the agents discover while the chaos goes on.
MAX_TASKS = 14
#: Workflow task timeout of the chaos tickets: how long a workflow task that was running on a
#: killed worker waits before another worker gets it (the server default is 10 s).
WFT_TIMEOUT = timedelta(seconds=4)
#: After the new worker polls, the next kill comes this many seconds later; the worker stays
#: down this long before it is started again.
KILL_AFTER_S = (0.2, 2.5)
DOWN_S = (0.1, 1.0)
#: History length at which half the tickets continue as new.
CONTINUE_AS_NEW_AFTER = 250
#: Bounds on waiting (generous: CI is a loaded 2-core machine).
FINISH_TIMEOUT_S = 300.0


def chaos_seed(record_property: Callable[[str, object], None]) -> int:
    raw = os.environ.get("UNSTUCK_CHAOS_SEED")
    seed = int(raw) if raw else random.SystemRandom().randrange(2**32)
    record_property("chaos_seed", seed)
    print(f"\nchaos seed {seed} (reproduce with UNSTUCK_CHAOS_SEED={seed})")
    return seed


async def finish_all(
    client: Client, runs: list[TicketRun], drivers: list[asyncio.Task[None]], seed: int
) -> None:
    """Wait (bounded) for every ticket's driver; fail naming every ticket that is stuck."""
    _, pending = await asyncio.wait(drivers, timeout=FINISH_TIMEOUT_S)
    failed = [d for d in drivers if d.done() and not d.cancelled() and d.exception()]
    if pending or failed:
        report = await stuck_report(client, runs)
        for d in pending:
            d.cancel()
        if failed:
            raise AssertionError(f"seed {seed}: a ticket's agents failed\n{report}") from (
                failed[0].exception()
            )
        pytest.fail(
            f"seed {seed}: {len(pending)} ticket(s) did not finish within "
            f"{FINISH_TIMEOUT_S:.0f} s:\n{report}"
        )


async def cancel_all(tasks: Sequence[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def cross_check(
    client: Client, runs: list[TicketRun], ledger: Ledger, *, check_heartbeats: bool
) -> tuple[list[str], dict[str, int]]:
    """Every ticket's agreement problems, and history figures summed over the tickets."""
    problems: list[str] = []
    totals: Counter[str] = Counter()
    for run in runs:
        state = await run.launched.state()
        problems += agreement_problems(state, ledger, run.record, check_heartbeats=check_heartbeats)
        facts = await history_facts(client, run.ticket_id, run.first_run_id)
        bad = bad_wft_failures(facts)
        if bad:
            problems.append(f"{run.ticket_id}: workflow task failures {bad}")
        totals["events"] += facts.events
        totals["workflow task timeouts"] += facts.wft_timeouts
        for cause, n in facts.wft_failures.items():  # the benign ones; others are problems
            short = cause.removeprefix("WORKFLOW_TASK_FAILED_CAUSE_")
            totals[f"workflow task failures {short}"] += n
        totals["activity timeouts"] += facts.activity_timeouts
        totals["max activity attempt"] = max(
            totals["max activity attempt"], facts.activity_attempts_max
        )
        totals["runs"] += facts.runs
        totals["tasks"] += run.record.tasks
        totals["task results"] += len(run.record.completes)
        totals["task reviews"] += len(run.record.task_reviews)
        totals["result versions"] += len(run.record.versions)
    return problems, dict(totals)


# ---- 1. the worker, SIGKILLed at random moments ------------------------------------------


async def test_worker_sigkilled_at_random_moments_loses_and_duplicates_nothing(
    client: Client,
    settings: Settings,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    seed = chaos_seed(record_property)
    rng = random.Random(seed)
    started = time.monotonic()
    chaos_settings = settings.model_copy(
        update={
            "task_queue": unique_id("chaos"),  # the session's in-process worker stays out
            "database_url": f"sqlite:///{tmp_path / 'ledger.db'}",
            "data_dir": tmp_path / "worker",
        }
    )
    worker = WorkerProcess(chaos_settings, tmp_path / "worker.log")
    traffic = Traffic()
    drivers: list[asyncio.Task[None]] = []
    try:
        worker.start()
        await worker.wait_polling(client)
        runs = [
            await TicketRun.start(
                client,
                chaos_settings,
                unique_id(f"chaos{i}"),
                rng=random.Random(rng.getrandbits(64)),
                traffic=traffic,
                max_tasks=MAX_TASKS,
                task_timeout=WFT_TIMEOUT,
                # Half continue as new (often, under the kills), carrying state and outbox.
                continue_as_new_after_events=CONTINUE_AS_NEW_AFTER if i % 4 in (1, 2) else None,
            )
            for i in range(TICKETS)
        ]
        await asyncio.gather(*(run.register(client) for run in runs))
        # Half the tickets submit their result while the kills go on, the others after.
        finale_at = [
            rng.randint(KILLS // 3, 2 * KILLS // 3) if i % 2 == 0 else KILLS for i in range(TICKETS)
        ]
        drivers = [asyncio.create_task(run.drive()) for run in runs]

        kills: list[KillRecord] = []
        n = 0
        try:
            for n in range(1, KILLS + 1):
                await asyncio.sleep(rng.uniform(*KILL_AFTER_S))
                crashed = [d for d in drivers if d.done() and not d.cancelled() and d.exception()]
                if crashed:
                    break  # finish_all reports it
                open_ids = [run.ticket_id for run in runs if not run.finished]
                kill = KillRecord(n, time.monotonic() - started, len(open_ids), traffic.in_flight)
                worker.kill()
                kill.workflow_tasks_started, kill.activities_started = await started_on_dead_worker(
                    client, open_ids, worker
                )
                for run, at in zip(runs, finale_at, strict=True):
                    if n >= at:
                        run.finale.set()
                await asyncio.sleep(rng.uniform(*DOWN_S))
                worker.start()
                kill.restart_s = await worker.wait_polling(client)
                kills.append(kill)
        except Exception as exc:
            raise AssertionError(
                f"seed {seed}: the chaos loop failed at kill {n}: {exc!r}\n"
                f"worker log:\n{worker.tail()}"
            ) from exc
        chaos_s = time.monotonic() - started
        chaos_window = (started + kills[0].at_s, started + kills[-1].at_s) if kills else (0, 0)
        for run in runs:
            run.finale.set()

        await finish_all(client, runs, drivers, seed)
        finished_s = time.monotonic() - started

        ledger = Ledger(chaos_settings.ledger_url)
        try:
            problems, totals = await cross_check(client, runs, ledger, check_heartbeats=True)
        finally:
            ledger.dispose()
    finally:
        await cancel_all(drivers)
        await worker.stop()

    replies = [t for run in runs for t in run.record.accepted_at]
    during = sum(chaos_window[0] <= t <= chaos_window[1] for t in replies)
    print(
        f"worker chaos: {worker.kills} kills in {chaos_s:.0f} s, every ticket finished at "
        f"{finished_s:.0f} s (seed {seed})\n"
        f"  per kill: open tickets {[k.open_tickets for k in kills]}\n"
        f"  agent calls in flight {[k.calls_in_flight for k in kills]}\n"
        f"  workflow tasks on the killed worker {[k.workflow_tasks_started for k in kills]}\n"
        f"  activities running on the killed worker {[k.activities_started for k in kills]}\n"
        f"  restart to polling (s) {[round(k.restart_s, 1) for k in kills]}\n"
        f"  replies accepted between the first and the last kill: {during} of {len(replies)}\n"
        f"  totals {totals}; retried calls {dict(traffic.retried)}"
    )
    assert not problems, f"seed {seed}: ledger and workflows disagree:\n" + "\n".join(problems)
    assert worker.kills >= KILLS, f"seed {seed}: only {worker.kills} kills"
    assert during >= len(replies) // 4, (
        f"seed {seed}: the work did not go on during the kills ({during} of {len(replies)})"
    )
    assert all(k.open_tickets > 0 for k in kills), f"seed {seed}: a kill with no open ticket"
    assert sum(k.calls_in_flight > 0 for k in kills) >= len(kills) // 2, (
        f"seed {seed}: too few kills with agent calls in flight: "
        f"{[k.calls_in_flight for k in kills]}"
    )


# ---- 2. the dev server, killed and restarted from its database file ------------------------


async def start_own_server(
    tmp_path: Path, queue_prefix: str
) -> tuple[DevServer, Settings, WorkerProcess]:
    """A dev server of this test's own (free ports, its db file under ``tmp_path``), its
    settings, and a worker process for them (not started yet)."""
    base = Settings(
        data_dir=tmp_path / "temporal",
        task_queue=unique_id(queue_prefix),
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        start_dev_server=True,
        otel_exporter="none",
    )
    for attempt in range(3):
        port, ui_port = two_free_ports()
        settings = base.model_copy(
            update={"temporal_address": f"127.0.0.1:{port}", "ui_port": ui_port}
        )
        try:
            server = await ensure_server(settings, startup_timeout=60)
        except DevServerError as exc:
            if "in use" not in str(exc) or attempt == 2:
                raise
            continue
        worker_settings = settings.model_copy(update={"data_dir": tmp_path / "worker"})
        return server, settings, WorkerProcess(worker_settings, tmp_path / "worker.log")
    raise AssertionError("unreachable")


async def test_dev_server_restarted_from_its_db_file_every_ticket_resumes(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    seed = chaos_seed(record_property)
    rng = random.Random(seed)
    server, server_settings, worker = await start_own_server(tmp_path, "restart")
    assert server.owned and server.db_path is not None
    traffic = Traffic()
    drivers: list[asyncio.Task[None]] = []
    loops: list[asyncio.Task[bool]] = []
    runs: list[TicketRun] = []
    try:
        client = await connect(server_settings)
        worker.start()
        await worker.wait_polling(client)
        runs = [
            await TicketRun.start(
                client,
                server_settings,
                unique_id(f"restart{i}"),
                rng=random.Random(rng.getrandbits(64)),
                traffic=traffic,
                max_tasks=10,
                heartbeats=False,  # a signal retried across the crash may arrive twice
            )
            for i in range(4)
        ]
        await asyncio.gather(*(run.register(client) for run in runs))

        # Part way: the agents work until every ticket has a few results, then, with their
        # calls in flight, the server's whole process group is SIGKILLed.
        loops = [asyncio.create_task(run.run_agents()) for run in runs]
        deadline = time.monotonic() + 120
        while any(len(run.record.completes) < 4 for run in runs):
            assert time.monotonic() < deadline, f"seed {seed}: no progress before the crash"
            assert not any(t.done() for t in loops), f"seed {seed}: an agent loop ended early"
            await asyncio.sleep(0.05)
        acknowledged = {run.ticket_id: run.record.done_tasks() for run in runs}
        results_sent = {
            run.ticket_id: {t: sha for t, _, _, sha in run.record.completes} for run in runs
        }
        # A random moment of the agents' work, preferably with calls on the wire.
        await asyncio.sleep(rng.uniform(0, 0.5))
        for _ in range(100):
            if traffic.in_flight:
                break
            await asyncio.sleep(0.02)
        wfts_at_crash, activities_at_crash = await started_on_dead_worker(
            client, [run.ticket_id for run in runs], worker
        )
        in_flight_at_crash = traffic.in_flight
        assert server.pid is not None
        os.killpg(server.pid, signal.SIGKILL)
        await server.stop()  # reaps it
        assert not server.running
        for run in runs:
            run.pause.set()
        await asyncio.sleep(rng.uniform(0.5, 2.0))

        # The same ports and the same db file: a restart, not a new server.
        restarted = await ensure_server(server_settings, startup_timeout=60)
        server = restarted
        assert server.owned and server.db_path is not None
        # The agents' calls that were in flight get their replies (same request ids).
        done, pending = await asyncio.wait(loops, timeout=FINISH_TIMEOUT_S)
        assert not pending, f"seed {seed}: agent calls did not come back after the restart"
        for t in done:
            t.result()
        assert worker.alive, f"seed {seed}: the worker died with the server:\n{worker.tail()}"

        # Reconnect with a new client: every ticket is there, state intact.
        client = await connect(server_settings)
        for run in runs:
            run.launched = Launched(
                client.get_workflow_handle(run.ticket_id),
                run.ticket_id,
                run.launched.operator_token,
            )
            state: TicketState = await run.launched.state()
            assert state.status == "open", f"{run.ticket_id} is {state.status}"
            for task_id in acknowledged[run.ticket_id]:
                task = state.tasks[task_id]
                assert task.status == "done", f"{run.ticket_id} {task_id} is {task.status}"
                assert task.result_sha256 == results_sent[run.ticket_id][task_id]
            agent_ids = {w.session.agent_id for w in run.workers}
            assert run.validator is not None
            agent_ids.add(run.validator.session.agent_id)
            assert agent_ids <= set(state.agents), f"{run.ticket_id} lost agents"

        # The same agents (ids and tokens) continue on the new client to the end.
        for run in runs:
            run.take_over(client)
            run.pause.clear()
            run.finale.set()
        drivers = [asyncio.create_task(run.drive()) for run in runs]
        await finish_all(client, runs, drivers, seed)

        ledger = Ledger(server_settings.ledger_url)
        try:
            problems, totals = await cross_check(client, runs, ledger, check_heartbeats=False)
        finally:
            ledger.dispose()
        assert worker.alive, f"seed {seed}: the worker died:\n{worker.tail()}"
    finally:
        await cancel_all([*loops, *drivers])
        await worker.stop()
        with contextlib.suppress(Exception):
            await server.stop()

    print(
        f"server restart: {in_flight_at_crash} agent call(s), {wfts_at_crash} workflow "
        f"task(s) and {activities_at_crash} activities in flight at the crash, "
        f"{sum(len(v) for v in acknowledged.values())} task(s) acknowledged done before it; "
        f"totals {totals}; retried calls {dict(traffic.retried)}"
    )
    assert not problems, f"seed {seed}: ledger and workflows disagree:\n" + "\n".join(problems)


# ---- 3. one agent call across a server outage ---------------------------------------------


async def test_an_agent_call_made_while_the_server_is_down_goes_through_once_it_is_back(
    tmp_path: Path,
) -> None:
    """A plain AgentSession (no test wrapper) rides out a server restart: its call resends
    with the same request id until the server is back, is applied once, and a session with
    a short retry window gives up with the server's error instead of hanging."""
    server, server_settings, worker = await start_own_server(tmp_path, "outage")
    try:
        client = await connect(server_settings)
        worker.start()
        await worker.wait_polling(client)
        ticket_id = unique_id("outage")
        launched = await launch(client, server_settings, spec_dict(ticket_id))
        retries: list[str] = []

        class Counted(AgentSession):
            def on_retry(self, update: str, kind: str, detail: str) -> None:
                retries.append(f"{update} {kind}")
                super().on_retry(update, kind, detail)

        agent = Counted(client, ticket_id, name="alice")
        await agent.register()
        impatient = AgentSession(client, ticket_id, name="bob", retry_window_s=1.0)
        await impatient.register()

        assert server.pid is not None
        os.killpg(server.pid, signal.SIGKILL)
        await server.stop()
        claim = asyncio.create_task(agent.claim())
        started = time.monotonic()
        with pytest.raises(RPCError) as refused:
            await impatient.claim()
        gave_up_after = time.monotonic() - started
        assert refused.value.status in TRANSIENT
        # The client's own RPC retries take about 10 s; the session's window comes on top.
        assert gave_up_after < 30, f"a 1 s retry window gave up after {gave_up_after:.1f} s"
        # Down for longer than the client's own retries: the session resends the claim.
        while not retries:
            assert time.monotonic() - started < 60, "the session never resent the claim"
            assert not claim.done(), f"the claim ended while the server was down: {claim}"
            await asyncio.sleep(0.2)
        assert not claim.done(), "the claim ended while the server was down"

        server = await ensure_server(server_settings, startup_timeout=60)
        task = await asyncio.wait_for(claim, timeout=120)
        assert task is not None and task.title == "Write requirements"

        state: TicketState = await launched.state()
        assigned = [t.id for t in state.tasks.values() if t.assigned_agent == agent.agent_id]
        assert assigned == [task.id], f"the resent claim was applied {len(assigned)} times"
        reply = await agent.complete(task.id, "# Requirements", "analysis", claim_next=True)
        assert reply.next is not None and reply.next.task is not None
        assert reply.next.task.title == "Implement"
        assert worker.alive, f"the worker died with the server:\n{worker.tail()}"
    finally:
        await worker.stop()
        with contextlib.suppress(Exception):
            await server.stop()
