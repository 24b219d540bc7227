"""TicketWorkflow: the thin Temporal shell around the pure ticket core.

The core decides; this class only (1) turns agent messages into core calls, validating
updates before they enter history, (2) performs the effects the core returns through
activities, (3) keeps the Web UI's search attributes and dashboard current and (4) continues
as new when history grows, carrying the whole state.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RawValue, RetryPolicy, SearchAttributeKey, SearchAttributeUpdate
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    TimeoutType,
)
from temporalio.exceptions import TimeoutError as ActivityTimeout
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, RootModel, ValidationError

    from core import deadlines, diagnosis, escalations, health, people, views
    from core import ticket as core
    from core.common import RestartAgentProcess, SpawnAgentProcesses, StopAgentProcesses
    from core.diagnosis import Deadline
    from core.state import TicketState
    from models.diagnosis import DiagnosisInput, DiagnosisReport
    from models.ledger import WRITE_LEDGER_ACTIVITY, LedgerBatch
    from models.messages import (
        MAX_MESSAGE_BYTES,
        AcknowledgeEscalation,
        AgentInbox,
        AgentView,
        AskHuman,
        AskReply,
        Authenticated,
        CancelTicket,
        ClaimReply,
        ClaimTask,
        CompleteReply,
        CompleteTask,
        CreateTask,
        DiagnoseReply,
        DiagnoseTicket,
        DiagnosisView,
        EscalationView,
        FailTask,
        Heartbeat,
        LeaveReply,
        LeaveTicket,
        RegisterAgent,
        Registration,
        ReleaseAgent,
        ReleaseReply,
        ReportProgress,
        ResolveEscalation,
        ResultFile,
        ResultVersionView,
        ReviewReply,
        ReviewResult,
        ReviewTask,
        StatusView,
        SubmitReply,
        SubmitResult,
        TaskView,
        TimelineEntry,
        oversized,
    )
    from models.notify import DELIVER_ESCALATION_ACTIVITY, NotifyOutcome, NotifyRequest
    from models.runtime import (
        HOLD_LEASE_ACTIVITY,
        HOSTED_RUNTIMES,
        RESTART_AGENT_ACTIVITY,
        SPAWN_AGENT_ACTIVITY,
        STOP_AGENT_ACTIVITY,
        AgentProcess,
        RestartAgent,
        RestartOutcome,
        SpawnAgent,
        StopAgent,
        StopOutcome,
        host_queue,
    )
    from models.spec import AgentSpec, AutomatedCheck, TicketSpec
    from models.validation import RUN_CHECKS_ACTIVITY, ChecksReport, RunChecks
    from models.workflow_io import ReadResultFile, TicketInput, pack_state, unpack_state
    from workflows.dashboard import render_dashboard
    from workflows.metrics import TicketMetrics

READ_RESULT_FILE_ACTIVITY = "read_result_file"

TICKET_STATUS = SearchAttributeKey.for_keyword("TicketStatus")
PHASE = SearchAttributeKey.for_keyword("Phase")
OPEN_TASKS = SearchAttributeKey.for_int("OpenTasks")
STUCK_SINCE = SearchAttributeKey.for_datetime("StuckSince")
DIAGNOSES = SearchAttributeKey.for_int("Diagnoses")
RESTARTS = SearchAttributeKey.for_int("Restarts")
ANOMALY_SCORE = SearchAttributeKey.for_float("AnomalyScore")
ESCALATION_SEVERITY = SearchAttributeKey.for_keyword("EscalationSeverity")
SEARCH_ATTRIBUTE_KEYS: dict[str, SearchAttributeKey[Any]] = {
    k.name: k
    for k in (
        TICKET_STATUS,
        PHASE,
        OPEN_TASKS,
        STUCK_SINCE,
        DIAGNOSES,
        RESTARTS,
        ANOMALY_SCORE,
        ESCALATION_SEVERITY,
    )
}
DIAGNOSIS_WORKFLOW = "Diagnosis"

#: Continue as new after this many accepted updates in one run (the dev server refuses more
#: than 2000 distinct updates per run and suggests continuing as new at 1800).
MAX_UPDATES_PER_RUN = 1500
#: Patch id: the Web UI (search attributes, dashboard) is published once per workflow
#: activation, after every handler of it ran; only the search attributes that changed are
#: upserted, and a change of the open-task count alone at most every OPEN_TASKS_REFRESH.
#: Runs started before it publish after each change, all attributes at once.
PUBLISH_ONCE_PER_ACTIVATION = "publish-once-per-activation"
#: Agents whose claims found nothing are served first (core.ticket._claim_for).
FAIR_CLAIMS = "fair-claims"
#: Blocked tasks (a dependency failed for good) are not active, so a ticket with only
#: blocked tasks is stuck; a spent diagnosis budget escalates at once (TicketState.healing_v2).
HEALING_V2 = "healing-v2"
#: Behaviour signals per agent (core.behaviour): anomaly scores and their search attribute,
#: the anomaly trigger, and create_task's hard bounds (TicketState.behaviour_v1).
BEHAVIOUR_SIGNALS = "behaviour-signals"
#: Trust boundaries (DESIGN §16): a reused request id with another payload is refused, a
#: name keeps its kind, ledger writes are split under the payload limit (TicketState.trust_v1).
TRUST_BOUNDARIES = "trust-boundaries"
#: Escalations reach people (DESIGN §14): each is delivered to the ticket's sinks by an
#: activity, acknowledged and resolved by people (ack/resolve), agents may ask a person
#: (ask_human), and the EscalationSeverity search attribute names the worst unresolved one.
ESCALATIONS_V1 = "escalations-v1"
#: Fleet-scale liveness (DESIGN §15): agents that offer a lease queue hold a lease activity
#: whose heartbeat timeout carries their liveness instead of a signal per beat
#: (core.health, agent_client.lease), and agent processes are stopped and restarted through
#: the task queue of the host that runs them (TicketState.fleet_v1).
FLEET_LIVENESS = "fleet-liveness"
#: A lease ends after this long even while the agent lives; the agent is then offered a new
#: one at its next beat (an activity must have a start-to-close or schedule-to-close bound).
LEASE_TERM = timedelta(hours=6)
LEASE_RETRY = RetryPolicy(maximum_attempts=1)  # a lost lease is the ticket's news, not retried
#: While only the number of open tasks changes (agents completing tasks in a burst), its
#: search attribute is refreshed at most this often: each upsert is a visibility write on
#: the server, and one per workflow task made the server's CPU per update twice Temporal's
#: own (bench.lifecycle). The dashboard (current details) stays exact; so do the other
#: attributes, upserted as they change.
OPEN_TASKS_REFRESH = timedelta(seconds=2)

T = TypeVar("T")

#: Ledger writes retry for as long as it takes: a result must never be dropped because the
#: database was down for a while. A conflict (same id, different content) is a bug and is
#: raised non-retryable by the activity.
#: Agent process operations: a few attempts (restart_agent resumes from its heartbeat details).
AGENT_OP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=5,
)

LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
#: start_to_close of one ledger write (was 60 s: every worker crash during a write stalled
#: that ticket's ledger, finish and continue-as-new for a minute; tests/test_chaos.py).
LEDGER_WRITE_TIMEOUT = timedelta(seconds=20)
#: Most JSON one ledger write carries (Temporal refuses payloads over 2 MB; one record, e.g.
#: a final result of at most 1 MB as JSON, always fits).
LEDGER_BATCH_BYTES = 1_500_000
#: Escalation delivery (activities.notify) retries inside its activity, heartbeating; the
#: server retries an attempt only when its worker is gone (no heartbeat for this long).
NOTIFY_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
#: One attempt may wait this long for a receiver that is down (then the next attempt resumes
#: from its heartbeat details): in effect, until delivered.
NOTIFY_ATTEMPT_TIMEOUT = timedelta(days=1)
#: Escalations delivered at once per ticket (the rest wait their turn).
MAX_NOTIFIERS = 8
NOTIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60)
)


def _search_attribute(name: str, value: Any) -> SearchAttributeUpdate[Any]:
    """The update of one of the ticket's search attributes (None unsets it)."""
    key: SearchAttributeKey[Any] = SEARCH_ATTRIBUTE_KEYS[name]
    return key.value_set(value) if value is not None else key.value_unset()


