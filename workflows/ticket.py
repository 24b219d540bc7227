"""TicketWorkflow: the thin Temporal shell around the pure ticket core.

The core decides; this class only (1) turns agent messages into core calls, validating
updates before they enter history, (2) performs the effects the core returns through
activities, (3) keeps the Web UI's search attributes and dashboard current and (4) continues
as new when history grows, carrying the whole state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from core import ticket as core
    from core import views
    from core.state import TicketState
    from models.ledger import WRITE_LEDGER_ACTIVITY, LedgerBatch
    from models.messages import (
        AgentInbox,
        AgentView,
        CancelTicket,
        ClaimReply,
        ClaimTask,
        CompleteReply,
        CompleteTask,
        CreateTask,
        FailTask,
        Heartbeat,
        RegisterAgent,
        Registration,
        ReportProgress,
        ResultFile,
        ResultVersionView,
        ReviewReply,
        ReviewResult,
        StatusView,
        SubmitReply,
        SubmitResult,
        TaskView,
        TimelineEntry,
    )
    from models.spec import TicketSpec
    from models.workflow_io import ReadResultFile, TicketInput
    from workflows.dashboard import render_dashboard

READ_RESULT_FILE_ACTIVITY = "read_result_file"

TICKET_STATUS = SearchAttributeKey.for_keyword("TicketStatus")
PHASE = SearchAttributeKey.for_keyword("Phase")
OPEN_TASKS = SearchAttributeKey.for_int("OpenTasks")

T = TypeVar("T")

#: Ledger writes retry for as long as it takes: a result must never be dropped because the
#: database was down for a while. A conflict (same id, different content) is a bug and is
#: raised non-retryable by the activity.
LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)


def _refusal(exc: core.Refused) -> ApplicationError:
    # An ApplicationError (not any other exception) so that, raised from a handler after
    # validation, it fails only the update instead of retrying the workflow task forever.
    return ApplicationError(
        str(exc), {"field": exc.field, "rule": exc.rule}, type="Refused", non_retryable=True
    )


@workflow.defn(name="Ticket")
class TicketWorkflow:
    """One long-lived workflow per ticket; its id is the ticket id."""

    @workflow.init
    def __init__(self, input: TicketInput) -> None:
        if input.state is not None:
            self._state = input.state
        else:
            assert input.spec is not None, "TicketInput needs a spec or a state"
            self._state = core.new_ticket(input.spec, workflow.now())
            self._state.operator_token_sha256 = input.operator_token_sha256
        self._input = input
        self._flush: asyncio.Task[None] | None = None
        self._finished = False
        self._search_attributes: dict[str, Any] = {}
        self._dashboard = ""

    # ---- main loop ---------------------------------------------------------------------

    @workflow.run
    async def run(self, input: TicketInput) -> StatusView:
        self._publish()
        while True:
            await workflow.wait_condition(
                lambda: self._finished or self._ledger_due() or self._should_continue_as_new()
            )
            if self._ledger_due():
                self._start_flush()
            if self._finished:
                break
            if self._should_continue_as_new():
                await self._drain()
                if self._finished:
                    break
                workflow.logger.info("continuing as new with %d tasks", len(self._state.tasks))
                workflow.continue_as_new(
                    TicketInput(
                        state=self._state,
                        continue_as_new_after_events=input.continue_as_new_after_events,
                    )
                )
        await self._drain()
        self._publish()
        return views.status_view(self._state)

    async def _drain(self) -> None:
        """Let running handlers finish and the ledger catch up, so nothing is left behind."""
        while True:
            await workflow.wait_condition(
                lambda: (
                    workflow.all_handlers_finished() and (self._flush is None or self._flush.done())
                )
            )
            if not self._ledger_due():
                return
            self._start_flush()

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        limit = self._input.continue_as_new_after_events
        if limit is not None and info.get_current_history_length() >= limit:
            return True
        return info.is_continue_as_new_suggested()

    # ---- ledger --------------------------------------------------------------------------

    def _ledger_due(self) -> bool:
        return not self._state.outbox.is_empty() and (self._flush is None or self._flush.done())

    def _start_flush(self) -> None:
        batch = self._state.outbox
        self._state.outbox = LedgerBatch(ticket_id=self._state.ticket_id)
        self._flush = asyncio.create_task(self._write_ledger(batch))
        self._publish()

    async def _write_ledger(self, batch: LedgerBatch) -> None:
        try:
            await workflow.execute_activity(
                WRITE_LEDGER_ACTIVITY,
                batch,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=LEDGER_RETRY,
                summary=f"write ledger: {batch.size} row(s)",
            )
        except ActivityError as exc:
            # Only a non-retryable conflict ends up here: the ledger holds a different row
            # under the same id. The workflow state stays the truth; say so loudly.
            workflow.logger.error("ledger write refused: %s", exc.cause or exc)
            core.note(
                self._state,
                workflow.now(),
                "ledger_error",
                f"ledger write refused: {exc.cause or exc}",
            )

    # ---- effects -------------------------------------------------------------------------

    def _perform(self, step: core.Step[T]) -> T:
        for effect in step.effects:
            if isinstance(effect, core.FinishTicket):
                self._finished = True
            # StopAgents: agents read it from their inbox (replies and the inbox query).
        self._publish()
        return step.reply

    def _publish(self) -> None:
        """Keep the Web UI current: search attributes when they change, the dashboard."""
        state = self._state
        status, phase, open_tasks = (
            state.status,
            core.current_phase(state) or "",
            core.open_tasks(state),
        )
        wanted = {"TicketStatus": status, "Phase": phase, "OpenTasks": open_tasks}
        if wanted != self._search_attributes:
            self._search_attributes = wanted
            workflow.upsert_search_attributes(
                [
                    TICKET_STATUS.value_set(status),
                    PHASE.value_set(phase),
                    OPEN_TASKS.value_set(open_tasks),
                ]
            )
        # Current details are metadata, not history events: cheap to keep fresh.
        self._dashboard = render_dashboard(state)
        workflow.set_current_details(self._dashboard)

    # ---- updates (refusable) -------------------------------------------------------------

    def _check(self, fn: Callable[..., Any], msg: BaseModel, **kwargs: Any) -> None:
        try:
            fn(self._state, msg, workflow.now(), apply=False, **kwargs)
        except core.Refused as exc:
            raise _refusal(exc) from None

    def _apply(self, fn: Callable[..., core.Step[T]], msg: BaseModel, **kwargs: Any) -> T:
        try:
            step = fn(self._state, msg, workflow.now(), **kwargs)
        except core.Refused as exc:
            raise _refusal(exc) from None
        return self._perform(step)

    @workflow.update(name="register")
    async def register(self, msg: RegisterAgent) -> Registration:
        token = workflow.uuid4().hex + workflow.uuid4().hex
        return self._apply(core.register, msg, token=token)

    @register.validator
    def _validate_register(self, msg: RegisterAgent) -> None:
        self._check(core.register, msg, token="")

    @workflow.update(name="claim")
    async def claim(self, msg: ClaimTask) -> ClaimReply:
        return self._apply(core.claim, msg)

    @claim.validator
    def _validate_claim(self, msg: ClaimTask) -> None:
        self._check(core.claim, msg)

    @workflow.update(name="complete")
    async def complete(self, msg: CompleteTask) -> CompleteReply:
        return self._apply(core.complete, msg)

    @complete.validator
    def _validate_complete(self, msg: CompleteTask) -> None:
        self._check(core.complete, msg)

    @workflow.update(name="fail")
    async def fail(self, msg: FailTask) -> TaskView:
        return self._apply(core.fail, msg)

    @fail.validator
    def _validate_fail(self, msg: FailTask) -> None:
        self._check(core.fail, msg)

    @workflow.update(name="create_task")
    async def create_task(self, msg: CreateTask) -> TaskView:
        return self._apply(core.create_task, msg)

    @create_task.validator
    def _validate_create_task(self, msg: CreateTask) -> None:
        self._check(core.create_task, msg)

    @workflow.update(name="submit_result")
    async def submit_result(self, msg: SubmitResult) -> SubmitReply:
        file: ResultFile | None = None
        if msg.file_ref is not None:
            policy = self._state.spec.policy.results
            try:
                file = await workflow.execute_activity(
                    READ_RESULT_FILE_ACTIVITY,
                    ReadResultFile(
                        file_ref=msg.file_ref,
                        files_root=policy.files_root,
                        max_bytes=policy.max_file_bytes,
                    ),
                    result_type=ResultFile,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(maximum_attempts=3),
                    summary=f"read result file {msg.file_ref}",
                )
            except ActivityError as exc:
                cause = exc.cause
                detail = cause.message if isinstance(cause, ApplicationError) else str(exc)
                raise _refusal(core.Refused("file_ref", detail)) from None
        # Checked again after the await: another submission may have landed meanwhile.
        return self._apply(core.submit_result, msg, file=file)

    @submit_result.validator
    def _validate_submit_result(self, msg: SubmitResult) -> None:
        self._check(core.submit_result, msg)

    @workflow.update(name="review_result")
    async def review_result(self, msg: ReviewResult) -> ReviewReply:
        return self._apply(core.review_result, msg)

    @review_result.validator
    def _validate_review_result(self, msg: ReviewResult) -> None:
        self._check(core.review_result, msg)

    @workflow.update(name="cancel")
    async def cancel(self, msg: CancelTicket) -> StatusView:
        self._apply(core.cancel, msg)
        return views.status_view(self._state)

    @cancel.validator
    def _validate_cancel(self, msg: CancelTicket) -> None:
        self._check(core.cancel, msg)

    # ---- signals (facts, never refused) --------------------------------------------------

    @workflow.signal(name="heartbeat")
    def heartbeat(self, msg: Heartbeat) -> None:
        core.heartbeat(self._state, msg, workflow.now())

    @workflow.signal(name="progress")
    def progress(self, msg: ReportProgress) -> None:
        core.progress(self._state, msg, workflow.now())

    # ---- queries -------------------------------------------------------------------------

    @workflow.query(name="status")
    def status(self) -> StatusView:
        return views.status_view(self._state)

    @workflow.query(name="tasks")
    def tasks(self) -> list[TaskView]:
        return [core.task_view(t) for t in self._state.tasks.values()]

    @workflow.query(name="agents")
    def agents(self) -> list[AgentView]:
        return [views.agent_view(self._state, a) for a in self._state.agents.values()]

    @workflow.query(name="results")
    def results(self) -> list[ResultVersionView]:
        return [views.result_view(r) for r in self._state.results]

    @workflow.query(name="result_content")
    def result_content(self, version: int) -> str | None:
        """The full content of a version still awaiting its verdict (older: the ledger)."""
        for r in self._state.results:
            if r.version == version:
                return r.content
        return None

    @workflow.query(name="timeline")
    def timeline(self) -> list[TimelineEntry]:
        return views.timeline_view(self._state)

    @workflow.query(name="inbox")
    def inbox(self, agent_id: str) -> AgentInbox:
        return core.inbox(self._state, agent_id)

    @workflow.query(name="spec")
    def spec(self) -> TicketSpec:
        return self._state.spec

    @workflow.query(name="dashboard")
    def dashboard(self) -> str:
        return self._dashboard or render_dashboard(self._state)

    @workflow.query(name="state")
    def state(self) -> TicketState:
        """The whole state, token hashes included (for tests and debugging by operators)."""
        return self._state
