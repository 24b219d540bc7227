"""Busy but stuck: what each agent actually does, and its anomaly score (pure; DESIGN §12).

Stuck detection (core.diagnosis) needs *no active task*; an agent that holds a task and
sends the same note every second, one that holds a task and does nothing, one that creates
tasks as fast as the ticket takes them, or one whose results are empty never trips it. Each
agent therefore carries a few behaviour signals, each 0-1 with a weight:

- **repetition** (agent_looping): the same normalised progress note (an error it reports
  included) on one task ``anomaly.repeats`` times in a row, or two notes alternating A/B
  over six (a ``fail`` is a proper hand-back, not a note: the ticket retries the task and the
  rule engine reads the same error across attempts);
- **stall** (agent_stalled): it holds a task and its last state-changing act (claim,
  complete, fail, create, submit, or a note different from the previous) is older than
  max(``tasks.stall_s``, 3 x p90 of the ticket's own claim-to-done durations);
- **creation** (task_storm): it hit ``tasks.max_creates_per_minute`` (below the bound a
  burst counts at most half);
- **quality** (low_quality_results): its latest results in a row were trivial (empty, a
  copy of its earlier version, or — for results someone judges: the ticket's, a reviewed
  task's — below ``anomaly.min_result_chars``).

The composite score is ``1 - prod(1 - weight x value)``: one signal fully on is enough, two
half-on signals add up. When an agent's score stays at or above ``anomaly.threshold`` for a
whole window (``anomaly.window_s``, default the stuck window), counted from the moment its
signal began (the first note of a repeated run, the first create of the burst, the end of
the stall bound), the ticket is diagnosed with trigger ``anomaly``. Time-based signals ride
the ticket's one durable timer (:func:`deadlines`); nothing polls.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from core import diagnosis, escalations
from core.common import Effect, log
from core.diagnosis import Deadline
from core.state import HELD_STATUSES, Agent, NoteMark, Task, TicketState

#: How many notes an agent's behaviour keeps (enough for an A/B alternation over six).
KEPT_NOTES = 8
#: How many claim-to-done durations the ticket keeps for the stall bound's p90.
KEPT_DURATIONS = 50
#: Fewer done tasks than this: the stall bound is ``tasks.stall_s`` alone.
MIN_DURATIONS = 5
MINUTE = timedelta(minutes=1)
ALTERNATION = 6
LIVE = ("spawning", "idle", "running", "degraded")

#: Each signal's weight in the composite score, and the signature it points to.
WEIGHTS: dict[str, float] = {"repetition": 0.9, "stall": 0.9, "creation": 0.9, "quality": 0.8}
SIGNATURES: dict[str, str] = {
    "repetition": "agent_looping",
    "stall": "agent_stalled",
    "creation": "task_storm",
    "quality": "low_quality_results",
}

_ID = re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{8,}\b")  # commit shas, request ids
_SPACE = re.compile(r"\s+")
_DIGITS = re.compile(r"\d+")


def normalise(text: str) -> str:
    """A note as compared for repetition: case, spacing and long hex ids aside (numbers
    count: "10/100 done" then "20/100 done" is progress)."""
    return _SPACE.sub(" ", _ID.sub("#", text.lower())).strip()[:200]


@dataclass(frozen=True)
class Signal:
    """One behaviour signal of an agent: its value, weight and what it saw."""

    name: str
    value: float
    detail: str
    since: datetime | None = None  # when it turned fully on

    @property
    def weight(self) -> float:
        return WEIGHTS[self.name]

    @property
    def contribution(self) -> float:
        return self.weight * self.value

    def explain(self) -> str:
        return f"{self.name} {self.value:.2f} x {self.weight:g}: {self.detail}"


@dataclass(frozen=True)
class Score:
    """An agent's composite anomaly score, explained by its signals (strongest first)."""

    agent_id: str
    score: float
    signals: tuple[Signal, ...]

    @property
    def top(self) -> Signal | None:
        return self.signals[0] if self.signals else None

    @property
    def signature(self) -> str | None:
        return SIGNATURES[self.signals[0].name] if self.signals else None

    def explain(self) -> list[str]:
        return [s.explain() for s in self.signals]


# ---- recording (core.ticket calls these as messages arrive) ---------------------------------


def acted(agent: Agent, now: datetime) -> None:
    """A state-changing act of the agent: claim, complete, fail, create or submit."""
    agent.behaviour.progress_at = now


