"""The ticket spec: what an operator writes (YAML or JSON) to launch a ticket.

Every number has the default of DESIGN.md and can be changed per ticket in ``policy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

Slug = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$", strip_whitespace=True)
]
"""Lower-case identifier: letters, digits, ``_ . -``; 1–63 characters."""

Priority = Literal["low", "normal", "high", "critical"]
PRIORITY_RANK: dict[str, int] = {"low": 0, "normal": 1, "high": 2, "critical": 3}
PRIORITIES: tuple[str, ...] = ("low", "normal", "high", "critical")

ResultType = Literal["implementation", "analysis", "fix", "design", "test", "documentation"]
TaskType = Literal[
    "implementation", "analysis", "fix", "design", "test", "documentation", "submission"
]
AgentKind = Literal["worker", "validator", "diagnostic"]
#: The result type an agent reports for a task of each type (a submission's is the write-up).
RESULT_TYPES: dict[str, ResultType] = {
    "implementation": "implementation",
    "analysis": "analysis",
    "fix": "fix",
    "design": "design",
    "test": "test",
    "documentation": "documentation",
    "submission": "documentation",
}
OnResultFound = Literal["stop_all", "do_nothing"]
Severity = Literal["SEV-1", "SEV-2", "SEV-3", "SEV-4"]
SEVERITY_RANK: dict[str, int] = {"SEV-1": 1, "SEV-2": 2, "SEV-3": 3, "SEV-4": 4}
#: What escalates (the ``source`` of an escalation), with its default severity (DESIGN §14).
ESCALATION_SOURCES: dict[str, Severity] = {
    "diagnosis_guard": "SEV-2",  # the diagnosis budget is spent
    "diagnosis_ladder": "SEV-2",  # a diagnosis found no remedy the ticket can apply
    "restart_quarantine": "SEV-2",  # a restart storm: the agent is quarantined
    "behaviour_quarantine": "SEV-3",  # it misbehaves after interrupt and restart: quarantined
    "restart_failed": "SEV-2",  # an agent could not be restarted
    "spawn_failed": "SEV-2",  # an agent could not be started
    "external_restart": "SEV-3",  # an agent someone else runs died; it was asked to restart
    "critical_anomaly": "SEV-2",  # an agent misbehaves on a critical-priority ticket
    "agent_question": "SEV-3",  # an agent asked a person (ask_human)
}
EscalationSource = Literal[
    "diagnosis_guard",
    "diagnosis_ladder",
    "restart_quarantine",
    "behaviour_quarantine",
    "restart_failed",
    "spawn_failed",
    "external_restart",
    "critical_anomaly",
    "agent_question",
]
assert set(ESCALATION_SOURCES) == set(get_args(EscalationSource)), "one list of sources"
SinkKind = Literal["webhook", "slack", "pagerduty"]

KB = 1024
MB = 1024 * 1024


def boost(priority: str, levels: int = 1) -> Priority:
    """The priority ``levels`` steps higher, capped at ``critical``."""
    rank = min(PRIORITY_RANK[priority] + levels, len(PRIORITIES) - 1)
    return PRIORITIES[rank]  # type: ignore[return-value]


class _Strict(BaseModel):
    """Unknown fields are an error: a typo in a spec must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class PhaseSpec(_Strict):
    """One phase of the ticket, in order; done definitions say when it is complete."""

    name: Slug
    description: str = ""
    done_definitions: list[str] = Field(default_factory=list)
    required: bool = Field(default=True, description="a phase the ticket cannot finish without")


DEFAULT_PHASES: tuple[PhaseSpec, ...] = (
    PhaseSpec(
        name="requirements",
        description="What to build and how to know it is right",
        done_definitions=["requirements written down and agreed"],
    ),
    PhaseSpec(
        name="implementation",
        description="Build it",
        done_definitions=["every planned piece implemented"],
    ),
    PhaseSpec(
        name="testing", description="Prove it works", done_definitions=["tests written and passing"]
    ),
)


class FileExistsCheck(_Strict):
    kind: Literal["file_exists"] = "file_exists"
    path: str


class FileContainsCheck(_Strict):
    kind: Literal["file_contains"] = "file_contains"
    path: str
    text: str = Field(min_length=1)
    regex: bool = False


