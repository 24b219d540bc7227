"""Agent health with real processes: crash → three missed deadlines → restart → reassignment."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from temporalio.client import Client

from core.state import TicketState
from infra.settings import Settings
from ledger.store import Ledger
from tests.conftest import unique_id
from tests.ticketkit import Launched, launch

pytestmark = pytest.mark.usefixtures("worker")


def agent(name: str, *flags: str) -> dict[str, Any]:
    return {
        "name": name,
        "runtime": "local-process",
        "command": ["{python}", "-m", "agents.demo_agent", "--ticket", "{ticket_id}", "--name",
                    "{agent_name}", "--work-seconds", "0.05", "0.1", *flags],
    }


def spec(ticket_id: str, agents: list[dict[str, Any]], tasks: int = 2) -> dict[str, Any]:
    return {
        "id": ticket_id,
        "title": "Crashing agents",
        "tasks": [{"key": f"t{i}", "phase": "implementation", "title": f"task {i}"}
                  for i in range(tasks)],
        "agents": agents,
        "policy": {
            "health": {"idle_deadline_s": 1.0, "running_deadline_s": 1.0,
                       "restart_cooldown_s": 0, "stop_grace_s": 2},
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
        client, settings,
        spec(unique_id("crash"), [agent("crashy", "--crash-after-claims", "1",
                                        "--crash-only-in-generation", "0")]),
    )
    first = await until(ticket, lambda s: s.lineages["crashy"].process is not None
                        and any(t.status != "pending" for t in s.tasks.values()),
                        "the first process to claim a task")
    old_pid = first.lineages["crashy"].process.pid  # type: ignore[union-attr]
    # It SIGKILLs itself holding T1; three missed deadlines later it is restarted.
    state = await until(ticket, lambda s: s.restarts_total >= 1
                        and s.lineages["crashy"].generation >= 1, "the restart")
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
    done = await until(ticket, lambda s: all(t.status == "done" for t in s.tasks.values()),
                       "every task done")
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
        client, settings,
        spec(unique_id("loop"), [agent("looper", "--crash-after-claims", "1")], tasks=3),
    )
    state = await until(ticket, lambda s: any(a.state == "quarantined" for a in s.agents.values()),
                        "the quarantine", timeout=90)
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
    lapsed = await until(ticket, lambda s: any(e.kind == "release_lapsed" for e in s.timeline),
                         "the release to lapse (its process is gone)")
    assert lapsed.agents[quarantined.id].state == "quarantined"
    await cancel(ticket)
