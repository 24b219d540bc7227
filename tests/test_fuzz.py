"""Fuzzing one long-lived ticket with hypothesis-generated messages (issue "Proof", part 4).

Every update and signal gets generated payloads: wrong types, huge strings (up to ~200 KB),
odd unicode (RTL overrides, emoji, NUL, noncharacters; never lone surrogates, which JSON
cannot carry), wrong ids, another agent's token, a twisted operator token, wrong states
(completing a pending task, reviewing what is not under review), missing and extra fields,
nested junk and payloads that are not objects at all. They all go to ONE ticket on the
session's dev server, one after another, and for each:

* an update is refused (``WorkflowUpdateFailedError`` with a non-empty message) and the
  ticket's state is unchanged (``state_dump()`` before/after, ``ignored_messages`` aside),
  or, when the payload happens to be valid, it is accepted normally;
* a signal the worker cannot decode is dropped (state unchanged); one it can decode is
  applied or counted as ignored.

Afterwards no run of the ticket may hold a ``WorkflowTaskFailed`` event, and a legitimate
claim/complete still succeeds.

How many cases: ``UNSTUCK_FUZZ_CASES`` (default 300, a few seconds; the long run uses
``UNSTUCK_FUZZ_CASES=10000``). ``UNSTUCK_FUZZ_SEED`` makes the generated cases reproducible;
a failure prints the seed-independent payload (strings over 200 characters abbreviated).

    UNSTUCK_FUZZ_CASES=10000 .venv/bin/python -m pytest tests/test_fuzz.py -q
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from agent_client.session import AgentSession, Refused
from infra.settings import Settings
from models.messages import INBOUND, MAX_MESSAGE_BYTES, RegisterAgent
from tests.conftest import unique_id
from tests.ticketkit import Launched, join_secret_for, launch, spec_dict

pytestmark = pytest.mark.usefixtures("worker")

CASES = int(os.environ.get("UNSTUCK_FUZZ_CASES", "300"))
SEED = os.environ.get("UNSTUCK_FUZZ_SEED")

SIGNALS = ("heartbeat", "progress")
UPDATES = tuple(name for name in INBOUND if name not in SIGNALS)
UNKNOWN_UPDATES = ("nonexistent", "Claim", "claim ", "state")  # "" is refused by the server RPC
AGENTS = ("alice", "bob", "vera")
KB = 1024


# ---- placeholders resolved at send time (ids and tokens exist only once the ticket runs) ---


@dataclass(frozen=True)
class Ref:
    """A credential of the running ticket, e.g. ``alice.token``, optionally twisted."""

    key: str
    twist: str = ""

    def resolve(self, creds: dict[str, str]) -> str:
        value = creds[self.key]
        if self.twist == "upper":
            return value.upper()
        if self.twist == "suffix":
            return value + "x"
        if self.twist == "space":
            return f" {value} "
        if self.twist == "truncate":
            return value[:-1]
        return value


def resolve(value: Any, creds: dict[str, str]) -> Any:
    if isinstance(value, Ref):
        return value.resolve(creds)
    if isinstance(value, dict):
        return {resolve(k, creds): resolve(v, creds) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, creds) for v in value]
    return value


def short(value: Any) -> Any:
    """The payload for a failure message: long strings abbreviated."""
    if isinstance(value, str) and len(value) > 200:
        return f"{value[:60]!r}...<{len(value)} chars>...{value[-20:]!r}"
    if isinstance(value, dict):
        return {short(k): short(v) for k, v in value.items()}
    if isinstance(value, list):
        return [short(v) for v in value]
    return value


# ---- strategies ----------------------------------------------------------------------------

ODD = [
    "",
    " ",
    "\u0000",
    "T1\u0000",
    "\u202eevil\u202c",  # RTL override
    "\u200f\u05e9\u05dc\u05d5\u05dd",  # RLM + Hebrew
    "\u0627\u0644\u0633\u0644\u0627\u0645",  # Arabic
    "🧨💥👩‍👩‍👧‍👦",  # emoji with ZWJ sequences
    "\ufeff",  # BOM
    "\uffff\ufffe\U0010ffff",  # noncharacters
    "e\u0301\u0301\u0301",  # combining marks
    "Ｔ１",  # full-width
    "\u2028\u2029",  # line/paragraph separators
    "\t\r\n",
    "null",
    "[]",
    "{}",
    "../../etc/passwd",
    "%s%n{0}",
    "'; DROP TABLE tickets; --",
]

text_chars = st.characters(codec="utf-8")  # every code point but the surrogates
small_text = st.one_of(st.sampled_from(ODD), st.text(text_chars, max_size=40))


@st.composite
def huge_text(draw: st.DrawFn) -> str:
    """A string of 1 KB to ~200 KB (UTF-8), built by repetition to stay cheap to generate."""
    unit = draw(st.sampled_from(["x", "é", "🧨", "\u0000", "ab\u202e", "# md\n"]))
    target = draw(st.integers(1 * KB, 200 * KB))
    # Sized as JSON on the wire (a NUL travels as 6 bytes): a whole payload stays under the
    # 2 MB payload limit; beyond it see test_an_update_beyond_the_server_limit_stalls_….
    wire = len(json.dumps(unit, ensure_ascii=False).encode("utf-8")) - 2
    return unit * max(1, target // wire)


any_text = st.one_of(small_text, small_text, small_text, huge_text())

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([2**64, -(2**64), 10**30]),  # beyond any 64-bit field
    st.floats(allow_nan=False, allow_infinity=False),
    small_text,
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(small_text, inner, max_size=4),
    max_leaves=10,
)


def agent_refs(part: str) -> st.SearchStrategy[Any]:
    return st.sampled_from([Ref(f"{a}.{part}") for a in AGENTS])


def twisted(key: str) -> st.SearchStrategy[Ref]:
    return st.builds(Ref, st.just(key), st.sampled_from(["upper", "suffix", "space", "truncate"]))


agent_ids = st.one_of(
    agent_refs("id"), agent_refs("id"), st.sampled_from(["ghost-1", "alice", "alice-0"]), small_text
)
tokens = st.one_of(agent_refs("token"), agent_refs("token"), twisted("alice.token"), small_text)
task_ids = st.one_of(
    st.sampled_from([f"T{i}" for i in range(1, 9)] + ["T0", "T999", "t1", "T-1", "T01"]),
    small_text,
)
slugs = st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,20}\Z")
phases = st.one_of(st.sampled_from(["requirements", "implementation", "testing", "deploy"]), slugs)
texts_list = st.lists(any_text, max_size=5)

#: Plausible values per field: valid-looking, so some payloads get through to the rules.
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "agent_id": agent_ids,
    "token": tokens,
    "request_id": st.one_of(st.none(), st.sampled_from(["r1", "r2"]), small_text),
    "name": st.one_of(slugs, st.sampled_from(["alice", " bob ", "Not A Slug!"])),
    "kind": st.sampled_from(["worker", "validator", "diagnostic", "admin"]),
    "join_secret": st.one_of(
        st.none(),
        st.sampled_from([Ref("join.worker"), Ref("join.validator"), Ref("join.diagnostic")]),
        twisted("join.worker"),
        small_text,
    ),
    "capabilities": st.lists(small_text, max_size=60),
    "phases": st.one_of(st.none(), st.lists(phases, max_size=3)),
    "task_id": task_ids,
    "note": any_text,
    "seq": st.one_of(st.integers(-5, 10**6), st.sampled_from([2**63 - 1, 2**64])),
    "status": st.sampled_from(["idle", "running", "dead"]),
    "current_task_id": st.one_of(st.none(), task_ids),
    "lease_queue": st.one_of(
        st.none(),
        st.sampled_from(["unstuck-lease/fuzz/1/abc", "unstuck", "unstuck@host", "unstuck-lease/"]),
        small_text,
    ),
    "result": any_text,
    "result_type": st.sampled_from(["implementation", "analysis", "fix", "design", "poem"]),
    "claim_next": st.booleans(),
    "reason": any_text,
    "phase": phases,
    "title": any_text,
    "description": any_text,
    "type": st.sampled_from(["implementation", "submission", "test", "nap"]),
    "depends_on": st.lists(task_ids, max_size=4),
    "priority": st.sampled_from(["low", "normal", "high", "critical", "urgent"]),
    "validation": st.booleans(),
    "content": st.one_of(st.none(), any_text),
    "file_ref": st.one_of(
        st.none(),
        st.sampled_from(
            ["result.md", "missing.md", "../result.md", "/etc/passwd.md", "a\u0000.md"]
        ),
        small_text,
    ),
    "version": st.integers(-1, 5),
    "passed": st.booleans(),
    "feedback": any_text,
    "evidence": texts_list,
    "iteration": st.integers(-1, 5),
    "operator": any_text,
    # The real operator token only where no accepted message can end the ticket.
    "operator_token": st.one_of(twisted("op.token"), small_text),
    "question": any_text,
    "as_task": st.booleans(),
    # The ticket's first two escalation ids (agents' questions, when they asked) and junk.
    "escalation_id": st.one_of(
        st.sampled_from([Ref("escalation.1"), Ref("escalation.2"), Ref("escalation.1", "suffix")]),
        small_text,
    ),
}
RELEASE_OPERATOR_TOKEN = st.one_of(st.just(Ref("op.token")), twisted("op.token"), small_text)


@st.composite
def message(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """A payload shaped like ``name``'s message: each field good, junk, huge or missing."""
    fields = INBOUND[name].model_fields
    good = dict(GOOD)
    if name in ("release", "ack", "resolve"):  # none of them can end the ticket
        good["operator_token"] = RELEASE_OPERATOR_TOKEN
    if "token" in fields and draw(st.booleans()):  # often one agent's own id and token
        agent = draw(st.sampled_from(AGENTS))
        good["agent_id"] = st.just(Ref(f"{agent}.id"))
        good["token"] = st.just(Ref(f"{agent}.token"))
    payload: dict[str, Any] = {}
    for field in fields:
        roll = draw(st.integers(0, 39))
        if roll < 35:
            payload[field] = draw(good[field])
        elif roll < 38:
            payload[field] = draw(junk)
        elif roll < 39:
            payload[field] = draw(huge_text())
        # else: the field is missing
    if draw(st.integers(0, 9)) == 0:
        payload[draw(small_text)] = draw(junk)  # an extra field
    return payload


