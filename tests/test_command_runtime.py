"""The ``command`` runtime: a coding CLI as a ticket's agent, one run per task.

A fake CLI (tests/fakes/fake_claude.py) prints Claude Code's stream-json; no network. On
the session's real server the worker starts the command agent as a real process, which
claims, runs the CLI, streams its notes, completes with its final message; a reviewer's
feedback reaches the next prompt; a CLI that hangs is killed at its timeout and the task
fails with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client

from agent_client.session import AgentSession
from agents.command_agent import CliOutput, cli_environment, fit, run_cli
from core.state import TicketState
from infra.settings import Settings
from models.messages import encoded_size
from models.spec import AgentSpec, load_spec, parse_spec
from runtimes.local_process import read_stat
from tests.conftest import unique_id
from tests.ticketkit import launch, spec_dict

FAKE_CLAUDE = Path(__file__).resolve().parent / "fakes" / "fake_claude.py"

CLAUDE_LINES = [
    {"type": "system", "subtype": "init", "session_id": "s1", "tools": ["Bash"]},
    {
        "type": "assistant",
        "message": {
            "content": [
                {"type": "text", "text": "I'll look at the tests."},
                {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "pytest"}},
            ]
        },
    },
    {"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": "t1"}]}},
    {"type": "result", "subtype": "success", "is_error": False, "result": "## Fixed\n\nAll green."},
]
CODEX_LINES = [
    {"type": "thread.started", "thread_id": "th1"},
    {"type": "turn.started"},
    {"type": "item.started", "item": {"id": "i1", "type": "command_execution", "command": "ls"}},
    {"type": "item.completed", "item": {"id": "i2", "type": "agent_message", "text": "Draft"}},
    {"type": "item.completed", "item": {"id": "i3", "type": "agent_message", "text": "Final"}},
    {"type": "turn.completed", "usage": {"input_tokens": 10, "output_tokens": 5}},
]


def feed(fmt: str, lines: list[Any]) -> tuple[CliOutput, list[str]]:
    out = CliOutput(fmt)
    notes = [
        n for line in lines if (n := out.feed(line if isinstance(line, str) else json.dumps(line)))
    ]
    return out, notes


def test_claude_stream_json_gives_notes_and_the_final_result() -> None:
    out, notes = feed("claude-stream-json", CLAUDE_LINES)
    assert notes == ["I'll look at the tests. · tool Bash"]
    assert out.result() == "## Fixed\n\nAll green." and out.error is None
    failed, _ = feed(
        "claude-stream-json",
        [
            {
                "type": "result",
                "subtype": "error_max_turns",
                "is_error": True,
                "errors": ["reached 10 turns"],
            }
        ],
    )
    assert failed.result() is None and failed.error == "error_max_turns: reached 10 turns"
    api, _ = feed(
        "claude-stream-json",
        [{"type": "result", "subtype": "success", "is_error": True, "result": "API error 529"}],
    )
    assert api.error == "success: API error 529"  # is_error wins over the subtype


def test_codex_json_takes_the_last_agent_message() -> None:
    out, notes = feed("codex-json", [*CODEX_LINES, "not json at all"])
    assert out.result() == "Final"
    assert notes == ["running: ls", "Draft", "Final", "not json at all"]
    failed, _ = feed("codex-json", [{"type": "turn.failed", "error": {"message": "quota"}}])
    assert failed.error == "quota" and failed.result() is None
    older, _ = feed(
        "codex-json",
        [{"type": "item.completed", "item": {"item_type": "assistant_message", "text": "Old"}}],
    )
    assert older.result() == "Old"


def test_plain_text_output_is_the_result() -> None:
    out, notes = feed("text", ["Applied edit to app.py\n", "\n", "Commit abc123\n"])
    assert notes == ["Applied edit to app.py", "Commit abc123"]
    assert out.result() == "Applied edit to app.py\n\nCommit abc123"


def test_a_result_is_cut_to_its_limit_as_json() -> None:
    text = "\u0001" * 50_000  # 300 KB as JSON
    cut = fit(text, 100_000)
    assert encoded_size(cut) <= 100_000 and cut.endswith(
        "(truncated: the whole output is in the agent's log)"
    )
    assert fit("short", 100) == "short"


async def test_a_hanging_cli_is_killed_with_its_children_at_the_timeout(tmp_path: Path) -> None:
    notes: list[str] = []

    async def note(text: str) -> None:
        notes.append(text)

    os.environ["FAKE_CLI_HANG"] = "1"
    try:
        run = await run_cli(
            [sys.executable, str(FAKE_CLAUDE), "-p", "hello"],
            stdin_text=None,
            cwd=tmp_path,
            timeout_s=1.5,
            output="claude-stream-json",
            on_note=note,
        )
    finally:
        del os.environ["FAKE_CLI_HANG"]
    assert run.timed_out and not run.ok
    assert run.failure(1.5).startswith("timed out after 1.5 s; the CLI was killed")
    assert 1.5 <= run.seconds < 10
    child = int(run.stderr_tail.split("CHILD_PID ")[1].split()[0])
    for _ in range(50):  # the CLI's child went with it (a zombie nobody reaps is gone too)
        stat = read_stat(child)
        if stat is None or stat.state in ("Z", "X"):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"the CLI's child {child} survived the kill")


async def test_an_exit_code_fails_with_the_stderr_tail(tmp_path: Path) -> None:
    os.environ["FAKE_CLI_EXIT"] = "3"

    async def note(text: str) -> None:
        return None

    try:
        run = await run_cli(
            [sys.executable, str(FAKE_CLAUDE)],
            stdin_text="the prompt on stdin",
            cwd=tmp_path,
            timeout_s=30,
            output="claude-stream-json",
            on_note=note,
        )
    finally:
        del os.environ["FAKE_CLI_EXIT"]
    assert run.exit_code == 3
    reason = run.failure(30)
    assert reason.startswith("the CLI exited with code 3; stderr tail:")
    assert "fatal: could not read the repository" in reason


def test_the_command_runtime_needs_a_command_and_runs_no_validator() -> None:
    with pytest.raises(ValueError, match="command is required when runtime is command"):
        AgentSpec(name="c", runtime="command")
    with pytest.raises(ValueError, match="runtime command runs workers"):
        AgentSpec(name="c", kind="validator", runtime="command", command=["claude"])


# ---- on the real server ----------------------------------------------------------------------


def command_agent(name: str, tmp_path: Path, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "runtime": "command",
        "command": [sys.executable, str(FAKE_CLAUDE), "-p", "{prompt}"],
        "output": "claude-stream-json",
        "cwd": str(tmp_path),
        "env": {"FAKE_CLI_PROMPTS": str(tmp_path / "prompts.jsonl")},
        **fields,
    }


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.mark.usefixtures("worker")
async def test_a_coding_cli_takes_a_ticket_to_a_validated_result(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    spec = spec_dict(
        unique_id("command"),
        tasks=[
            {
                "key": "impl",
                "phase": "implementation",
                "title": "Implement login",
                "validation": True,
            },
            {
                "key": "submit",
                "phase": "testing",
                "title": "Submit the result",
                "type": "submission",
                "depends_on": ["impl"],
            },
        ],
        agents=[command_agent("claude", tmp_path)],
        policy={"health": {"idle_deadline_s": 30, "running_deadline_s": 30}},
    )
    ticket = await launch(client, settings, spec)
    async with AgentSession(client, ticket.ticket_id, name="vera", kind="validator") as vera:
        # First iteration rejected with feedback; the CLI's next prompt must carry it.
        reviewed: list[bool] = []

        async def judge() -> bool:
            task = await vera.claim()
            if task is not None and task.result_content is not None:
                passed = bool(reviewed)
                await vera.review_task(
                    task.id, task.iteration, passed, "" if passed else "add a test for lockout"
                )
                reviewed.append(passed)
            results = await vera.handle.query("results")
            pending = [r for r in results if r["status"] == "pending_validation"]
            if pending:
                await vera.review_result(pending[0]["version"], True, evidence=["read it"])
                return True
            return False

        await until(judge, 60, "the CLI's result to validate")
    state: TicketState = await ticket.handle.query(
        "state", ticket.operator_token, result_type=TicketState
    )
    assert state.status == "completed", state.outcome
    prompts = [json.loads(line) for line in (tmp_path / "prompts.jsonl").read_text().splitlines()]
    assert any("add a test for lockout" in p for p in prompts), prompts
    impl = state.tasks["T1"]
    assert impl.status == "done" and impl.iteration == 2
    assert "Addressed the review feedback" in (impl.result_preview or "")
    notes = [e.message for e in state.timeline if e.kind == "progress"]
    assert any("Working on it" in n for n in notes), notes  # streamed from the CLI
    assert state.results[0].preview.startswith("## Done")


@pytest.mark.usefixtures("worker")
async def test_a_hanging_cli_fails_its_task_with_the_reason(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    spec = spec_dict(
        unique_id("command-hang"),
        tasks=[{"key": "impl", "phase": "implementation", "title": "Never ends"}],
        agents=[
            command_agent(
                "hanger",
                tmp_path,
                timeout_s=2,
                env={"FAKE_CLI_HANG": "1"},
            )
        ],
        policy={"tasks": {"max_retries": 0}},
    )
    ticket = await launch(client, settings, spec)

    async def failed() -> bool:
        state = await ticket.state()
        return state.tasks["T1"].status == "failed"

    await until(failed, 60, "the hanging CLI's task to fail")
    state = await ticket.state()
    reason = state.tasks["T1"].failure_reason or ""
    assert reason.startswith("timed out after 2 s; the CLI was killed"), reason
    await ticket.handle.terminate("command runtime test done")
    parse_spec(spec)  # the spec as written is valid


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "agents"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_agent_example_loads(path: Path) -> None:
    spec = load_spec(path)
    assert [a.runtime for a in spec.agents] == ["command"]
    assert spec.tasks and spec.result_criteria


@pytest.mark.usefixtures("worker")
async def test_the_shell_script_example_runs_for_real(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    raw = yaml.safe_load((EXAMPLES / "shell-script.yaml").read_text(encoding="utf-8"))
    raw["id"] = unique_id("inventory")
    raw["agents"][0]["cwd"] = str(tmp_path)
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    ticket = await launch(client, settings, raw)
    async with AgentSession(client, ticket.ticket_id, name="vera", kind="validator") as vera:

        async def validated() -> bool:
            results = await vera.handle.query("results")
            pending = [r for r in results if r["status"] == "pending_validation"]
            if pending:
                await vera.review_result(pending[0]["version"], True, evidence=["counted"])
                return True
            return False

        await until(validated, 60, "the script's inventory")
    state = await ticket.state()
    content = state.results[0].preview
    assert content.startswith("## Inventory") and "Files here: 2" in content, content
    assert "Asked: You are script, an agent working on ticket" in content  # prompt on stdin


async def test_a_huge_line_neither_stalls_the_cli_nor_reaches_it_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 12 MB line of output is read in pieces (the CLI never blocks on a full pipe), and
    the CLI runs without Unstuck's own settings and secrets."""
    monkeypatch.setenv("UNSTUCK_JOIN_SECRET", "ujs1_secret")
    monkeypatch.setenv("UNSTUCK_CODEC_KEYS", "k1:secret")
    script = (
        "import os, sys\n"
        "leaked = sorted(k for k in os.environ if k.startswith('UNSTUCK_'))\n"
        "print('leaked:', leaked, os.environ.get('FROM_SPEC'), flush=True)\n"
        "sys.stdout.write('x' * 12_000_000 + '\\n')\n"
        "print('the end')\n"
    )

    async def note(text: str) -> None:
        return None

    run = await run_cli(
        [sys.executable, "-c", script],
        stdin_text=None,
        cwd=tmp_path,
        timeout_s=30,
        output="text",
        on_note=note,
        env=cli_environment({"FROM_SPEC": "yes"}),
    )
    assert run.exit_code == 0 and not run.timed_out and run.seconds < 20
    result = run.result or ""
    assert result.startswith("leaked: [] yes\nxxx") and len(result) <= 2_000_000


@pytest.mark.usefixtures("worker")
async def test_stopping_a_command_agent_stops_its_cli(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    """The CLI runs in a process group of its own: when the ticket stops the agent (its end,
    a restart), the agent kills the CLI and everything it started before it goes."""
    spec = spec_dict(
        unique_id("command-stop"),
        tasks=[{"key": "impl", "phase": "implementation", "title": "Long job"}],
        agents=[command_agent("long", tmp_path, timeout_s=600, env={"FAKE_CLI_HANG": "1"})],
    )
    ticket = await launch(client, settings, spec)
    log_path = settings.data_dir / "agents" / ticket.ticket_id / "long.0.log"

    async def cli_started() -> bool:
        return log_path.is_file() and "CHILD_PID" in log_path.read_text()

    await until(cli_started, 60, "the CLI to start")
    child = int(log_path.read_text().split("CHILD_PID ")[1].split()[0])
    assert read_stat(child) is not None
    await ticket.handle.execute_update(
        "cancel", {"reason": "test: stop the fleet", "operator_token": ticket.operator_token}
    )

    async def cli_gone() -> bool:
        stat = read_stat(child)
        return stat is None or stat.state in ("Z", "X")

    await until(cli_gone, 30, "the CLI's child to be gone")
