"""Helpers for tests that run tickets on the session's Temporal server."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowHandle

from core.state import TicketState
from infra.enrollment import join_hashes, join_key, join_secret
from infra.settings import Settings
from models.spec import parse_spec
from models.workflow_io import TicketInput


@dataclass
class Launched:
    handle: WorkflowHandle[Any, Any]
    ticket_id: str
    operator_token: str

    async def state(self) -> TicketState:
        return await self.handle.query("state", result_type=TicketState)

    async def state_dump(self) -> dict[str, Any]:
        return (await self.state()).model_dump(mode="json")


def join_secret_for(settings: Settings, ticket_id: str, kind: str = "worker") -> str:
    """The join secret an agent of ``kind`` registers with on a ticket the tests launched."""
    return join_secret(join_key(settings.data_dir), ticket_id, kind)


def spec_dict(ticket_id: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": ticket_id,
        "title": "Build login system",
        "goal": "Users can log in",
        "result_criteria": ["login works", "tests pass"],
        "tasks": [
            {"key": "reqs", "phase": "requirements", "title": "Write requirements"},
            {
                "key": "impl",
                "phase": "implementation",
                "title": "Implement",
                "depends_on": ["reqs"],
            },
        ],
    }
    base.update(overrides)
    return base


async def launch(
    client: Client,
    settings: Settings,
    spec: dict[str, Any],
    *,
    continue_as_new_after_events: int | None = None,
    continue_as_new_after_updates: int | None = None,
    task_timeout: timedelta | None = None,
    enrolled: bool = True,
) -> Launched:
    """Start a ticket on the settings' task queue.

    ``task_timeout`` is the workflow task timeout (server default: 10 s): how long a workflow
    task started on a worker that died waits before it is handed to another one.
    ``enrolled``: agents register with the join secret of their kind (infra.enrollment);
    False starts the ticket as tickets were started before enrollment (anyone may join).
    """
    token = secrets.token_urlsafe(16)
    ticket = parse_spec(spec)
    handle = await client.start_workflow(
        "Ticket",
        TicketInput(
            spec=ticket,
            operator_token_sha256=hashlib.sha256(token.encode()).hexdigest(),
            join_sha256=join_hashes(join_key(settings.data_dir, create=True), ticket.id)
            if enrolled
            else None,
            continue_as_new_after_events=continue_as_new_after_events,
            continue_as_new_after_updates=continue_as_new_after_updates,
        ),
        id=ticket.id,
        task_queue=settings.task_queue,
        task_timeout=task_timeout,
    )
    return Launched(handle, ticket.id, token)
