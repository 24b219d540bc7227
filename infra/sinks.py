"""Escalation sinks: where a person hears of an escalation (DESIGN §14).

Three formats:

* ``webhook`` — a generic JSON POST (``unstuck.escalation.v1``), optionally signed:
  ``X-Unstuck-Signature: sha256=<hex HMAC of "<timestamp>.<body>">`` with
  ``X-Unstuck-Timestamp``, so a receiver can check origin and reject replays.
* ``slack`` — a Slack incoming webhook: ``{"text": ...}`` with mrkdwn.
* ``pagerduty`` — the PagerDuty Events API v2 (``trigger``/``acknowledge``/``resolve`` with a
  ``dedup_key``), so one escalation is one incident however often it is sent.

Every message carries a dedup key, the escalation id, and every webhook a delivery id
(``<escalation id>/<event>``) as ``Idempotency-Key``: delivery is at least once (a receiver
that took a message but whose answer was lost gets it again), and the keys let it drop
repeats. :func:`post` sorts failures into retryable (:class:`Unreachable`: connection,
timeout, 408, 429, 5xx) and final (:class:`Refused`: any other answer, e.g. 3xx or 4xx, and
a URL that cannot be used — a wrong URL or key does not heal by retrying).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.notify import NotifyRequest
from models.spec import SEVERITY_RANK, SinkSpec

#: PagerDuty's severities for ours.
PAGERDUTY_SEVERITY = {"SEV-1": "critical", "SEV-2": "error", "SEV-3": "warning", "SEV-4": "info"}
PAGERDUTY_SUMMARY_MAX = 1024
SLACK_EMOJI = {
    "trigger": ":rotating_light:",
    "acknowledge": ":eyes:",
    "resolve": ":white_check_mark:",
}
#: The most of a receiver's answer kept in an error message.
ANSWER_CHARS = 300
USER_AGENT = "unstuck-escalations/1"


class SinksFile(BaseModel):
    """The deployment's sinks file (``UNSTUCK_SINKS_FILE``): ``sinks: [...]``. An unknown
    top-level key is refused: a misspelt ``sink:`` must not silently mean "no sinks"."""

    model_config = ConfigDict(extra="forbid")

    sinks: list[SinkSpec] = Field(default_factory=list, max_length=50)


class SinksError(ValueError):
    """The sinks file is unreadable or invalid (the message names the field and the rule)."""


class Unreachable(Exception):
    """The receiver did not take the message this time; try again later."""


class Refused(Exception):
    """The receiver refused the message for good (a 4xx other than 408/429)."""


def load_sinks(path: Path | None) -> list[SinkSpec]:
    """The deployment's sinks; none when no file is configured."""
    if path is None:
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SinksError(f"sinks_file (UNSTUCK_SINKS_FILE): cannot read {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise SinksError(f"sinks_file: {path} is not UTF-8 text: {exc}") from exc
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        # Not str(exc): PyYAML quotes the offending line, which may hold a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise SinksError(f"sinks_file: {path} is not YAML or JSON{where}: {problem}") from exc
    if isinstance(data, list):
        data = {"sinks": data}
    try:
        sinks = SinksFile.model_validate(data).sinks
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SinksError(f"sinks_file: {path}: {where}: {first['msg']}") from exc
    names = [s.name for s in sinks]
    if len(names) != len(set(names)):
        raise SinksError(f"sinks_file: {path}: sinks.name: must be unique")
    return sinks


def choose(
    deployment: Sequence[SinkSpec], request: NotifyRequest
) -> tuple[list[SinkSpec], list[str]]:
    """The sinks this message goes to, and ``'name: why'`` for names that match none.

    Deployment sinks (all, or those the ticket names in ``policy.escalation.notify``) and the
    ticket's own; each only if the escalation is at least as severe as its ``min_severity``.
    """
    by_name = {s.name: s for s in deployment}
    missing: list[str] = []
    if request.notify is None:
        chosen = list(deployment)
    else:
        chosen = []
        for name in dict.fromkeys(request.notify):  # a name given twice is one sink
            if name in by_name:
                chosen.append(by_name[name])
            else:
                missing.append(f"{name}: no sink of that name in this deployment's sinks file")
    chosen += [s for s in request.sinks if s.name not in {c.name for c in chosen}]
    rank = SEVERITY_RANK.get(request.escalation.severity, 2)
    return [s for s in chosen if rank <= SEVERITY_RANK[s.min_severity]], missing


def _title(request: NotifyRequest) -> str:
    e = request.escalation
    verb = {"trigger": "escalated", "acknowledge": "acknowledged", "resolve": "resolved"}
    return f"[{e.severity}] {request.ticket_id} {verb[request.event]}: {e.reason}"


def webhook_body(request: NotifyRequest, ui_url: str) -> dict[str, Any]:
    e = request.escalation
    return {
        "schema": "unstuck.escalation.v1",
        "event": request.event,
        "dedup_key": e.id,
        "delivery_id": f"{e.id}/{request.event}",
        "ticket": {
            "id": request.ticket_id,
            "title": request.ticket_title,
            "priority": request.ticket_priority,
            "url": ui_url,
        },
        "escalation": e.model_dump(mode="json", exclude={"deliveries"}),
    }


def slack_body(request: NotifyRequest, ui_url: str) -> dict[str, Any]:
    e = request.escalation
    lines = [f"{SLACK_EMOJI[request.event]} {_slack_escape(_title(request))}"]
    if request.event == "trigger":
        lines.append(f"*Ticket:* <{ui_url}|{_slack_escape(request.ticket_title)}>")
        if e.question:
            lines.append(f"*Question:* {_slack_escape(e.question)}")
        lines.append(
            f'Answer or resolve: `starter.py resolve {e.id} --note "…"`  ·  '
            f"ack: `starter.py ack {e.id}`"
        )
    elif request.event == "acknowledge":
        lines.append(f"by {_slack_escape(e.acknowledged_by or 'someone')}")
    else:
        lines.append(
            f"by {_slack_escape(e.resolved_by or 'someone')}: {_slack_escape(e.note or '')}"
        )
    lines.append(f"_dedup key `{e.id}`_")
    return {"text": "\n".join(lines)}


def _slack_escape(text: str) -> str:
    """Slack's three control characters in message text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def pagerduty_body(sink: SinkSpec, request: NotifyRequest, ui_url: str) -> dict[str, Any]:
    e = request.escalation
    body: dict[str, Any] = {
        "routing_key": sink.routing_key,
        "event_action": request.event,
        "dedup_key": e.id,
    }
    if request.event == "trigger":
        body["payload"] = {
            "summary": _title(request)[:PAGERDUTY_SUMMARY_MAX],
            "source": f"unstuck/{request.ticket_id}",
            "severity": PAGERDUTY_SEVERITY.get(e.severity, "error"),
            "timestamp": e.created_at,
            "component": e.agent_id or request.ticket_id,
            "group": request.ticket_id,
            "class": e.source,
            "custom_details": {
                "reason": e.reason,
                "question": e.question,
                "task_id": e.task_id,
                "diagnosis_run_id": e.diagnosis_run_id,
                "ticket_title": request.ticket_title,
            },
        }
        body["client"] = "Unstuck"
        body["client_url"] = ui_url
        body["links"] = [{"href": ui_url, "text": "Ticket in the Temporal Web UI"}]
    return body


def render(sink: SinkSpec, request: NotifyRequest, ui_url: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers of the message to ``sink``."""
    if sink.kind == "slack":
        data = slack_body(request, ui_url)
    elif sink.kind == "pagerduty":
        data = pagerduty_body(sink, request, ui_url)
    else:
        data = webhook_body(request, ui_url)
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if sink.kind == "webhook":
        delivery = f"{request.escalation.id}/{request.event}"
        headers["X-Unstuck-Event"] = request.event
        headers["X-Unstuck-Delivery"] = delivery
        headers["Idempotency-Key"] = delivery
        if sink.secret is not None:
            stamp = str(int(time.time()))
            headers["X-Unstuck-Timestamp"] = stamp
            headers["X-Unstuck-Signature"] = "sha256=" + sign(sink.secret, stamp, body)
    return body, headers


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 of ``<timestamp>.<body>`` (what a receiver recomputes to verify)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


async def post(
    client: httpx.AsyncClient, sink: SinkSpec, request: NotifyRequest, ui_url: str
) -> None:
    """Send one message to one sink; raise :class:`Unreachable` or :class:`Refused`."""
    body, headers = render(sink, request, ui_url)
    try:
        answer = await client.post(sink.url, content=body, headers=headers, timeout=sink.timeout_s)
    except httpx.TimeoutException as exc:
        raise Unreachable(f"no answer within {sink.timeout_s:g} s ({type(exc).__name__})") from exc
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise Refused(f"the URL cannot be used: {exc}") from exc  # retrying will not help
    except httpx.HTTPError as exc:
        raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
    if answer.is_success:
        return
    said = answer.text[:ANSWER_CHARS].strip()
    why = f"HTTP {answer.status_code}{': ' + said if said else ''}"
    if answer.status_code in (408, 429) or answer.status_code >= 500:
        raise Unreachable(why)
    raise Refused(why)
