"""Random interleavings of every message, honest and bogus, against the ticket core's invariants.

A hypothesis state machine drives :mod:`core.ticket` directly (no Temporal): several agents of
every kind plus impostors (unknown ids, wrong tokens) register, claim, complete, fail, create
tasks, submit and review results, beat and report progress, with ``now`` always advancing.
After every step the invariants of DESIGN §3–4 must hold.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from core import ticket as core
from core import views
from core.common import blocked_tasks
from core.state import ACTIVE_STATUSES, HELD_STATUSES, TicketState, title_key
from models.ledger import LedgerBatch, TaskResultRecord, ValidationReviewRecord
from models.ledger import WorkflowResultRecord as VersionRecord
from models.messages import (
    CancelTicket,
    ClaimTask,
    CompleteTask,
    CreateTask,
    FailTask,
    Heartbeat,
    RegisterAgent,
    ReportProgress,
    ReviewResult,
    SubmitResult,
)
from models.spec import PRIORITY_RANK, TicketSpec


class Creds(TypedDict):
    """What every authenticated message carries."""

    agent_id: str
    token: str


T0 = datetime(2025, 1, 1, tzinfo=UTC)
OPERATOR_TOKEN = "op-token"
PHASES = ["requirements", "implementation", "testing"]
TASK_CAP = 40  # bytes: small caps make oversize results cheap to generate
CONTENT_CAP = 80

#: (role, n): role 0 an unknown agent, 1 a real id with a wrong token, 2 any registered agent,
#: 3-9 a registered agent of a kind the message suits (when there is one).
who_index = st.tuples(st.integers(min_value=0, max_value=9), st.integers(min_value=0, max_value=50))
Who = tuple[int, int]
WORKERS = ("worker", "diagnostic")
task_number = st.integers(min_value=1, max_value=14)  # some ids never exist
#: (own, n): with own, the n-th task the sender holds (if any); else task T<n>, maybe unknown.
task_choice = st.tuples(st.integers(min_value=0, max_value=3).map(bool), task_number)
request_ids = st.one_of(st.none(), st.sampled_from(["r1", "r2"]))
task_results = st.sampled_from(["# done", "fixed it", "x" * (TASK_CAP + 1)])
contents = st.sampled_from(["# final result", "  \n ", "y" * (CONTENT_CAP + 1)])


class TicketMachine(RuleBasedStateMachine):
    """One ticket, many agents; every rule is one inbound message."""

    state: TicketState

    @initialize(
        on_result_found=st.sampled_from(["stop_all", "do_nothing"]),
        max_retries=st.integers(min_value=0, max_value=2),
        max_tasks=st.integers(min_value=1, max_value=3),
    )
    def launch(self, on_result_found: str, max_retries: int, max_tasks: int) -> None:
        spec = TicketSpec.model_validate(
            {
                "id": "tk",
                "title": "property ticket",
                "result_criteria": ["it works"],
                "tasks": [
                    {"key": "req", "phase": "requirements", "title": "R", "priority": "low"},
                    {"key": "impl", "phase": "implementation", "title": "I", "depends_on": ["req"]},
                    {"key": "more", "phase": "implementation", "title": "M", "priority": "high"},
                    {"key": "test", "phase": "testing", "title": "T", "depends_on": ["impl"]},
                ],
                "policy": {
                    "results": {
                        "on_result_found": on_result_found,
                        "max_content_bytes": CONTENT_CAP,
                    },
                    "tasks": {
                        "max_retries": max_retries,
                        "max_tasks_per_agent": max_tasks,
                        "max_result_bytes": TASK_CAP,
                    },
                },
            }
        )
        self.clock = 0.0
        self.state = core.new_ticket(spec, self.tick())
        self.state.operator_token_sha256 = core.hash_token(OPERATOR_TOKEN)
        self.creds: list[Creds] = []
        self.tokens_issued = 0
        self.task_ledger: list[TaskResultRecord] = []
        self.version_ledger: list[VersionRecord] = []
        self.review_ledger: list[ValidationReviewRecord] = []
        self.task_ids_seen: list[str] = []
        self.verdicts: dict[int, dict[str, Any]] = {}
        self.replies: dict[tuple[str, str, str], Any] = {}
        self.finished = False
        self.last_activity = self.state.last_activity_at
        # One worker and one validator from the start; the rules register more.
        self.register("w", "worker", None)
        self.register("v", "validator", None)

    # ---- helpers -----------------------------------------------------------------------

    def tick(self, seconds: float = 1.0) -> datetime:
        self.clock += seconds
        return T0 + timedelta(seconds=self.clock)

    def who(self, choice: Who, kinds: tuple[str, ...] = WORKERS) -> tuple[Creds, bool]:
        """Credentials to send with: a registered agent's, or an impostor's (bogus=True)."""
        role, n = choice
        if role == 0 or not self.creds:
            return {"agent_id": f"ghost-{n}", "token": "boo"}, True
        if role == 1:
            victim = self.creds[n % len(self.creds)]["agent_id"]
            return {"agent_id": victim, "token": "not-the-token"}, True
        pool = self.creds
        if role >= 3:
            suited = [c for c in self.creds if self.kind_of(c) in kinds]
            pool = suited or pool
        return pool[n % len(pool)], False

    def most_urgent(self, phases: list[str] | None) -> str | None:
        """The test's own reading of the claim rule (not core's): pending, dependencies done,
        in the phases asked for; highest priority, then phase order, then creation order."""
        rank = {"low": 0, "normal": 1, "high": 2, "critical": 3}
        tasks = self.state.tasks
        eligible = [
            t
            for t in tasks.values()
            if t.status == "pending"
            and (not phases or t.phase in phases)
            and all(tasks[d].status == "done" for d in t.depends_on)
        ]
        eligible.sort(key=lambda t: (-rank[t.priority], PHASES.index(t.phase), int(t.id[1:])))
        return eligible[0].id if eligible else None

    def seen(self, sender: str, kind: str, request_id: str | None) -> bool:
        """Whether this request was answered before (so its reply comes from the cache)."""
        return request_id is not None and (sender, kind, request_id) in self.replies

    def task_id(self, creds: Creds, choice: tuple[bool, int]) -> str:
        own, n = choice
        held = [
            t.id
            for t in self.state.tasks.values()
            if t.assigned_agent == creds["agent_id"] and t.status in HELD_STATUSES
        ]
        return held[n % len(held)] if own and held else f"T{n}"

    def kind_of(self, creds: Creds) -> str | None:
        agent = self.state.agents.get(creds["agent_id"])
        return agent.kind if agent else None

    def update(
        self,
        kind: str,
        fn: Any,
        msg: Any,
        *,
        sender: str,
        bogus: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Send an update: check-only first, then apply; a refusal must change nothing."""
        now = self.tick()
        before = self.state.model_dump()
        try:
            fn(self.state, msg, now, apply=False, **kwargs)
            check_refusal: core.Refused | None = None
        except core.Refused as exc:
            check_refusal = exc
        assert self.state.model_dump() == before, f"check-only {kind} changed the state"
        try:
            step = fn(self.state, msg, now, **kwargs)
        except core.Refused as exc:
            assert self.state.model_dump() == before, f"refused {kind} changed the state: {exc}"
            assert check_refusal is not None and str(check_refusal) == str(exc), (
                f"check-only and apply disagree on {kind}: {check_refusal} vs {exc}"
            )
            assert exc.field and exc.rule
            event(f"{kind} refused: {exc.field}")
            return None
        assert check_refusal is None, f"check-only refused what apply accepted: {check_refusal}"
        assert not bogus, f"{kind} from an impostor was accepted"
        event(f"{kind} accepted")
        request_id = getattr(msg, "request_id", None)
        if request_id is not None:
            key = (sender, kind, request_id)
            if key in self.replies:
                event(f"{kind} answered from the cache")
                assert step.reply == self.replies[key], f"retried {kind} got another reply"
                assert step.effects == []
                assert self.state.model_dump() == before, f"retried {kind} changed the state"
            else:
                self.replies[key] = step.reply
        return step

    # ---- rules: one inbound message each -----------------------------------------------

    @rule(
        name=st.sampled_from(["w", "x", "v", "d"]),
        kind=st.sampled_from(["worker", "worker", "validator", "diagnostic"]),
        request_id=request_ids,
    )
    def register(self, name: str, kind: Any, request_id: str | None) -> None:
        self.tokens_issued += 1
        token = f"tok-{self.tokens_issued}"
        known = set(self.state.agents)
        msg = RegisterAgent(name=name, kind=kind, request_id=request_id)
        step = self.update("register", core.register, msg, sender=name, token=token)
        if step is not None and step.reply.agent_id not in known:
            assert step.reply.token == token
            agent = self.state.agents[step.reply.agent_id]
            assert agent.token_sha256 == core.hash_token(token) != token
            self.creds.append({"agent_id": step.reply.agent_id, "token": token})

    @rule(
        who=who_index,
        phases=st.one_of(st.none(), st.lists(st.sampled_from(PHASES), min_size=1, max_size=2)),
        request_id=request_ids,
    )
    def claim(self, who: Who, phases: list[str] | None, request_id: str | None) -> None:
        creds, bogus = self.who(who)
        expected = self.most_urgent(phases)
        retry = self.seen(creds["agent_id"], "claim", request_id)
        msg = ClaimTask(**creds, phases=phases, request_id=request_id)
        step = self.update("claim", core.claim, msg, sender=creds["agent_id"], bogus=bogus)
        if step is None or step.reply.task is None or retry:
            return
        # The most urgent eligible task (priority, phase order, creation order) is given.
        assert step.reply.task.id == expected
        assert self.kind_of(creds) != "validator"

    @rule(
        who=who_index,
        task=task_choice,
        result=task_results,
        claim_next=st.booleans(),
        request_id=request_ids,
    )
    def complete(
        self,
        who: Who,
        task: tuple[bool, int],
        result: str,
        claim_next: bool,
        request_id: str | None,
    ) -> None:
        creds, bogus = self.who(who)
        retry = self.seen(creds["agent_id"], "complete", request_id)
        msg = CompleteTask(
            **creds,
            task_id=self.task_id(creds, task),
            result=result,
            result_type="implementation",
            claim_next=claim_next,
            request_id=request_id,
        )
        step = self.update("complete", core.complete, msg, sender=creds["agent_id"], bogus=bogus)
        if step is not None and len(result.encode()) > TASK_CAP:
            assert retry, "an oversize result was accepted"

    @rule(who=who_index, claim_next=st.booleans())
    def work(self, who: Who, claim_next: bool) -> None:
        """An agent claims a task and completes it straight away (two ordinary messages)."""
        creds, bogus = self.who(who)
        sender = creds["agent_id"]
        step = self.update("claim", core.claim, ClaimTask(**creds), sender=sender, bogus=bogus)
        if step is None or step.reply.task is None:
            return
        msg = CompleteTask(
            **creds,
            task_id=step.reply.task.id,
            result="# worked",
            result_type="test",
            claim_next=claim_next,
        )
        done = self.update("complete", core.complete, msg, sender=sender)
        assert done is not None and done.reply.task.status == "done"

    @rule(who=who_index, task=task_choice, request_id=request_ids)
    def fail(self, who: Who, task: tuple[bool, int], request_id: str | None) -> None:
        creds, bogus = self.who(who)
        msg = FailTask(
            **creds, task_id=self.task_id(creds, task), reason="gave up", request_id=request_id
        )
        self.update("fail", core.fail, msg, sender=creds["agent_id"], bogus=bogus)

    @rule(
        who=who_index,
        phase=st.sampled_from([*PHASES, "deploy"]),
        deps=st.lists(task_number, max_size=2),
        priority=st.sampled_from(["low", "normal", "high", "critical"]),
        request_id=request_ids,
    )
    def create_task(
        self, who: Who, phase: str, deps: list[int], priority: Any, request_id: str | None
    ) -> None:
        creds, bogus = self.who(who)
        retry = self.seen(creds["agent_id"], "create_task", request_id)
        msg = CreateTask(
            **creds,
            phase=phase,
            title="discovered",
            depends_on=[f"T{d}" for d in deps],
            priority=priority,
            request_id=request_id,
        )
        step = self.update(
            "create_task", core.create_task, msg, sender=creds["agent_id"], bogus=bogus
        )
        if step is not None and not retry:
            assert step.reply.id == f"T{self.state.next_task_number - 1}"
            assert self.kind_of(creds) in ("worker", "diagnostic")

    @rule(who=who_index, content=contents, request_id=request_ids)
    def submit_result(self, who: Who, content: str, request_id: str | None) -> None:
        creds, bogus = self.who(who)
        msg = SubmitResult(**creds, content=content, request_id=request_id)
        self.update("submit_result", core.submit_result, msg, sender=creds["agent_id"], bogus=bogus)

    @rule(
        who=who_index,
        version=st.one_of(st.just(0), st.integers(min_value=0, max_value=4)),  # 0: the newest
        passed=st.booleans(),
        request_id=request_ids,
    )
    def review_result(self, who: Who, version: int, passed: bool, request_id: str | None) -> None:
        creds, bogus = self.who(who, ("validator",))
        retry = self.seen(creds["agent_id"], "review_result", request_id)
        msg = ReviewResult(
            **creds,
            version=version or max(len(self.state.results), 1),
            passed=passed,
            feedback="" if passed else "needs more",
            request_id=request_id,
        )
        step = self.update(
            "review_result", core.review_result, msg, sender=creds["agent_id"], bogus=bogus
        )
        if step is None or retry:
            return
        finishes = [e for e in step.effects if isinstance(e, core.FinishTicket)]
        stops = [e for e in step.effects if isinstance(e, core.StopAgents)]
        if passed and self.state.spec.policy.results.on_result_found == "stop_all":
            assert [f.outcome for f in finishes] == ["completed"] == [self.state.status]
            assert len(stops) == 1 and set(stops[0].agent_ids) == set(self.state.agents)
        else:
            assert finishes == [] and stops == [] and self.state.status == "open"

    @rule(
        who=who_index,
        seq=st.integers(min_value=0, max_value=6),
        running=st.booleans(),
        task=st.one_of(st.none(), task_choice),
    )
    def heartbeat(self, who: Who, seq: int, running: bool, task: tuple[bool, int] | None) -> None:
        creds, bogus = self.who(who)
        before = self.state.model_dump()
        msg = Heartbeat(
            **creds,
            seq=seq,
            status="running" if running else "idle",
            current_task_id=None if task is None else self.task_id(creds, task),
        )
        now = self.tick()
        accepted = core.heartbeat(self.state, msg, now)
        after = self.state.model_dump()
        if bogus:
            assert not accepted
            assert after.pop("ignored_messages") == before.pop("ignored_messages") + 1
            assert after == before
            return
        agent_id = creds["agent_id"]
        old, new = before["agents"][agent_id], after["agents"][agent_id]
        last = old["last_seq"]
        if last is not None and seq <= last:  # out of order or repeated: counted, ignored
            assert not accepted
            assert new.pop("out_of_order") == old.pop("out_of_order") + 1
            assert after == before
            return
        assert accepted
        assert (new["last_seq"], new["last_heartbeat_at"]) == (seq, now)
        assert new["heartbeats"] == old["heartbeats"] + 1
        gap = 0 if last is None else seq - last - 1
        assert new["seq_gaps"] == old["seq_gaps"] + gap

    @rule(who=who_index, task=task_choice)
    def progress(self, who: Who, task: tuple[bool, int]) -> None:
        creds, bogus = self.who(who)
        before = self.state.model_dump()
        msg = ReportProgress(**creds, task_id=self.task_id(creds, task), note="working on it")
        target = self.state.tasks.get(msg.task_id)
        own = (
            not bogus
            and target is not None
            and target.assigned_agent == creds["agent_id"]
            and target.status in HELD_STATUSES
        )
        accepted = core.progress(self.state, msg, self.tick())
        assert accepted == own
        if not accepted:
            after = self.state.model_dump()
            assert after.pop("ignored_messages") == before.pop("ignored_messages") + 1
            assert after == before
        else:
            assert target is not None
            assert self.state.tasks[target.id].notes[-1] == "working on it"

    @rule(roll=st.integers(min_value=0, max_value=40), good_token=st.booleans())
    def cancel(self, roll: int, good_token: bool) -> None:
        if roll:  # rare, or most runs would end early
            return
        token = OPERATOR_TOKEN if good_token else "guess"
        msg = CancelTicket(reason="operator says stop", operator_token=token)
        step = self.update("cancel", core.cancel, msg, sender="operator", bogus=not good_token)
        if step is not None:
            assert self.state.status == "cancelled"

    @rule(seconds=st.floats(min_value=0.001, max_value=3600))
    def wait(self, seconds: float) -> None:
        self.tick(seconds)

    # ---- invariants --------------------------------------------------------------------

    @invariant()
    def drain_outbox(self) -> None:
        """The ledger writer's job: take the outbox, leave it empty."""
        outbox = self.state.outbox
        self.task_ledger.extend(outbox.task_results)
        self.version_ledger.extend(outbox.workflow_results)
        self.review_ledger.extend(outbox.reviews)
        self.state.outbox = LedgerBatch(ticket_id=self.state.ticket_id)

    @invariant()
    def the_task_index_matches_the_tasks(self) -> None:
        """What the hot path reads from the index is what a pass over the tasks finds."""
        tasks = list(self.state.tasks.values())
        order = {p.name: i for i, p in enumerate(self.state.spec.phases)}
        held: dict[str, list[str]] = {}
        for t in tasks:
            if t.assigned_agent is not None and t.status in HELD_STATUSES:
                held.setdefault(t.assigned_agent, []).append(t.id)
        active = [t for t in tasks if t.status in ACTIVE_STATUSES]
        counted = (
            Counter(t.status for t in tasks),
            Counter((t.phase, t.status) for t in tasks),
            {agent: sorted(ids) for agent, ids in held.items()},
            sorted(
                t.id
                for t in tasks
                if t.review_requested_at is not None
                and t.status in ("under_review", "validation_in_progress")
            ),
            [
                t.id
                for t in sorted(
                    (t for t in tasks if t.status == "pending"),
                    key=lambda t: (-PRIORITY_RANK[t.priority], order[t.phase], t.seq),
                )
            ],
            len(tasks),
            sorted(t.id for t in tasks if t.status in ("failed", "cancelled")),
            {
                dep: sorted(t.id for t in tasks if dep in t.depends_on)
                for dep in sorted({d for t in tasks for d in t.depends_on})
            },
            sum(t.iteration for t in tasks),
            {
                key: sorted(t.id for t in active if (t.phase, title_key(t.title)) == key)
                for key in {(t.phase, title_key(t.title)) for t in active}
            },
        )
        assert self.state.index().snapshot() == counted
        # Blocked tasks, by the fixpoint over every task that the index's walk replaced.
        by_id = {t.id: t for t in tasks}
        blocked: set[str] = set()
        while grown := {
            t.id
            for t in tasks
            if t.status == "pending"
            and t.id not in blocked
            and any(
                d in blocked or (d in by_id and by_id[d].status in ("failed", "cancelled"))
                for d in t.depends_on
            )
        }:
            blocked |= grown
        assert blocked_tasks(self.state) == blocked

    @invariant()
    def tasks_are_never_lost_and_ids_are_sequential(self) -> None:
        ids = list(self.state.tasks)
        assert ids == [f"T{n}" for n in range(1, self.state.next_task_number)]
        assert ids[: len(self.task_ids_seen)] == self.task_ids_seen
        self.task_ids_seen = ids

    @invariant()
    def a_task_is_held_by_at_most_one_agent_and_only_while_claimed(self) -> None:
        state = self.state
        holders: dict[str, list[str]] = {}
        for agent in state.agents.values():
            for task_id in views.agent_view(state, agent).tasks:
                holders.setdefault(task_id, []).append(agent.id)
        limit = state.spec.policy.tasks.max_tasks_per_agent
        per_agent: dict[str, int] = {}
        for task in state.tasks.values():
            if task.status in HELD_STATUSES:
                assert task.assigned_agent in state.agents
                assert holders.get(task.id) == [task.assigned_agent]
                assert state.agents[task.assigned_agent].kind != "validator"
                per_agent[task.assigned_agent] = per_agent.get(task.assigned_agent, 0) + 1
            else:
                assert task.id not in holders
            if task.status == "pending":
                assert task.assigned_agent is None
        assert all(n <= limit for n in per_agent.values())

    @invariant()
    def only_tasks_with_done_dependencies_were_ever_claimed(self) -> None:
        tasks = self.state.tasks
        for task in tasks.values():
            if task.attempt > 0:
                assert all(tasks[d].status == "done" for d in task.depends_on), task.id

    @invariant()
    def retries_are_bounded(self) -> None:
        retries = self.state.spec.policy.tasks.max_retries
        for task in self.state.tasks.values():
            assert task.failures <= task.attempt
            assert task.failures <= retries + 1
            if task.status == "failed":
                assert task.failures == retries + 1

    @invariant()
    def every_completed_attempt_has_exactly_one_ledger_record(self) -> None:
        keys = [(r.task_id, r.attempt) for r in self.task_ledger]
        assert len(keys) == len(set(keys)), "a task attempt was recorded twice"
        assert len({r.id for r in self.task_ledger}) == len(self.task_ledger)
        for task in self.state.tasks.values():
            if task.status == "done":
                assert keys.count((task.id, task.attempt)) == 1
                [record] = [
                    r for r in self.task_ledger if (r.task_id, r.attempt) == (task.id, task.attempt)
                ]
                assert record.id == f"tk/{task.id}/a{task.attempt}/i0"
                assert record.agent_id == task.assigned_agent
        for record in self.task_ledger:
            task = self.state.tasks[record.task_id]
            assert record.attempt <= task.attempt
            assert len(record.content.encode()) <= TASK_CAP

    @invariant()
    def result_versions_are_append_only(self) -> None:
        results = self.state.results
        assert [r.version for r in results] == list(range(1, len(results) + 1))
        assert [r.id for r in self.version_ledger] == [f"tk/v{r.version}" for r in results]
        assert sum(r.status == "validated" for r in results) <= 1
        assert sum(r.status == "pending_validation" for r in results) <= 1
        # Only the newest version may be awaiting a verdict or validated; older ones failed.
        assert all(r.status == "rejected" for r in results[:-1])
        for r in results:
            if r.status == "pending_validation":
                assert r.verdict_at is None and r.content is not None
                continue
            snapshot = r.model_dump()
            assert self.verdicts.setdefault(r.version, snapshot) == snapshot, (
                f"v{r.version} changed after its verdict"
            )
        judged = [r.version for r in results if r.status != "pending_validation"]
        assert [int(r.subject_id) for r in self.review_ledger] == judged
        assert len(self.verdicts) == len(judged)

    @invariant()
    def a_finished_ticket_stays_finished_with_nothing_active(self) -> None:
        state = self.state
        if self.finished:
            assert state.status != "open"
        if state.status == "open":
            assert state.finished_at is None
            return
        self.finished = True
        assert state.finished_at is not None
        assert not any(t.status in ACTIVE_STATUSES for t in state.tasks.values())
        assert core.open_tasks(state) == 0
        assert all(a.stop for a in state.agents.values())
        if state.status == "completed":
            assert core.validated_version(state) is not None

    @invariant()
    def time_only_moves_forward(self) -> None:
        now = T0 + timedelta(seconds=self.clock)
        state = self.state
        assert self.last_activity <= state.last_activity_at <= now
        self.last_activity = state.last_activity_at
        assert all(t.updated_at <= now for t in state.tasks.values())
        assert all(e.at <= now for e in state.timeline)

    @invariant()
    def no_token_in_clear_outside_the_reply_cache(self) -> None:
        dump = self.state.model_dump(exclude={"replies"})
        text = str(dump)
        assert all(c["token"] not in text for c in self.creds)


TicketMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_ticket_machine = TicketMachine.TestCase
