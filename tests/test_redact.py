"""Secret redaction: every recognised shape goes, key names stay, plain text is untouched."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diagnosis.redact import REDACTED, redact, redact_model, redact_value
from models.diagnosis import Evidence, HistorySummary, SnapshotTask, TicketSnapshot

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        ("key sk-abcdefghijklmnopqrstuvwx here", "sk-abcdefghijklmnopqrstuvwx", "key "),
        ("OPENAI=sk-proj-AbCdEf0123456789_xyz-abc", "AbCdEf0123456789", "OPENAI="),
        ("aws AKIAIOSFODNN7EXAMPLE in env", "AKIAIOSFODNN7EXAMPLE", "aws "),
        ("gh ghp_abcdefghijklmnopqrstuvwxyz0123 ok", "ghp_abcdefghijklmnopqrstuvwxyz0123", "gh "),
        ("gho_abcdefghijklmnopqrstuvwxyz0123", "gho_abcdefghij", ""),
        ("ghs_abcdefghijklmnopqrstuvwxyz0123", "ghs_abcdefghij", ""),
        ("github_pat_11ABCDEFG0123456789_abcdefghijkl", "11ABCDEFG0123456789", ""),
        ("slack xoxb-1234567890-abcdefghij", "xoxb-1234567890", "slack "),
        ("slack xoxp-1234567890-abcdefghij", "xoxp-1234567890", "slack "),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFW",
            "eyJzdWIiOiIxMjM0In0",
            "jwt ",
        ),
        ("curl -H 'Authorization: Bearer abc.def-ghi_123'", "abc.def-ghi_123", "Authorization: "),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA", "Authorization: "),
        ("got Bearer AbCdEfGh12345678 back", "AbCdEfGh12345678", "Bearer "),
        ("password=hunter2 and more", "hunter2", "password="),
        ("DB_PASSWORD: s3cr3t!", "s3cr3t!", "DB_PASSWORD: "),
        ("passwd=letmein", "letmein", "passwd="),
        ("client_secret = abc123", "abc123", "client_secret = "),
        ("GITHUB_TOKEN=t0k3n-value", "t0k3n-value", "GITHUB_TOKEN="),
        ("api_key: 1234abcd", "1234abcd", "api_key: "),
        ("x-api-key: 1234abcd", "1234abcd", "x-api-key: "),
        ("ApiKey=1234abcd", "1234abcd", "ApiKey="),
        ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI", "aws_secret_access_key="),
        ("ACCESS-KEY: zzzz9999", "zzzz9999", "ACCESS-KEY: "),
        ('{"password": "p@ss w0rd", "user": "bob"}', "p@ss w0rd", '"user": "bob"'),
        ("https://x/cb?token=abc123&page=2", "abc123", "&page=2"),
        ("postgres://bob:s3cret@db:5432/app", "s3cret", "postgres://bob:"),
        ("https://user:pa55@github.com/org/repo.git", "pa55", "@github.com/org/repo.git"),
    ],
)
def test_redacts_each_shape(text: str, secret: str, kept: str) -> None:
    out, count = redact(text)
    assert secret not in out
    assert kept in out
    assert REDACTED in out
    assert count >= 1


def test_key_name_stays_visible() -> None:
    assert redact("password=hunter2") == ("password=[REDACTED]", 1)
    assert redact('"api_key": "abc"') == ('"api_key": "[REDACTED]"', 1)
    assert redact("token: abc def") == ("token: [REDACTED] def", 1)


def test_pem_private_key_block() -> None:
    pem = (
        "before\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabcdef==\n"
        "-----END RSA PRIVATE KEY-----\nafter"
    )
    out, count = redact(pem)
    assert "MIIEowIBAAKCAQEA7" not in out and "abcdef==" not in out
    assert out.startswith("before\n") and out.endswith("\nafter")
    assert count == 1


def test_pem_block_cut_off_before_its_end() -> None:
    out, _ = redact("key:\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA")
    assert "b3BlbnNzaC1rZXktdjEAAAA" not in out


def test_counts_every_secret() -> None:
    out, count = redact("password=hunter2 and sk-abcdefghijklmnopqrstuvwx")
    assert out == "password=[REDACTED] and [REDACTED]"
    assert count == 2


@pytest.mark.parametrize(
    "text",
    [
        "Test password reset flow",
        "tokens are counted per request",
        "sk-learn-compatibility-layer",
        "task-abcdefghijklmnopqrstuvwx",
        "ModuleNotFoundError: No module named 'bcrypt'",
        "see https://example.com/docs/login?page=2",
        "the bearer of bad news",
        "T12 done: 15 of 15 tasks",
        "",
    ],
)
def test_leaves_ordinary_text_alone(text: str) -> None:
    assert redact(text) == (text, 0)


@given(st.text(max_size=200))
def test_redaction_is_idempotent(text: str) -> None:
    once, _ = redact(text)
    twice, count = redact(once)
    assert twice == once
    assert count == 0


@given(st.text(max_size=80))
def test_embedded_password_never_survives(prefix: str) -> None:
    out, _ = redact(f"{prefix} password=Zq8hunter2xYz")
    assert "Zq8hunter2xYz" not in out


def _task(task_id: str, notes: list[str]) -> SnapshotTask:
    return SnapshotTask(
        id=task_id,
        phase="implementation",
        title="Implement login",
        type="implementation",
        status="running",
        priority="normal",
        notes=notes,
        failure_reason="connect postgres://app:pw123@db/app failed",
        updated_at=NOW,
    )


def test_redact_model_walks_every_string() -> None:
    snapshot = TicketSnapshot(
        ticket_id="login",
        title="Build login system",
        goal="api_key=abc123 must not leak",
        result_criteria=["login works"],
        status="open",
        phases=[],
        counts_by_status={"running": 1},
        counts_by_phase={"implementation": {"running": 1}},
        total_tasks=1,
        recent_tasks=[_task("T1", ["password=hunter2", "fine"])],
        agents=[],
        results=[],
        diagnoses=[],
        last_activity_at=NOW,
        taken_at=NOW,
    )
    evidence = Evidence(
        run_id="login/d1",
        trigger="manual",
        reason="Authorization: Bearer abcdefghijkl",
        snapshot=snapshot,
        history=HistorySummary(window_minutes=60, events_in_window=1, notable=["sk-" + "a" * 30]),
        progress_notes=["T1 ghp_abcdefghijklmnopqrstuvwxyz0123"],
        ledger_excerpts=["token=xyz"],
        collected_at=NOW,
    )
    redacted, count = redact_model(evidence)
    dumped = redacted.model_dump_json()
    for secret in ("abc123", "hunter2", "pw123", "abcdefghijkl", "a" * 30, "ghp_", "xyz"):
        assert secret not in dumped, secret
    assert count == 7
    assert redacted.snapshot.recent_tasks[0].notes == ["password=[REDACTED]", "fine"]
    assert redacted.collected_at == NOW
    # the original is untouched
    assert evidence.snapshot.recent_tasks[0].notes[0] == "password=hunter2"


def test_redact_model_returns_the_same_object_when_clean() -> None:
    history = HistorySummary(window_minutes=60, events_in_window=0, notable=["timer fired"])
    assert redact_model(history) == (history, 0)
    assert redact_model(history)[0] is history


def test_redact_value_handles_containers() -> None:
    value = {"password=a": ["token: b", ("sk-" + "c" * 20, 3)], "n": 1}
    out, count = redact_value(value)
    assert out == {"password=[REDACTED]": ["token: [REDACTED]", ("[REDACTED]", 3)], "n": 1}
    assert count == 3
