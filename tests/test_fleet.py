"""Fleet scale on one ticket (DESIGN §15): 50 agents acting at once, none refused."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.service import RetryConfig, RPCError

from core.ticket import MAX_AGENTS
from infra.client import data_converter
from infra.devserver import DYNAMIC_CONFIG, _start_command
from infra.settings import Settings
from tests.conftest import unique_id
from tests.ticketkit import join_secret_for, launch, spec_dict

pytestmark = pytest.mark.usefixtures("worker")

AGENTS = 50


async def test_fifty_agents_claiming_at_once_are_all_served_without_a_retry(
    client: Client, settings: Settings
) -> None:
    """Fifty claims at once through a client told not to retry. With the server's default of
    10 in-flight updates per workflow the same claims took 10-18 s (the SDK core still
    retries RESOURCE_EXHAUSTED internally) and in one run 23 of 50 were refused; the dev
    server now runs with infra.devserver.DYNAMIC_CONFIG (0.09 s, none refused). That the
    server gets the limit is checked by test_the_dev_server_gets_the_fleet_limits."""
    tasks = [
        {"key": f"t{i}", "phase": "implementation", "title": f"Piece {i}"} for i in range(AGENTS)
    ]
    ticket = await launch(client, settings, spec_dict(unique_id("fleet"), tasks=tasks))
    secret = join_secret_for(settings, ticket.ticket_id)
    agents = [
        await ticket.handle.execute_update("register", {"name": f"a{i}", "join_secret": secret})
        for i in range(AGENTS)
    ]
    raw = await Client.connect(
        settings.temporal_address,
        namespace=settings.namespace,
        data_converter=data_converter(settings),
        retry_config=RetryConfig(max_retries=0),
    )
    handle = raw.get_workflow_handle(ticket.ticket_id)

    async def claim(agent: dict[str, Any]) -> str:
        try:
            reply = await handle.execute_update(
                "claim", {"agent_id": agent["agent_id"], "token": agent["token"]}
            )
        except RPCError as exc:
            return f"refused: {exc.status.name}"
        return str(reply["task"]["id"])

    claimed = await asyncio.gather(*(claim(a) for a in agents))
    refused = [c for c in claimed if c.startswith("refused")]
    assert refused == [], f"{len(refused)} of {AGENTS} refused: {set(refused)}"
    assert len(set(claimed)) == AGENTS  # each agent its own task


def test_the_dev_server_gets_the_fleet_limits(tmp_path: Path) -> None:
    command = _start_command(Path("temporal"), Settings(), "127.0.0.1", tmp_path / "db")
    pairs = [command[i + 1] for i, arg in enumerate(command) if arg == "--dynamic-config-value"]
    assert pairs == [f"{key}={value}" for key, value in DYNAMIC_CONFIG.items()]
    assert DYNAMIC_CONFIG["history.maxInFlightUpdates"] >= MAX_AGENTS
