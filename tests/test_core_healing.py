"""Healing v2 in the pure core (DESIGN §11): blocked is not active, replace_task rewires the
dependants of a task that failed for good, a spent budget escalates at once."""

from __future__ import annotations

from typing import Any

from core import deadlines, diagnosis
from core import ticket as core
from core.common import blocked_tasks, moving_tasks, open_tasks
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
    DiagnoseTicket,
    FailTask,
    RegisterAgent,
    SubmitResult,
)
from models.spec import parse_spec
from tests.test_core_diagnosis import OPERATOR, auth, finish_all, report, s, started, ticket


def chain_ticket(*, healing_v2: bool = True) -> tuple[TicketState, dict[str, str]]:
    """a <- b <- c (c waits on b, b on a), plus an independent task d."""
    spec = parse_spec(
        {
            "id": "t",
            "title": "Build login system",
            "tasks": [
                {"key": "a", "phase": "implementation", "title": "Set up the database"},
                {"key": "b", "phase": "implementation", "title": "Users", "depends_on": ["a"]},
                {"key": "c", "phase": "testing", "title": "Test users", "depends_on": ["b"]},
                {"key": "d", "phase": "implementation", "title": "Docs"},
            ],
            "policy": {"stuck": {"window_s": 5, "cooldown_s": 5}, "tasks": {"max_retries": 0}},
        }
    )
    state = core.new_ticket(spec, s(0))
    state.operator_token_sha256 = core.hash_token(OPERATOR)
    state.healing_v2 = healing_v2
    reply = core.register(state, RegisterAgent(name="w", kind="worker"), s(0), token="w")
    return state, {"w": reply.reply.agent_id}


def claim(state: TicketState, agents: dict[str, str], at: float) -> str | None:
    task = core.claim(state, ClaimTask(**auth(agents)), s(at)).reply.task
    return task.id if task else None


def fail_for_good(state: TicketState, agents: dict[str, str], task_id: str, at: float) -> Any:
    reason = "ModuleNotFoundError: No module named 'bcrypt'"
    return core.fail(state, FailTask(**auth(agents), task_id=task_id, reason=reason), s(at))


def complete(state: TicketState, agents: dict[str, str], task_id: str, at: float) -> None:
    msg = CompleteTask(**auth(agents), task_id=task_id, result="# ok", result_type="fix")
    core.complete(state, msg, s(at))


def one_hypothesis_report(
    run_id: str, trigger: str, signature: str, statement: str, rec: Recommendation
) -> DiagnosisReport:
    return DiagnosisReport(
        run_id=run_id,
        trigger=trigger,  # type: ignore[arg-type]
        hypotheses=HypothesisSet(
            hypotheses=[
                Hypothesis(
                    signature=signature,  # type: ignore[arg-type]
                    statement=statement,
                    likelihood=0.9,
                    recommendations=[rec],
                )
            ]
        ),
        plan=RecoveryPlan(tasks=[rec]),
        evidence_summary="summary",
        started_at=s(0),
        finished_at=s(1),
    )


def replace_report(run_id: str, replaces: str) -> DiagnosisReport:
    rec = Recommendation(
        title=f"Redo failed dependency {replaces}",
        phase="implementation",
        remedy="replace_task",
        replaces=replaces,
    )
    return one_hypothesis_report(
        run_id,
        "task_failed",
        "dependency_deadlock",
        "T2 and T3 wait on T1, which failed for good",
        rec,
    )


def test_tasks_behind_a_failed_dependency_are_blocked_not_moving() -> None:
    state, agents = chain_ticket()
    assert claim(state, agents, 1) == "T1"
    fail_for_good(state, agents, "T1", 2)
    assert blocked_tasks(state) == {"T2", "T3"}  # T3 through T2
    assert open_tasks(state) == 3 and moving_tasks(state) == 1  # d (T4) can still move
    assert claim(state, agents, 3) == "T4"
    complete(state, agents, "T4", 4)
    assert moving_tasks(state) == 0


