"""Every deadline of a ticket, folded into one: the workflow keeps a single durable timer.

- the stuck check (:mod:`core.diagnosis`): window and cooldown;
- validator timeouts: a task result under review, or a final result awaiting its verdict,
  longer than ``validation.validator_timeout_s``;
- agent health (:mod:`core.health`): heartbeat deadlines, restart cooldowns, releases;
- agent behaviour (:mod:`core.behaviour`): an anomalous spell's window, a stall bound.

:func:`next_deadline` says when the ticket must next look at itself; :func:`tick` handles
everything due at ``now``. Both are pure.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from core import behaviour, diagnosis, health
from core.common import Effect, log
from core.diagnosis import Deadline
from core.state import TicketState


def next_deadline(state: TicketState) -> Deadline | None:
    """The earliest deadline, with a label for the timer's summary."""
    candidates: list[Deadline] = health.deadlines(state) + behaviour.deadlines(state)
    stuck = diagnosis.next_deadline(state)
    if stuck is not None:
        candidates.append(stuck)
    verify = diagnosis.verification_deadline(state)
    if verify is not None:
        candidates.append(verify)
    if state.status == "open":
        timeout = timedelta(seconds=state.spec.policy.validation.validator_timeout_s)
        label = f"validator timeout {timeout.total_seconds():g}s"
        # The tasks under review only, in creation order (a set's order is not deterministic).
        reviewing = sorted((state.tasks[t] for t in state.index().reviewing), key=lambda t: t.seq)
        for task in reviewing:
            assert task.review_requested_at is not None
            candidates.append(Deadline(task.review_requested_at + timeout, f"{label} {task.id}"))
        for version in state.results:
            if version.status == "pending_validation" and not version.timeout_reported:
                candidates.append(
                    Deadline(version.submitted_at + timeout, f"{label} result v{version.version}")
                )
    return min(candidates, key=lambda d: d.at, default=None)


def tick(state: TicketState, now: datetime) -> list[Effect]:
    """Handle every deadline due at ``now``: validator timeouts, then the stuck check."""
    effects: list[Effect] = []
    if state.status != "open":
        return effects
    effects += health.tick(state, now)
    timeout = timedelta(seconds=state.spec.policy.validation.validator_timeout_s)
    # The tasks under review (the index's set), in creation order: not a pass over all tasks.
    for task in sorted((state.tasks[t] for t in state.index().reviewing), key=lambda t: t.seq):
        if (
            task.review_requested_at is None
            or task.status not in ("under_review", "validation_in_progress")
            or task.review_requested_at + timeout > now
        ):
            continue
        waited = (now - task.review_requested_at).total_seconds()
        who = f"validator {task.reviewer}" if task.reviewer else "any validator"
        task.status = "failed"
        task.failure_reason = (
            f"no review from {who} within {timeout.total_seconds():g} s (validator timeout; "
            f"iteration {task.iteration} waited {waited:.0f} s)"
        )
        task.assigned_agent = None
        task.reviewer = None
        task.review_requested_at = None
        task.review_content = None
        task.updated_at = now
        state.last_activity_at = now
        log(
            state,
            now,
            "validation_timeout",
            f"{task.id} failed: {task.failure_reason}",
            task_id=task.id,
        )
        diagnosis.recovery_task_failed(state, task, now)
        effects += diagnosis.request_diagnosis(
            state, "validation_timeout", now, reason=f"{task.id}: {task.failure_reason}"
        )
    for version in state.results:
        if (
            version.status == "pending_validation"
            and not version.timeout_reported
            and version.submitted_at + timeout <= now
        ):
            # A final result is never failed for a missing verdict (nothing a user gave us is
            # lost); the ticket asks for a diagnosis instead, once per version.
            version.timeout_reported = True
            log(
                state,
                now,
                "validation_timeout",
                f"result v{version.version} has had no verdict for {timeout.total_seconds():g} s",
            )
            effects += diagnosis.request_diagnosis(
                state,
                "validation_timeout",
                now,
                reason=f"result v{version.version} awaits a verdict for "
                f"{timeout.total_seconds():g} s",
            )
    behaviour.rescore(state, now)  # fresh scores for the verification of calm
    diagnosis.verify_tick(state, now)  # a failed verification first: the ladder sees it
    effects += behaviour.tick(state, now)  # an anomaly is more specific than being stuck
    return effects + diagnosis.tick(state, now)
