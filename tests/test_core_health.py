"""Agent health in the pure core: the heartbeat ladder, restarts, cooldown, quarantine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core import deadlines, health
from core import ticket as core
from core.common import RestartAgentProcess, StartDiagnosis, StopAgentProcesses
from core.state import TicketState
from models.messages import ClaimTask, Heartbeat, RegisterAgent, ReleaseAgent
from models.runtime import AgentProcess, RestartOutcome, StopOutcome
from models.spec import parse_spec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OPERATOR = "op"


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ticket(runtime: str = "local-process", tasks: int = 2, **health_policy: Any) -> TicketState:
    agent: dict[str, Any] = {"name": "alice", "runtime": runtime}
    if runtime == "local-process":
        agent["command"] = ["{python}", "-m", "agents.demo_agent"]
    spec = parse_spec(
        {
            "id": "h",
            "title": "Health",
            "tasks": [
                {"key": f"k{i}", "phase": "implementation", "title": f"t{i}"} for i in range(tasks)
            ],
            "agents": [agent],
            "policy": {"health": health_policy, "stuck": {"window_s": 86_400}},
        }
    )
    state = core.new_ticket(spec, T0)
    state.operator_token_sha256 = core.hash_token(OPERATOR)
    health.start(state)
    state.lineages["alice"].process = process(100)
    return state


def process(pid: int, generation: int = 0) -> AgentProcess:
    return AgentProcess(
        agent_name="alice",
        runtime="local-process",
        pid=pid,
        pgid=pid,
        generation=generation,
        started_at=T0,
    )


def join(state: TicketState, at: datetime, name: str = "alice") -> dict[str, Any]:
    reply = core.register(state, RegisterAgent(name=name), at, token=name + str(at)).reply
    return {"agent_id": reply.agent_id, "token": name + str(at)}


def beat(
    state: TicketState, who: dict[str, Any], seq: int, at: datetime, status: str = "idle"
) -> bool:
    return core.heartbeat(state, Heartbeat(**who, seq=seq, status=status), at)  # type: ignore[arg-type]


def restarts(effects: list[Any]) -> list[RestartAgentProcess]:
    return [e for e in effects if isinstance(e, RestartAgentProcess)]


def test_ladder_boundaries_exactly() -> None:
    state = ticket()
    alice = join(state, s(0))
    agent = state.agents[alice["agent_id"]]
    beat(state, alice, 1, s(0))
    assert deadlines.next_deadline(state) == deadlines.Deadline(s(30), "heartbeat deadline alice-1")
    assert deadlines.tick(state, s(30) - timedelta(microseconds=1)) == []
    assert agent.missed_beats == 0
    assert deadlines.tick(state, s(30)) == []
    assert (agent.missed_beats, agent.state) == (1, "idle")  # 1 → warn
    assert state.timeline[-1].kind == "heartbeat_missed"
    deadlines.tick(state, s(60))
    assert (agent.missed_beats, agent.state) == (2, "degraded")  # 2 → degraded
    assert deadlines.tick(state, s(90) - timedelta(microseconds=1)) == []
    effects = deadlines.tick(state, s(90))
    assert (agent.missed_beats, agent.state) == (3, "restarting")  # 3 → unresponsive → restart
    [restart] = restarts(effects)
    assert (restart.agent_id, restart.number, restart.generation) == ("alice-1", 1, 1)
    assert restart.previous is not None and restart.previous.pid == 100


def test_running_agents_have_the_shorter_deadline() -> None:
    state = ticket()
    alice = join(state, s(0))
    core.claim(state, ClaimTask(**alice), s(0))  # holds a task: 15 s
    assert deadlines.next_deadline(state) == deadlines.Deadline(s(15), "heartbeat deadline alice-1")
    effects = deadlines.tick(state, s(45))  # three deadlines at once: straight to restart
    assert restarts(effects) and state.agents["alice-1"].missed_beats == 3


def test_a_heartbeat_resets_the_ladder_and_a_degraded_agent_recovers() -> None:
    state = ticket()
    alice = join(state, s(0))
    deadlines.tick(state, s(60))
    assert state.agents["alice-1"].state == "degraded"
    assert beat(state, alice, 1, s(61))
    agent = state.agents["alice-1"]
    assert (agent.missed_beats, agent.state) == (0, "idle")
    assert state.timeline[-1].kind == "agent_recovered"
    assert deadlines.next_deadline(state) == deadlines.Deadline(s(91), "heartbeat deadline alice-1")


def test_sequence_gaps_and_out_of_order_beats_are_counted() -> None:
    state = ticket()
    alice = join(state, s(0))
    assert beat(state, alice, 1, s(1))
    assert beat(state, alice, 4, s(2))  # 2 and 3 were lost
    assert not beat(state, alice, 3, s(3))  # late: counted, ignored
    agent = state.agents["alice-1"]
    assert (agent.seq_gaps, agent.out_of_order, agent.last_seq) == (2, 1, 4)
    assert agent.last_heartbeat_at == s(2)


def test_unknown_and_unauthenticated_heartbeats_are_ignored_and_counted() -> None:
    state = ticket()
    join(state, s(0))
    before = state.model_dump()
    assert not core.heartbeat(state, Heartbeat(agent_id="ghost", token="x", seq=1), s(1))
    assert not core.heartbeat(state, Heartbeat(agent_id="alice-1", token="bad", seq=1), s(1))
    assert state.ignored_messages == 2
    assert state.model_dump() | {"ignored_messages": 0} == before | {"ignored_messages": 0}


def test_restart_reassigns_tasks_counting_the_attempt() -> None:
    state = ticket(tasks=2)
    alice = join(state, s(0))
    core.claim(state, ClaimTask(**alice), s(0))
    core.claim(state, ClaimTask(**alice), s(0))
    effects = deadlines.tick(state, s(45))
    assert restarts(effects)
    for task in state.tasks.values():
        assert (task.status, task.assigned_agent, task.failures) == ("pending", None, 1)
        assert task.failure_reason is not None and "alice-1 was unresponsive" in task.failure_reason
    [row] = state.outbox.restart_events
    assert (row.outcome, row.reassigned_task_ids, row.old_pid) == ("requested", ["T1", "T2"], 100)
    # The replacement finishes: the old agent is gone; the new process registers itself.
    outcome = RestartOutcome(
        stop=StopOutcome(stopped=True, forced=True, was_alive=True),
        process=process(200, generation=1),
    )
    health.restart_finished(state, "alice-1", 1, outcome, s(50))
    assert state.agents["alice-1"].state == "terminated"
    assert state.lineages["alice"].process == process(200, generation=1)
    done = state.outbox.restart_events[-1]
    assert (done.outcome, done.forced, done.old_pid, done.new_pid) == ("restarted", True, 100, 200)
    bob = join(state, s(51))  # the new process registers under the same name
    assert state.agents[bob["agent_id"]].lineage == "alice"
    claimed = core.claim(state, ClaimTask(**bob), s(52)).reply.task
    assert claimed is not None and claimed.attempt == 2


def test_a_task_past_its_retries_fails_and_triggers_a_diagnosis() -> None:
    state = ticket(tasks=1)
    state.spec.policy.tasks.max_retries = 0
    alice = join(state, s(0))
    core.claim(state, ClaimTask(**alice), s(0))
    effects = deadlines.tick(state, s(45))
    assert state.tasks["T1"].status == "failed"
    assert [e.input.trigger for e in effects if isinstance(e, StartDiagnosis)] == ["task_failed"]


def crash(state: TicketState, at: float, generation: int) -> tuple[list[Any], dict[str, Any]]:
    """A new process registers at ``at`` and dies at once: three deadlines later, the ladder."""
    who = join(state, s(at))
    effects = deadlines.tick(state, s(at + 90))
    for restart in restarts(effects):
        health.restart_finished(
            state,
            restart.agent_id,
            restart.number,
            RestartOutcome(
                stop=StopOutcome(stopped=True), process=process(300 + generation, generation)
            ),
            s(at + 91),
        )
    return effects, who


def test_restart_cooldown_per_lineage_defers_a_restart() -> None:
    state = ticket(restart_cooldown_s=600)
    effects, _ = crash(state, 0, 1)
    assert len(restarts(effects)) == 1  # restart 1 at t=90
    effects, who = crash(state, 100, 2)  # unresponsive at t=190: cooldown until t=690
    assert restarts(effects) == []
    assert state.agents[who["agent_id"]].state == "unresponsive"
    assert deadlines.next_deadline(state) == deadlines.Deadline(s(690), "restart cooldown alice")
    [restart] = restarts(deadlines.tick(state, s(690)))
    assert restart.number == 2


def test_more_than_three_restarts_in_an_hour_quarantine_escalate_and_diagnose() -> None:
    state = ticket(restart_cooldown_s=60)
    for n in range(3):
        effects, _ = crash(state, n * 200, n + 1)
        assert len(restarts(effects)) == 1, f"restart {n + 1}"
    effects, who = crash(state, 600, 4)  # the fourth within the hour
    agent = state.agents[who["agent_id"]]
    assert restarts(effects) == [] and agent.state == "quarantined"
    assert [e.input.trigger for e in effects if isinstance(e, StartDiagnosis)] == [
        "restart_escalation"
    ]
    assert any(isinstance(e, StopAgentProcesses) for e in effects)
    [escalation] = [e for e in state.escalations if e.source == "restart_quarantine"]
    assert escalation.severity == "SEV-2" and escalation.agent_id == agent.id
    assert state.outbox.restart_events[-1].outcome == "quarantined"
    assert core.claim(state, ClaimTask(**who), s(700)).reply.reason == "agent is quarantined"
    assert deadlines.tick(state, s(3000)) == []  # no fourth restart, no ladder while quarantined
    assert state.restarts_total == 3


def test_release_with_and_without_a_timely_heartbeat() -> None:
    state = ticket(restart_cooldown_s=0)
    for n in range(4):
        _, who = crash(state, n * 100, n + 1)
    agent = state.agents[who["agent_id"]]
    assert agent.state == "quarantined"
    # Without a heartbeat within 15 s the release lapses.
    health.release(state, ReleaseAgent(agent_id=agent.id, operator_token=OPERATOR), s(1000))
    assert deadlines.next_deadline(state) == deadlines.Deadline(
        s(1015), f"release deadline {agent.id}"
    )
    deadlines.tick(state, s(1015))
    assert agent.state == "quarantined" and state.timeline[-1].kind == "release_lapsed"
    # With one, it is back.
    health.release(state, ReleaseAgent(agent_id=agent.id, operator_token=OPERATOR), s(1100))
    assert beat(state, who, 1, s(1110))
    assert agent.state == "idle"
    assert core.claim(state, ClaimTask(**who), s(1111)).reply.task is not None


def test_release_refusals() -> None:
    state = ticket()
    alice = join(state, s(0))
    before = state.model_dump()
    with pytest.raises(core.Refused) as info:
        health.release(
            state, ReleaseAgent(agent_id=alice["agent_id"], operator_token=OPERATOR), s(1)
        )
    assert info.value.field == "agent_id" and "not quarantined" in info.value.rule
    with pytest.raises(core.Refused) as info:
        health.release(state, ReleaseAgent(agent_id="alice-1", operator_token="nope"), s(1))
    assert info.value.field == "operator_token"
    assert state.model_dump() == before


def test_external_agents_are_asked_to_restart_themselves() -> None:
    state = ticket(runtime="external")
    alice = join(state, s(0))
    core.claim(state, ClaimTask(**alice), s(0))
    effects = deadlines.tick(state, s(45))
    assert restarts(effects) == []  # nothing for a runtime to do
    agent = state.agents["alice-1"]
    assert agent.state == "restarting" and core.inbox(state, "alice-1").restart
    assert state.tasks["T1"].status == "pending"
    assert [e.source for e in state.escalations] == ["external_restart"]
    assert state.outbox.restart_events[-1].outcome == "asked_to_restart"
    again = join(state, s(50))  # it restarts itself and registers again
    assert state.agents[again["agent_id"]].lineage == "alice"
    assert agent.state == "terminated"