def noted(state: TicketState, agent: Agent, task_id: str, text: str, now: datetime) -> None:
    """A progress note (or a failure reason) of the agent on one of its tasks."""
    if not state.behaviour_v1:
        return
    b = agent.behaviour
    mark = NoteMark(at=now, task_id=task_id, text=normalise(text))
    last = b.notes[-1] if b.notes else None
    if last is None or (last.task_id, last.text) != (mark.task_id, mark.text):
        b.progress_at = now  # a note that says something new is progress
    b.notes = [*b.notes, mark][-KEPT_NOTES:]
    update(state, agent, now)


def failed(state: TicketState, agent: Agent, now: datetime) -> None:
    """The agent gave up on a task: an act. Its reason is not a note: a failure is handed
    back properly, retried by the ticket, and the same error across attempts is the rule
    engine's (environment_error, dependency_deadlock), not the agent's loop."""
    if not state.behaviour_v1:
        return
    acted(agent, now)
    update(state, agent, now)


def created(state: TicketState, agent: Agent, task_id: str, title: str, now: datetime) -> None:
    if not state.behaviour_v1:
        return
    acted(agent, now)
    mark = NoteMark(at=now, task_id=task_id, text=family(title))
    agent.behaviour.creates = [*recent_creates(agent, now), mark]
    agent.creates = [*door_creates(agent, now), now]
    update(state, agent, now)


def family(title: str) -> str:
    """A title with its numbers aside: "Investigate flaky check 7" and "… 8" are one family."""
    return _DIGITS.sub("#", " ".join(title.lower().split()))[:200]


def recent_creates(agent: Agent, now: datetime) -> list[NoteMark]:
    """Its creates in the last minute since a remedy last acted on it (the signal)."""
    return [m for m in agent.behaviour.creates if m.at > now - MINUTE]


def door_creates(agent: Agent, now: datetime) -> list[datetime]:
    """Its creates in the last minute, whatever happened since (the hard bound)."""
    return [t for t in agent.creates if t > now - MINUTE]


def claimed(state: TicketState, agent: Agent, now: datetime) -> None:
    if not state.behaviour_v1:
        return
    acted(agent, now)
    update(state, agent, now)


def done(state: TicketState, agent: Agent, claimed_at: datetime | None, now: datetime) -> None:
    """The agent finished a task: an act, and a duration for the stall bound."""
    if not state.behaviour_v1:
        return
    acted(agent, now)
    if claimed_at is not None:
        seconds = max(0.0, (now - claimed_at).total_seconds())
        state.durations = [*state.durations, seconds][-KEPT_DURATIONS:]
    update(state, agent, now)


def trivial(
    state: TicketState, content: str, sha: str, earlier: set[str], *, judged: bool = True
) -> str | None:
    """Why a result is trivial (empty, too short, a copy of an earlier one), or None.

    The minimum size applies to results someone judges (the ticket's result, a reviewed
    task's): a plain task may well end in one word."""
    text = content.strip()
    minimum = state.spec.policy.anomaly.min_result_chars
    if not text:
        return "empty"
    if judged and len(text) < minimum:
        return f"{len(text)} characters (the minimum is {minimum}): {text[:40]!r}"
    if sha in earlier:
        return "identical to an earlier result"
    return None


def result_given(
    state: TicketState,
    agent: Agent,
    content: str,
    sha: str,
    earlier: set[str],
    now: datetime,
    *,
    judged: bool = True,
) -> None:
    """A result from the agent (a task's or the ticket's): trivial ones in a row count."""
    if not state.behaviour_v1:
        return
    acted(agent, now)
    b = agent.behaviour
    why = trivial(state, content, sha, earlier, judged=judged)
    if why is None:
        b.low_quality = []
        b.low_quality_since = None
    else:
        if not b.low_quality:
            b.low_quality_since = now
        b.low_quality = [*b.low_quality, why][-5:]
    update(state, agent, now)


# ---- signals and the score ---------------------------------------------------------------


def stall_bound(state: TicketState) -> tuple[float, str]:
    """Seconds without progress after which a holding agent is stalled, and why that many."""
    floor = state.spec.policy.tasks.stall_s
    samples = sorted(state.durations)
    if len(samples) < MIN_DURATIONS:
        return floor, f"tasks.stall_s {floor:g} s"
    p90 = samples[min(len(samples) - 1, math.ceil(0.9 * len(samples)) - 1)]
    if 3 * p90 <= floor:
        return floor, f"tasks.stall_s {floor:g} s"
    return 3 * p90, f"3 x p90 {p90:.0f} s of {len(samples)} done tasks"


