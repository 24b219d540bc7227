"""Liveness at fleet scale (DESIGN §15): a lease activity carries an agent's liveness.

A leased agent writes nothing to the ticket's history while it lives; a dead one is still
found within three deadlines; the lease follows the ticket across continue-as-new; a beat
cannot point the ticket's leases anywhere but a lease host, nor borrow another's lease.
"""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import datetime
from typing import Any

import pytest
from temporalio.client import Client

from agent_client.session import AgentSession
from core.state import TicketState
from infra.settings import Settings
from tests.conftest import unique_id
from tests.test_agent_health import agent, alive, cancel, until
from tests.ticketkit import Launched, launch

pytestmark = pytest.mark.usefixtures("worker")

DEADLINE_S = 1.5


def spec(ticket_id: str, agents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "id": ticket_id,
        "title": "Liveness",
        "tasks": [{"key": "t0", "phase": "implementation", "title": "the work"}],
        "agents": agents or [],
        "policy": {
            "health": {
                "idle_deadline_s": DEADLINE_S,
                "running_deadline_s": DEADLINE_S,
                "restart_cooldown_s": 0,
                "stop_grace_s": 2,
            },
            "stuck": {"window_s": 3600, "cooldown_s": 3600},
        },
    }


async def history_length(ticket: Launched) -> int:
    return (await ticket.handle.describe()).raw_description.workflow_execution_info.history_length