@st.composite
def case(draw: st.DrawFn) -> tuple[str, Any]:
    if draw(st.integers(0, 49)) == 0:
        return draw(st.sampled_from(UNKNOWN_UPDATES)), draw(junk)
    name = draw(st.sampled_from(list(INBOUND)))
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return name, draw(scalars | st.lists(junk, max_size=4))  # not an object
    if shape == 1:
        return name, draw(st.dictionaries(small_text, junk, max_size=5))  # nested junk
    return name, draw(message(name))


def generate_cases(count: int) -> list[tuple[str, Any]]:
    """``count`` cases drawn by hypothesis (a plain @given run that collects its examples)."""
    found: list[tuple[str, Any]] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case())
    def collect(drawn: tuple[str, Any]) -> None:
        found.append(drawn)

    if SEED is not None:
        collect = seed(int(SEED))(collect)
    while len(found) < count:  # hypothesis may stop early; each round draws afresh
        collect()
    return found[:count]


# ---- the run -------------------------------------------------------------------------------


def comparable(dump: dict[str, Any]) -> dict[str, Any]:
    """The state a refused message must leave alone. Escalation deliveries are not part of
    it: an activity settles them in the background (an accepted ask_human's trigger)."""
    escalations = [{**e, "deliveries": None} for e in dump.get("escalations", [])]
    return dump | {"ignored_messages": 0, "escalations": escalations}


