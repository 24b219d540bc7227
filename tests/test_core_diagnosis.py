"""Stuck detection, skip rules, runaway guards and outcomes in the pure core."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core import diagnosis
from core import ticket as core
from core.common import StartDiagnosis
from core.state import TicketState
from models.diagnosis import (
    DiagnosisReport,
    Hypothesis,
    HypothesisSet,
    Recommendation,
    RecoveryPlan,
)
from models.messages import (
    ClaimTask,
    CompleteTask,
    CreateTask,
    DiagnoseTicket,
    FailTask,
    RegisterAgent,
    ReviewResult,
    SubmitResult,
)
from models.spec import AgentKind, parse_spec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OPERATOR = "op-token"


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ticket(tasks: int = 2, **policy: Any) -> tuple[TicketState, dict[str, str]]:
    spec = parse_spec(
        {
            "id": "t",
            "title": "Build login system",
            "tasks": [
                {"key": f"k{i}", "phase": "implementation", "title": f"task {i}"}
                for i in range(tasks)
            ],
            "policy": {"stuck": policy} if policy else {},
        }
    )
    state = core.new_ticket(spec, T0)
    state.operator_token_sha256 = core.hash_token(OPERATOR)
    agents = {}
    roles: tuple[tuple[str, AgentKind], ...] = (("w", "worker"), ("v", "validator"))
    for name, kind in roles:
        reply = core.register(state, RegisterAgent(name=name, kind=kind), T0, token=name).reply
        agents[name] = reply.agent_id
    return state, agents


def started(effects: list[Any]) -> StartDiagnosis:
    """The one effect of a transition that started a diagnosis."""
    [effect] = effects
    assert isinstance(effect, StartDiagnosis)
    return effect


def auth(agents: dict[str, str], who: str = "w") -> dict[str, Any]:
    return {"agent_id": agents[who], "token": who}


def finish_all(state: TicketState, agents: dict[str, str], at: datetime) -> None:
    while (task := core.claim(state, ClaimTask(**auth(agents)), at).reply.task) is not None:
        core.complete(
            state,
            CompleteTask(**auth(agents), task_id=task.id, result="# r", result_type="test"),
            at,
        )


def report(
    state: TicketState, run_id: str, titles: tuple[str, ...] = ("Fix it",)
) -> DiagnosisReport:
    recs = [Recommendation(title=t, phase="testing", priority="normal") for t in titles]
    return DiagnosisReport(
        run_id=run_id,
        trigger="no_result",
        hypotheses=HypothesisSet(
            hypotheses=[
                Hypothesis(
                    statement="the final result was never submitted",
                    likelihood=0.9,
                    recommendations=recs,
                )
            ]
        ),
        plan=RecoveryPlan(tasks=recs),
        evidence_summary="summary",
        started_at=s(0),
        finished_at=s(1),
    )


# ---- the six conditions -------------------------------------------------------------------


def test_stuck_at_the_later_of_window_and_cooldown() -> None:
    state, agents = ticket()
    finish_all(state, agents, s(10))
    # window from the last activity (10 + 60) vs cooldown from the ticket's start (0 + 60)
    assert diagnosis.stuck_at(state) == s(70)
    state2, agents2 = ticket(cooldown_s=100)
    finish_all(state2, agents2, s(10))
    assert diagnosis.stuck_at(state2) == s(100)


def test_window_boundary_is_exact() -> None:
    state, agents = ticket()
    finish_all(state, agents, s(10))
    assert diagnosis.tick(state, s(70) - timedelta(microseconds=1)) == []
    assert state.diagnoses == []
    effects = diagnosis.tick(state, s(70))
    assert len(effects) == 1 and isinstance(effects[0], StartDiagnosis)
    assert effects[0].input.trigger == "no_result"
    assert effects[0].input.idle_seconds == 60
    assert state.stuck_since == s(70)


def test_not_stuck_without_tasks() -> None:
    state, _ = ticket(tasks=0)
    assert diagnosis.stuck_at(state) is None
    assert diagnosis.tick(state, s(10_000)) == []


def test_not_stuck_with_an_active_task() -> None:
    state, agents = ticket(tasks=2)
    core.claim(state, ClaimTask(**auth(agents)), s(1))
    assert diagnosis.stuck_at(state) is None
    assert diagnosis.tick(state, s(10_000)) == []


def test_not_stuck_with_a_validated_result() -> None:
    state, agents = ticket(tasks=1)
    state.spec.policy.results.on_result_found = "do_nothing"
    finish_all(state, agents, s(1))
    core.submit_result(state, SubmitResult(**auth(agents), content="# r"), s(2))
    assert diagnosis.stuck_at(state) is not None  # a pending version is not a validated one
    core.review_result(state, ReviewResult(**auth(agents, "v"), version=1, passed=True), s(3))
    assert state.status == "open"
    assert diagnosis.stuck_at(state) is None


def test_not_stuck_when_finished() -> None:
    state, agents = ticket(tasks=1)
    finish_all(state, agents, s(1))
    core.submit_result(state, SubmitResult(**auth(agents), content="# r"), s(2))
    core.review_result(state, ReviewResult(**auth(agents, "v"), version=1, passed=True), s(3))
    assert state.status == "completed"
    assert diagnosis.stuck_at(state) is None


def test_cooldown_counts_from_the_last_diagnosis() -> None:
    state, agents = ticket(window_s=10, cooldown_s=300)
    finish_all(state, agents, s(400))
    assert diagnosis.stuck_at(state) == s(410)
    [effect] = diagnosis.tick(state, s(410))
    assert isinstance(effect, StartDiagnosis)
    diagnosis.diagnosis_finished(state, report(state, effect.input.run_id), s(420))
    finish_all(state, agents, s(430))  # the recovery task is done
    assert diagnosis.stuck_at(state) == s(410 + 300)  # cooldown, not window (430 + 10)


def test_activity_moves_the_deadline() -> None:
    state, agents = ticket(tasks=1)
    finish_all(state, agents, s(10))
    assert diagnosis.next_deadline(state) == diagnosis.Deadline(s(70), "stuck window 60s")
    core.create_task(state, CreateTask(**auth(agents), phase="testing", title="more"), s(30))
    assert diagnosis.next_deadline(state) is None  # an active task again
    finish_all(state, agents, s(40))
    assert diagnosis.stuck_at(state) == s(100)


# ---- skip rules and guards ----------------------------------------------------------------


def test_never_two_diagnoses_at_once() -> None:
    state, agents = ticket(tasks=1)
    finish_all(state, agents, s(1))
    [_first] = diagnosis.tick(state, s(61))
    assert diagnosis.stuck_at(state) is None  # running diagnosis: no second detection
    with pytest.raises(core.Refused, match="still running"):
        diagnosis.manual(state, DiagnoseTicket(operator_token=OPERATOR), s(62))
    assert diagnosis.request_diagnosis(state, "task_failed", s(62)) == []
    assert state.timeline[-1].kind == "diagnosis_skipped"
    assert len(state.diagnoses) == 1


def test_no_automatic_diagnosis_while_a_recovery_task_is_active() -> None:
    state, agents = ticket(tasks=1)
    finish_all(state, agents, s(1))
    [effect] = diagnosis.tick(state, s(61))
    assert isinstance(effect, StartDiagnosis)
    created = diagnosis.diagnosis_finished(state, report(state, effect.input.run_id), s(62))
    assert created == ["T2"]
    assert diagnosis.request_diagnosis(state, "task_failed", s(63)) == []
    assert "recovery task T2" in state.timeline[-1].message
    # ...but an operator may still ask for one.
    assert diagnosis.manual(state, DiagnoseTicket(operator_token=OPERATOR), s(64)).effects


def test_manual_skips_cooldown_and_window_and_checks_the_operator() -> None:
    state, agents = ticket(tasks=1)
    core.claim(state, ClaimTask(**auth(agents)), s(1))  # not stuck at all
    with pytest.raises(core.Refused) as info:
        diagnosis.manual(state, DiagnoseTicket(operator_token="wrong"), s(2))
    assert info.value.field == "operator_token"
    step = diagnosis.manual(state, DiagnoseTicket(operator_token=OPERATOR, reason="look"), s(2))
    assert step.reply.run_id == "t-diagnosis-1"
    [effect] = step.effects
    assert isinstance(effect, StartDiagnosis) and effect.input.trigger == "manual"


def test_recovery_tasks_are_boosted_and_linked() -> None:
    state, agents = ticket(tasks=1)
    finish_all(state, agents, s(1))
    [effect] = diagnosis.tick(state, s(61))
    assert isinstance(effect, StartDiagnosis)
    diagnosis.diagnosis_finished(state, report(state, effect.input.run_id, ("A", "B")), s(62))
    for task_id in ("T2", "T3"):
        task = state.tasks[task_id]
        assert task.priority == "high"  # normal, boosted one level
        assert task.diagnosis_run_id == "t-diagnosis-1" and task.created_by == "t-diagnosis-1"
    run = state.diagnoses[0]
    assert run.status == "completed" and run.outcome == "pending" and run.task_ids == ["T2", "T3"]


def _fail_for_good(state: TicketState, agents: dict[str, str], at: datetime) -> list[Any]:
    effects: list[Any] = []
    for _ in range(state.spec.policy.tasks.max_retries + 1):
        task = core.claim(state, ClaimTask(**auth(agents)), at).reply.task
        assert task is not None
        effects = core.fail(
            state, FailTask(**auth(agents), task_id=task.id, reason="boom"), at
        ).effects
    return effects


def test_three_failed_runs_escalate_and_stop_diagnosing() -> None:
    """A recovery task that always fails: three failed runs → escalation, no fourth run."""
    state, agents = ticket(tasks=1, window_s=5, cooldown_s=5)
    finish_all(state, agents, s(0))
    [_effect] = diagnosis.tick(state, s(100))  # the first run: the ticket is stuck
    now = 100.0
    for n in range(1, 4):
        run = diagnosis.running_diagnosis(state)
        assert run is not None and run.number == n
        diagnosis.diagnosis_finished(state, report(state, run.run_id), s(now + 1))
        # Its recovery task fails for good: the run failed, and the failure is itself a
        # trigger (task_failed), which starts the next run while the guard allows it.
        _fail_for_good(state, agents, s(now + 2))
        assert state.diagnoses[n - 1].outcome == "failed"
        assert state.consecutive_failed_diagnoses == n
        now += 100
    assert [d.trigger for d in state.diagnoses] == ["no_result", "task_failed", "task_failed"]
    assert diagnosis.running_diagnosis(state) is None  # no fourth run
    assert diagnosis.guard_reason(state) == "3 consecutive diagnoses failed"
    assert [e.source for e in state.escalations] == ["diagnosis_guard"]
    assert state.outbox.escalations[0].severity == "SEV-2"
    assert diagnosis.stuck_at(state) is None
    assert diagnosis.tick(state, s(now + 10_000)) == []
    assert diagnosis.request_diagnosis(state, "task_failed", s(now + 10_001)) == []
    assert len(state.diagnoses) == 3 and len(state.escalations) == 1
    assert diagnosis.display_status(state) == "escalated"


def test_a_completed_recovery_task_resets_the_failure_count() -> None:
    state, agents = ticket(tasks=1, window_s=5, cooldown_s=5)
    finish_all(state, agents, s(0))
    state.consecutive_failed_diagnoses = 2
    effect = started(diagnosis.tick(state, s(10)))
    diagnosis.diagnosis_finished(state, report(state, effect.input.run_id), s(11))
    finish_all(state, agents, s(12))
    assert state.consecutive_failed_diagnoses == 0
    assert state.diagnoses[0].outcome == "recovered"


def test_ten_runs_in_total_escalate() -> None:
    state, agents = ticket(tasks=1, window_s=1, cooldown_s=1, max_runs=10)
    now = 0.0
    finish_all(state, agents, s(now))
    for _ in range(10):
        now += 10
        effect = started(diagnosis.tick(state, s(now)))
        diagnosis.diagnosis_finished(state, report(state, effect.input.run_id), s(now))
        finish_all(state, agents, s(now))
    now += 10
    assert diagnosis.tick(state, s(now)) == []
    assert diagnosis.guard_reason(state) == "10 diagnoses ran (the limit is 10)"
    # The escalation is made the first time a trigger meets the guard.
    assert diagnosis.request_diagnosis(state, "task_failed", s(now)) == []
    assert len(state.escalations) == 1


def test_a_failed_diagnosis_counts_as_a_failure() -> None:
    state, agents = ticket(tasks=1)
    finish_all(state, agents, s(0))
    effect = started(diagnosis.tick(state, s(60)))
    diagnosis.diagnosis_failed(state, effect.input.run_id, "evidence timed out", s(61))
    assert state.diagnoses[0].status == "failed"
    assert state.consecutive_failed_diagnoses == 1
    assert diagnosis.stuck_at(state) == s(120)  # cooldown from the failed run


def test_task_failed_triggers_a_diagnosis() -> None:
    state, agents = ticket(tasks=1)
    effects = _fail_for_good(state, agents, s(5))
    assert len(effects) == 1 and effects[0].input.trigger == "task_failed"
    assert "T1 failed 4 times" in effects[0].input.reason


def test_counters_survive_a_round_trip_through_json() -> None:
    """Continue-as-new carries the state as JSON: the counters must come back intact."""
    state, agents = ticket(tasks=1)
    finish_all(state, agents, s(0))
    effect = started(diagnosis.tick(state, s(60)))
    diagnosis.diagnosis_failed(state, effect.input.run_id, "x", s(61))
    carried = TicketState.model_validate_json(state.model_dump_json())
    assert carried.consecutive_failed_diagnoses == 1
    assert carried.last_diagnosis_at == s(60)
    assert diagnosis.stuck_at(carried) == diagnosis.stuck_at(state)
    assert carried.diagnoses == state.diagnoses


def test_snapshot_has_counts_recent_tasks_and_agents() -> None:
    state, agents = ticket(tasks=20)
    finish_all(state, agents, s(3))
    snap = diagnosis.snapshot(state, s(100))
    assert snap.total_tasks == 20 and snap.counts_by_status == {"done": 20}
    assert len(snap.recent_tasks) == 15
    assert {a.kind for a in snap.agents} == {"worker", "validator"}
    assert snap.results == [] and snap.validated_version is None


def test_a_validated_result_counts_as_recovery_for_a_pending_run() -> None:
    """The validator may be faster than the worker marking its recovery task done."""
    state, agents = ticket(tasks=1)
    finish_all(state, agents, s(0))
    effect = started(diagnosis.tick(state, s(60)))
    diagnosis.diagnosis_finished(state, report(state, effect.input.run_id), s(61))
    assert state.diagnoses[0].outcome == "pending"
    core.submit_result(state, SubmitResult(**auth(agents), content="# r"), s(62))
    core.review_result(state, ReviewResult(**auth(agents, "v"), version=1, passed=True), s(63))
    assert state.status == "completed"
    assert state.diagnoses[0].outcome == "recovered"
    assert state.outbox.diagnostic_runs[-1].outcome == "recovered"
