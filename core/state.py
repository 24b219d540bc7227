"""The ticket's state: plain pydantic models, carried whole through continue-as-new."""

from __future__ import annotations

import bisect
import functools
import re
from collections import Counter
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr

from models.diagnosis import Hypothesis
from models.ledger import LedgerBatch
from models.runtime import AgentProcess
from models.spec import PRIORITY_RANK, AgentSpec, TicketSpec

TaskStatus = Literal[
    "pending",
    "assigned",
    "running",
    "under_review",
    "validation_in_progress",
    "needs_work",
    "done",
    "failed",
    "cancelled",
]
ACTIVE_STATUSES: frozenset[str] = frozenset(
    {"pending", "assigned", "running", "under_review", "validation_in_progress", "needs_work"}
)
HELD_STATUSES: frozenset[str] = frozenset({"assigned", "running", "needs_work"})
#: Somebody works on the task (or judges it).
WORKED_STATUSES: frozenset[str] = frozenset(
    {"assigned", "running", "under_review", "validation_in_progress", "needs_work"}
)
FINAL_STATUSES: frozenset[str] = frozenset({"done", "failed", "cancelled"})

AgentState = Literal[
    "spawning",
    "idle",
    "running",
    "degraded",
    "unresponsive",
    "restarting",
    "quarantined",
    "terminated",
]
TicketStatus = Literal["open", "completed", "cancelled"]

#: How much of each list the state keeps; older entries live in the ledger and history.
TIMELINE_LIMIT = 500
NOTES_LIMIT = 20
FEEDBACK_LIMIT = 20
REPLY_CACHE_LIMIT = 500
PREVIEW_CHARS = 500


class TaskReview(BaseModel):
    """A validator's verdict on one iteration of a task's result."""

    iteration: int
    validator_id: str
    passed: bool
    feedback: str = ""
    evidence: list[str] = Field(default_factory=list)
    at: datetime


#: Task fields the ticket's index (TaskIndex) follows.
INDEXED_FIELDS: frozenset[str] = frozenset(
    {
        "status",
        "phase",
        "priority",
        "assigned_agent",
        "review_requested_at",
        "depends_on",
        "iteration",
    }
)
#: A task in one of these can never be done: the tasks that wait on it are blocked.
DEAD_STATUSES: frozenset[str] = frozenset({"failed", "cancelled"})

REVIEW_STATUSES: frozenset[str] = frozenset({"under_review", "validation_in_progress"})


@functools.lru_cache(maxsize=4096)
def title_key(title: str) -> str:
    """A task title as compared for duplicates: case, punctuation and spacing aside."""
    return " ".join(re.sub(r"[^\w\s]", " ", title.lower()).split())


