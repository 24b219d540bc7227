"""Running automated checks for a workflow (validators' and result validation's checks)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading

from temporalio import activity

from models.validation import RUN_CHECKS_ACTIVITY, ChecksReport, RunChecks
from validation.checks import ChecksCancelled
from validation.checks import run_checks as run_checks_sync


@activity.defn(name=RUN_CHECKS_ACTIVITY)
async def run_checks(request: RunChecks) -> ChecksReport:
    """Run the checks in a thread; heartbeat the running check's index at least every second.

    Set a heartbeat timeout when scheduling it: cancellation reaches an activity through its
    heartbeats. When the activity is cancelled, the running command's process group is
    killed (SIGTERM, SIGKILL 2 s later) before the cancellation propagates.
    """
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()  # activity.heartbeat needs the activity's context
    cancel = threading.Event()

    def on_progress(index: int) -> None:
        # Called from the worker thread; the SDK's async heartbeat must run on the loop.
        loop.call_soon_threadsafe(_heartbeat, index, context=context)

    job = loop.run_in_executor(None, lambda: run_checks_sync(request, on_progress, cancel=cancel))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        cancel.set()
        with contextlib.suppress(ChecksCancelled):
            await job  # wait for the process group to be gone
        raise


def _heartbeat(index: int) -> None:
    with contextlib.suppress(RuntimeError):  # the activity already finished: a late call
        activity.heartbeat(index)