def test_a_ticket_with_only_blocked_tasks_is_stuck_and_says_why() -> None:
    state, agents = chain_ticket()
    claim(state, agents, 1)
    effects = fail_for_good(state, agents, "T1", 2).effects
    run = started(effects)  # task_failed: diagnosed at once
    diagnosis.diagnosis_finished(state, report(state, run.input.run_id), s(3))
    # The recovery task (create_task) is done, but T2 and T3 still wait on the failed T1.
    claim(state, agents, 4)
    complete(state, agents, "T5", 4)
    claim(state, agents, 5)
    complete(state, agents, "T4", 5)
    assert diagnosis.stuck_at(state) == s(10)  # not None: blocked is not active
    effect = started(diagnosis.tick(state, s(10)))
    assert effect.input.reason.startswith("only blocked tasks remain (T2, T3")
    assert state.stuck_since == s(10)
    diagnosis.note_activity(state)
    assert diagnosis.display_status(state) == "diagnosing"


def test_before_healing_v2_blocked_tasks_count_as_active() -> None:
    """Runs recorded before the patch keep the old rule (and replay the same)."""
    state, agents = chain_ticket(healing_v2=False)
    claim(state, agents, 1)
    fail_for_good(state, agents, "T1", 2)
    claim(state, agents, 3)
    complete(state, agents, "T4", 3)
    assert moving_tasks(state) == 2 and diagnosis.stuck_at(state) is None


def test_replace_task_rewires_the_dependants_and_the_work_goes_on() -> None:
    state, agents = chain_ticket()
    claim(state, agents, 1)
    run = started(fail_for_good(state, agents, "T1", 2).effects)
    created = diagnosis.diagnosis_finished(state, replace_report(run.input.run_id, "T1"), s(3))
    assert created == ["T5"]
    assert state.tasks["T2"].depends_on == ["T5"] and state.tasks["T5"].replaces == "T1"
    assert state.tasks["T3"].depends_on == ["T2"]  # waits on T2 as before
    assert blocked_tasks(state) == set()
    assert state.timeline[-2].kind == "task_replaced"
    assert "T5 replaces failed T1; T2 now wait on T5" in state.timeline[-2].message
    # The replacement is done: T2 becomes claimable, the run recovered the ticket.
    assert claim(state, agents, 4) == "T5"
    complete(state, agents, "T5", 5)
    assert state.diagnoses[0].outcome == "recovered"
    assert claim(state, agents, 6) == "T2"


def test_replace_task_leaves_a_task_that_did_not_fail_alone() -> None:
    state, _ = chain_ticket()
    effect = diagnosis.manual(
        state, DiagnoseTicket(operator_token=OPERATOR, operator="op", reason="x"), s(1)
    )
    run_id = effect.reply.run_id
    diagnosis.diagnosis_finished(state, replace_report(run_id, "T1"), s(2))
    assert state.tasks["T2"].depends_on == ["T1"]
    assert state.timeline[-2].kind == "remedy_skipped"
    assert "is pending" in state.timeline[-2].message


def test_a_spent_budget_escalates_at_once_instead_of_leaving_the_ticket_open() -> None:
    state, agents = ticket(
        tasks=1, window_s=1, cooldown_s=1, max_runs=3, max_consecutive_failures=10
    )
    state.healing_v2 = True
    finish_all(state, agents, s(0))
    now = 0.0
    for _ in range(3):  # each run's task is done, yet the ticket stays stuck
        now += 10
        effect = started(diagnosis.tick(state, s(now)))
        diagnosis.diagnosis_finished(state, report(state, effect.input.run_id), s(now))
        finish_all(state, agents, s(now))
    assert diagnosis.guard_reason(state) == "3 diagnoses ran (the limit is 3)"
    assert diagnosis.stuck_at(state) is not None  # fires once more: to tell a person
    assert diagnosis.tick(state, s(now + 10)) == []
    [escalation] = state.escalations
    assert escalation.source == "diagnosis_guard" and escalation.severity == "SEV-2"
    assert "3 diagnoses ran" in escalation.reason
    assert diagnosis.display_status(state) == "escalated"
    assert diagnosis.stuck_at(state) is None  # and then waits for the person
    assert diagnosis.tick(state, s(now + 1000)) == [] and len(state.escalations) == 1