class TaskIndex:
    """What the hot path asks of the tasks, kept current as tasks change (not serialised).

    Every message used to count the tasks by status, find the current phase, the tasks
    under review and each agent's held tasks with a pass over all of them: O(tasks) per
    message. The index answers those from counters and small sets; each task reports a
    change of an indexed field to it (Task.__setattr__). Derived from the tasks alone, so it
    is rebuilt identically on replay and after continue-as-new.
    """

    def __init__(
        self,
        tasks: dict[str, Task],
        phase_order: dict[str, int] | None = None,
        *,
        attach: bool = True,
    ) -> None:
        self.phase_order = phase_order or {}
        #: pending tasks as (claim key, id), sorted: a claim walks them in claim order
        self.pending: list[tuple[tuple[int, int, int], str]] = []
        self.by_status: Counter[str] = Counter()
        self.by_phase_status: Counter[tuple[str, str]] = Counter()
        self.held: dict[str, set[str]] = {}
        self.reviewing: set[str] = set()
        #: failed or cancelled tasks, where a walk for blocked tasks starts
        self.dead: set[str] = set()
        #: task id -> the tasks that depend on it (its id in their depends_on)
        self.dependants: dict[str, set[str]] = {}
        #: (phase, title_key) -> the active tasks of that title (one per title and phase)
        self.active_titles: dict[tuple[str, str], set[str]] = {}
        #: the tasks' iterations summed: results sent to review (a metric, per message)
        self.iterations = 0
        self.size = 0
        for task in tasks.values():
            self.add(task, attach=attach)

    def add(self, task: Task, *, attach: bool = True) -> None:
        if attach:
            task._index = self
        self.size += 1
        self._count(task, +1)

    def held_or_reviewing(self, agent_id: str) -> set[str]:
        """The tasks ``agent_id`` holds, and every task under review (to find its reviews)."""
        return self.held.get(agent_id, set()) | self.reviewing

    def phase_counts(self, phase: str) -> tuple[int, int]:
        """(unfinished, all) tasks of ``phase``."""
        counts = [(status, n) for (p, status), n in self.by_phase_status.items() if p == phase]
        return sum(n for st, n in counts if st not in FINAL_STATUSES), sum(n for _, n in counts)

    def claim_key(self, task: Task) -> tuple[int, int, int]:
        """Claim order: higher priority first, then the earlier phase, then the older task."""
        return (-PRIORITY_RANK.get(task.priority, 0), self.phase_order.get(task.phase, 0), task.seq)

    def snapshot(self) -> tuple[object, ...]:
        """Everything it holds, comparable (tests: the index against a fresh count)."""
        return (
            +self.by_status,
            +self.by_phase_status,
            {agent: sorted(ids) for agent, ids in self.held.items()},
            sorted(self.reviewing),
            [task_id for _, task_id in self.pending],
            self.size,
            sorted(self.dead),
            {dep: sorted(ids) for dep, ids in self.dependants.items()},
            self.iterations,
            {key: sorted(ids) for key, ids in self.active_titles.items()},
        )

    def _count(self, task: Task, sign: int) -> None:
        self.iterations += sign * task.iteration
        self.by_status[task.status] += sign
        self.by_phase_status[task.phase, task.status] += sign
        if task.assigned_agent is not None and task.status in HELD_STATUSES:
            held = self.held.setdefault(task.assigned_agent, set())
            if sign > 0:
                held.add(task.id)
            else:
                held.discard(task.id)
                if not held:
                    del self.held[task.assigned_agent]
        if task.status == "pending":
            entry = (self.claim_key(task), task.id)
            if sign > 0:
                bisect.insort(self.pending, entry)
            else:
                at = bisect.bisect_left(self.pending, entry)
                if at < len(self.pending) and self.pending[at] == entry:
                    del self.pending[at]
        if task.review_requested_at is not None and task.status in REVIEW_STATUSES:
            if sign > 0:
                self.reviewing.add(task.id)
            else:
                self.reviewing.discard(task.id)
        if task.status in ACTIVE_STATUSES:
            key = (task.phase, title_key(task.title))
            titled = self.active_titles.setdefault(key, set())
            if sign > 0:
                titled.add(task.id)
            else:
                titled.discard(task.id)
                if not titled:
                    del self.active_titles[key]
        if task.status in DEAD_STATUSES:
            if sign > 0:
                self.dead.add(task.id)
            else:
                self.dead.discard(task.id)
        for dep in task.depends_on:
            waiting = self.dependants.setdefault(dep, set())
            if sign > 0:
                waiting.add(task.id)
            else:
                waiting.discard(task.id)
                if not waiting:
                    del self.dependants[dep]


