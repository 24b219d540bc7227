"""The state a ticket carries through continue-as-new stays far below the payload limit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from core import ticket as core
from models.messages import ClaimTask, CompleteTask, RegisterAgent
from models.spec import parse_spec
from models.workflow_io import TicketInput, pack_state, unpack_state

PAYLOAD_LIMIT = 2 * 1024 * 1024


def test_a_big_ticket_state_packs_well_under_the_payload_limit() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    spec = parse_spec(
        {
            "id": "big",
            "title": "A big ticket",
            "tasks": [
                {
                    "key": f"t{i}",
                    "phase": "implementation",
                    "title": f"task number {i}",
                    "description": "Do the thing carefully. " * 20,
                }
                for i in range(3000)
            ],
        }
    )
    state = core.new_ticket(spec, now)
    reg = core.register(state, RegisterAgent(name="w"), now, token="t").reply
    auth: dict[str, Any] = {"agent_id": reg.agent_id, "token": "t"}
    for i in range(1500):
        task = core.claim(state, ClaimTask(**auth, request_id=f"c{i}"), now).reply.task
        assert task is not None
        core.complete(
            state,
            CompleteTask(
                **auth,
                task_id=task.id,
                result="# done\n" * 50,
                result_type="implementation",
                request_id=f"d{i}",
            ),
            now,
        )
    plain = len(TicketInput(state=state).model_dump_json())
    packed = len(TicketInput(state_blob=pack_state(state)).model_dump_json())
    assert plain > PAYLOAD_LIMIT  # as plain JSON it would not fit
    assert packed < PAYLOAD_LIMIT / 4, packed
    again = unpack_state(pack_state(state))
    assert again == state
    assert pack_state(again) == pack_state(state)  # deterministic, as workflow code must be
