"""The README's main command: the whole story with real agent processes, as CI runs it."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest

import starter
from infra.settings import Settings


def demo_agents_alive(ticket_id: str) -> list[str]:
    """This ticket's agent processes still running (other tickets' agents may run beside)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [
        line
        for line in out.splitlines()
        if "agents.demo_agent" in line and f"--ticket {ticket_id} " in line
    ]


async def test_the_demo_tells_the_whole_story(
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    code = await starter.run(
        [
            "demo",
            "--address",
            settings.temporal_address,
            "--task-queue",
            f"demo-{uuid.uuid4().hex[:8]}",  # the demo runs its own worker
            "--data-dir",
            str(tmp_path / "data"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "Demo completed with a validated result." in out
    # The story's beats, as measured by the ticket itself:
    restarts = re.search(r"agent restarts\s+(\d+)", out)
    assert restarts and int(restarts[1]) >= 1, "one agent was killed mid-task and restarted"
    assert re.search(r"time to reassignment\s+\d+\.\d s", out)
    failed = re.search(r"(\d+) failed review\(s\)", out)
    assert failed and int(failed[1]) >= 1, "one task failed review once"
    assert re.search(r"diagnosis 1\s+no_result", out), "the forgotten result was diagnosed"
    # (Rich may wrap the row: allow line breaks and table padding inside the phrase.)
    assert re.search(r"\(recovery\s+T\d+:\s+recovered\)", out), "its recovery task was done"
    assert re.search(r"validated version\s+v\d", out)
    # The ticket stopped its agent processes when it finished: no orphan survives.
    launched = re.search(r"Launched ticket (\S+)", out)
    assert launched, out[:2000]
    assert demo_agents_alive(launched[1]) == []
