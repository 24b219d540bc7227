"""The MCP server, driven by the real ``mcp`` client (DESIGN §13).

Over stdio (``python starter.py mcp --ticket … --name …`` as a subprocess, as Claude Code or
Codex would start it) and over streamable HTTP (``serve_http``, a bearer token, agents named
by headers), clients take a ticket to a validated result on the session's real server, and
see refusals as tool errors that name the field and the rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextResourceContents
from temporalio.client import Client

import starter
from agent_client.mcp_server import Identity, Sessions, serve_http
from core.state import TicketState
from infra.devserver import free_port
from infra.settings import Settings
from tests.conftest import unique_id
from tests.ticketkit import Launched, join_secret_for, launch, spec_dict

pytestmark = pytest.mark.usefixtures("worker")

ROOT = Path(__file__).resolve().parent.parent
TOOLS = {
    "claim_task",
    "complete_task",
    "fail_task",
    "report_progress",
    "create_task",
    "submit_result",
    "review_task",
    "review_result",
    "ticket_status",
    "read_inbox",
    "ask_human",
}


def ticket_spec(prefix: str) -> dict[str, Any]:
    return spec_dict(
        unique_id(prefix),
        tasks=[{"key": "impl", "phase": "implementation", "title": "Implement login"}],
    )


async def call(session: ClientSession, tool: str, **arguments: Any) -> Any:
    """A tool call that must succeed; its structured result."""
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, f"{tool}: {result.content}"
    return result.structured_content


async def refused(session: ClientSession, tool: str, **arguments: Any) -> str:
    """A tool call that must be refused; the error's text."""
    result = await session.call_tool(tool, arguments)
    assert result.is_error, f"{tool} was accepted: {result.structured_content}"
    return " ".join(getattr(c, "text", "") for c in result.content)


async def work_and_submit(worker: ClientSession) -> None:
    """A worker's whole job: claim, report, complete, submit the result."""
    claimed = await call(worker, "claim_task")
    task = claimed["task"]
    assert task is not None and task["id"] == "T1", claimed
    await call(worker, "report_progress", task_id="T1", note="reading the auth module")
    done = await call(
        worker, "complete_task", task_id="T1", result="## Login\n\nImplemented.", result_type="fix"
    )
    assert done["task"]["status"] == "done"
    submitted = await call(worker, "submit_result", content="# Login\n\nUsers can log in.")
    assert submitted["version"] == 1


async def judge(validator: ClientSession) -> None:
    status = await call(validator, "ticket_status")
    pending = status["awaiting_verdict"]
    assert pending is not None and pending["content"].startswith("# Login"), status
    verdict = await call(
        validator, "review_result", version=pending["version"], passed=True, evidence=["read it"]
    )
    assert verdict["status"] == "validated"


async def completed(ticket: Launched) -> TicketState:
    for _ in range(100):
        state = await ticket.state()
        if state.status == "completed":
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"ticket {ticket.ticket_id} did not complete: {state.status}")


def stdio_params(settings: Settings, ticket_id: str, name: str, kind: str) -> StdioServerParameters:
    # The MCP client gives the server a minimal environment: pass what it needs.
    env = {
        "UNSTUCK_JOIN_SECRET": join_secret_for(settings, ticket_id, kind),
        "UNSTUCK_DATA_DIR": str(settings.data_dir),
        "PYTHONUNBUFFERED": "1",
    }
    return StdioServerParameters(
        command=sys.executable,
        args=[
            str(ROOT / "starter.py"),
            "--address",
            settings.temporal_address,
            "--namespace",
            settings.namespace,
            "mcp",
            "--ticket",
            ticket_id,
            "--name",
            name,
            "--kind",
            kind,
        ],
        env=env,
        cwd=str(ROOT),
    )