def _host_gone(exc: ActivityError) -> bool:
    """The activity waited on a host's own queue and no worker there took it."""
    cause = exc.cause
    return isinstance(cause, ActivityTimeout) and cause.type == TimeoutType.SCHEDULE_TO_START


def _refusal(exc: core.Refused) -> ApplicationError:
    # An ApplicationError (not any other exception) so that, raised from a handler after
    # validation, it fails only the update instead of retrying the workflow task forever.
    return ApplicationError(
        str(exc), {"field": exc.field, "rule": exc.rule}, type="Refused", non_retryable=True
    )


M = TypeVar("M", bound=BaseModel)


class _AgentId(RootModel[str]):
    """The ``inbox`` query's argument as tickets before enrollment take it: an agent id."""


def _decode(model: type[M], raw: RawValue, *, measure: bool = False) -> M:
    """An update's payload as ``model``, or a refusal that names the field and the rule.

    Handlers take the raw payload and decode it here instead of letting the SDK do it: the
    SDK answers every payload it cannot decode (null, a string, a wrong type, an unknown
    field, nesting too deep) with a bare "Failed decoding arguments".

    ``measure`` (validators only: they do not run on replay) refuses a payload over
    :data:`MAX_MESSAGE_BYTES` as sent. An accepted update's request is written to history as
    it came, and what the workflow derives from it (ledger rows, activity inputs, re-encoded
    by pydantic, never larger) must stay under Temporal's 2 MB payload limit: no accepted
    message may fail a workflow task. Field caps alone do not bound it (a list of evidence,
    control characters at 6 bytes each as JSON).
    """
    payload = raw.payload
    if measure and len(payload.data) > MAX_MESSAGE_BYTES:
        raise _refusal(_too_big(model, payload.data))
    encoding = payload.metadata.get("encoding", b"").decode("utf-8", "replace")
    if encoding == "binary/null":
        raise _refusal(
            core.Refused("payload", f"must be a JSON object ({model.__name__}), got null")
        )
    if encoding != "json/plain":
        raise _refusal(
            core.Refused("payload", f"must be JSON (encoding json/plain), got {encoding!r}")
        )
    try:
        return model.model_validate_json(payload.data)
    except ValidationError as exc:
        raise _refusal(_invalid(model, exc)) from None


