"""The ticket spec: YAML loading, DESIGN defaults, and one precise SpecError per invalid spec."""

from __future__ import annotations

import graphlib
import itertools
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.spec import (
    DEFAULT_PHASES,
    KB,
    MB,
    SpecError,
    TicketSpec,
    boost,
    load_spec,
    parse_spec,
)

FULL_SPEC = """\
id: build-widget
title: Build the widget
description: |
  A widget that frobs.
goal: a frobbing widget
priority: high
result_criteria:
  - the widget frobs
  - description: the tests pass
    check:
      kind: command_success
      command: [pytest, -q]
      timeout_s: 120
phases:
  - name: design
    description: Decide
    done_definitions: [design agreed]
  - name: build
    required: false
tasks:
  - key: spec-it
    phase: design
    title: Write the spec
    type: design
    priority: critical
  - key: code-it
    phase: build
    title: Write the code
    depends_on: [spec-it]
    validation: true
  - key: doc-it
    phase: build
    title: Document it
    type: documentation
    depends_on: [spec-it, code-it]
    priority: low
agents:
  - name: alice
  - name: val
    kind: validator
  - name: bob
    runtime: local-process
    command: [python, -m, agent, "{ticket_id}", "{agent_name}"]
    env: {FOO: bar}
    cwd: /tmp
policy:
  results:
    on_result_found: do_nothing
    max_content_bytes: 2048
  tasks:
    max_retries: 1
    max_tasks_per_agent: 2
  stuck:
    cooldown_s: 5
  health:
    idle_deadline_s: 9
  validation:
    max_iterations: 4
"""

MINIMAL: dict[str, Any] = {"id": "t1", "title": "A ticket"}


def write(tmp_path: Path, text: str, name: str = "ticket.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def spec_error(tmp_path: Path, raw: Any) -> str:
    """Load ``raw`` (dumped as YAML) and return the SpecError message it must raise."""
    import yaml

    path = write(tmp_path, yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value)


def with_(**fields: Any) -> dict[str, Any]:
    return {**MINIMAL, **fields}


# ---- loading -------------------------------------------------------------------------------


def test_full_spec_loads(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, FULL_SPEC))
    assert spec.id == "build-widget"
    assert spec.priority == "high"
    assert spec.description == "A widget that frobs.\n"
    assert [p.name for p in spec.phases] == ["design", "build"]
    assert spec.phases[0].done_definitions == ["design agreed"]
    assert spec.phases[1].required is False
    assert [(t.key, t.phase, t.priority, t.depends_on) for t in spec.tasks] == [
        ("spec-it", "design", "critical", []),
        ("code-it", "build", "normal", ["spec-it"]),
        ("doc-it", "build", "low", ["spec-it", "code-it"]),
    ]
    assert spec.tasks[0].type == "design"
    assert spec.tasks[1].validation is True
    assert [(a.name, a.kind, a.runtime) for a in spec.agents] == [
        ("alice", "worker", "external"),
        ("val", "validator", "external"),
        ("bob", "worker", "local-process"),
    ]
    assert spec.agents[2].command == ["python", "-m", "agent", "{ticket_id}", "{agent_name}"]
    assert spec.agents[2].env == {"FOO": "bar"}
    # Policy overrides apply; the fields not overridden keep their defaults.
    policy = spec.policy
    assert policy.results.on_result_found == "do_nothing"
    assert policy.results.max_content_bytes == 2048
    assert policy.results.max_file_bytes == 1 * MB
    assert policy.tasks.max_retries == 1
    assert policy.tasks.max_tasks_per_agent == 2
    assert policy.tasks.max_result_bytes == 100 * KB
    assert policy.stuck.cooldown_s == 5
    assert policy.stuck.window_s == 60
    assert policy.health.idle_deadline_s == 9
    assert policy.health.running_deadline_s == 15
    assert policy.validation.max_iterations == 4
    assert policy.validation.validator_timeout_s == 600


def test_criteria_shorthand_and_full_form(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, FULL_SPEC))
    assert spec.criteria_text() == ["the widget frobs", "the tests pass"]
    assert spec.result_criteria[0].check is None
    check = spec.result_criteria[1].check
    assert check is not None and check.kind == "command_success"
    assert check.command == ["pytest", "-q"] and check.timeout_s == 120


def test_json_file_loads(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps(with_(result_criteria=["works"])), name="t.json")
    spec = load_spec(path)
    assert spec.id == "t1" and spec.criteria_text() == ["works"]


