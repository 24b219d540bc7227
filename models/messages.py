"""Messages agents and operators send to a ticket, and the replies they get.

Each message is one plain-JSON object, so the ``temporal`` CLI or an SDK in any language can
act as an agent. ``schema`` exports their JSON Schema.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import to_json

from models.runtime import LEASE_QUEUE_PATTERN
from models.spec import AgentKind, Priority, ResultType, Slug, TaskType

AgentStatus = Literal["idle", "running"]

#: Hard caps on free text the workflow keeps, so no message can bloat history or state.
MAX_NOTE = 4_000
MAX_REASON = 4_000
MAX_FEEDBACK = 20_000
MAX_REQUEST_ID = 128
#: The largest message, encoded as JSON, an agent may send. Temporal refuses payloads over
#: 2 MB, and an update it cannot answer (the refusal echoes the request) fails the ticket's
#: workflow task until the update times out: every agent of the ticket waits ~20 s. Field
#: caps count characters or UTF-8 bytes, and JSON escapes can multiply those (a control
#: character travels as 6 bytes), so the encoded size is checked before sending.
MAX_MESSAGE_BYTES = 1_500_000


def encoded_size(text: str) -> int:
    """Bytes ``text`` takes as a JSON string (quotes aside): what it costs in a payload.

    Limits on free text count this, not characters or UTF-8 bytes: a control character is
    1 byte of UTF-8 and 6 as JSON (``\\u0001``), and every copy the ticket derives (history,
    ledger rows, activity inputs) pays the escaped size.
    """
    return len(to_json(text)) - 2


def oversized(msg: BaseModel, size: int | None = None) -> tuple[str, str] | None:
    """``(field, rule)`` when ``msg`` as JSON exceeds :data:`MAX_MESSAGE_BYTES`, else None.

    ``size``: its size as it was sent, when known (a client may escape more than pydantic
    does); else as pydantic encodes it. The field named is the one that takes the most bytes.
    """
    if size is None:
        size = len(msg.model_dump_json().encode("utf-8"))
    if size <= MAX_MESSAGE_BYTES:
        return None
    fields = {
        name: len(msg.model_dump_json(include={name}).encode("utf-8"))
        for name in type(msg).model_fields
    }
    field = max(fields, key=fields.__getitem__) if fields else "message"
    return field, (
        f"the message is {size:,} bytes as JSON ({field}: {fields.get(field, size):,}); "
        f"the limit is {MAX_MESSAGE_BYTES:,}"
    )


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must say something (it is only whitespace)")
    return value


class Message(BaseModel):
    """Base of every inbound message: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class Authenticated(Message):
    """A message from a registered agent: its id and the token issued at registration."""

    agent_id: str = Field(min_length=1, max_length=100)
    token: str = Field(min_length=1, max_length=200, repr=False)
    request_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REQUEST_ID,
        description="idempotency key: a retried request with the same id gets the same reply",
    )


# ---- updates -----------------------------------------------------------------------------


class RegisterAgent(Message):
    name: Slug
    kind: AgentKind = "worker"
    capabilities: list[str] = Field(default_factory=list, max_length=50)
    join_secret: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        repr=False,
        description="the join secret issued for this ticket and this agent kind "
        "(`starter.py join-secret`); required by tickets launched with enrollment",
    )
    request_id: str | None = Field(default=None, min_length=1, max_length=MAX_REQUEST_ID)


class Registration(BaseModel):
    agent_id: str
    token: str = Field(description="secret for every later message; shown once")
    ticket_id: str
    heartbeat_interval_s: float


class ClaimTask(Authenticated):
    phases: list[Slug] | None = Field(default=None, description="only claim tasks of these phases")


class TaskView(BaseModel):
    """A task as agents and operators see it."""

    id: str
    key: str | None = None
    phase: str
    title: str
    description: str
    type: str
    priority: str
    status: str
    depends_on: list[str]
    assigned_agent: str | None
    attempt: int
    failures: int
    validation: bool
    created_by: str
    result_preview: str | None = None
    result_type: str | None = None
    failure_reason: str | None = None
    diagnosis_run_id: str | None = Field(
        default=None, description="set on recovery tasks: the diagnosis that created it"
    )
    iteration: int = Field(default=0, description="review iterations so far")
    reviewer: str | None = None
    last_feedback: str | None = Field(default=None, description="the latest failed review's")
    result_content: str | None = Field(
        default=None, description="the full result, given to the validator that claims it"
    )
    updated_at: str


