"""Diagnosis: what a diagnosis gets (snapshot, evidence) and what it gives back (hypotheses,
recommendations, recovery tasks). Plain pydantic: imported by workflows and activities."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Trigger = Literal[
    "no_result",
    "repeated_validation_failures",
    "validation_timeout",
    "restart_escalation",
    "task_failed",
    "anomaly",
    "manual",
]
TRIGGERS: tuple[str, ...] = (
    "no_result",
    "repeated_validation_failures",
    "validation_timeout",
    "restart_escalation",
    "task_failed",
    "anomaly",
    "manual",
)
RunStatus = Literal["created", "running", "completed", "failed", "skipped"]
RunOutcome = Literal["pending", "recovered", "failed"]

#: Known failure signatures the built-in rule engine recognises.
Signature = Literal[
    "missing_result_submission",
    "premature_completion",
    "validation_loop",
    "crash_looping_agent",
    "environment_error",
    "dependency_deadlock",
    "phase_without_tasks",
    "validator_unavailable",
    "agent_looping",
    "agent_stalled",
    "task_storm",
    "low_quality_results",
    "unclaimed_work",
    "other",
]
#: The signatures of behaviour anomalies (core.behaviour): their subject is one agent.
BEHAVIOUR_SIGNATURES: tuple[str, ...] = (
    "agent_looping",
    "agent_stalled",
    "task_storm",
    "low_quality_results",
)
Remedy = Literal[
    "create_task",
    "retry_task",
    "replace_task",
    "reassign_task",
    "spawn_agent",
    "restart_agent",
    "interrupt_agent",
    "quarantine_agent",
    "cancel_tasks",
    "escalate",
]
#: Remedies that create no task: they act on agents, tasks or people.
AGENT_REMEDIES: tuple[str, ...] = (
    "spawn_agent",
    "restart_agent",
    "interrupt_agent",
    "quarantine_agent",
)

MAX_HYPOTHESES = 5
MAX_RECOVERY_TASKS = 5

#: Activity names of the diagnosis, for workflow code that must not import ``activities``.
COLLECT_EVIDENCE_ACTIVITY = "collect_evidence"
GENERATE_HYPOTHESES_ACTIVITY = "generate_hypotheses"
PLAN_RECOVERY_ACTIVITY = "plan_recovery"


# ---- the ticket as the diagnosis sees it (built by the pure core, deterministic) ----------


class SnapshotTask(BaseModel):
    id: str
    phase: str
    title: str
    type: str
    status: str
    priority: str
    depends_on: list[str] = Field(default_factory=list)
    assigned_agent: str | None = None
    attempt: int = 0
    failures: int = 0
    failure_reason: str | None = None
    failure_reasons: list[str] = Field(
        default_factory=list, description="the reasons of its latest failed attempts"
    )
    result_preview: str | None = None
    notes: list[str] = Field(default_factory=list)
    created_by: str = "spec"
    diagnosis_run_id: str | None = None
    updated_at: datetime


class SnapshotCreated(BaseModel):
    """A task an agent created in the last minute that nobody has taken yet."""

    id: str
    title: str
    phase: str


class SnapshotAgent(BaseModel):
    id: str
    name: str
    kind: str
    state: str
    last_heartbeat_at: datetime | None = None
    restarts: int = 0
    tasks: list[str] = Field(default_factory=list)
    lineage: str = ""
    runtime: str = "external"
    anomaly: float = Field(default=0.0, description="its composite anomaly score, 0-1")
    signals: list[str] = Field(
        default_factory=list, description="each behaviour signal that contributes, explained"
    )
    anomaly_signature: str | None = Field(
        default=None, description="what its strongest signal points to (agent_looping, ...)"
    )
    notes: list[str] = Field(default_factory=list, description="its latest notes and errors")
    created_last_minute: int = 0
    created_open: list[SnapshotCreated] = Field(
        default_factory=list, description="its tasks of the last minute still pending (≤ 200)"
    )


class SnapshotSpawnable(BaseModel):
    """A spec agent with ``spawn: on_demand`` (and whether a process of it runs now)."""

    name: str
    kind: str
    running: bool = False


class SnapshotResult(BaseModel):
    version: int
    agent_id: str
    status: str
    preview: str
    feedback: str | None = None
    validator_id: str | None = None
    submitted_at: datetime


class SnapshotDiagnosis(BaseModel):
    run_id: str
    trigger: str
    status: str
    outcome: str | None = None
    started_at: datetime
    top_hypothesis: str | None = None
    top_signature: str | None = Field(
        default=None, description="the top hypothesis's signature (rules avoid repeating it)"
    )
    task_ids: list[str] = Field(default_factory=list)
    plan: list[str] = Field(
        default_factory=list, description="what it ran: Recommendation.key() of each remedy"
    )
    condition: str | None = Field(default=None, description="what it had to clear")


class SnapshotPhase(BaseModel):
    name: str
    required: bool
    description: str = ""
    done_definitions: list[str] = Field(default_factory=list)


class TicketSnapshot(BaseModel):
    """The ticket at trigger time: counts, the last 15 tasks, agents, results, diagnoses."""

    ticket_id: str
    title: str
    goal: str
    result_criteria: list[str]
    status: str
    phases: list[SnapshotPhase]
    counts_by_status: dict[str, int]
    counts_by_phase: dict[str, dict[str, int]]
    total_tasks: int
    recent_tasks: list[SnapshotTask] = Field(description="the 15 most recently updated tasks")
    problem_tasks: list[SnapshotTask] = Field(
        default_factory=list, description="failed, blocked or repeatedly failing tasks (≤ 15)"
    )
    agents: list[SnapshotAgent]
    claimable: list[str] = Field(
        default_factory=list, description="pending tasks a claim could take right now (≤ 20)"
    )
    spawnable: list[SnapshotSpawnable] = Field(
        default_factory=list, description="spec agents a spawn_agent remedy can start"
    )
    results: list[SnapshotResult]
    diagnoses: list[SnapshotDiagnosis]
    validated_version: int | None = None
    last_activity_at: datetime
    taken_at: datetime


# ---- evidence and hypotheses -------------------------------------------------------------


class HistorySummary(BaseModel):
    """The ticket workflow's own event history in the evidence window, summarised."""

    window_minutes: float
    events_in_window: int
    by_type: dict[str, int] = Field(default_factory=dict)
    updates_by_name: dict[str, int] = Field(default_factory=dict)
    signals_by_name: dict[str, int] = Field(default_factory=dict)
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    notable: list[str] = Field(default_factory=list, description="failures, timeouts, …")


