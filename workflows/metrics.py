"""Unstuck's own metrics, emitted from the ticket workflow (DESIGN §9).

``workflow.metric_meter()`` is replay-safe: nothing is emitted while a workflow replays, and
the meter adds no history events and no commands. Counters that follow the state
(restarts, quarantines, validation iterations) are emitted as deltas against the last
observed state, so a continued-as-new run starts from the carried totals and counts only
what is new. With the worker's Runtime serving Prometheus (``UNSTUCK_METRICS_ADDRESS``)
they appear at ``/metrics`` next to the SDK's ``temporal_*`` metrics.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.common import MetricCounter, MetricHistogram

with workflow.unsafe.imports_passed_through():
    from core.common import StartDiagnosis
    from core.state import TicketState

__all__ = ["TicketMetrics"]


def _validation_iterations(state: TicketState) -> int:
    """Task results sent to review plus final result versions submitted."""
    return state.index().iterations + len(state.results)


def _quarantines(state: TicketState) -> int:
    return sum(1 for lineage in state.lineages.values() if lineage.quarantined)


class TicketMetrics:
    """The ticket workflow's counters and histogram (created on first use)."""

    def __init__(self, state: TicketState) -> None:
        self._restarts = state.restarts_total
        self._quarantines = _quarantines(state)
        self._iterations = _validation_iterations(state)
        self._instruments: dict[str, Any] = {}

    def _counter(self, name: str, description: str) -> MetricCounter:
        if name not in self._instruments:
            self._instruments[name] = workflow.metric_meter().create_counter(name, description)
        counter: MetricCounter = self._instruments[name]
        return counter

    def _histogram(self, name: str, description: str, unit: str) -> MetricHistogram:
        if name not in self._instruments:
            self._instruments[name] = workflow.metric_meter().create_histogram(
                name, description, unit
            )
        histogram: MetricHistogram = self._instruments[name]
        return histogram

    def ticked(
        self, state: TicketState, stuck_due: datetime | None, now: datetime, effects: list[Any]
    ) -> None:
        """After ``deadlines.tick``: a stuck detection, and how late its diagnosis started."""
        if stuck_due is None or stuck_due > now or state.stuck_since is None:
            return
        self._counter("unstuck_stuck_detections", "tickets found stuck").add(1)
        for effect in effects:
            if isinstance(effect, StartDiagnosis) and effect.input.trigger == "no_result":
                overshoot = max(0, round((now - stuck_due).total_seconds() * 1000))
                self._histogram(
                    "unstuck_detection_overshoot_ms",
                    "diagnosis start minus the moment the ticket became stuck",
                    "ms",
                ).record(overshoot)

    def diagnosis_started(self, trigger: str) -> None:
        self._counter("unstuck_diagnoses", "diagnoses started").add(1, {"trigger": trigger})

    def observe(self, state: TicketState) -> None:
        """After every state change: restarts, quarantines, validation iterations."""
        for name, description, attr, now in (
            ("unstuck_restarts", "agent restarts", "_restarts", state.restarts_total),
            ("unstuck_quarantines", "agents quarantined", "_quarantines", _quarantines(state)),
            (
                "unstuck_validation_iterations",
                "task results sent to review and result versions submitted",
                "_iterations",
                _validation_iterations(state),
            ),
        ):
            before: int = getattr(self, attr)
            if now > before:
                self._counter(name, description).add(now - before)
            setattr(self, attr, now)