class Task(BaseModel):
    id: str
    key: str | None = None
    phase: str
    title: str
    description: str = ""
    type: str = "implementation"
    priority: str = "normal"
    depends_on: list[str] = Field(default_factory=list)
    validation: bool = False
    status: TaskStatus = "pending"
    assigned_agent: str | None = None
    attempt: int = 0
    failures: int = 0
    created_by: str = "spec"
    created_at: datetime
    updated_at: datetime
    seq: int = Field(description="creation order, the tie-breaker in claiming")
    result_preview: str | None = None
    result_type: str | None = None
    result_sha256: str | None = None
    failure_reason: str | None = None
    notes: list[str] = Field(default_factory=list)
    diagnosis_run_id: str | None = Field(
        default=None, description="the diagnosis that created this recovery task"
    )
    replaces: str | None = Field(
        default=None, description="the failed or cancelled task whose dependants this one took"
    )
    failure_reasons: list[str] = Field(
        default_factory=list, description="the reasons of its latest failed attempts (capped)"
    )
    claimed_at: datetime | None = Field(default=None, description="its current attempt began")
    avoid: list[str] = Field(
        default_factory=list,
        description="reassign_task: agent lineages it is not given to while another can take it",
    )
    _index: TaskIndex | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        # The fields only: whether an index is attached yet is no part of a task's value.
        return type(other) is type(self) and self.__dict__ == other.__dict__

    def __setattr__(self, name: str, value: Any) -> None:
        index = self._index if name in INDEXED_FIELDS else None
        if index is None:
            super().__setattr__(name, value)
            return
        index._count(self, -1)
        try:
            super().__setattr__(name, value)
        finally:
            index._count(self, +1)

    # Validation in iterations (tasks with validation on).
    iteration: int = Field(default=0, description="how many times the result went to review")
    reviewer: str | None = None
    review_requested_at: datetime | None = None
    review_content: str | None = Field(
        default=None, description="the result under review, kept only until its verdict"
    )
    result_submitted_at: datetime | None = None
    reviews: list[TaskReview] = Field(default_factory=list)
    consecutive_review_failures: int = 0


class NoteMark(BaseModel):
    """One progress note or failure reason of an agent, normalised (core.behaviour)."""

    at: datetime
    task_id: str
    text: str


class Behaviour(BaseModel):
    """What an agent actually does, for its anomaly score (core.behaviour)."""

    progress_at: datetime | None = Field(
        default=None,
        description="its last state-changing act (claim, complete, fail, create, "
        "submit, or a note different from the previous)",
    )
    notes: list[NoteMark] = Field(default_factory=list, description="the latest (capped)")
    creates: list[NoteMark] = Field(
        default_factory=list,
        description="its accepted create_task in the last minute, since its last remedy "
        "(the task id and its title's family)",
    )
    low_quality: list[str] = Field(
        default_factory=list, description="its latest results in a row that were trivial"
    )
    low_quality_since: datetime | None = None
    score: float = Field(default=0.0, description="the composite anomaly score, 0-1")
    anomaly_since: datetime | None = Field(
        default=None, description="since when the score is at or above the threshold"
    )
    anomaly_reported: bool = Field(
        default=False, description="this spell already asked for a diagnosis"
    )


class HumanAnswer(BaseModel):
    question_id: str
    question: str
    answer: str
    answered_by: str
    answered_at: datetime


class Agent(BaseModel):
    id: str
    name: str
    kind: str
    capabilities: list[str] = Field(default_factory=list)
    token_sha256: str
    state: AgentState = "idle"
    registered_at: datetime
    last_heartbeat_at: datetime | None = None
    last_seq: int | None = None
    heartbeats: int = 0
    seq_gaps: int = 0
    out_of_order: int = 0
    stop: bool = False
    stop_reason: str | None = None
    feedback: list[str] = Field(default_factory=list)
    # Health (core.health).
    lineage: str = Field(default="", description="spec name shared with its replacements")
    last_seen_at: datetime | None = Field(default=None, description="last accepted message")
    missed_beats: int = 0
    release_deadline: datetime | None = None
    restart_requested: bool = False
    released_task_ids: list[str] = Field(default_factory=list)
    # Fair claims: an agent whose claim found nothing waits in line (core.ticket._claim_for).
    waiting_since: datetime | None = Field(default=None, description="first empty claim")
    waiting_phases: list[str] | None = None
    last_claim_at: datetime | None = None
    claim_gap_s: float | None = Field(default=None, description="between its last empty claims")
    # Behaviour signals (core.behaviour) and what a diagnosis told it (interrupt_agent).
    behaviour: Behaviour = Field(default_factory=Behaviour)
    creates: list[datetime] = Field(
        default_factory=list,
        description="its accepted create_task in the last minute (the door's rate bound)",
    )
    interrupted: list[str] = Field(
        default_factory=list, description="tasks taken from it by interrupt_agent (its inbox)"
    )
    answers: list[HumanAnswer] = Field(
        default_factory=list, description="a person's answers to its questions (its inbox)"
    )
    # Liveness leases (core.health, DESIGN §15): an activity run by the agent's own process.
    lease_queue: str | None = Field(
        default=None, description="its lease host's task queue, offered in its latest beat"
    )
    lease_held: bool = Field(
        default=False, description="a lease activity is scheduled: its heartbeats are the beats"
    )
    leases: int = Field(default=0, description="lease activities scheduled for it")