def decodable(name: str, payload: Any) -> bool:
    """Whether the worker's data converter can turn ``payload`` into ``name``'s message."""
    converter = pydantic_data_converter.payload_converter
    try:
        converter.from_payload(converter.to_payload(payload), INBOUND[name])
    except Exception:
        return False
    return True


async def all_run_histories(client: Client, workflow_id: str) -> list[Any]:
    """The histories of every run of the workflow (it may have continued as new)."""
    histories = []
    run_id: str | None = None
    first = client.get_workflow_handle(workflow_id)
    first_run = (await first.describe()).raw_description.workflow_execution_info
    run_id = first_run.first_run_id or first_run.execution.run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        histories.append(history)
        last = history.events[-1] if history.events else None
        run_id = None
        if last is not None and last.event_type == (
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        ):
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return histories


async def register(
    handle: WorkflowHandle[Any, Any], name: str, kind: str, secret: str
) -> dict[str, Any]:
    reply: dict[str, Any] = await handle.execute_update(
        "register",
        RegisterAgent(name=name, kind=kind, join_secret=secret),  # type: ignore[arg-type]
    )
    return reply


async def test_fuzzed_messages_never_break_the_ticket(
    client: Client, settings: Settings, tmp_path: Path
) -> None:
    started = time.monotonic()
    cases = generate_cases(CASES)
    generated = time.monotonic()
    (tmp_path / "result.md").write_text("# Result\nfrom a file\n", encoding="utf-8")
    spec = spec_dict(
        unique_id("fuzz"),
        tasks=[
            {"key": f"k{i}", "phase": phase, "title": f"Task {i}", "validation": i % 3 == 0}
            for i, phase in enumerate(
                ["requirements", "requirements", "implementation", "implementation", "testing"]
            )
        ],
        policy={
            # Nothing may change on its own while the fuzzer runs, and nothing may end it.
            "results": {"on_result_found": "do_nothing", "files_root": str(tmp_path)},
            "tasks": {"max_retries": 100},
            "health": {"idle_deadline_s": 3600, "running_deadline_s": 3600},
            "stuck": {"window_s": 3600, "cooldown_s": 3600, "max_consecutive_failures": 1000},
            "validation": {"failures_before_diagnosis": 1000, "validator_timeout_s": 3600},
        },
    )
    launched = await launch(client, settings, spec)
    # A handle that follows the ticket across continue-as-new.
    ticket = Launched(
        client.get_workflow_handle(launched.ticket_id), launched.ticket_id, launched.operator_token
    )
    creds = {"op.token": ticket.operator_token}
    for n in (1, 2):  # what an escalation id of this ticket looks like (escalations.1, .2)
        creds[f"escalation.{n}"] = f"{ticket.ticket_id}/escalation/agent_question/{n}"
    for kind in ("worker", "validator", "diagnostic"):
        creds[f"join.{kind}"] = join_secret_for(settings, ticket.ticket_id, kind)
    for name in AGENTS:
        kind = "validator" if name == "vera" else "worker"
        reg = await register(ticket.handle, name, kind, creds[f"join.{kind}"])
        creds[f"{name}.id"], creds[f"{name}.token"] = reg["agent_id"], reg["token"]
    alice = {"agent_id": creds["alice.id"], "token": creds["alice.token"]}
    assert (await ticket.handle.execute_update("claim", alice))["task"]["id"] == "T1"

    counts = {
        "refused": 0,
        "accepted": 0,
        "signal_dropped": 0,
        "signal_delivered": 0,
        "null_signals": 0,
    }
    before = await ticket.state_dump()
    for index, (name, template) in enumerate(cases):
        payload = resolve(template, creds)
        where = f"case {index}: {name!r} {short(payload)!r}"
        if name in SIGNALS:
            if payload is None:
                # A null payload reaches the handler as None; it must be counted and ignored
                # (test_null_signal_payload_is_dropped checks it on its own ticket too).
                counts["null_signals"] += 1
            await ticket.handle.signal(name, payload)
            after = await ticket.state_dump()
            if decodable(name, payload):
                counts["signal_delivered"] += 1
            else:
                counts["signal_dropped"] += 1
                assert comparable(after) == comparable(before), f"dropped signal changed {where}"
            before = after
            continue
        try:
            await ticket.handle.execute_update(name, payload)
        except RPCError as exc:
            size = len(json.dumps(before))
            raise AssertionError(f"{exc} at {where} (state before: {size} bytes)") from exc
        except WorkflowUpdateFailedError as exc:
            counts["refused"] += 1
            assert str(exc.cause or ""), f"refusal without a message: {where}"
            after = await ticket.state_dump()
            assert comparable(after) == comparable(before), f"refused update changed {where}"
        else:
            counts["accepted"] += 1
            after = await ticket.state_dump()
        assert after["status"] == "open", f"the ticket ended: {where}"
        before = after
    fuzzed = time.monotonic()

    # (b) No workflow task ever failed, in any run.
    histories = await all_run_histories(client, ticket.ticket_id)
    failed = [
        (history.run_id, event.event_id, event.workflow_task_failed_event_attributes)
        for history in histories
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]
    assert not failed, failed

    # (c) The ticket still works: alice finishes what she holds, claims and completes.
    held = [
        task_id
        for task_id, task in before["tasks"].items()
        if task["assigned_agent"] == creds["alice.id"] and task["status"] in ("assigned", "running")
    ]  # (none if alice left: leaving gives back what she held)
    for task_id in held:
        done = {**alice, "task_id": task_id, "result": "# done", "result_type": "fix"}
        await ticket.handle.execute_update("complete", done)
    # A fresh worker does the rest: a generated `leave` with alice's own credentials may
    # have been accepted (agents may leave), and then alice can do nothing more.
    zed_reg = await register(ticket.handle, "zed", "worker", creds["join.worker"])
    zed = {"agent_id": zed_reg["agent_id"], "token": zed_reg["token"]}
    created = await ticket.handle.execute_update(
        "create_task",
        {**zed, "phase": "requirements", "title": "After the storm", "priority": "critical"},
    )
    claimed = await ticket.handle.execute_update("claim", zed)
    assert claimed["task"] is not None, claimed
    reply = await ticket.handle.execute_update(
        "complete",
        {**zed, "task_id": claimed["task"]["id"], "result": "# works", "result_type": "fix"},
    )
    assert reply["task"]["status"] in ("done", "under_review"), reply
    assert created["id"] in (await ticket.state_dump())["tasks"]
    print(
        f"\nfuzz: {len(cases)} cases {counts}, {len(histories)} run(s); generated in "
        f"{generated - started:.1f}s, sent in {fuzzed - generated:.1f}s"
    )


