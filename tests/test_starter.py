"""starter.py in-process against the session's Temporal dev server and worker."""

from __future__ import annotations

import asyncio
import inspect
import json
import stat
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from temporalio.client import Client
from temporalio.common import RawValue
from temporalio.worker import Worker

import starter
from agent_client.session import AgentSession
from infra.settings import Settings
from models.messages import INBOUND, OUTBOUND, StatusView
from models.schema import INDEX_FILE, SIGNALS, UPDATE_REPLIES
from tests.conftest import unique_id
from tests.receiver import Receiver
from tests.ticketkit import join_secret_for
from workflows.ticket import TicketWorkflow

pytestmark = pytest.mark.server

SPEC: dict[str, object] = {
    "id": "starter-spec",
    "title": "Starter test ticket",
    "goal": "Prove the operator commands work",
    "result_criteria": ["the commands print what they should"],
    "tasks": [
        {"key": "reqs", "phase": "requirements", "title": "Write requirements", "type": "analysis"},
        {"key": "build", "phase": "implementation", "title": "Build it", "depends_on": ["reqs"]},
    ],
}


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich sizes tables to COLUMNS when not on a terminal; wide enough for ids and paths."""
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture
def cli(settings: Settings, tmp_path: Path) -> Callable[..., list[str]]:
    """argv builder: the command plus the flags that point it at the session server."""

    def argv(*args: str) -> list[str]:
        return [
            *args,
            "--address",
            settings.temporal_address,
            "--namespace",
            settings.namespace,
            "--task-queue",
            settings.task_queue,
            "--database-url",
            settings.ledger_url,
            "--data-dir",
            str(tmp_path / "data"),
        ]

    return argv


def write_spec(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / f"ticket-{len(list(tmp_path.glob('ticket-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes}), encoding="utf-8")
    return path


async def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    """Run ``starter`` in-process (in this loop, where the session worker polls)."""
    code = await starter.run(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def eventually(check: Callable[[], typing.Awaitable[bool]], timeout: float = 15) -> None:
    """Visibility is eventually consistent: retry ``check`` until it holds or time runs out."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


async def test_launch_status_list_cancel(
    worker: Worker,
    client: Client,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    cli: Callable[..., list[str]],
    tmp_path: Path,
) -> None:
    ticket_id = unique_id("starter")
    code, out, err = await run(capsys, cli("launch", str(write_spec(tmp_path)), "--id", ticket_id))
    assert code == 0, err
    assert f"Launched ticket {ticket_id}" in out
    assert f"/namespaces/default/workflows/{ticket_id}" in out
    token_file = tmp_path / "data" / "operators" / f"{ticket_id}.token"
    assert str(token_file) in out
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(token_file.read_text().strip()) >= 40

    description = await client.get_workflow_handle(ticket_id).describe()
    assert description.task_queue == settings.task_queue
    assert await description.static_summary() == (
        "Starter test ticket · 2 tasks · requirements → implementation → testing"
    )
    details = await description.static_details()
    assert details is not None
    assert "Prove the operator commands work" in details
    assert "- the commands print what they should" in details

    # The same id again is refused, and the first ticket's token stays as it was.
    token = token_file.read_text()
    code, _, err = await run(capsys, cli("launch", str(write_spec(tmp_path)), "--id", ticket_id))
    assert code == 1
    assert f"ticket {ticket_id} already exists" in err
    assert token_file.read_text() == token

    code, out, err = await run(capsys, cli("status", ticket_id))
    assert code == 0, err
    assert "Tasks by phase" in out
    assert "Write requirements" in out and "Build it" in out
    assert "ticket_started" in out

    code, out, _ = await run(capsys, cli("status", ticket_id, "--json"))
    assert code == 0
    view = StatusView.model_validate_json(out)
    assert (view.ticket_id, view.status, view.open_tasks) == (ticket_id, "open", 2)

    async def listed(status: str) -> bool:
        code, out, _ = await run(capsys, cli("list", "--status", status))
        assert code == 0
        return ticket_id in out

    await eventually(lambda: listed("open"))
    assert not await listed("cancelled")

    code, out, err = await run(capsys, cli("cancel", ticket_id, "--reason", "not needed"))
    assert code == 0, err
    assert f"Ticket {ticket_id} is cancelled" in out
    assert "not needed" in out

    code, out, _ = await run(capsys, cli("status", ticket_id, "--json"))
    assert code == 0
    assert StatusView.model_validate_json(out).status == "cancelled"
    code, out, err = await run(capsys, cli("status", ticket_id))
    assert code == 0, err
    assert "cancelled" in out and "not needed" in out

    await eventually(lambda: listed("cancelled"))
    assert not await listed("open")

    code, out, _ = await run(capsys, cli("timeline", ticket_id))
    assert code == 0
    assert "ticket_started" in out and "ticket_finished" in out

    # watch returns at once for a finished ticket, with its outcome.
    code, out, err = await run(capsys, cli("watch", ticket_id, "--interval", "0.1"))
    assert code == 0, err
    assert f"Ticket {ticket_id} is cancelled" in out

    # A closed ticket cannot be cancelled again; the message says so.
    code, _, err = await run(capsys, cli("cancel", ticket_id, "--reason", "again"))
    assert code == 1
    assert "closed" in err or "cancelled" in err


