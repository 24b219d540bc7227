"""Hostile messages from a second client: how many are tried, how many refused (DESIGN §16).

    .venv/bin/python -m bench.hostile                       # the corpus + 2,000 generated
    .venv/bin/python -m bench.hostile --generated 10000 --seed 7

One enrolled ticket on a fresh dev server, with a worker (alice) and a validator (vera)
registered the proper way. A second client, knowing the ticket id and the agents' ids but no
secret, then sends, as raw JSON:

- **impersonation**: registering without, with a wrong, another kind's or another ticket's
  join secret (every kind); acting or reading an inbox with an agent's id and a forged token;
- **authorisation**: what an agent's own valid credentials do not allow (a worker judging, a
  validator creating tasks or submitting, anyone completing another agent's task);
- **idempotency**: a request id reused with another payload;
- **malformed**: null, a string, a list, a wrong type, an unknown field, nesting too deep and
  bytes that are not JSON, on every update;
- **size**: texts under their character caps but over their limit as JSON (control
  characters), a message over the whole-message limit;
- **generated**: ``--generated`` random payloads (seeded) on random updates.

Every one must be refused (an update failure or a failed query); afterwards no workflow task
may have failed and the ticket's state must be as before (what the ticket counts as ignored
aside).
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from collections import Counter
from typing import Any

from rich.console import Console
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowQueryFailedError, WorkflowUpdateFailedError
from temporalio.common import RawValue

import starter
from bench.harness import BenchDef, environment, option, server
from bench.report import Summary, get, md_table
from core.state import TicketState
from infra.enrollment import JOIN_KINDS, join_key, join_secret
from models.messages import INBOUND
from models.spec import parse_spec

UPDATES = [name for name in INBOUND if name not in ("heartbeat", "progress")]

Attack = tuple[str, str, str, Any]  # (category, what, update or "query:<name>", payload)


def corpus(ticket_id: str, key: bytes, alice: dict[str, str], vera: dict[str, str]) -> list[Attack]:
    attacks: list[Attack] = []
    payload: Any

    def add(category: str, what: str, target: str, payload: Any) -> None:
        attacks.append((category, what, target, payload))

    for kind in JOIN_KINDS:
        base = {"name": f"mallory-{kind}", "kind": kind}
        other = "worker" if kind != "worker" else "validator"
        for what, secret in (
            ("no secret", None),
            ("made-up secret", "ujs1_guess"),
            (f"{other}'s secret", join_secret(key, ticket_id, other)),
            ("another ticket's secret", join_secret(key, "elsewhere", kind)),
        ):
            payload = base if secret is None else {**base, "join_secret": secret}
            add("impersonation", f"register as {kind}, {what}", "register", payload)
    forged = {"agent_id": alice["agent_id"], "token": "forged-" + alice["token"][:8]}
    for name, extra in (
        ("claim", {}),
        ("complete", {"task_id": "T1", "result": "# mine now", "result_type": "fix"}),
        ("fail", {"task_id": "T1", "reason": "sabotage"}),
        ("create_task", {"phase": "testing", "title": "Injected"}),
        ("submit_result", {"content": "# forged result"}),
    ):
        add("impersonation", f"{name} as alice with a forged token", name, {**forged, **extra})
    add("impersonation", "read alice's inbox by id", "query:inbox", alice["agent_id"])
    add("impersonation", "read alice's inbox, forged token", "query:inbox", forged)
    add("impersonation", "read the state with a made-up operator token", "query:state", "guess")
    for name, payload in (
        ("cancel", {"reason": "bye", "operator_token": "guess"}),
        ("diagnose", {"operator_token": "guess"}),
        ("release", {"agent_id": alice["agent_id"], "operator_token": "guess"}),
    ):
        add("impersonation", f"{name} with a made-up operator token", name, payload)
    # fmt: off
    # Valid credentials, acts their kind or ownership does not allow.
    for what, target, payload in (
        ("a worker judges the result", "review_result", {**alice, "version": 1, "passed": True}),
        ("a worker judges a task", "review_task",
         {**alice, "task_id": "T1", "iteration": 1, "passed": True}),
        ("a validator creates a task", "create_task",
         {**vera, "phase": "testing", "title": "Mine"}),
        ("a validator submits the result", "submit_result", {**vera, "content": "# judged by me"}),
        ("a validator completes alice's task", "complete",
         {**vera, "task_id": "T1", "result": "# x", "result_type": "fix"}),
        ("a worker fails a task it does not hold", "fail",
         {**alice, "task_id": "T2", "reason": "no"}),
    ):
        add("authorisation", what, target, payload)
    # A request id alice already used (the bench sent it before the attacks).
    add("idempotency", "claim with a used request id and other phases", "claim",
        {**alice, "request_id": "used-1", "phases": ["testing"]})
    add("idempotency", "complete with a used request id, another task", "complete",
        {**alice, "request_id": "used-2", "task_id": "T2", "result": "# r", "result_type": "fix"})
    for name in UPDATES:
        for what, payload in malformed():
            add("malformed", f"{name}: {what}", name, payload)
    for what, target, payload in (
        ("result of 20,000 control characters (120 KB as JSON)", "complete",
         {**alice, "task_id": "T1", "result": "\u0001" * 20_000, "result_type": "fix"}),
        ("result content of 200,000 control characters (1.2 MB as JSON)", "submit_result",
         {**alice, "content": "\u0000" * 200_000}),
        ("content of 262,145 four-byte code points (1 MiB + 4)", "submit_result",
         {**alice, "content": "\U0001f600" * 262_145}),
        ("a review whose evidence is 1.5 MB as JSON", "review_result",
         {**vera, "version": 1, "passed": False, "feedback": "no",
          "evidence": ["\u0004" * 50_000] * 5}),
        ("a title of 201 characters", "create_task",
         {**alice, "phase": "testing", "title": "x" * 201}),
    ):
        add("size", what, target, payload)
    # fmt: on
    return attacks


def malformed() -> list[tuple[str, Any]]:
    deep = b'{"agent_id": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    raw = lambda encoding, data: RawValue(Payload(metadata={"encoding": encoding}, data=data))  # noqa: E731
    return [
        ("null", None),
        ("a string", "claim me"),
        ("a list", [1, 2, 3]),
        ("a number", 42),
        ("a wrong type", {"agent_id": 7, "token": ["t"], "name": 7}),
        ("an unknown field", {"agent_id": "a", "token": "t", "name": "a", "admin": True}),
        ("5,000 levels of nesting", raw(b"json/plain", deep)),
        ("bytes, not JSON", raw(b"binary/plain", b"\x00\xff")),
    ]


def generated(rng: random.Random, n: int, alice: dict[str, str]) -> list[Attack]:
    """Random payloads: junk values, wrong keys, alice's id with wrong tokens, odd text."""
    odd = [
        "",
        "\u0000",
        "\u202eevil",
        "🧨" * 50,
        "T1",
        "T999",
        "../../etc/passwd",
        "\ud7ff",
        "x" * 5000,
    ]

    def value(depth: int = 0) -> Any:
        kind = rng.randrange(8 if depth < 3 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return rng.choice([True, False, 0, -1, 10**12, 3.5])
        if kind == 2:
            return rng.choice(odd)
        if kind == 3:
            return rng.choice(odd) * rng.randrange(1, 4)
        if kind == 4:
            return alice["agent_id"]
        if kind == 5:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        return {
            rng.choice(["agent_id", "token", "task_id", "x", "name"]): value(depth + 1)
            for _ in range(rng.randrange(4))
        }

    fields = [
        "agent_id", "token", "task_id", "result", "result_type", "phase", "title", "content",
        "version", "passed", "feedback", "name", "kind", "join_secret", "request_id", "reason",
        "operator_token",
    ]  # fmt: skip
    out: list[Attack] = []
    for i in range(n):
        name = rng.choice(UPDATES)
        if rng.random() < 0.5:
            payload: Any = {f: value() for f in rng.sample(fields, rng.randrange(1, 7))}
            if rng.random() < 0.5:
                payload["agent_id"] = alice["agent_id"]
                payload["token"] = alice["token"][: rng.randrange(len(alice["token"]))] + "?"
        else:
            payload = value()
        out.append(("generated", f"#{i}", name, payload))
    return out


async def send(client: Client, ticket_id: str, target: str, payload: Any) -> tuple[bool, str]:
    """(refused, how): refused = an update failure or a failed query."""
    handle = client.get_workflow_handle(ticket_id)
    try:
        if target.startswith("query:"):
            await handle.query(target.removeprefix("query:"), payload)
        else:
            await handle.execute_update(target, payload)
    except (WorkflowUpdateFailedError, WorkflowQueryFailedError) as exc:
        cause = getattr(exc, "cause", None)
        return True, str(getattr(cause, "message", None) or exc)
    return False, "accepted"


def comparable(state: TicketState) -> str:
    return state.model_copy(update={"ignored_messages": 0}).model_dump_json()


async def attack(
    client: Client, settings: Any, args: argparse.Namespace, console: Console
) -> dict[str, Any]:
    tid = f"hostile-{uuid.uuid4().hex[:8]}"
    spec = parse_spec(
        {
            "id": tid,
            "title": "Under attack",
            "result_criteria": ["it works"],
            "tasks": [
                {"key": "a", "phase": "implementation", "title": "First"},
                {"key": "b", "phase": "implementation", "title": "Second"},
            ],
            "policy": {
                "results": {"on_result_found": "do_nothing"},
                "health": {"idle_deadline_s": 3600, "running_deadline_s": 3600},
                "stuck": {"window_s": 3600, "cooldown_s": 3600},
            },
        }
    )
    launched = await starter.launch_ticket(client, settings, spec)
    operator = launched.token_path.read_text().strip()
    key = join_key(settings.data_dir)
    handle = client.get_workflow_handle(tid)

    async def register(name: str, kind: str) -> dict[str, str]:
        reply = await handle.execute_update(
            "register", {"name": name, "kind": kind, "join_secret": join_secret(key, tid, kind)}
        )
        return {"agent_id": reply["agent_id"], "token": reply["token"]}

    alice, vera = await register("alice", "worker"), await register("vera", "validator")
    await handle.execute_update("claim", {**alice, "request_id": "used-1"})  # holds T1
    await handle.execute_update(
        "create_task", {**alice, "phase": "testing", "title": "Tests", "request_id": "used-2"}
    )
    attacks = corpus(tid, key, alice, vera) + generated(
        random.Random(args.seed), args.generated, alice
    )
    before = comparable(await handle.query("state", operator, result_type=TicketState))
    started = time.monotonic()
    tried: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    accepted: list[dict[str, Any]] = []
    unexplained: list[dict[str, Any]] = []  # refused without saying why
    for category, what, target, payload in attacks:
        tried[category] += 1
        ok, how = await send(client, tid, target, payload)
        if ok:
            refused[category] += 1
            if not how.strip():
                unexplained.append({"category": category, "what": what, "target": target})
        else:
            accepted.append(
                {"category": category, "what": what, "target": target, "payload": _short(payload)}
            )
    elapsed = time.monotonic() - started
    after = comparable(await handle.query("state", operator, result_type=TicketState))
    history = await handle.fetch_history()
    failures = sum(
        e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in history.events
    )
    await starter.cancel_ticket(client, settings, tid, "bench done", "bench")
    console.log(f"{sum(tried.values())} hostile messages in {elapsed:.1f} s")
    return {
        "categories": {c: {"tried": tried[c], "refused": refused[c]} for c in tried},
        "tried": sum(tried.values()),
        "refused": sum(refused.values()),
        "wrongly_accepted": accepted,
        "refused_without_a_reason": unexplained,
        "workflow_task_failures": failures,
        "state_unchanged": before == after,
        "seconds": round(elapsed, 2),
    }


def _short(value: Any) -> Any:
    if isinstance(value, RawValue):
        return f"<raw {len(value.payload.data)} bytes>"
    text = json.dumps(value, default=str)
    return text if len(text) <= 200 else text[:200] + f"…<{len(text)} chars>"


def build_report(args: argparse.Namespace, result: dict[str, Any]) -> dict[str, Any]:
    ok = (
        result["refused"] == result["tried"]
        and not result["refused_without_a_reason"]
        and result["workflow_task_failures"] == 0
        and result["state_unchanged"]
    )
    return {
        "config": {"generated": args.generated, "seed": args.seed},
        "environment": environment(temporal_cli=False),
        **result,
        "targets": {
            "refused": {
                "target": "every hostile message refused; 0 workflow tasks failed; state unchanged",
                "value": f"{result['refused']} of {result['tried']}",
                "pass": ok,
            }
        },
    }


def summarize(r: dict[str, Any], quick: bool) -> Summary:
    s = Summary()
    s.target(
        r,
        "refused",
        "Hostile messages from a second client, refused",
        str(get(r, "targets", "refused", "value")),
        f"{r['workflow_task_failures']} workflow tasks failed, state unchanged: "
        f"{'yes' if r['state_unchanged'] else 'NO'}; {r['config']['generated']} of them "
        f"generated (seed {r['config']['seed']}); {r['seconds']} s",
        lambda: (
            [
                f"accepted: {w['category']} {w['what']} → {w['target']}"
                for w in r["wrongly_accepted"]
            ]
            + [f"refused without a reason: {w['what']}" for w in r["refused_without_a_reason"]]
        ),
    )
    rows = [[c, str(v["tried"]), str(v["refused"])] for c, v in r["categories"].items()]
    s.section += [
        "Raw JSON from a client with the ticket id and the agents' ids but no secret "
        "(bench/hostile.py says what each category holds). Each must be refused; afterwards "
        "no workflow task may have failed and the state must be as before.",
        "",
        *md_table(["category", "tried", "refused"], rows),
    ]
    return s


def arguments(p: argparse.ArgumentParser) -> None:
    option(p, "--generated", 2000, "random payloads after the corpus")
    option(p, "--seed", 1, "seed of the generated payloads")


async def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    async with server(args, console) as bench:
        result = await attack(bench.client, bench.settings, args, console)
    return build_report(args, result)


BENCH = BenchDef.of(
    globals(),
    "hostile",
    "Hostile messages from a second client: tried and refused (beside the chaos figures)",
    quick="--generated 100",
    miss_exits_1=True,
)
parse_args, run, main = BENCH.parse_args, BENCH.run, BENCH.main

if __name__ == "__main__":
    raise SystemExit(main())
