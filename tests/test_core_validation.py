"""Validation in iterations, in the pure core: reviews, feedback, limits, timeouts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from core import deadlines
from core import ticket as core
from core.common import StartDiagnosis
from core.state import TicketState
from models.messages import (
    ClaimTask,
    CompleteTask,
    RegisterAgent,
    ReviewResult,
    ReviewTask,
    SubmitResult,
)
from models.spec import AgentKind, parse_spec

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ticket(**validation: Any) -> tuple[TicketState, dict[str, dict[str, Any]]]:
    spec = parse_spec(
        {
            "id": "v",
            "title": "Validated work",
            "tasks": [
                {"key": "a", "phase": "implementation", "title": "Login form", "validation": True}
            ],
            # Heartbeat deadlines far away: these tests are about validation deadlines.
            "policy": {
                "validation": validation,
                "health": {"idle_deadline_s": 86_400, "running_deadline_s": 86_400},
            },
        }
    )
    state = core.new_ticket(spec, T0)
    creds: dict[str, dict[str, Any]] = {}
    roles: tuple[tuple[str, AgentKind], ...] = (
        ("w", "worker"),
        ("x", "worker"),
        ("v", "validator"),
        ("u", "validator"),
    )
    for name, kind in roles:
        reply = core.register(state, RegisterAgent(name=name, kind=kind), T0, token=name).reply
        creds[name] = {"agent_id": reply.agent_id, "token": name}
    return state, creds


def submit(state: TicketState, w: dict[str, Any], at: datetime, text: str = "# v") -> str:
    task = core.claim(state, ClaimTask(**w), at).reply.task
    assert task is not None
    core.complete(
        state, CompleteTask(**w, task_id=task.id, result=text, result_type="implementation"), at
    )
    return task.id


def review(
    state: TicketState, v: dict[str, Any], at: datetime, passed: bool, feedback: str = ""
) -> Any:
    claimed = core.claim(state, ClaimTask(**v), at).reply
    assert claimed.task is not None and claimed.task.status == "validation_in_progress"
    return core.review_task(
        state,
        ReviewTask(
            **v,
            task_id=claimed.task.id,
            iteration=claimed.task.iteration,
            passed=passed,
            feedback=feedback,
        ),
        at,
    )


def test_full_pass_loop_and_verified_result() -> None:
    state, c = ticket()
    task_id = submit(state, c["w"], s(1), "# the login form")
    task = state.tasks[task_id]
    assert (task.status, task.iteration) == ("under_review", 1)
    claimed = core.claim(state, ClaimTask(**c["v"]), s(2)).reply
    assert claimed.task is not None and claimed.task.result_content == "# the login form"
    assert state.tasks[task_id].reviewer == c["v"]["agent_id"]
    step = core.review_task(
        state,
        ReviewTask(**c["v"], task_id=task_id, iteration=1, passed=True, evidence=["renders"]),
        s(3),
    )
    assert step.reply.status == "done" and step.effects == []
    assert state.tasks[task_id].review_content is None  # state keeps no copy after the verdict
    [submitted, verified] = state.outbox.task_results
    assert submitted.id == verified.id == "v/T1/a1/i1"
    assert (submitted.verification, verified.verification) == ("unverified", "verified")
    assert verified.review_id == state.outbox.reviews[0].id == "v/review/task/T1/i1"
    assert verified.content == submitted.content and verified.submitted_at == submitted.submitted_at


def test_fail_fix_pass_with_feedback_reaching_the_worker() -> None:
    state, c = ticket()
    task_id = submit(state, c["w"], s(1))
    step = review(state, c["v"], s(2), passed=False, feedback="password field is not masked")
    assert step.reply.status == "needs_work" and step.effects == []
    task = state.tasks[task_id]
    assert task.assigned_agent == c["w"]["agent_id"]  # back to the same worker
    assert core.inbox(state, c["w"]["agent_id"]).feedback == [
        "T1 iteration 1 failed review: password field is not masked"
    ]
    assert state.outbox.task_results[-1].verification == "disputed"
    # Another worker cannot take it; the same worker gets it back on its next claim.
    assert core.claim(state, ClaimTask(**c["x"]), s(3)).reply.task is None
    back = core.claim(state, ClaimTask(**c["w"]), s(4)).reply
    assert back.task is not None and back.task.id == task_id and back.task.status == "running"
    assert back.task.last_feedback == "password field is not masked"
    assert back.inbox.feedback
    core.complete(
        state,
        CompleteTask(**c["w"], task_id=task_id, result="# masked now", result_type="fix"),
        s(5),
    )
    assert (task.status, task.iteration) == ("under_review", 2)
    assert review(state, c["v"], s(6), passed=True).reply.status == "done"
    assert [r.passed for r in task.reviews] == [False, True]
    assert [r.id for r in state.outbox.task_results] == [
        "v/T1/a1/i1",
        "v/T1/a1/i1",
        "v/T1/a1/i2",
        "v/T1/a1/i2",
    ]


def test_two_failures_in_a_row_ask_for_a_diagnosis() -> None:
    state, c = ticket()
    submit(state, c["w"], s(1))
    assert review(state, c["v"], s(2), passed=False, feedback="no").effects == []
    core.claim(state, ClaimTask(**c["w"]), s(3))
    core.complete(
        state, CompleteTask(**c["w"], task_id="T1", result="# again", result_type="fix"), s(4)
    )
    step = review(state, c["v"], s(5), passed=False, feedback="still no")
    [effect] = step.effects
    assert isinstance(effect, StartDiagnosis)
    assert effect.input.trigger == "repeated_validation_failures"
    assert "T1 failed review 2 times in a row" in effect.input.reason


def test_max_iterations_fail_the_task() -> None:
    state, c = ticket(max_iterations=3, failures_before_diagnosis=10)
    for i in range(3):
        if i:
            core.claim(state, ClaimTask(**c["w"]), s(10 * i))
            core.complete(
                state,
                CompleteTask(**c["w"], task_id="T1", result=f"# try {i}", result_type="fix"),
                s(10 * i + 1),
            )
        else:
            submit(state, c["w"], s(0))
        step = review(state, c["v"], s(10 * i + 2), passed=False, feedback=f"wrong {i}")
    task = state.tasks["T1"]
    assert task.status == "failed" and task.assigned_agent is None
    assert task.failure_reason is not None and "failed review 3 times" in task.failure_reason
    [effect] = step.effects
    assert isinstance(effect, StartDiagnosis) and effect.input.trigger == "task_failed"


def assert_refused_unchanged(state: TicketState, call: Any, field: str, words: str) -> None:
    before = state.model_dump()
    with pytest.raises(core.Refused) as info:
        call()
    assert info.value.field == field and words in info.value.rule, info.value
    assert state.model_dump() == before


def test_refusals() -> None:
    state, c = ticket()
    submit(state, c["w"], s(1))
    assert_refused_unchanged(
        state,
        lambda: core.review_task(
            state, ReviewTask(**c["w"], task_id="T1", iteration=1, passed=True), s(2)
        ),
        "agent_id",
        "only validator",
    )
    assert_refused_unchanged(
        state,
        lambda: core.review_task(
            state, ReviewTask(**c["v"], task_id="T1", iteration=2, passed=True), s(2)
        ),
        "iteration",
        "at iteration 1, not 2",
    )
    assert_refused_unchanged(
        state,
        lambda: core.review_task(
            state, ReviewTask(**c["v"], task_id="T9", iteration=1, passed=True), s(2)
        ),
        "task_id",
        "unknown task",
    )
    core.claim(state, ClaimTask(**c["v"]), s(2))  # v takes it
    assert_refused_unchanged(
        state,
        lambda: core.review_task(
            state, ReviewTask(**c["u"], task_id="T1", iteration=1, passed=True), s(3)
        ),
        "task_id",
        "being reviewed by v-3",
    )
    core.review_task(state, ReviewTask(**c["v"], task_id="T1", iteration=1, passed=True), s(3))
    assert_refused_unchanged(
        state,
        lambda: core.review_task(
            state,
            ReviewTask(
                **c["v"], task_id="T1", iteration=1, passed=False, feedback="on second thought"
            ),
            s(4),
        ),
        "iteration",
        "already has a verdict",
    )
    with pytest.raises(ValidationError, match="feedback is required"):
        ReviewTask(**c["v"], task_id="T1", iteration=1, passed=False)


def test_validator_timeout_fails_the_task_at_the_deadline_and_asks_for_a_diagnosis() -> None:
    state, c = ticket()
    submit(state, c["w"], s(0))
    deadline = deadlines.next_deadline(state)
    assert deadline is not None and deadline.at == s(600)
    assert deadline.label == "validator timeout 600s T1"
    assert deadlines.tick(state, s(600) - timedelta(microseconds=1)) == []
    effects = deadlines.tick(state, s(600))
    task = state.tasks["T1"]
    assert task.status == "failed"
    assert task.failure_reason is not None
    assert "no review from any validator within 600 s (validator timeout" in task.failure_reason
    assert [e.input.trigger for e in effects if isinstance(e, StartDiagnosis)] == [
        "validation_timeout"
    ]


def test_a_result_without_a_verdict_asks_for_one_diagnosis() -> None:
    state, c = ticket(validator_timeout_s=60)
    core.submit_result(state, SubmitResult(**c["w"], content="# result"), s(0))
    claimed = core.claim(state, ClaimTask(**c["v"]), s(1)).reply
    assert claimed.result_version == 1 and "result v1 awaits a verdict" in claimed.reason
    assert deadlines.next_deadline(state) == deadlines.Deadline(
        s(60), "validator timeout 60s result v1"
    )
    effects = deadlines.tick(state, s(60))
    assert [e.input.trigger for e in effects if isinstance(e, StartDiagnosis)] == [
        "validation_timeout"
    ]
    assert state.results[0].status == "pending_validation"  # never dropped
    assert deadlines.tick(state, s(120)) == []  # once per version
    core.review_result(state, ReviewResult(**c["v"], version=1, passed=True), s(130))
    assert state.status == "completed"
