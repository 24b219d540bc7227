"""Liveness at fleet scale (DESIGN §15, issue 16): beats, a relay and leases, measured alike.

    .venv/bin/python -m bench.liveness              # 5 agents × 60 s per design, 3 kills each
    .venv/bin/python -m bench.liveness --quick

Three ways for a ticket to know that an agent lives: **beats** (``AgentSession(lease=False)``,
a signal every interval), a **relay** (bench-only: ``BenchRelayLiveness`` below, fed one
``seen`` signal per window ``W`` by an in-process relay of simulated agents) and the
**lease** (``AgentSession()``, the default). 1. Cost of healthy idle agents: history events
(setup excluded) and the dev server's own counters over ``--window`` s, per agent-hour;
target (lease) ≤ 100 events. 2. Detection of a dead agent: ``--kills`` real agent processes
SIGKILLed (relay: simulated agents stop); kill → ``agent_unresponsive``, target ≤ 3
deadlines + 1 s. What runs and what each figure means: bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import secrets
import signal
import time
import urllib.request
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console
from temporalio import workflow
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from agent_client.session import AgentSession
from agents import demo_agent
from bench import liveness_agent
from bench.harness import (
    REPO,
    Bench,
    BenchDef,
    CpuMeter,
    close_ticket,
    code_fingerprint,
    environment,
    measuring,
    option,
    server,
    start_ticket,
    summary,
    ticket_spec,
    ticket_state,
    utc_now,
)
from bench.history import event_name
from bench.report import Summary, cpu_reason, fmt_f, fmt_s, get, md_table, num
from core.health import last_sign_of_life
from models.spec import AgentSpec, HealthPolicy
from workflows.ticket import LEASE_TERM

DESIGNS = ("beats", "relay", "lease")
#: Target (DESIGN §15): healthy agents cost at most this many history events per agent-hour.
EVENTS_TARGET = 100.0
#: Target: a dead agent is unresponsive within three deadlines + this.
SLACK_S = 1.0
LADDER = 3
LADDER_KINDS = ("heartbeat_missed", "agent_degraded", "agent_unresponsive")
#: History events one lease renewal costs (every LEASE_TERM, while the agent lives): the
#: lease's ActivityTaskStarted + ActivityTaskTimedOut, the workflow task they wake (3), the
#: beat that offers the queue again and its workflow task (4), the new ActivityTaskScheduled.
#: Counted from the events of a lease's start and end; a 60 s window never sees one.
RENEWAL_EVENTS = 10
RELAY_WORKFLOW = "BenchRelayLiveness"
RELAY_QUEUE = "bench-liveness-relay"
VICTIM = "victim"


# ---- the relay design: a bench-only workflow and an in-process relay ------------------------


@workflow.defn(name=RELAY_WORKFLOW, sandboxed=False)
class RelayLivenessWorkflow:
    """The ticket's liveness logic, minimally, for agents heard through a relay.

    ``seen(ids)``: every agent named was alive at this workflow task (its ladder starts
    over). One timer for the earliest deadline (last seen + deadline × (missed + 1)); when it
    fires the due agents climb the ladder and the timer is armed again; three missed
    deadlines in a row: unresponsive (the time is kept; nothing is restarted).
    """

    def __init__(self) -> None:
        self.last: dict[str, datetime] = {}
        self.missed: dict[str, int] = {}
        self.dead: dict[str, str] = {}  # agent -> when it was found unresponsive (ISO)
        self.finished = False

    @workflow.run
    async def run(self, agents: list[str], deadline_s: float) -> dict[str, str]:
        deadline = timedelta(seconds=deadline_s)
        now = workflow.now()
        for agent in agents:
            self.last[agent], self.missed[agent] = now, 0
        while not self.finished:
            now = workflow.now()
            due: list[datetime] = []
            for agent in self.last:
                while (
                    agent not in self.dead
                    and (at := self.last[agent] + deadline * (self.missed[agent] + 1)) <= now
                ):
                    self.missed[agent] += 1
                    if self.missed[agent] >= LADDER:
                        self.dead[agent] = now.isoformat()
                if agent not in self.dead:
                    due.append(at)
            timeout = (min(due) - now).total_seconds() if due else None
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(lambda: self.finished, timeout=timeout)
        return self.dead

    @workflow.signal(name="seen")
    def seen(self, agents: list[str]) -> None:
        now = workflow.now()
        for agent in agents:
            if agent in self.last and agent not in self.dead:
                self.last[agent], self.missed[agent] = now, 0

    @workflow.signal(name="finish")
    def finish(self) -> None:
        self.finished = True

    @workflow.query(name="dead")
    def dead_agents(self) -> dict[str, str]:
        return self.dead


class Relay:
    """Collects beats; one ``seen`` signal per window in which it heard any."""

    def __init__(self, handle: WorkflowHandle[Any, Any], window: float) -> None:
        self.handle = handle
        self.window = window
        self.pending: set[str] = set()
        self.beats = 0
        self.signals = 0
        self.batch_sizes: list[int] = []

    def heard(self, agent: str) -> None:
        self.pending.add(agent)
        self.beats += 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.window)
            if self.pending:
                batch = sorted(self.pending)
                self.pending.clear()
                await self.handle.signal("seen", batch)
                self.signals += 1
                self.batch_sizes.append(len(batch))


async def _simulated_agent(
    agent: str, relay: Relay, interval: float, stopped: dict[str, datetime], rng: random.Random
) -> None:
    await asyncio.sleep(rng.uniform(0, interval))
    while agent not in stopped:
        relay.heard(agent)
        await asyncio.sleep(interval)


async def relay_run(
    client: Client, agents: int, window: float, deadline_s: float, interval: float,
    span_s: float, kills: int, timeout: float, rng: random.Random,
) -> dict[str, Any]:  # fmt: skip
    """One relay workflow and its relay, simulated agents beating every ``interval``: the
    cost over ``span_s`` (kills = 0), or the time to find ``kills`` stopped agents dead."""
    ids = [f"sim-{i}" for i in range(agents)]
    handle = await client.start_workflow(
        RELAY_WORKFLOW,
        args=[ids, deadline_s],
        id=f"relay-{uuid.uuid4().hex[:8]}",
        task_queue=RELAY_QUEUE,
    )
    relay = Relay(handle, window)
    stop = asyncio.Event()
    stopped: dict[str, datetime] = {}
    tasks = [
        asyncio.create_task(_simulated_agent(a, relay, interval, stopped, rng)) for a in ids
    ] + [asyncio.create_task(relay.run(stop))]
    out: dict[str, Any] = {
        "agents": agents,
        "relay_window_s": window,
        "deadline_s": deadline_s,
        "beat_interval_s": interval,
    }
    try:
        await asyncio.sleep(interval + window + 0.5)  # every agent heard and relayed once
        if not kills:
            before = await _events(handle)
            beats0, signals0, t0 = relay.beats, relay.signals, time.monotonic()
            await asyncio.sleep(span_s)
            after = await _events(handle)
            elapsed = time.monotonic() - t0
            out |= _window(before, after, elapsed, agents)
            out["relay_beats"] = relay.beats - beats0
            out["relay_signals"] = relay.signals - signals0
            # Its actions: the signals and the timers it starts (no heartbeats, no queries).
            out["liveness_actions_per_agent_hour"] = round(
                out["signals_per_agent_hour"] + out["timers_per_agent_hour"], 1
            )
            out["batch_size"] = summary(relay.batch_sizes)
            out["unresponsive_while_healthy"] = len(await handle.query("dead"))
            return out
        for agent in rng.sample(ids, kills):
            await asyncio.sleep(rng.uniform(0, interval))
            stopped[agent] = utc_now()
        limit = time.monotonic() + timeout
        dead: dict[str, str] = {}
        while time.monotonic() < limit:
            dead = await handle.query("dead")
            if all(a in dead for a in stopped):
                break
            await asyncio.sleep(0.2)
        out["detections"] = [
            {
                "agent": a,
                "detection_s": _s(datetime.fromisoformat(dead[a]) - at) if a in dead else None,
            }
            for a, at in stopped.items()
        ]
        out["unresponsive_while_healthy"] = len([a for a in dead if a not in stopped])
        return out
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await handle.terminate("bench over")


# ---- the server's own counters (/metrics of the dev server) ---------------------------------

_METRIC = re.compile(r"^(service_requests|action)\{([^}]*)\} ([0-9.eE+-]+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def _listening_ports(pid: int) -> list[int]:
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if m := re.match(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}")):
                    inodes.add(m.group(1))
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.read().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9 and parts[3] == "0A" and parts[9] in inodes:  # LISTEN
                    ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


class ServerCounters:
    """The dev server's frontend counters for one namespace: requests by operation and
    Temporal's billable-action counter (``action``) by action type. The dev server serves
    /metrics on a free port it picks; found among the ports its process listens on."""

    def __init__(self, pid: int | None, namespace: str) -> None:
        self.namespace = namespace
        self.url: str | None = None
        for port in _listening_ports(pid) if pid else []:
            url = f"http://127.0.0.1:{port}/metrics"
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if b"service_requests{" in r.read():
                        self.url = url
                        break
            except Exception:
                continue

    def read(self) -> dict[str, float]:
        if self.url is None:
            return {}
        try:
            with urllib.request.urlopen(self.url, timeout=5) as r:
                text = r.read().decode()
        except OSError:  # counters are an extra: the history figures stand without them
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = _METRIC.match(line)
            if not m:
                continue
            labels = dict(_LABEL.findall(m.group(2)))
            if labels.get("namespace") != self.namespace or labels.get("service_name") not in (
                None,
                "frontend",
            ):
                continue
            kind = "requests" if m.group(1) == "service_requests" else "actions"
            what = labels.get("operation") if kind == "requests" else labels.get("action_type")
            out[f"{kind}:{what}"] = out.get(f"{kind}:{what}", 0.0) + float(m.group(3))
        return out


def _delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """What the counters added between two reads (nothing when either read failed)."""
    if not a or not b:
        return {}
    return {k: b[k] - a.get(k, 0.0) for k in sorted(b) if b[k] - a.get(k, 0.0) > 0}


# ---- history windows -----------------------------------------------------------------------


async def _events(handle: WorkflowHandle[Any, Any]) -> list[HistoryEvent]:
    return list((await handle.fetch_history()).events)


def _s(td: timedelta) -> float:
    return round(td.total_seconds(), 3)


WFT = ("WorkflowTaskScheduled", "WorkflowTaskStarted", "WorkflowTaskCompleted")


def setup_leftovers(before: list[HistoryEvent], new: list[HistoryEvent]) -> int:
    """Events in the window that belong to the setup: a timer armed during the setup that
    fires in the window and is not armed again (``TimerFired`` and the workflow task it
    wakes, with no ``TimerStarted`` after it). With leases that is the ticket's heartbeat
    deadline timer, armed at registration before the agents held their leases: it fires
    once, finds nobody on the ticket's timer any more, and nothing replaces it. A timer that
    is armed again is a steady cost and stays counted."""
    names = [event_name(e.event_type) for e in new]
    leftover = 0
    for i, e in enumerate(new):
        if names[i] != "TimerFired":
            continue
        if e.timer_fired_event_attributes.started_event_id > len(before):
            continue
        if tuple(names[i + 1 : i + 4]) == WFT and "TimerStarted" not in names[i + 4 : i + 6]:
            leftover += 4
    return leftover


def _window(
    before: list[HistoryEvent], after: list[HistoryEvent], elapsed: float, agents: int
) -> dict[str, Any]:
    """The events written between two reads of a history, per agent-hour (setup leftovers
    counted apart: :func:`setup_leftovers`)."""
    new = after[len(before) :]
    by_type = Counter(event_name(e.event_type) for e in new)
    leftover = setup_leftovers(before, new)
    per = 3600 / elapsed / agents
    return {
        "window_s": round(elapsed, 2),
        "setup_events": len(before),
        "window_events": len(new),
        "setup_leftover_events": leftover,
        "steady_events": len(new) - leftover,
        "events_by_type": dict(by_type.most_common()),
        "events_per_agent_hour": round((len(new) - leftover) * per, 1),
        "events_per_agent_hour_raw": round(len(new) * per, 1),
        "signals_per_agent_hour": round(by_type["WorkflowExecutionSignaled"] * per, 1),
        "timers_per_agent_hour": round(by_type["TimerStarted"] * per, 1),
        "continued_as_new": any(
            event_name(e.event_type) == "WorkflowExecutionContinuedAsNew" for e in new
        ),
    }


# ---- beats and lease on the real ticket -----------------------------------------------------


async def cost_run(
    bench: Bench,
    counters: ServerCounters,
    design: str,
    agents: int,
    window: float,
    timeout: float,
    prefix: str,
) -> dict[str, Any]:
    """``agents`` healthy idle sessions on a fresh ticket (default health policy; ``design``
    beats: ``lease=False``, lease: the default): what ``window`` seconds of them cost once
    steady, the setup counted apart."""
    spec = ticket_spec(f"{prefix}-{design}", 0, health=None)
    token = secrets.token_urlsafe(16)
    handle = await start_ticket(bench.client, spec, bench.settings.task_queue, token=token)
    sessions = [
        AgentSession(bench.client, spec.id, name=f"{design}-{i}", lease=design == "lease")
        for i in range(agents)
    ]
    try:
        for s in sessions:
            await s.register()
        interval = sessions[0].heartbeat_interval_s
        for s in sessions:  # staggered, as independent agents are
            s.start_heartbeats()
            await asyncio.sleep(interval / len(sessions))
        limit = time.monotonic() + timeout
        while design == "lease" and not all(s.leased for s in sessions):
            if time.monotonic() > limit:
                raise RuntimeError(f"{sum(s.leased for s in sessions)} leases taken in time")
            await asyncio.sleep(0.2)
        await asyncio.sleep(interval + 0.5)  # every loop went round once more: steady
        before, c0, t0 = await _events(handle), counters.read(), time.monotonic()
        await asyncio.sleep(window)
        after, c1 = await _events(handle), counters.read()
        elapsed = time.monotonic() - t0
        state = await ticket_state(handle)
        out = _window(before, after, elapsed, agents)
        per = 3600 / elapsed / agents
        server = _delta(c0, c1)
        out |= {
            "design": design,
            "agents": agents,
            "beat_interval_s": interval,
            "lease_timeout_s": spec.policy.health.running_deadline_s,
            "leased_at_end": sum(s.leased for s in sessions),
            "server_counters": server,
            "server_per_agent_hour": {k: round(v * per, 1) for k, v in server.items()},
            "activity_heartbeats_per_agent_hour": round(
                server.get("requests:RecordActivityTaskHeartbeat", 0.0) * per, 1
            ),
            "queries_per_agent_hour": round(server.get("requests:QueryWorkflow", 0.0) * per, 1),
            # The server's own count of billable actions; the inbox query (same in both
            # designs, not part of liveness) apart.
            "actions_per_agent_hour": round(
                sum(v for k, v in server.items() if k.startswith("actions:")) * per, 1
            ),
            "liveness_actions_per_agent_hour": round(
                sum(
                    v
                    for k, v in server.items()
                    if k.startswith("actions:") and k != "actions:grpc_QueryWorkflow"
                )
                * per,
                1,
            ),
            "counters_available": counters.url is not None,
            "ladder_while_healthy": sum(
                e.kind in ("heartbeat_missed", "agent_degraded", "agent_unresponsive")
                for e in state.timeline
            ),
        }
        return out
    finally:
        for s in sessions:
            with contextlib.suppress(Exception):
                await s.stop_heartbeats()
        await close_ticket(handle, token)


async def kill_run(
    bench: Bench, design: str, args: argparse.Namespace, prefix: str, n: int, rng: random.Random
) -> dict[str, Any]:
    """A real agent process, SIGKILLed once steady: the kill → ``agent_unresponsive``."""
    program = demo_agent if design == "lease" else liveness_agent
    d = args.deadline
    health = {"idle_deadline_s": d, "running_deadline_s": d, "stop_grace_s": 2.0}
    agent_spec = AgentSpec(
        name=VICTIM, runtime="local-process", command=program.command("--wedged"), cwd=str(REPO)
    )
    spec = ticket_spec(f"{prefix}-{design}-kill{n}", 0, health=health, agents=[agent_spec])
    await asyncio.sleep(n * 0.7)  # the processes do not all start at once
    token = secrets.token_urlsafe(16)
    handle = await start_ticket(bench.client, spec, bench.settings.task_queue, token=token)
    out: dict[str, Any] = {"design": design, "ticket": spec.id}
    pids: set[int] = set()
    try:
        limit = time.monotonic() + args.timeout
        while True:
            state = await ticket_state(handle)
            agent = next(
                (a for a in state.agents.values() if a.name == VICTIM and a.state == "idle"), None
            )
            lineage = state.lineages.get(VICTIM)
            pid = lineage.process.pid if lineage and lineage.process else None
            if pid:
                pids.add(pid)
            live = agent is not None and (
                agent.lease_held if design == "lease" else agent.last_heartbeat_at is not None
            )
            if agent is not None and pid and live:
                break
            if time.monotonic() > limit:
                raise RuntimeError(f"{design}: the agent never became steady")
            await asyncio.sleep(0.2)
        await asyncio.sleep(rng.uniform(d, 2 * d))  # steady, at a random phase of its beats
        before = (await ticket_state(handle)).agents[agent.id]
        os.kill(pid, signal.SIGKILL)
        killed = utc_now()
        out |= {"pid": pid, "leased_at_kill": before.lease_held, "leases": before.leases}
        while time.monotonic() < limit + 2 * LADDER * d:
            state = await ticket_state(handle)
            found = {e.kind: e.at for e in state.timeline if e.agent_id == agent.id}
            if "agent_unresponsive" in found:
                dead = state.agents[agent.id]
                out["detection_s"] = _s(found["agent_unresponsive"] - killed)
                out["ladder_s"] = {
                    k: _s(found[k] - killed)
                    for k in ("heartbeat_missed", "agent_degraded", "agent_unresponsive")
                    if k in found
                }
                out["last_sign_of_life_s"] = _s(last_sign_of_life(dead) - killed)
                lineage = state.lineages.get(VICTIM)
                if lineage and lineage.process and lineage.process.pid:
                    pids.add(lineage.process.pid)
                break
            await asyncio.sleep(0.2)
        else:
            out["error"] = "no agent_unresponsive in time"
        return out
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    finally:
        await close_ticket(handle, token)
        for pid in pids:  # the ticket stops its processes on cancel; make sure of it
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# ---- measure ---------------------------------------------------------------------------------


def arguments(p: argparse.ArgumentParser) -> None:
    option(p, "--agents", 5, "healthy idle agents per ticket (beats, lease)")
    option(p, "--window", 60.0, "seconds the healthy agents are measured, after the setup")
    option(p, "--relay-agents", "5,50", "simulated agents behind one relay (cost runs)")
    option(p, "--relay-windows", "0.5,5", "relay windows W, seconds; the first is the headline")
    option(p, "--deadline", 5.0, "detection runs: the health deadlines (idle = running), s")
    option(p, "--kills", 3, "dead agents per design (detection)")
    option(p, "--timeout", 120.0, "per run, seconds")
    option(p, "--seed", 1, "random seed (kill moments, beat phases)")


def check(args: argparse.Namespace) -> str | None:
    args.relay_agents = [int(x) for x in str(args.relay_agents).split(",") if x.strip()]
    args.relay_windows = [float(x) for x in str(args.relay_windows).split(",") if x.strip()]
    if not args.relay_agents or not args.relay_windows or min(args.relay_windows) <= 0:
        return "--relay-agents and --relay-windows need positive values"
    if args.agents < 1 or args.kills < 1 or args.window <= 0 or args.deadline < 1:
        return "--agents and --kills must be at least 1, --window positive, --deadline >= 1"
    return None


async def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    rng = random.Random(args.seed)
    rand = lambda: random.Random(rng.random())  # noqa: E731
    prefix = f"live-{uuid.uuid4().hex[:6]}"
    default = HealthPolicy()
    interval = min(default.idle_deadline_s, default.running_deadline_s) / 3
    cost: dict[str, Any] = {}
    detection: dict[str, list[dict[str, Any]]] = {}
    async with server(args, console) as bench:
        counters = ServerCounters(bench.server.pid, bench.settings.namespace)
        async with Worker(bench.client, task_queue=RELAY_QUEUE, workflows=[RelayLivenessWorkflow]):
            # 1. cost: one design at a time, so the server's counters are its own.
            for design in ("beats", "lease"):
                console.log(f"cost: {design}, {args.agents} agents × {args.window:g} s")
                cost[design] = await cost_run(
                    bench, counters, design, args.agents, args.window, args.timeout, prefix
                )
            console.log(f"cost: relay, {args.relay_agents} agents × windows {args.relay_windows} s")
            c0 = counters.read()
            relay_cost = await asyncio.gather(
                *(
                    relay_run(
                        bench.client,
                        n,
                        w,
                        default.idle_deadline_s,
                        interval,
                        args.window,
                        0,
                        args.timeout,
                        rand(),
                    )
                    for n in args.relay_agents
                    for w in args.relay_windows
                )
            )
            relay_counters = _delta(c0, counters.read())
            # 2. detection: every design at once.
            console.log(f"detection: {args.kills} kills per design, deadline {args.deadline:g} s")
            kills = [
                kill_run(bench, design, args, prefix, n, rand())
                for design in ("beats", "lease")
                for n in range(args.kills)
            ]
            relays = [
                relay_run(bench.client, max(args.relay_agents), w, args.deadline,
                          args.deadline / 3, 0, args.kills, args.timeout, rand())
                for w in args.relay_windows
            ]  # fmt: skip
            async with measuring(CpuMeter(bench.server.pid)) as cpu:
                done = await asyncio.gather(*kills, *relays)
    for r in done[: len(kills)]:
        detection.setdefault(r["design"], []).append(r)
    relays_done = list(done[len(kills) :])
    return build_report(args, cost, list(relay_cost), relay_counters, detection, relays_done, cpu)


# ---- report ----------------------------------------------------------------------------------


def with_renewal(events_per_agent_hour: Any) -> float | None:
    """A lease's events per agent-hour in a window plus its renewals (``RENEWAL_EVENTS`` per
    ``LEASE_TERM``), which no short window sees."""
    if not num(events_per_agent_hour):
        return None
    return round(events_per_agent_hour + RENEWAL_EVENTS * 3600 / LEASE_TERM.total_seconds(), 1)


def build_report(
    args: argparse.Namespace,
    cost: dict[str, Any],
    relay_cost: list[dict[str, Any]],
    relay_counters: dict[str, float],
    detection: dict[str, list[dict[str, Any]]],
    relay_detection: list[dict[str, Any]],
    cpu: dict[str, Any],
) -> dict[str, Any]:
    limit = LADDER * args.deadline + SLACK_S
    term_h = LEASE_TERM.total_seconds() / 3600
    renewal = round(RENEWAL_EVENTS / term_h, 1)
    lease = cost.get("lease", {})
    lease_events = with_renewal(lease.get("events_per_agent_hour"))
    headline_w = args.relay_windows[0]
    relay_det = {
        str(r["relay_window_s"]): [d["detection_s"] for d in r.get("detections", [])]
        for r in relay_detection
    }
    designs: dict[str, Any] = {}
    for design in DESIGNS:
        found: list[Any] = (
            relay_det.get(str(headline_w), [])
            if design == "relay"
            else [r.get("detection_s") for r in detection.get(design, [])]
        )
        det: list[float] = [x for x in found if num(x)]  # None: never found (missing)
        missing = len(found) - len(det)
        designs[design] = {
            "detection_s": summary(det),
            "detection_missing": missing,
            "detection_ok": bool(det) and not missing and max(det) <= limit,
        }
    env = environment()
    env["cpu_during_detection"] = cpu
    problems = [
        f"{r['design']} {r.get('ticket')}: {r['error']}"
        for runs in detection.values()
        for r in runs
        if r.get("error")
    ]
    for design, c in cost.items():
        if c.get("ladder_while_healthy"):
            problems.append(f"{design}: {c['ladder_while_healthy']} ladder steps while healthy")
        if c.get("continued_as_new"):
            problems.append(f"{design}: the ticket continued as new inside the window")
    for r in relay_cost:
        if r.get("unresponsive_while_healthy"):
            problems.append(
                f"relay W={r['relay_window_s']}: a healthy agent was found unresponsive"
            )

    def det_target(design: str) -> dict[str, Any]:
        d = designs[design]
        worst = get(d, "detection_s", "max")
        return {
            "target": f"<= {limit:g} s",
            "value": worst if num(worst) else None,
            "pass": d["detection_ok"],
        }

    return {
        "config": {
            "agents": args.agents,
            "window_s": args.window,
            "relay_agents": args.relay_agents,
            "relay_windows_s": args.relay_windows,
            "headline_relay_window_s": headline_w,
            "deadline_s": args.deadline,
            "kills": args.kills,
            "seed": args.seed,
            "cost_policy": "default health policy (idle 30 s, running 15 s; beats every 5 s; "
            "lease heartbeat timeout 15 s)",
            "lease_term_s": LEASE_TERM.total_seconds(),
        },
        "environment": env,
        "code": code_fingerprint(
            ["workflows/ticket.py", "core/health.py", "agent_client/lease.py"]
        ),
        "cost": cost,
        "lease_renewal": {
            "events_per_renewal": RENEWAL_EVENTS,
            "events_per_agent_hour": renewal,
            "note": f"one renewal per agent every {term_h:g} h (LEASE_TERM); not in the window, "
            "added to the lease's figure for the target",
        },
        "lease_events_per_agent_hour_with_renewal": lease_events,
        "relay_cost": relay_cost,
        "relay_server_counters": relay_counters,
        "detection": detection,
        "relay_detection": relay_detection,
        "designs": designs,
        "detection_limit_s": limit,
        "problems": problems,
        "targets": {
            "lease_events_per_agent_hour": {
                "target": f"<= {EVENTS_TARGET:g}",
                "value": lease_events,
                "pass": lease_events is not None and lease_events <= EVENTS_TARGET,
            },
            "lease_detection": det_target("lease"),
            "beats_detection": det_target("beats"),
            "relay_detection": det_target("relay"),
        },
    }


def _relay_at(r: dict[str, Any], window: Any) -> list[dict[str, Any]]:
    return [x for x in r.get("relay_cost", []) if x.get("relay_window_s") == window]


def _relay_detection_max(r: dict[str, Any], window: Any) -> Any:
    for x in r.get("relay_detection", []):
        if x.get("relay_window_s") == window:
            det = [d.get("detection_s") for d in x.get("detections", [])]
            return max(det) if det and all(num(v) for v in det) else None
    return None


def summarize(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    limit = r.get("detection_limit_s")
    beats = get(r, "cost", "beats", default={})
    lease = get(r, "cost", "lease", default={})
    designs = r.get("designs", {})
    renewal = get(r, "lease_renewal", "events_per_agent_hour")

    def lease_events_reasons() -> list[str]:
        return [
            f"steady events in the window by type: {lease.get('events_by_type')} (setup "
            f"leftovers excluded: {lease.get('setup_leftover_events')}); leased at the end "
            f"{lease.get('leased_at_end')}/{lease.get('agents')}: an agent without its lease "
            "beats every interval (~4.5 events a beat).",
            f"a short window extrapolates few events: {lease.get('steady_events')} events in "
            f"{fmt_s(lease.get('window_s'), 0)} for {lease.get('agents')} agents.",
        ]

    s.target(
        r,
        "lease_events_per_agent_hour",
        "Lease: history events per healthy agent-hour",
        fmt_f(r.get("lease_events_per_agent_hour_with_renewal"), 1),
        f"window {fmt_f(lease.get('events_per_agent_hour'), 1)} + renewal {fmt_f(renewal, 1)}; "
        f"beats {fmt_f(beats.get('events_per_agent_hour'), 0)}",
        lease_events_reasons,
    )
    for design, label in (("lease", "Lease"), ("beats", "Beats"), ("relay", "Relay")):
        d = designs.get(design, {})
        det = d.get("detection_s", {})
        notes = f"p50 {fmt_s(det.get('p50'))}, n {det.get('n', 0)}"
        if design == "relay":
            notes += f", W = {fmt_s(get(r, 'config', 'headline_relay_window_s'), 1)}"
        if d.get("detection_missing"):
            notes += f", {d['detection_missing']} never found"

        def reasons(d: dict[str, Any] = d) -> list[str]:
            cpu = {
                "environment": {
                    "cpu_during_measurement": get(r, "environment", "cpu_during_detection")
                }
            }
            return [
                f"{d.get('detection_missing', 0)} never found; max "
                f"{fmt_s(get(d, 'detection_s', 'max'))} against {fmt_s(limit)} "
                f"(3 deadlines + {SLACK_S:g} s).",
                *cpu_reason(cpu),
            ]

        s.target(
            r,
            f"{design}_detection",
            f"{label}: dead agent → unresponsive (max)",
            fmt_s(det.get("max")),
            notes,
            reasons,
            informational=design != "lease",
        )
    s.info(
        "Beats: history events per healthy agent-hour",
        fmt_f(beats.get("events_per_agent_hour"), 0),
        "the baseline: AgentSession(lease=False)",
    )
    w = get(r, "config", "headline_relay_window_s")
    for x in _relay_at(r, w):
        s.info(
            f"Relay (W = {fmt_s(w, 1)}, {x.get('agents')} agents): events per agent-hour",
            fmt_f(x.get("events_per_agent_hour"), 0),
            "bench-only relay workflow",
        )
    s.section += _section(r)
    return s


def _per_hour(x: Any) -> str:
    return fmt_f(x, 0) if num(x) else "—"


COST_COLUMNS = ("setup_events", "setup_leftover_events", "steady_events")
PER_HOUR_COLUMNS = (
    "events", "signals", "timers", "activity_heartbeats", "liveness_actions", "queries"
)  # fmt: skip


def _cost_cells(d: dict[str, Any], events: str = "", **fixed: str) -> list[str]:
    """A design's row of the cost table: its setup counts and its figures per agent-hour
    (``fixed``: a cell given as is, by its column)."""
    cells = [str(d.get(k, "—")) for k in COST_COLUMNS]
    for k in PER_HOUR_COLUMNS:
        given = fixed.get(k)
        cells.append(given if given is not None else _per_hour(d.get(f"{k}_per_agent_hour")))
    cells[len(COST_COLUMNS)] += events
    return cells


def _section(r: dict[str, Any]) -> list[str]:
    c = r.get("config", {})
    limit = r.get("detection_limit_s")
    beats = get(r, "cost", "beats", default={})
    lease = get(r, "cost", "lease", default={})
    w = c.get("headline_relay_window_s")
    relay_rows = _relay_at(r, w)
    relay = max(relay_rows, key=lambda x: x.get("agents", 0)) if relay_rows else {}
    renewal = get(r, "lease_renewal", "events_per_agent_hour")
    lines = [
        f"Cost: {c.get('agents')} healthy idle agents per ticket for "
        f"{fmt_s(c.get('window_s'), 0)} after the setup (excluded), per agent-hour; the lease "
        f"adds one renewal every {fmt_f(get(r, 'config', 'lease_term_s', default=0) / 3600, 0)} h "
        f"(~{get(r, 'lease_renewal', 'events_per_renewal')} events: {fmt_f(renewal, 1)} per "
        "agent-hour). What each column counts: [README](README.md#benchliveness-beats-a-relay-"
        "and-leases-measured-alike-design-15).",
        "",
        *md_table(
            [
                "design",
                "setup events",
                "setup leftovers",
                "steady events",
                *(f"{k.replace('_', ' ')} / agent-hour" for k in PER_HOUR_COLUMNS),
            ],
            [
                ["beats (`lease=False`)", *_cost_cells(beats)],
                [
                    f"relay (W = {fmt_s(w, 1)}, {relay.get('agents', '—')} agents)",
                    *_cost_cells(relay, activity_heartbeats="0", queries="0 (simulated agents)"),
                ],
                [
                    "**lease** (default)",
                    *_cost_cells(lease, events=f" (+{fmt_f(renewal, 1)} renewal)"),
                ],
            ],
        ),
        "",
        f"All actions per agent-hour: beats {_per_hour(beats.get('actions_per_agent_hour'))}, "
        f"lease {_per_hour(lease.get('actions_per_agent_hour'))}"
        + ("" if lease.get("counters_available") else " (server /metrics not found: no counters)")
        + ".",
        "",
    ]
    counters = {
        d: get(r, "cost", d, "server_per_agent_hour", default={}) for d in ("beats", "lease")
    }
    keys = sorted({k for v in counters.values() for k in v})
    if keys:
        lines += [
            *md_table(
                "server counter / agent-hour | beats | lease",
                [[f"`{k}`", *(_per_hour(counters[d].get(k)) for d in counters)] for k in keys],
            ),
            "",
        ]
    lines += [
        *md_table(
            "relay agents | W | events / agent-hour | signals / agent-hour | timers / agent-hour | "
            f"beats per signal (mean) | detection max (deadline {fmt_s(c.get('deadline_s'), 0)})",
            [
                [
                    str(x.get("agents")),
                    fmt_s(x.get("relay_window_s"), 1),
                    *(
                        _per_hour(x.get(f"{k}_per_agent_hour"))
                        for k in ("events", "signals", "timers")
                    ),
                    fmt_f(get(x, "batch_size", "mean"), 1),
                    fmt_s(_relay_detection_max(r, x.get("relay_window_s"))),
                ]
                for x in r.get("relay_cost", [])
            ],
        ),
        "",
    ]
    det_rows = []
    for design in DESIGNS:
        d = get(r, "designs", design, "detection_s", default={})
        runs = get(r, "detection", design, default=[])
        ladder = "; ".join(
            "/".join(fmt_f(x.get("ladder_s", {}).get(k), 1) for k in LADDER_KINDS) for x in runs
        )
        last = ", ".join(fmt_f(x.get("last_sign_of_life_s"), 2) for x in runs)
        what = {"beats": "process, SIGKILL", "lease": "process, SIGKILL",
                "relay": f"simulated, W = {fmt_s(w, 1)}"}[design]  # fmt: skip
        det_rows.append(
            [design, what, str(d.get("n", 0)), *map(fmt_s, (d.get("p50"), d.get("max"), limit)),
             ladder or "—", last or "—"]
        )  # fmt: skip
    lines += [
        f"Detection, deadlines {fmt_s(c.get('deadline_s'), 0)}, kill → `agent_unresponsive`:",
        "",
        *md_table(
            "design | dead agent | n | p50 | max | target | missed / degraded / unresponsive "
            "after the kill (s) | last sign of life − kill (s)",
            det_rows,
        ),
        "",
        *_why(r),
    ]
    if r.get("problems"):
        lines += ["", "Problems: " + "; ".join(r["problems"])]
    return lines


def _why(r: dict[str, Any]) -> list[str]:
    """Why the lease, in this run's figures (the argument: bench/README.md)."""
    c = r.get("config", {})
    beats_ev = get(r, "cost", "beats", "events_per_agent_hour")
    lease_ev = r.get("lease_events_per_agent_hour_with_renewal")
    w = c.get("headline_relay_window_s")
    relay_rows = _relay_at(r, w)
    relay = max(relay_rows, key=lambda x: x.get("agents", 0)) if relay_rows else {}
    longest = max(c.get("relay_windows_s") or [0]) or None
    long_rows = _relay_at(r, longest)
    long_relay = max(long_rows, key=lambda x: x.get("agents", 0)) if long_rows else {}
    ratio = beats_ev / lease_ev if num(beats_ev) and num(lease_ev) and lease_ev else None
    # Events per signal-window of the relay are about constant: the agents it takes to get
    # under the target at the headline window.
    per_signal = (
        relay["events_per_agent_hour"] / relay["signals_per_agent_hour"]
        if num(relay.get("events_per_agent_hour")) and relay.get("signals_per_agent_hour")
        else None
    )
    needed = (
        per_signal * 3600 / w / EVENTS_TARGET if per_signal is not None and num(w) and w else None
    )
    return [
        f"**Why the lease** ([README](README.md#why-the-lease)): {fmt_f(lease_ev, 1)} events "
        f"per agent-hour against {fmt_f(beats_ev, 0)} on beats"
        + (f" ({ratio:,.0f}× fewer)" if ratio else "")
        + f"; the relay needs about {fmt_f(needed, 0)} agents behind it to reach "
        f"{EVENTS_TARGET:g} at W = {fmt_s(w, 1)}, or W = {fmt_s(longest, 1)} "
        f"({fmt_f(long_relay.get('events_per_agent_hour'), 0)} per agent-hour with "
        f"{long_relay.get('agents', '—')} agents), which detects in "
        f"{fmt_s(_relay_detection_max(r, longest))} against {fmt_s(r.get('detection_limit_s'))}.",
    ]


BENCH = BenchDef.of(
    globals(),
    "liveness",
    "Liveness at fleet scale: beats, a relay and leases (events, writes, detection)",
    quick="--agents 3 --window 20 --relay-agents 5,20 --deadline 2 --kills 1",
    informational=frozenset({"beats_detection", "relay_detection"}),
)
main = BENCH.main

if __name__ == "__main__":
    raise SystemExit(main())