def repetition(state: TicketState, agent: Agent) -> Signal:
    notes = agent.behaviour.notes
    repeats = state.spec.policy.anomaly.repeats
    if not notes:
        return Signal("repetition", 0.0, "no notes")
    last = notes[-1]
    task = state.tasks.get(last.task_id)
    if task is None or task.assigned_agent != agent.id or task.status not in HELD_STATUSES:
        return Signal("repetition", 0.0, f"no longer holds {last.task_id}")
    run = 0
    for mark in reversed(notes):
        if (mark.task_id, mark.text) != (last.task_id, last.text):
            break
        run += 1
    if run >= repeats:
        first = notes[-run]
        return Signal(
            "repetition",
            1.0,
            f"the same note on {last.task_id} {run} times in a row: {last.text[:80]!r}",
            since=first.at,
        )
    tail = notes[-ALTERNATION:]
    if (
        len(tail) == ALTERNATION
        and len({m.task_id for m in tail}) == 1
        and len({m.text for m in tail}) == 2
        and all(tail[i].text != tail[i + 1].text for i in range(ALTERNATION - 1))
    ):
        return Signal(
            "repetition",
            1.0,
            f"two notes alternating on {last.task_id} over {ALTERNATION}: "
            f"{tail[-2].text[:40]!r} / {tail[-1].text[:40]!r}",
            since=tail[0].at,
        )
    value = 0.5 * (run - 1) / (repeats - 1) if run > 1 else 0.0
    return Signal("repetition", value, f"the same note {run} times in a row")


def held_by(state: TicketState) -> dict[str, Task]:
    """Each agent's longest-held task (from the index: only the held tasks, in creation order)."""
    held: dict[str, Task] = {}
    held_ids = (t for ids in state.index().held.values() for t in ids)
    for task in sorted((state.tasks[t] for t in held_ids), key=lambda t: t.seq):
        assert task.assigned_agent is not None
        other = held.get(task.assigned_agent)
        if other is None or (task.claimed_at or task.updated_at) < (
            other.claimed_at or other.updated_at
        ):
            held[task.assigned_agent] = task
    return held


def stall_starts(
    state: TicketState,
    agent: Agent,
    held: dict[str, Task] | None = None,
    bound: tuple[float, str] | None = None,
) -> tuple[datetime, str, str] | None:
    """When a holding agent counts as stalled (task, bound), or None if it holds nothing."""
    task = (held if held is not None else held_by(state)).get(agent.id)
    if task is None or escalations.waits_for_answer(state, agent):
        return None  # holds nothing, or waits for a person's answer (ask_human)
    since = max(
        d
        for d in (agent.behaviour.progress_at, task.claimed_at, agent.registered_at)
        if d is not None
    )
    seconds, why = bound or stall_bound(state)
    return since + timedelta(seconds=seconds), task.id, why


def stall(state: TicketState, agent: Agent, now: datetime) -> Signal:
    bound = stall_bound(state)
    progress = agent.behaviour.progress_at or agent.registered_at
    if now - progress < timedelta(seconds=bound[0]):
        # The hot path (every message): it acted within the bound, whatever it holds (a
        # claim is an act, so no held task began later than its last act).
        return Signal("stall", 0.0, f"progress within the bound ({bound[1]})")
    if escalations.waits_for_answer(state, agent):
        return Signal("stall", 0.0, "waits for a person's answer (ask_human)")
    starts = stall_starts(state, agent, bound=bound)
    if starts is None:
        return Signal("stall", 0.0, "holds no task")
    at, task_id, why = starts
    if now < at:
        return Signal("stall", 0.0, f"holds {task_id}, progress within the bound ({why})")
    idle = (now - at).total_seconds() + bound[0]
    return Signal(
        "stall",
        1.0,
        f"holds {task_id} with no progress for {idle:.0f} s (bound: {why})",
        since=at,
    )


def creation(state: TicketState, agent: Agent, now: datetime) -> Signal:
    """A storm: it hit the rate bound with a burst of look-alike tasks (a planner that
    creates as many distinct tasks counts at most half)."""
    recent = recent_creates(agent, now)
    limit = state.spec.policy.tasks.max_creates_per_minute
    families = Counter(m.text for m in recent)
    alike = sum(n for n in families.values() if n > 1)
    if len(recent) >= limit and alike * 2 >= len(recent):
        top = families.most_common(1)[0][0]
        return Signal(
            "creation",
            1.0,
            f"created {len(recent)} tasks in a minute (tasks.max_creates_per_minute {limit}), "
            f"{alike} of them look-alikes such as {top[:60]!r}",
            since=recent[0].at,
        )
    return Signal("creation", 0.5 * len(recent) / limit, f"created {len(recent)} in a minute")