@contextlib.asynccontextmanager
async def over_stdio(params: StdioServerParameters) -> AsyncIterator[ClientSession]:
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def test_a_coding_agent_over_stdio_takes_a_ticket_to_a_validated_result(
    client: Client, settings: Settings
) -> None:
    ticket = await launch(client, settings, ticket_spec("mcp-stdio"))
    tid = ticket.ticket_id
    async with (
        over_stdio(stdio_params(settings, tid, "claude", "worker")) as worker,
        over_stdio(stdio_params(settings, tid, "vera", "validator")) as validator,
    ):
        tools = {t.name: t for t in (await worker.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():  # written for an LLM: every tool says what it is for
            assert tool.description and len(tool.description) > 60, tool.name
            assert "token" not in json.dumps(tool.input_schema)  # no credentials asked for
        # Refusals are tool errors naming the field and the rule.
        assert (await refused(worker, "fail_task", task_id="T9", reason="x")).endswith(
            "task_id: unknown task 'T9'"
        )
        text = await refused(worker, "create_task", phase="nowhere", title="Something")
        assert "phase: unknown phase 'nowhere'" in text
        text = await refused(validator, "submit_result", content="# mine")
        assert "agent_id:" in text and "only worker or diagnostic agents may" in text
        await work_and_submit(worker)
        inbox = await call(worker, "read_inbox")
        assert inbox["stop"] is False
        dashboard = await worker.read_resource(f"unstuck://ticket/{tid}/dashboard")
        page = dashboard.contents[0]
        assert isinstance(page, TextResourceContents) and tid in page.text
        await judge(validator)
    state = await completed(ticket)
    agents = {a.name: a for a in state.agents.values()}
    assert agents["claude"].kind == "worker" and agents["vera"].kind == "validator"
    notes = [e.message for e in state.timeline if e.kind == "progress"]
    assert any("reading the auth module" in n for n in notes)


async def test_a_stdio_server_without_the_join_secret_cannot_join(
    client: Client, settings: Settings
) -> None:
    ticket = await launch(client, settings, ticket_spec("mcp-nojoin"))
    params = stdio_params(settings, ticket.ticket_id, "mallory", "validator")
    params.env = {**(params.env or {}), "UNSTUCK_JOIN_SECRET": "ujs1_guess"}
    with pytest.raises(Exception):  # noqa: B017 - the server exits before the handshake
        async with over_stdio(params) as session:
            await session.list_tools()
    assert (await ticket.state()).agents == {}


# ---- streamable HTTP ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def http_server(client: Client) -> AsyncIterator[tuple[str, str]]:
    token = secrets.token_urlsafe(24)
    port = free_port()
    stop = asyncio.Event()
    serving = asyncio.create_task(serve_http(Sessions(client), "127.0.0.1", port, token, stop=stop))
    url = f"http://127.0.0.1:{port}/mcp"
    async with httpx2.AsyncClient() as http:
        for _ in range(100):
            with contextlib.suppress(httpx2.ConnectError):
                await http.get(url)
                break
            await asyncio.sleep(0.05)
    try:
        yield url, token
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)


@contextlib.asynccontextmanager
async def over_http(url: str, headers: dict[str, str]) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def test_many_agents_over_streamable_http_with_a_bearer_token(
    client: Client, settings: Settings
) -> None:
    ticket = await launch(client, settings, ticket_spec("mcp-http"))
    tid = ticket.ticket_id
    async with http_server(client) as (url, token):
        async with httpx2.AsyncClient() as http:  # no token, a wrong token: nothing served
            assert (await http.post(url, json={})).status_code == 401
            wrong = await http.post(url, json={}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        auth = {"Authorization": f"Bearer {token}", "X-Unstuck-Ticket": tid}
        worker_headers = {**auth, "X-Unstuck-Agent": "codex"}  # the server derives the secret
        validator_headers = {
            **auth,
            "X-Unstuck-Agent": "vera",
            "X-Unstuck-Kind": "validator",
            "X-Unstuck-Join-Secret": join_secret_for(settings, tid, "validator"),
        }
        async with over_http(url, worker_headers) as worker:
            assert {t.name for t in (await worker.list_tools()).tools} == TOOLS
            text = await refused(worker, "complete_task", task_id="T1", result="# x")
            assert "task_id: T1 is pending; only a claimed task can complete" in text
            await work_and_submit(worker)
        nobody = {"Authorization": f"Bearer {token}"}
        async with over_http(url, nobody) as anonymous:
            text = await refused(anonymous, "claim_task")
            assert text.endswith(
                "x-unstuck-ticket: say which ticket and agent you are with the headers "
                "x-unstuck-ticket and x-unstuck-agent (and x-unstuck-kind, "
                "x-unstuck-join-secret)"
            )
        forged = {**auth, "X-Unstuck-Agent": "mallory", "X-Unstuck-Kind": "validator"}
        forged["X-Unstuck-Join-Secret"] = "ujs1_guess"
        async with over_http(url, forged) as mallory:
            text = await refused(mallory, "read_inbox")
            assert f"join_secret: is not the validator join secret of ticket {tid}" in text
        # Someone with the bearer token names themselves vera, without vera's join secret.
        impostor = {**validator_headers, "X-Unstuck-Join-Secret": "ujs1_guess"}
        async with over_http(url, validator_headers) as validator:
            await call(validator, "read_inbox")  # vera joins
            async with over_http(url, impostor) as other:
                text = await refused(other, "ticket_status")
                assert "x-unstuck-join-secret: vera joined" in text
            await judge(validator)
    state = await completed(ticket)
    assert {a.name for a in state.agents.values()} == {"codex", "vera"}


async def test_the_mcp_command_says_what_it_needs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNSTUCK_MCP_TOKEN", raising=False)
    assert await starter.run(["mcp"]) == 2
    assert "mcp: --ticket and --name say which agent this server is" in capsys.readouterr().err
    assert await starter.run(["mcp", "--http", "8765"]) == 2
    assert "--http: give HOST:PORT, got '8765'" in capsys.readouterr().err
    monkeypatch.setenv("UNSTUCK_MCP_TOKEN", "short")
    assert await starter.run(["mcp", "--http", "127.0.0.1:8765"]) == 2
    err = capsys.readouterr().err
    assert "--http needs a bearer token of at least 16 characters in UNSTUCK_MCP_TOKEN" in err


async def test_an_http_agent_that_went_quiet_is_no_longer_heartbeated_for(
    client: Client, settings: Settings
) -> None:
    """Over HTTP nobody closes a session: an agent that stops calling tools is let go (no
    more heartbeats), so the ticket finds it gone like any agent; a later call resumes."""
    ticket = await launch(client, settings, ticket_spec("mcp-idle"))
    sessions = Sessions(client, idle_s=0.4)
    who = Identity(ticket.ticket_id, "codex", "worker", None)
    session = await sessions.session_for(who)
    assert session.heartbeating
    reaper = asyncio.create_task(sessions.reap_idle())
    try:
        for _ in range(50):
            if not session.heartbeating:
                break
            await asyncio.sleep(0.1)
        assert not session.heartbeating
        assert await sessions.session_for(who) is session and session.heartbeating
    finally:
        reaper.cancel()
        await sessions.close()


async def test_a_closed_stdio_session_leaves_and_a_crashed_one_resumes(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    """MCP clients start and stop their servers freely. A session that ends cleanly leaves
    the ticket (its task back in the queue at once, not after missed heartbeats); a server
    that died is resumed by the next one (credentials kept 0600), still holding its task."""
    ticket = await launch(client, settings, ticket_spec("mcp-resume"))
    params = stdio_params(settings, ticket.ticket_id, "claude", "worker")
    async with over_stdio(params) as first:
        assert (await call(first, "claim_task"))["task"]["id"] == "T1"
    state = await ticket.state()
    (gone,) = state.agents.values()
    assert gone.state == "terminated" and state.tasks["T1"].status == "pending"
    assert state.tasks["T1"].failures == 0  # leaving uses no retry
    assert any(e.kind == "agent_left" for e in state.timeline)
    # A crash: the server's process ends without closing its sessions.
    who = Identity(
        ticket.ticket_id, "claude", "worker", join_secret_for(settings, ticket.ticket_id, "worker")
    )
    crashed = Sessions(client, fixed=who, state_dir=tmp_path)
    session = await crashed.session_for(who)
    assert (await session.claim()) is not None  # holds T1
    await session.stop_heartbeats()  # (the process died)
    saved = tmp_path / ticket.ticket_id / "claude.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    again = Sessions(client, fixed=who, state_dir=tmp_path)
    resumed = await again.session_for(who)
    assert resumed.agent_id == session.agent_id
    done = await resumed.complete("T1", "# done", "fix")
    assert done.task.status == "done"
    await again.close()
    assert not saved.exists()


async def test_an_agent_asks_a_person_over_mcp_and_gets_the_answer_in_the_tool_call(
    client: Client, settings: Settings
) -> None:
    ticket = await launch(client, settings, ticket_spec("mcp-ask"))
    tid = ticket.ticket_id
    async with over_stdio(stdio_params(settings, tid, "claude", "worker")) as worker:
        claimed = await call(worker, "claim_task")
        assert claimed["task"]["id"] == "T1"
        quick = await call(worker, "ask_human", question="Is SSO in scope?", task_id="T1")
        assert quick["answer"] is None and quick["severity"] == "SEV-3"

        async def person_answers(question_id: str) -> None:
            await asyncio.sleep(0.5)  # while the tool call waits
            await ticket.handle.execute_update(
                "resolve",
                {
                    "escalation_id": question_id,
                    "note": "Yes, GitHub SSO only.",
                    "operator": "olga",
                    "operator_token": ticket.operator_token,
                },
            )

        asked, _ = await asyncio.gather(
            call(worker, "ask_human", question="Which SSO provider?", task_id="T1", wait_s=30),
            _answer_the_latest(ticket, person_answers),
        )
        assert asked["answer"]["answer"] == "Yes, GitHub SSO only."
        assert asked["answer"]["answered_by"] == "olga"
        inbox = await call(worker, "read_inbox")
        assert [a["question_id"] for a in inbox["answers"]] == [asked["question_id"]]
        text = await refused(worker, "ask_human", question="x", task_id="T9")
        assert "task_id: unknown task 'T9'" in text


async def _answer_the_latest(ticket: Launched, answer: Callable[[str], Awaitable[None]]) -> None:
    """Wait for a second question to reach the ticket, then answer it."""
    for _ in range(200):
        state = await ticket.state()
        questions = [e for e in state.escalations if e.source == "agent_question"]
        if len(questions) == 2:
            await answer(questions[1].id)
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the second question never reached the ticket")