def test_defaults_match_design(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "id: t1\ntitle: A ticket\n"))
    assert [p.name for p in spec.phases] == ["requirements", "implementation", "testing"]
    assert all(p.description and p.done_definitions for p in spec.phases)
    assert spec.priority == "normal"
    assert spec.tasks == [] and spec.agents == [] and spec.result_criteria == []
    p = spec.policy
    assert p.results.on_result_found == "stop_all"
    assert p.results.max_content_bytes == 1024 * 1024
    assert p.results.max_file_bytes == 1024 * 1024
    assert p.tasks.max_result_bytes == 100 * 1024
    assert p.tasks.max_retries == 3
    assert p.stuck.cooldown_s == 60
    assert p.stuck.window_s == 60
    assert p.health.idle_deadline_s == 30
    assert p.health.running_deadline_s == 15
    assert p.validation.max_iterations == 10
    assert p.validation.validator_timeout_s == 600
    # Seed-task defaults.
    task = parse_spec(
        with_(
            tasks=[{"key": "a", "phase": "testing", "title": "A"}],
        )
    ).tasks[0]
    assert (task.type, task.priority, task.depends_on, task.validation) == (
        "implementation",
        "normal",
        [],
        False,
    )


def test_default_phases_are_not_shared_between_specs() -> None:
    a = TicketSpec.model_validate(MINIMAL)
    b = TicketSpec.model_validate(MINIMAL)
    assert a.phases is not b.phases
    assert [p.name for p in a.phases] == [p.name for p in DEFAULT_PHASES]


def test_boost_caps_at_critical() -> None:
    assert boost("low") == "normal"
    assert boost("normal", 2) == "critical"
    assert boost("critical") == "critical"


# ---- invalid specs: the message names the field and the rule -------------------------------


def test_unknown_field_is_a_typo(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, with_(titel="x"))
    assert "titel" in msg and "Extra inputs are not permitted" in msg


def test_unknown_nested_policy_field(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, with_(policy={"tasks": {"max_retires": 2}}))
    assert "policy.tasks.max_retires" in msg and "Extra inputs are not permitted" in msg


def test_unknown_field_in_task(tmp_path: Path) -> None:
    msg = spec_error(
        tmp_path, with_(tasks=[{"key": "a", "phase": "testing", "title": "A", "dependson": []}])
    )
    assert "tasks[0].dependson" in msg and "Extra inputs" in msg


@pytest.mark.parametrize("bad", ["Bad-Id", "has space", "-leading", "", "x" * 64, "a/b"])
def test_bad_id_slug(tmp_path: Path, bad: str) -> None:
    msg = spec_error(tmp_path, with_(id=bad))
    assert "  id: " in msg and "should match pattern" in msg


def test_bad_task_key_slug(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, with_(tasks=[{"key": "Key A", "phase": "testing", "title": "A"}]))
    assert "tasks[0].key" in msg and "should match pattern" in msg


def test_missing_required_field(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, {"id": "t1"})
    assert "title: Field required" in msg


def test_unknown_phase_in_task(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, with_(tasks=[{"key": "a", "phase": "deploy", "title": "A"}]))
    assert "tasks[0].phase: unknown phase 'deploy'" in msg
    assert "requirements" in msg  # lists the phases that do exist


def test_unknown_dependency_key(tmp_path: Path) -> None:
    tasks = [
        {"key": "a", "phase": "testing", "title": "A"},
        {"key": "b", "phase": "testing", "title": "B", "depends_on": ["a", "zzz"]},
    ]
    msg = spec_error(tmp_path, with_(tasks=tasks))
    assert "tasks[1].depends_on: unknown task key 'zzz'" in msg


def test_self_dependency(tmp_path: Path) -> None:
    tasks = [{"key": "a", "phase": "testing", "title": "A", "depends_on": ["a"]}]
    msg = spec_error(tmp_path, with_(tasks=tasks))
    assert "tasks[0].depends_on: a task cannot depend on itself" in msg


def test_dependency_cycle_shows_the_cycle(tmp_path: Path) -> None:
    tasks = [
        {"key": "a", "phase": "testing", "title": "A", "depends_on": ["b"]},
        {"key": "b", "phase": "testing", "title": "B", "depends_on": ["c"]},
        {"key": "c", "phase": "testing", "title": "C", "depends_on": ["a"]},
        {"key": "d", "phase": "testing", "title": "D", "depends_on": ["a"]},
    ]
    msg = spec_error(tmp_path, with_(tasks=tasks))
    assert "tasks[0].depends_on: dependency cycle a -> b -> c -> a" in msg