def missing_result_report(run_id: str) -> DiagnosisReport:
    rec = Recommendation(
        title="Submit final result with evidence", phase="testing", type="submission"
    )
    return one_hypothesis_report(
        run_id, "no_result", "missing_result_submission", "nobody submitted the final result", rec
    )


def stuck_and_diagnosed(at: float = 10) -> tuple[TicketState, dict[str, str], str]:
    """All work done, nothing submitted: diagnosed at ``at``; returns the recovery task id."""
    state, agents = ticket(tasks=1, window_s=5, cooldown_s=5)
    state.healing_v2 = True
    finish_all(state, agents, s(0))
    effect = started(diagnosis.tick(state, s(at)))
    [task_id] = diagnosis.diagnosis_finished(
        state, missing_result_report(effect.input.run_id), s(at + 1)
    )
    assert state.diagnoses[0].condition == "result_submitted"
    return state, agents, task_id


def test_a_recovery_task_done_while_its_condition_persists_is_a_failed_diagnosis() -> None:
    state, agents, task_id = stuck_and_diagnosed()
    assert claim(state, agents, 12) == task_id
    complete(state, agents, task_id, 13)  # "done", but no result was submitted
    run = state.diagnoses[0]
    assert run.outcome == "pending" and run.verify_by == s(18)  # one stuck window
    assert "diagnosis_verifying" in [e.kind for e in state.timeline[-2:]]
    assert deadlines.next_deadline(state).at == s(18)  # type: ignore[union-attr]
    effects = deadlines.tick(state, s(18))
    assert run.outcome == "failed" and state.consecutive_failed_diagnoses == 1
    assert any(e.kind == "diagnosis_ineffective" for e in state.timeline)
    # The ticket is still stuck: the next diagnosis starts at once (cooldown passed).
    assert started(effects).input.number == 2


def test_the_condition_clearing_within_the_window_is_a_recovery() -> None:
    state, agents, task_id = stuck_and_diagnosed()
    state.consecutive_failed_diagnoses = 2
    claim(state, agents, 12)
    complete(state, agents, task_id, 13)
    core.submit_result(state, SubmitResult(**auth(agents), content="# Result"), s(15))
    diagnosis.settle_runs(state, s(15))  # the workflow calls it after every change
    run = state.diagnoses[0]
    assert run.outcome == "recovered" and run.verify_by is None
    assert state.consecutive_failed_diagnoses == 0
    assert "a result version is submitted: done" in state.timeline[-1].message
    assert deadlines.tick(state, s(18)) == [] and run.outcome == "recovered"


def test_a_submission_made_by_the_recovery_task_recovers_at_once() -> None:
    state, agents, task_id = stuck_and_diagnosed()
    claim(state, agents, 12)
    core.submit_result(state, SubmitResult(**auth(agents), content="# Result"), s(13))
    complete(state, agents, task_id, 14)
    assert state.diagnoses[0].outcome == "recovered"


def test_a_replacement_that_fails_too_does_not_count_as_unblocking() -> None:
    state, agents = chain_ticket()
    claim(state, agents, 1)
    run = started(fail_for_good(state, agents, "T1", 2).effects)
    diagnosis.diagnosis_finished(state, replace_report(run.input.run_id, "T1"), s(3))
    assert state.diagnoses[0].subjects == ["T2"]  # T3 waits on T2, not on T1
    assert claim(state, agents, 4) == "T5"
    fail_for_good(state, agents, "T5", 5)  # the replacement failed for good as well
    assert state.diagnoses[0].outcome == "failed"  # all its tasks failed: no need to wait
    assert state.consecutive_failed_diagnoses == 1


