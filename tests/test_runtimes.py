"""Agent runtimes with real processes: spawn, graceful and forced stop, no orphans, pid reuse,
early exits, idempotent restarts through the activity, the external runtime, and the demo
agent doing real work on the session's Temporal server."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

import starter
from activities.agents import AgentActivities
from agents import demo_agent
from core.state import TicketState
from infra.enrollment import join_key, join_secret
from infra.settings import Settings
from models.messages import AgentView, TaskView
from models.runtime import (
    AgentProcess,
    RestartAgent,
    RestartProgress,
    SpawnAgent,
    StopAgent,
    StopOutcome,
)
from models.spec import AgentSpec
from runtimes import AgentExitedEarly, SpawnConfigError, runtime_for
from runtimes.base import AgentRuntime, ProgressCallback
from runtimes.external import EXTERNAL_STOP_DETAIL, ExternalRuntime
from runtimes.local_process import LocalProcessRuntime, group_members, read_stat
from tests.conftest import unique_id
from tests.ticketkit import launch, spec_dict

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the process checks need Linux /proc"
)

REPO = Path(__file__).resolve().parents[1]
TICKET = "rt-ticket"

SLEEPER = ["{python}", "-c", "import time; time.sleep(60)"]
#: Ignores SIGTERM and starts a child (which inherits SIG_IGN) before sleeping.
STUBBORN = [
    "{python}",
    "-c",
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print('CHILD_PID', child.pid, flush=True)\n"
    "time.sleep(60)\n",
]
#: Starts a child, then dies by SIGKILL: the child is an orphan left in the agent's group.
ORPHANING = [
    "{python}",
    "-c",
    "import os, signal, subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print('CHILD_PID', child.pid, flush=True)\n"
    "time.sleep(0.5)\n"
    "os.kill(os.getpid(), signal.SIGKILL)\n",
]


def agent_spec(name: str, command: list[str], **kw: object) -> AgentSpec:
    return AgentSpec.model_validate(
        {"name": name, "runtime": "local-process", "command": command, **kw}
    )


def spawn_request(
    name: str, command: list[str], *, generation: int = 0, ticket: str = TICKET, **kw: object
) -> SpawnAgent:
    return SpawnAgent(
        ticket_id=ticket,
        spec=agent_spec(name, command, **kw),
        temporal_address="127.0.0.1:1",
        namespace="rt-ns",
        generation=generation,
    )


@pytest.fixture
def runtime(tmp_path: Path) -> LocalProcessRuntime:
    return LocalProcessRuntime(tmp_path / "agents")


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """Whatever a test spawned (recorded next to its log) is SIGKILLed afterwards."""
    yield
    for record in tmp_path.rglob("*.json"):
        try:
            process = AgentProcess.model_validate_json(record.read_bytes())
        except ValueError:
            continue
        if process.pid is None:
            continue
        if group_members(process.pgid or process.pid, since_ticks=process.proc_start_ticks):
            os.killpg(process.pgid or process.pid, signal.SIGKILL)


async def wait_for(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def child_pid_in(log_path: Path) -> int | None:
    """The pid a test agent printed as ``CHILD_PID <pid>`` on a line of its own."""
    found = re.search(r"^CHILD_PID (\d+)$", log_path.read_text(), re.MULTILINE)
    return int(found.group(1)) if found else None


def exited(process: AgentProcess) -> Callable[[], bool]:
    return lambda: not alive_pid(process.pid or 0)


def alive_pid(pid: int) -> bool:
    st = read_stat(pid)
    return st is not None and not st.zombie


# ---- local-process: spawn ----------------------------------------------------------------


async def test_spawn_records_the_process_and_its_environment(
    runtime: LocalProcessRuntime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = (
        "import os, sys, time\n"
        "e = os.environ\n"
        "print('ARGS', sys.argv[1:], flush=True)\n"
        "print('ENV', e['UNSTUCK_TEMPORAL_ADDRESS'], e['UNSTUCK_NAMESPACE'], "
        "e['UNSTUCK_TICKET_ID'], e['UNSTUCK_AGENT_NAME'], e['UNSTUCK_AGENT_KIND'], "
        "e['FROM_SPEC'], os.getcwd(), flush=True)\n"
        "print('SECRETS', e['UNSTUCK_JOIN_SECRET'], 'UNSTUCK_JOIN_KEY' in e, "
        "'UNSTUCK_CODEC_AUTH_TOKEN' in e, flush=True)\n"
        "time.sleep(60)\n"
    )
    monkeypatch.setenv("UNSTUCK_CODEC_AUTH_TOKEN", "codec-server-only")
    workdir = tmp_path / "work"
    workdir.mkdir()
    request = spawn_request(
        "ada",
        ["{python}", "-c", script, "{ticket_id}", "{agent_name}", "g{generation}", "{other}"],
        generation=3,
        kind="validator",
        env={"FROM_SPEC": "yes"},
        cwd=str(workdir),
    )
    process = await runtime.spawn(request)

    assert process.pid is not None and process.pid != os.getpid()
    assert process.pgid == process.pid
    st = read_stat(process.pid)
    assert st is not None and st.pgrp == process.pid and st.session == process.pid
    assert process.proc_start_ticks == st.start_ticks
    assert process.runtime == "local-process" and process.generation == 3
    assert process.command[0] == sys.executable
    assert process.command[-4:] == [TICKET, "ada", "g3", "{other}"]
    assert process.started_at.tzinfo is not None
    assert await runtime.is_alive(process) is True

    log_path = tmp_path / "agents" / TICKET / "ada.3.log"
    assert process.log_path == str(log_path)
    await wait_for(lambda: "ENV" in log_path.read_text(), what="the agent's output")
    text = log_path.read_text()
    assert f"ARGS ['{TICKET}', 'ada', 'g3', '{{other}}']" in text
    assert f"ENV 127.0.0.1:1 rt-ns {TICKET} ada validator yes {workdir}" in text
    # The one join secret of its kind, never the deployment's key or the codec server's token.
    secret = join_secret(join_key(None), TICKET, "validator")
    assert f"SECRETS {secret} False False" in text


async def test_spawn_is_idempotent_per_generation(runtime: LocalProcessRuntime) -> None:
    first = await runtime.spawn(spawn_request("ada", SLEEPER, generation=0))
    again = await runtime.spawn(spawn_request("ada", SLEEPER, generation=0))
    other = await runtime.spawn(spawn_request("ada", SLEEPER, generation=1))
    assert again.pid == first.pid
    assert other.pid != first.pid
    assert await runtime.is_alive(first) and await runtime.is_alive(other)


async def test_an_agent_that_exits_at_once_is_an_error_with_its_log_tail(
    runtime: LocalProcessRuntime,
) -> None:
    command = [
        "{python}",
        "-c",
        "import sys; print('cannot reach the ticket: bad config', file=sys.stderr); sys.exit(3)",
    ]
    with pytest.raises(AgentExitedEarly) as caught:
        await runtime.spawn(spawn_request("ada", command))
    assert caught.value.returncode == 3
    assert "cannot reach the ticket: bad config" in caught.value.log_tail
    assert "exited with code 3" in str(caught.value)
    assert "cannot reach the ticket: bad config" in str(caught.value)


async def test_unstartable_specs_are_config_errors(
    runtime: LocalProcessRuntime, tmp_path: Path
) -> None:
    with pytest.raises(SpawnConfigError, match="command not found"):
        await runtime.spawn(spawn_request("ada", ["/no/such/agent-binary"]))
    with pytest.raises(SpawnConfigError, match="not a directory"):
        await runtime.spawn(spawn_request("ada", SLEEPER, cwd=str(tmp_path / "missing")))
    external = SpawnAgent(
        ticket_id=TICKET, spec=AgentSpec(name="ada"), temporal_address="127.0.0.1:1"
    )
    with pytest.raises(SpawnConfigError, match="no command"):
        await runtime.spawn(external)


async def test_without_a_join_key_only_tickets_started_before_enrollment_spawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with no join key (no UNSTUCK_JOIN_KEY, no <data dir>/join.key) refuses to
    start an agent its enrolled ticket would refuse, saying why; a ticket started before
    enrollment still gets its agents."""
    monkeypatch.delenv("UNSTUCK_JOIN_KEY")
    runtime = LocalProcessRuntime(tmp_path / "agents")
    with pytest.raises(SpawnConfigError, match="no join key: set UNSTUCK_JOIN_KEY"):
        await runtime.spawn(spawn_request("ada", SLEEPER))
    legacy = spawn_request("ada", SLEEPER).model_copy(update={"enrolled": False})
    process = await runtime.spawn(legacy)
    try:
        assert await runtime.is_alive(process)
    finally:
        await runtime.stop(process, grace_s=1)


