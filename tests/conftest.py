"""Shared fixtures: one fresh Temporal dev server per test session, settings and a client."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from infra.client import connect
from infra.devserver import (
    DevServer,
    DevServerError,
    ensure_search_attributes,
    ensure_server,
    find_temporal_binary,
    free_port,
)
from infra.settings import Settings
from infra.telemetry import configure_tracing
from ledger.store import Ledger
from worker import UnstuckWorker, build_worker

# One join key (infra.enrollment) for the whole session, before any worker or agent starts:
# tickets launched by tests are enrolled, and every process the tests start (agents, the
# starter, the demo) derives the same join secrets. tests/test_enrollment.py covers the key
# file a deployment without UNSTUCK_JOIN_KEY uses.
os.environ.setdefault("UNSTUCK_JOIN_KEY", secrets.token_urlsafe(32))


def two_free_ports() -> tuple[int, int]:
    """Two distinct free ports (frontend, Web UI)."""
    frontend = free_port()
    ui = free_port()
    while ui == frontend:
        ui = free_port()
    return frontend, ui


@pytest.fixture(scope="session")
def server_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Where the session's dev server runs: free ports, its own data directory."""
    port, ui_port = two_free_ports()
    return Settings(
        temporal_address=f"127.0.0.1:{port}",
        ui_port=ui_port,
        data_dir=tmp_path_factory.mktemp("temporal"),
        start_dev_server=True,
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_server(server_settings: Settings) -> AsyncIterator[DevServer]:
    """A fresh Temporal dev server for this session, stopped at the end.

    Free ports are picked before the server binds them, and the dev server takes more ports of
    its own at random; when one of ours is taken in between, start again on fresh ports.
    """
    current = server_settings
    for attempt in range(3):
        try:
            server = await ensure_server(current, startup_timeout=60)
            break
        except DevServerError as exc:
            if "in use" not in str(exc) or attempt == 2:
                raise
            port, ui_port = two_free_ports()
            current = server_settings.model_copy(
                update={"temporal_address": f"127.0.0.1:{port}", "ui_port": ui_port}
            )
    assert server.owned, f"expected a fresh dev server at {server.address}"
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
def settings(
    temporal_server: DevServer,
    server_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """Settings for the session server; the ledger is a SQLite file in a temp dir."""
    data_dir = tmp_path_factory.mktemp("unstuck")
    return server_settings.model_copy(
        update={
            "temporal_address": temporal_server.address,
            "task_queue": "unstuck-test",
            "database_url": f"sqlite:///{data_dir / 'ledger.db'}",
            "data_dir": data_dir,
            "start_dev_server": False,
        }
    )


@pytest.fixture(scope="session")
def span_file(settings: Settings) -> Path | None:
    """Tracing for the session: spans go to ``spans.jsonl`` in the session's data dir."""
    return configure_tracing(settings.model_copy(update={"otel_exporter": "file"}))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client(settings: Settings, span_file: Path | None) -> Client:
    """A client (pydantic data converter, tracing) connected to the session server."""
    return await connect(settings)


@pytest.fixture(scope="session")
def ledger(settings: Settings) -> Iterator[Ledger]:
    """The session's ledger (SQLite), tables created."""
    store = Ledger(settings.ledger_url)
    store.create_all()
    yield store
    store.dispose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def worker(
    client: Client, settings: Settings, ledger: Ledger
) -> AsyncIterator[UnstuckWorker]:
    """One Unstuck worker for the session, on the settings' task queue."""
    async with build_worker(client, settings, ledger) as running:
        yield running


def unique_id(prefix: str) -> str:
    """A ticket id no other test (or earlier run against the same server) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---- the time-skipping test server (production windows in seconds of wall time) ----


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def time_skipping(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[WorkflowEnvironment, Settings, Ledger]]:
    server = find_temporal_binary().parent / "temporal-test-server"
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(server), data_converter=pydantic_data_converter
    )
    await ensure_search_attributes(env.client, "default")
    data = tmp_path_factory.mktemp("time-skipping")
    settings = Settings(
        task_queue="unstuck-ts", data_dir=data, database_url=f"sqlite:///{Path(data) / 'ledger.db'}"
    )
    ledger = Ledger(settings.ledger_url)
    ledger.create_all()
    async with env, build_worker(env.client, settings, ledger):
        yield env, settings, ledger
    ledger.dispose()
