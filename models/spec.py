"""The ticket spec: what an operator writes (YAML or JSON) to launch a ticket.

Every number has the default of DESIGN.md and can be changed per ticket in ``policy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

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
OnResultFound = Literal["stop_all", "do_nothing"]

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
    runtime: Literal["external", "local-process"] = "external"
    command: list[str] | None = Field(
        default=None, description="command template for local-process; {ticket_id}, {agent_name}"
    )
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None

    @model_validator(mode="after")
    def _command_for_local(self) -> AgentSpec:
        if self.runtime == "local-process" and not self.command:
            raise ValueError("command is required when runtime is local-process")
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


class ValidationPolicy(_Strict):
    max_iterations: int = Field(default=10, ge=1)
    validator_timeout_s: float = Field(default=600.0, gt=0)
    failures_before_diagnosis: int = Field(default=2, ge=1)


class Policy(_Strict):
    results: ResultPolicy = Field(default_factory=ResultPolicy)
    tasks: TaskPolicy = Field(default_factory=TaskPolicy)
    stuck: StuckPolicy = Field(default_factory=StuckPolicy)
    health: HealthPolicy = Field(default_factory=HealthPolicy)
    validation: ValidationPolicy = Field(default_factory=ValidationPolicy)


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
        phase_names = [p.name for p in self.phases]
        _unique(phase_names, "phases", "phase name")
        _unique([t.key for t in self.tasks], "tasks", "task key")
        _unique([a.name for a in self.agents], "agents", "agent name")
        keys = {t.key for t in self.tasks}
        for i, task in enumerate(self.tasks):
            if len(set(task.depends_on)) != len(task.depends_on):
                raise ValueError(f"tasks[{i}].depends_on: lists a task key twice")
            if task.phase not in phase_names:
                raise ValueError(
                    f"tasks[{i}].phase: unknown phase {task.phase!r} (phases: {phase_names})"
                )
            for dep in task.depends_on:
                if dep not in keys:
                    raise ValueError(f"tasks[{i}].depends_on: unknown task key {dep!r}")
                if dep == task.key:
                    raise ValueError(f"tasks[{i}].depends_on: a task cannot depend on itself")
        cycle = _find_cycle({t.key: t.depends_on for t in self.tasks})
        if cycle:
            raise ValueError(f"tasks.depends_on: dependency cycle {' -> '.join(cycle)}")
        return self

    def criteria_text(self) -> list[str]:
        """The result criteria as plain sentences (the snapshot stored with each version)."""
        return [c.description for c in self.result_criteria]


def _unique(values: list[str], field: str, what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{field}: duplicate {what} {v!r}")
        seen.add(v)


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
    from pydantic import ValidationError

    try:
        return TicketSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{source}: invalid ticket spec\n{format_errors(exc)}") from None


class SpecError(ValueError):
    """A ticket spec that cannot be used; the message names each field and rule."""


def format_errors(exc: Any) -> str:
    """One line per pydantic error: ``field.path: message``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)