class CommandSuccessCheck(_Strict):
    kind: Literal["command_success"] = "command_success"
    command: list[str] = Field(min_length=1)
    cwd: str = "."
    timeout_s: float = Field(default=60.0, gt=0, le=3600)
    shell: bool = False


AutomatedCheck = Annotated[
    FileExistsCheck | FileContainsCheck | CommandSuccessCheck, Field(discriminator="kind")
]


class ResultCriterion(_Strict):
    """One criterion the final result must meet; optionally checked automatically."""

    description: str = Field(min_length=1, max_length=2000)
    check: AutomatedCheck | None = None


class SeedTask(_Strict):
    """A task known up front. ``key`` names it for ``depends_on``; ids are assigned at launch."""

    key: Slug
    phase: Slug
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=20_000)
    type: TaskType = "implementation"
    depends_on: list[Slug] = Field(default_factory=list)
    priority: Priority = "normal"
    validation: bool = False


class AgentSpec(_Strict):
    """An agent the ticket's runtime starts (``local-process``) or expects (``external``)."""

    name: Slug
    kind: AgentKind = "worker"
    runtime: Literal["external", "local-process", "command"] = "external"
    command: list[str] | None = Field(
        default=None,
        description=(
            "local-process: the agent's command ({ticket_id}, {agent_name}, {generation}, "
            "{python}); command: the coding CLI run once per task ({prompt}, {task_id}, "
            "{task_title}, {ticket_id}, {agent_name}, {workdir}; without {prompt} the prompt "
            "goes to its stdin)"
        ),
    )
    output: Literal["text", "claude-stream-json", "codex-json"] = Field(
        default="text",
        description=(
            "command runtime: how the CLI reports (text = its stdout is the result; "
            "claude-stream-json = `claude -p --output-format stream-json --verbose`; "
            "codex-json = `codex exec --json`)"
        ),
    )
    timeout_s: float = Field(
        default=1800.0,
        gt=0,
        le=86_400,
        description="command runtime: the longest one task's run may take; then it is killed "
        "and the task fails with the reason",
    )
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    spawn: Literal["at_start", "on_demand"] = Field(
        default="at_start",
        description=(
            "at_start: the ticket starts it when it starts; on_demand: only when a diagnosis "
            "needs it (e.g. a validator for work waiting on review)"
        ),
    )

    @model_validator(mode="after")
    def _command_for_local(self) -> AgentSpec:
        if self.runtime in ("local-process", "command") and not self.command:
            raise ValueError(f"command is required when runtime is {self.runtime}")
        if self.spawn == "on_demand" and self.runtime == "external":
            raise ValueError(
                "spawn: on_demand needs runtime local-process or command (the ticket starts it)"
            )
        if self.runtime == "command" and self.kind == "validator":
            raise ValueError(
                "runtime command runs workers and diagnostic agents (one CLI run per task); "
                "a validator judges through AgentSession, the MCP server or the temporal CLI"
            )
        return self


class ResultPolicy(_Strict):
    on_result_found: OnResultFound = "stop_all"
    max_content_bytes: int = Field(default=1 * MB, gt=0, le=1 * MB)
    max_file_bytes: int = Field(default=1 * MB, gt=0, le=50 * MB)
    files_root: str = Field(
        default=".", description="directory file references are resolved in (worker side)"
    )


class TaskPolicy(_Strict):
    max_retries: int = Field(default=3, ge=0, le=100)
    max_result_bytes: int = Field(default=100 * KB, gt=0, le=100 * KB)
    max_tasks_per_agent: int = Field(default=3, ge=1, le=100)
    fair_claim_window_s: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description=(
            "an agent whose claim found nothing is served before agents that asked later, "
            "as long as it claimed again within this many seconds (0: first come, first served)"
        ),
    )
    stall_s: float = Field(
        default=900.0,
        gt=0,
        description=(
            "an agent holding a task without progress for longer than max(stall_s, 3 x p90 of "
            "the ticket's done task durations) is stalled (behaviour signal)"
        ),
    )
    max_creates_per_minute: int = Field(
        default=20, ge=1, le=10_000, description="create_task per agent per rolling minute"
    )
    max_open_tasks: int = Field(
        default=500, ge=1, le=5000, description="open (not finished) tasks per ticket"
    )