class AgentInbox(BaseModel):
    """What the ticket has to tell an agent: returned with replies and by query."""

    stop: bool = False
    stop_reason: str | None = None
    feedback: list[str] = Field(default_factory=list)
    restart: bool = Field(
        default=False, description="external agents: restart yourself and register again"
    )
    interrupted: list[str] = Field(
        default_factory=list,
        description="tasks a diagnosis took from this agent: stop work on them (feedback: why)",
    )
    answers: list[HumanAnswer] = Field(
        default_factory=list, description="a person's answers to its ask_human questions"
    )


class HumanAnswer(BaseModel):
    question_id: str
    question: str
    answer: str
    answered_by: str
    answered_at: str


class ClaimReply(BaseModel):
    task: TaskView | None
    reason: str = Field(description="why no task was given, when task is None")
    inbox: AgentInbox
    result_version: int | None = Field(
        default=None, description="validators: a final-result version awaiting a verdict"
    )


class ReportProgress(Authenticated):
    task_id: str = Field(min_length=1, max_length=50)
    note: str = Field(min_length=1, max_length=MAX_NOTE)


class Heartbeat(Authenticated):
    seq: int = Field(ge=0)
    status: AgentStatus = "idle"
    current_task_id: str | None = Field(default=None, max_length=50)
    lease_queue: str | None = Field(
        default=None,
        pattern=LEASE_QUEUE_PATTERN,
        description="the task queue of this agent's lease host (agent_client.lease): the "
        "ticket then carries the agent's liveness on an activity's heartbeat timeout instead "
        "of one signal per beat (DESIGN §15)",
    )


class CompleteTask(Authenticated):
    task_id: str = Field(min_length=1, max_length=50)
    result: str = Field(min_length=1, description="markdown, at most 100 KB (policy)")
    result_type: ResultType
    claim_next: bool = Field(default=False, description="claim the next task in the same call")


class CompleteReply(BaseModel):
    task: TaskView
    next: ClaimReply | None = None


class FailTask(Authenticated):
    task_id: str = Field(min_length=1, max_length=50)
    reason: str = Field(min_length=1, max_length=MAX_REASON)


class CreateTask(Authenticated):
    phase: Slug
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=20_000)
    type: TaskType = "implementation"
    depends_on: list[str] = Field(default_factory=list, max_length=50)
    priority: Priority = "normal"
    validation: bool = False


class SubmitResult(Authenticated):
    """The ticket's final result: markdown content or a reference to a ``.md`` file."""

    content: str | None = None
    file_ref: str | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _one_of(self) -> SubmitResult:
        if (self.content is None) == (self.file_ref is None):
            raise ValueError("give exactly one of content or file_ref")
        return self


class ResultFile(BaseModel):
    """What the worker found at a result's file reference (read by an activity)."""

    path: str
    size_bytes: int
    sha256: str
    content: str


class ReviewResult(Authenticated):
    """A validator's verdict on one result version."""

    version: int = Field(ge=1)
    passed: bool
    feedback: str = Field(default="", max_length=MAX_FEEDBACK)
    evidence: list[str] = Field(default_factory=list, max_length=50)

    @model_validator(mode="after")
    def _feedback_on_fail(self) -> ReviewResult:
        if not self.passed and not self.feedback.strip():
            raise ValueError("feedback is required when passed is false")
        return self


class ReviewTask(Authenticated):
    """A validator's verdict on one iteration of a task's result."""

    task_id: str = Field(min_length=1, max_length=50)
    iteration: int = Field(ge=1)
    passed: bool
    feedback: str = Field(default="", max_length=MAX_FEEDBACK)
    evidence: list[str] = Field(default_factory=list, max_length=50)

    @model_validator(mode="after")
    def _feedback_on_fail(self) -> ReviewTask:
        if not self.passed and not self.feedback.strip():
            raise ValueError("feedback is required when passed is false")
        return self