class ReviewEvidence(BaseModel):
    """One validator verdict from the ledger (a task iteration or a result version)."""

    subject_kind: str = Field(description="task or result")
    subject_id: str = Field(description="the task id, or the result version as a string")
    iteration: int = 0
    validator_id: str = ""
    passed: bool
    feedback: str = ""
    created_at: datetime


class Evidence(BaseModel):
    """Everything a hypothesis generator may look at; secrets redacted, size-capped."""

    run_id: str
    trigger: Trigger
    reason: str = ""
    snapshot: TicketSnapshot
    history: HistorySummary | None = None
    progress_notes: list[str] = Field(default_factory=list)
    ledger: dict[str, int] = Field(default_factory=dict, description="rows per ledger table")
    ledger_excerpts: list[str] = Field(default_factory=list)
    reviews: list[ReviewEvidence] = Field(
        default_factory=list, description="the latest reviews from the ledger, oldest first"
    )
    spans: list[str] = Field(default_factory=list, description="the ticket's trace spans")
    agent_logs: dict[str, list[str]] = Field(
        default_factory=dict,
        description="agents involved in an anomaly: the tail of their process log (redacted)",
    )
    metrics: dict[str, float] = Field(default_factory=dict)
    redactions: int = 0
    truncated: bool = False
    size_bytes: int = 0
    collected_at: datetime