async def test_cancel_refused_without_or_with_wrong_token(
    worker: Worker,
    capsys: pytest.CaptureFixture[str],
    cli: Callable[..., list[str]],
    tmp_path: Path,
) -> None:
    ticket_id = unique_id("starter-token")
    code, _, err = await run(capsys, cli("launch", str(write_spec(tmp_path)), "--id", ticket_id))
    assert code == 0, err
    token_file = tmp_path / "data" / "operators" / f"{ticket_id}.token"

    token_file.write_text("not-the-token\n")
    code, out, err = await run(capsys, cli("cancel", ticket_id, "--reason", "try"))
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "operator_token: does not match the ticket's operator token" in err
    assert "Traceback" not in err + out

    token_file.unlink()
    for command in ("cancel", "diagnose"):
        code, _, err = await run(capsys, cli(command, ticket_id, "--reason", "try"))
        assert code == 1
        assert f"no operator token for ticket {ticket_id}" in err

    code, out, _ = await run(capsys, cli("status", ticket_id, "--json"))
    assert StatusView.model_validate_json(out).status == "open"


async def test_result_from_workflow_then_ledger(
    worker: Worker,
    client: Client,
    capsys: pytest.CaptureFixture[str],
    cli: Callable[..., list[str]],
    tmp_path: Path,
) -> None:
    ticket_id = unique_id("starter-result")
    spec = write_spec(tmp_path, tasks=[])
    code, _, err = await run(capsys, cli("launch", str(spec), "--id", ticket_id))
    assert code == 0, err

    code, _, err = await run(capsys, cli("result", ticket_id))
    assert code == 1
    assert f"ticket {ticket_id} has no final result yet" in err

    content = "# The result\n\n- [x] the commands print what they should\n"
    async with AgentSession(client, ticket_id, name="writer") as writer:
        await writer.submit_result(content)
    code, out, err = await run(capsys, cli("result", ticket_id))
    assert code == 0, err
    assert "pending_validation" in out and "from the workflow" in out
    assert "The result" in out

    async with AgentSession(client, ticket_id, name="judge", kind="validator") as judge:
        await judge.review_result(1, passed=True, evidence=["read it"])
    await client.get_workflow_handle(ticket_id).result()

    # Validated: the workflow dropped the content; the ledger has it.
    code, out, err = await run(capsys, cli("result", ticket_id, "--version", "1"))
    assert code == 0, err
    assert "validated" in out and "from the ledger" in out
    code, out, _ = await run(capsys, cli("result", ticket_id, "--raw"))
    assert code == 0
    assert out == content

    code, _, err = await run(capsys, cli("result", ticket_id, "--version", "7"))
    assert code == 1
    assert "no result v7" in err


async def test_invalid_spec_exits_2_naming_the_field(
    capsys: pytest.CaptureFixture[str], cli: Callable[..., list[str]], tmp_path: Path
) -> None:
    bad = write_spec(
        tmp_path,
        tasks=[{"key": "a", "phase": "requirements", "title": "A", "priority": "urgent"}],
    )
    code, out, err = await run(capsys, cli("launch", str(bad)))
    assert code == 2
    assert "invalid ticket spec" in err
    assert "tasks[0].priority" in err
    assert "Traceback" not in err + out

    code, _, err = await run(capsys, cli("launch", str(tmp_path / "missing.yaml")))
    assert code == 2
    assert "no such file" in err

    code, _, err = await run(capsys, cli("launch", str(write_spec(tmp_path)), "--id", "Not A Slug"))
    assert code == 2
    assert "id:" in err


