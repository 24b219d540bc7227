"""Delivering escalations to people (DESIGN §14): one activity per message.

``deliver_escalation`` sends one event (trigger, acknowledge, resolve) of one escalation to
every sink that wants it, and keeps trying the sinks still owed — with a backoff capped at
``policy.escalation.retry_max_interval_s`` — until each took the message or refused it for
good: a receiver that is down for minutes gets the message when it is back, once.

The retry loop runs inside the activity, heartbeating its progress (:class:`NotifyProgress`:
sinks done, tries, the last errors) so that ``describe`` shows an operator why a message is
late, and a worker that dies mid-way is noticed within the heartbeat timeout; the next
attempt (on any worker) resumes from the recorded progress and never sends again to a sink
that took the message. When the ticket continues as new it cancels the activity and waits
for its answer: the activity returns what it did (``complete=False``), and the next run
sends only to the sinks still owed (``NotifyRequest.done``). A sink whose answer was lost
on the way back may get a message twice: every message carries a dedup key for that
(infra.sinks).

The deployment's sinks are read from ``UNSTUCK_SINKS_FILE`` at every try: their URLs and
keys never enter the workflow history, and a corrected file applies at the next try.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from temporalio import activity

from infra import sinks
from infra.settings import Settings
from models.notify import (
    DELIVER_ESCALATION_ACTIVITY,
    NotifyOutcome,
    NotifyProgress,
    NotifyRequest,
    settled,
)
from models.spec import SinkSpec

log = logging.getLogger("unstuck.notify")

#: The first wait after a failed try; it doubles up to the policy's cap.
FIRST_BACKOFF_S = 1.0
#: The longest stretch without a heartbeat while waiting to try again.
HEARTBEAT_EVERY_S = 5.0


class NotifyActivities:
    """Escalation delivery for one worker (register ``activities()``)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._tls: ssl.SSLContext | None = None

    def _tls_context(self) -> ssl.SSLContext:
        """The TLS context every delivery uses, built once per worker: building one loads the
        CA bundle, which was the largest cost of an escalation when thousands of tickets
        escalate together (py-spy, 2,000 tickets: 13 % of the worker's CPU)."""
        if self._tls is None:
            self._tls = httpx.create_ssl_context()  # as httpx's own: SSL_CERT_FILE/DIR, certifi
        return self._tls

    def activities(self) -> list[Callable[..., Any]]:
        return [self.deliver_escalation]

    @activity.defn(name=DELIVER_ESCALATION_ACTIVITY)
    async def deliver_escalation(self, request: NotifyRequest) -> NotifyOutcome:
        details = activity.info().heartbeat_details
        progress = NotifyProgress.model_validate(details[0]) if details else NotifyProgress()
        progress.escalation_id, progress.event = request.escalation.id, request.event
        wait = FIRST_BACKOFF_S
        try:
            async with httpx.AsyncClient(
                follow_redirects=False, verify=self._tls_context()
            ) as client:
                while not await self._try(client, request, progress):
                    log.warning(
                        "%s of %s not delivered (try %d), again in %.0f s: %s",
                        request.event,
                        request.escalation.id,
                        progress.tries,
                        wait,
                        "; ".join(progress.last_errors),
                    )
                    await _wait(wait, progress)
                    wait = min(wait * 2, request.retry_max_interval_s)
        except asyncio.CancelledError:
            # The workflow asked (it continues as new, waiting for this answer): report what
            # was done, so the next run sends only to the sinks still owed.
            return NotifyOutcome(
                delivered=progress.delivered, failed=progress.failed, complete=False
            )
        return NotifyOutcome(delivered=progress.delivered, failed=progress.failed)

    async def _try(
        self, client: httpx.AsyncClient, request: NotifyRequest, progress: NotifyProgress
    ) -> bool:
        """Send to every sink still owed; True when none is owed any more."""
        progress.tries += 1
        previous = progress.last_errors  # shown (describe, `escalations`) until this try ends
        errors: list[str] = []
        try:
            deployment = sinks.load_sinks(self._settings.sinks_file)
        except sinks.SinksError as exc:
            progress.last_errors = [str(exc)]  # a file being fixed: try again later
            activity.heartbeat(progress.model_dump(mode="json"))
            return False
        chosen, missing = sinks.choose(deployment, request)
        done = set(request.done) | settled(progress.delivered, progress.failed)
        progress.failed += [m for m in missing if not settled([], [m]) & done]
        owed = [s for s in chosen if s.name not in done]
        if owed and _given_up(request):
            progress.failed += [
                f"{s.name}: gave up after {request.give_up_after_s:g} s "
                "(policy.escalation.give_up_after_s); last: "
                + next((e for e in previous if e.startswith(s.name + ":")), "-")
                for s in owed
            ]
            owed = []
        ui_url = self._settings.web_ui(request.ticket_id)
        sending = {
            asyncio.ensure_future(sinks.post(client, sink, request, ui_url)): sink for sink in owed
        }
        try:
            while sending:
                # Each answer is recorded as it comes, and heartbeated at least every few
                # seconds while a slow sink keeps us waiting: a retried or cancelled attempt
                # knows every sink that already took the message.
                finished, _ = await asyncio.wait(
                    sending, timeout=HEARTBEAT_EVERY_S, return_when=asyncio.FIRST_COMPLETED
                )
                for sent in finished:
                    _record(progress, errors, sending.pop(sent), sent.exception(), request)
                activity.heartbeat(progress.model_dump(mode="json"))
        finally:
            for unsent in sending:
                unsent.cancel()
        progress.last_errors = errors
        activity.heartbeat(progress.model_dump(mode="json"))
        return not errors


def _given_up(request: NotifyRequest) -> bool:
    if request.give_up_after_s is None or request.queued_at is None:
        return False
    waited = (datetime.now(UTC) - request.queued_at).total_seconds()
    return waited > request.give_up_after_s


def _record(
    progress: NotifyProgress,
    errors: list[str],
    sink: SinkSpec,
    error: BaseException | None,
    request: NotifyRequest,
) -> None:
    if error is None:
        progress.delivered.append(sink.name)
    elif isinstance(error, sinks.Refused):
        progress.failed.append(f"{sink.name}: {error}")
        log.error("%s refused %s for good: %s", sink.name, request.escalation.id, error)
    else:
        errors.append(f"{sink.name}: {error}")


async def _wait(seconds: float, progress: NotifyProgress) -> None:
    """Sleep, heartbeating (cancellation and liveness travel with heartbeats)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while (left := end - loop.time()) > 0:
        await asyncio.sleep(min(left, HEARTBEAT_EVERY_S))
        activity.heartbeat(progress.model_dump(mode="json"))
