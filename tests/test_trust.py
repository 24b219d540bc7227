"""Trust boundaries, attacked from a second client on the real server (DESIGN §16).

The attacker here is any client of the namespace: the session's plain client sending raw
JSON, as the ``temporal`` CLI or an SDK in another language would. It knows the ticket id,
it may have seen an agent's id; it has no join secret and no agent token. Each case says
what it tried and what the ticket must answer: a refusal naming the field and the rule,
nothing changed, no workflow task failed.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from agent_client.session import AgentSession, Refused
from core.state import TicketState
from infra.settings import Settings
from models.messages import INBOUND, MAX_MESSAGE_BYTES
from tests.conftest import unique_id
from tests.ticketkit import Launched, join_secret_for, launch, spec_dict

pytestmark = pytest.mark.usefixtures("worker")

SIGNALS = ("heartbeat", "progress")
UPDATES = [name for name in INBOUND if name not in SIGNALS]


async def refused(handle: WorkflowHandle[Any, Any], name: str, payload: Any) -> str:
    """Send a raw update that must be refused; the refusal's text."""
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await handle.execute_update(name, payload)
    cause = failed.value.cause
    return cause.message if isinstance(cause, ApplicationError) else str(cause)


async def workflow_task_failures(handle: WorkflowHandle[Any, Any]) -> int:
    history = await handle.fetch_history()
    return sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in history.events)


def comparable(state: TicketState) -> dict[str, Any]:
    return state.model_dump(mode="json", exclude={"ignored_messages"})


async def test_only_the_join_secret_of_its_kind_admits_an_agent(
    client: Client, settings: Settings
) -> None:
    ticket = await launch(client, settings, spec_dict(unique_id("enroll")))
    handle = ticket.handle
    before = comparable(await ticket.state())
    # A stranger self-registers as the validator that would judge the result.
    text = await refused(handle, "register", {"name": "mallory", "kind": "validator"})
    assert "join_secret: required" in text
    # ... with a worker's secret (an agent of the ticket turning itself into its judge).
    worker_secret = join_secret_for(settings, ticket.ticket_id, "worker")
    text = await refused(
        handle, "register", {"name": "mallory", "kind": "validator", "join_secret": worker_secret}
    )
    assert text == f"join_secret: is not the validator join secret of ticket {ticket.ticket_id}"
    # ... with the validator secret of another ticket.
    other = join_secret_for(settings, "another-ticket", "validator")
    await refused(
        handle, "register", {"name": "mallory", "kind": "validator", "join_secret": other}
    )
    assert comparable(await ticket.state()) == before
    # The right secret, raw and through AgentSession (which finds it on its own).
    vera = await handle.execute_update(
        "register",
        {
            "name": "vera",
            "kind": "validator",
            "join_secret": join_secret_for(settings, ticket.ticket_id, "validator"),
        },
    )
    assert vera["agent_id"].startswith("vera-")
    async with AgentSession(client, ticket.ticket_id, name="alice") as alice:
        assert (await alice.claim()) is not None
    assert await workflow_task_failures(handle) == 0


async def test_a_ticket_started_before_enrollment_still_admits_its_agents(
    client: Client, settings: Settings
) -> None:
    ticket = await launch(client, settings, spec_dict(unique_id("legacy")), enrolled=False)
    reply = await ticket.handle.execute_update("register", {"name": "old-agent"})
    inbox = await ticket.handle.query("inbox", reply["agent_id"])  # the old query shape
    assert inbox["stop"] is False


async def test_a_request_id_names_one_intent(client: Client, settings: Settings) -> None:
    ticket = await launch(client, settings, spec_dict(unique_id("reuse")))
    async with AgentSession(client, ticket.ticket_id, name="alice") as alice:
        creds = {"agent_id": alice.agent_id, "token": alice._token}
        first = await ticket.handle.execute_update("claim", {**creds, "request_id": "r-1"})
        assert first["task"]["id"] == "T1"
        again = await ticket.handle.execute_update("claim", {**creds, "request_id": "r-1"})
        assert again == first  # a retry: the same reply
        text = await refused(
            ticket.handle, "claim", {**creds, "request_id": "r-1", "phases": ["testing"]}
        )
        assert text.startswith("request_id: reused with a different payload")
        done = {**creds, "task_id": "T1", "result": "# done", "result_type": "fix"}
        await ticket.handle.execute_update("complete", {**done, "request_id": "c-1"})
        text = await refused(
            ticket.handle, "complete", {**done, "result": "# other", "request_id": "c-1"}
        )
        assert "reused with a different payload" in text
    assert await workflow_task_failures(ticket.handle) == 0


MALFORMED: list[tuple[str, Any, str]] = [
    # (what, payload, a part of the refusal that names the field)
    ("null", None, "payload: must be a JSON object"),
    ("a string", "claim me", "payload: Input should be an object"),
    ("a list", [1, 2, 3], "payload: Input should be an object"),
    ("an extra field", {"name": "a", "agent_id": "a-1", "token": "t", "admin": True}, "admin"),
    ("a wrong type", {"name": 7, "agent_id": 7, "token": ["t"]}, "agent_id"),
    ("deep nesting", {"agent_id": "a-1", "token": "t", "x": [[[[[[[[[[[]]]]]]]]]]]}, "x"),
]


