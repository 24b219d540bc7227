"""Enrollment, idempotency and readable state in the pure core (DESIGN §16).

Who may register (a join secret per ticket and kind), what a reused request id gets (the
earlier reply only for the same payload), and what the ``state`` query shows (nothing
derived from a secret; an agent's private channel only to the operator).
"""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path
from typing import Any

import pytest

from core import ticket as core
from core import views
from core.state import TicketState
from infra.enrollment import (
    JOIN_KEY_ENV,
    JOIN_KINDS,
    EnrollmentError,
    join_hashes,
    join_key,
    join_secret,
)
from models.ledger import LedgerBatch, TaskResultRecord
from models.messages import (
    ClaimTask,
    CreateTask,
    LeaveTicket,
    RegisterAgent,
    ReviewResult,
    SubmitResult,
)
from tests.test_core_ticket import T0, at, claim, complete_msg, join, make_ticket, seed

KEY = b"k" * 40


def enrolled(**spec: Any) -> TicketState:
    state = make_ticket([seed("a"), seed("b")], **spec)
    state.join_sha256 = join_hashes(KEY, state.ticket_id)
    return state


def register(state: TicketState, name: str, kind: str, secret: str | None) -> core.Step[object]:
    msg = RegisterAgent(name=name, kind=kind, join_secret=secret)  # type: ignore[arg-type]
    return core.register(state, msg, T0, token=f"token-of-{name}")  # type: ignore[return-value]


# ---- join secrets ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", JOIN_KINDS)
def test_an_agent_registers_only_with_the_secret_of_its_kind(kind: str) -> None:
    state = enrolled()
    before = state.model_dump()
    with pytest.raises(core.Refused) as missing:
        register(state, "mallory", kind, None)
    assert missing.value.field == "join_secret"
    assert "required" in missing.value.rule and "starter.py join-secret" in missing.value.rule
    for other in JOIN_KINDS:
        if other == kind:
            continue
        with pytest.raises(core.Refused) as wrong:  # a worker's secret does not make a validator
            register(state, "mallory", kind, join_secret(KEY, state.ticket_id, other))
        assert wrong.value.field == "join_secret"
        assert wrong.value.rule == f"is not the {kind} join secret of ticket tk"
    with pytest.raises(core.Refused):  # another ticket's secret of the same kind
        register(state, "mallory", kind, join_secret(KEY, "another-ticket", kind))
    with pytest.raises(core.Refused):  # another deployment's key
        register(state, "mallory", kind, join_secret(b"x" * 40, state.ticket_id, kind))
    assert state.model_dump() == before  # refusals change nothing
    reply = register(state, "alice", kind, join_secret(KEY, state.ticket_id, kind)).reply
    assert state.agents[reply.agent_id].kind == kind  # type: ignore[attr-defined]


def test_a_ticket_started_before_enrollment_admits_anyone() -> None:
    state = make_ticket([seed("a")])
    assert state.join_sha256 is None
    register(state, "alice", "validator", None)
    assert [a.kind for a in state.agents.values()] == ["validator"]


def test_the_ticket_keeps_only_hashes_of_the_secrets() -> None:
    hashes = join_hashes(KEY, "tk")
    assert set(hashes) == set(JOIN_KINDS)
    for kind, digest in hashes.items():
        secret = join_secret(KEY, "tk", kind)
        assert secret.startswith("ujs1_") and secret not in digest
        assert digest == hashlib.sha256(secret.encode()).hexdigest()
    assert len(set(hashes.values())) == 3


def test_the_join_key_file_is_created_once_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(JOIN_KEY_ENV, raising=False)
    with pytest.raises(EnrollmentError, match="no join key: set UNSTUCK_JOIN_KEY or share"):
        join_key(tmp_path)
    key = join_key(tmp_path, create=True)
    path = tmp_path / "join.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert join_key(tmp_path) == key == join_key(tmp_path, create=True)  # never replaced
    monkeypatch.setenv(JOIN_KEY_ENV, "short")
    with pytest.raises(EnrollmentError, match="UNSTUCK_JOIN_KEY: is 5 characters; at least 32"):
        join_key(tmp_path)
    monkeypatch.setenv(JOIN_KEY_ENV, "e" * 32)
    assert join_key(tmp_path) == b"e" * 32  # the environment wins over the file


