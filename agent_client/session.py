"""AgentSession: everything an agent does with a ticket, without touching Temporal directly.

    async with AgentSession(client, "login", name="alice") as agent:
        while (task := await agent.claim()) is not None:
            await agent.progress(task.id, "started")
            await agent.complete(task.id, "# done", "implementation")

Each call is a Temporal update (refusable) or signal (fire-and-forget) with a fresh request
id, used as the update id too, so a retried call is never applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, Self, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from agent_client.lease import LeaseHost
from infra.enrollment import JOIN_SECRET_ENV, EnrollmentError, join_key, join_secret
from infra.settings import Settings
from models.messages import (
    AgentInbox,
    AgentStatus,
    AskHuman,
    AskReply,
    ClaimReply,
    ClaimTask,
    CompleteReply,
    CompleteTask,
    CreateTask,
    FailTask,
    Heartbeat,
    HumanAnswer,
    LeaveReply,
    LeaveTicket,
    RegisterAgent,
    Registration,
    ReportProgress,
    ReviewReply,
    ReviewResult,
    ReviewTask,
    SubmitReply,
    SubmitResult,
    TaskView,
    oversized,
)
from models.spec import AgentKind, Priority, ResultType, TaskType

log = logging.getLogger("unstuck.agent")

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")
P = ParamSpec("P")

#: How long an update call keeps resending through transient failures (server unreachable or
#: restarting, call timed out, the ticket's workflow task failing) before it raises.
RETRY_WINDOW_S = 120.0


class Refused(Exception):
    """The ticket refused the message; ``field`` and ``rule`` say why."""

    def __init__(self, message: str, field: str | None = None, rule: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule


def _refuse_invalid(
    method: Callable[P, Awaitable[T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """A message that fails its own model is refused here, like the ticket would refuse it."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "message"
            rule = first["msg"].removeprefix("Value error, ")
            raise Refused(f"{field}: {rule}", field, rule) from None

    return wrapper


def local_join_secret(ticket_id: str, kind: str) -> str | None:
    """The join secret this process can find: ``UNSTUCK_JOIN_SECRET``, else derived from the
    deployment's join key (``UNSTUCK_JOIN_KEY`` or ``<data dir>/join.key``), else None."""
    if given := os.environ.get(JOIN_SECRET_ENV):
        return given
    try:
        key = join_key(Settings.from_env().data_dir)
    except (EnrollmentError, ValueError):
        return None
    return join_secret(key, ticket_id, kind)


class TicketClosed(Exception):
    """The ticket's workflow is no longer running (finished, cancelled or unknown)."""


