"""Inputs of the workflows and activities that are not agent messages."""

from __future__ import annotations

import base64
import zlib

from pydantic import BaseModel, Field

from core.state import TicketState
from models.spec import TicketSpec


class TicketInput(BaseModel):
    """Start a ticket from a spec, or carry a running one's state through continue-as-new."""

    spec: TicketSpec | None = None
    state: TicketState | None = None
    state_blob: str | None = Field(
        default=None,
        description="the carried state, zlib-compressed and base64-encoded (continue-as-new): "
        "a big ticket's state as plain JSON can exceed Temporal's 2 MB payload limit",
    )
    operator_token_sha256: str | None = Field(
        default=None, description="sha256 of the operator token that may cancel or diagnose"
    )
    join_sha256: dict[str, str] | None = Field(
        default=None,
        description="agent kind -> sha256 of the join secret an agent of that kind registers "
        "with (infra.enrollment); None = anyone may register (tickets started before enrollment)",
    )
    agent_address: str | None = Field(
        default=None, description="where local-process agents connect (host:port of Temporal)"
    )
    agent_namespace: str = "default"
    continue_as_new_after_updates: int | None = Field(
        default=None, ge=10, description="test switch: continue as new after this many updates"
    )
    continue_as_new_after_events: int | None = Field(
        default=None, ge=100, description="test switch: continue as new at this history length"
    )


class ReadResultFile(BaseModel):
    """Ask the worker to read a result file reference under ``files_root``."""

    file_ref: str
    files_root: str
    max_bytes: int


def pack_state(state: TicketState) -> str:
    """The state as compact text for continue-as-new (deterministic: zlib level 6, base64)."""
    return base64.b64encode(zlib.compress(state.model_dump_json().encode("utf-8"), 6)).decode()


def unpack_state(blob: str) -> TicketState:
    return TicketState.model_validate_json(zlib.decompress(base64.b64decode(blob)))
