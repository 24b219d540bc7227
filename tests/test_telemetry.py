"""Traces and metrics (DESIGN §9): the diagnosis sees the ticket's spans; Prometheus serves
Unstuck's counters next to the SDK's metrics."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client

from agent_client.session import AgentSession
from infra.client import connect
from infra.devserver import free_port
from infra.settings import Settings
from infra.telemetry import (
    JsonlSpanExporter,
    metrics_runtime,
    read_spans,
    span_line,
    tracing_interceptors,
)
from ledger.store import Ledger
from tests.conftest import unique_id
from tests.test_self_healing import _completed_runs, seed_spec, wait_for
from tests.ticketkit import Launched, launch
from worker import build_worker


async def _manual_diagnosis(client: Client, settings: Settings, prefix: str) -> Launched:
    """A ticket with one claimed task, diagnosed by the operator; returns once it completed."""
    ticket = await launch(client, settings, seed_spec(unique_id(prefix)))
    async with AgentSession(client, ticket.ticket_id, name="alice") as alice:
        task = await alice.claim()
        assert task is not None
        await ticket.handle.execute_update(
            "diagnose", {"operator_token": ticket.operator_token, "reason": "telemetry test"}
        )
        await wait_for(lambda: _completed_runs(ticket), what="the manual diagnosis")
    return ticket


@pytest.mark.usefixtures("worker")
async def test_the_diagnosis_sees_the_tickets_spans(
    client: Client, settings: Settings, span_file: Path | None
) -> None:
    assert span_file is not None and tracing_interceptors()
    ticket = await _manual_diagnosis(client, settings, "traced")
    [run] = await _completed_runs(ticket)
    match = re.search(r"(\d+) spans", run.evidence_summary)
    assert match and int(match.group(1)) > 0, run.evidence_summary
    spans = read_spans(span_file, ticket.ticket_id)
    names = {line.split(" (")[0] for line in spans}
    assert {"RunWorkflow:Ticket", "HandleUpdate:claim", "HandleUpdate:diagnose"} <= names, names
    assert all(re.fullmatch(r".+ \(\d+\.\d ms\) (ok|error)(: .*)?", line) for line in spans)
    # Other tickets' spans stay out.
    assert not read_spans(span_file, f"{ticket.ticket_id}-other")
    await ticket.handle.execute_update(
        "cancel", {"operator_token": ticket.operator_token, "reason": "test over"}
    )


def test_read_spans_keeps_the_newest_and_survives_junk(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = JsonlSpanExporter(path)
    assert exporter.force_flush()
    lines = [
        json.dumps(
            {
                "name": f"A{i}",
                "start_ns": 0,
                "end_ns": (i + 1) * 1_000_000,
                "status": "unset",
                "attributes": {"temporalWorkflowID": "t-1"},
            }
        )
        for i in range(250)
    ]
    path.write_text("\n".join(["not json", *lines, '{"name": "x", "attributes": {}}']) + "\n")
    spans = read_spans(path, "t-1")
    assert len(spans) == 200 and spans[0] == "A50 (51.0 ms) ok" and spans[-1].startswith("A249")
    assert read_spans(tmp_path / "missing.jsonl", "t-1") == []
    assert span_line({"name": "B", "status": "error", "status_description": "boom\nbad"}) == (
        "B (0.0 ms) error: boom bad"
    )


async def test_prometheus_serves_unstuck_and_sdk_metrics(
    settings: Settings, ledger: Ledger, span_file: Path | None
) -> None:
    own = settings.model_copy(
        update={
            "task_queue": f"unstuck-metrics-{uuid.uuid4().hex[:6]}",
            "metrics_address": f"127.0.0.1:{free_port()}",
        }
    )
    runtime = metrics_runtime(own)
    assert runtime is not None and metrics_runtime(own) is runtime  # one per address
    client = await connect(own, runtime=runtime)
    async with build_worker(client, own, ledger):
        ticket = await _manual_diagnosis(client, own, "metrics")
        await ticket.handle.execute_update(
            "cancel", {"operator_token": ticket.operator_token, "reason": "test over"}
        )

        async def scraped() -> str | None:
            async with httpx.AsyncClient() as http:
                text = (await http.get(f"http://{own.metrics_address}/metrics")).text
            return text if "unstuck_diagnoses" in text else None

        text = await wait_for(scraped, timeout=10, what="unstuck_diagnoses on /metrics")
    assert re.search(r'unstuck_diagnoses\S*\{[^}]*trigger="manual"[^}]*\} 1', text), text
    assert "temporal_workflow_task" in text


CORE_WARNING_SCRIPT = """
import asyncio, sys, time
from pathlib import Path
from temporalio.client import Client
from temporalio.worker import Worker
from infra.telemetry import core_log_to_file, forward_core_logs
from workflows.ticket import TicketWorkflow

if sys.argv[3] == "forward":
    forward_core_logs()
    log = core_log_to_file(Path(sys.argv[2]))

async def main():
    client = await Client.connect(sys.argv[1], namespace="no-such-namespace")
    try:
        async with Worker(client, task_queue="q", workflows=[TicketWorkflow]):
            await asyncio.sleep(10)
    except RuntimeError:
        pass  # the worker refuses to start: the namespace does not exist

asyncio.run(main())
deadline = time.monotonic() + 15  # the core forwards its lines in batches
while sys.argv[3] == "forward" and time.monotonic() < deadline:
    if log.exists() and "no-such-namespace" in log.read_text():
        break
    time.sleep(0.1)
"""


def test_core_warnings_go_to_the_log_file_not_the_terminal(
    settings: Settings, tmp_path: Path
) -> None:
    """A core warning (here: a worker on a namespace that does not exist) is written to
    ``<data dir>/unstuck.log`` instead of stderr, where it came with raw colour codes."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            CORE_WARNING_SCRIPT,
            settings.temporal_address,
            str(tmp_path),
            "forward",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "WARN" not in run.stderr and "\x1b[" not in run.stderr, run.stderr[-2000:]
    logged = (tmp_path / "unstuck.log").read_text()
    assert "WARNING temporalio.core" in logged and "no-such-namespace" in logged