async def test_unknown_ticket_and_unreachable_server(
    worker: Worker,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    cli: Callable[..., list[str]],
) -> None:
    missing = unique_id("no-such-ticket")
    for command in ("status", "timeline", "result"):
        code, out, err = await run(capsys, cli(command, missing))
        assert code == 1, command
        assert err == (
            f"error: ticket {missing} not found in namespace 'default' at "
            f"{settings.temporal_address}\n"
        )
        assert out == ""

    code, _, err = await run(capsys, ["status", "x", "--address", "127.0.0.1:1"])
    assert code == 1
    assert err.startswith("error: cannot reach the Temporal server at 127.0.0.1:1")
    assert err.count("\n") == 1


async def test_usage_errors_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert await starter.run(["--help"]) == 0
    assert "launch" in capsys.readouterr().out
    commands = ("launch", "list", "status", "timeline", "watch", "result", "cancel", "diagnose")
    for command in (*commands, "schema", "demo"):
        assert await starter.run([command, "--help"]) == 0
        assert "--address" in capsys.readouterr().out
    assert await starter.run(["cancel", "some-ticket"]) == 2
    assert "--reason" in capsys.readouterr().err
    assert await starter.run(["list", "--status", "weird"]) == 2


async def test_schema_writes_every_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "schemas"
    code, out, err = await run(capsys, ["schema", "--out", str(out_dir)])
    assert code == 0, err

    expected = ["TicketSpec", "TicketInput"] + [m.__name__ for m in INBOUND.values()]
    expected += list(OUTBOUND)
    for name in expected:
        assert name in out
        schema = json.loads((out_dir / f"{name}.schema.json").read_text())
        assert schema["title"] == name
        assert schema["$schema"].startswith("https://json-schema.org/")

    index = json.loads((out_dir / INDEX_FILE).read_text())
    by_message = {e["message"]: e for e in index["schemas"] if "message" in e}
    assert set(by_message) == set(INBOUND)
    assert by_message["register"] == {
        "name": "RegisterAgent",
        "file": "RegisterAgent.schema.json",
        "role": "inbound",
        "message": "register",
        "handler": "update",
        "reply": "Registration",
    }
    assert by_message["heartbeat"]["handler"] == "signal"
    # A sender's schema: defaults are optional, unknown fields refused.
    register = json.loads((out_dir / "RegisterAgent.schema.json").read_text())
    assert register["required"] == ["name"]
    assert register["additionalProperties"] is False


def test_schema_index_matches_the_workflow() -> None:
    """The published update/signal table is what TicketWorkflow actually declares."""
    for name, message in INBOUND.items():
        handler = getattr(TicketWorkflow, name)
        hints = typing.get_type_hints(handler)
        if name in SIGNALS:
            assert hints["msg"] is message, name
        else:  # updates decode their own payload (a refusal names the field)
            assert hints["raw"] is RawValue, name
            assert f"_decode({message.__name__}, raw" in inspect.getsource(handler), name
        if name in SIGNALS:
            assert hasattr(handler, "__temporal_signal_definition"), name
        else:
            reply = hints["return"].__name__
            assert UPDATE_REPLIES.get(name) == reply, (
                f"models.schema.UPDATE_REPLIES[{name!r}] must be {reply!r}"
            )
            assert reply in OUTBOUND, f"{reply} is missing from models.messages.OUTBOUND"
    assert set(UPDATE_REPLIES) | SIGNALS == set(INBOUND)


async def test_diagnose_then_diagnoses_lists_the_run_with_its_hypotheses(
    worker: Worker,
    client: Client,
    capsys: pytest.CaptureFixture[str],
    cli: Callable[..., list[str]],
    tmp_path: Path,
) -> None:
    ticket_id = unique_id("starter-diag")
    code, _, err = await run(capsys, cli("launch", str(write_spec(tmp_path)), "--id", ticket_id))
    assert code == 0, err
    code, out, _ = await run(capsys, cli("diagnoses", ticket_id))
    assert code == 0 and "has not been diagnosed yet" in out
    code, out, err = await run(capsys, cli("diagnose", ticket_id, "--reason", "just looking"))
    assert code == 0, err
    assert f"{ticket_id}-diagnosis-1" in out
    handle = client.get_workflow_handle(ticket_id)

    async def completed() -> bool:
        runs = await handle.query("diagnoses")
        return bool(runs) and runs[0]["status"] == "completed"

    await eventually(completed)
    code, out, err = await run(capsys, cli("diagnoses", ticket_id))
    assert code == 0, err
    assert "manual" in out and "completed" in out
    assert f"{ticket_id}-diagnosis-1 · rules" in out
    assert "Traceback" not in out + err
    code, _, err = await run(capsys, cli("diagnoses", "no-such-ticket-xyz"))
    assert code == 1 and err.startswith("error: ")


