"""Escalations reach people (DESIGN §14) in the pure core: severity per source, one open
escalation per subject, ask_human, ack and resolve (the note reaching the agents, a fresh
diagnosis budget), the wait for a person being neither stuck nor stalled, and the delivery
books the workflow keeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core import behaviour, deadlines, diagnosis, escalations, health, people
from core import ticket as core
from core.common import StartDiagnosis
from core.state import Escalation, TicketState
from models.diagnosis import (
    DiagnosisReport,
    Hypothesis,
    HypothesisSet,
    Recommendation,
    RecoveryPlan,
)
from models.messages import (
    AcknowledgeEscalation,
    AskHuman,
    CancelTicket,
    ClaimTask,
    CompleteTask,
    FailTask,
    LeaveTicket,
    RegisterAgent,
    ReleaseAgent,
    ResolveEscalation,
)
from models.spec import ESCALATION_SOURCES, AgentKind, SpecError, parse_spec
from tests import test_core_health as health_kit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OPERATOR = "op-token"
WINDOW = 5.0


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ticket(
    *,
    tasks: int = 2,
    escalation: dict[str, Any] | None = None,
    priority: str = "normal",
    task_policy: dict[str, Any] | None = None,
    **policy: Any,
) -> tuple[TicketState, dict[str, str]]:
    """A ticket on escalations-v1 with workers ``w`` and ``x`` and a validator ``v``."""
    spec = parse_spec(
        {
            "id": "t",
            "title": "Build login system",
            "priority": priority,
            "tasks": [
                {"key": f"k{i}", "phase": "implementation", "title": f"task {i}"}
                for i in range(tasks)
            ],
            "policy": {
                "stuck": {"window_s": WINDOW, "cooldown_s": WINDOW},
                "escalation": escalation or {},
                "tasks": task_policy or {},
                **policy,
            },
        }
    )
    state = core.new_ticket(spec, T0)
    state.operator_token_sha256 = core.hash_token(OPERATOR)
    state.escalations_v1 = True  # the workflow sets it from the patch escalations-v1
    agents = {}
    roles: tuple[tuple[str, AgentKind], ...] = (
        ("w", "worker"),
        ("x", "worker"),
        ("v", "validator"),
    )
    for name, kind in roles:
        reply = core.register(state, RegisterAgent(name=name, kind=kind), T0, token=name).reply
        agents[name] = reply.agent_id
    return state, agents


def auth(agents: dict[str, str], who: str = "w") -> dict[str, Any]:
    return {"agent_id": agents[who], "token": who}


def ask(
    state: TicketState, agents: dict[str, str], who: str, at: float, question: str, **extra: Any
) -> str:
    msg = AskHuman(**auth(agents, who), question=question, **extra)
    return people.ask(state, msg, s(at)).reply.question_id


def ack(state: TicketState, escalation_id: str, at: float, operator: str = "olga") -> Any:
    msg = AcknowledgeEscalation(
        escalation_id=escalation_id, operator=operator, operator_token=OPERATOR
    )
    return people.acknowledge(state, msg, s(at)).reply


def resolve(
    state: TicketState,
    escalation_id: str,
    at: float,
    note: str = "restarted the database",
    operator: str = "olga",
    **extra: Any,
) -> Any:
    msg = ResolveEscalation(
        escalation_id=escalation_id,
        note=note,
        operator=operator,
        operator_token=OPERATOR,
        **extra,
    )
    return people.resolve(state, msg, s(at)).reply


def raise_(state: TicketState, source: str, at: float, agent_id: str | None = None) -> Escalation:
    escalation = diagnosis.escalate(
        state, s(at), source=source, reason=f"{source} happened", agent_id=agent_id
    )
    assert escalation is not None
    return escalation


def events(escalation: Escalation) -> list[tuple[str, str]]:
    return [(d.event, d.status) for d in escalation.deliveries]


def refused(call: Any, state: TicketState) -> core.Refused:
    """``call()`` is refused and changes nothing at all in the state."""
    before = state.model_dump()
    with pytest.raises(core.Refused) as info:
        call()
    assert state.model_dump() == before
    return info.value


def finish_all(state: TicketState, agents: dict[str, str], at: datetime) -> None:
    while (task := core.claim(state, ClaimTask(**auth(agents)), at).reply.task) is not None:
        core.complete(
            state,
            CompleteTask(**auth(agents), task_id=task.id, result="# r", result_type="test"),
            at,
        )


# ---- severity and one escalation per subject ---------------------------------------------


def test_severity_is_the_policy_override_else_the_default_of_the_source() -> None:
    state, agents = ticket(
        escalation={"severity": {"agent_question": "SEV-1", "restart_failed": "SEV-4"}}
    )
    assert raise_(state, "restart_failed", 1, agents["w"]).severity == "SEV-4"
    assert raise_(state, "diagnosis_guard", 1).severity == "SEV-2"  # not overridden: default
    reply = people.ask(state, AskHuman(**auth(agents), question="Which DB?"), s(2)).reply
    assert reply.severity == "SEV-1"
    [question] = [e for e in state.escalations if e.id == reply.question_id]
    assert (question.severity, question.source) == ("SEV-1", "agent_question")
    # Without overrides every source has its documented default.
    plain, _ = ticket()
    for source, default in ESCALATION_SOURCES.items():
        assert raise_(plain, source, 1).severity == default, source
    # The ledger hears the same severity the sinks do.
    assert [r.severity for r in plain.outbox.escalations] == list(ESCALATION_SOURCES.values())


def test_an_unknown_source_in_the_severity_policy_is_refused() -> None:
    with pytest.raises(SpecError, match="severity"):
        ticket(escalation={"severity": {"disk_full": "SEV-1"}})
    with pytest.raises(SpecError, match="severity"):
        ticket(escalation={"severity": {"agent_question": "SEV-0"}})


def test_every_escalation_queues_a_trigger_only_on_escalations_v1() -> None:
    state, agents = ticket()
    escalation = raise_(state, "restart_failed", 1, agents["w"])
    assert events(escalation) == [("trigger", "pending")]
    assert escalations.pending(state) == [escalation]
    older, _ = ticket()
    older.escalations_v1 = False  # a run started before the patch: no deliveries
    assert raise_(older, "restart_failed", 1).deliveries == []


def test_one_unresolved_escalation_per_source_and_agent() -> None:
    state, agents = ticket()
    first = raise_(state, "restart_failed", 1, agents["w"])
    again = diagnosis.escalate(
        state, s(2), source="restart_failed", reason="again", agent_id=agents["w"]
    )
    assert again is None  # folded into the open one
    other_agent = raise_(state, "restart_failed", 3, agents["x"])
    other_source = raise_(state, "external_restart", 3, agents["w"])
    assert len({first.id, other_agent.id, other_source.id}) == 3
    # Acknowledged is still open: still folded.
    ack(state, first.id, 4)
    assert (
        diagnosis.escalate(state, s(5), source="restart_failed", reason="r", agent_id=agents["w"])
        is None
    )
    # Resolved: the next one is a new escalation.
    resolve(state, first.id, 6)
    fresh = raise_(state, "restart_failed", 7, agents["w"])
    assert fresh.id != first.id and not fresh.resolved
    assert len(state.escalations) == 4


def test_each_question_is_its_own_escalation() -> None:
    state, agents = ticket()
    one = ask(state, agents, "w", 1, "Which database?")
    two = ask(state, agents, "w", 2, "Which database?")  # the same words, asked again
    assert one != two
    assert [e.question for e in state.escalations] == ["Which database?", "Which database?"]
    assert escalations.open_questions(state, state.agents[agents["w"]]) == 2


def test_a_retried_ask_with_the_same_request_id_is_one_question() -> None:
    state, agents = ticket()
    first = ask(state, agents, "w", 1, "Which database?", request_id="r1")
    again = ask(state, agents, "w", 2, "Which database?", request_id="r1")
    assert first == again and len(state.escalations) == 1


# ---- ask_human refusals ------------------------------------------------------------------


def test_asking_about_a_task_the_agent_does_not_hold_is_refused() -> None:
    state, agents = ticket()
    held = core.claim(state, ClaimTask(**auth(agents, "w")), s(1)).reply.task
    assert held is not None
    msg = AskHuman(**auth(agents, "x"), question="Is this done?", task_id=held.id)
    error = refused(lambda: people.ask(state, msg, s(2)), state)
    assert error.field == "task_id" and f"not held by {agents['x']}" in error.rule
    unknown = AskHuman(**auth(agents, "x"), question="?", task_id="T99")
    error = refused(lambda: people.ask(state, unknown, s(2)), state)
    assert error.field == "task_id" and "unknown task" in error.rule
    # The holder may ask about it.
    mine = AskHuman(**auth(agents, "w"), question="Is this done?", task_id=held.id)
    question_id = people.ask(state, mine, s(3)).reply.question_id
    [escalation] = state.escalations
    assert (escalation.id, escalation.task_id) == (question_id, held.id)


def test_more_open_questions_than_the_policy_allows_are_refused() -> None:
    state, agents = ticket(escalation={"max_open_questions": 2})
    first = ask(state, agents, "w", 1, "one?")
    ask(state, agents, "w", 2, "two?")
    msg = AskHuman(**auth(agents), question="three?")
    error = refused(lambda: people.ask(state, msg, s(3)), state)
    assert error.field == "question"
    assert "max_open_questions" in error.rule and "limit is 2" in error.rule
    ask(state, agents, "x", 3, "another agent has its own limit?")
    resolve(state, first, 4, note="yes")  # an answer frees a place
    ask(state, agents, "w", 5, "three?")
    assert escalations.open_questions(state, state.agents[agents["w"]]) == 2


def test_asking_on_a_finished_ticket_is_refused() -> None:
    state, agents = ticket()
    core.cancel(state, CancelTicket(reason="enough", operator_token=OPERATOR), s(1))
    msg = AskHuman(**auth(agents), question="still there?")
    error = refused(lambda: people.ask(state, msg, s(2)), state)
    assert error.field == "ticket" and "cancelled" in error.rule


def test_ask_ack_and_resolve_are_refused_before_escalations_v1() -> None:
    state, agents = ticket()
    escalation = raise_(state, "restart_failed", 1, agents["w"])
    state.escalations_v1 = False  # the patch is not in this run
    calls = [
        lambda: people.ask(state, AskHuman(**auth(agents), question="?"), s(2)),
        lambda: ack(state, escalation.id, 2),
        lambda: resolve(state, escalation.id, 2),
    ]
    for call in calls:
        error = refused(call, state)
        assert error.field == "ticket" and "escalations-v1" in error.rule


def test_ack_and_resolve_check_the_operator_and_the_escalation() -> None:
    state, agents = ticket()
    escalation = raise_(state, "restart_failed", 1, agents["w"])
    wrong = AcknowledgeEscalation(escalation_id=escalation.id, operator_token="nope")
    error = refused(lambda: people.acknowledge(state, wrong, s(2)), state)
    assert error.field == "operator_token"
    wrong_r = ResolveEscalation(escalation_id=escalation.id, note="n", operator_token="nope")
    error = refused(lambda: people.resolve(state, wrong_r, s(2)), state)
    assert error.field == "operator_token"
    error = refused(lambda: ack(state, "t-escalation-nope", 2), state)
    assert error.field == "escalation_id" and escalation.id in error.rule  # names the latest
    error = refused(lambda: resolve(state, "t-escalation-nope", 2), state)
    assert error.field == "escalation_id"


# ---- ack ---------------------------------------------------------------------------------


def test_ack_is_idempotent_and_queues_one_acknowledge_delivery() -> None:
    state, agents = ticket()
    escalation = raise_(state, "restart_failed", 1, agents["w"])
    view = ack(state, escalation.id, 2, operator="olga")
    assert (view.status, view.acknowledged_by, view.acknowledged_at) == (
        "acknowledged",
        "olga",
        s(2).isoformat(),
    )
    records = len(state.outbox.escalations)
    before = state.model_dump()
    again = ack(state, escalation.id, 3, operator="pete")
    assert again == view  # the first acknowledgement counts
    assert state.model_dump() == before
    assert events(escalation) == [("trigger", "pending"), ("acknowledge", "pending")]
    assert len(state.outbox.escalations) == records
    assert not escalation.resolved and escalations.open_severity(state) == "SEV-2"


def test_ack_of_a_resolved_escalation_is_refused() -> None:
    state, agents = ticket()
    escalation = raise_(state, "restart_failed", 1, agents["w"])
    resolve(state, escalation.id, 2)
    error = refused(lambda: ack(state, escalation.id, 3), state)
    assert error.field == "escalation_id" and "resolved by olga" in error.rule


# ---- resolve -----------------------------------------------------------------------------


def test_the_note_reaches_every_live_agent_as_feedback() -> None:
    state, agents = ticket()
    core.leave(state, LeaveTicket(**auth(agents, "x"), reason="done"), s(1))
    escalation = raise_(state, "restart_failed", 2, agents["w"])
    tasks_before = set(state.tasks)
    view = resolve(state, escalation.id, 3, note="the disk was full; I freed it")
    assert (view.status, view.resolved_by, view.note) == (
        "resolved",
        "olga",
        "the disk was full; I freed it",
    )
    line = f"olga resolved {escalation.id}: the disk was full; I freed it"
    for who in ("w", "v"):
        assert core.inbox(state, agents[who]).feedback[-1] == line
    assert line not in core.inbox(state, agents["x"]).feedback  # it left: not live
    assert set(state.tasks) == tasks_before  # no task without as_task
    assert events(escalation) == [("trigger", "pending"), ("resolve", "pending")]
    assert state.last_activity_at == s(3)  # the agents get a whole window to act on it


def test_resolve_as_task_queues_a_high_priority_task() -> None:
    state, agents = ticket()
    escalation = raise_(state, "diagnosis_guard", 1)
    before = set(state.tasks)
    resolve(
        state, escalation.id, 2, note="Use the staging DB\nand retry the migration", as_task=True
    )
    [new] = [state.tasks[t] for t in set(state.tasks) - before]
    assert (new.priority, new.type, new.status, new.created_by) == (
        "high",
        "fix",
        "pending",
        "olga",
    )
    assert "Use the staging DB" in new.title and "\n" not in new.title
    assert "and retry the migration" in new.description and escalation.id in new.description
    assert core.claim(state, ClaimTask(**auth(agents, "x")), s(3)).reply.task.id == new.id  # type: ignore[union-attr]


def test_an_answer_goes_to_the_asker_inbox_and_to_nobody_else() -> None:
    state, agents = ticket()
    question_id = ask(state, agents, "w", 1, "Which database should I migrate?")
    view = resolve(state, question_id, 2, note="the staging one")
    assert view.note == "the staging one" and view.question == "Which database should I migrate?"
    [answer] = core.inbox(state, agents["w"]).answers
    assert (answer.question_id, answer.answer, answer.answered_by) == (
        question_id,
        "the staging one",
        "olga",
    )
    assert answer.question == "Which database should I migrate?"
    assert answer.answered_at == s(2).isoformat()
    for who in ("x", "v"):
        box = core.inbox(state, agents[who])
        assert box.answers == [] and box.feedback == []
    assert core.inbox(state, agents["w"]).feedback == []  # an answer, not broadcast feedback


def test_an_answer_cannot_be_queued_as_a_task() -> None:
    state, agents = ticket()
    question_id = ask(state, agents, "w", 1, "Which database?")
    error = refused(lambda: resolve(state, question_id, 2, as_task=True), state)
    assert error.field == "as_task"


def test_a_retried_resolve_answers_the_same_and_another_note_is_refused() -> None:
    state, agents = ticket()
    question_id = ask(state, agents, "w", 1, "Which database?")
    first = resolve(state, question_id, 2, note="staging")
    before = state.model_dump()
    assert resolve(state, question_id, 3, note="staging") == first
    assert state.model_dump() == before  # no second answer, no second resolve message
    assert len(core.inbox(state, agents["w"]).answers) == 1
    error = refused(lambda: resolve(state, question_id, 4, note="production"), state)
    assert error.field == "escalation_id" and "already resolved by olga" in error.rule
    error = refused(lambda: resolve(state, question_id, 4, note="staging", operator="pete"), state)
    assert error.field == "escalation_id"


def test_an_answer_reaches_the_restarted_askers_replacement() -> None:
    state = health_kit.ticket(restart_cooldown_s=0)
    state.escalations_v1 = True
    asker = health_kit.join(state, s(0))
    msg = AskHuman(**asker, question="Which schema?")
    question_id = people.ask(state, msg, s(1)).reply.question_id
    deadlines.tick(state, s(100))  # it stopped beating: restarted
    assert state.agents[asker["agent_id"]].state in ("restarting", "unresponsive")
    replacement = health_kit.join(state, s(102))  # the new process, same lineage
    people.resolve(
        state,
        ResolveEscalation(escalation_id=question_id, note="v2", operator_token=health_kit.OPERATOR),
        s(200),
    )
    [answer] = core.inbox(state, replacement["agent_id"]).answers
    assert (answer.question_id, answer.answer) == (question_id, "v2")


def test_the_questions_of_an_agent_that_left_are_withdrawn() -> None:
    state, agents = ticket()
    question_id = ask(state, agents, "w", 1, "Which DB?")
    core.leave(state, LeaveTicket(**auth(agents, "w"), reason="done"), s(2))
    question = escalations.find(state, question_id)
    assert question.resolved_by == "unstuck" and "withdrawn: " in (question.note or "")
    assert events(question) == [("trigger", "pending"), ("resolve", "pending")]  # pages close
    error = refused(lambda: resolve(state, question_id, 3, note="staging"), state)
    assert error.field == "escalation_id" and "already resolved by unstuck" in error.rule
    for who in ("x", "v"):
        assert core.inbox(state, agents[who]).answers == []


def test_a_question_to_a_restarted_agent_reaches_its_replacement_after_the_answer() -> None:
    state, agents = ticket()
    question_id = ask(state, agents, "w", 1, "Which DB?")
    asker = state.agents[agents["w"]]
    asker.state = "terminated"  # restarted: its replacement registers under the same name
    replacement = asker.model_copy(update={"id": "w-2", "state": "idle", "answers": []})
    state.agents["w-2"] = replacement
    assert escalations.waits_for_answer(state, replacement)  # not stalled meanwhile
    assert escalations.open_questions(state, replacement) == 1  # its lineage's allowance
    resolve(state, question_id, 3, note="staging")
    assert [a.answer for a in core.inbox(state, "w-2").answers] == ["staging"]


# ---- a fresh diagnosis budget ------------------------------------------------------------


def report(run_id: str, recommendations: list[Recommendation]) -> DiagnosisReport:
    return DiagnosisReport(
        run_id=run_id,
        trigger="no_result",
        hypotheses=HypothesisSet(
            hypotheses=[
                Hypothesis(
                    statement="the final result was never submitted",
                    likelihood=0.9,
                    recommendations=recommendations,
                )
            ]
        ),
        plan=RecoveryPlan(tasks=recommendations),
        evidence_summary="summary",
        started_at=s(0),
        finished_at=s(1),
    )


def fail_for_good(state: TicketState, agents: dict[str, str], at: datetime) -> None:
    for _ in range(state.spec.policy.tasks.max_retries + 1):
        task = core.claim(state, ClaimTask(**auth(agents)), at).reply.task
        assert task is not None
        core.fail(state, FailTask(**auth(agents), task_id=task.id, reason="boom"), at)


def spend_the_budget(state: TicketState, agents: dict[str, str]) -> float:
    """Three diagnoses whose recovery tasks fail for good: the guard escalates."""
    finish_all(state, agents, s(0))
    diagnosis.tick(state, s(100))
    now = 100.0
    for _ in range(3):
        run = diagnosis.running_diagnosis(state)
        assert run is not None
        fix = Recommendation(title="Fix it", phase="testing")
        diagnosis.diagnosis_finished(state, report(run.run_id, [fix]), s(now + 1))
        fail_for_good(state, agents, s(now + 2))
        now += 100
    assert diagnosis.guard_reason(state) == "3 consecutive diagnoses failed"
    return now


@pytest.mark.parametrize("healing_v2", [False, True])
def test_resolving_the_guard_escalation_gives_a_fresh_budget(healing_v2: bool) -> None:
    state, agents = ticket(tasks=1)
    state.healing_v2 = healing_v2
    now = spend_the_budget(state, agents)
    if healing_v2:
        diagnosis.tick(state, s(now))  # the stuck check fires once more, to escalate
    [guard] = [e for e in state.escalations if e.source == "diagnosis_guard"]
    assert guard.severity == "SEV-2"
    assert diagnosis.stuck_at(state) is None  # waiting for a person
    assert diagnosis.display_status(state) == "escalated"
    ack(state, guard.id, now + 1)
    assert diagnosis.guard_reason(state) is not None  # an ack is not an answer
    resolve(state, guard.id, now + 2, note="fixed the flaky test runner")
    assert diagnosis.guard_reason(state) is None
    assert state.consecutive_failed_diagnoses == 0
    assert state.budget_from == len(state.diagnoses) == 3
    # Stuck detection resumes: a whole window after the note, the next diagnosis starts.
    at = diagnosis.stuck_at(state)
    assert at is not None and at >= s(now + 2)
    assert diagnosis.tick(state, at - timedelta(microseconds=1)) == []
    [effect] = diagnosis.tick(state, at)
    assert isinstance(effect, StartDiagnosis) and effect.input.number == 4


def test_resolving_a_ladder_escalation_lets_diagnosing_resume() -> None:
    state, agents = ticket(tasks=1)
    state.healing_v2 = True
    finish_all(state, agents, s(0))
    [effect] = diagnosis.tick(state, s(10))
    assert isinstance(effect, StartDiagnosis)
    person = Recommendation(title="Needs a human", phase="testing", remedy="escalate")
    diagnosis.diagnosis_finished(state, report(effect.input.run_id, [person]), s(11))
    [ladder] = state.escalations
    assert ladder.source == "diagnosis_ladder" and ladder.diagnosis_run_id == effect.input.run_id
    assert diagnosis.guard_reason(state) is not None
    assert diagnosis.stuck_at(state) is None
    resolve(state, ladder.id, 20, note="granted the missing permission")
    assert diagnosis.guard_reason(state) is None
    assert state.budget_from == 1
    at = diagnosis.stuck_at(state)
    assert at is not None
    assert isinstance(diagnosis.tick(state, at)[0], StartDiagnosis)


def test_the_run_budget_counts_from_the_last_resolve() -> None:
    state, agents = ticket(tasks=1, stuck={"window_s": 1, "cooldown_s": 1, "max_runs": 2})
    fix = [Recommendation(title="Fix it", phase="testing")]
    finish_all(state, agents, s(0))

    def run_once(at: datetime) -> None:
        [effect] = diagnosis.tick(state, at)
        assert isinstance(effect, StartDiagnosis)
        diagnosis.diagnosis_finished(state, report(effect.input.run_id, fix), at)
        finish_all(state, agents, at)  # its recovery task is done: not a failure

    run_once(s(10))
    run_once(s(20))
    assert diagnosis.guard_reason(state) == "2 diagnoses ran (the limit is 2)"
    assert diagnosis.request_diagnosis(state, "task_failed", s(30)) == []
    [guard] = state.escalations
    resolve(state, guard.id, 40)
    assert diagnosis.guard_reason(state) is None and state.budget_from == 2
    for _ in range(2):  # two more runs: the budget is fresh
        at = diagnosis.stuck_at(state)
        assert at is not None
        run_once(at)
    assert diagnosis.guard_reason(state) == "2 diagnoses ran (the limit is 2)"
    assert len(state.diagnoses) == 4


# ---- waiting for a person ----------------------------------------------------------------


def test_an_open_question_is_neither_stuck_nor_stalled() -> None:
    state, agents = ticket(tasks=3)
    state.behaviour_v1 = True
    held_w = core.claim(state, ClaimTask(**auth(agents, "w")), s(0)).reply.task
    held_x = core.claim(state, ClaimTask(**auth(agents, "x")), s(0)).reply.task
    assert held_w is not None and held_x is not None
    question_id = ask(state, agents, "w", 1, "Which schema?", task_id=held_w.id)
    later = s(10_000)  # far past the stall bound
    w, x = state.agents[agents["w"]], state.agents[agents["x"]]
    assert behaviour.stall(state, w, later).value == 0.0
    assert "person" in behaviour.stall(state, w, later).detail
    assert behaviour.stall(state, x, later).value == 1.0  # the one that did not ask stalls
    assert behaviour.stall_starts(state, w) is None
    resolve(state, question_id, 20, note="the v2 one")
    assert behaviour.stall(state, w, later).value == 1.0  # answered: it must act again


def test_an_open_question_keeps_the_ticket_from_being_stuck() -> None:
    state, agents = ticket(tasks=1)
    finish_all(state, agents, s(0))
    assert diagnosis.stuck_at(state) is not None  # nothing to do, no result: stuck soon
    question_id = ask(state, agents, "w", 1, "Should I submit the result?")
    assert diagnosis.stuck_at(state) is None
    assert diagnosis.tick(state, s(100_000)) == []
    assert state.diagnoses == []
    resolve(state, question_id, 100_001, note="yes, submit it")
    at = diagnosis.stuck_at(state)
    assert at == s(100_001 + WINDOW)  # a whole window to act on the answer
    assert isinstance(diagnosis.tick(state, at)[0], StartDiagnosis)


def test_a_question_whose_asker_left_holds_up_nothing() -> None:
    state, agents = ticket(tasks=1)
    finish_all(state, agents, s(0))
    ask(state, agents, "w", 1, "Should I submit the result?")
    assert diagnosis.stuck_at(state) is None
    core.leave(state, LeaveTicket(**auth(agents, "w"), reason="session over"), s(2))
    # Nobody waits for the answer any more: the ticket is stuck as if nobody had asked.
    assert not escalations.waiting_for_person(state)
    assert diagnosis.stuck_at(state) is not None


# ---- the ticket's end, quarantine, critical anomalies ------------------------------------


def test_the_ticket_finishing_resolves_every_open_escalation() -> None:
    state, agents = ticket()
    question_id = ask(state, agents, "w", 1, "Which DB?")
    acked = raise_(state, "restart_failed", 2, agents["x"])
    ack(state, acked.id, 3)
    done = raise_(state, "external_restart", 4, agents["x"])
    resolve(state, done.id, 5)
    core.cancel(
        state,
        CancelTicket(reason="no longer needed", operator="olga", operator_token=OPERATOR),
        s(6),
    )
    assert all(e.resolved for e in state.escalations)
    assert escalations.open_severity(state) == "none"
    for escalation in state.escalations:
        assert [d.event for d in escalation.deliveries].count("resolve") == 1, escalation.id
    question = escalations.find(state, question_id)
    assert question.resolved_by == "unstuck" and question.resolved_at == s(6)
    assert question.note is not None and "cancelled" in question.note
    assert acked.resolved_by == "unstuck" and events(acked)[-1] == ("resolve", "pending")
    assert done.resolved_by == "olga"  # resolved before: untouched
    # Later retries of a person's resolve with the same note still answer the same.
    assert resolve(state, done.id, 7).status == "resolved"


def test_releasing_a_quarantined_agent_resolves_its_quarantine_escalation() -> None:
    state = health_kit.ticket(restart_cooldown_s=0)
    state.escalations_v1 = True
    for n in range(4):
        _, who = health_kit.crash(state, n * 100, n + 1)
    agent = state.agents[who["agent_id"]]
    assert agent.state == "quarantined"
    [quarantine] = [e for e in state.escalations if e.source == "restart_quarantine"]
    assert quarantine.agent_id == agent.id and not quarantine.resolved
    others = [e for e in state.escalations if e is not quarantine and not e.resolved]
    health.release(
        state,
        ReleaseAgent(agent_id=agent.id, operator="olga", operator_token=health_kit.OPERATOR),
        s(1000),
    )
    assert quarantine.resolved and quarantine.resolved_by == "olga"
    assert [d.event for d in quarantine.deliveries] == ["trigger", "resolve"]
    assert all(not e.resolved for e in others)  # only its own


def test_an_anomaly_on_a_critical_ticket_escalates_at_once() -> None:
    for priority, expected in (("critical", ["critical_anomaly"]), ("normal", [])):
        state, agents = ticket(
            tasks=2,
            priority=priority,
            escalation={"severity": {"critical_anomaly": "SEV-1"}},
            health={"idle_deadline_s": 1000, "running_deadline_s": 1000},
            task_policy={"stall_s": 30},
        )
        state.behaviour_v1 = True
        state.healing_v2 = True
        core.claim(state, ClaimTask(**auth(agents, "w")), s(0))
        deadlines.tick(state, s(30))  # stalled: an anomaly starts
        effects = deadlines.tick(state, s(30 + WINDOW))  # ... and lasts a window
        assert any(isinstance(e, StartDiagnosis) for e in effects)
        assert [e.source for e in state.escalations] == expected, priority
        if expected:
            assert state.escalations[0].severity == "SEV-1"
            assert state.escalations[0].agent_id == agents["w"]


# ---- views and delivery books ------------------------------------------------------------


def test_open_severity_is_the_most_severe_unresolved_one() -> None:
    state, agents = ticket(escalation={"severity": {"restart_failed": "SEV-1"}})
    assert escalations.open_severity(state) == "none"
    question_id = ask(state, agents, "w", 1, "?")
    assert escalations.open_severity(state) == "SEV-3"
    guard = raise_(state, "diagnosis_guard", 2)
    assert escalations.open_severity(state) == "SEV-2"
    worst = raise_(state, "restart_failed", 3, agents["x"])
    ack(state, worst.id, 4)
    assert escalations.open_severity(state) == "SEV-1"  # acknowledged is still open
    resolve(state, worst.id, 5)
    assert escalations.open_severity(state) == "SEV-2"
    resolve(state, guard.id, 6)
    resolve(state, question_id, 7, note="answer")
    assert escalations.open_severity(state) == "none"


def test_an_incomplete_delivery_stays_pending_and_accumulates_its_sinks() -> None:
    state, agents = ticket()
    escalation = raise_(state, "restart_failed", 1, agents["w"])
    escalations.delivery_finished(
        state, escalation.id, 0, s(2), delivered=["hook"], failed=[], complete=False
    )
    delivery = escalation.deliveries[0]
    assert (delivery.status, delivery.finished_at) == ("pending", None)
    assert escalations.pending(state) == [escalation]
    assert escalations.next_delivery(escalation) == (0, delivery)
    escalations.delivery_finished(
        state,
        escalation.id,
        0,
        s(3),
        delivered=["hook", "slack"],
        failed=["typo: HTTP 404"],
        complete=False,
    )
    assert delivery.delivered == ["hook", "slack"] and delivery.failed == ["typo: HTTP 404"]
    assert escalations.settled_sinks(delivery) == ["hook", "slack", "typo"]
    escalations.delivery_finished(
        state, escalation.id, 0, s(4), delivered=["pager"], failed=[], complete=True
    )
    assert (delivery.status, delivery.finished_at) == ("delivered", s(4))
    assert delivery.delivered == ["hook", "slack", "pager"]
    assert escalations.pending(state) == []
    assert state.timeline[-1].kind == "escalation_delivered"
    assert "refused by typo: HTTP 404" in state.timeline[-1].message


def test_deliveries_of_one_escalation_go_out_in_order() -> None:
    state, agents = ticket()
    escalation = raise_(state, "restart_failed", 1, agents["w"])
    ack(state, escalation.id, 2)
    resolve(state, escalation.id, 3)
    assert [d.event for d in escalation.deliveries] == ["trigger", "acknowledge", "resolve"]
    sent = []
    while (due := escalations.next_delivery(escalation)) is not None:
        index, delivery = due
        sent.append(delivery.event)
        escalations.delivery_finished(
            state, escalation.id, index, s(4), delivered=[], failed=["x: HTTP 404"]
        )
    assert sent == ["trigger", "acknowledge", "resolve"]
    assert [d.status for d in escalation.deliveries] == ["failed"] * 3
    assert state.timeline[-1].kind == "escalation_undeliverable"
    view = escalations.view(state, escalation)
    assert [d.event for d in view.deliveries] == sent and view.status == "resolved"


# ---- bounds and scope (review findings) --------------------------------------------------


def test_questions_are_bounded_per_ticket_too() -> None:
    state, agents = ticket(escalation={"max_open_questions_per_ticket": 2})
    ask(state, agents, "w", 1, "one?")
    ask(state, agents, "x", 2, "two?")
    msg = AskHuman(**auth(agents, "v"), question="three?")
    error = refused(lambda: people.ask(state, msg, s(3)), state)
    assert error.field == "question" and "max_open_questions_per_ticket" in error.rule


def test_only_resolving_a_stop_of_diagnosing_gives_a_fresh_budget() -> None:
    state, agents = ticket()
    state.consecutive_failed_diagnoses = 3
    other = raise_(state, "external_restart", 1, agents["x"])
    resolve(state, other.id, 2)
    assert state.consecutive_failed_diagnoses == 3  # diagnosing never stopped for it
    guard = raise_(state, "diagnosis_guard", 3)
    ladder = raise_(state, "diagnosis_ladder", 4)
    resolve(state, guard.id, 5, note="fixed the runner")
    assert state.consecutive_failed_diagnoses == 0
    # The ladder's escalation was the same stop: the person dealt with both.
    assert ladder.resolved and ladder.note == f"with {guard.id}: fixed the runner"
    assert events(ladder)[-1] == ("resolve", "pending")
    assert diagnosis.guard_reason(state) is None


def test_releasing_a_replacement_resolves_its_lineages_quarantine() -> None:
    state, agents = ticket()
    storm = raise_(state, "restart_quarantine", 1, agents["w"])
    old = state.agents[agents["w"]]
    old.state = "terminated"
    state.agents["w-2"] = old.model_copy(update={"id": "w-2", "state": "idle"})
    escalations.resolve_quarantine(state, "w-2", s(2), "olga")
    assert storm.resolved and storm.resolved_by == "olga"


def test_blank_questions_and_notes_are_refused_by_the_message() -> None:
    with pytest.raises(ValueError, match="only whitespace"):
        AskHuman(agent_id="a", token="t", question=" \n\t")
    with pytest.raises(ValueError, match="only whitespace"):
        ResolveEscalation(escalation_id="e", note="   ", operator_token="t")
