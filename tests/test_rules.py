"""The built-in rule engine: one scenario per signature, ranking, and recovery planning."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from diagnosis.rules import (
    INVESTIGATE_TITLE,
    SUBMIT_RESULT_TITLE,
    crash_looping_agent,
    dependency_deadlock,
    environment_error,
    error_line,
    missing_result_submission,
    phase_without_tasks,
    plan_recovery,
    premature_completion,
    rank,
    rule_hypotheses,
    validation_loop,
    validator_unavailable,
)
from models.diagnosis import (
    MAX_HYPOTHESES,
    Evidence,
    Hypothesis,
    HypothesisSet,
    Recommendation,
    ReviewEvidence,
    SnapshotAgent,
    SnapshotDiagnosis,
    SnapshotPhase,
    SnapshotResult,
    SnapshotTask,
    TicketSnapshot,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
PHASES = ["requirements", "implementation", "testing"]


def task(
    number: int,
    status: str = "done",
    phase: str = "implementation",
    **fields: Any,
) -> SnapshotTask:
    return SnapshotTask(
        **{
            "id": f"T{number}",
            "phase": phase,
            "title": f"Task {number}",
            "type": "implementation",
            "status": status,
            "priority": "normal",
            "assigned_agent": "A1",
            "updated_at": T0 + timedelta(minutes=number),
            **fields,
        }
    )


def agent(agent_id: str = "A1", **fields: Any) -> SnapshotAgent:
    return SnapshotAgent(
        **{"id": agent_id, "name": f"agent-{agent_id.lower()}", "kind": "worker", "state": "idle"}
        | fields
    )


def evidence(
    tasks: list[SnapshotTask],
    *,
    agents: list[SnapshotAgent] | None = None,
    results: list[SnapshotResult] | None = None,
    phases: list[SnapshotPhase] | None = None,
    reviews: list[ReviewEvidence] | None = None,
    diagnoses: list[SnapshotDiagnosis] | None = None,
    criteria: list[str] | None = None,
    trigger: str = "no_result",
) -> Evidence:
    """Evidence whose counts are computed from ``tasks`` (all of them shown)."""
    phases = phases or [SnapshotPhase(name=p, required=True) for p in PHASES]
    by_phase: dict[str, dict[str, int]] = {p.name: {} for p in phases}
    for t in tasks:
        counts = by_phase.setdefault(t.phase, {})
        counts[t.status] = counts.get(t.status, 0) + 1
    last = max((t.updated_at for t in tasks), default=T0)
    snapshot = TicketSnapshot(
        ticket_id="login",
        title="Build login system",
        goal="Users can log in",
        result_criteria=criteria if criteria is not None else ["login works", "tests pass"],
        status="open",
        phases=phases,
        counts_by_status=dict(Counter(t.status for t in tasks)),
        counts_by_phase=by_phase,
        total_tasks=len(tasks),
        recent_tasks=sorted(tasks, key=lambda t: t.updated_at, reverse=True)[:15],
        problem_tasks=[t for t in tasks if t.status == "failed" or t.failures][:15],
        agents=agents if agents is not None else [agent()],
        results=results or [],
        diagnoses=diagnoses or [],
        last_activity_at=last,
        taken_at=last + timedelta(minutes=2),
    )
    return Evidence(
        run_id="login/d1",
        trigger=trigger,  # type: ignore[arg-type]
        snapshot=snapshot,
        reviews=reviews or [],
        collected_at=snapshot.taken_at,
    )


def seed_scenario() -> Evidence:
    """DESIGN §10: 15 tasks over 3 phases, all done, no result submitted."""
    return evidence([task(n, "done", PHASES[(n - 1) // 5]) for n in range(1, 16)])


def result(version: int, status: str, feedback: str | None = None) -> SnapshotResult:
    return SnapshotResult(
        version=version,
        agent_id="A1",
        status=status,
        preview="# Login",
        feedback=feedback,
        validator_id="V1" if status != "pending_validation" else None,
        submitted_at=T0 + timedelta(hours=version),
    )


def assert_well_formed(h: Hypothesis, phases: list[str] = PHASES) -> None:
    assert 0.0 <= h.likelihood <= 1.0
    assert h.statement and h.evidence
    assert h.recommendations
    for rec in h.recommendations:
        assert rec.phase in phases, rec


# ---- the seed scenario ----------------------------------------------------------------------


def test_seed_scenario_ranks_missing_result_submission_first() -> None:
    found = rule_hypotheses(seed_scenario())
    assert found.generator == "rules" and found.fallback_reason is None
    top = found.hypotheses[0]
    assert top.signature == "missing_result_submission"
    assert top.likelihood >= 0.9
    rec = top.recommendations[0]
    assert rec.title == SUBMIT_RESULT_TITLE == "Submit final result with evidence"
    assert rec.type == "submission" and rec.priority == "high" and rec.phase == "testing"
    assert "evidence" in rec.description and "criterion" in rec.description
    assert "submit the final result" in rec.description
    assert "login works" in rec.description and "tests pass" in rec.description
    assert any("15 of 15 tasks are done across 3 phases" in e for e in top.evidence)
    assert any("0 result versions" in e for e in top.evidence)

    plan = plan_recovery(found, seed_scenario().snapshot)
    assert [t.title for t in plan.tasks] == [SUBMIT_RESULT_TITLE]


def test_missing_result_submission_needs_nearly_all_done_and_no_result() -> None:
    mostly = [task(n, "done") for n in range(1, 10)] + [task(10, "cancelled")]
    assert missing_result_submission(evidence(mostly)) is not None
    half = [task(n, "done") for n in range(1, 5)] + [task(n, "cancelled") for n in range(5, 9)]
    assert missing_result_submission(evidence(half)) is None
    active = [task(n, "done") for n in range(1, 10)] + [task(10, "running")]
    assert missing_result_submission(evidence(active)) is None
    submitted = evidence([task(1)], results=[result(1, "pending_validation")])
    assert missing_result_submission(submitted) is None
    assert missing_result_submission(evidence([])) is None
    all_done = missing_result_submission(seed_scenario())
    nearly = missing_result_submission(evidence(mostly))
    assert all_done is not None and nearly is not None
    assert nearly.likelihood < all_done.likelihood
    assert any("cancelled" in c for c in nearly.counterpoints)


# ---- one scenario per signature -------------------------------------------------------------


def test_premature_completion() -> None:
    ev = evidence(
        [task(n) for n in range(1, 6)],
        results=[result(1, "rejected", "The tests do not pass: 3 failures in test_login.py")],
    )
    h = premature_completion(ev)
    assert h is not None and h.signature == "premature_completion"
    assert_well_formed(h)
    assert h.likelihood >= 0.8
    assert any("tests pass" in e for e in h.evidence)
    assert any("3 failures in test_login.py" in e for e in h.evidence)
    titles = [r.title for r in h.recommendations]
    assert "Meet result criterion: tests pass" in titles
    assert "Resubmit final result with evidence" in titles
    criterion = next(r for r in h.recommendations if r.title.endswith("tests pass"))
    assert criterion.phase == "testing"
    # the top of the ranking for this ticket
    assert rule_hypotheses(ev).hypotheses[0].signature == "premature_completion"


def test_premature_completion_needs_a_rejected_latest_result_about_criteria() -> None:
    done = [task(1)]
    assert premature_completion(evidence(done, results=[result(1, "validated")])) is None
    assert premature_completion(evidence(done, results=[result(1, "rejected", "ok")])) is None
    later = [result(1, "rejected", "tests do not pass"), result(2, "pending_validation")]
    assert premature_completion(evidence(done, results=later)) is None


def test_validation_loop_on_the_same_criterion() -> None:
    ev = evidence(
        [task(1), task(2, "needs_work", "testing")],
        results=[
            result(1, "rejected", "login works only for admins, not for normal users"),
            result(2, "rejected", "still: login works for admins but normal users get a 500"),
        ],
    )
    h = validation_loop(ev)
    assert h is not None and h.signature == "validation_loop"
    assert_well_formed(h)
    assert 'criterion "login works"' in h.statement
    assert any(e.startswith("result v1 rejected") for e in h.evidence)
    assert any(e.startswith("result v2 rejected") for e in h.evidence)
    assert h.recommendations[0].title == "Fix the recurring validation failure: login works"


def test_validation_loop_on_similar_task_review_feedback() -> None:
    feedback = "The password reset email link expires immediately; fix the expiry check"
    reviews = [
        ReviewEvidence(
            subject_kind="task",
            subject_id="T3",
            iteration=i,
            validator_id="V1",
            passed=False,
            feedback=feedback if i == 1 else feedback + " (again)",
            created_at=T0 + timedelta(minutes=10 * i),
        )
        for i in (1, 2)
    ]
    ev = evidence([task(1), task(3, "needs_work", "implementation")], reviews=reviews)
    h = validation_loop(ev)
    assert h is not None
    assert any("task T3 iteration 1" in e for e in h.evidence)
    assert any("word overlap" in e for e in h.evidence)
    assert h.recommendations[0].phase == "implementation"  # the reviewed task's phase


def test_no_validation_loop_for_unrelated_rejections() -> None:
    ev = evidence(
        [task(1)],
        criteria=["login works", "tests pass"],
        results=[
            result(1, "rejected", "login works for nobody"),
            result(2, "rejected", "the coverage report is missing from the repository"),
        ],
    )
    assert validation_loop(ev) is None


@pytest.mark.parametrize(
    ("fields", "minimum"),
    [
        ({"restarts": 4, "state": "quarantined"}, 0.8),
        ({"restarts": 2, "state": "running"}, 0.6),
        ({"restarts": 0, "state": "unresponsive"}, 0.5),
    ],
)
def test_crash_looping_agent(fields: dict[str, Any], minimum: float) -> None:
    ev = evidence(
        [task(1, "done"), task(2, "assigned", assigned_agent="A2")],
        agents=[agent("A1"), agent("A2", tasks=["T2"], **fields)],
    )
    h = crash_looping_agent(ev)
    assert h is not None and h.signature == "crash_looping_agent"
    assert_well_formed(h)
    assert h.likelihood >= minimum
    assert "agent-a2" in h.statement
    assert any(f"{fields['restarts']} restarts" in e and "T2" in e for e in h.evidence)
    assert h.recommendations[0].phase == "implementation"  # the phase of the task it holds


def test_no_crash_loop_for_healthy_agents() -> None:
    assert crash_looping_agent(evidence([task(1)], agents=[agent(restarts=1)])) is None


def test_environment_error_groups_the_same_normalised_error() -> None:
    ev = evidence(
        [
            task(
                4,
                "failed",
                failures=3,
                failure_reason="Traceback (most recent call last):\n  File "
                "\"/home/a/src/app.py\", line 12\nModuleNotFoundError: No module named 'bcrypt'",
            ),
            task(
                7,
                "pending",
                failures=1,
                assigned_agent="A2",
                failure_reason="ModuleNotFoundError: No module named 'bcrypt'",
            ),
            task(9, "failed", failures=3, failure_reason="AssertionError: 2 != 3"),
        ],
    )
    h = environment_error(ev)
    assert h is not None and h.signature == "environment_error"
    assert_well_formed(h)
    assert "ModuleNotFoundError: No module named 'bcrypt'" in h.statement
    assert any(e.startswith("T4 ") for e in h.evidence)
    assert any(e.startswith("T7 ") for e in h.evidence)
    assert not any(e.startswith("T9 ") for e in h.evidence)
    assert h.recommendations[0].title.startswith("Fix the environment: ModuleNotFoundError")
    assert any("T4" in r.title for r in h.recommendations[1:])  # redo the task that died


def test_a_credential_error_goes_to_a_person_not_to_the_agents() -> None:
    """Every task of a coding CLI fails on a missing API key: a task to fix the environment
    would go to the same CLI and fail the same way; a person must give it a credential."""
    reason = "the CLI exited with code 1; stderr tail:\nError: Invalid API key · Please run /login"
    ev = evidence(
        [task(2, "failed", failures=4, failure_reason=reason, failure_reasons=[reason] * 4)]
    )
    h = environment_error(ev)
    assert h is not None and h.signature == "environment_error"
    assert_well_formed(h)
    assert "credential" in h.statement
    (rec,) = h.recommendations
    assert rec.remedy == "escalate" and "Invalid API key" in rec.title


def test_error_line_normalises_paths_and_numbers() -> None:
    a = error_line("FileNotFoundError: [Errno 2] No such file: '/tmp/run-1234/config.yaml'")
    b = error_line("FileNotFoundError: [Errno 2] No such file: '/var/x/run-99/config.yaml'")
    assert a == b == "FileNotFoundError: [Errno <n>] No such file: '<path>'"
    assert error_line("step 1 ok\nfatal: could not read Username\nhint: x") == (
        "fatal: could not read Username"
    )


def test_no_environment_error_for_a_single_failure() -> None:
    ev = evidence([task(1, "failed", failure_reason="ImportError: cannot import name 'x'")])
    assert environment_error(ev) is None


def test_dependency_deadlock_is_transitive() -> None:
    ev = evidence(
        [
            task(1, "done", "requirements"),
            task(2, "failed", failures=3, failure_reason="compiler crashed", depends_on=["T1"]),
            task(3, "pending", "testing", depends_on=["T2"]),
            task(4, "pending", "testing", depends_on=["T3"]),
            task(5, "pending", "testing", depends_on=["T1"]),
        ],
    )
    h = dependency_deadlock(ev)
    assert h is not None and h.signature == "dependency_deadlock"
    assert_well_formed(h)
    assert "T3, T4" in h.statement and "T5" not in h.statement
    assert any(e.startswith("T3 ") and "T2 (failed" in e for e in h.evidence)
    assert any(e.startswith("T4 ") and "itself blocked" in e for e in h.evidence)
    # First rung: T2 goes back to pending with fresh retries.
    rec = h.recommendations[0]
    assert rec.title == "Retry failed dependency T2: Task 2"
    assert rec.phase == "implementation"
    assert (rec.remedy, rec.task_id) == ("retry_task", "T2")
    # Next rung, once a retry of T2 was tried: a new task takes over T2's dependants.
    ev.snapshot.diagnoses = [
        SnapshotDiagnosis(
            run_id="login-diagnosis-1",
            trigger="task_failed",
            status="completed",
            outcome="failed",
            started_at=T0,
            top_signature="dependency_deadlock",
            plan=[rec.key()],
        )
    ]
    h = dependency_deadlock(ev)
    assert h is not None
    rec = h.recommendations[0]
    assert rec.title == "Redo failed dependency T2: Task 2"
    assert rec.remedy == "replace_task" and rec.replaces == "T2"
    assert "the tasks that waited on T2 wait on this task instead" in rec.description


def test_no_deadlock_when_dependencies_can_still_finish() -> None:
    ev = evidence([task(1, "running"), task(2, "pending", depends_on=["T1"])])
    assert dependency_deadlock(ev) is None


def test_phase_without_tasks() -> None:
    phases = [
        SnapshotPhase(name="requirements", required=True),
        SnapshotPhase(name="implementation", required=True),
        SnapshotPhase(
            name="testing",
            required=True,
            description="Prove it works",
            done_definitions=["tests written and passing"],
        ),
        SnapshotPhase(name="docs", required=False),
    ]
    ev = evidence([task(1, "done", "requirements"), task(2, "done")], phases=phases)
    h = phase_without_tasks(ev)
    assert h is not None and h.signature == "phase_without_tasks"
    assert_well_formed(h, [p.name for p in phases])
    assert "testing" in h.statement and "docs" not in h.statement
    rec = h.recommendations[0]
    assert rec.title == "Plan and do the testing phase"
    assert rec.phase == "testing" and rec.type == "test"
    assert "tests written and passing" in rec.description


def test_validator_unavailable() -> None:
    ev = evidence(
        [task(1), task(2, "under_review")],
        agents=[agent("A1"), agent("V1", kind="validator", state="unresponsive")],
        results=[result(1, "pending_validation")],
    )
    h = validator_unavailable(ev)
    assert h is not None and h.signature == "validator_unavailable"
    assert_well_formed(h)
    assert any("result v1" in e and "awaits validation" in e for e in h.evidence)
    assert any("1 task is under review (T2)" in e for e in h.evidence)
    assert any("validator V1" in e and "unresponsive" in e for e in h.evidence)
    assert h.recommendations[0].priority == "critical"
    # A worker cannot start a validator: no task, a person is told at once.
    assert h.recommendations[0].remedy == "escalate"
    assert "Start a validator agent (kind: validator)" in h.recommendations[0].description


def test_a_plan_that_already_failed_for_the_same_signature_escalates() -> None:
    """A ladder, never a loop: the same plan is not run again for the same signature."""
    first = seed_scenario()
    plan = plan_recovery(rule_hypotheses(first), first.snapshot)
    keys = [t.key() for t in plan.tasks]
    failed = SnapshotDiagnosis(
        run_id="login-diagnosis-1",
        trigger="no_result",
        status="completed",
        outcome="failed",
        started_at=T0,
        top_signature="missing_result_submission",
        plan=keys,
        condition="result_submitted",
    )
    again = seed_scenario()
    again.snapshot.diagnoses = [failed]
    [rec] = plan_recovery(rule_hypotheses(again), again.snapshot).tasks
    assert rec.remedy == "escalate" and rec.priority == "critical"
    assert rec.title == "Escalate: missing result submission persists after the same remedy"
    assert "login-diagnosis-1 already ran this plan" in rec.description
    assert "condition: result_submitted" in rec.description
    # Not for a run that recovered, nor for one that ran another plan.
    for other in (
        failed.model_copy(update={"outcome": "recovered"}),
        failed.model_copy(update={"plan": ["create_task(): something else"]}),
    ):
        again.snapshot.diagnoses = [other]
        assert plan_recovery(rule_hypotheses(again), again.snapshot).tasks == plan.tasks


def test_validator_available_is_not_flagged() -> None:
    ev = evidence(
        [task(1)],
        agents=[agent("V1", kind="validator", state="idle")],
        results=[result(1, "pending_validation")],
    )
    assert validator_unavailable(ev) is None


def test_nothing_matches_gives_one_low_other_hypothesis() -> None:
    tasks = [task(1, "done", "requirements"), task(2, "running"), task(3, "pending", "testing")]
    ev = evidence(tasks, trigger="manual")
    found = rule_hypotheses(ev)
    assert len(found.hypotheses) == 1
    h = found.hypotheses[0]
    assert h.signature == "other" and h.likelihood <= 0.3
    assert h.recommendations[0].title == INVESTIGATE_TITLE
    assert h.recommendations[0].type == "analysis"
    plan = plan_recovery(found, ev.snapshot)
    assert [t.title for t in plan.tasks] == [INVESTIGATE_TITLE]


# ---- ranking ---------------------------------------------------------------------------------


def everything_wrong() -> Evidence:
    """A ticket showing most signatures at once."""
    phases = [SnapshotPhase(name=p, required=True) for p in [*PHASES, "docs"]]
    return evidence(
        [
            task(1, "failed", failures=3, failure_reason="ModuleNotFoundError: No module named x"),
            task(2, "failed", failures=3, failure_reason="ModuleNotFoundError: No module named x"),
            task(3, "pending", depends_on=["T1"]),
            task(4, "under_review", "testing"),
        ],
        phases=phases,
        agents=[
            agent("A1", restarts=5, state="quarantined"),
            agent("V1", kind="validator", state="terminated"),
        ],
        results=[
            result(1, "rejected", "tests pass? no: tests do not pass"),
            result(2, "rejected", "tests do not pass, same failures"),
            result(3, "pending_validation"),
        ],
    )


def test_ranking_is_sorted_capped_and_deterministic() -> None:
    ev = everything_wrong()
    first = rule_hypotheses(ev)
    assert 1 <= len(first.hypotheses) <= MAX_HYPOTHESES
    likelihoods = [h.likelihood for h in first.hypotheses]
    assert likelihoods == sorted(likelihoods, reverse=True)
    assert all(rule_hypotheses(ev) == first for _ in range(5))
    plan = plan_recovery(first, ev.snapshot)
    assert 1 <= len(plan.tasks) <= 5
    titles = [t.title.lower() for t in plan.tasks]
    assert len(set(titles)) == len(titles)


def hyp(signature: str, likelihood: float, statement: str = "s", *recs: Recommendation) -> Any:
    return Hypothesis(
        signature=signature,  # type: ignore[arg-type]
        statement=statement,
        likelihood=likelihood,
        recommendations=list(recs),
    )


def test_ties_break_by_signature_order_then_statement() -> None:
    tied = [
        hyp("validator_unavailable", 0.7),
        hyp("environment_error", 0.7, "b"),
        hyp("environment_error", 0.7, "a"),
        hyp("missing_result_submission", 0.7),
        hyp("other", 0.9),
        hyp("phase_without_tasks", 0.1),
        hyp("crash_looping_agent", 0.2),
    ]
    expected = [
        ("other", "s"),
        ("missing_result_submission", "s"),
        ("environment_error", "a"),
        ("environment_error", "b"),
        ("validator_unavailable", "s"),
    ]
    for order in (tied, list(reversed(tied)), tied[3:] + tied[:3]):
        assert [(h.signature, h.statement) for h in rank(order)] == expected


def test_a_signature_whose_recovery_failed_before_loses_likelihood() -> None:
    base = seed_scenario()
    fresh = missing_result_submission(base)
    assert fresh is not None
    failed = SnapshotDiagnosis(
        run_id="login/d1",
        trigger="no_result",
        status="completed",
        outcome="failed",
        started_at=T0,
        top_hypothesis=fresh.statement,
    )
    again = base.model_copy(
        update={"snapshot": base.snapshot.model_copy(update={"diagnoses": [failed]})}
    )
    top = rule_hypotheses(again).hypotheses[0]
    assert top.signature == "missing_result_submission"
    assert top.likelihood < fresh.likelihood
    assert any("login/d1" in c for c in top.counterpoints)


# ---- planning --------------------------------------------------------------------------------


def rec(title: str, phase: str = "testing", **fields: Any) -> Recommendation:
    return Recommendation(title=title, phase=phase, **fields)


def test_plan_dedupes_titles_checks_phases_and_caps_at_five() -> None:
    hypotheses = HypothesisSet(
        hypotheses=[
            hyp("other", 0.9, "a", rec("Fix A"), rec("fix  a"), rec("Do B", "nowhere")),
            hyp("environment_error", 0.8, "b", rec("Do C"), rec("Do D"), rec("Do E")),
            hyp("validation_loop", 0.7, "c", rec("Do F"), rec("Do G")),
        ]
    )
    plan = plan_recovery(hypotheses, seed_scenario().snapshot)
    assert [t.title for t in plan.tasks] == ["Fix A", "Do B", "Do C", "Do D", "Do E"]
    assert plan.tasks[1].phase == "testing"  # unknown phase → the last phase


def test_plan_skips_unlikely_hypotheses_but_never_is_empty() -> None:
    snapshot = seed_scenario().snapshot
    hypotheses = HypothesisSet(
        hypotheses=[hyp("other", 0.9, "a", rec("Top")), hyp("validation_loop", 0.2, "b", rec("X"))]
    )
    assert [t.title for t in plan_recovery(hypotheses, snapshot).tasks] == ["Top"]
    bare = HypothesisSet(hypotheses=[hyp("other", 0.9, "no recommendations")])
    plan = plan_recovery(bare, snapshot)
    assert [t.title for t in plan.tasks] == [INVESTIGATE_TITLE]
    assert plan.tasks[0].phase in PHASES
    assert plan_recovery(HypothesisSet(hypotheses=[]), snapshot).tasks[0].title == (
        INVESTIGATE_TITLE
    )


def test_a_validation_timeout_points_at_the_missing_validator() -> None:
    """The timed-out task has failed (no longer under review): still the validator's fault."""
    ev = evidence(
        [task(1, "failed", failure_reason="no review within 600 s")], trigger="validation_timeout"
    )
    ev.reason = "T1: no review from any validator within 600 s"
    h = validator_unavailable(ev)
    assert h is not None and h.likelihood >= 0.9
    assert h.evidence[0].startswith("validator timeout: T1: no review")
    assert rule_hypotheses(ev).hypotheses[0].signature == "validator_unavailable"


