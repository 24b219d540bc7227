"""The ``temporal`` CLI as an agent: every message is plain JSON (DESIGN §2.6).

Drives a ticket through the real ``temporal`` binary exactly as docs/cli-agent.md shows:
register, heartbeat, claim, progress, complete, submit the result, review it, query status,
and see the workflow complete. A refused update exits non-zero with the refusal's text.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from infra.devserver import find_temporal_binary
from infra.enrollment import join_hashes, join_key
from infra.settings import Settings
from models.spec import parse_spec
from models.workflow_io import TicketInput
from tests.conftest import unique_id
from tests.ticketkit import join_secret_for

STARTER = Path(__file__).resolve().parent.parent / "starter.py"

pytestmark = pytest.mark.server


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class TemporalCli:
    """``temporal workflow ...`` against the session server, for one ticket."""

    def __init__(self, settings: Settings, ticket_id: str) -> None:
        self.base = [
            str(find_temporal_binary()),
            "--address",
            settings.temporal_address,
            "--namespace",
            settings.namespace,
        ]
        self.ticket_id = ticket_id

    async def run(self, *args: str) -> Ran:
        proc = await asyncio.create_subprocess_exec(
            *self.base,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode is not None
        return Ran(proc.returncode, out.decode(), err.decode())

    async def update(self, name: str, payload: dict[str, Any]) -> Any:
        """``temporal workflow update execute ... -o json``; returns the handler's result."""
        ran = await self.run(
            "workflow",
            "update",
            "execute",
            "--workflow-id",
            self.ticket_id,
            "--name",
            name,
            "--input",
            json.dumps(payload),
            "-o",
            "json",
        )
        assert ran.code == 0, f"update {name} failed: {ran.err}"
        reply = ran.json()
        assert reply["name"] == name
        return reply["result"]

    async def signal(self, name: str, payload: dict[str, Any]) -> None:
        ran = await self.run(
            "workflow",
            "signal",
            "--workflow-id",
            self.ticket_id,
            "--name",
            name,
            "--input",
            json.dumps(payload),
        )
        assert ran.code == 0, f"signal {name} failed: {ran.err}"

    async def query(self, name: str, *inputs: Any) -> Any:
        args = ["workflow", "query", "--workflow-id", self.ticket_id, "--name", name]
        for value in inputs:
            args += ["--input", json.dumps(value)]
        ran = await self.run(*args, "-o", "json")
        assert ran.code == 0, f"query {name} failed: {ran.err}"
        (result,) = ran.json()["queryResult"]
        return result


async def start_ticket(client: Client, settings: Settings, ticket_id: str) -> None:
    spec = parse_spec(
        {
            "id": ticket_id,
            "title": "CLI agent ticket",
            "result_criteria": ["the CLI can do everything an agent does"],
            "tasks": [
                {"key": "write", "phase": "requirements", "title": "Write it", "type": "analysis"}
            ],
        }
    )
    await client.start_workflow(
        "Ticket",
        TicketInput(
            spec=spec,
            operator_token_sha256=hashlib.sha256(b"op-token").hexdigest(),
            join_sha256=join_hashes(join_key(settings.data_dir), ticket_id),
        ),
        id=ticket_id,
        task_queue=settings.task_queue,
    )


