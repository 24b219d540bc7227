"""The ticket as MCP tools: coding agents (Claude Code, Codex, Gemini CLI, …) join over MCP.

    python starter.py mcp --ticket login-1 --name claude [--kind worker]     # one agent, stdio
    python starter.py mcp --http 127.0.0.1:8765                              # many, HTTP

Built on the official ``mcp`` SDK (``MCPServer``). The server registers the agent and
heartbeats for it while the session lives (an ``AgentSession``), so the tools take the
messages' own arguments and never credentials. A refusal is a tool error whose text names
the field and the rule, as the ticket said it.

Over stdio the server is one agent: the ticket, name and kind come from the command line,
the join secret from ``UNSTUCK_JOIN_SECRET`` (or the deployment's join key). Over streamable
HTTP it serves many: every request carries ``Authorization: Bearer <UNSTUCK_MCP_TOKEN>`` and
says who it is with ``X-Unstuck-Ticket``, ``X-Unstuck-Agent`` and optionally
``X-Unstuck-Kind`` and ``X-Unstuck-Join-Secret`` (else the server derives the secret from
the deployment's join key); the server keeps one registered session per (ticket, agent),
heartbeated while that agent calls tools (``--idle-timeout``, default 600 s, without a call:
no more heartbeats, so the ticket finds an agent that left like any other).

Tools: ``claim_task``, ``complete_task``, ``fail_task``, ``report_progress``, ``create_task``,
``submit_result``, ``review_task``, ``review_result``, ``ticket_status``, ``read_inbox``.
Resource: ``unstuck://ticket/{ticket_id}/dashboard`` (the dashboard the Web UI shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field
from temporalio.client import Client
from temporalio.service import RPCError

from agent_client.session import AgentSession, Refused, TicketClosed
from models.messages import (
    MAX_FEEDBACK,
    MAX_NOTE,
    MAX_REASON,
    AgentInbox,
    CompleteReply,
    HumanAnswer,
    ResultVersionView,
    ReviewReply,
    StatusView,
    SubmitReply,
    TaskView,
)
from models.spec import AgentKind, Priority, ResultType, Slug, TaskType

try:  # the SDK is a dependency; imported lazily by starter.py so other commands start fast
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError as exc:  # pragma: no cover - the lock installs it
    raise ImportError(f"the MCP server needs the `mcp` package: {exc}") from exc

__all__ = ["BearerAuth", "Identity", "Sessions", "build_server", "serve_http", "serve_stdio"]

log = logging.getLogger("unstuck.mcp")

T = TypeVar("T")

HEADER_TICKET = "x-unstuck-ticket"
HEADER_AGENT = "x-unstuck-agent"
HEADER_KIND = "x-unstuck-kind"
HEADER_JOIN = "x-unstuck-join-secret"
#: The longest ask_human waits for an answer within one tool call.
ASK_WAIT_MAX_S = 300.0

INSTRUCTIONS = """\
You are an agent on an Unstuck ticket: a supervised piece of work split into tasks. Work \
in a loop: claim_task gives you the most urgent task you may take (or says why there is \
none); do it; then complete_task with your result as markdown (or fail_task with the \
reason if you cannot). Report progress with report_progress while you work: a silent agent \
looks stuck. Discovered more work? create_task. A task of type "submission" means: \
assemble the ticket's final result and submit_result it. Read read_inbox when a tool says \
so: it carries review feedback on your work, and stop or interrupt requests (an \
interrupted task is no longer yours: stop working on it). Validators claim work awaiting \
review and judge it with review_task or review_result. Only a person can unblock you (a \
decision, missing access, an unclear requirement)? ask_human; the answer comes to your \
inbox. A refusal names the field and the \
rule: fix that and try again, do not repeat the same call."""


# ---- tool results --------------------------------------------------------------------------


class ClaimResult(BaseModel):
    task: TaskView | None = Field(description="the task you now hold; null when there is none")
    reason: str = Field(description="why there is no task (empty when there is one)")
    inbox: AgentInbox


class PendingResult(BaseModel):
    version: int
    content: str | None = Field(description="the version's markdown (null: a file reference)")


class Status(BaseModel):
    status: StatusView
    you: str = Field(description="your agent id on the ticket")
    results: list[ResultVersionView] = Field(description="the final result's versions")
    awaiting_verdict: PendingResult | None = Field(
        default=None, description="validators: the result version to judge with review_result"
    )