async def _workflow_task_failures(handle: WorkflowHandle[Any, Any]) -> int:
    history = await handle.fetch_history()
    return sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in history.events)


@pytest.mark.parametrize("name", SIGNALS)
async def test_null_signal_payload_is_dropped(
    client: Client, settings: Settings, name: str
) -> None:
    ticket = await launch(client, settings, spec_dict(unique_id("null-signal")))
    try:
        await ticket.handle.signal(name, None)
        for _ in range(20):  # the failure, if any, shows within a workflow task or two
            await asyncio.sleep(0.1)
            assert await _workflow_task_failures(ticket.handle) == 0
        state = await ticket.state()
        assert state.ignored_messages == 1  # counted and ignored
    finally:
        await ticket.handle.terminate("fuzz: null signal payload check done")


async def test_a_message_too_large_to_answer_is_refused_before_sending(
    client: Client, settings: Settings
) -> None:
    """400 K control characters are 400 KB of UTF-8 (under the 1 MB content cap) but 2.4 MB
    as JSON: the session refuses it, names the field and the rule, and sends nothing."""
    ticket = await launch(client, settings, spec_dict(unique_id("oversized-session")))
    try:
        async with AgentSession(client, ticket.ticket_id, name="alice") as alice:
            before = await ticket.state_dump()
            with pytest.raises(Refused) as refused:
                await alice.submit_result("\u0001" * 400_000)
            assert refused.value.field == "content"
            assert f"the limit is {MAX_MESSAGE_BYTES:,}" in (refused.value.rule or "")
            assert "2,400,0" in str(refused.value)  # the measured size, as JSON
            after = await ticket.state_dump()
            # The session's heartbeat loop may beat meanwhile; nothing else may change.
            assert {k: v for k, v in after.items() if k != "agents"} == {
                k: v for k, v in before.items() if k != "agents"
            }
            assert (await alice.claim()) is not None  # the ticket is fine
        assert await _workflow_task_failures(ticket.handle) == 0
    finally:
        await ticket.handle.terminate("fuzz: oversized message check done")


