"""Every transition and every refusal of the pure ticket core (no Temporal, no clock)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import pytest
from pydantic import ValidationError

from core import ticket as core
from core import views
from core.state import NOTES_LIMIT, TicketState
from models.messages import (
    CancelTicket,
    ClaimTask,
    CompleteTask,
    CreateTask,
    FailTask,
    Heartbeat,
    RegisterAgent,
    ReportProgress,
    ResultFile,
    ReviewResult,
    SubmitResult,
)
from models.spec import KB, MB, TicketSpec


class Creds(TypedDict):
    """What every authenticated message carries."""

    agent_id: str
    token: str


T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(minutes=5)
OPERATOR_TOKEN = "operator-secret"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def seed(key: str, phase: str = "implementation", **fields: Any) -> dict[str, Any]:
    return {"key": key, "phase": phase, "title": f"task {key}", **fields}


def make_ticket(
    tasks: list[dict[str, Any]] | None = None, policy: dict[str, Any] | None = None, **spec: Any
) -> TicketState:
    """A fresh ticket, launched with an operator token."""
    raw = {
        "id": "tk",
        "title": "A ticket",
        "result_criteria": ["it works", "it is documented"],
        "tasks": tasks or [],
        "policy": policy or {},
        **spec,
    }
    state = core.new_ticket(TicketSpec.model_validate(raw), T0)
    state.operator_token_sha256 = core.hash_token(OPERATOR_TOKEN)
    return state


def join(state: TicketState, name: str = "w", kind: str = "worker") -> Creds:
    """Register an agent; returns the credentials every later message carries."""
    token = f"token-of-{name}"
    reply = core.register(state, RegisterAgent(name=name, kind=kind), T0, token=token).reply  # type: ignore[arg-type]
    return {"agent_id": reply.agent_id, "token": token}


def claim(state: TicketState, who: Creds, **kw: Any) -> str | None:
    task = core.claim(state, ClaimTask(**who, **kw), at(1)).reply.task
    return task.id if task else None


def complete_msg(who: Creds, task_id: str, **kw: Any) -> CompleteTask:
    fields: dict[str, Any] = {"result": "# done", "result_type": "implementation", **kw}
    return CompleteTask(**who, task_id=task_id, **fields)


def submit(state: TicketState, who: Creds, content: str = "# the result") -> int:
    return core.submit_result(state, SubmitResult(**who, content=content), at(2)).reply.version


def review(state: TicketState, who: Creds, version: int, passed: bool) -> core.Step[Any]:
    feedback = "" if passed else "not good enough"
    msg = ReviewResult(**who, version=version, passed=passed, feedback=feedback)
    return core.review_result(state, msg, at(3))


def assert_refused(
    fn: Callable[..., Any],
    state: TicketState,
    msg: Any,
    field: str,
    *rule_parts: str,
    **kwargs: Any,
) -> core.Refused:
    """``fn`` refuses ``msg`` (checked and applied), names ``field``, and changes nothing."""
    before = state.model_dump()
    refusal: core.Refused | None = None
    for apply in (False, True):
        with pytest.raises(core.Refused) as info:
            fn(state, msg, LATER, apply=apply, **kwargs)
        refusal = info.value
        assert refusal.field == field, refusal
        for part in rule_parts:
            assert part in refusal.rule, f"{part!r} not in {refusal.rule!r}"
        assert str(refusal) == f"{field}: {refusal.rule}"
        assert state.model_dump() == before, "a refused message changed the state"
    assert refusal is not None
    return refusal


def unchanged_by(state: TicketState, fn: Callable[[], Any]) -> Any:
    before = state.model_dump()
    result = fn()
    assert state.model_dump() == before
    return result


# ---- construction --------------------------------------------------------------------------


def test_new_ticket_seeds_tasks_with_sequential_ids_and_mapped_dependencies() -> None:
    state = make_ticket([seed("a"), seed("b", depends_on=["a"]), seed("c", depends_on=["a", "b"])])
    assert list(state.tasks) == ["T1", "T2", "T3"]
    assert [t.key for t in state.tasks.values()] == ["a", "b", "c"]
    assert state.tasks["T3"].depends_on == ["T1", "T2"]
    assert all(t.status == "pending" and t.assigned_agent is None for t in state.tasks.values())
    assert state.next_task_number == 4
    assert state.status == "open" and state.outbox.is_empty()
    assert state.timeline[-1].kind == "ticket_started"


# ---- register ------------------------------------------------------------------------------


def test_register_issues_an_id_and_keeps_only_the_token_hash() -> None:
    state = make_ticket()
    reply = core.register(state, RegisterAgent(name="w"), T0, token="s3cret-token").reply
    assert reply.agent_id == "w-1"
    assert reply.token == "s3cret-token"
    assert reply.ticket_id == "tk"
    assert reply.heartbeat_interval_s == 5.0  # min(30 s idle, 15 s running) / 3
    agent = state.agents["w-1"]
    assert agent.token_sha256 == hashlib.sha256(b"s3cret-token").hexdigest()
    assert agent.kind == "worker" and agent.state == "idle" and agent.registered_at == T0
    assert "s3cret-token" not in state.model_dump_json()
    assert "s3cret-token" not in views.agent_view(state, agent).model_dump_json()
    second = core.register(state, RegisterAgent(name="v", kind="validator"), T0, token="x")
    assert second.reply.agent_id == "v-2"


def test_register_refuses_a_duplicate_live_name() -> None:
    state = make_ticket()
    join(state, "w")
    assert_refused(
        core.register,
        state,
        RegisterAgent(name="w"),
        "name",
        "'w'",
        "already registered as w-1",
        token="t2",
    )


def test_register_reuses_the_name_of_a_terminated_agent() -> None:
    state = make_ticket()
    join(state, "w")
    state.agents["w-1"].state = "terminated"
    assert join(state, "w")["agent_id"] == "w-2"


def test_register_refused_on_a_closed_ticket() -> None:
    state = make_ticket()
    core.cancel(state, CancelTicket(reason="done", operator_token=OPERATOR_TOKEN), T0)
    assert_refused(core.register, state, RegisterAgent(name="w"), "ticket", "cancelled", token="t")


def test_register_check_only_changes_nothing() -> None:
    state = make_ticket()
    step = unchanged_by(
        state, lambda: core.register(state, RegisterAgent(name="w"), T0, token="t", apply=False)
    )
    assert step.reply.agent_id == "" and step.reply.token == ""


# ---- heartbeat -----------------------------------------------------------------------------


def test_heartbeat_records_seq_time_and_status() -> None:
    state = make_ticket()
    w = join(state)
    assert core.heartbeat(state, Heartbeat(**w, seq=0, status="running"), at(10))
    agent = state.agents[w["agent_id"]]
    assert (agent.last_seq, agent.last_heartbeat_at, agent.heartbeats) == (0, at(10), 1)
    assert agent.state == "running"
    assert core.heartbeat(state, Heartbeat(**w, seq=1, status="idle"), at(11))
    assert (agent.last_seq, agent.heartbeats, agent.state) == (1, 2, "idle")
    assert agent.seq_gaps == 0 and agent.out_of_order == 0


@pytest.mark.parametrize(
    "who", [{"agent_id": "ghost-9", "token": "x"}, {"agent_id": "w-1", "token": "wrong"}]
)
def test_heartbeat_from_unknown_or_unauthenticated_is_counted_and_ignored(
    who: Creds,
) -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    claim(state, w)
    before = state.model_dump()
    msg = Heartbeat(**who, seq=0, status="running", current_task_id="T1")
    assert core.heartbeat(state, msg, LATER) is False
    after = state.model_dump()
    assert after.pop("ignored_messages") == before.pop("ignored_messages") + 1
    assert after == before


def test_heartbeat_seq_gap_is_counted_and_accepted() -> None:
    state = make_ticket()
    w = join(state)
    core.heartbeat(state, Heartbeat(**w, seq=1), at(1))
    assert core.heartbeat(state, Heartbeat(**w, seq=5), at(2))
    agent = state.agents[w["agent_id"]]
    assert (agent.seq_gaps, agent.last_seq, agent.heartbeats) == (3, 5, 2)


@pytest.mark.parametrize("seq", [5, 4, 0])
def test_heartbeat_out_of_order_or_duplicate_is_counted_and_ignored(seq: int) -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    claim(state, w)
    core.heartbeat(state, Heartbeat(**w, seq=5, status="idle"), at(1))
    before = state.model_dump()
    msg = Heartbeat(**w, seq=seq, status="running", current_task_id="T1")
    assert core.heartbeat(state, msg, at(2)) is False
    after = state.model_dump()
    agent_after = after["agents"][w["agent_id"]]
    agent_before = before["agents"][w["agent_id"]]
    assert agent_after.pop("out_of_order") == agent_before.pop("out_of_order") + 1
    assert after == before  # last_seq, time, status and the task untouched


def test_heartbeat_current_task_moves_own_assigned_task_to_running() -> None:
    state = make_ticket([seed("a"), seed("b")])
    w, x = join(state, "w"), join(state, "x")
    assert claim(state, w) == "T1"
    assert claim(state, x) == "T2"
    core.heartbeat(state, Heartbeat(**w, seq=0, status="running", current_task_id="T1"), at(5))
    assert state.tasks["T1"].status == "running"
    assert state.tasks["T1"].updated_at == at(5)
    # Naming someone else's task, or an unknown one, does nothing to it.
    core.heartbeat(state, Heartbeat(**w, seq=1, status="running", current_task_id="T2"), at(6))
    core.heartbeat(state, Heartbeat(**w, seq=2, status="running", current_task_id="T99"), at(7))
    assert state.tasks["T2"].status == "assigned"
    assert state.agents[w["agent_id"]].heartbeats == 3


def test_heartbeat_does_not_revive_a_quarantined_agent() -> None:
    state = make_ticket()
    w = join(state)
    state.agents[w["agent_id"]].state = "quarantined"
    assert core.heartbeat(state, Heartbeat(**w, seq=0, status="running"), at(1))
    assert state.agents[w["agent_id"]].state == "quarantined"


# ---- progress ------------------------------------------------------------------------------


def test_progress_on_own_task_adds_a_note_and_marks_it_running() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    claim(state, w)
    assert core.progress(state, ReportProgress(**w, task_id="T1", note="halfway"), at(9))
    task = state.tasks["T1"]
    assert (task.status, task.notes, task.updated_at) == ("running", ["halfway"], at(9))
    assert state.last_activity_at == at(9)
    assert state.timeline[-1].kind == "progress"


def test_progress_notes_are_bounded() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    claim(state, w)
    for i in range(NOTES_LIMIT + 7):
        core.progress(state, ReportProgress(**w, task_id="T1", note=f"n{i}"), at(i))
    notes = state.tasks["T1"].notes
    assert len(notes) == NOTES_LIMIT
    assert notes[0] == "n7" and notes[-1] == f"n{NOTES_LIMIT + 6}"
    with pytest.raises(ValidationError):
        ReportProgress(**w, task_id="T1", note="x" * 4001)


@pytest.mark.parametrize("case", ["other_agents_task", "unknown_task", "pending_task", "done_task"])
def test_progress_on_a_task_not_held_is_counted_and_ignored(case: str) -> None:
    state = make_ticket([seed("a"), seed("b"), seed("c")])
    w, x = join(state, "w"), join(state, "x")
    assert claim(state, w) == "T1"
    assert claim(state, x) == "T2"
    core.complete(state, complete_msg(w, "T1"), at(2))
    task_id = {
        "other_agents_task": "T2",
        "unknown_task": "T42",
        "pending_task": "T3",
        "done_task": "T1",
    }[case]
    before = state.model_dump()
    assert core.progress(state, ReportProgress(**w, task_id=task_id, note="hi"), LATER) is False
    after = state.model_dump()
    assert after.pop("ignored_messages") == before.pop("ignored_messages") + 1
    assert after == before


def test_progress_with_a_wrong_token_is_ignored() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    claim(state, w)
    before = state.model_dump()
    msg = ReportProgress(agent_id=w["agent_id"], token="nope", task_id="T1", note="x")
    assert core.progress(state, msg, LATER) is False
    after = state.model_dump()
    assert after.pop("ignored_messages") == before.pop("ignored_messages") + 1
    assert after == before


# ---- claim ---------------------------------------------------------------------------------


def test_claim_assigns_and_counts_the_attempt() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    reply = core.claim(state, ClaimTask(**w), at(4)).reply
    assert reply.task is not None and reply.task.id == "T1"
    assert reply.task.status == "assigned" and reply.task.assigned_agent == w["agent_id"]
    assert reply.task.attempt == 1 and reply.reason == "" and reply.inbox.stop is False
    task = state.tasks["T1"]
    assert (task.status, task.assigned_agent, task.attempt) == ("assigned", "w-1", 1)
    assert state.last_activity_at == at(4)


def test_claim_order_priority_then_phase_then_creation() -> None:
    state = make_ticket(
        [
            seed("t-low", "requirements", priority="low"),  # T1
            seed("t-test", "testing"),  # T2
            seed("t-impl-1", "implementation"),  # T3
            seed("t-req", "requirements"),  # T4
            seed("t-impl-2", "implementation"),  # T5
            seed("t-crit", "testing", priority="critical"),  # T6
            seed("t-high", "testing", priority="high"),  # T7
        ],
        policy={"tasks": {"max_tasks_per_agent": 100}},
    )
    w = join(state)
    order = [claim(state, w) for _ in range(7)]
    assert order == ["T6", "T7", "T4", "T3", "T5", "T2", "T1"]
    assert claim(state, w) is None


def test_claim_respects_dependencies() -> None:
    state = make_ticket(
        [seed("a", priority="low"), seed("b", priority="critical", depends_on=["a"])]
    )
    w, x = join(state, "w"), join(state, "x")
    assert claim(state, w) == "T1"  # T2 outranks it but waits for T1
    reply = core.claim(state, ClaimTask(**x), at(2)).reply
    assert reply.task is None
    assert reply.reason == "1 pending task(s) wait for their dependencies"
    assert core.next_eligible(state) is None
    core.complete(state, complete_msg(w, "T1"), at(3))
    assert claim(state, x) == "T2"


def test_claim_waits_on_a_failed_dependency() -> None:
    state = make_ticket(
        [seed("a"), seed("b", depends_on=["a"])], policy={"tasks": {"max_retries": 0}}
    )
    w = join(state)
    claim(state, w)
    core.fail(state, FailTask(**w, task_id="T1", reason="impossible"), at(2))
    assert state.tasks["T1"].status == "failed"
    assert claim(state, w) is None


def test_claim_phase_filter() -> None:
    state = make_ticket([seed("a", "requirements", priority="critical"), seed("b", "testing")])
    w = join(state)
    assert claim(state, w, phases=["testing"]) == "T2"
    assert claim(state, w, phases=["testing"]) is None
    assert state.tasks["T1"].status == "pending"
    assert claim(state, w, phases=["requirements", "testing"]) == "T1"


def test_claim_phase_filter_with_nothing_left() -> None:
    state = make_ticket([seed("a", "requirements")])
    w = join(state)
    reply = core.claim(state, ClaimTask(**w, phases=["testing"]), at(2)).reply
    # The only pending task is in another phase; the reason must not blame dependencies.
    assert reply.task is None
    assert reply.reason == "no pending task in phases ['testing']"
    assert state.tasks["T1"].status == "pending"


def test_claim_unknown_phase_refused() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    assert_refused(
        core.claim,
        state,
        ClaimTask(**w, phases=["testing", "deploy"]),
        "phases",
        "unknown phase 'deploy'",
        "requirements",
    )


def test_claim_stops_at_max_tasks_per_agent() -> None:
    state = make_ticket([seed(k) for k in "abcd"], policy={"tasks": {"max_tasks_per_agent": 3}})
    w = join(state)
    assert [claim(state, w) for _ in range(3)] == ["T1", "T2", "T3"]
    reply = unchanged_by(state, lambda: core.claim(state, ClaimTask(**w), at(5)).reply)
    assert reply.task is None and reply.reason == "agent holds 3 tasks (the limit is 3)"
    core.complete(state, complete_msg(w, "T2"), at(6))
    assert claim(state, w) == "T4"


def test_validator_gets_nothing_to_claim() -> None:
    state = make_ticket([seed("a")])
    v = join(state, "v", "validator")
    reply = unchanged_by(state, lambda: core.claim(state, ClaimTask(**v), at(1)).reply)
    assert reply.task is None and reply.reason == "nothing awaits review"


def test_stopped_agent_gets_nothing_and_its_inbox_says_stop() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    agent = state.agents[w["agent_id"]]
    agent.stop, agent.stop_reason = True, "restarting you"
    reply = unchanged_by(state, lambda: core.claim(state, ClaimTask(**w), at(1)).reply)
    assert reply.task is None and reply.reason == "stop: restarting you"
    assert reply.inbox.stop is True and reply.inbox.stop_reason == "restarting you"
    assert core.inbox(state, w["agent_id"]).stop is True


def test_quarantined_agent_gets_nothing() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    state.agents[w["agent_id"]].state = "quarantined"
    reply = unchanged_by(state, lambda: core.claim(state, ClaimTask(**w), at(1)).reply)
    assert reply.task is None and reply.reason == "agent is quarantined"


def test_claim_with_nothing_pending() -> None:
    state = make_ticket()
    w = join(state)
    reply = core.claim(state, ClaimTask(**w), at(1)).reply
    assert reply.task is None and reply.reason == "no pending task"


def test_claim_wrong_token_refused() -> None:
    state = make_ticket([seed("a")])
    join(state)
    msg = ClaimTask(agent_id="w-1", token="guess")
    assert_refused(core.claim, state, msg, "token", "does not match the token issued to w-1")


def test_claim_unknown_agent_refused() -> None:
    state = make_ticket([seed("a")])
    msg = ClaimTask(agent_id="nobody-7", token="x")
    assert_refused(core.claim, state, msg, "agent_id", "unknown agent 'nobody-7'", "register")


def test_claim_terminated_agent_refused() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    state.agents[w["agent_id"]].state = "terminated"
    assert_refused(core.claim, state, ClaimTask(**w), "agent_id", "was terminated")


def test_claim_on_a_closed_ticket_refused() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    core.cancel(state, CancelTicket(reason="stop", operator_token=OPERATOR_TOKEN), T0)
    assert_refused(core.claim, state, ClaimTask(**w), "ticket", "is cancelled")


# ---- complete ------------------------------------------------------------------------------


def test_complete_stores_the_result_and_a_ledger_record() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    claim(state, w)
    body = "# Done\n" + "x" * 600
    reply = core.complete(state, complete_msg(w, "T1", result=body, result_type="fix"), at(7)).reply
    assert reply.next is None
    assert reply.task.status == "done" and reply.task.result_type == "fix"
    task = state.tasks["T1"]
    assert task.status == "done" and task.updated_at == at(7)
    assert task.result_preview == body[:500]
    assert task.result_sha256 == hashlib.sha256(body.encode()).hexdigest()
    [record] = state.outbox.task_results
    assert record.id == "tk/T1/a1/i0"
    assert (record.task_id, record.attempt, record.iteration) == ("T1", 1, 0)
    assert (record.agent_id, record.result_type, record.content) == ("w-1", "fix", body)
    assert record.submitted_at == at(7) and record.verification == "unverified"


def test_complete_ledger_id_follows_the_attempt() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    claim(state, w)
    core.fail(state, FailTask(**w, task_id="T1", reason="flaky"), at(2))
    claim(state, w)
    core.complete(state, complete_msg(w, "T1"), at(3))
    assert [r.id for r in state.outbox.task_results] == ["tk/T1/a2/i0"]


def test_complete_with_claim_next() -> None:
    state = make_ticket([seed("a"), seed("b", depends_on=["a"])])
    w = join(state)
    claim(state, w)
    reply = core.complete(state, complete_msg(w, "T1", claim_next=True), at(3)).reply
    assert reply.task.id == "T1" and reply.task.status == "done"
    assert reply.next is not None and reply.next.task is not None
    assert reply.next.task.id == "T2"  # its dependency just became done
    assert state.tasks["T2"].assigned_agent == w["agent_id"]
    reply = core.complete(state, complete_msg(w, "T2", claim_next=True), at(4)).reply
    assert reply.next is not None and reply.next.task is None
    assert reply.next.reason == "no pending task"


def test_complete_someone_elses_task_refused() -> None:
    state = make_ticket([seed("a")])
    w, x = join(state, "w"), join(state, "x")
    claim(state, w)
    assert_refused(
        core.complete, state, complete_msg(x, "T1"), "task_id", "T1 is assigned to w-1, not to x-2"
    )


def test_complete_unknown_task_refused() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    assert_refused(core.complete, state, complete_msg(w, "T9"), "task_id", "unknown task 'T9'")


def test_complete_unclaimed_task_refused() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    assert_refused(
        core.complete,
        state,
        complete_msg(w, "T1"),
        "task_id",
        "T1 is pending; only a claimed task can complete",
    )


def test_complete_done_task_refused() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    claim(state, w)
    core.complete(state, complete_msg(w, "T1"), at(2))
    assert_refused(
        core.complete,
        state,
        complete_msg(w, "T1"),
        "task_id",
        "T1 is done; only a claimed task can complete",
    )


def test_complete_result_over_100_kb_refused_with_its_size() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    claim(state, w)
    too_big = "é" * (50 * KB + 1)  # 2 bytes each in UTF-8: the limit counts bytes
    assert_refused(
        core.complete,
        state,
        complete_msg(w, "T1", result=too_big),
        "result",
        f"is {100 * KB + 2:,} bytes as JSON; the limit is {100 * KB:,} bytes",
    )
    core.complete(state, complete_msg(w, "T1", result="x" * (100 * KB)), at(3))
    assert state.tasks["T1"].status == "done"


def test_result_limits_count_the_json_escaped_size() -> None:
    """A control character is 1 byte of UTF-8 but 6 as JSON: the limit counts what the
    ticket carries, so 20,000 of them (20 KB of UTF-8) are refused at a 100 KB cap."""
    state = make_ticket([seed("a")])
    w = join(state)
    claim(state, w)
    assert_refused(
        core.complete,
        state,
        complete_msg(w, "T1", result="\u0001" * 20_000),
        "result",
        "is 120,000 bytes as JSON",
    )
    assert_refused(
        core.submit_result,
        state,
        SubmitResult(**w, content="\u0000" * 200_000),
        "content",
        "is 1,200,000 bytes as JSON; the limit is 1,048,576",
    )
    # 4-byte code points travel as they are (4 bytes), not as escaped surrogate pairs.
    core.complete(state, complete_msg(w, "T1", result="\U0001f600" * 25_000), at(3))
    assert state.tasks["T1"].status == "done"


def test_complete_respects_a_lower_policy_cap() -> None:
    state = make_ticket([seed("a")], policy={"tasks": {"max_result_bytes": 10}})
    w = join(state)
    claim(state, w)
    assert_refused(
        core.complete,
        state,
        complete_msg(w, "T1", result="x" * 11),
        "result",
        "is 11 bytes as JSON; the limit is 10 bytes",
    )


def test_complete_model_rules() -> None:
    w = Creds(agent_id="w-1", token="t")
    with pytest.raises(ValidationError, match="result_type"):
        CompleteTask(**w, task_id="T1", result="x", result_type="poem")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="result"):
        CompleteTask(**w, task_id="T1", result="", result_type="fix")
    with pytest.raises(ValidationError, match="Extra inputs"):
        CompleteTask(**w, task_id="T1", result="x", result_type="fix", bogus=1)  # type: ignore[call-arg]


# ---- fail ----------------------------------------------------------------------------------


def test_fail_returns_the_task_to_pending_with_the_failure_counted() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    claim(state, w)
    reply = core.fail(state, FailTask(**w, task_id="T1", reason="tool crashed"), at(5)).reply
    assert (reply.status, reply.failures, reply.failure_reason) == ("pending", 1, "tool crashed")
    task = state.tasks["T1"]
    assert (task.status, task.assigned_agent, task.failures) == ("pending", None, 1)
    assert state.timeline[-1].kind == "task_retry"
    assert claim(state, w) == "T1" and state.tasks["T1"].attempt == 2


def test_fail_for_good_after_max_retries_plus_one_failures() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    for n in range(1, 5):
        assert claim(state, w) == "T1"
        reply = core.fail(state, FailTask(**w, task_id="T1", reason=f"try {n}"), at(n)).reply
        assert reply.failures == n
        assert reply.status == ("failed" if n == 4 else "pending")
    assert state.tasks["T1"].status == "failed" and state.tasks["T1"].attempt == 4
    assert [e.kind for e in state.timeline if e.task_id == "T1"].count("task_failed") == 1
    assert claim(state, w) is None


def test_fail_with_zero_retries_fails_at_once() -> None:
    state = make_ticket([seed("a")], policy={"tasks": {"max_retries": 0}})
    w = join(state)
    claim(state, w)
    assert (
        core.fail(state, FailTask(**w, task_id="T1", reason="no"), at(1)).reply.status == "failed"
    )


def test_fail_someone_elses_task_refused() -> None:
    state = make_ticket([seed("a")])
    w, x = join(state, "w"), join(state, "x")
    claim(state, w)
    msg = FailTask(**x, task_id="T1", reason="sabotage")
    assert_refused(core.fail, state, msg, "task_id", "assigned to w-1, not to x-2")


def test_fail_unclaimed_or_unknown_task_refused() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    msg = FailTask(**w, task_id="T1", reason="r")
    assert_refused(core.fail, state, msg, "task_id", "T1 is pending; only a claimed task can fail")
    assert_refused(core.fail, state, FailTask(**w, task_id="T5", reason="r"), "task_id", "unknown")


# ---- create_task ---------------------------------------------------------------------------


def test_create_task_ids_are_sequential() -> None:
    state = make_ticket([seed("a"), seed("b")])
    w = join(state)
    d = join(state, "doc", "diagnostic")
    first = core.create_task(
        state,
        CreateTask(**w, phase="testing", title="found a bug", depends_on=["T1"], priority="high"),
        at(3),
    ).reply
    second = core.create_task(state, CreateTask(**d, phase="requirements", title="x"), at(4)).reply
    assert (first.id, second.id) == ("T3", "T4")
    task = state.tasks["T3"]
    assert (task.phase, task.priority, task.depends_on, task.created_by) == (
        "testing",
        "high",
        ["T1"],
        "w-1",
    )
    assert task.status == "pending" and task.key is None and task.seq == 3
    assert state.tasks["T4"].created_by == "doc-2"
    assert state.next_task_number == 5


def test_create_task_unknown_phase_refused() -> None:
    state = make_ticket()
    w = join(state)
    msg = CreateTask(**w, phase="deploy", title="x")
    assert_refused(core.create_task, state, msg, "phase", "unknown phase 'deploy'")


def test_create_task_unknown_dependency_refused() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    msg = CreateTask(**w, phase="testing", title="x", depends_on=["T1", "T7"])
    assert_refused(core.create_task, state, msg, "depends_on", "unknown task 'T7'")


def test_create_task_duplicate_dependency_refused() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    msg = CreateTask(**w, phase="testing", title="x", depends_on=["T1", "T1"])
    assert_refused(core.create_task, state, msg, "depends_on", "twice")


def test_create_task_by_a_validator_refused() -> None:
    state = make_ticket()
    v = join(state, "v", "validator")
    msg = CreateTask(**v, phase="testing", title="x")
    assert_refused(
        core.create_task,
        state,
        msg,
        "agent_id",
        "v-1 is a validator",
        "only worker or diagnostic agents may",
    )


# ---- submit_result -------------------------------------------------------------------------


def test_submit_result_stores_version_one_awaiting_a_verdict() -> None:
    state = make_ticket()
    w = join(state)
    reply = core.submit_result(state, SubmitResult(**w, content="# Result"), at(8)).reply
    assert (reply.version, reply.status) == (1, "pending_validation")
    [version] = state.results
    assert version.source == "content" and version.content == "# Result"
    assert version.criteria == ["it works", "it is documented"]
    assert version.sha256 == hashlib.sha256(b"# Result").hexdigest()
    assert version.size_bytes == 8 and version.submitted_at == at(8)
    [record] = state.outbox.workflow_results
    assert record.id == "tk/v1" and record.content == "# Result" and record.version == 1
    assert record.criteria_snapshot == ["it works", "it is documented"]


def test_submit_result_content_cap_is_1_mb() -> None:
    state = make_ticket()
    w = join(state)
    msg = SubmitResult(**w, content="x" * (MB + 1))
    assert_refused(core.submit_result, state, msg, "content", f"is {MB + 1:,} bytes", f"{MB:,}")
    assert submit(state, w, "x" * MB) == 1


@pytest.mark.parametrize("content", ["", "   \n\t"])
def test_submit_result_empty_content_refused(content: str) -> None:
    state = make_ticket()
    w = join(state)
    assert_refused(
        core.submit_result, state, SubmitResult(**w, content=content), "content", "empty"
    )


def test_submit_result_needs_exactly_one_of_content_and_file_ref() -> None:
    w = Creds(agent_id="w-1", token="t")
    with pytest.raises(ValidationError, match="exactly one of content or file_ref"):
        SubmitResult(**w)
    with pytest.raises(ValidationError, match="exactly one of content or file_ref"):
        SubmitResult(**w, content="x", file_ref="r.md")


@pytest.mark.parametrize(
    ("ref", "rule"),
    [
        ("../secret.md", "must not contain '..'"),
        ("docs/../../etc/x.md", "must not contain '..'"),
        ("docs\\..\\x.md", "must not contain '..'"),
        ("result.txt", "must name a .md file, got '.txt'"),
        ("result", "must name a .md file, got 'no suffix'"),
        ("   ", "is empty"),
        ("a\x00.md", "NUL"),
    ],
)
def test_file_ref_rules(ref: str, rule: str) -> None:
    with pytest.raises(core.Refused) as info:
        core.check_file_ref(ref)
    assert info.value.field == "file_ref" and rule in info.value.rule
    state = make_ticket()
    w = join(state)
    assert_refused(core.submit_result, state, SubmitResult(**w, file_ref=ref), "file_ref", rule)


@pytest.mark.parametrize("ref", ["result.md", "out/Final.MD", "a..b.md"])
def test_file_ref_accepted(ref: str) -> None:
    core.check_file_ref(ref)


def test_submit_result_by_file_reference() -> None:
    state = make_ticket()
    w = join(state)
    body = "# From a file\n"
    file = ResultFile(
        path="/abs/out/result.md",
        size_bytes=len(body),
        sha256=hashlib.sha256(body.encode()).hexdigest(),
        content=body,
    )
    msg = SubmitResult(**w, file_ref="out/result.md")
    assert core.submit_result(state, msg, at(1), apply=False).reply.version == 1
    reply = core.submit_result(state, msg, at(1), file=file).reply
    assert reply.version == 1
    version = state.results[0]
    assert (version.source, version.file_ref, version.content) == ("file", "out/result.md", body)
    record = state.outbox.workflow_results[0]
    assert record.file_ref == "out/result.md" and record.content == body


def test_submit_result_file_over_the_cap_refused() -> None:
    state = make_ticket(policy={"results": {"max_file_bytes": 100}})
    w = join(state)
    file = ResultFile(path="r.md", size_bytes=101, sha256="0" * 64, content="x" * 101)
    msg = SubmitResult(**w, file_ref="r.md")
    assert_refused(
        core.submit_result, state, msg, "file_ref", "file is 101 bytes; the limit is 100", file=file
    )


def test_submit_result_file_ref_without_the_file_is_a_caller_error() -> None:
    state = make_ticket()
    w = join(state)
    before = state.model_dump()
    with pytest.raises(ValueError, match="needs the file read by the worker"):
        core.submit_result(state, SubmitResult(**w, file_ref="r.md"), at(1))
    assert state.model_dump() == before


def test_pending_version_blocks_a_second_submission() -> None:
    state = make_ticket()
    w = join(state)
    submit(state, w)
    assert_refused(
        core.submit_result,
        state,
        SubmitResult(**w, content="again"),
        "ticket",
        "v1 is awaiting its verdict",
    )


def test_rejected_version_allows_resubmission_as_the_next_version() -> None:
    state = make_ticket()
    w, v = join(state, "w"), join(state, "v", "validator")
    submit(state, w)
    review(state, v, 1, passed=False)
    assert submit(state, w, "# better") == 2
    assert [r.version for r in state.results] == [1, 2]
    assert [r.status for r in state.results] == ["rejected", "pending_validation"]
    assert [r.id for r in state.outbox.workflow_results] == ["tk/v1", "tk/v2"]


def test_validated_version_blocks_further_submissions() -> None:
    state = make_ticket(policy={"results": {"on_result_found": "do_nothing"}})
    w, v = join(state, "w"), join(state, "v", "validator")
    submit(state, w)
    review(state, v, 1, passed=True)
    assert_refused(
        core.submit_result,
        state,
        SubmitResult(**w, content="more"),
        "ticket",
        "v1 was validated; the result is final",
    )


def test_validator_cannot_submit() -> None:
    state = make_ticket()
    v = join(state, "v", "validator")
    assert_refused(
        core.submit_result, state, SubmitResult(**v, content="x"), "agent_id", "is a validator"
    )


# ---- review_result -------------------------------------------------------------------------


def test_only_validators_review() -> None:
    state = make_ticket()
    w = join(state)
    submit(state, w)
    msg = ReviewResult(**w, version=1, passed=True)
    assert_refused(
        core.review_result, state, msg, "agent_id", "w-1 is a worker", "only validator agents may"
    )


def test_review_of_an_unknown_version_refused() -> None:
    state = make_ticket()
    w, v = join(state, "w"), join(state, "v", "validator")
    msg = ReviewResult(**v, version=1, passed=True)
    assert_refused(core.review_result, state, msg, "version", "no result version 1", "none yet")
    submit(state, w)
    msg = ReviewResult(**v, version=2, passed=True)
    assert_refused(core.review_result, state, msg, "version", "no result version 2", "v1..v1")
    with pytest.raises(ValidationError):
        ReviewResult(**v, version=0, passed=True)


def test_second_verdict_refused() -> None:
    state = make_ticket()
    w, v = join(state, "w"), join(state, "v", "validator")
    submit(state, w)
    review(state, v, 1, passed=False)
    msg = ReviewResult(**v, version=1, passed=True)
    assert_refused(
        core.review_result,
        state,
        msg,
        "version",
        "v1 already has a verdict",
        "rejected by v-2",
        "exactly once",
    )


def test_feedback_required_on_a_failed_verdict() -> None:
    w = Creds(agent_id="v-1", token="t")
    for feedback in ("", "   "):
        with pytest.raises(ValidationError, match="feedback is required when passed is false"):
            ReviewResult(**w, version=1, passed=False, feedback=feedback)
    ReviewResult(**w, version=1, passed=True)


def test_failed_verdict_rejects_and_records_a_review() -> None:
    state = make_ticket()
    w, v = join(state, "w"), join(state, "v", "validator")
    submit(state, w)
    msg = ReviewResult(**v, version=1, passed=False, feedback="missing docs", evidence=["e1"])
    step = core.review_result(state, msg, at(30))
    assert step.effects == []
    assert (step.reply.version, step.reply.status, step.reply.ticket_status) == (
        1,
        "rejected",
        "open",
    )
    version = state.results[0]
    assert (version.status, version.validator_id, version.feedback) == (
        "rejected",
        "v-2",
        "missing docs",
    )
    assert version.evidence == ["e1"] and version.verdict_at == at(30)
    assert version.content is None  # the ledger keeps it
    [record] = state.outbox.reviews
    assert record.id == "tk/review/result/1/i1"
    assert (record.subject_kind, record.subject_id, record.passed) == ("result", "1", False)
    assert record.feedback == "missing docs" and record.validator_id == "v-2"
    assert state.status == "open"


def test_passing_verdict_with_stop_all_finishes_the_ticket() -> None:
    state = make_ticket([seed("a"), seed("b"), seed("c")])
    w, x = join(state, "w"), join(state, "x")
    v = join(state, "v", "validator")
    gone = join(state, "gone")
    state.agents[gone["agent_id"]].state = "terminated"
    claim(state, w)  # T1 assigned
    claim(state, x)  # T2 assigned
    core.complete(state, complete_msg(x, "T2"), at(2))  # T2 done
    submit(state, w)
    step = core.review_result(state, ReviewResult(**v, version=1, passed=True), at(40))
    assert step.reply.status == "validated" and step.reply.ticket_status == "completed"
    reason = "result v1 validated"
    assert step.effects == [
        core.StopAgents(("w-1", "x-2", "v-3"), reason),
        core.FinishTicket("completed", reason),
    ]
    assert state.status == "completed" and state.finished_at == at(40)
    assert state.outcome == reason
    assert {t.id: t.status for t in state.tasks.values()} == {
        "T1": "cancelled",
        "T2": "done",
        "T3": "cancelled",
    }
    assert core.open_tasks(state) == 0
    for who in (w, x, v):
        box = core.inbox(state, who["agent_id"])
        assert box.stop is True and box.stop_reason == reason
    assert core.inbox(state, gone["agent_id"]).stop is False
    assert core.validated_version(state) == 1
    assert views.status_view(state).status == "completed"
    # Nothing more is accepted.
    assert_refused(core.claim, state, ClaimTask(**w), "ticket", "is completed")
    assert_refused(core.complete, state, complete_msg(w, "T1"), "ticket", "is completed")
    assert_refused(
        core.submit_result, state, SubmitResult(**w, content="x"), "ticket", "is completed"
    )
    assert_refused(
        core.create_task,
        state,
        CreateTask(**w, phase="testing", title="x"),
        "ticket",
        "is completed",
    )


def test_passing_verdict_with_do_nothing_keeps_the_ticket_open() -> None:
    state = make_ticket([seed("a")], policy={"results": {"on_result_found": "do_nothing"}})
    w, v = join(state, "w"), join(state, "v", "validator")
    submit(state, w)
    step = core.review_result(state, ReviewResult(**v, version=1, passed=True), at(5))
    assert step.effects == []
    assert step.reply.ticket_status == "open" and state.status == "open"
    assert state.tasks["T1"].status == "pending"
    assert state.timeline[-1].kind == "result_found"
    assert claim(state, w) == "T1"  # work goes on
    assert_refused(
        core.submit_result, state, SubmitResult(**w, content="v2"), "ticket", "was validated"
    )


# ---- cancel --------------------------------------------------------------------------------


def test_cancel_with_the_operator_token() -> None:
    state = make_ticket([seed("a"), seed("b")])
    w = join(state)
    claim(state, w)
    msg = CancelTicket(reason="budget", operator="ops", operator_token=OPERATOR_TOKEN)
    step = core.cancel(state, msg, at(50))
    assert step.reply == "cancelled"
    reason = "cancelled by ops: budget"
    assert step.effects == [
        core.StopAgents(("w-1",), reason),
        core.FinishTicket("cancelled", reason),
    ]
    assert state.status == "cancelled" and state.finished_at == at(50)
    assert all(t.status == "cancelled" for t in state.tasks.values())
    assert core.inbox(state, "w-1").stop is True
    assert_refused(core.cancel, state, msg, "ticket", "is cancelled")


def test_cancel_with_a_wrong_operator_token_refused() -> None:
    state = make_ticket([seed("a")])
    msg = CancelTicket(reason="x", operator_token="guess")
    assert_refused(core.cancel, state, msg, "operator_token", "does not match")


def test_cancel_without_an_operator_token_on_the_ticket_refused() -> None:
    state = make_ticket()
    state.operator_token_sha256 = None
    msg = CancelTicket(reason="x", operator_token=OPERATOR_TOKEN)
    assert_refused(core.cancel, state, msg, "operator_token", "launched without an operator token")


def test_cancel_needs_a_token_and_a_reason_at_model_level() -> None:
    with pytest.raises(ValidationError):
        CancelTicket(reason="x")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        CancelTicket(reason="", operator_token="t")


# ---- idempotency ---------------------------------------------------------------------------


def _ready() -> tuple[TicketState, Creds, Creds]:
    state = make_ticket([seed("a"), seed("b")])
    w, v = join(state, "w"), join(state, "v", "validator")
    return state, w, v


Case = Callable[[TicketState, Creds, Creds, bool], core.Step[Any]]

#: One successful call per update, with a request id; ``apply`` is passed through.
IDEMPOTENT_CASES: dict[str, Case] = {
    "register": lambda s, w, v, apply: core.register(
        s, RegisterAgent(name="z", request_id="r1"), LATER, token="tok-z", apply=apply
    ),
    "claim": lambda s, w, v, apply: core.claim(
        s, ClaimTask(**w, request_id="r1"), LATER, apply=apply
    ),
    "complete": lambda s, w, v, apply: core.complete(
        s, complete_msg(w, "T1", request_id="r1", claim_next=True), LATER, apply=apply
    ),
    "fail": lambda s, w, v, apply: core.fail(
        s, FailTask(**w, task_id="T1", reason="x", request_id="r1"), LATER, apply=apply
    ),
    "create_task": lambda s, w, v, apply: core.create_task(
        s, CreateTask(**w, phase="testing", title="t", request_id="r1"), LATER, apply=apply
    ),
    "submit_result": lambda s, w, v, apply: core.submit_result(
        s, SubmitResult(**w, content="# r", request_id="r1"), LATER, apply=apply
    ),
    "review_result": lambda s, w, v, apply: core.review_result(
        s,
        ReviewResult(**v, version=1, passed=False, feedback="no", request_id="r1"),
        LATER,
        apply=apply,
    ),
    "cancel": lambda s, w, v, apply: core.cancel(
        s, CancelTicket(reason="x", operator_token=OPERATOR_TOKEN), LATER, apply=apply
    ),
}


def _prepare(name: str, state: TicketState, w: Creds, v: Creds) -> None:
    if name in ("complete", "fail"):
        claim(state, w)
    if name == "review_result":
        submit(state, w)


def test_a_replayed_registration_is_refused_and_never_reveals_the_token() -> None:
    state, _, _ = _ready()
    first = core.register(state, RegisterAgent(name="z", request_id="r1"), at(1), token="tok-z")
    assert first.reply.token == "tok-z"
    before = state.model_dump()
    with pytest.raises(core.Refused) as info:
        core.register(state, RegisterAgent(name="z", request_id="r1"), at(2), token="tok-2")
    assert info.value.field == "request_id"
    assert first.reply.agent_id in info.value.rule
    assert state.model_dump() == before
    assert "tok-z" not in state.model_dump_json()


@pytest.mark.parametrize("name", [n for n in IDEMPOTENT_CASES if n not in ("cancel", "register")])
def test_a_retried_request_gets_the_same_reply_and_changes_nothing(name: str) -> None:
    state, w, v = _ready()
    _prepare(name, state, w, v)
    call = IDEMPOTENT_CASES[name]
    first = call(state, w, v, True)
    after_first = state.model_dump()
    second = call(state, w, v, True)
    assert second.reply == first.reply
    assert second.effects == []
    assert state.model_dump() == after_first


@pytest.mark.parametrize("name", list(IDEMPOTENT_CASES))
def test_check_only_never_changes_the_state(name: str) -> None:
    state, w, v = _ready()
    _prepare(name, state, w, v)
    call = IDEMPOTENT_CASES[name]
    before = state.model_dump()
    call(state, w, v, False)
    assert state.model_dump() == before
    call(state, w, v, True)  # the same call, applied, does change it
    assert state.model_dump() != before


def test_same_request_id_for_different_kinds_or_agents_is_not_confused() -> None:
    state, w, _ = _ready()
    x = join(state, "x")
    assert core.claim(state, ClaimTask(**w, request_id="r"), at(1)).reply.task.id == "T1"  # type: ignore[union-attr]
    assert core.claim(state, ClaimTask(**x, request_id="r"), at(1)).reply.task.id == "T2"  # type: ignore[union-attr]
    reply = core.complete(state, complete_msg(w, "T1", request_id="r"), at(2)).reply
    assert reply.task.status == "done"


def test_a_cached_reply_is_not_given_to_a_wrong_token() -> None:
    state, w, _ = _ready()
    core.claim(state, ClaimTask(**w, request_id="r1"), at(1))
    msg = ClaimTask(agent_id=w["agent_id"], token="stolen?", request_id="r1")
    assert_refused(core.claim, state, msg, "token", "does not match")


def test_retry_after_the_ticket_finished_still_gets_its_reply() -> None:
    state, w, _ = _ready()
    claim(state, w)
    msg = complete_msg(w, "T1", request_id="done-1")
    first = core.complete(state, msg, at(1)).reply
    core.cancel(state, CancelTicket(reason="x", operator_token=OPERATOR_TOKEN), at(2))
    before = state.model_dump()
    assert core.complete(state, msg, at(3)).reply == first
    assert state.model_dump() == before


# ---- views ---------------------------------------------------------------------------------


def test_views_show_held_tasks_and_counts() -> None:
    state = make_ticket([seed("a", "requirements"), seed("b", "testing")])
    w = join(state)
    claim(state, w)
    core.heartbeat(state, Heartbeat(**w, seq=0, status="running", current_task_id="T1"), at(1))
    agent = views.agent_view(state, state.agents[w["agent_id"]])
    assert agent.tasks == ["T1"] and agent.state == "running" and agent.last_seq == 0
    status = views.status_view(state)
    assert status.counts_by_status == {"pending": 1, "running": 1}
    assert status.counts_by_phase["requirements"] == {"running": 1}
    assert status.phase == "requirements" and status.open_tasks == 2
    core.complete(state, complete_msg(w, "T1"), at(2))
    assert views.agent_view(state, state.agents[w["agent_id"]]).tasks == []
    assert views.status_view(state).phase == "testing"