class ResultVersionView(BaseModel):
    version: int
    agent_id: str
    source: Literal["content", "file"]
    file_ref: str | None
    sha256: str
    size_bytes: int
    preview: str
    submitted_at: str
    status: Literal["pending_validation", "validated", "rejected"]
    criteria: list[str]
    validator_id: str | None = None
    feedback: str | None = None
    evidence: list[str] = Field(default_factory=list)
    verdict_at: str | None = None
    checks: list[str] = Field(default_factory=list, description="automated check summaries")


class SubmitReply(BaseModel):
    version: int
    status: str


class ReviewReply(BaseModel):
    version: int
    status: str
    ticket_status: str


class LeaveTicket(Authenticated):
    """An agent leaves the ticket for good: its held tasks go back to the queue (no retry
    used), its reviews to other validators; it is not restarted, escalated or waited for."""

    reason: str = Field(default="done", min_length=1, max_length=MAX_REASON)


class LeaveReply(BaseModel):
    agent_id: str
    released: list[str] = Field(description="the tasks it held, back in the queue")


class AskHuman(Authenticated):
    """An agent asks a person. The answer arrives in its inbox (``answers``); while the
    question is open the ticket waits for it instead of counting as stuck."""

    question: str = Field(min_length=1, max_length=MAX_NOTE)
    task_id: str | None = Field(default=None, min_length=1, max_length=50)

    @field_validator("question")
    @classmethod
    def _question_said(cls, value: str) -> str:
        return _not_blank(value)


class AskReply(BaseModel):
    question_id: str = Field(description="the escalation id: the answer names it")
    severity: str


class AcknowledgeEscalation(Message):
    """Operator: a person has the escalation (its pages stop; the ticket still waits)."""

    escalation_id: str = Field(min_length=1, max_length=300)
    operator: str = Field(default="operator", min_length=1, max_length=100)
    operator_token: str = Field(min_length=1, max_length=200, repr=False)


class ResolveEscalation(Message):
    """Operator: the escalation is dealt with. The note reaches the agents (a question's
    asker gets it as the answer), and diagnosing resumes with a fresh budget."""

    escalation_id: str = Field(min_length=1, max_length=300)
    note: str = Field(min_length=1, max_length=MAX_NOTE)
    as_task: bool = Field(
        default=False, description="also queue the note as a high-priority task for the workers"
    )

    @field_validator("note")
    @classmethod
    def _note_said(cls, value: str) -> str:
        return _not_blank(value)

    operator: str = Field(default="operator", min_length=1, max_length=100)
    operator_token: str = Field(min_length=1, max_length=200, repr=False)


class DeliveryView(BaseModel):
    event: str = Field(description="trigger, acknowledge or resolve")
    status: str = Field(description="pending, delivered or failed")
    delivered: list[str] = Field(default_factory=list, description="sinks that took it")
    failed: list[str] = Field(default_factory=list, description="sink: why (not retried)")
    queued_at: str
    finished_at: str | None = None


class EscalationView(BaseModel):
    id: str
    ticket_id: str
    severity: str
    source: str
    status: str = Field(description="open, acknowledged or resolved")
    reason: str
    created_at: str
    agent_id: str | None = None
    task_id: str | None = None
    diagnosis_run_id: str | None = None
    question: str | None = None
    acknowledged_by: str | None = None
    acknowledged_at: str | None = None
    resolved_by: str | None = None
    resolved_at: str | None = None
    note: str | None = None
    deliveries: list[DeliveryView] = Field(default_factory=list)


class CancelTicket(Message):
    """Operator: stop the ticket now."""

    reason: str = Field(min_length=1, max_length=MAX_REASON)
    operator: str = Field(default="operator", min_length=1, max_length=100)
    operator_token: str = Field(min_length=1, max_length=200, repr=False)


class DiagnoseTicket(Message):
    """Operator: diagnose the ticket now (skips the cooldown and the stuck window)."""

    reason: str = Field(default="requested by an operator", min_length=1, max_length=MAX_REASON)
    operator: str = Field(default="operator", min_length=1, max_length=100)
    operator_token: str = Field(min_length=1, max_length=200, repr=False)