async def test_an_update_beyond_the_server_limit_stalls_the_ticket_which_recovers(
    client: Client, settings: Settings
) -> None:
    """A raw client (not AgentSession) sends a 2.4 MB update. Temporal accepts it, but the
    refusal echoes the request and cannot be uploaded, so the ticket's workflow task fails
    until the server drops the update (~20 s). Nothing is lost: afterwards the state is the
    same, and an agent that called meanwhile was held and then answered."""
    ticket = await launch(client, settings, spec_dict(unique_id("oversized-raw")))
    try:
        before = await ticket.state_dump()
        raw = asyncio.create_task(
            ticket.handle.execute_update("claim", {"agent_id": "\u0000" * 400_000})
        )
        await asyncio.sleep(1)  # the ticket is stalled now
        async with AgentSession(client, ticket.ticket_id, name="alice") as alice:
            task = await alice.claim()  # waits for the ticket to recover
        assert task is not None and task.id == "T1"
        with pytest.raises((WorkflowUpdateFailedError, RPCError)):
            await raw
        after = await ticket.state_dump()
        assert after["tasks"]["T1"]["assigned_agent"] == alice.agent_id
        assert {k: v for k, v in after["tasks"].items() if k != "T1"} == {
            k: v for k, v in before["tasks"].items() if k != "T1"
        }
        # The stall is bounded: the failed workflow task is retried, not repeated forever.
        assert 1 <= await _workflow_task_failures(ticket.handle) <= 3
    finally:
        await ticket.handle.terminate("fuzz: oversized raw update check done")