async def test_cli_agent_end_to_end(worker: Worker, client: Client, settings: Settings) -> None:
    ticket_id = unique_id("cli-agent")
    await start_ticket(client, settings, ticket_id)
    cli = TemporalCli(settings, ticket_id)

    # As docs/cli-agent.md: the secrets come from `starter.py join-secret`.
    secrets = {}
    for kind in ("worker", "validator"):
        minted = subprocess.run(
            [sys.executable, str(STARTER), "join-secret", ticket_id, "--kind", kind],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "UNSTUCK_DATA_DIR": str(settings.data_dir)},
        )
        secrets[kind] = minted.stdout.strip()
    worker_agent = await cli.update(
        "register", {"name": "cli-worker", "kind": "worker", "join_secret": secrets["worker"]}
    )
    validator = await cli.update(
        "register",
        {"name": "cli-validator", "kind": "validator", "join_secret": secrets["validator"]},
    )
    assert worker_agent["ticket_id"] == ticket_id
    assert worker_agent["agent_id"] != validator["agent_id"]
    me = {"agent_id": worker_agent["agent_id"], "token": worker_agent["token"]}
    judge = {"agent_id": validator["agent_id"], "token": validator["token"]}

    await cli.signal("heartbeat", {**me, "seq": 1, "status": "idle"})

    claimed = await cli.update("claim", me)
    task = claimed["task"]
    assert task is not None, claimed["reason"]
    assert (task["title"], task["status"]) == ("Write it", "assigned")

    await cli.signal(
        "heartbeat", {**me, "seq": 2, "status": "running", "current_task_id": task["id"]}
    )
    await cli.signal("progress", {**me, "task_id": task["id"], "note": "half way"})

    done = await cli.update(
        "complete",
        {**me, "task_id": task["id"], "result": "# Written\n", "result_type": "analysis"},
    )
    assert done["task"]["status"] == "done"

    created = await cli.update(
        "create_task", {**me, "phase": "testing", "title": "Test it", "type": "test"}
    )
    assert (created["phase"], created["status"], created["created_by"]) == (
        "testing",
        "pending",
        me["agent_id"],
    )

    submitted = await cli.update(
        "submit_result",
        {**me, "content": "# Result\n\n- the CLI can do everything an agent does\n"},
    )
    assert submitted == {"version": 1, "status": "pending_validation"}

    status = await cli.query("status")
    assert (status["status"], status["results"], status["open_tasks"]) == ("open", 1, 1)
    tasks = {t["id"]: t["status"] for t in await cli.query("tasks")}
    assert tasks == {task["id"]: "done", created["id"]: "pending"}
    agents = {a["id"]: a for a in await cli.query("agents")}
    assert agents[me["agent_id"]]["heartbeats"] == 2
    timeline = [e["kind"] for e in await cli.query("timeline")]
    assert "progress" in timeline and "task_done" in timeline
    content = await cli.query("result_content", 1)
    assert content.startswith("# Result")
    assert (await cli.query("inbox", me))["stop"] is False

    reviewed = await cli.update(
        "review_result",
        {**judge, "version": 1, "passed": True, "evidence": ["read the result"]},
    )
    assert reviewed == {"version": 1, "status": "validated", "ticket_status": "completed"}

    # stop_all: the workflow completes; its result is the final status.
    ran = await cli.run("workflow", "result", "--workflow-id", ticket_id, "-o", "json")
    assert ran.code == 0, ran.err
    result = ran.json()
    assert result["status"] == "COMPLETED"
    described = await cli.run("workflow", "describe", "--workflow-id", ticket_id, "-o", "json")
    info = described.json()["workflowExecutionInfo"]
    assert info["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
    final = await cli.query("status")
    assert (final["status"], final["validated_version"]) == ("completed", 1)


async def test_cli_refused_update_exits_nonzero_with_the_reason(
    worker: Worker, client: Client, settings: Settings
) -> None:
    ticket_id = unique_id("cli-refused")
    await start_ticket(client, settings, ticket_id)
    cli = TemporalCli(settings, ticket_id)
    secret = join_secret_for(settings, ticket_id)
    agent = await cli.update("register", {"name": "cli-worker", "join_secret": secret})

    payload = {"agent_id": agent["agent_id"], "token": "wrong"}
    ran = await cli.run(
        "workflow",
        "update",
        "execute",
        "--workflow-id",
        ticket_id,
        "--name",
        "claim",
        "--input",
        json.dumps(payload),
    )
    assert ran.code != 0
    assert f"token: does not match the token issued to {agent['agent_id']}" in ran.err
    assert "Refused" in ran.err

    # A message that breaks the schema is refused before it reaches the ticket's rules.
    ran = await cli.run(
        "workflow",
        "update",
        "execute",
        "--workflow-id",
        ticket_id,
        "--name",
        "register",
        "--input",
        json.dumps({"name": "Bad Name!"}),
    )
    assert ran.code != 0
    assert "name" in ran.err

    # Nothing was applied: the task is still pending.
    status = await cli.query("status")
    assert status["counts_by_status"] == {"pending": 1}
    assert status["agents"] == 1