class ReleaseAgent(Message):
    """Operator: let a quarantined agent back in (it must heartbeat soon after)."""

    agent_id: str = Field(min_length=1, max_length=100)
    operator: str = Field(default="operator", min_length=1, max_length=100)
    operator_token: str = Field(min_length=1, max_length=200, repr=False)


class ReleaseReply(BaseModel):
    agent_id: str
    heartbeat_within_s: float


class DiagnoseReply(BaseModel):
    run_id: str
    trigger: str


class DiagnosisView(BaseModel):
    run_id: str
    number: int
    trigger: str
    reason: str
    status: str
    outcome: str | None
    started_at: str
    finished_at: str | None
    idle_seconds: float
    counts_at_trigger: dict[str, int]
    task_ids: list[str]
    generator: str | None
    hypotheses: list[dict[str, object]]
    evidence_summary: str
    error: str | None


class Ack(BaseModel):
    ok: bool = True
    message: str = ""


# ---- query replies ---------------------------------------------------------------------


class AgentView(BaseModel):
    id: str
    name: str
    kind: str
    state: str
    registered_at: str
    last_heartbeat_at: str | None
    last_seq: int | None
    tasks: list[str]
    heartbeats: int
    seq_gaps: int
    out_of_order: int


class TimelineEntry(BaseModel):
    at: str
    kind: str
    message: str
    agent_id: str | None = None
    task_id: str | None = None


class AnomalyView(BaseModel):
    """An agent's composite anomaly score (DESIGN §12), explained by its signals."""

    agent_id: str
    score: float = Field(ge=0, le=1)
    anomalous: bool = Field(description="at or above policy.anomaly.threshold")
    signature: str | None = Field(
        default=None, description="agent_looping, agent_stalled, task_storm, low_quality_results"
    )
    signals: list[str] = Field(default_factory=list, description="name value x weight: detail")


class StatusView(BaseModel):
    ticket_id: str
    title: str
    status: str
    ticket_status: str = Field(
        default="",
        description=(
            "what people filter on (search attribute TicketStatus): open, stuck, diagnosing, "
            "escalated, completed, cancelled"
        ),
    )
    phase: str | None
    counts_by_status: dict[str, int]
    counts_by_phase: dict[str, dict[str, int]]
    open_tasks: int
    agents: int
    results: int
    validated_version: int | None
    last_activity_at: str
    created_at: str
    finished_at: str | None
    outcome: str | None
    ignored_messages: int
    anomalies: list[AnomalyView] = Field(
        default_factory=list, description="agents with a non-zero anomaly score, highest first"
    )


#: Every inbound message type, by the update/signal name it travels under.
INBOUND: dict[str, type[Message]] = {
    "register": RegisterAgent,
    "claim": ClaimTask,
    "complete": CompleteTask,
    "fail": FailTask,
    "create_task": CreateTask,
    "submit_result": SubmitResult,
    "review_result": ReviewResult,
    "review_task": ReviewTask,
    "cancel": CancelTicket,
    "diagnose": DiagnoseTicket,
    "release": ReleaseAgent,
    "leave": LeaveTicket,
    "ask_human": AskHuman,
    "ack": AcknowledgeEscalation,
    "resolve": ResolveEscalation,
    "heartbeat": Heartbeat,
    "progress": ReportProgress,
}

#: Replies and query results, by name.
OUTBOUND: dict[str, type[BaseModel]] = {
    "Registration": Registration,
    "ClaimReply": ClaimReply,
    "CompleteReply": CompleteReply,
    "TaskView": TaskView,
    "SubmitReply": SubmitReply,
    "ReviewReply": ReviewReply,
    "AgentView": AgentView,
    "TimelineEntry": TimelineEntry,
    "StatusView": StatusView,
    "ResultVersionView": ResultVersionView,
    "AgentInbox": AgentInbox,
    "Ack": Ack,
    "DiagnoseReply": DiagnoseReply,
    "ReleaseReply": ReleaseReply,
    "LeaveReply": LeaveReply,
    "AskReply": AskReply,
    "EscalationView": EscalationView,
    "HumanAnswer": HumanAnswer,
    "DiagnosisView": DiagnosisView,
}
