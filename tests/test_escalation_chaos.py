"""Chaos on escalation delivery, with real processes: the worker running a
``deliver_escalation`` activity is SIGKILLed mid-delivery (one sink took the message, the
other is down). Another worker process must resume from the heartbeat details: the sink
that is back gets the message once, the one that already took it is not sent it again, and
the next message (resolve) reaches each sink exactly once.

Timings are measured and printed, not asserted (a loaded 2-core machine).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import Client

from agent_client.session import AgentSession
from infra.settings import Settings
from models.messages import EscalationView
from models.notify import DELIVER_ESCALATION_ACTIVITY
from tests.chaoskit import QUIET_POLICY, WorkerProcess, history_facts
from tests.conftest import unique_id
from tests.receiver import Receiver
from tests.ticketkit import Launched, launch, spec_dict

pytestmark = pytest.mark.chaos

#: Receiver B comes up this long after the worker running the delivery is killed.
B_DOWN_AFTER_KILL_S = 5.0
#: The delivery's backoff cap (policy.escalation.retry_max_interval_s): short, so the test
#: measures the failover rather than the backoff.
RETRY_MAX_INTERVAL_S = 2
#: How long a workflow task started on the killed worker waits before another worker gets it.
WFT_TIMEOUT = timedelta(seconds=4)
#: Bounds on waiting (generous: the heartbeat timeout alone is 10 s).
WAIT_S = 45.0


@dataclass
class Delivering:
    """The pending delivery activity as the server describes it."""

    worker_identity: str
    attempt: int
    details: list[Any]


async def eventually(
    check: Callable[[], Awaitable[Any]], what: str, timeout: float = WAIT_S
) -> Any:
    """Poll ``check`` until it returns something truthy (its value)."""
    end = time.monotonic() + timeout
    while True:
        if value := await check():
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.1)


async def pending_delivery(client: Client, ticket: Launched) -> Delivering | None:
    """The started deliver_escalation activity, its worker and its heartbeat details."""
    described = await ticket.handle.describe(rpc_timeout=timedelta(seconds=5))
    running: list[PendingActivityInfo] = [
        p
        for p in described.raw_description.pending_activities
        if p.activity_type.name == DELIVER_ESCALATION_ACTIVITY
        and p.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
    ]
    if not running:
        return None
    p = running[0]
    details = (
        await client.data_converter.decode(list(p.heartbeat_details.payloads))
        if p.HasField("heartbeat_details")
        else []
    )
    return Delivering(p.last_worker_identity, p.attempt, details)


async def escalation(ticket: Launched, escalation_id: str) -> EscalationView:
    views = await ticket.handle.query(
        "escalations", result_type=list[EscalationView], rpc_timeout=timedelta(seconds=10)
    )
    return next(v for v in views if v.id == escalation_id)


async def finished_delivery(
    ticket: Launched, escalation_id: str, index: int
) -> EscalationView | None:
    view = await escalation(ticket, escalation_id)
    if len(view.deliveries) > index and view.deliveries[index].status != "pending":
        return view
    return None


def worker_log_findings(workers: list[WorkerProcess]) -> list[str]:
    """Worker log lines worth a look: errors, tracebacks, warnings other than the expected
    'not delivered' of the receiver that is down."""
    found: list[str] = []
    for w in workers:
        try:
            lines = w.log_path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if "not delivered" in line:
                continue
            if any(k in line for k in ("ERROR", "Traceback", "CRITICAL", "WARNING")):
                found.append(f"{w.log_path.name}: {line[:300]}")
    return found


async def test_worker_sigkilled_mid_delivery_resumes_without_sending_again(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    a = Receiver().up()
    b = Receiver()  # down: connections refused until it comes up
    base = settings.model_copy(
        update={
            "task_queue": unique_id("notify-kill"),  # the session's in-process worker stays out
            "database_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        }
    )
    workers = [
        WorkerProcess(
            base.model_copy(update={"data_dir": tmp_path / f"worker{i}"}),
            tmp_path / f"worker{i}.log",
        )
        for i in range(2)
    ]
    sinks = [
        {"name": "hook-a", "kind": "webhook", "url": a.url},
        {"name": "hook-b", "kind": "webhook", "url": b.url},
    ]
    policy = {
        **QUIET_POLICY,
        "escalation": {"sinks": sinks, "retry_max_interval_s": RETRY_MAX_INTERVAL_S},
    }
    ticket: Launched | None = None
    try:
        for w in workers:
            w.start()
        for w in workers:
            await w.wait_polling(client)
        ticket = await launch(
            client,
            base,
            spec_dict(unique_id("notify-kill"), policy=policy),
            task_timeout=WFT_TIMEOUT,
        )
        async with AgentSession(client, ticket.ticket_id, name="alice") as alice:
            task = await alice.claim()
            assert task is not None
            asked = await alice.ask_human("Which OAuth provider: Google or GitHub?", task.id)
            qid = asked.question_id

            # A took the trigger; B is down, so the activity is still running, retrying B.
            await eventually(lambda: _async(bool(a.ok())), "receiver A got the trigger")
            # The server knows A is done (the attempt's first heartbeat is sent at once):
            # a worker killed before that point could not be expected to remember it.
            delivering: Delivering = await eventually(
                lambda: _heartbeat_with(client, ticket, "hook-a"),
                "a heartbeat of the delivery naming hook-a as delivered",
            )
            victim = next(
                (w for w in workers if delivering.worker_identity.startswith(f"{w.pid}@")), None
            )
            assert victim is not None, (
                f"no worker of ours runs the delivery: {delivering.worker_identity!r} "
                f"(pids {[w.pid for w in workers]})"
            )
            survivor = next(w for w in workers if w is not victim)
            a_before_kill = a.attempts
            victim.kill()
            killed_at = time.time()

            await asyncio.sleep(B_DOWN_AFTER_KILL_S)
            b.up()
            b_up_at = time.time()
            await eventually(lambda: _async(bool(b.ok())), "receiver B got the trigger")
            b_got_at = b.ok()[0].at
            first = await eventually(
                lambda: finished_delivery(ticket, qid, 0), "the trigger's delivery finished"
            )
            trigger_requests = (a.attempts, b.attempts)
            resumed = await _resumed_attempt(client, ticket)

            resolved = await ticket.handle.execute_update(
                "resolve",
                {
                    "operator_token": ticket.operator_token,
                    "operator": "olga",
                    "escalation_id": qid,
                    "note": "GitHub.",
                },
                result_type=EscalationView,
                rpc_timeout=timedelta(seconds=30),
            )
            assert resolved.status == "resolved"
            second = await eventually(
                lambda: finished_delivery(ticket, qid, 1), "the resolve's delivery finished"
            )
            # A late duplicate would arrive after the delivery finished: give it a moment.
            await asyncio.sleep(1.0)

        facts = await history_facts(client, ticket.ticket_id, ticket.handle.first_execution_run_id)
        findings = worker_log_findings(workers)
        a_events, b_events = a.events(), b.events()
        a_triggers = sum(e == ("trigger", qid) for e in a_events)
        print(
            f"\nworker SIGKILLed mid-delivery (pid {victim.pid}; survivor pid {survivor.pid}):\n"
            f"  heartbeat at the kill: attempt {delivering.attempt}, details {delivering.details}\n"
            f"  kill -> B up {b_up_at - killed_at:.1f} s; kill -> B got the trigger "
            f"{b_got_at - killed_at:.1f} s (after B up {b_got_at - b_up_at:.1f} s)\n"
            f"  resumed attempt: {resumed}\n"
            f"  requests answered for the trigger: A {trigger_requests[0]} (before the kill "
            f"{a_before_kill}), B {trigger_requests[1]}; A saw a duplicate trigger: "
            f"{a_triggers > 1}\n"
            f"  requests answered in all: A {a.attempts} {a_events}, B {b.attempts} {b_events}\n"
            f"  trigger delivery {first.deliveries[0].status} to {first.deliveries[0].delivered}"
            f", resolve delivery {second.deliveries[1].status} to "
            f"{second.deliveries[1].delivered}\n"
            f"  history: {facts.events} events, activity timeouts {facts.activity_timeouts}, "
            f"max activity attempt {facts.activity_attempts_max}, workflow task timeouts "
            f"{facts.wft_timeouts}, workflow task failures {dict(facts.wft_failures)}\n"
            f"  worker log lines worth a look ({len(findings)}):"
            + "".join(f"\n    {line}" for line in findings)
        )

        expected = [("trigger", qid), ("resolve", qid)]
        assert a_events == expected, f"A: {a_events}"
        assert b_events == expected, f"B: {b_events}"
        assert trigger_requests == (1, 1), trigger_requests
        assert first.deliveries[0].event == "trigger"
        assert first.deliveries[0].status == "delivered"
        assert set(first.deliveries[0].delivered) == {"hook-a", "hook-b"}
        assert second.deliveries[1].event == "resolve"
        assert second.deliveries[1].status == "delivered"
        assert set(second.deliveries[1].delivered) == {"hook-a", "hook-b"}
        assert survivor.alive, f"the surviving worker died:\n{survivor.tail()}"
    finally:
        if ticket is not None:
            try:
                await ticket.handle.terminate("test over", rpc_timeout=timedelta(seconds=5))
            except Exception as exc:  # already closed: nothing to clean
                print(f"terminate: {exc}")
        for w in workers:
            await w.stop()
        a.down()
        b.down()


async def _async(value: Any) -> Any:
    return value


async def _heartbeat_with(client: Client, ticket: Launched, sink: str) -> Delivering | None:
    d = await pending_delivery(client, ticket)
    if d is None or not d.details:
        return None
    progress = d.details[0]
    if isinstance(progress, dict) and sink in progress.get("delivered", []):
        return d
    return None


async def _resumed_attempt(client: Client, ticket: Launched) -> str:
    """The delivery activities the history shows: the attempt that finished each, on which
    worker, and any timeouts."""
    scheduled: set[int] = set()
    seen: list[str] = []
    async for event in ticket.handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == DELIVER_ESCALATION_ACTIVITY:
                scheduled.add(event.event_id)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            if started.scheduled_event_id in scheduled:
                seen.append(
                    f"#{started.scheduled_event_id} attempt {started.attempt} on {started.identity}"
                )
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
            timed_out = event.activity_task_timed_out_event_attributes
            if timed_out.scheduled_event_id in scheduled:
                seen.append(f"#{timed_out.scheduled_event_id} timed out")
    return "; ".join(seen) or "(none)"