# ---- local-process: stop -----------------------------------------------------------------


async def test_graceful_stop(runtime: LocalProcessRuntime) -> None:
    process = await runtime.spawn(spawn_request("ada", SLEEPER))
    assert process.pid is not None
    outcome = await runtime.stop(process, grace_s=5)
    assert outcome.stopped and outcome.graceful and not outcome.forced and outcome.was_alive
    assert "SIGTERM" in outcome.detail and "killed by SIGTERM" in outcome.detail
    assert not alive_pid(process.pid)
    assert group_members(process.pid) == []
    assert await runtime.is_alive(process) is False

    again = await runtime.stop(process, grace_s=5)  # stopping twice is harmless
    assert again.stopped and not again.was_alive and not again.graceful and not again.forced


async def test_an_agent_ignoring_sigterm_is_killed_with_its_whole_group(
    runtime: LocalProcessRuntime,
) -> None:
    process = await runtime.spawn(spawn_request("stubborn", STUBBORN))
    assert process.pid is not None and process.log_path is not None
    log_path = Path(process.log_path)
    await wait_for(lambda: child_pid_in(log_path) is not None, what="the agent's child")
    child_pid = child_pid_in(log_path)
    assert child_pid is not None
    assert sorted(group_members(process.pid)) == sorted([process.pid, child_pid])

    notes: list[str] = []
    started = time.monotonic()
    outcome = await runtime.stop(process, grace_s=0.5, on_progress=notes.append)
    took = time.monotonic() - started

    assert outcome.stopped and outcome.forced and not outcome.graceful and outcome.was_alive
    assert "SIGKILL" in outcome.detail
    assert 0.5 <= took < 3
    assert notes and any("SIGTERM" in n for n in notes) and any("SIGKILL" in n for n in notes)
    assert group_members(process.pid) == []  # no process of the group remains (/proc scan)
    assert not alive_pid(process.pid) and not alive_pid(child_pid)
    assert await runtime.is_alive(process) is False