class Lineage(BaseModel):
    """An agent and its replacements: they share the spec name, restarts and quarantine."""

    name: str
    spec: AgentSpec | None = None
    restarts: list[datetime] = Field(default_factory=list, description="when each restart ran")
    events: int = Field(default=0, description="restart decisions so far (ids ledger rows)")
    generation: int = 0
    process: AgentProcess | None = None
    quarantined: bool = False
    pending_restart_agent: str | None = None
    restart_not_before: datetime | None = None
    restart_requested_at: dict[str, datetime] = Field(default_factory=dict)
    restart_reasons: dict[str, str] = Field(default_factory=dict)


class ResultVersion(BaseModel):
    version: int
    agent_id: str
    source: Literal["content", "file"]
    file_ref: str | None = None
    sha256: str
    size_bytes: int
    preview: str
    content: str | None = Field(
        default=None, description="kept only while awaiting a verdict; the ledger keeps it all"
    )
    submitted_at: datetime
    criteria: list[str]
    status: Literal["pending_validation", "validated", "rejected"] = "pending_validation"
    validator_id: str | None = None
    feedback: str | None = None
    evidence: list[str] = Field(default_factory=list)
    verdict_at: datetime | None = None
    timeout_reported: bool = Field(
        default=False, description="a validation_timeout diagnosis was requested for it"
    )
    checks: list[str] = Field(default_factory=list, description="automated check summaries")


class DiagnosisRun(BaseModel):
    """One diagnosis of the ticket, from trigger to the outcome of its recovery tasks."""

    run_id: str
    number: int
    trigger: str
    reason: str = ""
    status: Literal["created", "running", "completed", "failed", "skipped"] = "running"
    outcome: Literal["pending", "recovered", "failed"] | None = None
    started_at: datetime
    finished_at: datetime | None = None
    counts_at_trigger: dict[str, int] = Field(default_factory=dict)
    idle_seconds: float = 0.0
    task_ids: list[str] = Field(default_factory=list)
    hypotheses: list[Hypothesis] = Field(default_factory=list)
    generator: str | None = None
    evidence_summary: str = ""
    error: str | None = None
    # Verified healing (healing v2): what must happen for the run to count as a success.
    condition: str | None = Field(
        default=None, description="core.diagnosis.CONDITIONS key, from trigger and signature"
    )
    verify_by: datetime | None = Field(
        default=None, description="its remedies are finished; the condition must clear by then"
    )
    subjects: list[str] = Field(
        default_factory=list, description="condition unblocked: the tasks blocked at the time"
    )
    spawned: list[str] = Field(default_factory=list, description="on-demand agents it started")
    acted: list[str] = Field(
        default_factory=list,
        description="what its agent and task remedies did (interrupted, restarted, cancelled)",
    )
    plan: list[str] = Field(default_factory=list, description="Recommendation.key() of each")


class Delivery(BaseModel):
    """One message about an escalation to the ticket's sinks (core.escalations)."""

    event: Literal["trigger", "acknowledge", "resolve"]
    status: Literal["pending", "delivered", "failed"] = "pending"
    queued_at: datetime
    finished_at: datetime | None = None
    delivered: list[str] = Field(default_factory=list, description="sinks that took it")
    failed: list[str] = Field(default_factory=list, description="'sink: why', not retried")


class Escalation(BaseModel):
    """A problem handed to a person."""

    id: str
    severity: str
    source: str
    reason: str
    created_at: datetime
    agent_id: str | None = None
    diagnosis_run_id: str | None = None
    acknowledged: bool = False
    # Escalations that reach people (patch escalations-v1): who acts, what they said.
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    note: str | None = Field(default=None, description="the person's note (a question's answer)")
    question: str | None = Field(default=None, description="ask_human: what the agent asked")
    task_id: str | None = None
    deliveries: list[Delivery] = Field(default_factory=list)

    @property
    def resolved(self) -> bool:
        return self.resolved_at is not None

    @property
    def status(self) -> str:
        if self.resolved_at is not None:
            return "resolved"
        return "acknowledged" if self.acknowledged else "open"