class StuckPolicy(_Strict):
    cooldown_s: float = Field(default=60.0, gt=0)
    window_s: float = Field(default=60.0, gt=0)
    max_consecutive_failures: int = Field(default=3, ge=1)
    max_runs: int = Field(default=10, ge=1)
    history_window_min: float = Field(default=60.0, gt=0)


class HealthPolicy(_Strict):
    idle_deadline_s: float = Field(default=30.0, gt=0)
    running_deadline_s: float = Field(default=15.0, gt=0)
    restart_cooldown_s: float = Field(default=60.0, ge=0)
    max_restarts_per_hour: int = Field(default=3, ge=1)
    stop_grace_s: float = Field(default=10.0, gt=0)
    host_gone_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="a stop or restart not picked up by the worker on the agent's host within "
        "this long: that host is gone, the replacement starts on another",
    )


class ValidationPolicy(_Strict):
    max_iterations: int = Field(default=10, ge=1)
    validator_timeout_s: float = Field(default=600.0, gt=0)
    failures_before_diagnosis: int = Field(default=2, ge=1)


class AnomalyPolicy(_Strict):
    """Behaviour signals per agent (core.behaviour): when an agent's composite score stays
    at or above ``threshold`` for a whole window, the ticket is diagnosed (trigger anomaly)."""

    threshold: float = Field(
        default=0.7,
        gt=0,
        le=0.8,
        description="at most 0.8: one signal fully on (weight 0.8-0.9) must be able to reach it",
    )
    window_s: float | None = Field(
        default=None, gt=0, description="how long the score must stay high (default: stuck window)"
    )
    repeats: int = Field(
        default=3, ge=2, le=100, description="the same note on one task this many times in a row"
    )
    min_result_chars: int = Field(
        default=16, ge=0, le=10_000, description="a result shorter than this is trivial"
    )


class SinkSpec(_Strict):
    """Where escalations are sent: a generic JSON webhook, a Slack incoming webhook or the
    PagerDuty Events v2 API. Each escalation is sent once per sink with a dedup key (its id),
    then again when it is acknowledged and when it is resolved."""

    name: Slug
    kind: SinkKind
    url: str = Field(
        min_length=1,
        max_length=2_000,
        description="http(s) URL; PagerDuty: https://events.pagerduty.com/v2/enqueue",
    )
    min_severity: Severity = Field(
        default="SEV-4", description="send escalations this severe or more (SEV-1 is the most)"
    )
    routing_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        repr=False,
        description="PagerDuty: the integration key of the service (required for pagerduty)",
    )
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=200,
        repr=False,
        description="webhook: sign each body (header X-Unstuck-Signature: sha256=<HMAC hex>)",
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="per request")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise ValueError(f"is not a URL ({exc})") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @model_validator(mode="after")
    def _kind_fields(self) -> SinkSpec:
        if self.kind == "pagerduty" and self.routing_key is None:
            raise ValueError("a pagerduty sink needs routing_key (the service's integration key)")
        if self.kind != "pagerduty" and self.routing_key is not None:
            raise ValueError("routing_key is for pagerduty sinks only")
        if self.kind != "webhook" and self.secret is not None:
            raise ValueError("secret (body signing) is for webhook sinks only")
        return self


