"""Busy but stuck (DESIGN §12) in the pure core: behaviour signals, the anomaly score, the
anomaly trigger on the one timer, create_task's hard bounds, and the remedies a diagnosis
takes against an agent (interrupt, restart, reassign, cancel) climbing a ladder."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import behaviour, deadlines, diagnosis, health
from core import ticket as core
from core.common import RestartAgentProcess, StartDiagnosis, StopAgentProcesses
from core.state import TicketState
from diagnosis.rules import plan_recovery, rule_hypotheses
from models.diagnosis import DiagnosisReport, Evidence
from models.messages import (
    ClaimTask,
    CompleteTask,
    CreateTask,
    FailTask,
    RegisterAgent,
    ReleaseAgent,
    ReportProgress,
    ReviewResult,
    SubmitResult,
)
from models.runtime import AgentProcess
from models.spec import AgentKind, parse_spec
from tests.test_core_diagnosis import OPERATOR, s

WINDOW = 5.0


def fleet(
    *,
    tasks: int = 3,
    v1: bool = True,
    runtime: str = "external",
    task_policy: dict[str, Any] | None = None,
    **policy: Any,
) -> tuple[TicketState, dict[str, str]]:
    """A ticket with workers ``w`` and ``x`` and a validator ``v``, short windows."""
    agents_spec = []
    if runtime == "local-process":
        agents_spec = [
            {"name": "w", "kind": "worker", "runtime": "local-process", "command": ["true"]}
        ]
    spec = parse_spec(
        {
            "id": "t",
            "title": "Build login system",
            "result_criteria": ["login works"],
            "tasks": [
                {"key": f"k{i}", "phase": "implementation", "title": f"task {i}"}
                for i in range(tasks)
            ],
            "agents": agents_spec,
            "policy": {
                "stuck": {"window_s": WINDOW, "cooldown_s": WINDOW},
                "health": {"idle_deadline_s": 1000, "running_deadline_s": 1000},
                "tasks": {"stall_s": 30, **(task_policy or {})},
                **policy,
            },
        }
    )
    state = core.new_ticket(spec, s(0))
    state.operator_token_sha256 = core.hash_token(OPERATOR)
    state.healing_v2 = True
    state.behaviour_v1 = v1
    health.start(state)  # lineages of the spec's agents (their spawn effects are not run)
    agents = {}
    roles: tuple[tuple[str, AgentKind], ...] = (
        ("w", "worker"),
        ("x", "worker"),
        ("v", "validator"),
    )
    for name, kind in roles:
        reply = core.register(state, RegisterAgent(name=name, kind=kind), s(0), token=name).reply
        agents[name] = reply.agent_id
    return state, agents


def auth(agents: dict[str, str], who: str) -> dict[str, Any]:
    return {"agent_id": agents[who], "token": who}


def claim(state: TicketState, agents: dict[str, str], who: str, at: float) -> str:
    task = core.claim(state, ClaimTask(**auth(agents, who)), s(at)).reply.task
    assert task is not None
    return task.id


def note(state: TicketState, agents: dict[str, str], who: str, task: str, at: float, text: str):
    assert core.progress(state, ReportProgress(**auth(agents, who), task_id=task, note=text), s(at))


def due(state: TicketState) -> float:
    deadline = deadlines.next_deadline(state)
    assert deadline is not None
    return (deadline.at - s(0)).total_seconds()


def diagnose(state: TicketState, effects: list[Any], at: float) -> tuple[DiagnosisReport, list]:
    """Run the rule engine on the started diagnosis and apply its plan at ``at``."""
    [start] = [e for e in effects if isinstance(e, StartDiagnosis)]
    evidence = Evidence(
        run_id=start.input.run_id,
        trigger=start.input.trigger,
        reason=start.input.reason,
        snapshot=start.input.snapshot,
        collected_at=s(at),
    )
    hypotheses = rule_hypotheses(evidence)
    report = DiagnosisReport(
        run_id=start.input.run_id,
        trigger=start.input.trigger,
        hypotheses=hypotheses,
        plan=plan_recovery(hypotheses, start.input.snapshot),
        evidence_summary="rules",
        started_at=s(at),
        finished_at=s(at),
    )
    applied: list[Any] = []
    diagnosis.diagnosis_finished(state, report, s(at), applied)
    diagnosis.settle_runs(state, s(at))
    return report, applied


# ---- signals -------------------------------------------------------------------------------


def test_normalise_ignores_case_spacing_and_ids_but_not_numbers() -> None:
    assert behaviour.normalise("Checking  the BUILD again") == behaviour.normalise(
        "checking the build again"
    )
    assert behaviour.normalise("commit 3f9a2b1c0d") == behaviour.normalise("commit 0123abcdef")
    assert behaviour.normalise("build") != behaviour.normalise("test")
    # Numbers are progress: "10/100" then "20/100" is not the same note.
    assert behaviour.normalise("processed 10/100") != behaviour.normalise("processed 20/100")


def test_counting_progress_is_not_a_loop_and_a_finished_task_ends_repetition() -> None:
    state, agents = fleet()
    task = claim(state, agents, "w", 0)
    for i in range(1, 6):
        note(state, agents, "w", task, i, f"processed {i * 10}/100 items")
    assert state.agents[agents["w"]].behaviour.score == 0
    loop(state, agents, "w", task, 6)
    assert state.agents[agents["w"]].behaviour.score >= 0.7
    msg = CompleteTask(
        **auth(agents, "w"), task_id=task, result="# Done, for real this time", result_type="fix"
    )
    core.complete(state, msg, s(9))
    assert state.agents[agents["w"]].behaviour.score == 0  # it let go: no longer a loop
    assert deadlines.tick(state, s(6 + WINDOW)) == []


def test_a_planner_creating_distinct_tasks_at_the_bound_is_no_storm() -> None:
    state, agents = fleet(tasks=0)
    topics = [
        "auth",
        "api",
        "db",
        "ui",
        "docs",
        "tests",
        "ci",
        "deploy",
        "cache",
        "queue",
        "search",
        "mail",
        "sms",
        "pay",
        "log",
        "metrics",
        "admin",
        "export",
        "import",
        "backup",
    ]
    for i, topic in enumerate(topics):
        create(state, agents, f"Design the {topic} module", i * 0.1)
    agent = state.agents[agents["w"]]
    assert len(behaviour.recent_creates(agent, s(3))) == 20
    assert agent.behaviour.score < 0.7 and agent.behaviour.anomaly_since is None


def test_the_same_note_three_times_is_repetition_back_dated_to_the_first() -> None:
    state, agents = fleet()
    task = claim(state, agents, "w", 0)
    for at in (1, 2):
        note(state, agents, "w", task, at, "checking the build again")
    agent = state.agents[agents["w"]]
    assert agent.behaviour.anomaly_since is None
    assert 0 < agent.behaviour.score < 0.7
    note(state, agents, "w", task, 3, "Checking the build again")
    assert agent.behaviour.score >= 0.7
    assert agent.behaviour.anomaly_since == s(1)
    # The spell lasts one window from its first note: that is the next deadline.
    assert due(state) == 1 + WINDOW


def test_notes_that_say_something_new_are_progress_not_repetition() -> None:
    state, agents = fleet()
    task = claim(state, agents, "w", 0)
    for at in range(1, 12):
        note(state, agents, "w", task, at, f"step {chr(96 + at)} of the migration done")
    agent = state.agents[agents["w"]]
    assert agent.behaviour.score == 0
    assert agent.behaviour.progress_at == s(11)


def test_the_same_note_on_different_tasks_is_not_a_loop() -> None:
    state, agents = fleet(tasks=4)
    for i in range(4):
        task = claim(state, agents, "w", i * 3)
        note(state, agents, "w", task, i * 3 + 1, "running the tests")
        msg = CompleteTask(
            **auth(agents, "w"), task_id=task, result="# Done\n\nAll green here.", result_type="fix"
        )
        core.complete(state, msg, s(i * 3 + 2))
    assert state.agents[agents["w"]].behaviour.score == 0


def test_an_ab_alternation_over_six_notes_is_repetition() -> None:
    state, agents = fleet()
    task = claim(state, agents, "w", 0)
    for at in range(1, 7):
        note(state, agents, "w", task, at, "run the linter" if at % 2 else "fix the import")
    agent = state.agents[agents["w"]]
    assert agent.behaviour.anomaly_since == s(1)
    top = behaviour.score(state, agent, s(7)).top
    assert top is not None and top.name == "repetition" and "alternating" in top.detail


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "build again", "x 1", "x 2"]), max_size=12))
def test_score_is_bounded_and_repetition_needs_a_real_repeat(notes: list[str]) -> None:
    state, agents = fleet()
    task = claim(state, agents, "w", 0)
    for i, text in enumerate(notes, 1):
        note(state, agents, "w", task, i, text)
    agent = state.agents[agents["w"]]
    now = s(len(notes) + 1)
    result = behaviour.score(state, agent, now)
    assert 0.0 <= result.score <= 1.0
    normalised = [behaviour.normalise(n) for n in notes]
    run = 0
    for text in reversed(normalised):
        if normalised and text != normalised[-1]:
            break
        run += 1
    alternating = (
        len(normalised) >= 6
        and len(set(normalised[-6:])) == 2
        and all(normalised[-6:][i] != normalised[-6:][i + 1] for i in range(5))
    )
    assert (result.score >= 0.7) == (run >= 3 or alternating)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=4))
def test_more_signals_never_lower_the_composite(values: list[float]) -> None:
    names = list(behaviour.WEIGHTS)[: len(values)]
    signals = [behaviour.Signal(n, v, "x") for n, v in zip(names, values, strict=False)]
    rest = 1.0
    scores = []
    for signal in signals:
        rest *= 1 - signal.contribution
        scores.append(1 - rest)
    assert scores == sorted(scores)
    assert all(0 <= x <= 1 for x in scores)


def test_stall_bound_is_the_floor_or_three_times_the_p90() -> None:
    state, _ = fleet()
    assert behaviour.stall_bound(state)[0] == 30
    state.durations = [1, 2, 3, 4]  # too few to say anything
    assert behaviour.stall_bound(state)[0] == 30
    state.durations = [10.0] * 8 + [40.0, 40.0]
    assert behaviour.stall_bound(state) == (120.0, "3 x p90 40 s of 10 done tasks")


def test_a_holding_agent_without_progress_stalls_on_the_timer() -> None:
    state, agents = fleet()
    claim(state, agents, "w", 0)
    assert due(state) == 30  # the stall bound rides the one timer
    assert deadlines.tick(state, s(30)) == []
    agent = state.agents[agents["w"]]
    assert agent.behaviour.anomaly_since == s(30)
    assert due(state) == 30 + WINDOW
    effects = deadlines.tick(state, s(30 + WINDOW))
    [start] = [e for e in effects if isinstance(e, StartDiagnosis)]
    assert start.input.trigger == "anomaly"
    assert "agent_stalled" in start.input.reason and agents["w"] in start.input.reason


# ---- hard bounds at the door -------------------------------------------------------------------


def create(state: TicketState, agents: dict[str, str], title: str, at: float, apply: bool = True):
    msg = CreateTask(**auth(agents, "w"), phase="implementation", title=title)
    return core.create_task(state, msg, s(at), apply=apply)


def test_create_rate_per_agent_is_refused_naming_the_rule_and_changes_nothing() -> None:
    state, agents = fleet(tasks=0)
    for i in range(20):
        create(state, agents, f"piece {i}", i * 0.1)
    before = state.model_dump_json()
    for apply in (False, True):
        with pytest.raises(core.Refused) as refused:
            create(state, agents, "piece 20", 2.5, apply=apply)
        assert refused.value.field == "agent_id"
        assert "max_creates_per_minute" in refused.value.rule
        assert "20 tasks in the last minute" in refused.value.rule
    assert state.model_dump_json() == before
    # Another agent is not held back, and a minute later this one may go on.
    msg = CreateTask(**auth(agents, "x"), phase="implementation", title="x's task")
    core.create_task(state, msg, s(3))
    create(state, agents, "piece 20", 61)


def test_open_tasks_per_ticket_and_duplicate_titles_are_refused() -> None:
    state, agents = fleet(tasks=0, task_policy={"max_open_tasks": 3})
    create(state, agents, "Write the docs", 0)
    with pytest.raises(core.Refused) as refused:
        create(state, agents, "  write THE docs!", 1)
    assert refused.value.field == "title" and "T1" in refused.value.rule
    create(state, agents, "Write the docs 2", 2)
    create(state, agents, "Write the tests", 3)
    with pytest.raises(core.Refused) as refused:
        create(state, agents, "One more", 4)
    assert refused.value.field == "ticket" and "max_open_tasks" in refused.value.rule


def test_without_the_patch_nothing_changes() -> None:
    state, agents = fleet(tasks=0, v1=False)
    for i in range(25):
        create(state, agents, "same title", i * 0.1)
    assert len(state.tasks) == 25
    assert behaviour.deadlines(state) == []
    assert state.agents[agents["w"]].behaviour.score == 0


# ---- the ladder: interrupt, restart, escalate --------------------------------------------------


def loop(state: TicketState, agents: dict[str, str], who: str, task: str, start: float) -> None:
    for i in range(3):
        note(state, agents, who, task, start + i, "checking the build again")


def test_a_looping_agent_is_interrupted_then_restarted_then_escalated() -> None:
    state, agents = fleet(runtime="local-process")
    state.agents[agents["x"]].state = "terminated"  # nobody else could take its work
    w = agents["w"]
    task = claim(state, agents, "w", 0)
    loop(state, agents, "w", task, 1)
    effects = deadlines.tick(state, s(1 + WINDOW))
    report, _ = diagnose(state, effects, 7)
    top = report.hypotheses.hypotheses[0]
    assert top.signature == "agent_looping"
    [rec] = report.plan.tasks
    assert (rec.remedy, rec.agent) == ("interrupt_agent", w)
    # Interrupted: the task is back in the queue, the agent is told in its inbox.
    assert state.tasks[task].status == "pending"
    box = core.inbox(state, w)
    assert box.interrupted == [task]
    assert any("same note" in f for f in box.feedback)
    run = state.diagnoses[-1]
    assert (
        run.condition == "calm" and run.outcome == "pending" and run.acted == [f"interrupted {w}"]
    )
    # It takes the task again and loops again: the run failed, the next rung is a restart.
    assert claim(state, agents, "w", 8) == task
    loop(state, agents, "w", task, 9)
    effects = deadlines.tick(state, s(9 + WINDOW))
    assert state.diagnoses[0].outcome == "failed"
    report, applied = diagnose(state, effects, 15)
    [rec] = report.plan.tasks
    assert (rec.remedy, rec.agent) == ("restart_agent", w)
    assert any(isinstance(e, RestartAgentProcess) and e.agent_id == w for e in applied)
    assert state.tasks[task].status == "pending"
    # The replacement (same lineage, new id) loops too: a person is told.
    health_outcome = state.lineages["w"]
    assert health_outcome.restarts
    reply = core.register(state, RegisterAgent(name="w", kind="worker"), s(16), token="w2").reply
    agents["w"] = reply.agent_id
    agents_w2 = {"w": reply.agent_id}
    task2 = core.claim(state, ClaimTask(agent_id=reply.agent_id, token="w2"), s(17)).reply.task
    assert task2 is not None
    for i in range(3):
        core.progress(
            state,
            ReportProgress(
                agent_id=agents_w2["w"],
                token="w2",
                task_id=task2.id,
                note="checking the build again",
            ),
            s(18 + i),
        )
    effects = deadlines.tick(state, s(18 + WINDOW))
    report, _ = diagnose(state, effects, 24)
    [rec] = report.plan.tasks
    assert rec.remedy == "escalate"
    assert any(e.source == "diagnosis_ladder" for e in state.escalations)
    assert diagnosis.display_status(state) == "escalated"


def test_a_looping_agent_that_others_can_stand_in_for_is_quarantined_not_the_ticket() -> None:
    """Interrupted, restarted, and still looping, while another worker lives: the agent is
    taken out of the work (a person told about it), its task goes to the other worker with
    no retry used, and the ticket keeps healing (not escalated as a whole)."""
    state, agents = fleet(runtime="local-process")
    state.escalations_v1 = True  # as every new ticket: escalations reach people, and resolve
    w = agents["w"]
    task = claim(state, agents, "w", 0)
    loop(state, agents, "w", task, 1)
    report, _ = diagnose(state, deadlines.tick(state, s(1 + WINDOW)), 7)
    assert [r.remedy for r in report.plan.tasks] == ["reassign_task", "interrupt_agent"]
    other = claim(state, agents, "w", 8)  # it gets other work (the first task avoids it)
    loop(state, agents, "w", other, 9)
    report, _ = diagnose(state, deadlines.tick(state, s(9 + WINDOW)), 15)
    assert [(r.remedy, r.agent) for r in report.plan.tasks] == [("restart_agent", w)]
    reply = core.register(state, RegisterAgent(name="w", kind="worker"), s(16), token="w").reply
    agents["w"] = w2 = reply.agent_id  # the replacement: same lineage, new id
    task2 = claim(state, agents, "w", 17)
    failures = state.tasks[task2].failures
    loop(state, agents, "w", task2, 18)
    effects = deadlines.tick(state, s(18 + WINDOW))
    running = AgentProcess(agent_name="w", runtime="local-process", pid=4242, started_at=s(17))
    state.lineages["w"].process = running  # as the spawn activity recorded it
    report, applied = diagnose(state, effects, 24)
    assert [(r.remedy, r.agent) for r in report.plan.tasks] == [("quarantine_agent", w2)]
    assert state.agents[w2].state == "quarantined" and state.lineages["w"].quarantined
    assert [e.processes for e in applied if isinstance(e, StopAgentProcesses)] == [(running,)]
    # Its task is back in the queue, no retry used, for the other worker; it gets no more.
    assert state.tasks[task2].status == "pending"
    assert state.tasks[task2].failures == failures
    refused = core.claim(state, ClaimTask(**auth(agents, "w")), s(25)).reply
    assert refused.task is None and refused.reason == "agent is quarantined"
    # A person is told about the agent; the ticket is not escalated and keeps healing.
    [told] = [e for e in state.escalations if not e.resolved]
    assert (told.source, told.severity, told.agent_id) == ("behaviour_quarantine", "SEV-3", w2)
    assert diagnosis.guard_reason(state) is None
    assert diagnosis.display_status(state) != "escalated"
    # Released by an operator: the escalation about it is dealt with.
    health.release(state, ReleaseAgent(agent_id=w2, operator_token=OPERATOR), s(30))
    assert told.resolved


def test_an_interrupted_agent_that_stays_calm_for_the_window_was_healed() -> None:
    state, agents = fleet()
    task = claim(state, agents, "w", 0)
    loop(state, agents, "w", task, 1)
    effects = deadlines.tick(state, s(1 + WINDOW))
    diagnose(state, effects, 7)
    run = state.diagnoses[-1]
    assert run.verify_by == s(7 + WINDOW)
    # Calm is judged at the end of the window, not at once.
    assert run.outcome == "pending"
    claim(state, agents, "x", 8)  # another agent takes the task and works on it
    deadlines.tick(state, s(7 + WINDOW))
    assert run.outcome == "recovered"
    assert state.consecutive_failed_diagnoses == 0


def test_a_storm_is_cancelled_down_to_its_distinct_work_and_its_agent_told() -> None:
    state, agents = fleet(tasks=0)
    for i in range(20):
        create(state, agents, f"Investigate flaky check {i}", i * 0.05)
    create_other = CreateTask(**auth(agents, "x"), phase="implementation", title="Real work")
    core.create_task(state, create_other, s(1))
    agent = state.agents[agents["w"]]
    assert agent.behaviour.anomaly_since == s(0)
    effects = deadlines.tick(state, s(WINDOW))
    report, _ = diagnose(state, effects, WINDOW + 1)
    assert report.hypotheses.hypotheses[0].signature == "task_storm"
    remedies = [r.remedy for r in report.plan.tasks]
    assert remedies == ["cancel_tasks", "interrupt_agent"]
    statuses = [t.status for t in state.tasks.values() if t.created_by == agents["w"]]
    assert statuses.count("cancelled") == 19 and statuses.count("pending") == 1
    assert next(t for t in state.tasks.values() if t.title == "Real work").status == "pending"
    cancelled = next(t for t in state.tasks.values() if t.status == "cancelled")
    assert cancelled.failure_reason and "cancelled by" in cancelled.failure_reason


def test_trivial_results_in_a_row_are_low_quality() -> None:
    state, agents = fleet(tasks=0)
    for version in (1, 2):
        msg = SubmitResult(**auth(agents, "w"), content="ok")
        core.submit_result(state, msg, s(version * 2))
        review = ReviewResult(
            **auth(agents, "v"), version=version, passed=False, feedback="not a result"
        )
        core.review_result(state, review, s(version * 2 + 0.5))
    agent = state.agents[agents["w"]]
    assert agent.behaviour.anomaly_since == s(2)
    top = behaviour.score(state, agent, s(5)).top
    assert top is not None and top.name == "quality" and "characters" in top.detail
    effects = deadlines.tick(state, s(2 + WINDOW))
    report, _ = diagnose(state, effects, 8)
    assert report.hypotheses.hypotheses[0].signature == "low_quality_results"
    assert "login works" in report.plan.tasks[0].description


def test_a_real_result_clears_the_quality_signal() -> None:
    state, agents = fleet(tasks=0)
    core.submit_result(state, SubmitResult(**auth(agents, "w"), content="ok"), s(1))
    core.review_result(
        state, ReviewResult(**auth(agents, "v"), version=1, passed=False, feedback="no"), s(2)
    )
    content = "# Login\n\nImplemented with tests; see the PR for the evidence."
    core.submit_result(state, SubmitResult(**auth(agents, "w"), content=content), s(3))
    assert state.agents[agents["w"]].behaviour.low_quality == []


def test_reassign_takes_a_task_away_from_its_holder_while_another_can_take_it() -> None:
    state, agents = fleet(tasks=1)
    task = claim(state, agents, "w", 0)
    done = diagnosis._reassign(state, task, "t-d1", s(1))
    assert done == f"reassigned {task}"
    assert state.tasks[task].status == "pending"
    # w is passed over while x lives; x gets it.
    reply = core.claim(state, ClaimTask(**auth(agents, "w")), s(2)).reply
    assert reply.task is None
    assert claim(state, agents, "x", 3) == task
    # Nobody else alive: the task does not wait for nobody.
    state2, agents2 = fleet(tasks=1)
    task2 = claim(state2, agents2, "w", 0)
    diagnosis._reassign(state2, task2, "t-d1", s(1))
    state2.agents[agents2["x"]].state = "terminated"
    assert claim(state2, agents2, "w", 2) == task2


def test_a_healthy_worker_never_scores_high() -> None:
    state, agents = fleet(tasks=6)
    at = 0.0
    for _ in range(6):
        task = claim(state, agents, "w", at)
        note(state, agents, "w", task, at + 0.5, f"working on {task}")
        result = f"## {task}\n\nDone for phase implementation."
        core.complete(
            state,
            CompleteTask(**auth(agents, "w"), task_id=task, result=result, result_type="fix"),
            s(at + 1),
        )
        at += 1.5
        assert state.agents[agents["w"]].behaviour.score < 0.3
    assert len(state.durations) == 6
    assert all(d.label.startswith("stall") is False for d in behaviour.deadlines(state))


def test_window_defaults_to_the_stuck_window_and_can_be_set() -> None:
    state, _ = fleet()
    assert behaviour.window(state) == timedelta(seconds=WINDOW)
    state2, _ = fleet(anomaly={"window_s": 2})
    assert behaviour.window(state2) == timedelta(seconds=2)


def test_a_restart_escalation_succeeds_only_when_the_lineage_stays_quiet() -> None:
    state, agents = fleet(
        runtime="local-process",
        health={"restart_cooldown_s": 10, "idle_deadline_s": 1000, "running_deadline_s": 1000},
    )
    lineage = state.lineages["w"]
    lineage.restarts = [s(1), s(2), s(3)]
    lineage.quarantined = True
    state.agents[agents["w"]].state = "quarantined"
    effects = diagnosis.request_diagnosis(state, "restart_escalation", s(4), reason="w")
    report, _ = diagnose(state, effects, 5)
    assert report.hypotheses.hypotheses[0].signature == "crash_looping_agent"
    run = state.diagnoses[-1]
    assert (run.condition, run.subjects) == ("quiet", ["w"])
    while any(state.tasks[t].status != "done" for t in run.task_ids):  # x does the work
        task_id = claim(state, agents, "x", 6)
        msg = CompleteTask(
            **auth(agents, "x"),
            task_id=task_id,
            result="## Cause\n\nThe agent ran out of memory.",
            result_type="fix",
        )
        core.complete(state, msg, s(7))
    assert run.verify_by == s(7 + 30)  # 3 x the restart cooldown, not the stuck window
    deadlines.tick(state, s(37))
    assert run.outcome == "failed"  # still quarantined: nobody released it


def test_evidence_carries_the_log_tail_of_the_agents_involved(tmp_path: Any) -> None:
    from activities.diagnosis import agent_log_tails

    state, agents = fleet(runtime="local-process")
    task = claim(state, agents, "w", 0)
    loop(state, agents, "w", task, 1)
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "w.0.log").write_text("old generation\n")
    (folder / "w.1.log").write_text("".join(f"line {i}\n" for i in range(100)))
    (folder / "x.0.log").write_text("healthy agent\n")
    snapshot = diagnosis.snapshot(state, s(4))
    tails = agent_log_tails(tmp_path, snapshot, reason=f"{agents['w']}: agent_looping")
    assert list(tails) == [agents["w"]]
    assert tails[agents["w"]][0] == "(w.1.log)"
    assert tails[agents["w"]][-1] == "line 99" and len(tails[agents["w"]]) == 41


def test_failing_a_task_again_and_again_is_the_rule_engines_not_a_loop() -> None:
    state, agents = fleet(task_policy={"max_retries": 10})
    for i in range(5):
        task = claim(state, agents, "w", i * 2)
        msg = FailTask(**auth(agents, "w"), task_id=task, reason="SMTP_HOST is not set")
        core.fail(state, msg, s(i * 2 + 1))
    assert state.agents[agents["w"]].behaviour.score == 0


def test_one_word_results_of_plain_tasks_are_fine_of_reviewed_ones_trivial() -> None:
    state, agents = fleet(tasks=4)
    for i in range(4):
        task = claim(state, agents, "w", i)
        msg = CompleteTask(**auth(agents, "w"), task_id=task, result="fixed", result_type="fix")
        core.complete(state, msg, s(i + 0.5))
    assert state.agents[agents["w"]].behaviour.low_quality == []
    assert behaviour.trivial(state, "fixed", "x", set(), judged=True) is not None
    assert behaviour.trivial(state, "   ", "x", set(), judged=False) == "empty"


def test_a_looping_agents_task_goes_to_another_agent_when_one_lives() -> None:
    state, agents = fleet()
    task = claim(state, agents, "w", 0)
    loop(state, agents, "w", task, 1)
    effects = deadlines.tick(state, s(1 + WINDOW))
    report, _ = diagnose(state, effects, 7)
    assert [(r.remedy, r.task_id or r.agent) for r in report.plan.tasks] == [
        ("reassign_task", task),
        ("interrupt_agent", agents["w"]),
    ]
    assert state.tasks[task].avoid == ["w"]
    assert claim(state, agents, "w", 8) != task  # w gets other work, not T1
    assert claim(state, agents, "x", 8) == task
    assert core.inbox(state, agents["w"]).interrupted == [task]


# ---- an idle queue: work waits and nobody claims it ---------------------------------------


def test_work_nobody_claims_for_a_whole_window_is_stuck_and_wedged_workers_restarted() -> None:
    state, agents = fleet(runtime="local-process")
    # Everyone is alive and heartbeating; nobody claims T1..T3.
    assert diagnosis.idle_queue(state)
    assert due(state) == WINDOW
    effects = deadlines.tick(state, s(WINDOW))
    [start] = [e for e in effects if isinstance(e, StartDiagnosis)]
    assert "nobody claimed" in start.input.reason and "T1" in start.input.reason
    report, applied = diagnose(state, effects, WINDOW + 1)
    assert report.hypotheses.hypotheses[0].signature == "unclaimed_work"
    assert {(r.remedy, r.agent) for r in report.plan.tasks} == {
        ("restart_agent", agents["w"]),
        ("restart_agent", agents["x"]),
    }
    assert any(isinstance(e, RestartAgentProcess) for e in applied)
    # A claim is work again: not idle any more.
    reply = core.register(state, RegisterAgent(name="w", kind="worker"), s(7), token="w9").reply
    task = core.claim(state, ClaimTask(agent_id=reply.agent_id, token="w9"), s(7)).reply.task
    assert task is not None and not diagnosis.idle_queue(state)


def test_with_no_worker_at_all_a_person_is_told_at_once() -> None:
    state, agents = fleet()
    for who in ("w", "x"):
        state.agents[agents[who]].state = "terminated"
    effects = deadlines.tick(state, s(WINDOW))
    report, _ = diagnose(state, effects, WINDOW + 1)
    assert [r.remedy for r in report.plan.tasks] == ["escalate"]
    assert diagnosis.display_status(state) == "escalated"


def test_an_idle_queue_is_not_stuck_without_the_patch() -> None:
    state, _ = fleet(v1=False)
    assert not diagnosis.idle_queue(state)
    assert diagnosis.stuck_at(state) is None


def test_an_idle_queue_with_a_recovery_task_nobody_claims_is_diagnosed_not_spun() -> None:
    """Regression: a pending recovery task nobody claims made the stuck check request a
    diagnosis that the recovery-task rule skipped, with the deadline left in the past."""
    state, agents = fleet(tasks=1)
    task = claim(state, agents, "w", 0)
    msg = CompleteTask(
        **auth(agents, "w"), task_id=task, result="# done, all of it", result_type="fix"
    )
    core.complete(state, msg, s(1))
    effects = deadlines.tick(state, s(1 + WINDOW))  # nobody submits: a diagnosis
    diagnose(state, effects, 7)
    recovery = [t for t in state.tasks.values() if t.diagnosis_run_id]
    assert recovery and all(t.status == "pending" for t in recovery)
    # Nobody claims the recovery task for a whole window: the next diagnosis runs.
    at = due(state)
    effects = deadlines.tick(state, s(at))
    assert [e for e in effects if isinstance(e, StartDiagnosis)]
    assert due(state) > at  # never a deadline left in the past
