"""AgentSession sends an update again when the server says it was not applied."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from agent_client.session import AgentSession
from infra.settings import Settings
from tests.conftest import unique_id
from tests.ticketkit import launch, spec_dict

pytestmark = pytest.mark.usefixtures("worker")


async def test_an_update_aborted_by_a_lost_workflow_task_is_sent_again(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server aborts an in-flight update when the workflow task carrying it fails or is
    lost (a run continuing as new under a burst of updates): WorkflowNotReady, nothing
    applied. The session sends it again under the same id instead of failing the agent."""
    ticket = await launch(client, settings, spec_dict(unique_id("not-ready")))
    async with AgentSession(client, ticket.ticket_id, name="alice") as alice:
        real = alice.handle.execute_update
        calls: list[str] = []

        async def flaky(name: str, msg: Any, **kwargs: Any) -> Any:
            calls.append(kwargs["id"])
            if len(calls) == 1:
                raise RPCError(
                    "Unable to perform workflow execution update due to unexpected workflow "
                    "task failure.",
                    RPCStatusCode.FAILED_PRECONDITION,
                    b"",
                )
            return await real(name, msg, **kwargs)

        monkeypatch.setattr(alice.handle, "execute_update", flaky)
        task = await alice.claim()
        assert task is not None and task.id == "T1"
        assert len(calls) == 2 and calls[0] == calls[1]  # the same update id, twice
