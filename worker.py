"""The Unstuck worker: runs ticket workflows and their activities.

    python worker.py [--address HOST:PORT] [--namespace NS] [--task-queue Q] [--database-url URL]

Settings come from ``UNSTUCK_*`` environment variables; flags override them. When nothing
answers at the address (and ``UNSTUCK_START_DEV_SERVER`` is not ``false``) the embedded
Temporal dev server is started with its Web UI and search attributes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from temporalio.client import Client
from temporalio.worker import Worker

from activities.agents import AgentActivities
from activities.checks import run_checks
from activities.diagnosis import DiagnosisActivities
from activities.ledger import LedgerActivities
from activities.results import read_result_file
from diagnosis.llm import LLMSettings
from infra.client import connect
from infra.devserver import DevServerError, ensure_server
from infra.settings import Settings
from ledger.store import Ledger
from workflows.diagnosis import DiagnosticWorkflow
from workflows.ticket import TicketWorkflow

log = logging.getLogger("unstuck.worker")

WORKFLOWS: list[type] = [TicketWorkflow, DiagnosticWorkflow]


def build_worker(
    client: Client, settings: Settings, ledger: Ledger, *, llm: LLMSettings | None = None
) -> Worker:
    """The one worker definition used by ``worker.py``, the demo and the tests.

    ``llm`` configures the optional LLM hypothesis provider (default: from the
    ``UNSTUCK_LLM_*`` environment; unset = the built-in rules only).
    """
    ledger_activities = LedgerActivities(ledger)
    diagnosis_activities = DiagnosisActivities(
        client, ledger, llm if llm is not None else LLMSettings.from_env()
    )
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=[
            *ledger_activities.activities(),
            *diagnosis_activities.activities(),
            *AgentActivities(
                settings.data_dir,
                temporal_address=settings.temporal_address,
                namespace=settings.namespace,
            ).activities(),
            read_result_file,
            run_checks,
        ],
        activity_executor=ThreadPoolExecutor(max_workers=16),
        # Many tickets wake at once when their deadlines pass; the default 5 pollers made
        # workflow-task pick-up dominate stuck-detection latency (bench/detection.py).
        max_concurrent_workflow_task_polls=16,
    )


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
    args = parser.parse_args(argv)
    return Settings.from_env(
        temporal_address=args.address,
        namespace=args.namespace,
        task_queue=args.task_queue,
        database_url=args.database_url,
        data_dir=args.data_dir,
        start_dev_server=False if args.no_dev_server else None,
    )


async def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = parse_args(argv)
    try:
        server = await ensure_server(settings, log=log.info)
    except DevServerError as exc:
        log.error("%s", exc)
        return 2
    ledger = Ledger(settings.ledger_url)
    ledger.create_all()
    client = await connect(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with build_worker(client, settings, ledger):
            log.info(
                "worker on %s, namespace %s, task queue %s, ledger %s",
                settings.temporal_address,
                settings.namespace,
                settings.task_queue,
                ledger.url.render_as_string(hide_password=True),
            )
            if server.ui_url:
                log.info("Temporal Web UI: %s", server.ui_url)
            await stop.wait()
            log.info("shutting down")
    finally:
        ledger.dispose()
        await server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