def test_a_run_with_a_done_and_a_failed_task_is_verified() -> None:
    state, agents = chain_ticket()
    claim(state, agents, 1)
    run = started(fail_for_good(state, agents, "T1", 2).effects)
    report = replace_report(run.input.run_id, "T1")
    extra = Recommendation(title="Check the environment", phase="implementation")
    report.plan.tasks.append(extra)
    assert diagnosis.diagnosis_finished(state, report, s(3)) == ["T5", "T6"]
    assert claim(state, agents, 4) == "T5"
    fail_for_good(state, agents, "T5", 5)
    assert claim(state, agents, 6) == "T6"
    complete(state, agents, "T6", 7)
    assert state.diagnoses[0].outcome == "pending"
    assert state.diagnoses[0].verify_by == s(12)
    deadlines.tick(state, s(12))
    assert state.diagnoses[0].outcome == "failed"  # T2 is still blocked (behind T5)


def test_the_escalate_remedy_tells_a_person_and_stops_automatic_diagnoses() -> None:
    state, agents = ticket(tasks=1, window_s=5, cooldown_s=5)
    state.healing_v2 = True
    finish_all(state, agents, s(0))
    effect = started(diagnosis.tick(state, s(10)))
    rec = Recommendation(
        title="No validator can review the pending work",
        description="Start a validator agent",
        phase="testing",
        remedy="escalate",
    )
    rep = report(state, effect.input.run_id)
    rep.plan.tasks = [rec]
    assert diagnosis.diagnosis_finished(state, rep, s(11)) == []  # no task for anyone
    [escalation] = state.escalations
    assert escalation.source == "diagnosis_ladder" and escalation.severity == "SEV-2"
    assert "No validator can review the pending work: Start a validator agent" in escalation.reason
    assert diagnosis.guard_reason(state) is not None
    assert diagnosis.display_status(state) == "escalated"
    assert diagnosis.stuck_at(state) is None  # waits for the person, does not loop
    assert diagnosis.request_diagnosis(state, "task_failed", s(100)) == []


def test_a_result_awaiting_its_verdict_is_not_stuck_until_its_timeout() -> None:
    """Healthy fleets were diagnosed when the validator was slow: waiting for a verdict is
    the validator's turn, and the validator timeout covers a verdict that never comes."""
    state, agents = ticket(tasks=1, window_s=5, cooldown_s=5)
    state.healing_v2 = True
    finish_all(state, agents, s(0))
    core.submit_result(state, SubmitResult(**auth(agents), content="# Result"), s(1))
    assert diagnosis.stuck_at(state) is None
    state.results[0].timeout_reported = True  # the validator timeout fired for it
    assert diagnosis.stuck_at(state) is not None


def test_spawn_agent_starts_an_on_demand_validator_and_is_verified_by_its_verdict() -> None:
    from core import health
    from core.common import SpawnAgentProcesses

    spec = parse_spec(
        {
            "id": "t",
            "title": "Fix the session bug",
            "tasks": [
                {"key": "fix", "phase": "implementation", "title": "Fix", "validation": True}
            ],
            "agents": [
                {
                    "name": "vera",
                    "kind": "validator",
                    "runtime": "local-process",
                    "command": ["run-vera"],
                    "spawn": "on_demand",
                }
            ],
            "policy": {"stuck": {"window_s": 5, "cooldown_s": 5}},
        }
    )
    state = core.new_ticket(spec, s(0))
    state.operator_token_sha256 = core.hash_token(OPERATOR)
    state.healing_v2 = True
    assert health.start(state) == []  # on demand: not started with the ticket
    assert "vera" in state.lineages
    snap = diagnosis.snapshot(state, s(1))
    assert [(a.name, a.kind, a.running) for a in snap.spawnable] == [("vera", "validator", False)]
    effect = diagnosis.manual(
        state, DiagnoseTicket(operator_token=OPERATOR, operator="op", reason="x"), s(1)
    )
    rec = Recommendation(
        title="Start the on-demand validator vera",
        phase="implementation",
        remedy="spawn_agent",
        agent="vera",
    )
    rep = replace_report(effect.reply.run_id, "T1")
    rep.hypotheses.hypotheses[0].signature = "validator_unavailable"
    rep.plan.tasks = [rec]
    effects: list[Any] = []
    assert diagnosis.diagnosis_finished(state, rep, s(2), effects) == []
    [spawn] = effects
    assert isinstance(spawn, SpawnAgentProcesses) and spawn.specs[0].name == "vera"
    run = state.diagnoses[0]
    assert run.spawned == ["vera"] and run.outcome == "pending"
    assert run.condition == "validator_verdict"
    diagnosis.settle_runs(state, s(2))
    # A validator has as long as any validator has for a verdict (the validator timeout).
    assert run.verify_by == s(2 + 600)
    # Asking again while it is running does nothing.
    state.lineages["vera"].process = object()  # type: ignore[assignment]
    assert diagnosis._spawn_on_demand(state, "vera", "r2", s(3)) is None
    assert "it is running" in state.timeline[-1].message


