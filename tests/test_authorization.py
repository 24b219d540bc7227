"""The authorisation matrix: every agent kind × every message × own / another's object.

DESIGN §3–4, §7: an agent acts only on its own tasks; workers and diagnostic agents work
tasks, discover tasks and submit results; only validators review (results and tasks), and a
task claimed for review belongs to its validator. Signals from the wrong sender are ignored.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core import ticket as core
from core.state import TicketState
from models.messages import (
    ClaimTask,
    CompleteTask,
    CreateTask,
    FailTask,
    Heartbeat,
    RegisterAgent,
    ReportProgress,
    ReviewResult,
    ReviewTask,
    SubmitResult,
)
from models.spec import AgentKind, parse_spec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KINDS: tuple[AgentKind, ...] = ("worker", "diagnostic", "validator")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class World:
    """A ticket with one actor of the kind under test and an 'other' agent of each kind."""

    def __init__(self, kind: AgentKind) -> None:
        spec = parse_spec(
            {
                "id": "authz",
                "title": "Authorisation",
                "tasks": [
                    {"key": "mine", "phase": "implementation", "title": "mine"},
                    {"key": "theirs", "phase": "implementation", "title": "theirs"},
                    {
                        "key": "reviewed",
                        "phase": "implementation",
                        "title": "reviewed",
                        "validation": True,
                    },
                ],
            }
        )
        self.state: TicketState = core.new_ticket(spec, T0)
        self.me = self._join("me", kind)
        self.worker = self._join("other-worker", "worker")
        self.validator = self._join("other-validator", "validator")
        self.kind = kind
        # The actor holds T1 when it can hold work; another worker holds T2.
        if kind != "validator":
            self._claim_specific(self.me, "T1")
        self._claim_specific(self.worker, "T2")
        # T3 is completed by the other worker and claimed for review by the other validator.
        self._claim_specific(self.worker, "T3")
        core.complete(
            self.state,
            CompleteTask(**self.worker, task_id="T3", result="# r", result_type="test"),
            at(1),
        )
        core.claim(self.state, ClaimTask(**self.validator), at(2))
        assert self.state.tasks["T3"].reviewer == self.validator["agent_id"]
        # A result version awaits its verdict.
        core.submit_result(self.state, SubmitResult(**self.worker, content="# result"), at(3))

    def _join(self, name: str, kind: AgentKind) -> dict[str, Any]:
        reply = core.register(
            self.state, RegisterAgent(name=name, kind=kind), T0, token=f"token-{name}"
        ).reply
        return {"agent_id": reply.agent_id, "token": f"token-{name}"}

    def _claim_specific(self, who: dict[str, Any], task_id: str) -> None:
        for task in self.state.tasks.values():  # only this task is eligible for the claim
            if task.status == "pending" and task.id != task_id:
                task.status = "cancelled"
        core.claim(self.state, ClaimTask(**who), at(0))
        for task in self.state.tasks.values():
            if task.status == "cancelled":
                task.status = "pending"
        assert self.state.tasks[task_id].assigned_agent == who["agent_id"]


# message → (builder, kinds allowed on their own object, allowed on another's object)
def _messages() -> dict[str, Any]:
    return {
        "complete": lambda w, me, task: core.complete(
            w.state, CompleteTask(**me, task_id=task, result="# x", result_type="fix"), at(9)
        ),
        "fail": lambda w, me, task: core.fail(
            w.state, FailTask(**me, task_id=task, reason="no"), at(9)
        ),
        "create_task": lambda w, me, _: core.create_task(
            w.state, CreateTask(**me, phase="testing", title="found"), at(9)
        ),
        "submit_result": lambda w, me, _: core.submit_result(
            w.state, SubmitResult(**me, content="# mine"), at(9)
        ),
        "review_result": lambda w, me, _: core.review_result(
            w.state, ReviewResult(**me, version=1, passed=True), at(9)
        ),
        "review_task": lambda w, me, _: core.review_task(
            w.state, ReviewTask(**me, task_id="T3", iteration=1, passed=True), at(9)
        ),
    }


# (message, ownership) → the kinds that may do it. "own" = the actor's own object (its task,
# or for review_task a review it claimed), "other" = another agent's.
ALLOWED: dict[tuple[str, str], set[str]] = {
    ("complete", "own"): {"worker", "diagnostic"},
    ("complete", "other"): set(),
    ("fail", "own"): {"worker", "diagnostic"},
    ("fail", "other"): set(),
    ("create_task", "own"): {"worker", "diagnostic"},
    ("submit_result", "own"): {"worker", "diagnostic"},
    ("review_result", "own"): {"validator"},
    ("review_task", "own"): {"validator"},
    ("review_task", "other"): set(),
}


def _cases() -> list[tuple[str, str, str]]:
    return [(kind, message, owner) for (message, owner) in ALLOWED for kind in KINDS]


@pytest.mark.parametrize(("kind", "message", "owner"), _cases())
def test_authorization_matrix(kind: AgentKind, message: str, owner: str) -> None:
    world = World(kind)
    if message == "submit_result":  # resubmitting needs v1's failed verdict first
        core.review_result(
            world.state,
            ReviewResult(**world.validator, version=1, passed=False, feedback="not yet"),
            at(5),
        )
    if message == "review_task" and owner == "own" and kind == "validator":
        world.state.tasks["T3"].reviewer = world.me["agent_id"]  # the actor claimed it
    task = ("T1" if owner == "own" else "T2") if message in ("complete", "fail") else "-"
    if kind == "validator" and owner == "own" and message in ("complete", "fail"):
        task = "T1"  # a validator holds no work: "its own task" is one nobody holds
    call = _messages()[message]
    before = world.state.model_dump()
    if kind in ALLOWED[(message, owner)]:
        call(world, world.me, task)
        assert world.state.model_dump() != before
    else:
        with pytest.raises(core.Refused) as info:
            call(world, world.me, task)
        assert info.value.field in ("agent_id", "task_id"), info.value
        assert world.state.model_dump() == before


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_may_claim_and_gets_what_fits_it(kind: AgentKind) -> None:
    world = World(kind)
    reply = core.claim(world.state, ClaimTask(**world.me), at(9)).reply
    if kind == "validator":  # validators get reviews: the result version awaiting a verdict
        assert reply.task is None and reply.result_version == 1
    else:
        assert reply.task is None or reply.task.status == "assigned"


@pytest.mark.parametrize("kind", KINDS)
def test_signals_act_only_for_their_sender_and_its_own_tasks(kind: AgentKind) -> None:
    world = World(kind)
    impostor = {"agent_id": world.worker["agent_id"], "token": world.me["token"]}
    assert not core.heartbeat(world.state, Heartbeat(**impostor, seq=1), at(9))
    assert core.heartbeat(world.state, Heartbeat(**world.me, seq=1), at(9))
    assert not core.progress(
        world.state, ReportProgress(**world.me, task_id="T2", note="not mine"), at(9)
    )
    own = core.progress(world.state, ReportProgress(**world.me, task_id="T1", note="mine"), at(9))
    assert own is (kind != "validator")
    assert world.state.ignored_messages == (2 if kind != "validator" else 3)
