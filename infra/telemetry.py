"""Traces and metrics for the worker (DESIGN §9): OpenTelemetry spans, Prometheus metrics.

Traces: :func:`configure_tracing` sets up one OpenTelemetry ``TracerProvider`` per process
(``UNSTUCK_OTEL_EXPORTER`` = ``none`` | ``console`` | ``otlp`` | ``file``, default
``file``) and the SDK's :class:`~temporalio.contrib.opentelemetry.TracingInterceptor`
that :func:`infra.client.connect` adds to every client (and so to its workers). The
``file`` exporter writes one JSON line per span to ``<data_dir>/spans.jsonl``; the
diagnosis reads a ticket's spans from there (:func:`read_spans`).

Metrics: :func:`metrics_runtime` creates the temporalio ``Runtime`` with a Prometheus
endpoint at ``UNSTUCK_METRICS_ADDRESS`` (unset = off), once per process. The SDK's own
metrics and Unstuck's counters (emitted from workflow code via ``workflow.metric_meter()``,
see :mod:`workflows.ticket`) are served at ``http://<address>/metrics``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

from infra.settings import Settings

__all__ = [
    "CORE_LOGGER",
    "EXPORTERS",
    "SPAN_FILE",
    "JsonlSpanExporter",
    "TelemetryError",
    "configure_tracing",
    "core_log_to_file",
    "forward_core_logs",
    "metrics_runtime",
    "read_spans",
    "span_file",
    "tracing_interceptors",
]

EXPORTERS = ("none", "console", "otlp", "file")
SPAN_FILE = "spans.jsonl"
#: Attributes the SDK's tracing interceptor puts on workflow, update and activity spans.
WORKFLOW_ID_ATTRIBUTE = "temporalWorkflowID"
#: Only the file's tail is read for evidence (a long-running worker's file grows).
SPAN_TAIL_BYTES = 16 * 1024 * 1024


class TelemetryError(RuntimeError):
    """Telemetry cannot be set up as configured (e.g. the OTLP exporter is not installed)."""


class JsonlSpanExporter(SpanExporter):
    """One JSON line per finished span, appended to ``path`` (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_record(s), default=str) + "\n" for s in spans)
        try:
            with self._lock, self.path.open("a", encoding="utf-8") as out:
                out.write(lines)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_record(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": f"{ctx.trace_id:032x}" if ctx else None,
        "span_id": f"{ctx.span_id:016x}" if ctx else None,
        "parent_id": f"{parent.span_id:016x}" if parent else None,
        "kind": span.kind.name.lower(),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name.lower(),
        "status_description": span.status.description,
    }


class _Tracing:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.configured = False
        self.exporter = "none"
        self.provider: TracerProvider | None = None
        self.interceptor: TracingInterceptor | None = None
        self.span_file: Path | None = None


_tracing = _Tracing()


def span_file(settings: Settings) -> Path:
    return settings.data_dir / SPAN_FILE


def _exporter(kind: str, settings: Settings) -> tuple[SpanExporter, bool]:
    """The exporter and whether it wants batching."""
    if kind == "console":
        return ConsoleSpanExporter(), False
    if kind == "file":
        return JsonlSpanExporter(span_file(settings)), False
    try:  # OTLP over HTTP (a project dependency); it reads OTEL_EXPORTER_OTLP_ENDPOINT
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
    except ImportError as exc:
        raise TelemetryError(
            "UNSTUCK_OTEL_EXPORTER=otlp needs the OTLP exporter: "
            "pip install opentelemetry-exporter-otlp-proto-http"
        ) from exc
    return OTLPSpanExporter(), True


def configure_tracing(settings: Settings) -> Path | None:
    """Set up tracing for this process once (later calls keep the first configuration).

    Returns the span file when spans go to a file, else None.
    """
    with _tracing.lock:
        if _tracing.configured:
            return _tracing.span_file
        kind = settings.otel_exporter
        if kind not in EXPORTERS:
            raise TelemetryError(f"UNSTUCK_OTEL_EXPORTER={kind!r}: expected one of {EXPORTERS}")
        if kind != "none":
            exporter, batch = _exporter(kind, settings)
            provider = TracerProvider(
                resource=Resource.create(
                    {"service.name": os.environ.get("OTEL_SERVICE_NAME", "unstuck")}
                )
            )
            # Spans are small and few: write them at once (the diagnosis reads the file).
            provider.add_span_processor(
                BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
            )
            _tracing.provider = provider
            trace.set_tracer_provider(provider)  # for any other instrumentation, too
            # Workflow spans even without a traced client (tickets started from the CLI,
            # agents in other processes); they are never created during replay.
            _tracing.interceptor = TracingInterceptor(
                provider.get_tracer("unstuck"), always_create_workflow_spans=True
            )
            _tracing.span_file = span_file(settings) if kind == "file" else None
        _tracing.exporter = kind
        _tracing.configured = True
        return _tracing.span_file