async def wait_leased(session: AgentSession, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not session.leased:
        assert loop.time() < deadline, f"{session.name} never got a lease"
        await asyncio.sleep(0.05)


async def test_a_leased_agent_writes_nothing_while_it_lives(
    client: Client, settings: Settings
) -> None:
    """Same ticket shape, same beat rate: the agent on beats writes history every beat, the
    leased one nothing at all while idle."""
    leased_ticket = await launch(client, settings, spec(unique_id("lease-quiet")))
    beating_ticket = await launch(client, settings, spec(unique_id("beat-loud")))
    async with (
        AgentSession(client, leased_ticket.ticket_id, name="lea") as lea,
        AgentSession(client, beating_ticket.ticket_id, name="bea", lease=False) as bea,
    ):
        await wait_leased(lea)
        # The deadline timer armed before the lease fires once more (and finds nothing due).
        await asyncio.sleep(DEADLINE_S + 1.0)
        tickets = (leased_ticket, beating_ticket)
        before = {t.ticket_id: await history_length(t) for t in tickets}
        await asyncio.sleep(4 * DEADLINE_S)  # 12 beat intervals
        grown = {t.ticket_id: await history_length(t) - before[t.ticket_id] for t in tickets}
        assert lea.leased and not bea.leased
        state = await leased_ticket.state()
        [agent_state] = state.agents.values()
        assert agent_state.lease_held and agent_state.missed_beats == 0
        assert grown[leased_ticket.ticket_id] == 0, grown
        assert grown[beating_ticket.ticket_id] >= 10, grown
    await cancel(leased_ticket)
    await cancel(beating_ticket)


async def test_a_dead_leased_agent_is_found_within_three_deadlines(
    client: Client, settings: Settings
) -> None:
    ticket = await launch(
        client,
        settings,
        spec(unique_id("lease-dead"), [agent("ada", "--work-seconds", "600", "600")]),
    )
    state = await until(
        ticket,
        lambda s: any(a.lease_held and a.state == "running" for a in s.agents.values()),
        "ada working under a lease",
    )
    [ada] = state.agents.values()
    pid = _pid_of(state, ada.id)
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    killed_at = datetime.now(tuple(state.timeline)[-1].at.tzinfo)
    state = await until(
        ticket,
        lambda s: any(e.kind == "agent_unresponsive" for e in s.timeline),
        "ada found dead",
        timeout=30,
    )
    found = next(e.at for e in state.timeline if e.kind == "agent_unresponsive")
    took = (found - killed_at).total_seconds()
    assert took <= 3 * DEADLINE_S + 1.0, f"found {took:.2f} s after the kill"
    assert not alive(pid)
    await cancel(ticket)


def _pid_of(state: TicketState, agent_id: str) -> int:
    for lineage in state.lineages.values():
        process = lineage.process
        if process is not None and process.pid is not None:
            return process.pid
    raise AssertionError(f"no process recorded for {agent_id}")


async def test_leases_follow_the_ticket_across_continue_as_new(
    client: Client, settings: Settings
) -> None:
    """Each run ends its leases and the next one offers them again at once: no beat is
    missed, and the agent still holds a lease after several runs."""
    ticket = await launch(
        client, settings, spec(unique_id("lease-can")), continue_as_new_after_events=100
    )
    async with AgentSession(client, ticket.ticket_id, name="lea") as lea:
        await wait_leased(lea)
        first_run = (await ticket.handle.describe()).run_id
        for i in range(3):  # each progress note is history: the ticket continues as new
            claimed = await lea.claim() if i == 0 else None
            if claimed is not None:
                lea.current_task_id = claimed.id
        task_id = lea.current_task_id
        assert task_id is not None
        for n in range(80):
            await lea.progress(task_id, f"step {n}")
        state = await until(
            ticket,
            lambda s: (
                next(iter(s.agents.values())).leases >= 2
                and next(iter(s.agents.values())).lease_held
            ),
            "a lease in a later run",
        )
        assert (await ticket.handle.describe()).run_id != first_run
        [agent_state] = state.agents.values()
        assert agent_state.missed_beats == 0
        assert not [e for e in state.timeline if e.kind == "heartbeat_missed"]
        await asyncio.sleep(2 * DEADLINE_S)
        assert lea.leased
        state = await ticket.state()
        assert not [e for e in state.timeline if e.kind == "heartbeat_missed"]
    await cancel(ticket)


async def test_a_silent_session_loses_its_lease_and_climbs_the_ladder(
    client: Client, settings: Settings
) -> None:
    ticket = await launch(client, settings, spec(unique_id("lease-silent")))
    async with AgentSession(client, ticket.ticket_id, name="lea") as lea:
        await wait_leased(lea)
        task = await lea.claim()
        assert task is not None
        await lea.stop_heartbeats()  # alive, but it says nothing any more
        state = await until(
            ticket,
            lambda s: (
                s.tasks[task.id].status == "pending"
                and any(e.kind == "agent_unresponsive" for e in s.timeline)
            ),
            "lea found unresponsive and its task back in the queue",
            timeout=30,
        )
        assert not lea.leased
        kinds = [e.kind for e in state.timeline]
        assert kinds.index("heartbeat_missed") < kinds.index("agent_degraded")
    await cancel(ticket)


async def test_a_beat_cannot_borrow_another_agents_lease(
    client: Client, settings: Settings
) -> None:
    """An agent naming another process's lease queue gets no lease (that process does not run
    it) and stays on the ticket's timer; a queue outside the lease prefix is not a beat."""
    ticket = await launch(client, settings, spec(unique_id("lease-borrow")))
    async with (
        AgentSession(client, ticket.ticket_id, name="owner") as owner,
        AgentSession(client, ticket.ticket_id, name="mallory", lease=False) as mallory,
    ):
        await wait_leased(owner)
        assert owner._lease_host is not None
        stolen = owner._lease_host.queue
        await mallory.stop_heartbeats()
        who = mallory._auth()
        del who["request_id"]
        await ticket.handle.signal(
            "heartbeat", {**who, "seq": 100, "status": "idle", "lease_queue": stolen}
        )
        await ticket.handle.signal(
            "heartbeat", {**who, "seq": 101, "status": "idle", "lease_queue": "unstuck"}
        )
        state = await until(
            ticket,
            lambda s: (
                s.agents[mallory.agent_id or ""].leases >= 1
                and not s.agents[mallory.agent_id or ""].lease_held
            ),
            "mallory's borrowed lease refused",
        )
        assert state.agents[mallory.agent_id or ""].last_seq == 100  # 101 was not a beat
        state = await until(
            ticket,
            lambda s: s.agents[mallory.agent_id or ""].missed_beats >= 1,
            "mallory watched by the ticket's timer again",
        )
        assert state.agents[owner.agent_id or ""].lease_held
        assert owner.leased
    await cancel(ticket)