# ---- a request id names one intent -------------------------------------------------------


def test_a_reused_request_id_with_another_payload_is_refused() -> None:
    state = make_ticket([seed("a"), seed("b")])
    w = join(state)
    first = core.claim(state, ClaimTask(**w, request_id="r1"), at(1)).reply
    assert first.task is not None and first.task.id == "T1"
    again = core.claim(state, ClaimTask(**w, request_id="r1"), at(2)).reply
    assert again == first  # a retry gets the same reply
    before = state.model_dump()
    with pytest.raises(core.Refused) as refused:
        core.claim(state, ClaimTask(**w, request_id="r1", phases=["testing"]), at(2))
    assert refused.value.field == "request_id"
    assert refused.value.rule.startswith("reused with a different payload")
    done = core.complete(state, complete_msg(w, "T1", request_id="c1"), at(3)).reply
    with pytest.raises(core.Refused, match="reused with a different payload"):
        core.complete(state, complete_msg(w, "T2", request_id="c1"), at(3))
    with pytest.raises(core.Refused, match="reused with a different payload"):
        core.complete(state, complete_msg(w, "T1", request_id="c1", result="# other"), at(3))
    assert core.complete(state, complete_msg(w, "T1", request_id="c1"), at(4)).reply == done
    make = CreateTask(**w, phase="testing", title="Write tests", request_id="n1")
    core.create_task(state, make, at(5))
    with pytest.raises(core.Refused, match="reused with a different payload"):
        core.create_task(state, make.model_copy(update={"title": "Other"}), at(5))
    assert before["tasks"]["T2"] == state.model_dump()["tasks"]["T2"]


def test_a_reused_registration_request_id_names_the_rule_not_the_agent_to_a_stranger() -> None:
    state = enrolled()
    secret = join_secret(KEY, "tk", "worker")
    msg = RegisterAgent(name="alice", join_secret=secret, request_id="reg-1")
    core.register(state, msg, T0, token="t1")
    with pytest.raises(core.Refused) as stranger:  # no secret: refused before the cache
        core.register(state, msg.model_copy(update={"join_secret": None}), T0, token="t2")
    assert stranger.value.field == "join_secret"
    with pytest.raises(core.Refused, match="reused with a different payload"):
        core.register(state, msg.model_copy(update={"capabilities": ["python"]}), T0, token="t2")


def test_replies_cached_before_digests_are_answered_as_before() -> None:
    state = make_ticket([seed("a")])
    w = join(state)
    first = core.claim(state, ClaimTask(**w, request_id="r1"), at(1)).reply
    state.reply_digests.clear()  # a state carried from a run before digests
    other = core.claim(state, ClaimTask(**w, request_id="r1", phases=["testing"]), at(2)).reply
    assert other == first


# ---- the state query ---------------------------------------------------------------------


def test_the_readable_state_holds_nothing_derived_from_a_secret() -> None:
    state = enrolled()
    state.operator_token_sha256 = hashlib.sha256(b"op").hexdigest()
    w = join_enrolled(state, "alice")
    claim_msg = ClaimTask(agent_id=w["agent_id"], token=w["token"], request_id="r1")
    assert core.claim(state, claim_msg, at(1)).reply.task is not None
    state.agents[w["agent_id"]].feedback.append("private review feedback for alice")
    for operator in (False, True):
        shown = views.readable_state(state, operator=operator)
        text = shown.model_dump_json()
        assert state.operator_token_sha256 not in text
        for digest in [
            *(state.join_sha256 or {}).values(),
            state.agents[w["agent_id"]].token_sha256,
        ]:
            assert digest not in text
        assert ("private review feedback" in text) is operator
        assert (shown.replies != {}) is operator
    assert state.agents[w["agent_id"]].token_sha256  # the ticket's own copy is untouched


def join_enrolled(state: TicketState, name: str) -> dict[str, str]:
    reply = register(state, name, "worker", join_secret(KEY, state.ticket_id, "worker")).reply
    return {"agent_id": reply.agent_id, "token": f"token-of-{name}"}  # type: ignore[attr-defined]


# ---- derived payloads --------------------------------------------------------------------


