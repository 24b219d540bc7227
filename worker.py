"""The Unstuck worker: runs ticket workflows and their activities.

    python worker.py [--address HOST:PORT] [--namespace NS] [--task-queue Q] [--database-url URL]
                     [--tls] [--tls-ca PEM] [--tls-cert PEM --tls-key PEM]
                     [--tls-server-name NAME] [--api-key-file FILE]

Settings come from ``UNSTUCK_*`` environment variables; flags override them (the TLS flags
set their variables, so the agent processes the worker starts connect the same way). When
nothing answers at the address (and ``UNSTUCK_START_DEV_SERVER`` is not ``false``, and no TLS
is configured) the embedded Temporal dev server is started with its Web UI and search
attributes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from activities.agents import AgentActivities
from activities.checks import run_checks
from activities.diagnosis import DiagnosisActivities
from activities.ledger import LedgerActivities
from activities.notify import NotifyActivities
from activities.results import read_result_file
from diagnosis.llm import LLMSettings
from infra.client import connect
from infra.devserver import DevServerError, ensure_server
from infra.settings import Settings, SettingsError, add_connection_flags
from infra.telemetry import (
    TelemetryError,
    configure_tracing,
    metrics_runtime,
    shutdown_tracing,
    tracing_interceptors,
)
from ledger.store import Ledger
from models.runtime import host_queue
from workflows.diagnosis import DiagnosticWorkflow
from workflows.ticket import TicketWorkflow

log = logging.getLogger("unstuck.worker")

WORKFLOWS: list[type] = [TicketWorkflow, DiagnosticWorkflow]


class UnstuckWorker:
    """The worker of one host: the shared task queue (tickets, diagnoses, activities) and the
    host's own queue ``<task_queue>@<host_id>`` (DESIGN §15), where the ticket sends the stop
    and the restart of the agent processes this host started. Use it as ``async with``."""

    def __init__(self, shared: Worker, host: Worker, host_id: str) -> None:
        self.shared = shared
        self.host = host
        self.host_id = host_id
        self._stack = contextlib.AsyncExitStack()

    @property
    def task_queue(self) -> str:
        return self.shared.task_queue

    @property
    def host_task_queue(self) -> str:
        return self.host.task_queue

    async def __aenter__(self) -> UnstuckWorker:
        await self._stack.__aenter__()
        try:
            await self._stack.enter_async_context(self.shared)
            await self._stack.enter_async_context(self.host)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.__aexit__(None, None, None)


def build_worker(
    client: Client,
    settings: Settings,
    ledger: Ledger,
    *,
    llm: LLMSettings | None = None,
    span_file: Path | None = None,
) -> UnstuckWorker:
    """The one worker definition used by ``worker.py``, the demo and the tests.

    ``llm`` configures the optional LLM hypothesis provider (default: from the
    ``UNSTUCK_LLM_*`` environment; unset = the built-in rules only). ``span_file`` is where
    the diagnosis reads the ticket's trace spans (default: the file tracing writes in this
    process, if any). The worker traces when tracing is configured in this process
    (:func:`infra.telemetry.configure_tracing`).
    """
    ledger_activities = LedgerActivities(ledger)
    diagnosis_activities = DiagnosisActivities(
        client,
        ledger,
        llm if llm is not None else LLMSettings.from_env(),
        span_file=span_file if span_file is not None else _traced_span_file(settings),
        agent_log_dir=Path(settings.data_dir) / "agents",
    )
    agents = AgentActivities(
        settings.data_dir,
        temporal_address=settings.temporal_address,
        namespace=settings.namespace,
        host=settings.host_id,
    )
    # A client's interceptors that are also worker interceptors apply to its workers;
    # add tracing only where the client does not already carry it.
    carried = {type(i) for i in client.config()["interceptors"]}
    interceptors = [i for i in tracing_interceptors() if type(i) not in carried]
    shared = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        interceptors=interceptors,
        activities=[
            *ledger_activities.activities(),
            *diagnosis_activities.activities(),
            *agents.activities(),
            *NotifyActivities(settings).activities(),
            read_result_file,
            run_checks,
        ],
        activity_executor=ThreadPoolExecutor(max_workers=16),
        # Many tickets wake at once when their deadlines pass; the default 5 pollers made
        # workflow-task pick-up dominate stuck-detection latency (bench/detection.py).
        max_concurrent_workflow_task_polls=16,
        max_cached_workflows=settings.max_cached_tickets,
    )
    host = Worker(
        client,
        task_queue=host_queue(settings.task_queue, settings.host_id),
        interceptors=interceptors,
        activities=agents.activities(),
        max_concurrent_activity_task_polls=2,
    )
    return UnstuckWorker(shared, host, settings.host_id)


def _traced_span_file(settings: Settings) -> Path | None:
    """The span file when this process traces to a file, else None."""
    if not tracing_interceptors() or settings.otel_exporter != "file":
        return None
    return configure_tracing(settings)  # already configured: returns its span file


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description="Run the Unstuck worker.")
    parser.add_argument("--address", help="Temporal frontend host:port (UNSTUCK_TEMPORAL_ADDRESS)")
    parser.add_argument("--namespace", help="Temporal namespace (UNSTUCK_NAMESPACE)")
    parser.add_argument("--task-queue", help="task queue (UNSTUCK_TASK_QUEUE)")
    parser.add_argument("--database-url", help="ledger SQLAlchemy URL (UNSTUCK_DATABASE_URL)")
    parser.add_argument("--data-dir", help="local data directory (UNSTUCK_DATA_DIR)")
    parser.add_argument(
        "--no-dev-server",
        action="store_true",
        help="never start the embedded dev server; fail if Temporal does not answer",
    )
    add_connection_flags(parser.add_argument_group("TLS and API key (production)"))
    args = parser.parse_args(argv)
    try:
        return Settings.from_env(
            temporal_address=args.address,
            namespace=args.namespace,
            task_queue=args.task_queue,
            database_url=args.database_url,
            data_dir=args.data_dir,
            start_dev_server=False if args.no_dev_server else None,
        )
    except SettingsError as exc:
        parser.error(f"invalid settings: {exc}")


async def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return await serve(parse_args(argv))


async def serve(settings: Settings) -> int:
    """Run the worker until SIGINT or SIGTERM (starting the dev server when allowed)."""
    try:
        server = await ensure_server(settings, log=log.info)
    except DevServerError as exc:
        log.error("%s", exc)
        return 2
    try:
        span_file = configure_tracing(settings)
        runtime = metrics_runtime(settings)
    except (TelemetryError, RuntimeError) as exc:
        log.error("telemetry: %s", exc)
        await server.stop()
        return 2
    ledger = Ledger(settings.ledger_url)
    ledger.create_all()
    client = await connect(settings, runtime=runtime)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with build_worker(client, settings, ledger, span_file=span_file):
            log.info(
                "worker on %s, namespace %s, task queue %s, host %s, ledger %s",
                settings.temporal_address,
                settings.namespace,
                settings.task_queue,
                settings.host_id,
                ledger.url.render_as_string(hide_password=True),
            )
            if server.ui_url:
                log.info("Temporal Web UI: %s", server.ui_url)
            log.info(
                "traces: %s%s; metrics: %s",
                settings.otel_exporter,
                f" ({span_file})" if span_file else "",
                f"http://{settings.metrics_address}/metrics" if runtime else "off",
            )
            await stop.wait()
            log.info("shutting down")
    finally:
        shutdown_tracing()
        ledger.dispose()
        await server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
