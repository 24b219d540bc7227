"""Agent health with real processes: crash → three missed deadlines → restart → reassignment."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from temporalio.client import Client

from agents import demo_agent
from core.state import TicketState
from infra.settings import Settings
from ledger.store import Ledger
from tests.conftest import unique_id
from tests.ticketkit import Launched, launch
from worker import build_worker

pytestmark = pytest.mark.usefixtures("worker")


def agent(name: str, *flags: str) -> dict[str, Any]:
    return {
        "name": name,
        "runtime": "local-process",
        "command": demo_agent.command("--work-seconds", "0.05", "0.1", *flags),
    }


def spec(ticket_id: str, agents: list[dict[str, Any]], tasks: int = 2) -> dict[str, Any]:
    return {
        "id": ticket_id,
        "title": "Crashing agents",
        "tasks": [
            {"key": f"t{i}", "phase": "implementation", "title": f"task {i}"} for i in range(tasks)
        ],
        "agents": agents,
        "policy": {
            "health": {
                "idle_deadline_s": 1.0,
                "running_deadline_s": 1.0,
                "restart_cooldown_s": 0,
                "stop_grace_s": 2,
            },
            "stuck": {"window_s": 3600, "cooldown_s": 3600},
        },
    }


async def until(ticket: Launched, check: Any, what: str, timeout: float = 60) -> TicketState:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state = await ticket.state()
        if check(state):
            return state
        if loop.time() > deadline:
            kinds = [f"{e.kind}: {e.message}" for e in state.timeline[-15:]]
            raise AssertionError(f"timed out waiting for {what}; latest events: {kinds}")
        await asyncio.sleep(0.2)


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


async def cancel(ticket: Launched) -> None:
    await ticket.handle.execute_update(
        "cancel", {"operator_token": ticket.operator_token, "reason": "test over"}
    )
    await ticket.handle.result()


async def test_a_killed_agent_is_restarted_and_its_task_reassigned(
    client: Client, settings: Settings, ledger: Ledger
) -> None:
    ticket = await launch(
        client,
        settings,
        spec(
            unique_id("crash"),
            [agent("crashy", "--crash-after-claims", "1", "--crash-only-in-generation", "0")],
        ),
    )
    first = await until(
        ticket,
        lambda s: (
            s.lineages["crashy"].process is not None
            and any(t.status != "pending" for t in s.tasks.values())
        ),
        "the first process to claim a task",
    )
    old_pid = first.lineages["crashy"].process.pid  # type: ignore[union-attr]
    # It SIGKILLs itself holding T1; three missed deadlines later it is restarted.
    state = await until(
        ticket,
        lambda s: s.restarts_total >= 1 and s.lineages["crashy"].generation >= 1,
        "the restart",
    )
    new = state.lineages["crashy"].process
    assert new is not None and new.pid != old_pid and new.generation == 1
    assert alive(new.pid) and not alive(old_pid)
    events = {e.kind: e for e in state.timeline}
    missed = events["agent_unresponsive"]
    assert "missed 3 heartbeats" in missed.message
    dead_agent = state.agents[missed.agent_id or ""]
    assert dead_agent.state == "terminated"
    # Three deadlines of 1 s from the last sign of life, plus at most a second of slack.
    last_life = max(d for d in (dead_agent.last_heartbeat_at, dead_agent.last_seen_at) if d)
    assert 3.0 <= (missed.at - last_life).total_seconds() < 4.5
    # The replacement (or anyone) finishes the reassigned task.
    done = await until(
        ticket, lambda s: all(t.status == "done" for t in s.tasks.values()), "every task done"
    )
    t1 = done.tasks["T1"]
    assert t1.attempt >= 2 and t1.failures == 1
    assert "was unresponsive" in (t1.failure_reason or "")
    [row] = ledger.restart_events(ticket.ticket_id)
    assert row.outcome == "restarted"
    assert (row.old_pid, row.new_pid) == (old_pid, new.pid)
    assert row.reassigned_task_ids == ["T1"]
    await cancel(ticket)
    await asyncio.sleep(0.5)
    assert not alive(new.pid), "the ticket stops its local agents when it finishes"


async def test_a_crash_looping_agent_is_quarantined_escalated_and_diagnosed(
    client: Client, settings: Settings, ledger: Ledger
) -> None:
    ticket = await launch(
        client,
        settings,
        spec(unique_id("loop"), [agent("looper", "--crash-after-claims", "1")], tasks=3),
    )
    state = await until(
        ticket,
        lambda s: any(a.state == "quarantined" for a in s.agents.values()),
        "the quarantine",
        timeout=90,
    )
    assert state.restarts_total == 3  # three restarts, then quarantine instead of a fourth
    assert [e.source for e in state.escalations if e.source == "restart_quarantine"] == [
        "restart_quarantine"
    ]
    assert any(d.trigger == "restart_escalation" for d in state.diagnoses)
    await asyncio.sleep(4)  # more than three deadlines: still no fourth restart
    later = await ticket.state()
    assert later.restarts_total == 3
    outcomes = [r.outcome for r in ledger.restart_events(ticket.ticket_id)]
    assert outcomes.count("restarted") == 3 and outcomes.count("quarantined") == 1
    process = later.lineages["looper"].process
    assert process is not None and not alive(process.pid)
    # Release: refused for an agent that is not quarantined, accepted for the quarantined one.
    quarantined = next(a for a in later.agents.values() if a.state == "quarantined")
    reply = await ticket.handle.execute_update(
        "release", {"agent_id": quarantined.id, "operator_token": ticket.operator_token}
    )
    assert reply["heartbeat_within_s"] == 1.0
    lapsed = await until(
        ticket,
        lambda s: any(e.kind == "release_lapsed" for e in s.timeline),
        "the release to lapse (its process is gone)",
    )
    assert lapsed.agents[quarantined.id].state == "quarantined"
    await cancel(ticket)


HUNG_AGENT = """
import asyncio, os, signal, time
from agent_client.session import AgentSession
from infra.client import connect
from infra.settings import Settings