def tracing_interceptors() -> list[TracingInterceptor]:
    """The tracing interceptor when tracing is configured in this process, else nothing."""
    return [_tracing.interceptor] if _tracing.interceptor is not None else []


def shutdown_tracing() -> None:
    """Flush pending spans (the OTLP exporter batches)."""
    if _tracing.provider is not None:
        _tracing.provider.force_flush()


# ---- reading a ticket's spans back (diagnosis evidence) ------------------------------------


def _belongs(attributes: dict[str, Any], ticket_id: str) -> bool:
    wid = attributes.get(WORKFLOW_ID_ATTRIBUTE)
    if not isinstance(wid, str):
        return False
    return wid == ticket_id or wid.startswith(f"{ticket_id}-diagnosis-")


def span_line(record: dict[str, Any]) -> str:
    """``"RunActivity:collect_evidence (12.3 ms) ok"``."""
    start, end = record.get("start_ns") or 0, record.get("end_ns") or 0
    ms = max(0, end - start) / 1e6
    status = str(record.get("status") or "unset")
    status = "ok" if status == "unset" else status
    text = f"{record.get('name', '?')} ({ms:.1f} ms) {status}"
    if status == "error" and record.get("status_description"):
        text += f": {' '.join(str(record['status_description']).split())[:200]}"
    return text


def read_spans(path: Path, ticket_id: str, limit: int = 200) -> list[str]:
    """The ticket's (and its diagnoses') latest ≤ ``limit`` spans, oldest first."""
    try:
        with path.open("rb") as src:
            size = src.seek(0, os.SEEK_END)
            src.seek(max(0, size - SPAN_TAIL_BYTES))
            data = src.read()
    except FileNotFoundError:
        return []
    if size > SPAN_TAIL_BYTES:
        data = data.split(b"\n", 1)[-1]  # the first line is probably cut
    found: deque[tuple[int, str]] = deque(maxlen=limit)
    needle = ticket_id.encode()
    for raw in data.splitlines():
        if needle not in raw:
            continue
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict) and _belongs(record.get("attributes") or {}, ticket_id):
            found.append((int(record.get("end_ns") or 0), span_line(record)))
    return [line for _, line in sorted(found, key=lambda item: item[0])]


# ---- core logs --------------------------------------------------------------------------

#: The Python logger the SDK's core (Rust) logs are forwarded to, when forwarding is on.
CORE_LOGGER = "temporalio.core"
CORE_LOG_FILE = "unstuck.log"


def _core_logging() -> LoggingConfig:
    """Core log lines as Python log records of CORE_LOGGER (where they go is the process's
    logging configuration: the CLI sends them to a file, see core_log_to_file)."""
    logger = logging.getLogger(CORE_LOGGER)
    return LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=logger),
    )


def forward_core_logs() -> None:
    """Send the SDK core's log lines to Python logging instead of the terminal.

    Core warnings such as "Query not found when attempting to respond to it" (a query in
    flight when a ticket finishes) are nothing an operator can act on, yet the core prints
    them to stderr with raw colour codes. Call once per process, before any client exists.
    """
    Runtime.set_default(
        Runtime(telemetry=TelemetryConfig(logging=_core_logging())), error_if_already_set=False
    )


class _LazyFileHandler(logging.FileHandler):
    """Creates its directory with its file, at the first line: most runs log nothing."""

    def _open(self) -> Any:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def core_log_to_file(data_dir: Path) -> Path:
    """Write forwarded core log lines to ``<data_dir>/unstuck.log``; returns the path."""
    path = data_dir / CORE_LOG_FILE
    logger = logging.getLogger(CORE_LOGGER)
    for old in list(logger.handlers):
        logger.removeHandler(old)
        old.close()
    handler = _LazyFileHandler(path, delay=True, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    return path


# ---- metrics ----------------------------------------------------------------------------

_runtimes: dict[str, Runtime] = {}


def metrics_runtime(settings: Settings) -> Runtime | None:
    """A Runtime serving Prometheus metrics at ``settings.metrics_address`` (None = off).

    One per address per process: the endpoint binds the port.
    """
    address = settings.metrics_address
    if not address:
        return None
    if address not in _runtimes:
        _runtimes[address] = Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(bind_address=address), logging=_core_logging()
            )
        )
    return _runtimes[address]