def test_a_run_still_verifying_when_another_diagnosis_starts_failed() -> None:
    """No credit for a later run's work: the ticket needed diagnosing again, so the earlier
    run's remedies did not clear what they were for (and the ladder sees it failed)."""
    state, agents, task_id = stuck_and_diagnosed()
    claim(state, agents, 12)
    complete(state, agents, task_id, 13)  # done, nothing submitted: verifying until 18
    effect = diagnosis.manual(
        state, DiagnoseTicket(operator_token=OPERATOR, operator="op", reason="x"), s(14)
    )
    assert effect.reply.run_id  # manual runs do not settle earlier runs
    assert state.diagnoses[0].outcome == "pending"
    diagnosis.diagnosis_finished(state, report(state, effect.reply.run_id), s(15))
    finish_all(state, agents, s(15))
    started(diagnosis.request_diagnosis(state, "task_failed", s(30), reason="again"))
    assert state.diagnoses[0].outcome == "failed"
    assert any("needed another diagnosis (task_failed)" in e.message for e in state.timeline)


def test_moving_means_a_task_moved_after_the_remedies_not_merely_pending() -> None:
    """Found in review: a run with condition 'moving' counted as recovered at once because an
    unrelated task was pending."""
    state, agents = chain_ticket()
    claim(state, agents, 1)
    run = started(fail_for_good(state, agents, "T1", 2).effects)
    rep = report(state, run.input.run_id)  # signature "other": condition "moving"
    diagnosis.diagnosis_finished(state, rep, s(3))
    diagnosis.settle_runs(state, s(3))
    assert state.diagnoses[0].condition == "moving"
    assert state.diagnoses[0].outcome == "pending"  # T4 is pending: that is not movement
    assert claim(state, agents, 4) == "T5"  # its own recovery task: not what it is about
    complete(state, agents, "T5", 5)
    assert state.diagnoses[0].outcome == "pending" and state.diagnoses[0].verify_by == s(10)
    assert claim(state, agents, 6) == "T4"  # an independent task gets claimed: it moved
    diagnosis.settle_runs(state, s(6))
    assert state.diagnoses[0].outcome == "recovered"


def test_a_run_whose_remedies_could_not_be_applied_failed() -> None:
    state, _ = chain_ticket()
    effect = diagnosis.manual(
        state, DiagnoseTicket(operator_token=OPERATOR, operator="op", reason="x"), s(1)
    )
    rec = Recommendation(
        title="Retry T1", phase="implementation", remedy="retry_task", task_id="T1"
    )  # T1 has not failed: nothing to retry
    rep = report(state, effect.reply.run_id)
    rep.plan.tasks = [rec]
    assert diagnosis.diagnosis_finished(state, rep, s(2)) == []
    assert state.diagnoses[0].outcome == "failed"
    assert state.consecutive_failed_diagnoses == 1
