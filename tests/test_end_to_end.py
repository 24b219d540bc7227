"""The whole ticket story on a real server: 15 tasks, 3 phases, 3 agents, a validated result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from temporalio.client import Client

from agent_client.session import AgentSession, TicketClosed
from infra.settings import Settings
from ledger.store import Ledger
from tests.conftest import unique_id
from tests.ticketkit import launch

pytestmark = pytest.mark.usefixtures("worker")

PHASES = ("requirements", "implementation", "testing")


def fifteen_tasks() -> list[dict[str, Any]]:
    """5 tasks per phase; each phase's tasks depend on the previous phase's first two."""
    tasks: list[dict[str, Any]] = []
    for p, phase in enumerate(PHASES):
        for i in range(5):
            task: dict[str, Any] = {
                "key": f"{phase[:3]}-{i}",
                "phase": phase,
                "title": f"{phase} {i}",
                "priority": "high" if i == 4 else "normal",
            }
            if p > 0:
                task["depends_on"] = [f"{PHASES[p - 1][:3]}-0", f"{PHASES[p - 1][:3]}-1"]
            tasks.append(task)
    return tasks


async def work(
    agent: AgentSession,
    log: list[tuple[str, str]],
    *,
    done: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Claim, do, complete (claiming the next in the same call) until nothing is left.

    With ``done``, the agent stops as soon as it finds nothing to claim and ``done()`` says
    the work it was meant for is finished (instead of polling for a while longer).
    """
    task = await agent.claim()
    idle_rounds = 0
    while idle_rounds < 40:
        if task is None:
            if done is not None and await done():
                return
            idle_rounds += 1
            await asyncio.sleep(0.05)
            try:
                task = await agent.claim()
            except TicketClosed:
                return
            continue
        idle_rounds = 0
        log.append((agent.agent_id or "", task.id))
        await agent.progress(task.id, f"working on {task.title}")
        reply = await agent.complete(
            task.id, f"# {task.title}\ndone", "implementation", claim_next=True
        )
        task = reply.next.task if reply.next else None


async def test_fifteen_tasks_three_agents_validated_result(
    client: Client, settings: Settings, ledger: Ledger
) -> None:
    ticket = await launch(
        client,
        settings,
        {
            "id": unique_id("login"),
            "title": "Build login system",
            "tasks": fifteen_tasks(),
            "result_criteria": ["every phase done"],
        },
    )
    log: list[tuple[str, str]] = []
    agents = [AgentSession(client, ticket.ticket_id, name=f"worker-{i}") for i in range(3)]
    async with (
        agents[0],
        agents[1],
        agents[2],
        AgentSession(client, ticket.ticket_id, name="vera", kind="validator") as vera,
    ):
        await asyncio.gather(*(work(a, log) for a in agents))
        state = await ticket.state()
        assert [t.status for t in state.tasks.values()] == ["done"] * 15
        # Nobody worked a task twice; dependencies were respected in completion order.
        assert sorted(t for _, t in log) == sorted(state.tasks)
        done_at = {t.id: t.updated_at for t in state.tasks.values()}
        for task in state.tasks.values():
            for dep in task.depends_on:
                assert done_at[dep] <= done_at[task.id]
        assert len({a for a, _ in log}) >= 2  # the work was actually shared
        submitted = await agents[0].submit_result("# Login system\nAll 15 tasks done.")
        await vera.review_result(submitted.version, passed=True, evidence=["15/15 done"])
        await asyncio.wait_for(agents[1].stop_requested.wait(), timeout=10)

    outcome = await ticket.handle.result()
    assert outcome["status"] == "completed"
    assert outcome["counts_by_status"] == {"done": 15}
    # The workflow drains its ledger writes before it completes: nothing is still in flight.
    assert len(ledger.task_results(ticket.ticket_id)) == 15
    assert {r.task_id for r in ledger.task_results(ticket.ticket_id)} == {
        f"T{i}" for i in range(1, 16)
    }
    versions = ledger.workflow_results(ticket.ticket_id)
    assert [v.version for v in versions] == [1]
    assert versions[0].content == "# Login system\nAll 15 tasks done."
    assert [r.passed for r in ledger.reviews(ticket.ticket_id)] == [True]
