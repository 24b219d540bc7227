"""What the escalation delivery activity takes and returns (DESIGN §14)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from models.messages import EscalationView
from models.spec import SinkSpec


class NotifyRequest(BaseModel):
    """One message about one escalation, for every sink that wants it."""

    ticket_id: str
    ticket_title: str
    ticket_priority: str
    event: Literal["trigger", "acknowledge", "resolve"]
    escalation: EscalationView
    sinks: list[SinkSpec] = Field(default_factory=list, description="the ticket's own sinks")
    notify: list[str] | None = Field(
        default=None, description="deployment sinks to use by name; None = all"
    )
    retry_max_interval_s: float = Field(default=60.0, gt=0)
    give_up_after_s: float | None = Field(
        default=None, description="sinks still owed this long after queued_at are given up"
    )
    queued_at: datetime | None = None
    done: list[str] = Field(
        default_factory=list,
        description="sinks an earlier activity already settled (delivered or refused): skip",
    )


class NotifyProgress(BaseModel):
    """What an attempt has done so far (its heartbeat details; a retried attempt resumes)."""

    escalation_id: str = ""
    event: str = ""
    delivered: list[str] = Field(default_factory=list)
    failed: list[str] = Field(default_factory=list)
    tries: int = 0
    last_errors: list[str] = Field(default_factory=list, description="sinks still owed: why")


class NotifyOutcome(BaseModel):
    delivered: list[str] = Field(default_factory=list, description="sinks that took it")
    failed: list[str] = Field(
        default_factory=list, description="'sink: why' for sinks that refused it for good"
    )
    complete: bool = Field(
        default=True,
        description="False: cancelled (the ticket continued as new) with sinks still owed; "
        "what it did so far is reported so the next run does not send it again",
    )


DELIVER_ESCALATION_ACTIVITY = "deliver_escalation"


def settled(delivered: list[str], failed: list[str]) -> set[str]:
    """The sinks done with a message: those that took it, and those in ``failed``, whose
    entries read ``"<sink>: <why>"`` (refused for good, given up, or unknown)."""
    return {*delivered, *(entry.split(":", 1)[0] for entry in failed)}
