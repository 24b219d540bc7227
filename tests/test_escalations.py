"""Escalations reach people, and their answers reach the ticket (DESIGN §14), on the real
server with real HTTP receivers that are down, slow, failing, or refusing for good."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import SearchAttributeKey

from agent_client.session import AgentSession
from infra.settings import Settings
from ledger.store import Ledger
from models.messages import EscalationView
from tests.conftest import unique_id
from tests.receiver import Receiver
from tests.ticketkit import Launched, launch, spec_dict

pytestmark = pytest.mark.usefixtures("worker")

SECRET = "a-webhook-signing-secret"
SEVERITY = SearchAttributeKey.for_keyword("EscalationSeverity")
#: Quick stuck detection: a ticket that waits for a person must not be diagnosed anyway.
QUICK = {"stuck": {"window_s": 1, "cooldown_s": 1}}


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy (its value)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        if value := await check():
            return value
        if loop.time() > end:
            raise AssertionError(f"not within {timeout} s: {check.__name__}")
        await asyncio.sleep(0.2)


async def escalation(ticket: Launched, escalation_id: str) -> EscalationView:
    views = await ticket.handle.query("escalations", result_type=list[EscalationView])
    return next(v for v in views if v.id == escalation_id)


async def operator(ticket: Launched, name: str, **fields: Any) -> EscalationView:
    reply: EscalationView = await ticket.handle.execute_update(
        name,
        {"operator_token": ticket.operator_token, "operator": "olga", **fields},
        result_type=EscalationView,
    )
    return reply


async def severity_attribute(ticket: Launched) -> str | None:
    described = await ticket.handle.describe()
    return described.typed_search_attributes.get(SEVERITY)


def sink(name: str, kind: str, receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "url": receiver.url, **extra}


async def test_a_question_reaches_every_sink_once_and_the_answer_reaches_the_asker(
    client: Client, settings: Settings, ledger: Ledger
) -> None:
    hook = Receiver().up()
    slack = Receiver().answer(500, 500).up()  # fails twice, then takes it
    pager = Receiver()  # down: connections refused until it comes up
    broken = Receiver().answer(then=404).up()  # a wrong URL: refused for good
    sinks = [
        sink("ops-hook", "webhook", hook, secret=SECRET),
        sink("team-slack", "slack", slack),
        sink("oncall", "pagerduty", pager, routing_key="R" * 32),
        sink("typo", "webhook", broken),
    ]
    policy = {**QUICK, "escalation": {"sinks": sinks, "retry_max_interval_s": 1}}
    ticket = await launch(client, settings, spec_dict(unique_id("ask"), policy=policy))
    try:
        async with AgentSession(client, ticket.ticket_id, name="alice") as alice:
            task = await alice.claim()
            assert task is not None
            asked = await alice.ask_human("Which OAuth provider: Google or GitHub?", task.id)
            assert asked.severity == "SEV-3"
            qid = asked.question_id

            await eventually(lambda: _async(len(hook.ok()) == 1 and len(slack.ok()) == 1))
            assert slack.attempts == 3  # 500, 500, then taken
            assert [r.status for r in broken.requests] == [404]  # not retried
            view = await escalation(ticket, qid)
            assert view.deliveries[0].status == "pending"  # the pager is still down
            pager.up()
            view = await eventually(lambda: _delivered(ticket, qid, 0))
            assert set(view.deliveries[0].delivered) == {"ops-hook", "team-slack", "oncall"}
            assert view.deliveries[0].failed == ["typo: HTTP 404: error"]

            # The ticket waits for the person: no stuck check fires, nothing is diagnosed,
            # though the stuck window (1 s) passed several times over.
            await asyncio.sleep(2.5)
            state = await ticket.state()
            assert state.diagnoses == []
            assert state.stuck_since is None
            assert await severity_attribute(ticket) == "SEV-3"

            # The webhook body is signed: a receiver recomputes the HMAC.
            first = hook.ok()[0]
            stamp = first.headers["X-Unstuck-Timestamp"]
            mac = hmac.new(SECRET.encode(), stamp.encode() + b"." + first.body, hashlib.sha256)
            assert first.headers["X-Unstuck-Signature"] == "sha256=" + mac.hexdigest()
            assert first.json["escalation"]["question"] == "Which OAuth provider: Google or GitHub?"
            assert first.headers["Idempotency-Key"] == f"{qid}/trigger"
            page = pager.ok()[0].json
            assert page["routing_key"] == "R" * 32 and page["payload"]["severity"] == "warning"

            acked = await operator(ticket, "ack", escalation_id=qid)
            assert acked.status == "acknowledged" and acked.acknowledged_by == "olga"
            resolved = await operator(ticket, "resolve", escalation_id=qid, note="GitHub.")
            assert resolved.status == "resolved"
            answer = await alice.wait_for_answer(qid, timeout=10, poll_s=0.2)
            assert answer is not None
            assert (answer.answer, answer.answered_by) == ("GitHub.", "olga")

            view = await eventually(lambda: _delivered(ticket, qid, 2))
            # Each sink got each message once, in order, under one dedup key.
            expected = [("trigger", qid), ("acknowledge", qid), ("resolve", qid)]
            assert hook.events() == expected
            assert pager.events() == expected
            assert len(slack.ok()) == 3 and "GitHub." in slack.ok()[2].json["text"]
            assert len(broken.requests) == 3  # one refusal per message, none retried
            assert await severity_attribute(ticket) == "none"

            # The ledger keeps who acknowledged it and how it was resolved.
            def recorded() -> Any:
                rows = ledger.escalation_resolutions(ticket.ticket_id)
                return (
                    rows if rows and ledger.escalations(ticket.ticket_id)[0].acknowledged else None
                )

            rows = await eventually(lambda: _async(recorded()))
            assert [(r.id, r.resolved_by, r.note) for r in rows] == [(qid, "olga", "GitHub.")]
            assert ledger.escalations(ticket.ticket_id)[0].acknowledged_by == "olga"
    finally:
        for receiver in (hook, slack, pager, broken):
            receiver.down()


async def test_a_slow_receiver_holds_up_nothing_and_still_gets_the_message(
    client: Client, settings: Settings
) -> None:
    slow = Receiver().answer(("slow", 3.0)).up()  # slower than the sink's 1 s timeout once
    policy = {
        **QUICK,
        "escalation": {
            "sinks": [sink("slow-hook", "webhook", slow, timeout_s=1)],
            "retry_max_interval_s": 1,
        },
    }
    ticket = await launch(client, settings, spec_dict(unique_id("slow"), policy=policy))
    try:
        async with AgentSession(client, ticket.ticket_id, name="bob") as bob:
            task = await bob.claim()
            assert task is not None
            asked = await bob.ask_human("May I drop the legacy login endpoint?", task.id)
            # While the delivery waits on the slow receiver, the ticket takes work as usual.
            done = await bob.complete(task.id, "Requirements: OAuth login, sessions, tests.")
            assert done.task.status == "done"
            view = await eventually(lambda: _delivered(ticket, asked.question_id, 0))
            assert view.deliveries[0].delivered == ["slow-hook"]
            # The first answer came too late for the sender, so it sent again: the receiver
            # may hold it twice, under one delivery id it can drop repeats by.
            keys = {r.headers["Idempotency-Key"] for r in slow.ok()}
            assert keys == {f"{asked.question_id}/trigger"}
            assert slow.attempts >= 2
    finally:
        slow.down()


async def test_nothing_is_lost_across_continue_as_new_and_the_ticket_end(
    client: Client, settings: Settings
) -> None:
    down = Receiver()  # down for the whole life of the ticket
    policy = {
        **QUICK,
        "escalation": {"sinks": [sink("late", "webhook", down)], "retry_max_interval_s": 1},
    }
    ticket = await launch(
        client,
        settings,
        spec_dict(unique_id("late"), policy=policy),
        continue_as_new_after_updates=10,
    )
    try:
        async with AgentSession(client, ticket.ticket_id, name="carol") as carol:
            task = await carol.claim()
            assert task is not None
            asked = await carol.ask_human("Is staging down for everyone?", task.id)
            first_run = (await ticket.handle.describe()).run_id
            for _ in range(12):  # updates enough to continue as new (at 10 per run)
                await carol.claim()
            await eventually(
                lambda: _changed_run(ticket, first_run), timeout=30
            )  # a new run carries the undelivered trigger
        await ticket.handle.execute_update(
            "cancel", {"operator_token": ticket.operator_token, "reason": "test over"}
        )
        # Cancelled, but the workflow stays open until the person has been told.
        await asyncio.sleep(2)
        described = await ticket.handle.describe()
        assert described.status == WorkflowExecutionStatus.RUNNING
        view = await escalation(ticket, asked.question_id)
        assert view.status == "resolved" and view.resolved_by == "unstuck"
        down.up()
        await asyncio.wait_for(ticket.handle.result(), timeout=60)
        qid = asked.question_id
        assert [e for e in down.events() if e[1] == qid] == [("trigger", qid), ("resolve", qid)]
    finally:
        down.down()


async def test_people_commands_refuse_bad_input_and_change_nothing(
    client: Client, settings: Settings
) -> None:
    ticket = await launch(client, settings, spec_dict(unique_id("refuse"), policy=QUICK))
    async with AgentSession(client, ticket.ticket_id, name="dave") as dave:
        asked = await dave.ask_human("Where are the staging credentials?")
        await eventually(lambda: _delivered(ticket, asked.question_id, 0))  # no sinks: at once
        dashboard = await ticket.handle.query("dashboard")  # the Web UI's current details
        assert f"| `{asked.question_id}` | SEV-3 | open |" in dashboard
        before = (await ticket.state()).model_dump(mode="json", exclude={"ignored_messages"})
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("ack", {"escalation_id": "nope"}, "escalation_id: no escalation 'nope'"),
            (
                "ack",
                {"escalation_id": asked.question_id, "operator_token": "x" * 20},
                "operator_token: does not match",
            ),
            ("resolve", {"escalation_id": asked.question_id, "note": ""}, "note:"),
            (
                "resolve",
                {"escalation_id": asked.question_id, "note": "n", "as_task": True},
                "as_task: an answer goes to the agent that asked",
            ),
        ]
        for name, fields, expected in cases:
            payload = {"operator_token": ticket.operator_token, **fields}
            with pytest.raises(WorkflowUpdateFailedError) as failed:
                await ticket.handle.execute_update(name, payload)
            assert expected in str(failed.value.cause), (name, fields, failed.value.cause)
        after = (await ticket.state()).model_dump(mode="json", exclude={"ignored_messages"})
        assert after == before


async def _async(value: Any) -> Any:
    return value


async def _delivered(ticket: Launched, escalation_id: str, index: int) -> EscalationView | None:
    view = await escalation(ticket, escalation_id)
    if len(view.deliveries) > index and view.deliveries[index].status != "pending":
        return view
    return None


async def _changed_run(ticket: Launched, run_id: str | None) -> bool:
    return (await ticket.handle.describe()).run_id != run_id