@pytest.mark.parametrize("name", UPDATES)
async def test_every_malformed_payload_is_refused_naming_the_field(
    client: Client, settings: Settings, name: str
) -> None:
    ticket = await launch(client, settings, spec_dict(unique_id(f"malformed-{name}")))
    before = comparable(await ticket.state())
    # Nesting deeper than any client library would encode, sent as raw JSON bytes.
    deep = RawValue(
        Payload(
            metadata={"encoding": b"json/plain"},
            data=b'{"agent_id": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
        )
    )
    not_json = RawValue(Payload(metadata={"encoding": b"binary/plain"}, data=b"\x00\x01"))
    cases = [
        *MALFORMED,
        ("5,000 levels of nesting", deep, "payload: "),
        ("bytes, not JSON", not_json, "payload: must be JSON"),
    ]
    for what, payload, named in cases:
        text = await refused(ticket.handle, name, payload)
        assert "AttributeError" not in text and "NoneType" not in text, (what, text)
        assert re.match(r"^[\w.]+: \S", text), (what, text)  # "field: rule"
        assert named in text, (what, text)
    assert comparable(await ticket.state()) == before
    assert await workflow_task_failures(ticket.handle) == 0


async def test_queries_show_a_client_only_what_it_may_see(
    client: Client, settings: Settings
) -> None:
    ticket = await launch(client, settings, spec_dict(unique_id("queries")))
    handle = ticket.handle
    async with AgentSession(client, ticket.ticket_id, name="alice") as alice:
        assert alice.agent_id is not None
        # Another client asks for alice's inbox by her id alone, or with a made-up token.
        with pytest.raises(WorkflowQueryFailedError, match="token: an agent's inbox is read"):
            await handle.query("inbox", alice.agent_id)
        with pytest.raises(WorkflowQueryFailedError, match="token: does not match"):
            await handle.query("inbox", {"agent_id": alice.agent_id, "token": "guess"})
        own = await alice.refresh_inbox()  # alice herself reads it
        assert own.stop is False
        # The whole state: no hash of any secret, with or without the operator token.
        anyone = await handle.query("state", result_type=TicketState)
        operator = await handle.query("state", ticket.operator_token, result_type=TicketState)
        raw = await ticket.state()
        for shown in (anyone, operator):
            assert shown.operator_token_sha256 is None and shown.join_sha256 is None
            assert all(a.token_sha256 == "" for a in shown.agents.values())
        assert raw.operator_token_sha256 is None  # ticketkit reads it as anyone does
        with pytest.raises(WorkflowQueryFailedError, match="operator_token: does not match"):
            await handle.query("state", "not-the-token")
        dashboard = await handle.query("dashboard")
        assert alice._token not in dashboard


async def test_messages_are_measured_as_the_ticket_carries_them(
    client: Client, settings: Settings
) -> None:
    """Limits hold on the JSON-escaped size, for a raw client and for AgentSession.

    200,000 control characters are 200 KB of UTF-8, a fifth of the 1 MB content cap, but
    1.2 MB as JSON: refused, naming the field. 262,144 four-byte code points are exactly
    1 MiB as JSON (they are not escaped): accepted, stored, written to the ledger.
    """
    ticket = await launch(
        client,
        settings,
        spec_dict(unique_id("encoded"), policy={"results": {"on_result_found": "do_nothing"}}),
    )
    async with AgentSession(client, ticket.ticket_id, name="alice") as alice:
        creds = {"agent_id": alice.agent_id, "token": alice._token}
        control = "\u0001" * 200_000
        text = await refused(ticket.handle, "submit_result", {**creds, "content": control})
        assert text == "content: is 1,200,000 bytes as JSON; the limit is 1,048,576"
        assert (await alice.claim()) is not None
        text = await refused(
            ticket.handle,
            "complete",
            {**creds, "task_id": "T1", "result": "\u0000" * 20_000, "result_type": "fix"},
        )
        assert text.startswith("result: is 120,000 bytes as JSON")
        with pytest.raises(Refused) as too_big:  # AgentSession measures before sending
            await alice.submit_result("\U0001f600" * 262_145)
        assert too_big.value.field == "content"
        emoji = "\U0001f600" * 262_144
        reply = await alice.submit_result(emoji)
        assert reply.version == 1
    state = await ticket.state()
    assert state.results[0].size_bytes == 1_048_576
    assert await workflow_task_failures(ticket.handle) == 0


async def test_a_message_over_the_limit_is_refused_by_the_ticket_itself(
    client: Client, settings: Settings
) -> None:
    """A raw client skips AgentSession's check: the ticket's validator measures too."""
    ticket: Launched = await launch(client, settings, spec_dict(unique_id("wire")))
    async with AgentSession(client, ticket.ticket_id, name="vera", kind="validator") as vera:
        creds = {"agent_id": vera.agent_id, "token": vera._token}
        payload = {
            **creds,
            "version": 1,
            "passed": False,
            "feedback": "\u0003" * 20_000,  # 120 KB as JSON
            "evidence": ["\u0004" * 50_000] * 5,  # 1.5 MB as JSON
        }
        text = await refused(ticket.handle, "review_result", payload)
        assert f"the limit is {MAX_MESSAGE_BYTES:,}" in text and text.startswith("evidence:")
    assert await workflow_task_failures(ticket.handle) == 0