class Asked(BaseModel):
    question_id: str = Field(description="your question's id (the answer names it)")
    severity: str
    answer: HumanAnswer | None = Field(
        default=None, description="the answer, if it came within wait_s; else read_inbox later"
    )


# ---- who is calling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    ticket_id: str
    name: str
    kind: AgentKind = "worker"
    join_secret: str | None = None


@dataclass
class Sessions:
    """The registered AgentSessions this server speaks for, one per (ticket, agent)."""

    client: Client
    fixed: Identity | None = None  # stdio: the one agent of this server
    #: HTTP: an agent that called no tool for this long is no longer heartbeated for, so the
    #: ticket finds it gone (its tasks go back) like any agent that stopped; None = never.
    idle_s: float | None = None
    sessions: dict[tuple[str, str], AgentSession] = field(default_factory=dict)
    last_used: dict[tuple[str, str], float] = field(default_factory=dict)
    secrets: dict[tuple[str, str], str] = field(default_factory=dict)
    #: stdio: where the agent's credentials are kept (0600) so that a restarted server goes on
    #: as the same agent instead of a second one (None: never kept).
    state_dir: Path | None = None
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    _beating: asyncio.Event = field(default_factory=asyncio.Event)

    async def session_for(self, who: Identity) -> AgentSession:
        key = (who.ticket_id, who.name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            self.last_used[key] = time.monotonic()
            session = self.sessions.get(key)
            if session is not None:
                # The headers are the caller's word: the same name with another join secret
                # (or none where one was given) is someone else, not this agent.
                if not hmac.compare_digest(self.secrets.get(key, ""), _digest(who.join_secret)):
                    raise ToolError(
                        f"{HEADER_JOIN}: {who.name} joined {who.ticket_id} with another join "
                        "secret; send the one it joined with"
                    )
                if session.kind != who.kind:
                    raise ToolError(
                        f"kind: {who.name} is registered on {who.ticket_id} as a "
                        f"{session.kind}, not a {who.kind}"
                    )
                if not session.heartbeating:  # again, after it had gone idle
                    session.start_heartbeats()
                    self._beating.set()
                return session
            session = AgentSession(
                self.client,
                who.ticket_id,
                name=who.name,
                kind=who.kind,
                join_secret=who.join_secret,
            )
            if not await self._resumed(session, who):
                await _call(session.register)
                self._remember(session, who)
            session.start_heartbeats()
            self._beating.set()
            self.sessions[key] = session
            self.secrets[key] = _digest(who.join_secret)
            log.info("%s registered on %s as %s", who.name, who.ticket_id, session.agent_id)
            return session

    def _saved(self, who: Identity) -> Path | None:
        if self.state_dir is None or self.fixed is None:
            return None
        return self.state_dir / who.ticket_id / f"{who.name}.json"

    async def _resumed(self, session: AgentSession, who: Identity) -> bool:
        """stdio: go on as the agent an earlier run of this server registered (an MCP client
        restarts its servers freely), if the ticket still knows it."""
        path = self._saved(who)
        if path is None or not path.is_file():
            return False
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            session.resume(saved["agent_id"], saved["token"])
            await session.refresh_inbox()  # refused unless the credentials still hold
        except (OSError, ValueError, KeyError, Refused, TicketClosed, RPCError) as exc:
            log.info("not resuming %s on %s: %s", who.name, who.ticket_id, exc)
            session.agent_id = None
            path.unlink(missing_ok=True)
            return False
        log.info("%s resumes as %s on %s", who.name, session.agent_id, who.ticket_id)
        return True

    def _remember(self, session: AgentSession, who: Identity) -> None:
        path = self._saved(who)
        if path is None or session.agent_id is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pending = path.with_name(f".{path.name}.tmp")
        pending.unlink(missing_ok=True)
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"agent_id": session.agent_id, "token": session._token}, f)
        pending.replace(path)

    async def reap_idle(self) -> None:
        """Stop heartbeating for agents idle longer than ``idle_s`` (runs until cancelled)."""
        if self.idle_s is None:
            return
        while True:
            # Wake at the next agent's idle deadline, or when an agent starts beating (again).
            self._beating.clear()  # before looking: a start after this look wakes us
            now = time.monotonic()
            beating = [
                self.last_used.get(k, now) for k, s in self.sessions.items() if s.heartbeating
            ]
            due = max(min(beating) + self.idle_s - now, 0.05) if beating else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beating.wait(), due)
            now = time.monotonic()
            for key, session in list(self.sessions.items()):
                if session.heartbeating and now - self.last_used.get(key, now) >= self.idle_s:
                    log.info("%s on %s idle: no more heartbeats for it", key[1], key[0])
                    await session.stop_heartbeats()

    async def close(self) -> None:
        """The server ends cleanly (the MCP client closed stdio, the HTTP server stops): its
        agents leave the ticket, so their tasks go back to the queue at once instead of after
        missed heartbeats, and a server started again registers them afresh. (A server that
        dies leaves its agents behind: a stdio one started again resumes its agent.)"""
        for (ticket_id, name), session in list(self.sessions.items()):
            await session.stop_heartbeats()
            try:
                await asyncio.wait_for(session.leave("its MCP session ended"), 10)
            except (Refused, TicketClosed, RPCError, TimeoutError) as exc:
                log.info("%s could not leave %s: %s", name, ticket_id, exc)
            path = self._saved(Identity(ticket_id, name))
            if path is not None:
                path.unlink(missing_ok=True)
        self.sessions.clear()