def test_diamond_is_not_a_cycle() -> None:
    tasks = [
        {"key": "top", "phase": "testing", "title": "T", "depends_on": ["l", "r"]},
        {"key": "l", "phase": "testing", "title": "L", "depends_on": ["base"]},
        {"key": "r", "phase": "testing", "title": "R", "depends_on": ["base"]},
        {"key": "base", "phase": "testing", "title": "B"},
    ]
    assert len(parse_spec(with_(tasks=tasks)).tasks) == 4


@settings(max_examples=150, deadline=None)
@given(
    st.integers(min_value=1, max_value=7).flatmap(
        lambda n: st.lists(
            st.lists(st.integers(min_value=0, max_value=n - 1), unique=True, max_size=3),
            min_size=n,
            max_size=n,
        )
    )
)
def test_cycle_detection_agrees_with_graphlib(edges: list[list[int]]) -> None:
    """Accepted exactly when graphlib finds no cycle; a reported cycle is a real one."""
    keys = [f"k{i}" for i in range(len(edges))]
    graph = {keys[i]: [keys[j] for j in deps] for i, deps in enumerate(edges)}
    raw = with_(
        tasks=[
            {"key": k, "phase": "testing", "title": k, "depends_on": deps}
            for k, deps in graph.items()
        ]
    )
    self_dep = any(k in deps for k, deps in graph.items())
    try:
        graphlib.TopologicalSorter(graph).prepare()
        acyclic = True
    except graphlib.CycleError:
        acyclic = False
    if acyclic:
        parse_spec(raw)
        return
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    msg = str(info.value)
    if self_dep:
        assert "cannot depend on itself" in msg
        return
    line = next(s for s in msg.splitlines() if "dependency cycle" in s)
    cycle = line.split("dependency cycle ", 1)[1].split(" -> ")
    assert cycle[0] == cycle[-1] and len(cycle) >= 3
    for a, b in itertools.pairwise(cycle):
        assert b in graph[a], f"{a} -> {b} is not an edge of {graph}"


def test_duplicate_task_keys(tmp_path: Path) -> None:
    tasks = [
        {"key": "a", "phase": "testing", "title": "A"},
        {"key": "a", "phase": "testing", "title": "A again"},
    ]
    assert "tasks[1].key: duplicate task key 'a'" in spec_error(tmp_path, with_(tasks=tasks))


def test_duplicate_phase_names(tmp_path: Path) -> None:
    phases = [{"name": "build"}, {"name": "build"}]
    msg = spec_error(tmp_path, with_(phases=phases))
    assert "phases[1].name: duplicate phase name 'build'" in msg


def test_duplicate_agent_names(tmp_path: Path) -> None:
    agents = [{"name": "alice"}, {"name": "alice", "kind": "validator"}]
    msg = spec_error(tmp_path, with_(agents=agents))
    assert "agents[1].name: duplicate agent name 'alice'" in msg


def test_empty_phase_list(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, with_(phases=[]))
    assert "phases: List should have at least 1 item" in msg


def test_local_process_agent_needs_command(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, with_(agents=[{"name": "bob", "runtime": "local-process"}]))
    assert "agents[0]: command is required when runtime is local-process" in msg


def test_unknown_enum_values(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, with_(agents=[{"name": "x", "kind": "manager"}]))
    assert "agents[0].kind" in msg and "worker" in msg
    msg = spec_error(tmp_path, with_(policy={"results": {"on_result_found": "stop"}}))
    assert "policy.results.on_result_found" in msg and "stop_all" in msg


@pytest.mark.parametrize(
    ("block", "field", "value", "rule"),
    [
        ("tasks", "max_retries", -1, "greater than or equal to 0"),
        ("tasks", "max_result_bytes", 0, "greater than 0"),
        ("tasks", "max_result_bytes", 100 * KB + 1, "less than or equal to 102400"),
        ("tasks", "max_tasks_per_agent", 0, "greater than or equal to 1"),
        ("results", "max_content_bytes", 0, "greater than 0"),
        ("results", "max_content_bytes", MB + 1, "less than or equal to 1048576"),
        ("results", "max_file_bytes", -5, "greater than 0"),
        ("stuck", "cooldown_s", 0, "greater than 0"),
        ("stuck", "window_s", -1, "greater than 0"),
        ("stuck", "max_runs", 0, "greater than or equal to 1"),
        ("health", "idle_deadline_s", 0, "greater than 0"),
        ("health", "running_deadline_s", -15, "greater than 0"),
        ("health", "restart_cooldown_s", -1, "greater than or equal to 0"),
        ("validation", "max_iterations", 0, "greater than or equal to 1"),
        ("validation", "validator_timeout_s", 0, "greater than 0"),
    ],
)
def test_bad_policy_numbers(tmp_path: Path, block: str, field: str, value: int, rule: str) -> None:
    msg = spec_error(tmp_path, with_(policy={block: {field: value}}))
    assert f"policy.{block}.{field}: " in msg and rule in msg


