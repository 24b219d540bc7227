"""A real agent program for demos and tests, with knobs to make it fail on purpose.

    python -m agents.demo_agent --ticket login-1 --name ada
    python -m agents.demo_agent --ticket login-1 --name vera --kind validator

Every option defaults to the ``UNSTUCK_*`` variables the ``local-process`` runtime sets
(``UNSTUCK_TICKET_ID``, ``UNSTUCK_AGENT_NAME``, ``UNSTUCK_AGENT_KIND``,
``UNSTUCK_TEMPORAL_ADDRESS``, ``UNSTUCK_NAMESPACE``).

A **worker** claims tasks, pretends to work (``--work-seconds``) and completes them; a task
sent back by a failed review comes back to it and is done again. When it claims a
``submission`` task it submits the final result (every criterion ticked, a table of the
tasks) and completes the task; when the latest version it submitted is rejected it submits a
revision. A **validator** claims tasks awaiting review and passes them (a non-empty result),
and judges every result version awaiting a verdict: it passes a version that covers every
criterion (``- [x] <criterion>``) and rejects it otherwise. When the ticket asks the agent to
restart itself (``inbox.restart``) it registers again.

Fault knobs:

``--crash-after-claims N``  SIGKILL itself right after its N-th claim, holding the task
                           (``--crash-only-in-generation G``: only in process generation G)
``--ignore-sigterm``        ignore SIGTERM (the runtime has to SIGKILL it)
``--forget-result``         complete submission tasks without ever submitting the result
``--fail-review-once``      validator: reject the first review iteration of every task and
                            the first result version of the ticket, with feedback; judge
                            later ones normally
``--slow-heartbeats S``     heartbeat every S seconds instead of the ticket's interval
``--work-seconds A B``      each task takes a random time between A and B seconds
``--fail-tasks REGEX``      fail every claimed task whose id or title matches, with
                           ``--fail-reason`` (until a done task's title starts with
                           ``--fixed-by PREFIX``, when given: the environment was fixed)
``--reject-reviews``        validator: reject every review iteration of every task
``--never-review``          validator: claim reviews and never give a verdict
``--loop``                  worker: take one task and report the same progress forever
                           (when a diagnosis takes the task back, claim again and loop on;
                           ``--alternate``: two notes in turn, A/B/A/B)
``--wedged``                worker: in its first process generation, register and heartbeat
                           but never claim (a wedged main loop); replacements work normally
``--stall``                 worker: hold the first task it claims and do nothing (heartbeats
                           going) until a diagnosis takes it back; then work normally
``--storm N``               worker: create N tasks as fast as it can, once
``--trivial-results``       worker: every result (tasks and the final one) is just "ok"
``--submit-early``          worker: submit a result before any work is done, covering no
                           criterion, and never revise it by itself

And one habit of a healthy fleet: ``--submit-when-done`` submits the final result once every
task is done and nobody has (without it, only a ``submission`` task makes an agent submit).

Exit codes: 0 when the ticket tells it to stop (inbox), the ticket is closed, or on
SIGTERM/SIGINT (within about a second: heartbeats stop, nothing else is sent); 1 on an
unexpected error; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import re
import signal
import sys
from collections.abc import Sequence

from temporalio.client import Client

from agent_client.session import AgentSession, Refused, TicketClosed
from infra.client import connect
from infra.settings import Settings
from models.messages import ResultVersionView, StatusView, TaskView
from models.spec import RESULT_TYPES, TicketSpec

log = logging.getLogger("unstuck.demo_agent")

#: Pause between two looks at the ticket when there is nothing to do.
IDLE_S = 0.3
CONNECT_ATTEMPTS = 10


def command(*knobs: str) -> list[str]:
    """The spec ``command`` that runs this program for the ticket's agent, with fault knobs
    (the local-process runtime fills in ``{python}``, ``{ticket_id}`` and ``{agent_name}``)."""
    return [
        "{python}",
        "-m",
        "agents.demo_agent",
        "--ticket",
        "{ticket_id}",
        "--name",
        "{agent_name}",
        *knobs,
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="python -m agents.demo_agent", description="A demo agent for an Unstuck ticket."
    )
    p.add_argument("--ticket", default=env.get("UNSTUCK_TICKET_ID"), help="ticket id")
    p.add_argument("--name", default=env.get("UNSTUCK_AGENT_NAME"), help="agent name")
    p.add_argument(
        "--kind",
        choices=("worker", "validator"),
        default=env.get("UNSTUCK_AGENT_KIND") or "worker",
    )
    p.add_argument("--address", default=None, help="Temporal host:port (UNSTUCK_TEMPORAL_ADDRESS)")
    p.add_argument("--namespace", default=None, help="Temporal namespace (UNSTUCK_NAMESPACE)")
    p.add_argument("--crash-after-claims", type=int, default=None, metavar="N")
    p.add_argument(
        "--crash-only-in-generation",
        type=int,
        default=None,
        metavar="G",
        help="crash only in this process generation (0 = the first; replacements count up)",
    )
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--forget-result", action="store_true")
    p.add_argument("--fail-review-once", action="store_true")
    p.add_argument("--slow-heartbeats", type=float, default=None, metavar="S")
    p.add_argument("--work-seconds", type=float, nargs=2, default=(0.1, 0.3), metavar=("A", "B"))
    p.add_argument("--fail-tasks", default=None, metavar="REGEX")
    p.add_argument("--fail-reason", default="fault knob: the task failed")
    p.add_argument("--fixed-by", default=None, metavar="PREFIX")
    p.add_argument("--reject-reviews", action="store_true")
    p.add_argument("--never-review", action="store_true")
    p.add_argument("--loop", action="store_true")
    p.add_argument("--stall", action="store_true")
    p.add_argument("--wedged", action="store_true")
    p.add_argument("--alternate", action="store_true")
    p.add_argument("--submit-when-done", action="store_true")
    p.add_argument("--storm", type=int, default=0, metavar="N")
    p.add_argument("--trivial-results", action="store_true")
    p.add_argument("--submit-early", action="store_true")
    args = p.parse_args(argv)
    if not args.ticket:
        p.error("--ticket (or UNSTUCK_TICKET_ID) is required")
    if not args.name:
        p.error("--name (or UNSTUCK_AGENT_NAME) is required")
    if args.kind not in ("worker", "validator"):
        p.error(f"--kind: {args.kind!r} is not worker or validator")
    if args.crash_after_claims is not None and args.crash_after_claims < 1:
        p.error("--crash-after-claims must be at least 1")
    if args.slow_heartbeats is not None and args.slow_heartbeats <= 0:
        p.error("--slow-heartbeats must be positive")
    low, high = args.work_seconds
    if low < 0 or high < low:
        p.error("--work-seconds A B needs 0 <= A <= B")
    return args


class DemoAgent:
    """One demo agent (worker or validator) on one ticket."""

    def __init__(self, client: Client, args: argparse.Namespace) -> None:
        self.client = client
        self.args = args
        self.handle = client.get_workflow_handle(args.ticket)
        self.claims = 0
        self.completed = 0
        self.session = self._new_session()

    def _new_session(self) -> AgentSession:
        return AgentSession(
            self.client,
            self.args.ticket,
            name=self.args.name,
            kind=self.args.kind,
            heartbeat_interval_s=self.args.slow_heartbeats,
        )

    async def run(self) -> None:
        """Register and work until the ticket says stop or closes.

        When the ticket asks this agent to restart itself (``inbox.restart``, how an
        external agent is restarted) it registers again as a fresh agent.
        """
        while True:
            async with self.session as agent:
                log.info(
                    "registered as %s (%s) on ticket %s",
                    agent.agent_id,
                    agent.kind,
                    agent.ticket_id,
                )
                if agent.kind == "validator":
                    await self._validate()
                else:
                    await self._work()
            if not self.session.inbox.restart or self.session.stop_requested.is_set():
                break
            log.info("the ticket asked for a restart: registering again")
            self.session = self._new_session()
        log.info("stopping: %s", self.session.inbox.stop_reason or "ticket closed or done")

    # ---- worker ------------------------------------------------------------------------

    async def _work(self) -> None:
        agent = self.session
        if self.args.wedged and os.environ.get("UNSTUCK_AGENT_GENERATION", "0") == "0":
            log.warning("fault knob: wedged, heartbeats only")
            while not await self._should_stop():
                await asyncio.sleep(0.5)
            return
        if self.args.storm:
            await self._storm(self.args.storm)
        if self.args.submit_early and not await self._results():
            log.warning("fault knob: submitting a result before doing any work")
            await agent.submit_result("# Result\n\nAlmost there.\n")
        task = await self._claim()
        while not await self._should_stop():
            if task is None:
                await self._resubmit_if_rejected()
                if self.args.submit_when_done:
                    await self._submit_if_all_done()
                await _wait(agent.stop_requested, IDLE_S)
                task = await self._claim()
                continue
            await agent.progress(task.id, f"working on {task.title!r}")
            if self.args.loop:
                await self._loop_forever(task)
                task = await self._claim()
                continue
            if self.args.stall and self.claims == 1:
                await self._stall(task)
                task = await self._claim()
                continue
            await asyncio.sleep(random.uniform(*self.args.work_seconds))
            if await self._should_fail(task):
                log.warning("fault knob: failing %s %r", task.id, task.title)
                with contextlib.suppress(Refused):
                    await agent.fail(task.id, self.args.fail_reason)
                task = None
                continue
            if self.args.trivial_results and task.type != "submission":
                result = "ok"
            elif task.type == "submission":
                result = await self._do_submission()
            else:
                result = f"## {task.title}\n\nDone for phase *{task.phase}* ({task.type}).\n"
                if task.last_feedback:
                    result += f"\nReview feedback addressed: {task.last_feedback}\n"
            try:
                reply = await agent.complete(
                    task.id, result, RESULT_TYPES.get(task.type, "implementation"), claim_next=True
                )
            except Refused as exc:
                if exc.field == "ticket":
                    raise
                # E.g. the task was taken back while this agent looked unresponsive.
                log.warning("could not complete %s: %s", task.id, exc)
                task = None
                continue
            self.completed += 1
            log.info("completed %s %r (%d done)", task.id, task.title, self.completed)
            task = reply.next.task if reply.next is not None else None
            if task is not None:
                self._claimed(task)

    async def _storm(self, n: int) -> None:
        """Runaway creation: n tasks as fast as the ticket takes them (refusals logged)."""
        log.warning("fault knob: creating %d tasks", n)
        made = refused = 0
        for i in range(n):
            try:
                await self.session.create_task("implementation", f"Investigate flaky check {i}")
                made += 1
            except Refused as exc:
                refused += 1
                if refused == 1:
                    log.warning("create_task refused: %s", exc)
        log.warning("fault knob: storm done, %d created, %d refused", made, refused)

    async def _should_fail(self, task: TaskView) -> bool:
        pattern = self.args.fail_tasks
        if pattern is None or not (re.search(pattern, task.id) or re.search(pattern, task.title)):
            return False
        if self.args.fixed_by is None:
            return True
        tasks = await self.handle.query("tasks", result_type=list[TaskView])
        fixed = any(t.status == "done" and t.title.startswith(self.args.fixed_by) for t in tasks)
        return not fixed

    async def _loop_forever(self, task: TaskView) -> None:
        """Busy but stuck: the same note every second, heartbeats going, never done (until
        a diagnosis takes the task back)."""
        log.warning("fault knob: looping on %s", task.id)
        notes = ["checking the build again"]
        if self.args.alternate:
            notes = ["reverting the config change", "applying the config change"]
        beat = 0
        while not await self._should_stop():
            if self.session.interrupted(task.id):
                log.warning("interrupted on %s; claiming again", task.id)
                return
            await self.session.progress(task.id, notes[beat % len(notes)])
            beat += 1
            await asyncio.sleep(1.0)
        raise TicketClosed("the ticket finished while this agent looped")

    async def _stall(self, task: TaskView) -> None:
        """Hung: hold the task and do nothing, heartbeats going, until it is taken back."""
        log.warning("fault knob: stalling on %s", task.id)
        while not await self._should_stop():
            if self.session.interrupted(task.id):
                log.warning("interrupted on %s; back to normal work", task.id)
                return
            await asyncio.sleep(0.5)
        raise TicketClosed("the ticket finished while this agent stalled")

    async def _claim(self) -> TaskView | None:
        task = await self.session.claim()
        if task is not None:
            self._claimed(task)
        return task

    def _claimed(self, task: TaskView) -> None:
        self.claims += 1
        log.info("claimed %s %r (claim %d)", task.id, task.title, self.claims)
        limit = self.args.crash_after_claims
        generation = os.environ.get("UNSTUCK_AGENT_GENERATION", "0")
        only = self.args.crash_only_in_generation
        if limit is not None and self.claims >= limit and (only is None or str(only) == generation):
            log.warning("fault knob: crashing (SIGKILL) while holding %s", task.id)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)

    async def _do_submission(self) -> str:
        if self.args.forget_result:
            log.warning("fault knob: completing the submission task without submitting")
            return "Looked at everything; all done.\n"
        version = await self._submit()
        return f"Submitted the final result as v{version}.\n"

    async def _submit(self, feedback: str | None = None) -> int:
        if self.args.trivial_results:
            reply = await self.session.submit_result("ok")
            return reply.version
        spec = await self.handle.query("spec", result_type=TicketSpec)
        tasks = await self.handle.query("tasks", result_type=list[TaskView])
        lines = [f"# {spec.title}: final result", ""]
        if feedback:
            lines += ["## Review feedback addressed", "", feedback, ""]
        lines += ["## Criteria", ""]
        lines += [f"- [x] {criterion}" for criterion in spec.criteria_text()]
        lines += ["", "## Tasks", "", "| task | phase | title | status |", "|---|---|---|---|"]
        lines += [f"| {t.id} | {t.phase} | {t.title} | {t.status} |" for t in tasks]
        reply = await self.session.submit_result("\n".join(lines) + "\n")
        log.info("submitted the final result as v%d", reply.version)
        return reply.version

    async def _submit_if_all_done(self) -> None:
        tasks = await self.handle.query("tasks", result_type=list[TaskView])
        if not tasks or any(t.status not in ("done", "cancelled") for t in tasks):
            return
        if await self._results():
            return
        await self._submit()

    async def _resubmit_if_rejected(self) -> None:
        """When the latest version is ours and was rejected, submit a revised one."""
        if self.args.forget_result or self.args.submit_early:
            return
        results = await self._results()
        if not results or any(r.status != "rejected" for r in results):
            return  # nothing submitted, one pending, or one validated
        latest = results[-1]
        if latest.agent_id != self.session.agent_id:
            return
        log.info("v%d was rejected (%s): submitting a revision", latest.version, latest.feedback)
        await self._submit(feedback=latest.feedback or "")

    # ---- validator ---------------------------------------------------------------------

    async def _validate(self) -> None:
        agent = self.session
        while not await self._should_stop():
            task = await agent.claim()  # a validator's claim: a task awaiting review
            if task is not None:
                await self._review_task(task)
                continue
            await self._review_results()
            await _wait(agent.stop_requested, IDLE_S)

    async def _review_task(self, task: TaskView) -> None:
        await asyncio.sleep(random.uniform(*self.args.work_seconds))
        if self.args.never_review:
            log.warning("fault knob: holding the review of %s forever", task.id)
            await self.session.stop_requested.wait()
            return
        if self.args.reject_reviews:
            passed, feedback = False, "fault knob: rejected again; the tests still fail"
        elif self.args.fail_review_once and task.iteration <= 1:
            passed, feedback = False, "fault knob: first iteration rejected; add evidence"
        else:
            passed = bool((task.result_content or task.result_preview or "").strip())
            feedback = "" if passed else "the result is empty"
        try:
            await self.session.review_task(task.id, task.iteration, passed, feedback)
        except Refused as exc:
            if exc.field == "ticket":
                raise
            log.warning("could not review %s: %s", task.id, exc)
            return
        log.info(
            "reviewed %s iteration %d: %s",
            task.id,
            task.iteration,
            "passed" if passed else f"rejected ({feedback})",
        )

    async def _review_results(self) -> None:
        """Judge every result version awaiting a verdict against its criteria snapshot."""
        results = await self._results()
        rejected_before = any(r.status == "rejected" for r in results)
        for result in results:
            if result.status != "pending_validation":
                continue
            content = await self.session.result_content(result.version) or ""
            missing = [c for c in result.criteria if f"- [x] {c}" not in content]
            if self.args.fail_review_once and not rejected_before:
                passed = False
                feedback = "fault knob: first version rejected; add more evidence"
                rejected_before = True
            else:
                passed = not missing
                feedback = "; ".join(f"not covered: {c}" for c in missing)
            try:
                await self.session.review_result(
                    result.version,
                    passed=passed,
                    feedback=feedback,
                    evidence=[f"covered: {c}" for c in result.criteria if c not in missing],
                )
            except Refused as exc:
                if exc.field == "ticket":
                    raise
                log.warning("could not review v%d: %s", result.version, exc)  # judged already
                continue
            log.info(
                "reviewed v%d: %s",
                result.version,
                "passed" if passed else f"rejected ({feedback})",
            )

    # ---- shared ------------------------------------------------------------------------

    async def _results(self) -> list[ResultVersionView]:
        return await self.handle.query("results", result_type=list[ResultVersionView])

    async def _should_stop(self) -> bool:
        """Stop (or restart) requested, or the ticket finished (queries still answer then)."""
        if self.session.stop_requested.is_set() or self.session.inbox.restart:
            return True
        status = await self.handle.query("status", result_type=StatusView)
        return status.finished_at is not None or status.status in ("completed", "cancelled")


async def _wait(event: asyncio.Event, timeout: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


async def _connect(settings: Settings) -> Client:
    delay = 0.2
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            return await connect(settings)
        except Exception as exc:  # the server may still be starting
            if attempt == CONNECT_ATTEMPTS:
                raise
            log.warning("cannot reach Temporal at %s yet: %s", settings.temporal_address, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


async def amain(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    terminated = asyncio.Event()
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.warning("fault knob: ignoring SIGTERM")
    else:
        loop.add_signal_handler(signal.SIGTERM, terminated.set)
    loop.add_signal_handler(signal.SIGINT, terminated.set)

    settings = Settings.from_env(temporal_address=args.address, namespace=args.namespace)
    client = await _connect(settings)
    agent = DemoAgent(client, args)
    work = asyncio.create_task(agent.run(), name=f"agent {args.name}")
    stop = asyncio.create_task(terminated.wait(), name="sigterm")
    await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    if not work.done():
        log.info("SIGTERM: stopping heartbeats and exiting")
        work.cancel()
        # Whatever the interrupted work raises now (cancelled, timed out, a failed call)
        # does not matter: the agent was told to go, and goes.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(work, 1.0)
        return 0
    stop.cancel()
    try:
        work.result()
    except TicketClosed as exc:
        log.info("stopping: %s", exc)
    except Refused as exc:
        if exc.field != "ticket":
            raise
        log.info("the ticket no longer takes messages: %s", exc)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s {args.name} %(levelname)s %(message)s",
    )
    logging.getLogger("temporalio").setLevel(logging.WARNING)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        log.error("failed: %s: %s", type(exc).__name__, exc, exc_info=True)
        return 1


def _exit(code: int) -> None:
    """Flush and leave without interpreter teardown.

    The Temporal client's core threads may still call back into Python while the
    interpreter finalises, which aborts the process ("PyGILState_Release: thread state
    ... must be current", temporalio/sdk-python#300) and would turn a clean exit into
    SIGABRT. Nothing is left to clean up at this point.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main())