class EscalationPolicy(_Strict):
    """Who hears of an escalation, and how loud (DESIGN §14)."""

    severity: dict[EscalationSource, Severity] = Field(
        default_factory=dict,
        description="severity per source; unlisted sources keep their default (ESCALATION_SOURCES)",
    )
    notify: list[Slug] | None = Field(
        default=None,
        max_length=20,
        description="the deployment's sinks (UNSTUCK_SINKS_FILE) to use, by name; "
        "None: all of them, []: none",
    )
    sinks: list[SinkSpec] = Field(
        default_factory=list,
        max_length=10,
        description="this ticket's own sinks (their URLs and keys travel in the workflow "
        "history: use a payload codec, or name deployment sinks in notify instead)",
    )
    retry_max_interval_s: float = Field(
        default=60.0, ge=1, le=3600, description="longest wait between delivery attempts"
    )
    give_up_after_s: float | None = Field(
        default=None,
        gt=0,
        description="stop trying a sink that has not taken a message after this long (it is "
        "recorded as undeliverable); None: until delivered",
    )
    max_open_questions: int = Field(
        default=3, ge=1, le=50, description="open ask_human questions per agent (and lineage)"
    )
    max_open_questions_per_ticket: int = Field(
        default=20, ge=1, le=500, description="open ask_human questions of all agents together"
    )

    @field_validator("notify")
    @classmethod
    def _notify_once(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and len(names) != len(set(names)):
            raise ValueError("names a sink more than once")
        return names

    @field_validator("sinks")
    @classmethod
    def _unique_names(cls, sinks: list[SinkSpec]) -> list[SinkSpec]:
        names = [s.name for s in sinks]
        if len(names) != len(set(names)):
            raise ValueError("sink names must be unique")
        return sinks

    def severity_of(self, source: str) -> Severity:
        return self.severity.get(source, ESCALATION_SOURCES.get(source, "SEV-2"))  # type: ignore[call-overload]


class Policy(_Strict):
    results: ResultPolicy = Field(default_factory=ResultPolicy)
    tasks: TaskPolicy = Field(default_factory=TaskPolicy)
    stuck: StuckPolicy = Field(default_factory=StuckPolicy)
    health: HealthPolicy = Field(default_factory=HealthPolicy)
    validation: ValidationPolicy = Field(default_factory=ValidationPolicy)
    anomaly: AnomalyPolicy = Field(default_factory=AnomalyPolicy)
    escalation: EscalationPolicy = Field(default_factory=EscalationPolicy)


class TicketSpec(_Strict):
    """A ticket as an operator writes it."""

    id: Slug
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=100_000)
    goal: str = Field(default="", max_length=20_000)
    result_criteria: list[ResultCriterion] = Field(default_factory=list)
    priority: Priority = "normal"
    phases: list[PhaseSpec] = Field(default_factory=lambda: list(DEFAULT_PHASES), min_length=1)
    tasks: list[SeedTask] = Field(default_factory=list)
    agents: list[AgentSpec] = Field(default_factory=list)
    policy: Policy = Field(default_factory=Policy)

    @field_validator("result_criteria", mode="before")
    @classmethod
    def _criteria_shorthand(cls, value: Any) -> Any:
        """A plain string is a criterion with that description."""
        if isinstance(value, list):
            return [{"description": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _references(self) -> TicketSpec:
        problems = reference_problems(
            [p.name for p in self.phases],
            [(t.key, t.phase, t.depends_on) for t in self.tasks],
            [a.name for a in self.agents],
        )
        if problems:
            # One error whose lines each name their own field (see format_errors).
            raise ValueError("\n".join(f"{path}: {msg}" for path, msg in problems))
        return self

    def criteria_text(self) -> list[str]:
        """The result criteria as plain sentences (the snapshot stored with each version)."""
        return [c.description for c in self.result_criteria]


def reference_problems(
    phases: list[str], tasks: list[tuple[str, str, list[str]]], agents: list[str]
) -> list[tuple[str, str]]:
    """Every problem that needs the whole spec, as ``(path, message)``, all at once.

    ``tasks`` are ``(key, phase, depends_on)``. Unique names, known phases, known
    dependencies, no self-dependency, no cycle.
    """
    problems: list[tuple[str, str]] = []
    problems += _duplicates(phases, "phases", "name", "phase name")
    problems += _duplicates([t[0] for t in tasks], "tasks", "key", "task key")
    problems += _duplicates(agents, "agents", "name", "agent name")
    keys = {t[0] for t in tasks}
    for i, (key, phase, depends_on) in enumerate(tasks):
        if phase not in phases:
            problems.append((f"tasks[{i}].phase", f"unknown phase {phase!r} (phases: {phases})"))
        if len(set(depends_on)) != len(depends_on):
            problems.append((f"tasks[{i}].depends_on", "lists a task key twice"))
        for dep in dict.fromkeys(depends_on):
            if dep == key:
                problems.append((f"tasks[{i}].depends_on", "a task cannot depend on itself"))
            elif dep not in keys:
                problems.append((f"tasks[{i}].depends_on", f"unknown task key {dep!r}"))
    graph: dict[str, list[str]] = {}
    for key, _, depends_on in tasks:  # a duplicate key is reported above; the first counts
        graph.setdefault(key, [d for d in depends_on if d != key])
    cycle = _find_cycle(graph)
    if cycle:
        i = next(n for n, t in enumerate(tasks) if t[0] == cycle[0])
        problems.append((f"tasks[{i}].depends_on", f"dependency cycle {' -> '.join(cycle)}"))
    return problems


def _duplicates(values: list[str], field: str, attr: str, what: str) -> list[tuple[str, str]]:
    seen: set[str] = set()
    found = []
    for i, v in enumerate(values):
        if v in seen:
            found.append((f"{field}[{i}].{attr}", f"duplicate {what} {v!r}"))
        seen.add(v)
    return found


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a list of keys, or None (iterative DFS, deterministic order)."""
    state: dict[str, int] = {}
    for root in graph:
        if state.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node, i = stack.pop()
            if i == 0:
                state[node] = 1
                path.append(node)
            deps = graph.get(node, [])
            if i < len(deps):
                stack.append((node, i + 1))
                dep = deps[i]
                if state.get(dep) == 1:
                    return [*path[path.index(dep) :], dep]
                if not state.get(dep):
                    stack.append((dep, 0))
            else:
                state[node] = 2
                path.pop()
    return None


def load_spec(path: str | Path) -> TicketSpec:
    """Read a ticket spec from a YAML or JSON file; errors name the field and the rule."""
    import yaml  # local import: workflow modules import this module, YAML is not needed there

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{p}: no such file") from None
    except OSError as exc:  # a directory, no permission, ...
        raise SpecError(f"{p}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{p}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{p}: not valid YAML/JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise SpecError(
            f"{p}: a ticket spec is a mapping (id, title, ...), got {type(raw).__name__}"
        )
    return parse_spec(raw, source=str(p))


def parse_spec(raw: dict[str, Any], *, source: str = "ticket spec") -> TicketSpec:
    """Validate a spec; every problem is reported at once, one line each."""
    from pydantic import ValidationError

    try:
        return TicketSpec.model_validate(raw)
    except ValidationError as exc:
        lines = format_errors(exc)
        # Field errors stop pydantic before the whole-spec checks: run those on the raw
        # data too, so that one run names every problem.
        lines += [f"  {path}: {msg}" for path, msg in _raw_reference_problems(raw)]
        body = "\n".join(dict.fromkeys(lines))
        raise SpecError(f"{source}: invalid ticket spec\n{body}") from None


def _raw_reference_problems(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """The whole-spec checks on unvalidated data, skipping what is too malformed to check."""

    def names(items: Any, attr: str) -> list[str]:
        if not isinstance(items, list):
            return []
        return [str(x.get(attr)) for x in items if isinstance(x, dict) and x.get(attr)]

    raw_phases = raw.get("phases")
    phases = [p.name for p in DEFAULT_PHASES] if raw_phases is None else names(raw_phases, "name")
    tasks: list[tuple[str, str, list[str]]] = []
    raw_tasks = raw.get("tasks")
    if isinstance(raw_tasks, list):
        for item in raw_tasks:
            if not isinstance(item, dict):
                return []  # indexes would not line up with the field errors' paths
            deps = item.get("depends_on") or []
            tasks.append(
                (
                    str(item.get("key", "")),
                    str(item.get("phase", "")),
                    [str(d) for d in deps] if isinstance(deps, list) else [],
                )
            )
    return reference_problems(phases, tasks, names(raw.get("agents"), "name"))


class SpecError(ValueError):
    """A ticket spec that cannot be used; the message names each field and rule."""


def error_path(loc: tuple[int | str, ...]) -> str:
    """``('tasks', 1, 'depends_on')`` -> ``tasks[1].depends_on``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def format_errors(exc: Any) -> list[str]:
    """One line per problem: ``  field.path[i].name: message``."""
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        path = error_path(tuple(err["loc"]))
        if not path:  # a whole-spec check: its message names the fields line by line
            lines += [f"  {line}" for line in msg.splitlines()]
        else:
            lines.append(f"  {path}: {msg}")
    return lines