class AgentSession:
    """One agent's connection to one ticket."""

    def __init__(
        self,
        client: Client,
        ticket_id: str,
        *,
        name: str,
        kind: AgentKind = "worker",
        capabilities: list[str] | None = None,
        heartbeat_interval_s: float | None = None,
        on_inbox: Callable[[AgentInbox], None] | None = None,
        retry_window_s: float = RETRY_WINDOW_S,
        join_secret: str | None = None,
        lease: bool = True,
    ) -> None:
        """``join_secret``: the ticket's secret for this agent's kind (infra.enrollment).

        None = ``UNSTUCK_JOIN_SECRET`` (set by the local-process and command runtimes), else
        one derived from the deployment's join key when this process can read it
        (``UNSTUCK_JOIN_KEY`` or ``<data dir>/join.key``), else none: a ticket launched with
        enrollment then refuses the registration, naming ``join_secret``.

        ``lease``: carry this agent's liveness on a lease activity run by this process
        (agent_client.lease: no history event per beat); False = a beat signal every
        ``heartbeat_interval_s``, as agents that cannot run a Temporal worker do.
        """
        self.client = client
        self.ticket_id = ticket_id
        self.name = name
        self.kind: AgentKind = kind
        self.capabilities = capabilities or []
        self.handle: WorkflowHandle[Any, Any] = client.get_workflow_handle(ticket_id)
        self.agent_id: str | None = None
        self._token: str | None = None
        self._interval_override = heartbeat_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s or 5.0
        self.inbox = AgentInbox()
        self.stop_requested = asyncio.Event()
        self.current_task_id: str | None = None
        self._on_inbox = on_inbox
        self.retry_window_s = retry_window_s
        self._seq = 0
        self._beats: asyncio.Task[None] | None = None
        self._join_secret = join_secret
        self._lease_wanted = lease
        self._lease_host: LeaseHost | None = None
        self._leases_running = 0
        self._beat_now = asyncio.Event()
        self._last_beat: tuple[AgentStatus, str | None] | None = None  # (status, task) last sent

    # ---- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.register()
        self.start_heartbeats()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_heartbeats()

    @_refuse_invalid
    async def register(self) -> Registration:
        reply = await self._update(
            "register",
            RegisterAgent(
                name=self.name,
                kind=self.kind,
                capabilities=self.capabilities,
                join_secret=self._join_secret or local_join_secret(self.ticket_id, self.kind),
                request_id=_request_id(),
            ),
            Registration,
        )
        self.agent_id, self._token = reply.agent_id, reply.token
        if self._interval_override is None:
            self.heartbeat_interval_s = reply.heartbeat_interval_s
        return reply

    def resume(self, agent_id: str, token: str) -> None:
        """Act as an already registered agent (e.g. after the agent process restarted)."""
        self.agent_id, self._token = agent_id, token

    @property
    def heartbeating(self) -> bool:
        """Whether this session's heartbeat loop runs."""
        return self._beats is not None

    @property
    def leased(self) -> bool:
        """Whether the ticket watches this agent through a lease (no beat signals then)."""
        return self._leases_running > 0

    def start_heartbeats(self) -> None:
        if self._beats is None:
            self._beats = asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat {self.name}")

    async def stop_heartbeats(self) -> None:
        if self._beats is not None:
            self._beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beats
            self._beats = None
        if self._lease_host is not None:
            host, self._lease_host = self._lease_host, None
            await host.leave(self)  # a held lease ends (released) within a second

    # LeaseHolder (agent_client.lease): the lease host tells the session about its lease.

    def lease_taken(self) -> None:
        self._leases_running += 1

    def lease_lost(self) -> None:
        self._leases_running -= 1
        if self._leases_running == 0:
            self._beat_now.set()  # beat at once: that offers the lease queue again

    async def _heartbeat_loop(self) -> None:
        if self._lease_wanted and self.agent_id is not None:
            self._lease_host = await LeaseHost.join(self.client, self)
        while True:
            self._beat_now.clear()
            try:
                # Beats while no lease carries the liveness; with one, only status changes.
                if not self.leased or self._last_beat != self._beat_state():
                    await self.heartbeat()
                await self.refresh_inbox()
            except TicketClosed:
                self.stop_requested.set()
                return
            except Exception as exc:  # a missed beat is the ticket's business, not a crash
                log.warning("%s: heartbeat failed: %s", self.name, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self.heartbeat_interval_s)

    def _beat_state(self) -> tuple[AgentStatus, str | None]:
        return ("running" if self.current_task_id else "idle", self.current_task_id)

    # ---- messages ------------------------------------------------------------------------

    @_refuse_invalid
    async def heartbeat(self) -> None:
        self._seq += 1
        status, task_id = beat = self._beat_state()
        await self._signal(
            "heartbeat",
            Heartbeat(
                **self._auth(),
                seq=self._seq,
                status=status,
                current_task_id=task_id,
                lease_queue=self._lease_host.queue if self._lease_host is not None else None,
            ),
        )
        self._last_beat = beat

    async def refresh_inbox(self) -> AgentInbox:
        try:
            who = self._auth()
            del who["request_id"]
            box = await self.handle.query("inbox", who, result_type=AgentInbox)
        except RPCError as exc:
            raise _closed_or(exc) from None
        self._set_inbox(box)
        return box

    @_refuse_invalid
    async def claim(self, phases: list[str] | None = None) -> TaskView | None:
        """The next task for this agent, or None (see ``last_claim_reason``)."""
        reply = await self._update("claim", ClaimTask(**self._auth(), phases=phases), ClaimReply)
        return self._took(reply)

    @_refuse_invalid
    async def progress(self, task_id: str, note: str) -> None:
        await self._signal("progress", ReportProgress(**self._auth(), task_id=task_id, note=note))

    @_refuse_invalid
    async def complete(
        self,
        task_id: str,
        result: str,
        result_type: ResultType = "implementation",
        *,
        claim_next: bool = False,
    ) -> CompleteReply:
        reply = await self._update(
            "complete",
            CompleteTask(
                **self._auth(),
                task_id=task_id,
                result=result,
                result_type=result_type,
                claim_next=claim_next,
            ),
            CompleteReply,
        )
        if self.current_task_id == task_id:
            self.current_task_id = None
        if reply.next is not None:
            self._took(reply.next)
        return reply

    @_refuse_invalid
    async def fail(self, task_id: str, reason: str) -> TaskView:
        reply = await self._update(
            "fail", FailTask(**self._auth(), task_id=task_id, reason=reason), TaskView
        )
        if self.current_task_id == task_id:
            self.current_task_id = None
        return reply

    @_refuse_invalid
    async def create_task(
        self,
        phase: str,
        title: str,
        *,
        description: str = "",
        type: TaskType = "implementation",
        depends_on: list[str] | None = None,
        priority: Priority = "normal",
        validation: bool = False,
    ) -> TaskView:
        return await self._update(
            "create_task",
            CreateTask(
                **self._auth(),
                phase=phase,
                title=title,
                description=description,
                type=type,
                depends_on=depends_on or [],
                priority=priority,
                validation=validation,
            ),
            TaskView,
        )

    @_refuse_invalid
    async def submit_result(
        self, content: str | None = None, *, file_ref: str | None = None
    ) -> SubmitReply:
        return await self._update(
            "submit_result",
            SubmitResult(**self._auth(), content=content, file_ref=file_ref),
            SubmitReply,
        )

    @_refuse_invalid
    async def review_result(
        self, version: int, passed: bool, feedback: str = "", evidence: list[str] | None = None
    ) -> ReviewReply:
        return await self._update(
            "review_result",
            ReviewResult(
                **self._auth(),
                version=version,
                passed=passed,
                feedback=feedback,
                evidence=evidence or [],
            ),
            ReviewReply,
        )

    @_refuse_invalid
    async def review_task(
        self,
        task_id: str,
        iteration: int,
        passed: bool,
        feedback: str = "",
        evidence: list[str] | None = None,
    ) -> TaskView:
        """A validator's verdict on one iteration of a task (claim it first to get its result)."""
        return await self._update(
            "review_task",
            ReviewTask(
                **self._auth(),
                task_id=task_id,
                iteration=iteration,
                passed=passed,
                feedback=feedback,
                evidence=evidence or [],
            ),
            TaskView,
        )

    @_refuse_invalid
    async def leave(self, reason: str = "done") -> LeaveReply:
        """Leave the ticket for good: held tasks go back to the queue (no retry used), and
        the ticket neither waits for nor restarts this agent. Heartbeats stop."""
        reply = await self._update("leave", LeaveTicket(**self._auth(), reason=reason), LeaveReply)
        await self.stop_heartbeats()
        self.current_task_id = None
        return reply

    @_refuse_invalid
    async def ask_human(self, question: str, task_id: str | None = None) -> AskReply:
        """Ask a person. Returns at once with the question's id; the answer arrives in the
        inbox (:meth:`answer`, :meth:`wait_for_answer`). While the question is open the
        ticket is not stuck and this agent is not stalled: keep heartbeating."""
        msg = AskHuman(**self._auth(), question=question, task_id=task_id)
        return await self._update("ask_human", msg, AskReply)

    def answer(self, question_id: str) -> HumanAnswer | None:
        """The answer to ``question_id`` if it is in the latest inbox."""
        return next((a for a in self.inbox.answers if a.question_id == question_id), None)

    async def wait_for_answer(
        self, question_id: str, timeout: float | None = None, poll_s: float = 2.0
    ) -> HumanAnswer | None:
        """Poll the inbox until a person answered ``question_id`` (None on timeout)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            await self.refresh_inbox()
            if (found := self.answer(question_id)) is not None:
                return found
            if deadline is not None and loop.time() >= deadline:
                return None
            wait = poll_s if deadline is None else max(0.0, min(poll_s, deadline - loop.time()))
            await asyncio.sleep(wait)

    @property
    def feedback(self) -> list[str]:
        """Review feedback for this agent's tasks (from the latest reply or heartbeat)."""
        return list(self.inbox.feedback)

    async def result_content(self, version: int) -> str | None:
        """A result version's content while it awaits a verdict (what a validator reviews)."""
        try:
            content: str | None = await self.handle.query("result_content", version)
        except RPCError as exc:
            raise _closed_or(exc) from None
        return content

    # ---- plumbing ------------------------------------------------------------------------

    last_claim_reason: str = ""

    def _took(self, reply: ClaimReply) -> TaskView | None:
        self._set_inbox(reply.inbox)
        self.last_claim_reason = reply.reason
        if reply.task is not None:
            self.current_task_id = reply.task.id
        return reply.task

    def _set_inbox(self, box: AgentInbox) -> None:
        self.inbox = box
        if box.stop:
            self.stop_requested.set()
        if self.current_task_id is not None and self.current_task_id in box.interrupted:
            log.warning(
                "%s: a diagnosis took %s back: %s",
                self.name,
                self.current_task_id,
                box.feedback[-1] if box.feedback else "no reason given",
            )
            self.current_task_id = None
        if self._on_inbox is not None:
            self._on_inbox(box)

    def interrupted(self, task_id: str) -> bool:
        """Whether a diagnosis took ``task_id`` from this agent (stop work on it; the inbox's
        latest feedback says why). Claiming the task again clears it."""
        return task_id in self.inbox.interrupted

    def _auth(self) -> dict[str, Any]:
        if self.agent_id is None or self._token is None:
            raise RuntimeError(f"agent {self.name!r} is not registered; call register() first")
        return {"agent_id": self.agent_id, "token": self._token, "request_id": _request_id()}

    async def _update(self, name: str, msg: BaseModel, result_type: type[R]) -> R:
        _refuse_oversized(msg)
        request_id = getattr(msg, "request_id", None) or _request_id()
        unprocessed = 0
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.retry_window_s
        pause = 0.05
        while True:
            try:
                return await self._update_once(name, msg, request_id, result_type)
            except _Unprocessed:
                # The ticket was continuing as new when this update reached it; the server
                # gave it back unapplied. Same request id: a retry can never apply it twice.
                unprocessed += 1
                if unprocessed > UNPROCESSED_RETRIES:
                    raise Refused(
                        f"{name}: the ticket did not take the update after "
                        f"{UNPROCESSED_RETRIES} retries"
                    ) from None
            except _Retryable as exc:
                # The server is unreachable or restarting, or the ticket's workflow task is
                # failing (a crashed worker, an update too large for the server). Whether or
                # not the update was applied, sending it again with the same request id (the
                # update id) cannot apply it twice: the server de-duplicates it within a run,
                # the ticket's reply cache across runs. Wait for recovery, within limits.
                if loop.time() + pause > give_up_at:
                    raise exc.error from None
                self.on_retry(name, exc.kind, f"{exc.reason}; retrying in {pause:.1f}s")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)

    def on_retry(self, update: str, kind: str, detail: str) -> None:
        """Called before an update is sent again after a transient failure (``kind``: the RPC
        status name, ``timeout`` or ``not_ready``). Logs a warning; override to count them."""
        log.warning("%s %s: %s", self.name, update, detail)

    async def _update_once(
        self, name: str, msg: BaseModel, request_id: str, result_type: type[R]
    ) -> R:
        try:
            return await self.handle.execute_update(
                name, msg, id=request_id, result_type=result_type
            )
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            if cause is not None and UNPROCESSED in str(cause):
                raise _Unprocessed() from exc
            if isinstance(cause, ApplicationError):
                details = cause.details[0] if cause.details else {}
                field = details.get("field") if isinstance(details, dict) else None
                rule = details.get("rule") if isinstance(details, dict) else None
                raise Refused(cause.message, field, rule) from None
            raise Refused(str(cause or exc)) from None
        except WorkflowUpdateRPCTimeoutOrCancelledError as exc:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the caller cancelled this call: do not retry
            raise _Retryable(exc, "timeout", "the update call timed out") from None
        except RPCError as exc:
            if exc.status == RPCStatusCode.FAILED_PRECONDITION and any(
                words in exc.message for words in NOT_READY
            ):
                raise _Retryable(exc, "not_ready", exc.message) from None
            if exc.status in TRANSIENT:
                reason = f"{exc.status.name}: {exc.message}"
                raise _Retryable(exc, exc.status.name, reason) from None
            raise _closed_or(exc) from None

    async def _signal(self, name: str, msg: BaseModel) -> None:
        _refuse_oversized(msg)
        try:
            await self.handle.signal(name, msg)
        except RPCError as exc:
            raise _closed_or(exc) from None