async def test_release_refuses_an_agent_that_is_not_quarantined(
    worker: Worker,
    client: Client,
    capsys: pytest.CaptureFixture[str],
    cli: Callable[..., list[str]],
    tmp_path: Path,
    settings: Settings,
) -> None:
    ticket_id = unique_id("starter-release")
    code, _, err = await run(capsys, cli("launch", str(write_spec(tmp_path)), "--id", ticket_id))
    assert code == 0, err
    reg = await client.get_workflow_handle(ticket_id).execute_update(
        "register", {"name": "alice", "join_secret": join_secret_for(settings, ticket_id)}
    )
    code, out, err = await run(capsys, cli("release", ticket_id, reg["agent_id"]))
    assert code == 1 and err.startswith("error: ")
    assert "alice-1 is idle, not quarantined" in err
    assert "Traceback" not in out + err
    code, _, err = await run(capsys, cli("release", ticket_id, "nobody-9"))
    assert code == 1 and "unknown agent 'nobody-9'" in err


async def test_a_query_failing_in_transit_is_asked_again_and_a_refusal_is_not() -> None:
    from temporalio.service import RPCError, RPCStatusCode

    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RPCError("h2 protocol error: http2 error", RPCStatusCode.UNKNOWN, b"")
        return "answer"

    assert await starter._read(flaky) == "answer" and len(calls) == 3

    async def missing() -> str:
        calls.append(1)
        raise RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b"")

    calls.clear()
    with pytest.raises(RPCError):
        await starter._read(missing)
    assert len(calls) == 1


async def test_escalations_ack_answer_and_resolve_from_the_command_line(
    worker: Worker,
    client: Client,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
    cli: Callable[..., list[str]],
    tmp_path: Path,
) -> None:
    ticket_id = unique_id("people")
    pager = Receiver()  # down: the delivery waits, and `escalations` says why
    sinks = [{"name": "pager", "kind": "webhook", "url": pager.url}]
    policy = {"escalation": {"sinks": sinks, "retry_max_interval_s": 1}}
    spec = write_spec(tmp_path, policy=policy)
    code, _, err = await run(capsys, cli("launch", str(spec), "--id", ticket_id))
    assert code == 0, err
    try:
        async with AgentSession(client, ticket_id, name="alice") as alice:
            task = await alice.claim()
            assert task is not None
            qid = (await alice.ask_human("May I change the public API?", task.id)).question_id

            async def listed() -> bool:
                code, out, _ = await run(capsys, cli("escalations"))
                return code == 0 and qid in out and "May I change the public API?" in out

            await eventually(listed)  # across tickets: from the visibility store

            async def why_late() -> bool:
                code, out, _ = await run(capsys, cli("escalations", ticket_id))
                assert code == 0 and "SEV-3" in out and "trigger pending" in out
                return "ConnectError" in out  # the last error, from the delivery's heartbeat

            await eventually(why_late)

            code, _, err = await run(capsys, cli("ack", "not-an-id"))
            assert code == 2 and "ESCALATION_ID: 'not-an-id' is not an escalation id" in err
            other = qid.replace("agent_question", "diagnosis_guard")
            code, _, err = await run(capsys, cli("answer", other, "yes"))
            assert code == 2 and "is not an agent's question" in err

            code, out, err = await run(capsys, cli("ack", qid, "--operator", "olga"))
            assert code == 0, err
            assert f"Acknowledged {qid} (SEV-3) by olga" in " ".join(out.split())
            code, out, err = await run(
                capsys, cli("answer", qid, "No: keep it stable", "--operator", "olga")
            )
            assert code == 0, err
            assert "The answer is in alice-1's inbox." in " ".join(out.split())
            answer = await alice.wait_for_answer(qid, timeout=10, poll_s=0.1)
            assert answer is not None and answer.answer == "No: keep it stable"

            # A second resolve that says something else is refused: the agent got the first.
            code, _, err = await run(
                capsys, cli("resolve", qid, "--note", "Yes after all", "--operator", "olga")
            )
            assert code == 1 and "already resolved by olga" in err
            code, out, _ = await run(capsys, cli("escalations", ticket_id))
            assert code == 0 and "No open escalations." in out
            code, out, _ = await run(capsys, cli("escalations", ticket_id, "--all"))
            assert code == 0 and "resolved" in out and "No: keep it stable" in out
        pager.up()  # the three messages go out once it is back
        await eventually(lambda: _async(len(pager.ok()) == 3), timeout=30)
        assert [event for event, _ in pager.events()] == ["trigger", "acknowledge", "resolve"]
    finally:
        pager.down()


async def _async(value: bool) -> bool:
    return value
