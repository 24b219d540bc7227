"""The one way Unstuck processes connect to Temporal: plain-JSON payloads via pydantic."""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter

from infra.settings import Settings

__all__ = ["connect"]


async def connect(settings: Settings, *, interceptors: Sequence[Interceptor] = ()) -> Client:
    """A client for ``settings.namespace`` at ``settings.temporal_address``.

    Payloads use the pydantic data converter, so every message is plain JSON that the
    ``temporal`` CLI or an SDK in any language can read and write.
    """
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.namespace,
        data_converter=pydantic_data_converter,
        interceptors=list(interceptors),
    )