#: The server's words for an update it delivered to a workflow task that finished (continued
#: as new) without answering it: the update was not applied and may be sent again.
UNPROCESSED = "wasn't processed by worker"
UNPROCESSED_RETRIES = 5


class _Unprocessed(Exception):
    pass


#: The server's words (FAILED_PRECONDITION, WorkflowNotReady) for an update it would not
#: deliver because the ticket's workflow task is failing, or that it aborted because the
#: workflow task it rode on failed or was lost (e.g. completed after the run had continued
#: as new). Neither applied the update: it may be sent again under the same id.
NOT_READY = ("Workflow Task in failed state", "due to unexpected workflow task failure")
#: RPC failures that say nothing about the update itself (server down or restarting).
TRANSIENT = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.UNKNOWN,
    }
)


class _Retryable(Exception):
    def __init__(self, error: Exception, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.kind = kind
        self.reason = reason


def _refuse_oversized(msg: BaseModel) -> None:
    """Refuse, without sending it, a message too large for the ticket to answer."""
    if (too_big := oversized(msg)) is not None:
        field, rule = too_big
        raise Refused(f"{field}: {rule}", field, rule)


def _request_id() -> str:
    return uuid.uuid4().hex


def _closed_or(exc: RPCError) -> Exception:
    if exc.status == RPCStatusCode.NOT_FOUND or "already completed" in str(exc).lower():
        return TicketClosed(f"ticket is closed: {exc.message}")
    return exc
