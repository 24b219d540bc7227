"""The one way Unstuck processes connect to Temporal: plain-JSON payloads via pydantic."""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime

from infra.settings import Settings
from infra.telemetry import tracing_interceptors

__all__ = ["connect"]


async def connect(
    settings: Settings,
    *,
    interceptors: Sequence[Interceptor] = (),
    runtime: Runtime | None = None,
) -> Client:
    """A client for ``settings.namespace`` at ``settings.temporal_address``.

    Payloads use the pydantic data converter, so every message is plain JSON that the
    ``temporal`` CLI or an SDK in any language can read and write. When tracing is
    configured in this process (:func:`infra.telemetry.configure_tracing`) the client
    carries the SDK's tracing interceptor, and so do the workers built on it. ``runtime``
    is the temporalio Runtime (e.g. with Prometheus metrics); None = the default one.
    """
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.namespace,
        data_converter=pydantic_data_converter,
        interceptors=[*tracing_interceptors(), *interceptors],
        runtime=runtime,
    )