async def test_orphans_of_a_dead_agent_are_stopped(runtime: LocalProcessRuntime) -> None:
    process = await runtime.spawn(spawn_request("crashy", ORPHANING))
    assert process.pid is not None and process.log_path is not None
    await wait_for(lambda: not alive_pid(process.pid or 0), what="the agent's crash")
    assert await runtime.is_alive(process) is False
    orphans = group_members(process.pid, since_ticks=process.proc_start_ticks)
    assert len(orphans) == 1  # its child still runs in the group

    outcome = await runtime.stop(process, grace_s=2)
    assert outcome.stopped and outcome.graceful and not outcome.was_alive
    assert "orphan" in outcome.detail
    assert group_members(process.pid) == []


async def test_pid_reuse_guard(runtime: LocalProcessRuntime) -> None:
    me = read_stat(os.getpid())
    assert me is not None
    genuine = AgentProcess(
        agent_name="me",
        runtime="local-process",
        pid=os.getpid(),
        pgid=me.pgrp,
        proc_start_ticks=me.start_ticks,
        started_at=datetime.now(UTC),
        host=runtime.host,
    )
    assert await runtime.is_alive(genuine) is True
    reused = genuine.model_copy(update={"proc_start_ticks": me.start_ticks + 12345})
    assert await runtime.is_alive(reused) is False
    # Stopping it must not signal the unrelated process now behind that pid (us).
    outcome = await runtime.stop(reused, grace_s=0.1)
    assert outcome.stopped and not outcome.was_alive and "another process" in outcome.detail
    elsewhere = genuine.model_copy(update={"host": "some-other-host"})
    assert await runtime.is_alive(elsewhere) is None
    assert (await runtime.stop(elsewhere, grace_s=0.1)).stopped is False


