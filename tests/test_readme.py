"""The README's operator commands work as written, with the installed ``unstuck`` command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent


def bash_block_after(marker: str) -> str:
    """The first ```bash block after ``marker`` in the README."""
    start = README.index(marker)
    found = re.search(r"```bash\n(.*?)```", README[start:], re.S)
    assert found, f"no bash block after {marker!r}"
    return found[1]


def env_for(settings: Settings, data_dir: Path, task_queue: str) -> dict[str, str]:
    """The environment a user has after the quick start, pointed at the test's server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNSTUCK_")}
    env.update(
        UNSTUCK_TEMPORAL_ADDRESS=settings.temporal_address,
        UNSTUCK_TASK_QUEUE=task_queue,
        UNSTUCK_DATA_DIR=str(data_dir),
        UNSTUCK_DATABASE_URL=f"sqlite:///{data_dir / 'ledger.db'}",
        UNSTUCK_START_DEV_SERVER="false",
        UNSTUCK_OTEL_EXPORTER="none",
        COLUMNS="200",
    )
    return env


@pytest.mark.skipif(not (BIN / "unstuck").exists(), reason="the unstuck command is not installed")
def test_the_operator_commands_work_as_written(settings: Settings, tmp_path: Path) -> None:
    worker_line = bash_block_after("A worker must be running").strip()
    assert worker_line.startswith(".venv/bin/unstuck worker")
    operator_block = bash_block_after("and in another, from the repository root:")
    env = env_for(settings, tmp_path, f"readme-{uuid.uuid4().hex[:8]}")
    if (ROOT / ".venv/bin/unstuck").exists():
        worker_cmd = ["bash", "-c", worker_line]
    else:  # another virtualenv runs the suite: the same command from there
        worker_cmd = [str(BIN / "unstuck"), "worker"]
        env["PATH"] = f"{BIN}:{env['PATH']}"
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            worker_cmd,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while "worker on" not in log.read_text() and time.monotonic() < deadline:
            assert worker.poll() is None, log.read_text()
            time.sleep(0.2)
        assert "worker on" in log.read_text(), log.read_text()
        run = subprocess.run(
            ["bash", "-e", "-x", "-c", operator_block],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "Launched ticket csv-1" in run.stdout
        assert "csv-1" in run.stdout and "cancelled" in run.stdout
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        assert worker.wait(30) == 0, log.read_text()[-2000:]
    assert "shutting down" in log.read_text()
