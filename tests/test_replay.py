"""Replay: recorded ticket histories must replay on the current workflow code.

``tests/histories/*.json`` are histories recorded from real runs. If a change to
``TicketWorkflow`` makes one of them fail to replay, running tickets would break on deploy:
guard the change with ``workflow.patched(...)`` instead. When a change is intended to be
incompatible (and no ticket of the old shape is running), re-record:

    UNSTUCK_RECORD_HISTORIES=1 .venv/bin/python -m pytest tests/test_replay.py

or only some scenarios, by name: ``UNSTUCK_RECORD_HISTORIES=ticket-agent-restart``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from agent_client.session import AgentSession
from infra.settings import Settings
from tests.conftest import unique_id
from tests.receiver import Receiver
from tests.test_agent_health import agent, until
from tests.test_agent_health import spec as agent_spec
from tests.ticketkit import launch, spec_dict
from workflows.diagnosis import DiagnosticWorkflow
from workflows.ticket import TicketWorkflow

HISTORIES = Path(__file__).parent / "histories"
_RECORD = os.environ.get("UNSTUCK_RECORD_HISTORIES", "")


def recording(name: str) -> bool:
    """Whether this run writes the history ``name`` (``1`` = all, else a comma list)."""
    return _RECORD == "1" or name in {n.strip() for n in _RECORD.split(",") if n.strip()}


async def check_and_record(name: str, history: WorkflowHistory) -> None:
    result = await replayer().replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None, name
    if recording(name):
        HISTORIES.mkdir(exist_ok=True)
        (HISTORIES / f"{name}.json").write_text(history.to_json(), encoding="utf-8")


def replayer() -> Replayer:
    return Replayer(
        workflows=[TicketWorkflow, DiagnosticWorkflow], data_converter=pydantic_data_converter
    )


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text(encoding="utf-8"))
    result = await replayer().replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


def test_histories_are_recorded() -> None:
    names = {p.stem for p in HISTORIES.glob("*.json")}
    assert {
        "ticket-happy-path",
        "ticket-continue-as-new-run1",
        "ticket-validation-loop",
        "ticket-seed-stuck-diagnosed",
        "ticket-agent-restart",
        "ticket-looping-interrupted",
        "ticket-escalation-answered",
    } <= names


@pytest.mark.usefixtures("worker")
async def test_fresh_runs_replay(client: Client, settings: Settings) -> None:
    """Scenarios run now replay cleanly (and are written out when recording)."""
    happy = await launch(client, settings, spec_dict(unique_id("replay-happy")))
    async with (
        AgentSession(client, happy.ticket_id, name="alice") as alice,
        AgentSession(client, happy.ticket_id, name="vera", kind="validator") as vera,
    ):
        task = await alice.claim()
        assert task is not None
        await alice.progress(task.id, "on it")
        await alice.create_task("testing", "Test it", depends_on=["T2"])
        await alice.fail(task.id, "flaky disk")
        task = await alice.claim()
        assert task is not None
        await alice.complete(task.id, "# reqs", "design", claim_next=True)
        await alice.submit_result("# v1")
        await vera.review_result(1, passed=False, feedback="too short")
        await alice.submit_result("# v2, longer")
        async with AgentSession(client, happy.ticket_id, name="bob") as bob:
            assert (await bob.leave("not needed")).released == []  # the leave update
        await vera.review_result(2, passed=True)
    await happy.handle.result()

    can = await launch(
        client,
        settings,
        spec_dict(
            unique_id("replay-can"),
            tasks=[],
            policy={"tasks": {"max_creates_per_minute": 100}},  # 30 in a few seconds
        ),
        continue_as_new_after_events=100,
    )
    async with (
        AgentSession(client, can.ticket_id, name="alice") as alice,
        AgentSession(client, can.ticket_id, name="vera", kind="validator") as vera,
    ):
        for i in range(30):
            created = await alice.create_task("implementation", f"piece {i}")
            await alice.claim()
            await alice.complete(created.id, "# piece", "implementation")
        await alice.submit_result("# done")
        await vera.review_result(1, passed=True)
    await can.handle.result()

    review = await launch(
        client,
        settings,
        {
            "id": unique_id("replay-review"),
            "title": "Reviewed",
            "tasks": [{"key": "a", "phase": "implementation", "title": "A", "validation": True}],
        },
    )
    async with (
        AgentSession(client, review.ticket_id, name="alice") as alice,
        AgentSession(client, review.ticket_id, name="vera", kind="validator") as vera,
    ):
        for iteration, passed in ((1, False), (2, True)):
            task = await alice.claim()
            assert task is not None
            await alice.complete(task.id, f"# try {iteration}", "implementation")
            assert await vera.claim() is not None
            await vera.review_task(task.id, iteration, passed, feedback="" if passed else "no")
        await alice.submit_result("# reviewed")
        await vera.review_result(1, passed=True)
    await review.handle.result()

    seed = await launch(
        client,
        settings,
        spec_dict(
            unique_id("replay-seed"),
            tasks=[{"key": "a", "phase": "testing", "title": "A"}],
            phases=[{"name": "testing"}],
            policy={"stuck": {"window_s": 0.5, "cooldown_s": 0.5}},
        ),
    )
    async with (
        AgentSession(client, seed.ticket_id, name="alice") as alice,
        AgentSession(client, seed.ticket_id, name="vera", kind="validator") as vera,
    ):
        task = await alice.claim()
        assert task is not None
        await alice.complete(task.id, "# done", "test")
        recovery = None
        for _ in range(100):  # nobody submits: the ticket diagnoses itself
            recovery = await alice.claim()
            if recovery is not None:
                break
            await asyncio.sleep(0.1)
        assert recovery is not None and recovery.diagnosis_run_id
        await alice.submit_result("# the result")
        await alice.complete(recovery.id, "submitted", "documentation")
        await vera.review_result(1, passed=True)
    await seed.handle.result()

    looping = await launch(
        client,
        settings,
        spec_dict(
            unique_id("replay-loop"),
            tasks=[{"key": "a", "phase": "testing", "title": "A"}],
            phases=[{"name": "testing"}],
            policy={"stuck": {"window_s": 0.5, "cooldown_s": 0.5}},
        ),
    )
    async with (
        AgentSession(client, looping.ticket_id, name="alice") as alice,
        AgentSession(client, looping.ticket_id, name="vera", kind="validator") as vera,
    ):
        task = await alice.claim()
        assert task is not None
        for _ in range(3):  # busy but stuck: the anomaly diagnosis interrupts alice
            await alice.progress(task.id, "checking the build again")
        for _ in range(100):
            if alice.interrupted(task.id) or task.id in (await alice.refresh_inbox()).interrupted:
                break
            await asyncio.sleep(0.1)
        assert alice.interrupted(task.id)
        again = await alice.claim()
        assert again is not None and again.id == task.id
        await alice.complete(task.id, "# done, differently this time", "test")
        await alice.submit_result("# the result, with evidence")
        await vera.review_result(1, passed=True)
    await looping.handle.result()

    hook = Receiver().answer(500).up()  # fails once, then takes every message
    people = await launch(
        client,
        settings,
        spec_dict(
            unique_id("replay-people"),
            policy={
                "stuck": {"window_s": 0.5, "cooldown_s": 0.5},
                "escalation": {
                    "sinks": [{"name": "hook", "kind": "webhook", "url": hook.url}],
                    "retry_max_interval_s": 1,
                },
            },
        ),
    )
    try:
        async with (
            AgentSession(client, people.ticket_id, name="alice") as alice,
            AgentSession(client, people.ticket_id, name="vera", kind="validator") as vera,
        ):
            task = await alice.claim()
            assert task is not None
            asked = await alice.ask_human("Google or GitHub login?", task.id)
            operator = {"operator_token": people.operator_token, "operator": "olga"}
            await people.handle.execute_update(
                "ack", {**operator, "escalation_id": asked.question_id}
            )
            await people.handle.execute_update(
                "resolve", {**operator, "escalation_id": asked.question_id, "note": "GitHub"}
            )
            assert await alice.wait_for_answer(asked.question_id, timeout=10, poll_s=0.1)
            await alice.complete(task.id, "# GitHub login", "design", claim_next=True)
            await alice.submit_result("# GitHub login, done")
            await vera.review_result(1, passed=True)
        await people.handle.result()  # closes once the sink has every message
        assert [event for event, _ in hook.events()] == ["trigger", "acknowledge", "resolve"]
    finally:
        hook.down()

    histories = {
        "ticket-escalation-answered": await people.handle.fetch_history(),
        "ticket-looping-interrupted": await looping.handle.fetch_history(),
        "ticket-happy-path": await happy.handle.fetch_history(),
        "ticket-validation-loop": await review.handle.fetch_history(),
        "ticket-seed-stuck-diagnosed": await seed.handle.fetch_history(),
    }
    runs = []
    async for execution in client.list_workflows(f'WorkflowId = "{can.ticket_id}"'):
        runs.append(execution)
    runs.sort(key=lambda e: e.start_time)
    assert len(runs) >= 2, "the ticket should have continued as new"
    for i, execution in enumerate(runs[:2], start=1):
        handle = client.get_workflow_handle(can.ticket_id, run_id=execution.run_id)
        histories[f"ticket-continue-as-new-run{i}"] = await handle.fetch_history()

    for name, history in histories.items():
        await check_and_record(name, history)


@pytest.mark.usefixtures("worker")
async def test_fresh_restart_scenario_replays(client: Client, settings: Settings) -> None:
    """A local-process agent SIGKILLs itself holding a task: three missed deadlines, its task
    goes back to pending, the runtime replaces the process, the replacement finishes the work
    and the ticket completes. The history (activities that start and stop real processes)
    replays cleanly, and is written out when recording."""
    ticket = await launch(
        client,
        settings,
        agent_spec(
            unique_id("replay-restart"),
            [agent("crashy", "--crash-after-claims", "1", "--crash-only-in-generation", "0")],
        ),
    )
    done = await until(
        ticket,
        lambda s: s.restarts_total >= 1 and all(t.status == "done" for t in s.tasks.values()),
        "the restart and every task done",
    )
    assert done.lineages["crashy"].generation == 1
    async with (
        AgentSession(client, ticket.ticket_id, name="alice") as alice,
        AgentSession(client, ticket.ticket_id, name="vera", kind="validator") as vera,
    ):
        await alice.submit_result("# done after a restart")
        await vera.review_result(1, passed=True)
    await ticket.handle.result()
    history = await ticket.handle.fetch_history()
    kinds = {e.WhichOneof("attributes") for e in history.events}
    assert "activity_task_completed_event_attributes" in kinds
    await check_and_record("ticket-agent-restart", history)