def test_the_same_error_on_one_tasks_attempts_is_recognised_at_once() -> None:
    """One environment error seen twice on one task: named from its first repetition, not
    only once it has spread to a second task."""
    err = "Traceback (most recent call last):\n  ...\nModuleNotFoundError: No module named 'bcrypt'"
    once = evidence([task(1, "pending", failures=1, failure_reason=err, failure_reasons=[err])])
    assert environment_error(once) is None
    twice = evidence(
        [
            task(1, "failed", failures=2, failure_reason=err, failure_reasons=[err, err]),
            task(2, "done", "requirements"),
            task(3, "pending", "testing"),
        ],
        trigger="task_failed",
    )
    h = environment_error(twice)
    assert h is not None and h.likelihood >= 0.6
    assert h.statement.startswith("T1 failed 2 times with the same error")
    assert "ModuleNotFoundError: No module named 'bcrypt'" in h.statement
    assert rule_hypotheses(twice).hypotheses[0].signature == "environment_error"
    assert h.recommendations[0].title.startswith("Fix the environment: ModuleNotFoundError")


def test_an_on_demand_validator_is_started_instead_of_escalating() -> None:
    from models.diagnosis import SnapshotSpawnable

    ev = evidence([task(1), task(2, "under_review")], results=[result(1, "pending_validation")])
    ev.snapshot.spawnable = [SnapshotSpawnable(name="vera", kind="validator")]
    h = validator_unavailable(ev)
    assert h is not None
    [rec] = h.recommendations
    assert (rec.remedy, rec.agent) == ("spawn_agent", "vera")
    ev.snapshot.spawnable = [SnapshotSpawnable(name="vera", kind="validator", running=True)]
    h = validator_unavailable(ev)
    assert h is not None and h.recommendations[0].remedy == "escalate"


def test_the_ladder_also_holds_for_a_full_plan_of_five() -> None:
    """Found in review: a plan that reached five remedies was returned before the check."""
    recs = [Recommendation(title=f"Step {i}", phase="testing") for i in range(5)]
    top = Hypothesis(signature="other", statement="stuck", likelihood=0.9, recommendations=recs)
    snapshot = seed_scenario().snapshot
    plan = plan_recovery(HypothesisSet(hypotheses=[top]), snapshot)
    assert len(plan.tasks) == 5
    snapshot.diagnoses = [
        SnapshotDiagnosis(
            run_id="d1",
            trigger="no_result",
            status="completed",
            outcome="failed",
            started_at=T0,
            top_signature="other",
            plan=[t.key() for t in plan.tasks],
        )
    ]
    [rec] = plan_recovery(HypothesisSet(hypotheses=[top]), snapshot).tasks
    assert rec.remedy == "escalate"
