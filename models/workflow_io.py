"""Inputs of the workflows and activities that are not agent messages."""

from __future__ import annotations

from pydantic import BaseModel, Field

from core.state import TicketState
from models.spec import TicketSpec


class TicketInput(BaseModel):
    """Start a ticket from a spec, or carry a running one's state through continue-as-new."""

    spec: TicketSpec | None = None
    state: TicketState | None = None
    operator_token_sha256: str | None = Field(
        default=None, description="sha256 of the operator token that may cancel or diagnose"
    )
    agent_address: str | None = Field(
        default=None, description="where local-process agents connect (host:port of Temporal)"
    )
    agent_namespace: str = "default"
    continue_as_new_after_events: int | None = Field(
        default=None, ge=100, description="test switch: continue as new at this history length"
    )


class ReadResultFile(BaseModel):
    """Ask the worker to read a result file reference under ``files_root``."""

    file_ref: str
    files_root: str
    max_bytes: int
