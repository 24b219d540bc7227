"""The example specs a user starts from: each loads, launches with the CLI and can finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

import starter
from agent_client.session import AgentSession, Refused, TicketClosed
from infra.settings import Settings
from models.messages import ResultVersionView, StatusView
from models.spec import load_spec
from tests.conftest import unique_id

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_loads(path: Path) -> None:
    spec = load_spec(path)
    assert spec.tasks and spec.result_criteria


def test_the_demo_spec_says_it_is_the_demo() -> None:
    head = (EXAMPLES / "login.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert "THE DEMO" in head and "fault-injected" in head


async def _until_closed(agent_loop: Coroutine[Any, Any, None]) -> None:
    """Run an agent's loop; the ticket finishing between two of its calls ends it."""
    try:
        await agent_loop
    except TicketClosed:
        pass
    except Refused as exc:
        if exc.field != "ticket":
            raise


async def _while_open(handle: Any) -> AsyncIterator[StatusView]:
    """The ticket's status, round after round, until it finishes."""
    while (status := await handle.query("status", result_type=StatusView)).finished_at is None:
        yield status
        await asyncio.sleep(0.2)


async def _work_loop(client: Client, ticket_id: str, criteria: list[str]) -> None:
    """A worker that does every task it can claim, then submits the final result."""
    async with AgentSession(client, ticket_id, name="worker") as agent:
        submitted = False
        async for status in _while_open(client.get_workflow_handle(ticket_id)):
            while (task := await agent.claim()) is not None:
                note = f"\nAddressed: {task.last_feedback}" if task.last_feedback else ""
                await agent.complete(task.id, f"# {task.title}\nDone.{note}", "implementation")
            if not submitted and status.counts_by_status.keys() <= {"done"}:
                lines = [f"- [x] {c}" for c in criteria]
                await agent.submit_result("# Final result\n" + "\n".join(lines))
                submitted = True


async def _review_loop(client: Client, ticket_id: str) -> None:
    """A validator that passes every task and result version it is given."""
    async with AgentSession(client, ticket_id, name="reviewer", kind="validator") as agent:
        handle = client.get_workflow_handle(ticket_id)
        async for _ in _while_open(handle):
            while (task := await agent.claim()) is not None:
                await agent.review_task(task.id, task.iteration, True, evidence=["read it"])
            results = await handle.query("results", result_type=list[ResultVersionView])
            for r in results:
                if r.status == "pending_validation":
                    await agent.review_result(r.version, True, evidence=["criteria covered"])


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("name", ["feature", "bugfix"])
async def test_example_launches_and_reaches_a_validated_result(
    name: str,
    client: Client,
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = EXAMPLES / f"{name}.yaml"
    spec = load_spec(path)
    ticket_id = unique_id(name)
    code = await starter.run(
        [
            "launch",
            str(path),
            "--id",
            ticket_id,
            "--address",
            settings.temporal_address,
            "--task-queue",
            settings.task_queue,
            "--data-dir",
            str(tmp_path),
        ]
    )
    assert code == 0, capsys.readouterr().err
    criteria = spec.criteria_text()
    await asyncio.wait_for(
        asyncio.gather(
            _until_closed(_work_loop(client, ticket_id, criteria)),
            _until_closed(_review_loop(client, ticket_id)),
        ),
        90,
    )
    handle = client.get_workflow_handle(ticket_id, result_type=StatusView)
    final = await handle.result()
    assert final.status == "completed" and final.validated_version == 1
    assert final.counts_by_status.get("done") == len(spec.tasks)
    reviewed = [t for t in spec.tasks if t.validation]
    state = await handle.query("tasks", result_type=list)
    assert sum(1 for t in state if t.get("iteration", 0) >= 1) == len(reviewed)
