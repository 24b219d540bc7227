"""Validation in iterations on a real server: reviews, feedback to the worker, timeouts."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from agent_client.session import AgentSession, Refused
from infra.settings import Settings
from ledger.store import Ledger
from models.messages import DiagnosisView, ResultVersionView
from tests.conftest import unique_id
from tests.ticketkit import launch


def validated_spec(ticket_id: str, **validation: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "id": ticket_id,
        "title": "Login form",
        "tasks": [
            {
                "key": "form",
                "phase": "implementation",
                "title": "Build the login form",
                "validation": True,
            },
        ],
    }
    if validation:
        spec["policy"] = {"validation": validation}
    return spec


@pytest.mark.usefixtures("worker")
async def test_fail_fix_pass_loop_feedback_reaches_the_worker(
    client: Client, settings: Settings, ledger: Ledger
) -> None:
    ticket = await launch(client, settings, validated_spec(unique_id("review")))
    async with (
        AgentSession(client, ticket.ticket_id, name="ada", heartbeat_interval_s=0.2) as ada,
        AgentSession(client, ticket.ticket_id, name="vera", kind="validator") as vera,
        AgentSession(client, ticket.ticket_id, name="bob", kind="worker") as bob,
    ):
        task = await ada.claim()
        assert task is not None
        done = await ada.complete(task.id, "# form\n<input name=password>", "implementation")
        assert done.task.status == "under_review" and done.task.iteration == 1
        with pytest.raises(Refused) as info:
            await bob.review_task(task.id, 1, passed=True)
        assert info.value.field == "agent_id" and "only validator" in str(info.value)
        review = await vera.claim()
        assert review is not None and review.status == "validation_in_progress"
        assert review.result_content == "# form\n<input name=password>"
        with pytest.raises(Refused, match="feedback is required"):
            await vera.review_task(task.id, 1, passed=False)
        verdict = await vera.review_task(
            task.id, 1, passed=False, feedback="the password field must be masked"
        )
        assert verdict.status == "needs_work"
        with pytest.raises(Refused) as info:
            await vera.review_task(task.id, 1, passed=True)
        assert info.value.field == "iteration" and "already has a verdict" in str(info.value)
        # The feedback reaches ada through her heartbeat loop's inbox refresh...
        for _ in range(50):
            if ada.feedback:
                break
            await asyncio.sleep(0.1)
        assert ada.feedback == [
            f"{task.id} iteration 1 failed review: the password field must be masked"
        ]
        assert await bob.claim() is None  # ...and the task comes back to her, not to bob
        again = await ada.claim()
        assert again is not None and again.id == task.id and again.status == "running"
        assert again.last_feedback == "the password field must be masked"
        await ada.complete(task.id, "# form\n<input type=password>", "fix")
        review = await vera.claim()
        assert review is not None and review.iteration == 2
        passed = await vera.review_task(task.id, 2, passed=True, evidence=["masked"])
        assert passed.status == "done"
        await ada.submit_result("# Login form done")
        assert (await vera.claim()) is None
        assert vera.last_claim_reason == "result v1 awaits a verdict"
        await vera.review_result(1, passed=True)
    await ticket.handle.result()
    rows = {(r.iteration, r.verification) for r in ledger.task_results(ticket.ticket_id)}
    assert rows == {(1, "disputed"), (2, "verified")}
    reviews = ledger.reviews(ticket.ticket_id, subject_kind="task")
    assert [(r.iteration, r.passed) for r in reviews] == [(1, False), (2, True)]


@pytest.mark.usefixtures("worker")
async def test_two_failed_reviews_in_a_row_start_a_diagnosis(
    client: Client, settings: Settings
) -> None:
    ticket = await launch(client, settings, validated_spec(unique_id("loop")))
    async with (
        AgentSession(client, ticket.ticket_id, name="ada") as ada,
        AgentSession(client, ticket.ticket_id, name="vera", kind="validator") as vera,
    ):
        for iteration in (1, 2):
            task = await ada.claim()
            assert task is not None
            await ada.complete(task.id, f"# attempt {iteration}", "implementation")
            assert await vera.claim() is not None
            await vera.review_task(
                task.id, iteration, passed=False, feedback="criterion 'masked password' not met"
            )
        for _ in range(100):
            runs = await ticket.handle.query("diagnoses", result_type=list[DiagnosisView])
            if runs and runs[0].status == "completed":
                break
            await asyncio.sleep(0.1)
        assert runs[0].trigger == "repeated_validation_failures"
        assert "failed review 2 times in a row" in runs[0].reason
        signatures = [h["signature"] for h in runs[0].hypotheses]
        assert "validation_loop" in signatures
    await ticket.handle.execute_update(
        "cancel", {"operator_token": ticket.operator_token, "reason": "test over"}
    )


async def test_validator_timeout_with_the_production_ten_minutes(
    time_skipping: tuple[WorkflowEnvironment, Settings, Ledger],
) -> None:
    env, settings, _ = time_skipping
    ticket = await launch(env.client, settings, validated_spec(unique_id("timeout")))
    # lease=False: a running lease activity would hold the time-skipping server's clock.
    async with AgentSession(
        env.client, ticket.ticket_id, name="ada", heartbeat_interval_s=3600, lease=False
    ) as ada:
        task = await ada.claim()
        assert task is not None
        await ada.complete(task.id, "# form", "implementation")
        submitted = (await ticket.state()).tasks[task.id].review_requested_at
        assert submitted is not None
        await env.sleep(599)
        assert (await ticket.state()).tasks[task.id].status == "under_review"
        await env.sleep(5)
        state = await ticket.state()
        failed = state.tasks[task.id]
        assert failed.status == "failed"
        assert failed.failure_reason is not None
        assert "within 600 s (validator timeout" in failed.failure_reason
        expired = next(e for e in state.timeline if e.kind == "validation_timeout")
        assert expired.at - submitted - timedelta(seconds=600) < timedelta(seconds=1)
        assert [d.trigger for d in state.diagnoses][:1] == ["validation_timeout"]
    await ticket.handle.execute_update(
        "cancel", {"operator_token": ticket.operator_token, "reason": "test over"}
    )


async def _results(ticket: Any, n: int) -> list[ResultVersionView]:
    for _ in range(100):
        results = await ticket.handle.query("results", result_type=list[ResultVersionView])
        if len(results) >= n and results[n - 1].status != "pending_validation":
            return results
        await asyncio.sleep(0.1)
    return results


@pytest.mark.usefixtures("worker")
async def test_result_criteria_checks_reject_then_validate(
    client: Client, settings: Settings, ledger: Ledger, tmp_path: Path
) -> None:
    spec = validated_spec(unique_id("checks"))
    spec["tasks"] = []
    spec["result_criteria"] = [
        {
            "description": "the login module exists",
            "check": {"kind": "file_exists", "path": "auth.py"},
        },
        {
            "description": "passwords are hashed",
            "check": {"kind": "file_contains", "path": "auth.py", "text": "bcrypt"},
        },
    ]
    spec["policy"] = {"results": {"files_root": str(tmp_path)}}
    ticket = await launch(client, settings, spec)
    async with AgentSession(client, ticket.ticket_id, name="ada") as ada:
        await ada.submit_result("# Login\nDone.")
        [v1] = await _results(ticket, 1)
        assert v1.status == "rejected" and v1.validator_id == "automated-checks"
        assert v1.feedback is not None and "automated checks failed" in v1.feedback
        assert "auth.py" in v1.feedback
        (tmp_path / "auth.py").write_text("import bcrypt\n", encoding="utf-8")
        await ada.submit_result("# Login\nDone, with hashing.")
        v2 = (await _results(ticket, 2))[1]
        assert v2.status == "validated" and len(v2.checks) == 2
    outcome = await ticket.handle.result()
    assert outcome["status"] == "completed" and outcome["validated_version"] == 2
    verdicts = [(r.iteration, r.passed, r.validator_id) for r in ledger.reviews(ticket.ticket_id)]
    assert verdicts == [(1, False, "automated-checks"), (2, True, "automated-checks")]


@pytest.mark.usefixtures("worker")
async def test_checks_inform_the_validator_when_a_criterion_has_none(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    spec = validated_spec(unique_id("mixed"))
    spec["result_criteria"] = [
        {"description": "the module exists", "check": {"kind": "file_exists", "path": "x.md"}},
        "the UX is pleasant",
    ]
    spec["policy"] = {"results": {"files_root": str(tmp_path)}}
    (tmp_path / "x.md").write_text("# x\n", encoding="utf-8")
    ticket = await launch(client, settings, spec)
    async with AgentSession(client, ticket.ticket_id, name="ada") as ada:
        await ada.submit_result("# done")
        for _ in range(100):
            [v1] = await ticket.handle.query("results", result_type=list[ResultVersionView])
            if v1.checks:
                break
            await asyncio.sleep(0.1)
        assert v1.status == "pending_validation"  # a person (validator) decides the rest
        assert v1.checks and "x.md" in v1.checks[0]
    await ticket.handle.execute_update(
        "cancel", {"operator_token": ticket.operator_token, "reason": "test over"}
    )