def test_zero_retries_is_allowed() -> None:
    assert parse_spec(with_(policy={"tasks": {"max_retries": 0}})).policy.tasks.max_retries == 0


def test_every_error_is_listed(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, {"id": "BAD", "titel": "x"})
    lines = msg.splitlines()
    assert lines[0].endswith("invalid ticket spec")
    assert any(s.startswith("  id: ") for s in lines)
    assert any(s.startswith("  title: Field required") for s in lines)
    assert any(s.startswith("  titel: Extra inputs") for s in lines)


def test_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(SpecError, match=r"missing\.yaml: no such file"):
        load_spec(path)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "id: t1\ntitle: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML/JSON"):
        load_spec(path)


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("", "NoneType")]
)
def test_non_mapping_yaml(tmp_path: Path, text: str, kind: str) -> None:
    with pytest.raises(SpecError, match=f"a ticket spec is a mapping .*got {kind}"):
        load_spec(write(tmp_path, text))


def test_spec_error_is_a_value_error_with_the_source(tmp_path: Path) -> None:
    path = write(tmp_path, textwrap.dedent("id: t1\ntitle: ''\n"))
    with pytest.raises(ValueError) as info:
        load_spec(path)
    assert isinstance(info.value, SpecError)
    assert str(info.value).startswith(f"{path}: invalid ticket spec")
    assert "title: String should have at least 1 character" in str(info.value)


def test_directory_is_not_a_spec(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"id: t1\ntitle: caf\xe9\n")
    with pytest.raises(SpecError, match="not UTF-8 text"):
        load_spec(path)


def test_a_dependency_listed_twice_is_refused() -> None:
    raw = {
        "id": "dup-deps",
        "title": "t",
        "tasks": [
            {"key": "a", "phase": "requirements", "title": "A"},
            {"key": "b", "phase": "requirements", "title": "B", "depends_on": ["a", "a"]},
        ],
    }
    with pytest.raises(SpecError, match=r"tasks\[1\]\.depends_on: lists a task key twice"):
        parse_spec(raw)


def test_every_problem_is_reported_at_once_one_line_each(tmp_path: Path) -> None:
    """Field errors and whole-spec errors together, one path style, no ``(root)``."""
    tasks = [
        {"key": "a", "phase": "implementation", "title": "A", "depends_on": ["c"]},
        {"key": "b", "phase": "deploy", "title": "B", "depends_on": ["nope"]},
        {"key": "c", "phase": "testing", "title": "C", "depends_on": ["a"], "priority": "urgent"},
        {"key": "a", "phase": "testing", "title": "", "depends_on": ["a"]},
    ]
    msg = spec_error(tmp_path, with_(tasks=tasks))
    lines = msg.splitlines()[1:]
    assert lines == [
        "  tasks[2].priority: Input should be 'low', 'normal', 'high' or 'critical'",
        "  tasks[3].title: String should have at least 1 character",
        "  tasks[3].key: duplicate task key 'a'",
        "  tasks[1].phase: unknown phase 'deploy' (phases: "
        "['requirements', 'implementation', 'testing'])",
        "  tasks[1].depends_on: unknown task key 'nope'",
        "  tasks[3].depends_on: a task cannot depend on itself",
        "  tasks[0].depends_on: dependency cycle a -> c -> a",
    ]
    assert "(root)" not in msg and ".0." not in msg


def test_whole_spec_problems_alone_are_all_reported(tmp_path: Path) -> None:
    tasks = [
        {"key": "a", "phase": "build", "title": "A", "depends_on": ["x", "y"]},
        {"key": "b", "phase": "testing", "title": "B", "depends_on": ["b"]},
    ]
    lines = spec_error(tmp_path, with_(tasks=tasks)).splitlines()[1:]
    assert lines == [
        "  tasks[0].phase: unknown phase 'build' (phases: "
        "['requirements', 'implementation', 'testing'])",
        "  tasks[0].depends_on: unknown task key 'x'",
        "  tasks[0].depends_on: unknown task key 'y'",
        "  tasks[1].depends_on: a task cannot depend on itself",
    ]


def test_spawn_on_demand_needs_a_runtime_that_starts_the_agent(tmp_path: Path) -> None:
    agents = [{"name": "vera", "kind": "validator", "spawn": "on_demand"}]
    msg = spec_error(tmp_path, with_(agents=agents))
    assert "agents[0]: spawn: on_demand needs runtime local-process" in msg