# ---- external ------------------------------------------------------------------------------


async def test_external_runtime_semantics(tmp_path: Path) -> None:
    external = runtime_for("external")
    assert isinstance(external, ExternalRuntime)
    assert isinstance(runtime_for("local-process", log_dir=tmp_path), LocalProcessRuntime)
    with pytest.raises(ValueError, match="unknown agent runtime"):
        runtime_for("docker")

    request = SpawnAgent(
        ticket_id=TICKET, spec=AgentSpec(name="eve"), temporal_address="127.0.0.1:1"
    )
    process = await external.spawn(request)
    assert process.pid is None and process.pgid is None and process.runtime == "external"
    assert await external.is_alive(process) is None
    outcome = await external.stop(process, grace_s=1)
    assert outcome == StopOutcome(stopped=False, detail=EXTERNAL_STOP_DETAIL)

    env = ActivityEnvironment()
    acts = AgentActivities(tmp_path)
    assert await env.run(acts.agent_alive, process) is None
    restarted = await env.run(
        acts.restart_agent, RestartAgent(spawn=request, previous=process, grace_s=1)
    )
    assert restarted.stop is not None and restarted.stop.detail == EXTERNAL_STOP_DETAIL
    assert restarted.process.pid is None


# ---- activities ----------------------------------------------------------------------------


class Counting:
    """A runtime wrapper that counts spawns and stops."""

    def __init__(self, inner: AgentRuntime) -> None:
        self.inner = inner
        self.name = inner.name
        self.spawns = 0
        self.stops = 0

    async def spawn(self, request: SpawnAgent) -> AgentProcess:
        self.spawns += 1
        return await self.inner.spawn(request)

    async def stop(
        self, process: AgentProcess, grace_s: float, on_progress: ProgressCallback | None = None
    ) -> StopOutcome:
        self.stops += 1
        return await self.inner.stop(process, grace_s, on_progress)

    async def is_alive(self, process: AgentProcess) -> bool | None:
        return await self.inner.is_alive(process)


def counting_activities(data_dir: Path) -> tuple[AgentActivities, Counting]:
    counting = Counting(LocalProcessRuntime(data_dir / "agents"))
    return AgentActivities(data_dir, runtimes={"local-process": counting}), counting


async def test_spawn_stop_and_alive_activities(tmp_path: Path) -> None:
    acts = AgentActivities(tmp_path / "data")
    assert len(acts.activities()) == 4
    env = ActivityEnvironment()
    beats: list[object] = []
    env.on_heartbeat = lambda *details: beats.extend(details)

    process = await env.run(acts.spawn_agent, spawn_request("ada", STUBBORN))
    assert process.log_path is not None
    assert Path(process.log_path).is_relative_to(tmp_path / "data" / "agents" / TICKET)
    assert await env.run(acts.agent_alive, process) is True
    outcome = await env.run(acts.stop_agent, StopAgent(process=process, grace_s=0.3))
    assert outcome.stopped and outcome.forced
    assert beats, "stop_agent heartbeats while it waits"
    assert await env.run(acts.agent_alive, process) is False

    with pytest.raises(ApplicationError) as caught:
        await env.run(acts.spawn_agent, spawn_request("ada", ["/no/such/agent-binary"]))
    assert caught.value.type == "AgentSpawnConfig" and caught.value.non_retryable
    with pytest.raises(ApplicationError) as early:
        await env.run(acts.spawn_agent, spawn_request("ada", ["{python}", "-c", "exit(4)"]))
    assert early.value.type == "AgentExitedEarly" and not early.value.non_retryable