def _invalid(model: type[BaseModel], exc: ValidationError) -> core.Refused:
    """The first of a ValidationError's errors as a refusal: its field and its rule."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    field = ".".join(str(part) for part in first["loc"]) or "payload"
    rule = str(first["msg"])
    if field == "payload":
        rule = f"{rule} (a {model.__name__} message is a JSON object)"
    others = [".".join(str(p) for p in e["loc"]) or "payload" for e in errors[1:11]]
    if others:
        more = f" and {len(errors) - 11} more" if len(errors) > 11 else ""
        rule += f" (also wrong: {', '.join(others)}{more})"
    return core.Refused(field, rule)


def _too_big(model: type[BaseModel], data: bytes) -> core.Refused:
    """The refusal of a payload over the limit, naming the field that takes the most."""
    rule = f"the message is {len(data):,} bytes as JSON; the limit is {MAX_MESSAGE_BYTES:,}"
    try:
        decoded = model.model_validate_json(data)
    except ValidationError:
        return core.Refused("payload", rule)
    return core.Refused(*(oversized(decoded, len(data)) or ("payload", rule)))


@workflow.defn(name="Ticket")
class TicketWorkflow:
    """One long-lived workflow per ticket; its id is the ticket id."""

    @workflow.init
    def __init__(self, input: TicketInput) -> None:
        if input.state_blob is not None:
            self._state = unpack_state(input.state_blob)
        elif input.state is not None:
            self._state = input.state
        else:
            assert input.spec is not None, "TicketInput needs a spec or a state"
            self._state = core.new_ticket(input.spec, workflow.now())
            self._state.operator_token_sha256 = input.operator_token_sha256
            self._state.join_sha256 = input.join_sha256
            self._state.agent_address = input.agent_address
            self._state.agent_namespace = input.agent_namespace
        # Decided once per run, before any handler reads it (updates of the first activation
        # run before run()): it changes when the stuck timer fires and what diagnoses do, so
        # runs recorded before the patch keep the old rules when replayed.
        self._state.healing_v2 = workflow.patched(HEALING_V2)
        self._state.behaviour_v1 = workflow.patched(BEHAVIOUR_SIGNALS)
        self._state.trust_v1 = workflow.patched(TRUST_BOUNDARIES)
        self._state.escalations_v1 = workflow.patched(ESCALATIONS_V1)
        self._state.fleet_v1 = workflow.patched(FLEET_LIVENESS)
        health.leases_carried_over(self._state, workflow.now())
        self._input = input
        self._flush: asyncio.Task[None] | None = None
        self._diagnoses: dict[str, asyncio.Task[None]] = {}
        self._agent_ops: set[asyncio.Task[None]] = set()
        #: escalation id -> the task delivering its messages (at most MAX_NOTIFIERS)
        self._notifiers: dict[str, asyncio.Task[None]] = {}
        #: agent id -> the task holding its lease activity; ids whose lease is being cancelled
        self._leases: dict[str, asyncio.Task[None]] = {}
        self._leases_cancelled: set[str] = set()
        self._draining = False
        self._updates_this_run = 0
        self._armed: datetime | None = None
        self._finished = False
        self._search_attributes: dict[str, Any] = {}
        self._dashboard = ""
        self._coalesce_publish: bool | None = None  # decided by a patch, once per run
        self._publish_due = False
        self._publisher: asyncio.Task[None] | None = None
        self._published_at: datetime | None = None  # the last search-attribute upsert
        self._held_back = False  # an open-task count not yet upserted (OPEN_TASKS_REFRESH)
        self._metrics = TicketMetrics(self._state)  # replay-safe; no commands, no events

    # ---- main loop ---------------------------------------------------------------------

    @workflow.run
    async def run(self, input: TicketInput) -> StatusView:
        if input.state is None:
            self._apply_effects(health.start(self._state))  # spawn local-process agents
        self._after_change()
        while not self._finished:
            # Deadlines that passed (the stuck check) produce effects like any message.
            now = workflow.now()
            stuck_due = diagnosis.stuck_at(self._state)
            effects = deadlines.tick(self._state, now)
            self._metrics.ticked(self._state, stuck_due, now, effects)
            self._apply_effects(effects)
            if self._finished:
                break
            if (refresh_at := self._refresh_at()) is not None and now >= refresh_at:
                self._publish()  # the open-task count held back while it changed fast
            if self._should_continue_as_new():
                await self._drain(final=False)
                if self._finished:
                    break
                workflow.logger.info("continuing as new with %d tasks", len(self._state.tasks))
                workflow.continue_as_new(
                    TicketInput(
                        state_blob=pack_state(self._state),
                        continue_as_new_after_events=input.continue_as_new_after_events,
                        continue_as_new_after_updates=input.continue_as_new_after_updates,
                    )
                )
            await self._sleep_until_next_deadline()
        await self._drain(final=True)
        self._after_change(publish_now=True)  # nothing runs after the return
        return views.status_view(self._state)

    async def _sleep_until_next_deadline(self) -> None:
        """One durable timer to the ticket's next deadline; no polling.

        Messages wake the loop only when they bring a deadline *earlier* than the armed
        timer (or finish the ticket, or history asks to continue as new). A deadline that
        moved later lets the timer fire; the loop then finds nothing due and re-arms. That
        keeps timer churn (and history events) off the hot path of claim/complete.
        """
        deadline = self._next_wake()
        self._armed = deadline.at if deadline else None
        if deadline is None:
            await workflow.wait_condition(self._wake)
            return
        delay = (deadline.at - workflow.now()).total_seconds()
        if delay <= 0:
            return
        with contextlib.suppress(TimeoutError):  # the deadline came: the loop ticks
            await workflow.wait_condition(
                self._wake, timeout=timedelta(seconds=delay), timeout_summary=deadline.label
            )

    def _wake(self) -> bool:
        if self._finished or self._should_continue_as_new():
            return True
        deadline = self._next_wake()
        return deadline is not None and (self._armed is None or deadline.at < self._armed)

    def _next_wake(self) -> Deadline | None:
        """The ticket's next deadline, or the refresh of the Web UI if that comes first."""
        deadline = deadlines.next_deadline(self._state)
        refresh_at = self._refresh_at()
        if refresh_at is not None and (deadline is None or refresh_at < deadline.at):
            return Deadline(refresh_at, "refresh search attributes")
        return deadline

    def _refresh_at(self) -> datetime | None:
        """When a held-back open-task count is due to be upserted, if one is."""
        if not self._held_back or self._published_at is None:
            return None
        return self._published_at + OPEN_TASKS_REFRESH

    async def _drain(self, *, final: bool) -> None:
        """Let handlers, diagnoses, agent operations and the ledger write in flight finish.

        At the end (``final``) the ledger outbox must be empty too. Before continuing as new
        it need not be: the outbox rides along in the carried state, and no new write starts
        while draining, so a ticket whose agents keep completing tasks still gets to continue
        as new (waiting for an empty outbox there never ended under load).
        """
        self._draining = not final
        if final:
            self._flush_ledger()  # a drain for continue-as-new may have paused it
            self._start_notifiers()  # ... and cancelled deliveries: they must go out now
            if self._notifiers:
                waiting = sum(
                    d.status == "pending"
                    for e in escalations.pending(self._state)
                    for d in e.deliveries
                )
                core.note(
                    self._state,
                    workflow.now(),
                    "escalation_delivery",
                    f"the ticket closes once {waiting} escalation message(s) are delivered",
                )
        else:
            # Deliveries on their way are cancelled: each answers with what it did (within a
            # heartbeat), the rest rides along in the carried state for the next run.
            for notifier in self._notifiers.values():
                notifier.cancel()
            # Leases end with the run; the next run offers them again at once.
            for agent_id in list(self._leases):
                self._cancel_lease(agent_id)
        await workflow.wait_condition(
            lambda: (
                workflow.all_handlers_finished()
                and not self._diagnoses
                and not self._agent_ops
                and (self._flush is None or self._flush.done())
                and (not final or self._state.outbox.is_empty())
                and not self._notifiers
                and not self._leases
            )
        )

    def _should_continue_as_new(self) -> bool:
        info = workflow.info()
        limit = self._input.continue_as_new_after_events
        if limit is not None and info.get_current_history_length() >= limit:
            return True
        if self._updates_this_run >= (
            self._input.continue_as_new_after_updates or MAX_UPDATES_PER_RUN
        ):
            return True  # well before the server's limit of distinct updates per run
        return info.is_continue_as_new_suggested()

    # ---- ledger --------------------------------------------------------------------------

    def _flush_ledger(self) -> None:
        """Write the outbox: one activity at a time; rows arriving meanwhile form the next."""
        if self._draining or self._state.outbox.is_empty():
            return
        if self._flush is not None and not self._flush.done():
            return
        self._flush = asyncio.create_task(self._write_ledger())

    async def _write_ledger(self) -> None:
        while not self._state.outbox.is_empty() and not self._draining:
            if self._state.trust_v1:
                batch, self._state.outbox = self._state.outbox.split(LEDGER_BATCH_BYTES)
            else:  # the commands of runs started before the patch: one write per outbox
                batch = self._state.outbox
                self._state.outbox = LedgerBatch(ticket_id=self._state.ticket_id)
            try:
                await workflow.execute_activity(
                    WRITE_LEDGER_ACTIVITY,
                    batch,
                    # How long a write lost with a crashed worker holds up the ticket's ledger
                    # (and its finish, and continue-as-new) before another worker retries it.
                    # A write is one short transaction; an attempt that outlives this is not
                    # abandoned (its thread commits), the retry then finds the rows present.
                    start_to_close_timeout=LEDGER_WRITE_TIMEOUT,
                    retry_policy=LEDGER_RETRY,
                    summary=f"write ledger: {batch.size} row(s)",
                )
            except ActivityError as exc:
                # Only a non-retryable conflict ends up here: the ledger holds a different
                # row under the same id. The workflow state stays the truth; say so loudly.
                workflow.logger.error("ledger write refused: %s", exc.cause or exc)
                core.note(
                    self._state,
                    workflow.now(),
                    "ledger_error",
                    f"ledger write refused: {exc.cause or exc}",
                )

    # ---- effects -------------------------------------------------------------------------

    def _perform(self, step: core.Step[T]) -> T:
        self._apply_effects(step.effects)
        return step.reply

    def _apply_effects(self, effects: list[core.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, core.FinishTicket):
                self._finished = True
                for task in self._diagnoses.values():
                    task.cancel()  # the ticket is over; its diagnoses are moot
                for process in health.processes(self._state):
                    self._agent_op(self._stop_agent(process, effect.reason))
            elif isinstance(effect, core.StartDiagnosis):
                run_id = effect.input.run_id
                self._diagnoses[run_id] = asyncio.create_task(self._diagnose(effect.input))
                self._metrics.diagnosis_started(effect.input.trigger)
            elif isinstance(effect, RestartAgentProcess):
                self._agent_op(self._restart_agent(effect))
            elif isinstance(effect, SpawnAgentProcesses):
                for spec in effect.specs:
                    self._agent_op(self._spawn_agent(spec))
            elif isinstance(effect, StopAgentProcesses):
                for process in effect.processes:
                    self._agent_op(self._stop_agent(process, effect.reason))
            # StopAgents: agents read it from their inbox (replies and the inbox query).
        self._after_change()

    # ---- agent processes (local-process runtime) ---------------------------------------------

    def _agent_op(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._agent_ops.add(task)
        task.add_done_callback(self._agent_ops.discard)

    def _spawn_request(self, spec: AgentSpec, generation: int) -> SpawnAgent:
        return SpawnAgent(
            ticket_id=self._state.ticket_id,
            spec=spec,
            temporal_address=self._state.agent_address or "",
            namespace=self._state.agent_namespace,
            generation=generation,
            enrolled=self._state.join_sha256 is not None,
        )

    async def _spawn_agent(self, spec: AgentSpec) -> None:
        try:
            process = await workflow.execute_activity(
                SPAWN_AGENT_ACTIVITY,
                self._spawn_request(spec, 0),
                result_type=AgentProcess,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=AGENT_OP_RETRY,
                summary=f"spawn agent {spec.name}",
            )
            health.agent_spawned(self._state, process, workflow.now())
        except ActivityError as exc:
            diagnosis.escalate(
                self._state,
                workflow.now(),
                source="spawn_failed",
                reason=f"could not start agent {spec.name}: {exc.cause or exc}",
            )
        self._after_change()

    def _host_route(self, process: AgentProcess | None) -> dict[str, Any]:
        """Activity options that send an operation on ``process`` to the host running it
        (its worker's own task queue), with how long that host may take to answer."""
        if (
            not self._state.fleet_v1
            or process is None
            or not process.host
            or process.runtime not in HOSTED_RUNTIMES
        ):
            return {}
        return {
            "task_queue": host_queue(workflow.info().task_queue, process.host),
            "schedule_to_start_timeout": timedelta(
                seconds=self._state.spec.policy.health.host_gone_s
            ),
        }

    async def _restart_agent(self, effect: RestartAgentProcess) -> None:
        grace = self._state.spec.policy.health.stop_grace_s
        previous = effect.previous
        try:
            while True:
                route = self._host_route(previous)
                try:
                    outcome = await workflow.execute_activity(
                        RESTART_AGENT_ACTIVITY,
                        RestartAgent(
                            spawn=self._spawn_request(effect.spec, effect.generation),
                            previous=previous,
                            grace_s=grace,
                        ),
                        result_type=RestartOutcome,
                        start_to_close_timeout=timedelta(seconds=grace + 120),
                        heartbeat_timeout=timedelta(seconds=30),
                        retry_policy=AGENT_OP_RETRY,
                        summary=f"restart agent {effect.lineage} (restart {effect.number})",
                        **route,
                    )
                    break
                except ActivityError as exc:
                    if not route or not _host_gone(exc) or previous is None:
                        raise
                    # Nobody polls that host's queue: its worker is gone, and with it (as
                    # far as the ticket can tell) the process. Start the replacement anywhere.
                    core.note(
                        self._state,
                        workflow.now(),
                        "host_gone",
                        f"host {previous.host!r} did not take the restart of {effect.lineage} "
                        f"within {route['schedule_to_start_timeout'].total_seconds():g} s: the "
                        "replacement starts on another host",
                    )
                    previous = None
            health.restart_finished(
                self._state, effect.agent_id, effect.number, outcome, workflow.now()
            )
        except ActivityError as exc:
            health.restart_failed(
                self._state, effect.agent_id, effect.number, str(exc.cause or exc), workflow.now()
            )
        self._after_change()

    async def _stop_agent(self, process: AgentProcess, reason: str) -> None:
        grace = self._state.spec.policy.health.stop_grace_s
        try:
            await workflow.execute_activity(
                STOP_AGENT_ACTIVITY,
                StopAgent(process=process, grace_s=grace),
                result_type=StopOutcome,
                start_to_close_timeout=timedelta(seconds=grace + 60),
                heartbeat_timeout=timedelta(seconds=30),
                retry_policy=AGENT_OP_RETRY,
                summary=f"stop agent {process.agent_name} ({reason[:60]})",
                **self._host_route(process),
            )
        except ActivityError as exc:
            if _host_gone(exc):
                core.note(
                    self._state,
                    workflow.now(),
                    "host_gone",
                    f"host {process.host!r} did not take the stop of {process.agent_name}: "
                    "its worker is gone",
                )
            workflow.logger.warning("stopping %s failed: %s", process.agent_name, exc.cause)

    async def _diagnose(self, input: DiagnosisInput) -> None:
        try:
            report = await workflow.execute_child_workflow(
                DIAGNOSIS_WORKFLOW,
                input,
                id=input.run_id,
                result_type=DiagnosisReport,
                static_summary=f"{input.trigger} diagnosis of ticket {input.ticket_id}",
            )
        except asyncio.CancelledError:
            if not self._finished:
                # Eviction from the worker cache or cancellation of the ticket itself: the
                # workflow event loop may be gone, so touch no workflow API on the way out.
                self._diagnoses.pop(input.run_id, None)
                raise
            diagnosis.diagnosis_failed(self._state, input.run_id, "ticket finished", workflow.now())
        except ChildWorkflowError as exc:
            diagnosis.diagnosis_failed(
                self._state, input.run_id, str(exc.cause or exc), workflow.now()
            )
        else:
            effects: list[core.Effect] = []
            diagnosis.diagnosis_finished(self._state, report, workflow.now(), effects)
            self._apply_effects(effects)  # on-demand agents to start
        self._diagnoses.pop(input.run_id, None)
        self._after_change()

    # ---- escalations reach people (DESIGN §14) ------------------------------------------

    def _start_notifiers(self) -> None:
        """One notifier per escalation with messages to send, at most MAX_NOTIFIERS at once
        (a ticket ending with many open escalations does not flood the server)."""
        if not self._state.escalations_v1 or self._draining:
            return
        for escalation in escalations.pending(self._state):
            if len(self._notifiers) >= MAX_NOTIFIERS:
                return
            if escalation.id in self._notifiers:
                continue
            task = asyncio.create_task(self._notify(escalation.id))
            self._notifiers[escalation.id] = task
            # Also when cancelled before it ever ran (continue-as-new right after it was
            # started): a finally inside the coroutine would never run then.
            task.add_done_callback(functools.partial(self._forget_notifier, escalation.id))

    def _forget_notifier(self, escalation_id: str, task: asyncio.Future[None] | None) -> None:
        if self._notifiers.get(escalation_id) is task:  # not a successor started since
            del self._notifiers[escalation_id]

    async def _notify(self, escalation_id: str) -> None:
        """Deliver an escalation's messages in order (a resolve never overtakes its trigger)."""
        while not self._draining:
            escalation = escalations.find(self._state, escalation_id)
            due = escalations.next_delivery(escalation)
            if due is None:
                break
            index, delivery = due
            policy = self._state.spec.policy.escalation
            request = NotifyRequest(
                ticket_id=self._state.ticket_id,
                ticket_title=self._state.spec.title,
                ticket_priority=self._state.spec.priority,
                event=delivery.event,
                escalation=escalations.view(self._state, escalation),
                sinks=list(policy.sinks),
                notify=policy.notify,
                retry_max_interval_s=policy.retry_max_interval_s,
                give_up_after_s=policy.give_up_after_s,
                queued_at=delivery.queued_at,
                done=escalations.settled_sinks(delivery),
            )
            request.escalation.deliveries = []  # the history needs no copy of them
            try:
                outcome = await workflow.execute_activity(
                    DELIVER_ESCALATION_ACTIVITY,
                    request,
                    result_type=NotifyOutcome,
                    start_to_close_timeout=NOTIFY_ATTEMPT_TIMEOUT,
                    heartbeat_timeout=NOTIFY_HEARTBEAT_TIMEOUT,
                    retry_policy=NOTIFY_RETRY,
                    # Continue-as-new cancels it and waits for what it did (its answer).
                    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    summary=f"notify: {delivery.event} {escalation.severity} {escalation.source}",
                )
            except ActivityError as exc:
                if isinstance(exc.cause, CancelledError):
                    break  # cancelled before it started: the next run sends it
                # Only a bug gets here (no attempt limit): say so on the escalation.
                outcome = NotifyOutcome(failed=[f"delivery: {exc.cause or exc}"])
            escalations.delivery_finished(
                self._state,
                escalation_id,
                index,
                workflow.now(),
                delivered=outcome.delivered,
                failed=outcome.failed,
                complete=outcome.complete,
            )
            self._after_change()
        # Done with this escalation: hand the slot to the next one waiting.
        self._forget_notifier(escalation_id, asyncio.current_task())
        self._start_notifiers()

    # ---- liveness leases (DESIGN §15) ---------------------------------------------------

    def _sync_leases(self) -> None:
        """Start a lease for every agent that offered one; end those that became moot."""
        if not self._state.fleet_v1:
            return
        for agent in health.leases_moot(self._state):
            self._cancel_lease(agent.id)
        if self._draining:
            return
        for agent in health.leases_wanted(self._state):
            if agent.id in self._leases or agent.lease_queue is None:
                continue  # the previous one is still ending
            health.lease_started(self._state, agent)
            task = asyncio.create_task(self._hold_lease(agent.id, agent.lease_queue))
            self._leases[agent.id] = task
            task.add_done_callback(functools.partial(self._forget_lease, agent.id))

    def _cancel_lease(self, agent_id: str) -> None:
        task = self._leases.get(agent_id)
        if task is not None and agent_id not in self._leases_cancelled:
            self._leases_cancelled.add(agent_id)
            task.cancel()

    def _forget_lease(self, agent_id: str, task: asyncio.Future[None] | None) -> None:
        if self._leases.get(agent_id) is task:
            del self._leases[agent_id]
            self._leases_cancelled.discard(agent_id)

    async def _hold_lease(self, agent_id: str, queue: str) -> None:
        """One lease: an activity the agent's own process runs and heartbeats while it lives.

        It ends when its heartbeats stop for one timeout (lapsed), when the agent's process
        ends it (released), when that process does not know the agent (refused) or when the
        ticket cancels it. Only the ends are in history: nothing per beat.
        """
        timeout = health.lease_timeout(self._state)
        end: health.LeaseEnd = "released"
        try:
            await workflow.execute_activity(
                HOLD_LEASE_ACTIVITY,
                args=[self._state.ticket_id, agent_id],
                task_queue=queue,
                schedule_to_start_timeout=timeout,
                heartbeat_timeout=timeout,
                start_to_close_timeout=LEASE_TERM,
                retry_policy=LEASE_RETRY,
                cancellation_type=ActivityCancellationType.TRY_CANCEL,
                summary=f"lease {agent_id}",
            )
        except ActivityError as exc:
            cause = exc.cause
            if isinstance(cause, CancelledError):
                end = "cancelled"
            elif isinstance(cause, ActivityTimeout):
                # The lease's term ran out while the agent lives: as if it had released it.
                end = "released" if cause.type == TimeoutType.START_TO_CLOSE else "lapsed"
            else:
                end = "refused"
        health.lease_ended(self._state, agent_id, end, workflow.now())
        self._forget_lease(agent_id, asyncio.current_task())
        self._after_change()

    def _after_change(self, *, publish_now: bool = False) -> None:
        """After every state change: ledger, stuck bookkeeping, the Web UI."""
        diagnosis.note_activity(self._state)
        diagnosis.settle_runs(self._state, workflow.now())  # healing v2: verified outcomes
        self._flush_ledger()
        self._start_notifiers()
        self._sync_leases()
        if self._coalesce_publish is None:
            self._coalesce_publish = workflow.patched(PUBLISH_ONCE_PER_ACTIVATION)
        if not self._coalesce_publish:
            self._publish()
        elif publish_now:
            self._publish_due = False
            self._publish(hold_back=False)
        else:
            self._publish_due = True
            if self._publisher is None:
                self._publisher = asyncio.create_task(self._publish_when_settled())

    async def _publish_when_settled(self) -> None:
        # A condition is checked only once nothing else in the activation is ready to run:
        # the many updates a busy ticket takes in one workflow task cost one upsert (one
        # history event and one visibility write on the server) instead of one each.
        while True:
            await workflow.wait_condition(lambda: self._publish_due)
            self._publish_due = False
            self._publish()

    def _publish(self, *, hold_back: bool = True) -> None:
        """Keep the Web UI current: search attributes when they change, the dashboard."""
        state = self._state
        wanted: dict[str, Any] = {
            "TicketStatus": diagnosis.display_status(state),
            "Phase": core.current_phase(state) or "",
            "OpenTasks": core.open_tasks(state),
            "StuckSince": state.stuck_since,
            "Diagnoses": len(state.diagnoses),
            "Restarts": state.restarts_total,
        }
        if state.behaviour_v1:
            wanted["AnomalyScore"] = views.published_anomaly(state)
        if state.escalations_v1:
            wanted["EscalationSeverity"] = escalations.open_severity(state)
        published = self._search_attributes
        if not self._coalesce_publish:  # the shape of runs started before the patch
            changed = list(wanted) if wanted != published else []
        else:
            changed = [k for k, v in wanted.items() if published.get(k, ...) != v]
            now = workflow.now()
            if (
                hold_back
                and changed == ["OpenTasks"]
                and self._published_at is not None
                and now < self._published_at + OPEN_TASKS_REFRESH
            ):
                self._held_back = True
                changed = []
            elif changed:
                self._published_at = now
        if changed:
            self._search_attributes = {**published, **{k: wanted[k] for k in changed}}
            workflow.upsert_search_attributes([_search_attribute(k, wanted[k]) for k in changed])
        if self._search_attributes == wanted:
            self._held_back = False
        # Current details are metadata, not history events: cheap to keep fresh.
        self._metrics.observe(state)
        self._dashboard = render_dashboard(state, now=workflow.now())
        workflow.set_current_details(self._dashboard)

    # ---- updates (refusable) -------------------------------------------------------------

    def _fair_claims(self) -> bool:
        # Which agent a claim serves changes the replies and so the history that follows:
        # tickets started before fair claims keep first come, first served when replayed.
        return workflow.patched(FAIR_CLAIMS)

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
        self._updates_this_run += 1
        # An accepted message is a sign of life of the agent that sent it.
        health.seen(self._state, getattr(msg, "agent_id", None), workflow.now())
        return self._perform(step)

    @workflow.update(name="register")
    async def register(self, raw: RawValue) -> Registration:
        msg = _decode(RegisterAgent, raw)
        token = workflow.uuid4().hex + workflow.uuid4().hex
        return self._apply(core.register, msg, token=token)

    @register.validator
    def _validate_register(self, raw: RawValue) -> None:
        msg = _decode(RegisterAgent, raw, measure=True)
        self._check(core.register, msg, token="")

    @workflow.update(name="claim")
    async def claim(self, raw: RawValue) -> ClaimReply:
        msg = _decode(ClaimTask, raw)
        return self._apply(core.claim, msg, fair=self._fair_claims())

    @claim.validator
    def _validate_claim(self, raw: RawValue) -> None:
        msg = _decode(ClaimTask, raw, measure=True)
        self._check(core.claim, msg)

    @workflow.update(name="complete")
    async def complete(self, raw: RawValue) -> CompleteReply:
        msg = _decode(CompleteTask, raw)
        return self._apply(core.complete, msg, fair=self._fair_claims())

    @complete.validator
    def _validate_complete(self, raw: RawValue) -> None:
        msg = _decode(CompleteTask, raw, measure=True)
        self._check(core.complete, msg)

    @workflow.update(name="fail")
    async def fail(self, raw: RawValue) -> TaskView:
        msg = _decode(FailTask, raw)
        return self._apply(core.fail, msg)

    @fail.validator
    def _validate_fail(self, raw: RawValue) -> None:
        msg = _decode(FailTask, raw, measure=True)
        self._check(core.fail, msg)

    @workflow.update(name="create_task")
    async def create_task(self, raw: RawValue) -> TaskView:
        msg = _decode(CreateTask, raw)
        return self._apply(core.create_task, msg)

    @create_task.validator
    def _validate_create_task(self, raw: RawValue) -> None:
        msg = _decode(CreateTask, raw, measure=True)
        self._check(core.create_task, msg)

    @workflow.update(name="submit_result")
    async def submit_result(self, raw: RawValue) -> SubmitReply:
        msg = _decode(SubmitResult, raw)
        file: ResultFile | None = None
        if msg.file_ref is not None:
            policy = self._state.spec.policy.results
            try:
                file = await workflow.execute_activity(
                    READ_RESULT_FILE_ACTIVITY,
                    ReadResultFile(
                        file_ref=msg.file_ref,
                        files_root=policy.files_root,
                        # What the activity returns travels as a payload: at most what
                        # the ticket carries of a result, as JSON.
                        max_bytes=min(policy.max_file_bytes, policy.max_content_bytes),
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
        reply = self._apply(core.submit_result, msg, file=file)
        checks = core.result_checks(self._state)
        if checks:
            self._agent_op(self._check_result(reply.version, checks))
        return reply

    async def _check_result(self, version: int, checks: list[AutomatedCheck]) -> None:
        """Run the result criteria's automated checks on a new version (verdict or evidence)."""
        try:
            report = await workflow.execute_activity(
                RUN_CHECKS_ACTIVITY,
                RunChecks(checks=checks, base_dir=self._state.spec.policy.results.files_root),
                result_type=ChecksReport,
                start_to_close_timeout=timedelta(
                    seconds=sum(getattr(c, "timeout_s", 10.0) for c in checks) + 60
                ),
                heartbeat_timeout=timedelta(seconds=20),
                retry_policy=AGENT_OP_RETRY,
                summary=f"check result v{version} ({len(checks)} automated check(s))",
            )
        except ActivityError as exc:
            core.note(
                self._state,
                workflow.now(),
                "result_checks_failed",
                f"automated checks of v{version} could not run: {exc.cause or exc}",
            )
        else:
            self._apply_effects(core.result_checked(self._state, version, report, workflow.now()))
        self._after_change()

    @submit_result.validator
    def _validate_submit_result(self, raw: RawValue) -> None:
        msg = _decode(SubmitResult, raw, measure=True)
        self._check(core.submit_result, msg)

    @workflow.update(name="review_result")
    async def review_result(self, raw: RawValue) -> ReviewReply:
        msg = _decode(ReviewResult, raw)
        return self._apply(core.review_result, msg)

    @review_result.validator
    def _validate_review_result(self, raw: RawValue) -> None:
        msg = _decode(ReviewResult, raw, measure=True)
        self._check(core.review_result, msg)

    @workflow.update(name="review_task")
    async def review_task(self, raw: RawValue) -> TaskView:
        msg = _decode(ReviewTask, raw)
        return self._apply(core.review_task, msg)

    @review_task.validator
    def _validate_review_task(self, raw: RawValue) -> None:
        msg = _decode(ReviewTask, raw, measure=True)
        self._check(core.review_task, msg)

    @workflow.update(name="release")
    async def release(self, raw: RawValue) -> ReleaseReply:
        msg = _decode(ReleaseAgent, raw)
        return self._apply(health.release, msg)

    @release.validator
    def _validate_release(self, raw: RawValue) -> None:
        msg = _decode(ReleaseAgent, raw, measure=True)
        self._check(health.release, msg)

    @workflow.update(name="leave")
    async def leave(self, raw: RawValue) -> LeaveReply:
        msg = _decode(LeaveTicket, raw)
        return self._apply(core.leave, msg)

    @leave.validator
    def _validate_leave(self, raw: RawValue) -> None:
        msg = _decode(LeaveTicket, raw, measure=True)
        self._check(core.leave, msg)

    @workflow.update(name="ask_human")
    async def ask_human(self, raw: RawValue) -> AskReply:
        msg = _decode(AskHuman, raw)
        return self._apply(people.ask, msg)

    @ask_human.validator
    def _validate_ask_human(self, raw: RawValue) -> None:
        msg = _decode(AskHuman, raw, measure=True)
        self._check(people.ask, msg)

    @workflow.update(name="ack")
    async def ack(self, raw: RawValue) -> EscalationView:
        msg = _decode(AcknowledgeEscalation, raw)
        return self._apply(people.acknowledge, msg)

    @ack.validator
    def _validate_ack(self, raw: RawValue) -> None:
        msg = _decode(AcknowledgeEscalation, raw, measure=True)
        self._check(people.acknowledge, msg)

    @workflow.update(name="resolve")
    async def resolve(self, raw: RawValue) -> EscalationView:
        msg = _decode(ResolveEscalation, raw)
        return self._apply(people.resolve, msg)

    @resolve.validator
    def _validate_resolve(self, raw: RawValue) -> None:
        msg = _decode(ResolveEscalation, raw, measure=True)
        self._check(people.resolve, msg)

    @workflow.update(name="cancel")
    async def cancel(self, raw: RawValue) -> StatusView:
        msg = _decode(CancelTicket, raw)
        self._apply(core.cancel, msg)
        return views.status_view(self._state)

    @cancel.validator
    def _validate_cancel(self, raw: RawValue) -> None:
        msg = _decode(CancelTicket, raw, measure=True)
        self._check(core.cancel, msg)

    @workflow.update(name="diagnose")
    async def diagnose(self, raw: RawValue) -> DiagnoseReply:
        msg = _decode(DiagnoseTicket, raw)
        return self._apply(diagnosis.manual, msg)

    @diagnose.validator
    def _validate_diagnose(self, raw: RawValue) -> None:
        msg = _decode(DiagnoseTicket, raw, measure=True)
        self._check(diagnosis.manual, msg)

    # ---- signals (facts, never refused) --------------------------------------------------

    # A JSON null decodes to None rather than failing to decode: without these guards the
    # handler would raise, fail the workflow task on every retry and wedge the ticket.

    @workflow.signal(name="heartbeat")
    def heartbeat(self, msg: Heartbeat) -> None:
        if not isinstance(msg, Heartbeat):
            core.ignore(self._state)
            return
        core.heartbeat(self._state, msg, workflow.now())
        if msg.lease_queue is not None:
            self._sync_leases()  # the agent offers a lease: it may get one now

    @workflow.signal(name="progress")
    def progress(self, msg: ReportProgress) -> None:
        if not isinstance(msg, ReportProgress):
            core.ignore(self._state)
            return
        core.progress(self._state, msg, workflow.now())

    # ---- queries -------------------------------------------------------------------------

    @workflow.query(name="status")
    def status(self) -> StatusView:
        return views.status_view(self._state, workflow.now())

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

    @workflow.query(name="diagnoses")
    def diagnoses(self) -> list[DiagnosisView]:
        return [diagnosis.diagnosis_view(d) for d in self._state.diagnoses]

    @workflow.query(name="timeline")
    def timeline(self) -> list[TimelineEntry]:
        return views.timeline_view(self._state)

    @workflow.query(name="inbox")
    def inbox(self, raw: RawValue) -> AgentInbox:
        """An agent's inbox, read with its credentials ``{agent_id, token}``.

        A bare agent id is answered only by tickets started before enrollment (no join
        secrets), as it was; an enrolled ticket keeps each agent's inbox to that agent.
        Decoded here, like updates: a malformed argument is refused naming the field, and
        the refusal never echoes what was sent (a token).
        """
        who: Authenticated | str
        if raw.payload.data.lstrip()[:1] == b'"':
            who = _decode(_AgentId, raw).root
        else:
            who = _decode(Authenticated, raw)
        if isinstance(who, str):
            if self._state.join_sha256 is not None:
                raise ApplicationError(
                    "token: an agent's inbox is read with its credentials "
                    '{"agent_id": ..., "token": ...}, not by its id alone',
                    type="Refused",
                )
            return core.inbox(self._state, who)
        try:
            agent = core.authenticate(self._state, who)
        except core.Refused as exc:
            raise _refusal(exc) from None
        return core.inbox(self._state, agent.id)

    @workflow.query(name="escalations")
    def escalation_views(self) -> list[EscalationView]:
        return escalations.views(self._state)

    @workflow.query(name="spec")
    def spec(self) -> TicketSpec:
        return self._state.spec

    @workflow.query(name="dashboard")
    def dashboard(self) -> str:
        return self._dashboard or render_dashboard(self._state)

    @workflow.query(name="state")
    def state(self, operator_token: str | None = None) -> TicketState:
        """The whole state, for operators, tests and debugging (core.views.readable_state).

        Hashes of tokens and join secrets never leave the workflow; the agents' private
        channel (feedback, interrupts, the reply cache) is shown only with the operator token.
        """
        operator = operator_token is not None
        if operator:
            try:
                core.check_operator(self._state, operator_token or "")
            except core.Refused as exc:
                raise _refusal(exc) from None
        return views.readable_state(self._state, operator=operator)
