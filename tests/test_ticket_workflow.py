"""TicketWorkflow against a real Temporal dev server: happy paths, refusals, idempotency."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateFailedError

from agent_client.session import AgentSession, Refused
from infra.settings import SEARCH_ATTRIBUTES, Settings
from ledger.store import Ledger
from models.messages import CompleteTask, RegisterAgent
from tests.conftest import unique_id
from tests.ticketkit import Launched, join_secret_for, launch, spec_dict
from workflows.ticket import OPEN_TASKS_REFRESH

pytestmark = pytest.mark.usefixtures("worker")


async def _accepted_update_ids(ticket: Launched) -> list[str]:
    history = await ticket.handle.fetch_history()
    return [
        e.workflow_execution_update_accepted_event_attributes.protocol_instance_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]


async def assert_refused(ticket: Launched, call: Any, field: str, words: str) -> Refused:
    """The call is refused naming ``field`` and ``words``, and the ticket is unchanged."""
    before = await ticket.state_dump()
    with pytest.raises(Refused) as info:
        await call
    assert info.value.field == field, info.value
    assert words in str(info.value), info.value
    assert await ticket.state_dump() == before
    return info.value


async def test_happy_path_of_every_message(
    client: Client, settings: Settings, ledger: Ledger
) -> None:
    ticket = await launch(client, settings, spec_dict(unique_id("happy")))
    async with (
        AgentSession(client, ticket.ticket_id, name="alice") as alice,
        AgentSession(client, ticket.ticket_id, name="vera", kind="validator") as vera,
    ):
        task = await alice.claim()
        assert task is not None and task.id == "T1" and task.status == "assigned"
        await alice.progress(task.id, "drafting the requirements")
        await alice.heartbeat()
        found = await alice.create_task(
            "testing", "Test password reset", depends_on=["T2"], priority="high"
        )
        assert found.id == "T3" and found.created_by == alice.agent_id
        reply = await alice.complete(task.id, "# Requirements\n- login", "design", claim_next=True)
        assert reply.task.status == "done"
        assert reply.next is not None and reply.next.task is not None
        assert reply.next.task.id == "T2"  # its dependency T1 is now done
        retry = await alice.fail("T2", "compiler crashed")
        assert retry.status == "pending" and retry.failures == 1
        again = await alice.claim()
        assert again is not None and again.id == "T2" and again.attempt == 2
        await alice.complete("T2", "# Implemented", "implementation")
        submitted = await alice.submit_result("# Login system\nAll done.")
        assert submitted.version == 1
        assert await vera.result_content(1) == "# Login system\nAll done."
        rejected = await vera.review_result(1, passed=False, feedback="no tests mentioned")
        assert rejected.status == "rejected" and rejected.ticket_status == "open"
        second = await alice.submit_result("# Login system\nAll done, tests pass.")
        assert second.version == 2
        verdict = await vera.review_result(2, passed=True, evidence=["ran the suite"])
        assert verdict.ticket_status == "completed"

    outcome = await ticket.handle.result()
    assert outcome["status"] == "completed" and outcome["validated_version"] == 2
    state = await ticket.state()
    assert state.tasks["T3"].status == "cancelled"  # stop_all cancels what was open
    assert all(a.stop for a in state.agents.values())
    notes = [e for e in state.timeline if e.kind == "progress"]
    assert notes and notes[0].message == "drafting the requirements"
    assert state.agents[alice.agent_id or ""].heartbeats >= 1
    # The ledger holds every task result and every version, with the verdicts.
    await _until(lambda: len(ledger.reviews(ticket.ticket_id)) == 2)
    assert {r.task_id for r in ledger.task_results(ticket.ticket_id)} == {"T1", "T2"}
    assert [r.version for r in ledger.workflow_results(ticket.ticket_id)] == [1, 2]


async def test_refusals_name_the_rule_and_change_nothing(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    spec = spec_dict(unique_id("refuse"))
    spec["policy"] = {"results": {"files_root": str(tmp_path)}}
    ticket = await launch(client, settings, spec)
    async with (
        AgentSession(client, ticket.ticket_id, name="alice") as alice,
        AgentSession(client, ticket.ticket_id, name="bob") as bob,
        AgentSession(client, ticket.ticket_id, name="vera", kind="validator") as vera,
    ):
        task = await alice.claim()
        assert task is not None
        impostor = AgentSession(client, ticket.ticket_id, name="mallory")
        impostor.resume(alice.agent_id or "", "not-the-token")
        await assert_refused(ticket, impostor.claim(), "token", "does not match")
        ghost = AgentSession(client, ticket.ticket_id, name="ghost")
        ghost.resume("ghost-99", "x")
        await assert_refused(ticket, ghost.claim(), "agent_id", "unknown agent")
        await assert_refused(
            ticket, bob.complete(task.id, "# mine", "fix"), "task_id", "assigned to alice"
        )
        await assert_refused(
            ticket, alice.complete("T999", "# x", "fix"), "task_id", "unknown task"
        )
        await assert_refused(
            ticket, alice.complete("T2", "# x", "fix"), "task_id", "only a claimed task"
        )
        await assert_refused(
            ticket,
            alice.complete(task.id, "x" * (100 * 1024 + 1), "fix"),
            "result",
            "the limit is 102,400",
        )
        await assert_refused(
            ticket, alice.create_task("deploy", "Ship it"), "phase", "unknown phase"
        )
        await assert_refused(
            ticket,
            alice.create_task("testing", "x", depends_on=["T77"]),
            "depends_on",
            "unknown task",
        )
        await assert_refused(
            ticket, alice.submit_result(file_ref="../../etc/passwd.md"), "file_ref", "'..'"
        )
        await assert_refused(ticket, alice.submit_result(file_ref="notes.txt"), "file_ref", ".md")
        await assert_refused(
            ticket, alice.submit_result(file_ref="missing.md"), "file_ref", "does not exist"
        )
        await assert_refused(
            ticket,
            alice.submit_result("x" * (1024 * 1024 + 1)),
            "content",
            "the limit is 1,048,576",
        )
        await assert_refused(ticket, vera.review_result(1, True), "version", "no result version")
        (tmp_path / "result.md").write_text("# Final\nby file", encoding="utf-8")
        by_file = await alice.submit_result(file_ref="result.md")
        assert by_file.version == 1
        await assert_refused(ticket, alice.review_result(1, True), "agent_id", "only validator")
        await assert_refused(ticket, alice.submit_result("# v2"), "ticket", "awaiting its verdict")
        await vera.review_result(1, passed=False, feedback="criteria not met")
        await assert_refused(ticket, vera.review_result(1, True), "version", "exactly once")
        await assert_refused(ticket, vera.submit_result("# mine"), "agent_id", "only worker")
        await assert_refused(ticket, alice.register(), "name", "already registered")
        # The ticket still works after all of that.
        done = await alice.complete(task.id, "# requirements", "design")
        assert done.task.status == "done"


async def test_malformed_messages_are_rejected_before_history(
    client: Client, settings: Settings
) -> None:
    ticket = await launch(client, settings, spec_dict(unique_id("malformed")))
    reg = await ticket.handle.execute_update(
        "register",
        RegisterAgent(name="alice", join_secret=join_secret_for(settings, ticket.ticket_id)),
    )
    before = await ticket.state_dump()
    accepted_before = await _accepted_update_ids(ticket)
    bad_payloads: list[tuple[str, Any]] = [
        ("claim", {"agent_id": reg["agent_id"]}),  # no token
        ("claim", {"agent_id": reg["agent_id"], "token": reg["token"], "surprise": 1}),
        ("complete", {"agent_id": 5, "token": [], "task_id": None}),
        ("complete", {**_auth(reg), "task_id": "T1", "result": "x", "result_type": "poem"}),
        ("register", {"name": "Not A Slug!"}),
        ("submit_result", {**_auth(reg), "content": "a", "file_ref": "b.md"}),
        ("review_result", {**_auth(reg), "version": 0, "passed": False}),
        ("create_task", {**_auth(reg), "phase": "testing", "title": ""}),
        ("claim", "not even an object"),
        ("nonexistent_update", {}),
    ]
    for name, payload in bad_payloads:
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await ticket.handle.execute_update(name, payload)
        assert str(info.value.cause), (name, payload)
    # Signals with garbage are dropped or counted, never crash the ticket.
    await ticket.handle.signal(
        "heartbeat", {"agent_id": reg["agent_id"], "token": "nope", "seq": 1}
    )
    await ticket.handle.signal("heartbeat", {"seq": "not a number"})
    await ticket.handle.signal("progress", {**_auth(reg), "task_id": "T1", "note": "not mine"})
    state = await ticket.state()
    assert state.ignored_messages == 2
    assert state.model_dump(mode="json") | {"ignored_messages": 0} == before | {
        "ignored_messages": 0
    }
    assert await _accepted_update_ids(ticket) == accepted_before  # none entered history
    # And the ticket keeps working.
    claimed = await ticket.handle.execute_update("claim", _auth(reg))
    assert claimed["task"]["id"] == "T1"


async def test_duplicate_deliveries_are_idempotent(client: Client, settings: Settings) -> None:
    ticket = await launch(client, settings, spec_dict(unique_id("dup")))
    register = RegisterAgent(
        name="alice", request_id="reg-1", join_secret=join_secret_for(settings, ticket.ticket_id)
    )
    reg = await ticket.handle.execute_update("register", register, id="u-reg-1")
    again = await ticket.handle.execute_update("register", register, id="u-reg-1")
    assert again == reg  # Temporal answers the same update id with the same reply
    # Replayed under another update id (e.g. after continue-as-new), the ticket refuses:
    # it never keeps tokens in clear, so it cannot hand the token out a second time.
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await ticket.handle.execute_update("register", register, id="u-reg-2")
    assert "already registered agent alice-1" in str(info.value.cause)
    assert reg["token"] not in (await ticket.handle.query("state")).__repr__()
    claim = {**_auth(reg), "request_id": "claim-1"}
    first = await ticket.handle.execute_update("claim", claim, id="u-claim-1")
    same_update_id = await ticket.handle.execute_update("claim", claim, id="u-claim-1")
    other_update_id = await ticket.handle.execute_update("claim", claim, id="u-claim-2")
    assert first == same_update_id == other_update_id
    state = await ticket.state()
    assert [t.status for t in state.tasks.values()] == ["assigned", "pending"]
    complete = CompleteTask(
        **_auth(reg), task_id="T1", result="# r", result_type="design", request_id="done-1"
    )
    r1 = await ticket.handle.execute_update("complete", complete)
    r2 = await ticket.handle.execute_update("complete", complete)
    assert r1 == r2
    state = await ticket.state()
    assert state.tasks["T1"].attempt == 1 and state.tasks["T1"].status == "done"
    assert len([e for e in state.timeline if e.kind == "task_done"]) == 1


async def test_do_nothing_keeps_the_ticket_going(client: Client, settings: Settings) -> None:
    spec = spec_dict(unique_id("nothing"), policy={"results": {"on_result_found": "do_nothing"}})
    ticket = await launch(client, settings, spec)
    async with (
        AgentSession(client, ticket.ticket_id, name="alice") as alice,
        AgentSession(client, ticket.ticket_id, name="vera", kind="validator") as vera,
    ):
        await alice.submit_result("# early result")
        verdict = await vera.review_result(1, passed=True)
        assert verdict.status == "validated" and verdict.ticket_status == "open"
        await assert_refused(ticket, alice.submit_result("# another"), "ticket", "final")
        task = await alice.claim()
        assert task is not None  # work goes on
    state = await ticket.state()
    assert state.status == "open"
    assert any(e.kind == "result_found" for e in state.timeline)
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await ticket.handle.execute_update("cancel", {"reason": "x", "operator_token": "wrong"})
    assert "operator_token: does not match" in str(info.value.cause)
    cancelled = await ticket.handle.execute_update(
        "cancel", {"reason": "test over", "operator_token": ticket.operator_token}
    )
    assert cancelled["status"] == "cancelled"
    assert (await ticket.handle.result())["status"] == "cancelled"


async def test_continue_as_new_loses_nothing(client: Client, settings: Settings) -> None:
    """Forced early continue-as-new, with updates in flight across the boundary."""
    ticket = await launch(
        client,
        settings,
        spec_dict(unique_id("can"), tasks=[], policy={"tasks": {"max_creates_per_minute": 100}}),
        continue_as_new_after_events=250,
    )
    async with (
        AgentSession(client, ticket.ticket_id, name="alice") as alice,
        AgentSession(client, ticket.ticket_id, name="vera", kind="validator") as vera,
    ):
        first_run = (await ticket.handle.describe()).run_id
        # 60 concurrent creations: some land while the run is draining to continue as new.
        created = await asyncio.gather(
            *(alice.create_task("implementation", f"piece {i}") for i in range(60))
        )
        assert len({t.id for t in created}) == 60
        for _ in range(60):
            task = await alice.claim()
            assert task is not None
            await alice.complete(task.id, f"# {task.title}", "implementation")
        # A request id sent in an old run still de-duplicates in the newest one.
        reg = await ticket.handle.execute_update(
            "create_task",
            {
                "agent_id": alice.agent_id,
                "token": alice._token,
                "phase": "testing",
                "title": "once",
                "request_id": "once-1",
            },
        )
        await ticket.handle.signal(
            "heartbeat", {"agent_id": alice.agent_id, "token": alice._token, "seq": 10_000}
        )
        await _force_more_history(alice)
        replay = await ticket.handle.execute_update(
            "create_task",
            {
                "agent_id": alice.agent_id,
                "token": alice._token,
                "phase": "testing",
                "title": "once",
                "request_id": "once-1",
            },
        )
        assert replay == reg
        assert (await ticket.handle.describe()).run_id != first_run
        runs = [e async for e in client.list_workflows(f'WorkflowId = "{ticket.ticket_id}"')]
        assert len(runs) >= 3, f"expected several runs, got {len(runs)}"
        await alice.submit_result("# all pieces")
        await vera.review_result(1, passed=True)
    outcome = await ticket.handle.result()
    assert outcome["status"] == "completed"
    state = await ticket.state()
    assert sum(t.status == "done" for t in state.tasks.values()) == 60
    assert sum(t.title == "once" for t in state.tasks.values()) == 1
    assert [t.id for t in state.tasks.values()] == [f"T{i}" for i in range(1, len(state.tasks) + 1)]


async def _force_more_history(agent: AgentSession) -> None:
    for _ in range(30):
        await agent.heartbeat()
    await asyncio.sleep(0.5)


def _auth(reg: dict[str, Any]) -> dict[str, Any]:
    return {"agent_id": reg["agent_id"], "token": reg["token"]}


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def test_request_ids_are_unique() -> None:
    assert len({uuid.uuid4().hex for _ in range(100)}) == 100


async def test_continue_as_new_under_continuous_load(
    client: Client, settings: Settings, ledger: Ledger
) -> None:
    """Agents never pause: the ticket still continues as new, and loses nothing doing so."""
    tasks = [{"key": f"t{i}", "phase": "implementation", "title": f"piece {i}"} for i in range(120)]
    ticket = await launch(
        client,
        settings,
        spec_dict(unique_id("load"), tasks=tasks),
        continue_as_new_after_updates=40,
    )

    async def work(agent: AgentSession) -> int:
        done = 0
        task = await agent.claim()
        while task is not None:
            reply = await agent.complete(
                task.id, f"# {task.title}", "implementation", claim_next=True
            )
            done += 1
            task = reply.next.task if reply.next else None
        return done

    agents = [AgentSession(client, ticket.ticket_id, name=f"w{i}") for i in range(4)]
    async with agents[0], agents[1], agents[2], agents[3]:
        counts = await asyncio.gather(*(work(a) for a in agents))
        assert sum(counts) == 120
        state = await ticket.state()
        assert all(t.status == "done" for t in state.tasks.values())
        runs = [e async for e in client.list_workflows(f'WorkflowId = "{ticket.ticket_id}"')]
        assert len(runs) >= 3, f"expected several runs, got {len(runs)}"
    await ticket.handle.execute_update(
        "cancel", {"operator_token": ticket.operator_token, "reason": "test over"}
    )
    await ticket.handle.result()
    assert len(ledger.task_results(ticket.ticket_id)) == 120  # every result reached the ledger


async def test_the_web_ui_is_published_once_per_workflow_task_and_stays_exact(
    client: Client, settings: Settings
) -> None:
    """Updates handled together cost one search-attribute upsert, carrying only the attributes
    that changed; a burst of task completions refreshes the open-task count at most every
    OPEN_TASKS_REFRESH; the values the Web UI filters on end up exact."""
    tasks = [{"key": f"t{i}", "phase": "implementation", "title": f"Task {i}"} for i in range(24)]
    ticket = await launch(client, settings, spec_dict(unique_id("publish"), tasks=tasks))
    agents = [AgentSession(client, ticket.ticket_id, name=f"a{i}") for i in range(8)]
    await asyncio.gather(*(a.register() for a in agents))

    async def work(agent: AgentSession) -> int:
        done = 0
        task = await agent.claim()
        while task is not None:
            reply = await agent.complete(task.id, "# done", "implementation", claim_next=True)
            done += 1
            task = reply.next.task if reply.next is not None else None
        return done

    assert sum(await asyncio.gather(*(work(a) for a in agents))) == 24

    # The dashboard is exact at once; the count of open tasks, held back while it changed
    # fast, catches up on the ticket's own timer (the other attributes are never held).
    assert "0 open task(s)" in await ticket.handle.query("dashboard")
    attrs: dict[str, Any] = {}
    for _ in range(300):
        described = await ticket.handle.describe()
        attrs = {pair.key.name: pair.value for pair in described.typed_search_attributes}
        if attrs["OpenTasks"] == 0:
            break
        await asyncio.sleep(0.1)
    assert attrs["OpenTasks"] == 0 and attrs["TicketStatus"] == "open", attrs

    events = (await ticket.handle.fetch_history()).events
    kinds = [e.event_type for e in events]
    updates = kinds.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)
    upserts = [
        set(e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields)
        for e in events
        if e.event_type == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    ]
    upserts = [u for u in upserts if u != {"TemporalChangeVersion"}]  # the SDK's patch record
    assert updates >= 24 + 8 + 8  # registrations, first claims, completes
    # The first upsert carries every attribute; after it only what changed (here the count of
    # open tasks), and that at most once per OPEN_TASKS_REFRESH while the burst lasted (one
    # per workflow task, or per update, would be several times more).
    assert upserts[0] == {*SEARCH_ATTRIBUTES}, upserts[0]
    assert all(fields == {"OpenTasks"} for fields in upserts[1:]), [sorted(f) for f in upserts]
    accepted = [
        e.event_time.ToDatetime()
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    burst_s = (max(accepted) - min(accepted)).total_seconds()
    allowed = 2 + burst_s / OPEN_TASKS_REFRESH.total_seconds()
    assert len(upserts) - 1 <= allowed, ([sorted(f) for f in upserts], burst_s, updates)
    # The last count came on the ticket's own timer, not on a message.
    summaries = [
        json.loads(e.user_metadata.summary.data)
        for e in events
        if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]
    assert "refresh search attributes" in summaries, summaries