async def test_restart_replaces_the_process(tmp_path: Path) -> None:
    acts, counting = counting_activities(tmp_path)
    env = ActivityEnvironment()
    beats: list[object] = []
    env.on_heartbeat = lambda *details: beats.extend(details)
    old = await env.run(acts.spawn_agent, spawn_request("ada", SLEEPER, generation=0))

    outcome = await env.run(
        acts.restart_agent,
        RestartAgent(spawn=spawn_request("ada", SLEEPER, generation=1), previous=old, grace_s=2),
    )
    assert outcome.stop is not None and outcome.stop.stopped and outcome.stop.graceful
    assert outcome.process.pid not in (None, old.pid)
    assert outcome.process.generation == 1
    assert await counting.is_alive(old) is False
    assert await counting.is_alive(outcome.process) is True
    assert counting.spawns == 2 and counting.stops == 1
    last = RestartProgress.model_validate(beats[-1])
    assert last.stage == "spawned" and last.process == outcome.process


async def test_a_retried_restart_does_not_spawn_twice(tmp_path: Path) -> None:
    acts, counting = counting_activities(tmp_path)
    old = await counting.spawn(spawn_request("ada", SLEEPER, generation=0))
    stop = await counting.stop(old, 2)
    replacement = await counting.spawn(spawn_request("ada", SLEEPER, generation=1))
    counting.spawns = counting.stops = 0

    # Attempt 2 of a restart whose first attempt stopped the old process and spawned the
    # replacement, then lost its result (worker crash): it resumes from its heartbeat.
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info,
        attempt=2,
        heartbeat_details=[
            RestartProgress(stage="spawned", stop=stop, process=replacement).model_dump(mode="json")
        ],
    )
    request = RestartAgent(
        spawn=spawn_request("ada", SLEEPER, generation=1), previous=old, grace_s=2
    )
    outcome = await env.run(acts.restart_agent, request)
    assert outcome.process.pid == replacement.pid
    assert outcome.stop == stop
    assert counting.spawns == 0 and counting.stops == 0

    # An attempt that only got as far as the stop does not stop again and spawns once (the
    # runtime's per-generation record would even catch a replacement the heartbeat missed).
    await counting.stop(replacement, 2)
    counting.stops = 0
    env.info = dataclasses.replace(
        env.info,
        heartbeat_details=[RestartProgress(stage="stopped", stop=stop).model_dump(mode="json")],
    )
    fresh = await env.run(acts.restart_agent, request)
    assert counting.stops == 0 and counting.spawns == 1
    assert fresh.process.pid not in (None, old.pid, replacement.pid)
    assert await counting.is_alive(fresh.process) is True


async def test_restart_refuses_while_the_previous_agent_may_run(tmp_path: Path) -> None:
    acts, counting = counting_activities(tmp_path)
    old = await counting.spawn(spawn_request("ada", SLEEPER, generation=0))
    on_other_host = old.model_copy(update={"host": "another-host"})
    env = ActivityEnvironment()
    with pytest.raises(ApplicationError) as caught:
        await env.run(
            acts.restart_agent,
            RestartAgent(spawn=spawn_request("ada", SLEEPER, generation=1), previous=on_other_host),
        )
    assert caught.value.type == "AgentNotStopped" and not caught.value.non_retryable
    assert counting.spawns == 1  # only the original
    assert await counting.is_alive(old) is True


# ---- the demo agent on the session's Temporal server -------------------------------------