def _digest(secret: str | None) -> str:
    return hashlib.sha256((secret or "").encode()).hexdigest()


def _identity(ctx: Context | None, sessions: Sessions) -> Identity:
    if sessions.fixed is not None:
        return sessions.fixed
    headers = (ctx.headers if ctx is not None else None) or {}
    ticket = headers.get(HEADER_TICKET)
    name = headers.get(HEADER_AGENT)
    if not ticket or not name:
        raise ToolError(
            f"{HEADER_TICKET}: say which ticket and agent you are with the headers "
            f"{HEADER_TICKET} and {HEADER_AGENT} (and {HEADER_KIND}, {HEADER_JOIN})"
        )
    kind = headers.get(HEADER_KIND) or "worker"
    if kind not in ("worker", "validator", "diagnostic"):
        raise ToolError(f"{HEADER_KIND}: must be worker, validator or diagnostic, got {kind!r}")
    return Identity(ticket, name, kind, headers.get(HEADER_JOIN))  # type: ignore[arg-type]


async def _call(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Call the ticket; a refusal becomes a tool error naming the field and the rule."""
    try:
        return await fn(*args, **kwargs)
    except Refused as exc:
        raise ToolError(str(exc)) from None
    except TicketClosed as exc:
        raise ToolError(f"ticket: {exc or 'the ticket is no longer running'}") from None


# ---- the server ----------------------------------------------------------------------------


def build_server(sessions: Sessions, *, host: str = "127.0.0.1") -> MCPServer:
    """The MCP server for ``sessions`` (stdio: one fixed agent; HTTP: one per caller)."""

    @asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[Sessions]:
        try:
            if sessions.fixed is not None:  # stdio: join at once, beat while we live
                await sessions.session_for(sessions.fixed)
            yield sessions
        finally:
            await sessions.close()

    mcp = MCPServer("unstuck", instructions=INSTRUCTIONS, lifespan=lifespan)

    async def me(ctx: Context | None) -> AgentSession:
        return await sessions.session_for(_identity(ctx, sessions))

    @mcp.tool(
        description=(
            "Take the most urgent task you may work on now (dependencies done, highest "
            "priority first). Returns the task, or null with the reason there is none (e.g. "
            "everything is taken or waits on other tasks: try again later). Validators get "
            "work awaiting review, with its result_content to judge."
        )
    )
    async def claim_task(
        phases: Annotated[
            list[str] | None, Field(description="only tasks of these phases (default: any)")
        ] = None,
        ctx: Context = None,  # type: ignore[assignment]
    ) -> ClaimResult:
        session = await me(ctx)
        task = await _call(session.claim, phases)
        return ClaimResult(task=task, reason=session.last_claim_reason, inbox=session.inbox)

    @mcp.tool(
        description=(
            "Finish a task you hold with its result as markdown (at most 100 KB): what you "
            "did and how you checked it. A task with validation goes to a reviewer; its "
            "feedback, if any, comes back in your inbox and the task returns to you. Set "
            "claim_next to get your next task in the same call."
        )
    )
    async def complete_task(
        task_id: Annotated[str, Field(description="the task's id, e.g. T3")],
        result: Annotated[str, Field(description="the result, markdown")],
        result_type: Annotated[
            ResultType, Field(description="what kind of result this is")
        ] = "implementation",
        claim_next: Annotated[bool, Field(description="also claim your next task")] = False,
        ctx: Context = None,  # type: ignore[assignment]
    ) -> CompleteReply:
        session = await me(ctx)
        return await _call(session.complete, task_id, result, result_type, claim_next=claim_next)

    @mcp.tool(
        description=(
            "Give up a task you hold, saying why (the error, what is missing). It is retried "
            "(by you or another agent) up to the ticket's retry limit; repeated failures are "
            "diagnosed. Say what would unblock it."
        )
    )
    async def fail_task(
        task_id: Annotated[str, Field(description="the task's id")],
        reason: Annotated[str, Field(description="why it failed", max_length=MAX_REASON)],
        ctx: Context = None,  # type: ignore[assignment]
    ) -> TaskView:
        session = await me(ctx)
        return await _call(session.fail, task_id, reason)

    @mcp.tool(
        description=(
            "Say what you are doing on a task you hold (one short line). Do it every few "
            "minutes while you work: notes are how the ticket tells busy from stuck. Do not "
            "repeat the same note: repeating yourself looks like a loop."
        )
    )
    async def report_progress(
        task_id: Annotated[str, Field(description="the task's id")],
        note: Annotated[str, Field(description="what you are doing now", max_length=MAX_NOTE)],
        ctx: Context = None,  # type: ignore[assignment]
    ) -> str:
        session = await me(ctx)
        await _call(session.progress, task_id, note)
        return "noted"

    @mcp.tool(
        description=(
            "Add a task you discovered (any phase). Keep titles distinct: a title an active "
            "task of the same phase already has is refused, and so is a burst of tasks."
        )
    )
    async def create_task(
        phase: Annotated[str, Field(description="one of the ticket's phases")],
        title: Annotated[str, Field(description="what to do, in a few words", max_length=200)],
        description: Annotated[str, Field(description="details, acceptance")] = "",
        type: Annotated[TaskType, Field(description="the kind of work")] = "implementation",
        depends_on: Annotated[
            list[str] | None, Field(description="ids of tasks that must be done first")
        ] = None,
        priority: Annotated[Priority, Field(description="how urgent")] = "normal",
        validation: Annotated[bool, Field(description="a reviewer must pass it")] = False,
        ctx: Context = None,  # type: ignore[assignment]
    ) -> TaskView:
        session = await me(ctx)
        return await _call(
            session.create_task,
            phase,
            title,
            description=description,
            type=type,
            depends_on=depends_on,
            priority=priority,
            validation=validation,
        )

    @mcp.tool(
        description=(
            "Submit the ticket's final result: markdown content (at most 1 MB), or file_ref, "
            "a .md file under the ticket's files root. It is validated against the ticket's "
            "result criteria; a rejected version can be revised and submitted again."
        )
    )
    async def submit_result(
        content: Annotated[str | None, Field(description="the result, markdown")] = None,
        file_ref: Annotated[str | None, Field(description="or: a .md file's path")] = None,
        ctx: Context = None,  # type: ignore[assignment]
    ) -> SubmitReply:
        session = await me(ctx)
        return await _call(session.submit_result, content, file_ref=file_ref)

    @mcp.tool(
        description=(
            "Validators: judge one iteration of a task you claimed for review. passed=false "
            "needs feedback the worker can act on; cite evidence (tests run, files read)."
        )
    )
    async def review_task(
        task_id: Annotated[str, Field(description="the task under review")],
        iteration: Annotated[int, Field(description="the iteration you judged", ge=1)],
        passed: Annotated[bool, Field(description="does it meet its done definition")],
        feedback: Annotated[
            str, Field(description="what to fix (required when failing)", max_length=MAX_FEEDBACK)
        ] = "",
        evidence: Annotated[
            list[str] | None, Field(description="short lines: what you checked")
        ] = None,
        ctx: Context = None,  # type: ignore[assignment]
    ) -> TaskView:
        session = await me(ctx)
        return await _call(session.review_task, task_id, iteration, passed, feedback, evidence)

    @mcp.tool(
        description=(
            "Validators: judge a version of the ticket's final result against its result "
            "criteria (ticket_status lists the versions; claim_task gives you one to judge). "
            "Each version is judged once; passed=false needs feedback."
        )
    )
    async def review_result(
        version: Annotated[int, Field(description="the result version", ge=1)],
        passed: Annotated[bool, Field(description="does it meet every criterion")],
        feedback: Annotated[
            str,
            Field(description="what is missing (required when failing)", max_length=MAX_FEEDBACK),
        ] = "",
        evidence: Annotated[
            list[str] | None, Field(description="short lines: what you checked")
        ] = None,
        ctx: Context = None,  # type: ignore[assignment]
    ) -> ReviewReply:
        session = await me(ctx)
        return await _call(session.review_result, version, passed, feedback, evidence)

    @mcp.tool(
        description=(
            "The ticket at a glance: its status and phase, tasks by status, agents, the final "
            "result's versions; for validators, the version awaiting a verdict and its content. "
            "Read it when you are unsure what to do next."
        )
    )
    async def ticket_status(ctx: Context = None) -> Status:  # type: ignore[assignment]
        session = await me(ctx)
        status = await _call(session.handle.query, "status", result_type=StatusView)
        results = await _call(session.handle.query, "results", result_type=list[ResultVersionView])
        pending = next((r for r in results if r.status == "pending_validation"), None)
        awaiting = None
        if pending is not None and session.kind == "validator":
            content = await _call(session.result_content, pending.version)
            awaiting = PendingResult(version=pending.version, content=content)
        return Status(
            status=status, you=session.agent_id or "", results=results, awaiting_verdict=awaiting
        )

    @mcp.tool(
        description=(
            "Ask a person (the ticket's operators) when only a person can unblock you: a "
            "decision, missing access, an ambiguous requirement. It reaches them as an "
            "escalation. Waits up to wait_s for the answer; otherwise the answer arrives in "
            "your inbox (read_inbox: answers). While you wait you are not counted as stuck."
        )
    )
    async def ask_human(
        question: Annotated[
            str, Field(description="what you need to know, and why", max_length=MAX_NOTE)
        ],
        task_id: Annotated[
            str | None, Field(description="the task you hold it is about, if any")
        ] = None,
        wait_s: Annotated[
            float, Field(ge=0, le=ASK_WAIT_MAX_S, description="how long to wait for the answer")
        ] = 0,
        ctx: Context = None,  # type: ignore[assignment]
    ) -> Asked:
        session = await me(ctx)
        asked = await _call(session.ask_human, question, task_id)
        answer = None
        if wait_s > 0:
            answer = await _call(session.wait_for_answer, asked.question_id, wait_s)
        return Asked(question_id=asked.question_id, severity=asked.severity, answer=answer)

    @mcp.tool(
        description=(
            "Your inbox: review feedback on your tasks, tasks taken back from you "
            "(interrupted: stop working on them), a person's answers to your questions, "
            "and whether you must stop or restart."
        )
    )
    async def read_inbox(ctx: Context = None) -> AgentInbox:  # type: ignore[assignment]
        session = await me(ctx)
        return await _call(session.refresh_inbox)

    @mcp.resource(
        "unstuck://ticket/{ticket_id}/dashboard",
        mime_type="text/markdown",
        description="The ticket's dashboard (what the Temporal Web UI shows): tasks, agents, "
        "results, diagnoses.",
    )
    async def dashboard(ticket_id: str) -> str:
        text: str = await sessions.client.get_workflow_handle(ticket_id).query("dashboard")
        return text

    return mcp


# ---- HTTP: one bearer token ------------------------------------------------------------------


class BearerAuth:
    """ASGI wrapper: every HTTP request needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Bearer realm="unstuck-mcp"'),
                        ],
                    }
                )
                await send(
                    {
                        "type": "http.response.body",
                        "body": b'{"error": "missing or wrong Authorization: Bearer token"}',
                    }
                )
                return
        await self.app(scope, receive, send)


async def serve_http(
    sessions: Sessions, host: str, port: int, token: str, *, stop: asyncio.Event | None = None
) -> None:
    """Serve MCP over streamable HTTP at ``http://host:port/mcp`` until SIGINT/SIGTERM or
    ``stop`` is set; then the agents' sessions stop heartbeating."""
    import uvicorn

    mcp = build_server(sessions, host=host)
    app = BearerAuth(mcp.streamable_http_app(host=host), token)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    async def stopper() -> None:
        assert stop is not None
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stopper()) if stop is not None else None
    reaper = asyncio.create_task(sessions.reap_idle())
    try:
        await server.serve()
    finally:
        reaper.cancel()
        if watcher is not None:
            watcher.cancel()
        with contextlib.suppress(Exception):
            await sessions.close()


async def serve_stdio(sessions: Sessions) -> None:
    """Serve one agent over stdio until the client closes the pipe."""
    await build_server(sessions).run_stdio_async()


Transport = Literal["stdio", "http"]
__all__ = [
    "BearerAuth",
    "Identity",
    "Sessions",
    "Slug",
    "build_server",
    "serve_http",
    "serve_stdio",
]