async def main():
    client = await connect(Settings(temporal_address=os.environ["UNSTUCK_TEMPORAL_ADDRESS"],
                                    namespace=os.environ["UNSTUCK_NAMESPACE"]))
    agent = AgentSession(client, os.environ["UNSTUCK_TICKET_ID"],
                         name=os.environ["UNSTUCK_AGENT_NAME"])
    await agent.register()
    if os.environ.get("UNSTUCK_AGENT_GENERATION") == "0":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(600)  # hung: alive, silent and deaf to SIGTERM
    agent.start_heartbeats()
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_worker_restarted_mid_restart_still_restarts_the_agent_exactly_once(
    client: Client, settings: Settings, ledger: Ledger
) -> None:
    own = settings.model_copy(update={"task_queue": f"restart-{unique_id('q')}"})
    ticket_spec = spec(
        unique_id("midrestart"),
        [{"name": "hung", "runtime": "local-process", "command": ["{python}", "-c", HUNG_AGENT]}],
        tasks=1,
    )
    ticket_spec["policy"]["health"]["stop_grace_s"] = 6
    async with build_worker(client, own, ledger):
        ticket = await launch(client, own, ticket_spec)
        first = await until(
            ticket,
            lambda s: any(a.state == "restarting" for a in s.agents.values()),
            "the restart of the hung agent to begin",
        )
        old = first.lineages["hung"].process
        assert old is not None and alive(old.pid)
        await asyncio.sleep(1.5)  # the restart activity is now waiting out SIGTERM's grace
    # The worker is gone mid-restart; a new one takes over.
    async with build_worker(client, own, ledger):
        done = await until(
            ticket,
            lambda s: (
                s.lineages["hung"].generation >= 1
                and sum(a.name == "hung" and a.state == "idle" for a in s.agents.values()) == 1
            ),
            "the replacement to register",
            timeout=90,
        )
        new = done.lineages["hung"].process
        assert new is not None and new.pid != old.pid and alive(new.pid)
        assert not alive(old.pid)
        assert done.restarts_total == 1
        rows = ledger.restart_events(ticket.ticket_id)
        assert [(r.outcome, r.forced) for r in rows] == [("restarted", True)]
        history = await ticket.handle.fetch_history()
        restarts = [
            e
            for e in history.events
            if e.HasField("activity_task_scheduled_event_attributes")
            and e.activity_task_scheduled_event_attributes.activity_type.name == "restart_agent"
        ]
        assert len(restarts) == 1  # one restart, however many attempts it took
        [started] = [
            e.activity_task_started_event_attributes
            for e in history.events
            if e.HasField("activity_task_started_event_attributes")
            and e.activity_task_started_event_attributes.scheduled_event_id == restarts[0].event_id
        ]
        assert started.attempt >= 2, "the first worker was stopped in the middle of it"
        await cancel(ticket)