@pytest.mark.server
async def test_demo_agent_does_the_seed_tasks(
    client: Client, settings: Settings, worker: Worker, tmp_path: Path
) -> None:
    ticket = await launch(client, settings, spec_dict(unique_id("rt-demo")))
    runtime = LocalProcessRuntime(tmp_path / "agents")
    spec = agent_spec(
        "ada",
        demo_agent.command(),
        cwd=str(REPO),
    )
    process = await runtime.spawn(
        SpawnAgent(
            ticket_id=ticket.ticket_id,
            spec=spec,
            temporal_address=settings.temporal_address,
            namespace=settings.namespace,
        )
    )
    assert process.log_path is not None
    log_path = Path(process.log_path)
    try:
        deadline = time.monotonic() + 20
        tasks: list[TaskView] = []
        while time.monotonic() < deadline:
            tasks = await ticket.handle.query("tasks", result_type=list[TaskView])
            if tasks and all(t.status == "done" for t in tasks):
                break
            assert await runtime.is_alive(process), f"the agent died:\n{log_path.read_text()}"
            await asyncio.sleep(0.2)
        assert [t.status for t in tasks] == ["done", "done"], log_path.read_text()
        agents = await ticket.handle.query("agents", result_type=list[AgentView])
        assert [a.name for a in agents] == ["ada"]
        assert all(t.assigned_agent == agents[0].id for t in tasks)
    finally:
        outcome = await runtime.stop(process, grace_s=5)
        await ticket.handle.terminate("test over")
    assert outcome.stopped and outcome.graceful, outcome.detail
    assert "(exit code 0)" in outcome.detail  # SIGTERM: heartbeats stop, it exits 0
    text = log_path.read_text()
    assert "registered as" in text and "completed" in text and "SIGTERM" in text
    assert "Traceback" not in text


@pytest.mark.server
async def test_demo_worker_and_validator_finish_a_ticket_and_exit_by_themselves(
    client: Client, settings: Settings, worker: Worker, tmp_path: Path
) -> None:
    submit = {
        "key": "submit",
        "phase": "testing",
        "title": "Submit final result",
        "type": "submission",
        "depends_on": ["impl"],
    }
    base = spec_dict(unique_id("rt-story"))
    reqs, impl = base["tasks"]
    tasks = [reqs, {**impl, "validation": True}, submit]
    ticket = await launch(client, settings, {**base, "tasks": tasks})
    runtime = LocalProcessRuntime(tmp_path / "agents")
    command = ["{python}", "-m", "agents.demo_agent", "--work-seconds", "0.05", "0.1"]

    async def start(name: str, kind: str, *flags: str) -> AgentProcess:
        spec = agent_spec(name, [*command, *flags], kind=kind, cwd=str(REPO))
        return await runtime.spawn(
            SpawnAgent(
                ticket_id=ticket.ticket_id,
                spec=spec,
                temporal_address=settings.temporal_address,
                namespace=settings.namespace,
            )
        )

    ada = await start("ada", "worker")
    vera = await start("vera", "validator", "--fail-review-once")
    try:
        await asyncio.wait_for(ticket.handle.result(), 25)
        # One read of the closed ticket, asked again when unanswered: a query reaching the
        # worker while it evicts the just-finished run is dropped (seen under load).
        state = await starter._read(
            lambda: ticket.handle.query(
                "state", result_type=TicketState, rpc_timeout=timedelta(seconds=10)
            )
        )
        assert state.status == "completed"
        versions = state.results
        assert [v.status for v in versions] == ["rejected", "validated"]
        assert versions[0].feedback  # rejected with feedback, then revised and passed
        reviewed = list(state.tasks.values())
        assert [t.status for t in reviewed] == ["done", "done", "done"]
        assert reviewed[1].iteration == 2  # rejected once, with feedback
        assert [r.passed for r in reviewed[1].reviews] == [False, True]
        assert reviewed[1].reviews[0].feedback
        for process in (ada, vera):  # the closed ticket ends both agents: exit code 0
            await wait_for(exited(process), 10, f"{process.agent_name} to exit")
    finally:
        outcomes = [await runtime.stop(p, grace_s=2) for p in (ada, vera)]
    for process, outcome in zip((ada, vera), outcomes, strict=True):
        assert not outcome.was_alive and "(exit code 0)" in outcome.detail, (
            outcome.detail,
            Path(process.log_path or "").read_text(),
        )
