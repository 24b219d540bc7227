"""Healing on the real server (DESIGN §11): a task that failed for good no longer blocks the
work behind it, and a spent diagnosis budget reaches a person."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import Client

from agent_client.session import AgentSession
from infra.settings import Settings
from models.messages import DiagnosisView, StatusView
from tests.conftest import unique_id
from tests.test_self_healing import wait_for
from tests.ticketkit import launch


@pytest.mark.usefixtures("worker")
async def test_a_dependency_failed_for_good_is_retried_then_replaced_and_the_ticket_finishes(
    client: Client, settings: Settings
) -> None:
    """The ladder on a real server: the failed task is retried first; when the retry fails
    too, a new task takes over its dependants, and the work behind it goes on."""
    spec = {
        "id": unique_id("dep-failed"),
        "title": "Add password reset",
        "result_criteria": ["reset works"],
        "tasks": [
            {"key": "mailer", "phase": "implementation", "title": "Set up the mailer"},
            {
                "key": "reset",
                "phase": "implementation",
                "title": "Reset endpoint",
                "depends_on": ["mailer"],
            },
            {"key": "test", "phase": "testing", "title": "Test reset", "depends_on": ["reset"]},
        ],
        "policy": {"tasks": {"max_retries": 1}, "stuck": {"window_s": 2, "cooldown_s": 2}},
    }
    ticket = await launch(client, settings, spec)

    async def completed_runs() -> list[DiagnosisView]:
        runs = await ticket.handle.query("diagnoses", result_type=list[DiagnosisView])
        return [r for r in runs if r.status == "completed"]

    async with (
        AgentSession(client, ticket.ticket_id, name="ada") as ada,
        AgentSession(client, ticket.ticket_id, name="vera", kind="validator") as vera,
    ):
        order: list[str] = []  # tasks in the order ada finished them

        async def work_failing_t1(runs: int) -> list[DiagnosisView]:
            """Do every task but the mailer, which fails on every attempt, retried or not.
            (A run may complete between the query and the claim: its task is taken here.)"""
            while len(done := await completed_runs()) < runs:
                task = await ada.claim()
                if task is None:
                    await asyncio.sleep(0.1)
                elif task.id == "T1":
                    await ada.fail("T1", "SMTP_HOST is not set")
                else:
                    await ada.complete(task.id, f"# {task.title}\nDone.", "analysis")
                    order.append(task.id)
            return done

        await asyncio.wait_for(work_failing_t1(1), 30)
        retry, replace = await asyncio.wait_for(work_failing_t1(2), 30)
        assert retry.trigger == replace.trigger == "task_failed"
        assert retry.hypotheses[0]["signature"] == "dependency_deadlock"
        assert "T1" in retry.task_ids  # rung 1: T1 itself, back to pending
        assert retry.outcome == "failed"
        state = await ticket.state()
        [new_id] = [t for t in replace.task_ids if state.tasks[t].replaces == "T1"]
        assert state.tasks["T2"].depends_on == [new_id]  # rung 2: rewired
        while (task := await ada.claim()) is not None:
            await ada.complete(task.id, f"# {task.title}\nDone.", "implementation")
            order.append(task.id)
        assert order.index(new_id) < order.index("T2") < order.index("T3")
        reply = await ada.submit_result("# Password reset\n- [x] reset works")
        await vera.review_result(reply.version, passed=True, evidence=["tried it"])
        final = await client.get_workflow_handle(ticket.ticket_id, result_type=StatusView).result()
    assert final.status == "completed"
    runs = await ticket.handle.query("diagnoses", result_type=list[DiagnosisView])
    assert [r.outcome for r in runs] == ["failed", "recovered"]


@pytest.mark.usefixtures("worker")
async def test_a_spent_diagnosis_budget_escalates_instead_of_going_silent(
    client: Client, settings: Settings
) -> None:
    """Every run 'recovers' (its task is marked done) yet nothing gets submitted: once the
    budget is spent the ticket is escalated, not left open with nobody told."""
    spec = {
        "id": unique_id("budget"),
        "title": "Build login system",
        "result_criteria": ["login works"],
        "tasks": [{"key": "a", "phase": "implementation", "title": "Implement login"}],
        "policy": {"stuck": {"window_s": 1, "cooldown_s": 1, "max_runs": 2}},
    }
    ticket = await launch(client, settings, spec)
    async with AgentSession(client, ticket.ticket_id, name="lazy") as lazy:

        async def work_without_submitting() -> bool:
            task = await lazy.claim()
            if task is not None:  # the recovery task too: done, but nothing submitted
                await lazy.complete(task.id, "Looked at it.", "analysis")
            state = await ticket.state()
            return any(e.source == "diagnosis_guard" for e in state.escalations)

        await wait_for(work_without_submitting, timeout=60, what="the escalation")
        state = await ticket.state()
        status = await ticket.handle.query("status", result_type=StatusView)
    assert len(state.diagnoses) == 2
    [escalation] = [e for e in state.escalations if e.source == "diagnosis_guard"]
    assert "2 diagnoses ran (the limit is 2)" in escalation.reason
    assert status.status == "open" and status.ticket_status == "escalated"


@pytest.mark.usefixtures("worker")
async def test_no_validator_escalates_at_once_instead_of_creating_tasks(
    client: Client, settings: Settings
) -> None:
    """A reviewed task and nobody to review it: no worker can fix that, so the ticket
    escalates on its first diagnosis instead of handing workers a task they cannot do."""
    spec = {
        "id": unique_id("no-validator"),
        "title": "Fix the session bug",
        "result_criteria": ["sessions last 24 h"],
        "phases": [{"name": "implementation"}],
        "tasks": [{"key": "fix", "phase": "implementation", "title": "Fix", "validation": True}],
        "policy": {"validation": {"validator_timeout_s": 2}},
    }
    ticket = await launch(client, settings, spec)
    async with AgentSession(client, ticket.ticket_id, name="ada") as ada:
        task = await ada.claim()
        assert task is not None
        await ada.complete(task.id, "# Fixed\nParse the TTL as seconds.", "fix")

        async def escalated() -> bool:
            status = await ticket.handle.query("status", result_type=StatusView)
            return status.ticket_status == "escalated"

        await wait_for(escalated, timeout=30, what="the escalation")
        state = await ticket.state()
    [run] = state.diagnoses
    assert run.trigger == "validation_timeout" and run.task_ids == []
    assert run.hypotheses[0].signature == "validator_unavailable"
    [escalation] = [e for e in state.escalations if e.source == "diagnosis_ladder"]
    assert "No validator can review the pending work" in escalation.reason
    assert set(state.tasks) == {"T1"}  # nobody was handed a task they cannot do