class Recommendation(BaseModel):
    """One remedy of a recovery plan (DESIGN §11), a typed effect of the core.

    - ``create_task``: a new recovery task.
    - ``retry_task``: the failed task ``task_id`` back to pending with fresh retries (its
      dependants keep waiting on it).
    - ``replace_task``: a new task *in place of* a task that failed for good or was cancelled
      (``replaces``): every task waiting on that one waits on the new task instead.
    - ``reassign_task``: the task ``task_id`` is taken from the agent holding it, back to
      pending; that agent's lineage is not given it again while another agent can take it.
    - ``spawn_agent``: starts the spec agent ``agent`` (``spawn: on_demand``, e.g. a
      validator). No task.
    - ``restart_agent``: restarts the agent ``agent`` (an agent id); its tasks go back to
      pending. No task.
    - ``interrupt_agent``: the agent ``agent`` drops its current tasks (back to pending) and
      finds ``description`` in its inbox as feedback. No task.
    - ``quarantine_agent``: the agent ``agent`` gets no more tasks and its process is
      stopped; its tasks go back to pending (no retry used), for the other agents. A person
      is told (``behaviour_quarantine``) and may release it; the ticket goes on. No task.
    - ``cancel_tasks``: cancels the open tasks ``task_ids`` (duplicates, a storm); they stay
      in the ticket and the ledger, cancelled. No task.
    - ``escalate``: hands the ticket to a person (title and description say why and what was
      tried); automatic diagnoses stop until a person acts. No task.
    """

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=4000)
    phase: str = Field(min_length=1, max_length=63)
    priority: Literal["low", "normal", "high", "critical"] = "normal"
    type: Literal[
        "implementation", "analysis", "fix", "design", "test", "documentation", "submission"
    ] = "fix"
    remedy: Remedy = "create_task"
    replaces: str | None = Field(
        default=None,
        max_length=63,
        description="replace_task: the id of the failed or cancelled task to take over from",
    )
    agent: str | None = Field(
        default=None,
        max_length=63,
        description=(
            "spawn_agent: the name of a spec agent with spawn: on_demand; restart_agent, "
            "interrupt_agent and quarantine_agent: the agent's id"
        ),
    )
    task_id: str | None = Field(
        default=None,
        max_length=63,
        description="retry_task: the failed task; reassign_task: the held task to take back",
    )
    task_ids: list[str] = Field(
        default_factory=list, max_length=500, description="cancel_tasks: the tasks to cancel"
    )

    def key(self) -> str:
        """What the remedy does, for comparing plans: ``retry_task(T1): redo t1``."""
        target = self.task_id or self.replaces or self.agent or ""
        if self.remedy == "cancel_tasks" and not target:
            target = f"{len(self.task_ids)} tasks"
        return f"{self.remedy}({target}): {' '.join(self.title.lower().split())}"

    def creates_task(self) -> bool:
        return self.remedy in ("create_task", "replace_task")


class Hypothesis(BaseModel):
    model_config = ConfigDict(extra="forbid")

    signature: Signature = "other"
    statement: str = Field(min_length=1, max_length=1000)
    likelihood: float = Field(ge=0.0, le=1.0)
    evidence: list[str] = Field(default_factory=list, max_length=20)
    counterpoints: list[str] = Field(default_factory=list, max_length=20)
    recommendations: list[Recommendation] = Field(default_factory=list, max_length=5)


class HypothesisSet(BaseModel):
    """What a generator returns: at most 5 hypotheses, ranked by likelihood (highest first)."""

    model_config = ConfigDict(extra="forbid")

    hypotheses: list[Hypothesis] = Field(max_length=MAX_HYPOTHESES)
    generator: str = Field(default="rules", description="rules, or llm:<model>")
    fallback_reason: str | None = Field(
        default=None, description="why the rules were used although an LLM was configured"
    )


class RecoveryPlan(BaseModel):
    tasks: list[Recommendation] = Field(min_length=1, max_length=MAX_RECOVERY_TASKS)


class PlanRequest(BaseModel):
    """Input of the ``plan_recovery`` activity."""

    hypotheses: HypothesisSet
    snapshot: TicketSnapshot


# ---- the child workflow's input and output -------------------------------------------------


class DiagnosisInput(BaseModel):
    ticket_id: str
    run_id: str
    number: int
    trigger: Trigger
    reason: str = ""
    snapshot: TicketSnapshot
    history_window_min: float = 60.0
    idle_seconds: float = 0.0


class DiagnosisReport(BaseModel):
    run_id: str
    trigger: Trigger
    hypotheses: HypothesisSet
    plan: RecoveryPlan
    evidence_summary: str
    started_at: datetime
    finished_at: datetime
