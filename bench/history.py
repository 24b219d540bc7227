"""Fetch a workflow's full history (across continue-as-new runs) and classify its events."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

_CONTINUED = EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
_WFT_SCHEDULED = EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED
_WFT_COMPLETED = EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
_WFT_FAILED = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED

#: Which part of the workflow an event type is charged to in the summary.
SOURCES: dict[str, str] = {
    "WorkflowTaskScheduled": "workflow tasks",
    "WorkflowTaskStarted": "workflow tasks",
    "WorkflowTaskCompleted": "workflow tasks",
    "WorkflowTaskFailed": "workflow tasks",
    "WorkflowTaskTimedOut": "workflow tasks",
    "WorkflowExecutionUpdateAccepted": "updates",
    "WorkflowExecutionUpdateCompleted": "updates",
    "WorkflowExecutionUpdateAdmitted": "updates",
    "WorkflowExecutionUpdateRejected": "updates",
    "ActivityTaskScheduled": "activities",
    "ActivityTaskStarted": "activities",
    "ActivityTaskCompleted": "activities",
    "ActivityTaskFailed": "activities",
    "ActivityTaskTimedOut": "activities",
    "UpsertWorkflowSearchAttributes": "search attributes",
    "WorkflowPropertiesModified": "search attributes",
    "TimerStarted": "timers",
    "TimerFired": "timers",
    "TimerCanceled": "timers",
    "WorkflowExecutionSignaled": "signals",
    "MarkerRecorded": "markers (local activities, side effects)",
}


def event_name(event_type: int) -> str:
    """``EVENT_TYPE_WORKFLOW_TASK_SCHEDULED`` -> ``WorkflowTaskScheduled``."""
    raw = EventType.Name(event_type).removeprefix("EVENT_TYPE_")  # type: ignore[arg-type]
    return "".join(part.capitalize() for part in raw.split("_"))


def source_of(name: str) -> str:
    return SOURCES.get(name, "workflow start/end, other")


@dataclass
class HistoryStats:
    """Events of one workflow id, all runs."""

    workflow_id: str
    runs: int = 0
    events: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    #: What made the server schedule each workflow task (see :func:`_trigger`).
    wft_triggers: Counter[str] = field(default_factory=Counter)
    #: Events whose server time falls in [start, end) of a window given to :func:`analyse`.
    in_window: int = 0
    in_window_by_type: Counter[str] = field(default_factory=Counter)
    #: The first few workflow task failures: "CAUSE: message".
    wft_failures: list[str] = field(default_factory=list)

    def by_source(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for name, n in self.by_type.items():
            out[source_of(name)] += n
        return out


async def fetch_runs(
    client: Client, workflow_id: str, first_run_id: str
) -> list[list[HistoryEvent]]:
    """The events of every run of the chain that starts at ``first_run_id``."""
    runs: list[list[HistoryEvent]] = []
    run_id: str | None = first_run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        events = list(history.events)
        runs.append(events)
        run_id = None
        if events and events[-1].event_type == _CONTINUED:
            attrs = events[-1].workflow_execution_continued_as_new_event_attributes
            run_id = attrs.new_execution_run_id or None
    return runs


_TRIGGERS: dict[str, str] = {
    "WorkflowExecutionStarted": "run start",
    "ActivityTaskCompleted": "activity result",
    "ActivityTaskFailed": "activity result",
    "ActivityTaskTimedOut": "activity result",
    "TimerFired": "timer",
    "WorkflowExecutionSignaled": "signal",
    "WorkflowTaskFailed": "workflow task retry",
    "WorkflowTaskTimedOut": "workflow task retry",
    "WorkflowExecutionCancelRequested": "cancel request",
    "WorkflowExecutionUpdateAdmitted": "update(s)",
}


def _trigger(between: list[str]) -> str:
    """Why a workflow task was scheduled, from the events since the previous one completed.

    Only events the outside world adds count (an activity result, a fired timer, a signal);
    the events a completed workflow task's own commands add (ActivityTaskScheduled,
    UpsertWorkflowSearchAttributes, Update*) do not. Updates leave no event before their
    workflow task (they are accepted in it), so a task with no trigger event was scheduled
    for update(s). A task with both (an update arriving with an activity result) is
    charged to the event.
    """
    found = sorted({_TRIGGERS[n] for n in between if n in _TRIGGERS})
    return " + ".join(found) if found else "update(s)"


def analyse(
    workflow_id: str,
    runs: list[list[HistoryEvent]],
    window: tuple[datetime, datetime] | None = None,
) -> HistoryStats:
    stats = HistoryStats(workflow_id=workflow_id, runs=len(runs))
    for events in runs:
        between: list[str] = []
        for ev in events:
            name = event_name(ev.event_type)
            stats.events += 1
            stats.by_type[name] += 1
            if window is not None:
                at = ev.event_time.ToDatetime().replace(tzinfo=window[0].tzinfo)
                if window[0] <= at < window[1]:
                    stats.in_window += 1
                    stats.in_window_by_type[name] += 1
            if ev.event_type == _WFT_FAILED and len(stats.wft_failures) < 3:
                attrs = ev.workflow_task_failed_event_attributes
                cause = WorkflowTaskFailedCause.Name(attrs.cause).removeprefix(
                    "WORKFLOW_TASK_FAILED_CAUSE_"
                )
                stats.wft_failures.append(f"{cause}: {attrs.failure.message[:300]}")
            if ev.event_type == _WFT_SCHEDULED:
                stats.wft_triggers[_trigger(between)] += 1
                between = []
            elif ev.event_type == _WFT_COMPLETED:
                between = []
            elif name not in ("WorkflowTaskStarted",):
                between.append(name)
    return stats