class TimelineEvent(BaseModel):
    at: datetime
    kind: str
    message: str
    agent_id: str | None = None
    task_id: str | None = None


class TicketState(BaseModel):
    """Everything the ticket knows. The workflow holds exactly one of these."""

    spec: TicketSpec
    status: TicketStatus = "open"
    created_at: datetime
    last_activity_at: datetime
    finished_at: datetime | None = None
    outcome: str | None = None
    tasks: dict[str, Task] = Field(default_factory=dict)
    agents: dict[str, Agent] = Field(default_factory=dict)
    results: list[ResultVersion] = Field(default_factory=list)
    timeline: list[TimelineEvent] = Field(default_factory=list)
    timeline_dropped: int = 0
    next_task_number: int = 1
    next_agent_number: int = 1
    replies: dict[str, str] = Field(
        default_factory=dict, description="request key -> JSON reply, for idempotent retries"
    )
    reply_digests: dict[str, str] = Field(
        default_factory=dict,
        description="request key -> sha256 of the request it answered (a reused request id "
        "with another payload is refused)",
    )
    operator_token_sha256: str | None = None
    join_sha256: dict[str, str] | None = Field(
        default=None,
        description="agent kind -> sha256 of its join secret; None = a ticket started without "
        "join secrets (before enrollment), which any client may join",
    )
    diagnoses: list[DiagnosisRun] = Field(default_factory=list)
    consecutive_failed_diagnoses: int = 0
    last_diagnosis_at: datetime | None = None
    stuck_since: datetime | None = None
    escalations: list[Escalation] = Field(default_factory=list)
    lineages: dict[str, Lineage] = Field(default_factory=dict)
    agent_address: str | None = None
    agent_namespace: str = "default"
    restarts_total: int = 0
    ignored_messages: int = Field(default=0, description="signals from unknown/unauthenticated")
    outbox: LedgerBatch = Field(description="ledger rows not yet confirmed written")
    healing_v2: bool = Field(
        default=False,
        description=(
            "set by the workflow each run (patch healing-v2): blocked tasks are not active, "
            "a spent diagnosis budget escalates at once"
        ),
    )

    escalations_v1: bool = Field(
        default=False,
        description=(
            "set by the workflow each run (patch escalations-v1): escalations are delivered "
            "to sinks, acknowledged and resolved by people; agents may ask a person"
        ),
    )
    budget_from: int = Field(
        default=0,
        description="diagnoses before this index do not count against the budget (a person "
        "resolved an escalation: diagnosing resumes with a fresh budget)",
    )
    behaviour_v1: bool = Field(
        default=False,
        description=(
            "set by the workflow each run (patch behaviour-signals): anomaly scores, the "
            "anomaly trigger and the hard bounds of create_task"
        ),
    )
    fleet_v1: bool = Field(
        default=False,
        description=(
            "set by the workflow each run (patch fleet-liveness): agents that offer a lease "
            "queue are watched through a lease activity's heartbeat timeout (no signal per "
            "beat); agent processes are stopped and restarted on the host that runs them"
        ),
    )
    trust_v1: bool = Field(
        default=False,
        description=(
            "set by the workflow each run (patch trust-boundaries): request digests (a reused "
            "request id with another payload is refused), a name keeps its kind, ledger "
            "writes split under the payload limit"
        ),
    )
    durations: list[float] = Field(
        default_factory=list, description="seconds from claim to done of its latest done tasks"
    )
    stuck_skipped_at: datetime | None = Field(
        default=None, description="the last stuck check whose diagnosis was skipped"
    )

    _task_index: TaskIndex | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        # The fields only: whether the index was built yet is no part of the state's value.
        return type(other) is type(self) and self.__dict__ == other.__dict__

    def index(self) -> TaskIndex:
        """The tasks' index (built on first use, e.g. after continue-as-new or a query copy)."""
        index = self._task_index
        if index is None or index.size != len(self.tasks):
            order = {p.name: i for i, p in enumerate(self.spec.phases)}
            index = self._task_index = TaskIndex(self.tasks, order)
        return index

    @property
    def ticket_id(self) -> str:
        return self.spec.id