def test_a_ledger_outbox_is_written_in_pieces_under_the_payload_limit() -> None:
    rows = [
        TaskResultRecord(
            id=f"r{i}",
            ticket_id="tk",
            task_id=f"T{i}",
            attempt=1,
            iteration=0,
            agent_id="w-1",
            content="\u0001" * 100_000,  # 600 KB as JSON each
            result_type="fix",
            submitted_at=T0,
        )
        for i in range(7)
    ]
    batch = LedgerBatch(ticket_id="tk", task_results=rows)
    pieces = []
    while not batch.is_empty():
        piece, batch = batch.split(1_500_000)
        assert piece.size >= 1
        assert len(piece.model_dump_json().encode()) <= 1_500_000
        pieces.append(piece)
    assert [p.size for p in pieces] == [2, 2, 2, 1]
    assert [r.id for p in pieces for r in p.task_results] == [r.id for r in rows]
    # Counted in bytes: 25,000 four-byte code points are 25,000 characters but 100 KB.
    emoji = [r.model_copy(update={"content": "\U0001f600" * 25_000}) for r in rows]
    piece, rest = LedgerBatch(ticket_id="tk", task_results=emoji * 3).split(1_500_000)
    assert len(piece.model_dump_json().encode()) <= 1_500_000 and rest.size > 0
    small = LedgerBatch(ticket_id="tk", task_results=rows[:1])
    assert small.split(1_500_000)[0] is small


def test_a_name_keeps_its_kind() -> None:
    """A worker cannot take over a validator's name (and with it its lineage) while the
    validator restarts: registering replaces an unresponsive agent of the same name."""
    state = enrolled()
    vera = register(state, "vera", "validator", join_secret(KEY, "tk", "validator")).reply
    state.agents[vera.agent_id].state = "unresponsive"  # type: ignore[attr-defined]
    with pytest.raises(core.Refused) as refused:
        register(state, "vera", "worker", join_secret(KEY, "tk", "worker"))
    assert refused.value.field == "kind"
    assert "belongs to a validator" in refused.value.rule
    again = register(state, "vera", "validator", join_secret(KEY, "tk", "validator")).reply
    assert state.agents[vera.agent_id].state == "terminated"  # type: ignore[attr-defined]
    assert state.agents[again.agent_id].kind == "validator"  # type: ignore[attr-defined]


def test_a_review_carries_at_most_what_the_state_can_keep() -> None:
    """Reviews stay in the state for good: feedback and evidence are bounded as JSON, so
    two big reviews cannot push the state carried through continue-as-new over 2 MB."""
    state = make_ticket([seed("a")])
    w, v = join(state), join(state, "v", "validator")
    version = submit_version(state, w)
    before = state.model_dump()
    big = ReviewResult(
        **v, version=version, passed=False, feedback="no", evidence=["\u0004" * 50_000] * 5
    )
    with pytest.raises(core.Refused) as refused:
        core.review_result(state, big, at(3))
    assert refused.value.field == "evidence" and "1,500,000 bytes as JSON" in refused.value.rule
    loud = big.model_copy(update={"feedback": "\u0007" * 15_000, "evidence": []})
    with pytest.raises(core.Refused, match="feedback: is 90,000 bytes as JSON"):
        core.review_result(state, loud, at(3))
    assert state.model_dump() == before
    fine = big.model_copy(update={"evidence": ["tests/test_login.py::test_reset failed"]})
    assert core.review_result(state, fine, at(3)).reply.status == "rejected"


def submit_version(state: TicketState, who: Any) -> int:
    msg = SubmitResult(agent_id=who["agent_id"], token=who["token"], content="# result")
    return core.submit_result(state, msg, at(2)).reply.version


def test_an_agent_that_leaves_gives_its_work_back_without_using_a_retry() -> None:
    state = make_ticket([seed("a"), seed("b")])
    w = join(state)
    assert claim(state, w) == "T1"
    reply = core.leave(state, LeaveTicket(**w, reason="session ended"), at(2)).reply
    assert reply.released == ["T1"]
    task = state.tasks["T1"]
    assert task.status == "pending" and task.assigned_agent is None and task.failures == 0
    assert state.agents[w["agent_id"]].state == "terminated"
    with pytest.raises(core.Refused, match="was terminated"):
        core.claim(state, ClaimTask(agent_id=w["agent_id"], token=w["token"]), at(3))
    again = join(state)  # the name is free again
    assert claim(state, again) == "T1"