def quality(agent: Agent) -> Signal:
    issues = agent.behaviour.low_quality
    if len(issues) >= 2:
        return Signal(
            "quality",
            1.0,
            f"its last {len(issues)} results were trivial (latest: {issues[-1]})",
            since=agent.behaviour.low_quality_since,
        )
    if issues:
        return Signal("quality", 0.5, f"its last result was trivial: {issues[-1]}")
    return Signal("quality", 0.0, "its results look real")


def score(state: TicketState, agent: Agent, now: datetime) -> Score:
    """The agent's composite score now, with its contributing signals, strongest first."""
    signals = [
        repetition(state, agent),
        stall(state, agent, now),
        creation(state, agent, now),
        quality(agent),
    ]
    on = sorted((s for s in signals if s.value > 0), key=lambda s: -s.contribution)
    rest = 1.0
    for s in on:
        rest *= 1.0 - s.contribution
    return Score(agent.id, round(1.0 - rest, 3), tuple(on))


def update(state: TicketState, agent: Agent, now: datetime) -> Score:
    """Recompute the agent's score; an anomalous spell begins or ends."""
    current = score(state, agent, now)
    b = agent.behaviour
    b.score = current.score
    threshold = state.spec.policy.anomaly.threshold
    if current.score >= threshold:
        if b.anomaly_since is None:
            # Back-dated to when the signal began: the first note of the repeated run, the
            # first create of the burst, the end of the stall bound.
            starts = [s.since for s in current.signals if s.since and s.contribution >= threshold]
            b.anomaly_since = min(starts) if starts else now
    else:
        b.anomaly_since = None
        b.anomaly_reported = False
    return current


def window(state: TicketState) -> timedelta:
    policy = state.spec.policy
    return timedelta(seconds=policy.anomaly.window_s or policy.stuck.window_s)


# ---- the timer -----------------------------------------------------------------------------


def deadlines(state: TicketState) -> list[Deadline]:
    """An anomalous spell's window end; the moment a holding agent's stall bound passes."""
    if not state.behaviour_v1 or state.status != "open":
        return []
    if diagnosis.running_diagnosis(state) is not None:
        return []  # looked at again when it finishes
    found: list[Deadline] = []
    held: dict[str, Task] | None = None  # one pass over the tasks, only when needed
    bound = stall_bound(state)
    for agent in state.agents.values():
        if agent.state not in LIVE:
            continue
        b = agent.behaviour
        if b.anomaly_since is not None:
            if not b.anomaly_reported:
                found.append(Deadline(b.anomaly_since + window(state), f"anomaly {agent.id}"))
            continue
        if held is None:
            held = held_by(state)
        starts = stall_starts(state, agent, held, bound)
        if starts is not None:
            found.append(Deadline(starts[0], f"stall bound {agent.id}"))
    return found


def rescore(state: TicketState, now: datetime) -> None:
    """Every live agent's score, recomputed (time moves the stall and creation signals)."""
    if not state.behaviour_v1 or state.status != "open":
        return
    for agent in state.agents.values():
        if agent.state in LIVE:
            if agent.behaviour.creates:
                agent.behaviour.creates = recent_creates(agent, now)
            update(state, agent, now)


def tick(state: TicketState, now: datetime) -> list[Effect]:
    """An anomaly that lasted a whole window is diagnosed (one per tick)."""
    if not state.behaviour_v1 or state.status != "open":
        return []
    if diagnosis.running_diagnosis(state) is not None:
        return []
    for agent in state.agents.values():
        b = agent.behaviour  # rescored by rescore() just before (core.deadlines.tick)
        if agent.state not in LIVE or b.anomaly_since is None or b.anomaly_reported:
            continue
        if b.anomaly_since + window(state) > now:
            continue
        b.anomaly_reported = True
        current = score(state, agent, now)  # for the reason: only the agent reported
        top = current.top
        lasted = (now - b.anomaly_since).total_seconds()
        reason = (
            f"{agent.id}: {current.signature} (score {current.score:.2f} for {lasted:.0f} s): "
            f"{top.detail if top else ''}"
        )
        log(state, now, "anomaly", reason, agent_id=agent.id)
        if state.escalations_v1 and state.spec.priority == "critical":
            # A critical ticket does not wait for the ladder to fail: a person hears now.
            diagnosis.escalate(
                state, now, source="critical_anomaly", reason=reason, agent_id=agent.id
            )
        return diagnosis.request_diagnosis(state, "anomaly", now, reason=reason)
    return []


def scores(state: TicketState, now: datetime) -> list[Score]:
    """Every live agent's score now (views: dashboard, status query)."""
    return [score(state, a, now) for a in state.agents.values() if a.state in LIVE]
