"""Escalation sinks (DESIGN §14): the deployment's sinks file, which sinks a message goes to,
the three formats (JSON webhook with an HMAC signature, Slack, PagerDuty Events v2), how
answers sort into retry and give up, and the ``deliver_escalation`` activity itself run with
``ActivityEnvironment`` against real local HTTP receivers and a real sinks file."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from temporalio.testing import ActivityEnvironment

from activities import notify
from infra import sinks
from infra.settings import Settings
from models.messages import EscalationView
from models.notify import NotifyOutcome, NotifyProgress, NotifyRequest
from models.spec import SinkSpec
from tests.receiver import Receiver

SECRET = "a-webhook-signing-secret"
ROUTING_KEY = "R" * 32
UI = "http://ui.example/namespaces/default/workflows/t"
ESCALATION_ID = "t/escalation/restart_failed/1"


def view(severity: str = "SEV-2", **extra: Any) -> EscalationView:
    fields: dict[str, Any] = {
        "id": ESCALATION_ID,
        "ticket_id": "t",
        "severity": severity,
        "source": "restart_failed",
        "status": "open",
        "reason": "restart of w-1 failed: no such file",
        "created_at": "2026-01-01T00:00:00+00:00",
        "agent_id": "w-1",
    }
    return EscalationView(**(fields | extra))


def request(
    event: str = "trigger",
    *,
    severity: str = "SEV-2",
    sinks: list[SinkSpec] | None = None,
    notify: list[str] | None = None,
    done: list[str] | None = None,
    **extra: Any,
) -> NotifyRequest:
    return NotifyRequest(
        ticket_id="t",
        ticket_title="Build login system",
        ticket_priority="normal",
        event=event,  # type: ignore[arg-type]
        escalation=view(severity, **extra),
        sinks=sinks or [],
        notify=notify,
        retry_max_interval_s=0.05,
        done=done or [],
    )


def sink(
    name: str, kind: str = "webhook", url: str = "http://127.0.0.1:9/hook", **extra: Any
) -> SinkSpec:
    if kind == "pagerduty":
        extra.setdefault("routing_key", ROUTING_KEY)
    return SinkSpec.model_validate({"name": name, "kind": kind, "url": url, **extra})


def write_sinks(path: Path, *specs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"sinks": list(specs)}), encoding="utf-8")
    return path


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Real local HTTP receivers, each closed at the end of the test."""
    made: list[Receiver] = []

    def make(*replies: Any, then: Any = 200, up: bool = True) -> Receiver:
        receiver = Receiver().answer(*replies, then=then)
        made.append(receiver)
        return receiver.up() if up else receiver

    yield make
    closing = [threading.Thread(target=r.down) for r in made]  # each waits for its poll
    for thread in closing:
        thread.start()
    for thread in closing:
        thread.join()


# ---- the sinks file ----------------------------------------------------------------------


def test_no_sinks_file_means_no_deployment_sinks(tmp_path: Path) -> None:
    assert sinks.load_sinks(None) == []
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n", encoding="utf-8")
    assert sinks.load_sinks(empty) == []


def test_a_plain_list_and_a_sinks_mapping_both_load(tmp_path: Path) -> None:
    specs = [
        {"name": "ops-hook", "kind": "webhook", "url": "https://hooks.example/x", "secret": SECRET},
        {"name": "team", "kind": "slack", "url": "https://hooks.slack.com/services/T/B/X"},
        {
            "name": "oncall",
            "kind": "pagerduty",
            "url": "https://events.pagerduty.com/v2/enqueue",
            "routing_key": ROUTING_KEY,
            "min_severity": "SEV-2",
        },
    ]
    mapping = write_sinks(tmp_path / "mapping.yaml", *specs)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(specs), encoding="utf-8")  # JSON is YAML too
    for path in (mapping, plain):
        loaded = sinks.load_sinks(path)
        assert [(s.name, s.kind) for s in loaded] == [
            ("ops-hook", "webhook"),
            ("team", "slack"),
            ("oncall", "pagerduty"),
        ]
        assert loaded[2].min_severity == "SEV-2" and loaded[2].routing_key == ROUTING_KEY
        assert loaded[0].secret == SECRET


def test_a_missing_file_is_a_sinks_error(tmp_path: Path) -> None:
    with pytest.raises(sinks.SinksError, match=r"UNSTUCK_SINKS_FILE.*cannot read"):
        sinks.load_sinks(tmp_path / "nowhere.yaml")


def test_bad_yaml_is_a_sinks_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("sinks: [\n", encoding="utf-8")
    with pytest.raises(sinks.SinksError, match="not YAML or JSON"):
        sinks.load_sinks(path)


@pytest.mark.parametrize(
    ("spec", "where", "rule"),
    [
        (
            {"name": "oncall", "kind": "pagerduty", "url": "https://events.pagerduty.com/x"},
            "sinks.0",
            "needs routing_key",
        ),
        (
            {"name": "hook", "kind": "webhook", "url": "ftp://files.example/x"},
            "sinks.0.url",
            "http",
        ),
        (
            {"name": "hook", "kind": "webhook", "url": "file:///etc/passwd"},
            "sinks.0.url",
            "http",
        ),
        ({"name": "hook", "kind": "teams", "url": "https://x.example"}, "sinks.0.kind", ""),
        (
            {"name": "hook", "kind": "webhook", "url": "https://x.example", "secret": "short"},
            "sinks.0.secret",
            "16",
        ),
        (
            {"name": "team", "kind": "slack", "url": "https://x.example", "secret": SECRET},
            "sinks.0",
            "secret",
        ),
        (
            {"name": "hook", "kind": "webhook", "url": "https://x.example", "min_severity": "P1"},
            "sinks.0.min_severity",
            "",
        ),
        (
            {"name": "hook", "kind": "webhook", "url": "https://x.example", "token": "x"},
            "sinks.0.token",
            "",
        ),
    ],
)
def test_an_invalid_sink_is_a_sinks_error_naming_the_field(
    tmp_path: Path, spec: dict[str, Any], where: str, rule: str
) -> None:
    path = write_sinks(tmp_path / "sinks.yaml", spec)
    with pytest.raises(sinks.SinksError) as info:
        sinks.load_sinks(path)
    message = str(info.value)
    assert f": {where}: " in message and str(path) in message
    assert rule in message


def test_duplicate_sink_names_are_a_sinks_error(tmp_path: Path) -> None:
    path = write_sinks(
        tmp_path / "sinks.yaml",
        {"name": "hook", "kind": "webhook", "url": "https://a.example"},
        {"name": "hook", "kind": "slack", "url": "https://b.example"},
    )
    with pytest.raises(sinks.SinksError, match=r"sinks\.name: must be unique"):
        sinks.load_sinks(path)


def test_a_file_that_is_not_utf8_is_a_sinks_error(tmp_path: Path) -> None:
    path = tmp_path / "sinks.yaml"
    path.write_bytes(b"\xff\xfe- name: hook\n")
    with pytest.raises(sinks.SinksError, match="sinks_file"):
        sinks.load_sinks(path)


def test_a_misspelt_top_level_key_is_a_sinks_error(tmp_path: Path) -> None:
    path = tmp_path / "sinks.yaml"
    path.write_text(
        yaml.safe_dump({"sink": [{"name": "hook", "kind": "webhook", "url": "https://a.example"}]}),
        encoding="utf-8",
    )
    with pytest.raises(sinks.SinksError, match="sink"):
        sinks.load_sinks(path)


# ---- which sinks a message goes to ---------------------------------------------------------


DEPLOYMENT = [sink("ops-hook"), sink("team", "slack"), sink("oncall", "pagerduty")]


def names(chosen: list[SinkSpec]) -> list[str]:
    return [s.name for s in chosen]


def test_all_deployment_sinks_unless_the_ticket_names_some() -> None:
    chosen, missing = sinks.choose(DEPLOYMENT, request(notify=None))
    assert names(chosen) == ["ops-hook", "team", "oncall"] and missing == []
    chosen, missing = sinks.choose(DEPLOYMENT, request(notify=["oncall", "team"]))
    assert names(chosen) == ["oncall", "team"] and missing == []
    chosen, missing = sinks.choose(DEPLOYMENT, request(notify=[]))
    assert chosen == [] and missing == []


def test_an_unknown_sink_name_is_reported() -> None:
    chosen, missing = sinks.choose(DEPLOYMENT, request(notify=["team", "pagr"]))
    assert names(chosen) == ["team"]
    assert missing == ["pagr: no sink of that name in this deployment's sinks file"]


def test_the_ticket_sinks_are_added() -> None:
    own = [sink("mine"), sink("team", url="http://127.0.0.1:9/other")]
    chosen, _ = sinks.choose(DEPLOYMENT, request(notify=["oncall"], sinks=own))
    assert names(chosen) == ["oncall", "mine", "team"]
    assert chosen[2].url.endswith("/other")  # not named in notify: the ticket's own
    chosen, _ = sinks.choose(DEPLOYMENT, request(notify=None, sinks=own))
    assert names(chosen) == ["ops-hook", "team", "oncall", "mine"]  # one 'team'
    chosen, _ = sinks.choose([], request(sinks=own))
    assert names(chosen) == ["mine", "team"]


@pytest.mark.parametrize(
    ("severity", "expected"),
    [
        ("SEV-1", ["all", "sev2", "sev1"]),
        ("SEV-2", ["all", "sev2"]),
        ("SEV-3", ["all"]),
        ("SEV-4", ["all"]),
    ],
)
def test_min_severity_filters(severity: str, expected: list[str]) -> None:
    deployment = [
        sink("all"),
        sink("sev2", min_severity="SEV-2"),
        sink("sev1", "slack", min_severity="SEV-1"),
    ]
    chosen, _ = sinks.choose(deployment, request(severity=severity))
    assert names(chosen) == expected
    own = [sink("mine", min_severity="SEV-2")]
    chosen, _ = sinks.choose([], request(severity=severity, sinks=own))
    assert names(chosen) == (["mine"] if severity in ("SEV-1", "SEV-2") else [])


def test_a_sink_named_twice_is_chosen_once() -> None:
    chosen, _ = sinks.choose(DEPLOYMENT, request(notify=["oncall", "oncall"]))
    assert names(chosen) == ["oncall"]


# ---- the formats -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "expected"),
    [("SEV-1", "critical"), ("SEV-2", "error"), ("SEV-3", "warning"), ("SEV-4", "info")],
)
def test_pagerduty_trigger(severity: str, expected: str) -> None:
    pager = sink("oncall", "pagerduty")
    body = sinks.pagerduty_body(pager, request(severity=severity), UI)
    assert body["routing_key"] == ROUTING_KEY
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == ESCALATION_ID
    payload = body["payload"]
    assert payload["severity"] == expected
    assert payload["source"] == "unstuck/t"
    assert payload["timestamp"] == "2026-01-01T00:00:00+00:00"
    assert payload["summary"].startswith(f"[{severity}] t escalated: restart of w-1 failed")
    assert payload["class"] == "restart_failed" and payload["component"] == "w-1"
    assert payload["custom_details"]["reason"] == "restart of w-1 failed: no such file"
    assert body["client_url"] == UI


def test_pagerduty_summary_is_at_most_1024_characters() -> None:
    long = request(reason="x" * 5_000)
    body = sinks.pagerduty_body(sink("oncall", "pagerduty"), long, UI)
    assert len(body["payload"]["summary"]) == 1024
    assert body["payload"]["custom_details"]["reason"] == "x" * 5_000  # the whole of it


@pytest.mark.parametrize("event", ["acknowledge", "resolve"])
def test_pagerduty_acknowledge_and_resolve_carry_no_payload(event: str) -> None:
    raw, headers = sinks.render(sink("oncall", "pagerduty"), request(event), UI)
    body = json.loads(raw)
    assert body == {"routing_key": ROUTING_KEY, "event_action": event, "dedup_key": ESCALATION_ID}
    assert headers["Content-Type"] == "application/json"
    assert "X-Unstuck-Signature" not in headers


def test_slack_escapes_its_control_characters_and_names_the_commands() -> None:
    nasty = request(reason="<!channel> a & b > c", question="use <http://evil|this>?")
    text = sinks.slack_body(nasty, UI)["text"]
    assert "&lt;!channel&gt; a &amp; b &gt; c" in text
    assert "<!channel>" not in text and "<http://evil" not in text
    assert "use &lt;http://evil|this&gt;?" in text
    assert f"starter.py ack {ESCALATION_ID}" in text
    assert f"starter.py resolve {ESCALATION_ID}" in text
    assert f"<{UI}|Build login system>" in text  # the ticket's link
    resolved = request("resolve", resolved_by="olga & co", note="freed <disk>")
    text = sinks.slack_body(resolved, UI)["text"]
    assert "olga &amp; co" in text and "freed &lt;disk&gt;" in text
    assert ESCALATION_ID in text


def test_webhook_body_and_idempotency_headers() -> None:
    raw, headers = sinks.render(sink("hook"), request("acknowledge", acknowledged_by="olga"), UI)
    body = json.loads(raw)
    assert body["schema"] == "unstuck.escalation.v1"
    assert (body["event"], body["dedup_key"]) == ("acknowledge", ESCALATION_ID)
    assert body["delivery_id"] == f"{ESCALATION_ID}/acknowledge"
    assert body["ticket"] == {
        "id": "t",
        "title": "Build login system",
        "priority": "normal",
        "url": UI,
    }
    assert body["escalation"]["acknowledged_by"] == "olga"
    assert "deliveries" not in body["escalation"]
    assert headers["Idempotency-Key"] == headers["X-Unstuck-Delivery"] == body["delivery_id"]
    assert headers["X-Unstuck-Event"] == "acknowledge"
    assert "X-Unstuck-Signature" not in headers  # no secret: unsigned


def test_webhook_signature_verifies_with_hmac_sha256_over_timestamp_and_body() -> None:
    raw, headers = sinks.render(sink("hook", secret=SECRET), request(), UI)
    stamp = headers["X-Unstuck-Timestamp"]
    assert stamp.isdigit()
    expected = hmac.new(SECRET.encode(), f"{stamp}.".encode() + raw, hashlib.sha256).hexdigest()
    assert headers["X-Unstuck-Signature"] == f"sha256={expected}"
    assert sinks.sign(SECRET, stamp, raw) == expected
    assert sinks.sign(SECRET, stamp, raw + b" ") != expected  # the body is covered
    assert sinks.sign(SECRET, str(int(stamp) + 1), raw) != expected  # ... and the timestamp
    assert sinks.sign("another-secret-entirely", stamp, raw) != expected


# ---- post() against a real receiver --------------------------------------------------------


async def post(target: SinkSpec, event: str = "trigger") -> None:
    async with httpx.AsyncClient() as client:
        await sinks.post(client, target, request(event), UI)


async def test_post_2xx_is_delivered_and_signed_on_the_wire(
    receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers(200, 202)
    await post(sink("hook", url=receiver.url, secret=SECRET))
    await post(sink("hook", url=receiver.url, secret=SECRET), "resolve")
    first, second = receiver.ok()
    assert (first.status, second.status) == (200, 202)
    headers = {k.lower(): v for k, v in first.headers.items()}
    signature = sinks.sign(SECRET, headers["x-unstuck-timestamp"], first.body)
    assert headers["x-unstuck-signature"] == f"sha256={signature}"
    assert headers["user-agent"] == sinks.USER_AGENT
    assert receiver.events() == [("trigger", ESCALATION_ID), ("resolve", ESCALATION_ID)]


@pytest.mark.parametrize("status", [500, 503, 429, 408])
async def test_post_5xx_429_408_are_unreachable(
    receivers: Callable[..., Receiver], status: int
) -> None:
    receiver = receivers(("status", status, "try later"))
    with pytest.raises(sinks.Unreachable, match=f"HTTP {status}: try later"):
        await post(sink("hook", url=receiver.url))


@pytest.mark.parametrize("status", [404, 400, 401, 403])
async def test_post_other_4xx_are_refused_for_good(
    receivers: Callable[..., Receiver], status: int
) -> None:
    receiver = receivers(("status", status, "no such hook"))
    with pytest.raises(sinks.Refused, match=f"HTTP {status}: no such hook"):
        await post(sink("hook", url=receiver.url))


async def test_post_to_a_closed_port_is_unreachable(receivers: Callable[..., Receiver]) -> None:
    receiver = receivers(up=False)
    with pytest.raises(sinks.Unreachable):
        await post(sink("hook", url=receiver.url))
    assert receiver.attempts == 0


async def test_post_slower_than_the_timeout_is_unreachable(
    receivers: Callable[..., Receiver],
) -> None:
    receiver = receivers(("slow", 2.0))
    with pytest.raises(sinks.Unreachable, match=r"no answer within 0\.2 s"):
        await post(sink("hook", url=receiver.url, timeout_s=0.2))
    assert receiver.ok() == []  # it did not get an answer through


# ---- the deliver_escalation activity -----------------------------------------------------


class Run:
    """One ``deliver_escalation`` activity in an ActivityEnvironment, its heartbeats kept."""

    def __init__(
        self,
        settings: Settings | notify.NotifyActivities,
        req: NotifyRequest,
        progress: NotifyProgress | None = None,
    ) -> None:
        self.env = ActivityEnvironment()
        self.beats: list[NotifyProgress] = []
        self.env.on_heartbeat = lambda *details: self.beats.append(
            NotifyProgress.model_validate(details[0])
        )
        if progress is not None:  # a retried attempt: the server hands it the last heartbeat
            self.env.info = dataclasses.replace(
                self.env.info, heartbeat_details=[progress.model_dump(mode="json")]
            )
        activities = (
            settings
            if isinstance(settings, notify.NotifyActivities)
            else notify.NotifyActivities(settings)
        )
        activity = activities.deliver_escalation
        self.task: asyncio.Task[NotifyOutcome] = asyncio.create_task(self.env.run(activity, req))

    async def until(self, check: Callable[[], bool], what: str) -> None:
        """Wait for ``check`` (a safety net, not a timing assertion)."""
        async with asyncio.timeout(20):
            while not check():
                if self.task.done():
                    await self.task  # it raised or returned early: show that
                    raise AssertionError(f"the activity ended before {what}")
                await asyncio.sleep(0.02)

    async def outcome(self) -> NotifyOutcome:
        async with asyncio.timeout(20):
            return await self.task

    async def cancelled(self) -> NotifyOutcome:
        self.env.cancel()
        return await self.outcome()


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "FIRST_BACKOFF_S", 0.05)


def settings_with(path: Path | None) -> Settings:
    return Settings(sinks_file=path, ui_url="http://ui.example")


async def test_the_deployment_sinks_from_the_file_are_used(
    tmp_path: Path, receivers: Callable[..., Receiver], fast_backoff: None
) -> None:
    hook, slack, pager, mine = receivers(), receivers(), receivers(), receivers()
    path = write_sinks(
        tmp_path / "sinks.yaml",
        {"name": "ops-hook", "kind": "webhook", "url": hook.url, "secret": SECRET},
        {"name": "team", "kind": "slack", "url": slack.url},
        {"name": "oncall", "kind": "pagerduty", "url": pager.url, "routing_key": ROUTING_KEY},
    )
    req = request(sinks=[sink("mine", url=mine.url)])
    outcome = await Run(settings_with(path), req).outcome()
    assert sorted(outcome.delivered) == ["mine", "oncall", "ops-hook", "team"]
    assert (outcome.failed, outcome.complete) == ([], True)
    for receiver in (hook, slack, pager, mine):
        assert len(receiver.ok()) == 1
    assert hook.ok()[0].json["ticket"]["url"] == "http://ui.example/namespaces/default/workflows/t"
    assert pager.events() == [("trigger", ESCALATION_ID)]
    assert "Build login system" in slack.ok()[0].json["text"]


async def test_no_sink_at_all_is_done_at_once(fast_backoff: None) -> None:
    outcome = await Run(settings_with(None), request()).outcome()
    assert outcome == NotifyOutcome(delivered=[], failed=[], complete=True)


async def test_a_sink_that_took_it_in_an_earlier_attempt_is_not_sent_it_again(
    tmp_path: Path, receivers: Callable[..., Receiver], fast_backoff: None
) -> None:
    first, second = receivers(), receivers()
    path = write_sinks(
        tmp_path / "sinks.yaml",
        {"name": "first", "kind": "webhook", "url": first.url},
        {"name": "second", "kind": "webhook", "url": second.url},
    )
    # A retried attempt: the heartbeat of the last one says 'first' took it.
    earlier = NotifyProgress(delivered=["first"], tries=3, last_errors=["second: HTTP 500"])
    outcome = await Run(settings_with(path), request(), earlier).outcome()
    assert (first.attempts, len(second.ok())) == (0, 1)
    assert sorted(outcome.delivered) == ["first", "second"] and outcome.complete
    # The next run of the ticket (continue-as-new): NotifyRequest.done.
    third = receivers()
    path = write_sinks(
        tmp_path / "sinks.yaml",
        {"name": "first", "kind": "webhook", "url": first.url},
        {"name": "second", "kind": "webhook", "url": second.url},
        {"name": "third", "kind": "webhook", "url": third.url},
    )
    outcome = await Run(settings_with(path), request(done=["first", "second"])).outcome()
    assert (first.attempts, len(second.ok()), len(third.ok())) == (0, 1, 1)
    assert outcome.delivered == ["third"] and outcome.complete


async def test_a_receiver_answering_500_is_retried_until_it_takes_it(
    tmp_path: Path, receivers: Callable[..., Receiver], fast_backoff: None
) -> None:
    flaky, fine, typo = receivers(500, 500), receivers(), receivers(then=404)
    path = write_sinks(
        tmp_path / "sinks.yaml",
        {"name": "flaky", "kind": "webhook", "url": flaky.url},
        {"name": "fine", "kind": "slack", "url": fine.url},
        {"name": "typo", "kind": "webhook", "url": typo.url},
    )
    run = Run(settings_with(path), request())
    outcome = await run.outcome()
    assert sorted(outcome.delivered) == ["fine", "flaky"] and outcome.complete
    assert outcome.failed == ["typo: HTTP 404: error"]  # refused for good: not retried
    assert (flaky.attempts, len(flaky.ok())) == (3, 1)
    assert (fine.attempts, typo.attempts) == (1, 1)  # each sent once
    tries = [b for b in run.beats if b.last_errors]
    assert tries and all(b.last_errors == ["flaky: HTTP 500: error"] for b in tries)
    assert run.beats[-1].tries == 3 and run.beats[-1].last_errors == []


async def test_an_unknown_notify_name_fails_without_retrying(
    tmp_path: Path, receivers: Callable[..., Receiver], fast_backoff: None
) -> None:
    hook = receivers()
    path = write_sinks(
        tmp_path / "sinks.yaml", {"name": "hook", "kind": "webhook", "url": hook.url}
    )
    outcome = await Run(settings_with(path), request(notify=["hook", "pagr"])).outcome()
    assert outcome.delivered == ["hook"] and outcome.complete
    assert outcome.failed == ["pagr: no sink of that name in this deployment's sinks file"]


async def test_cancelling_returns_what_was_delivered_so_far(
    tmp_path: Path, receivers: Callable[..., Receiver], fast_backoff: None
) -> None:
    took, down = receivers(), receivers(up=False)
    path = write_sinks(
        tmp_path / "sinks.yaml",
        {"name": "took", "kind": "webhook", "url": took.url},
        {"name": "down", "kind": "pagerduty", "url": down.url, "routing_key": ROUTING_KEY},
    )
    run = Run(settings_with(path), request())
    await run.until(lambda: any(b.tries >= 2 for b in run.beats), "a second try")
    outcome = await run.cancelled()
    assert outcome == NotifyOutcome(delivered=["took"], failed=[], complete=False)
    assert len(took.ok()) == 1 and down.attempts == 0


async def test_cancelling_during_a_slow_sink_keeps_the_sink_that_took_it(
    tmp_path: Path, receivers: Callable[..., Receiver], fast_backoff: None
) -> None:
    fast, slow = receivers(), receivers(("slow", 3.0))
    path = write_sinks(
        tmp_path / "sinks.yaml",
        {"name": "fast", "kind": "webhook", "url": fast.url},
        {"name": "slow", "kind": "webhook", "url": slow.url, "timeout_s": 10},
    )
    run = Run(settings_with(path), request())
    await run.until(lambda: len(fast.ok()) == 1 and slow.attempts == 1, "both were sent it")
    outcome = await run.cancelled()
    assert outcome.complete is False
    assert outcome.delivered == ["fast"]


async def test_an_invalid_sinks_file_is_tried_again_until_it_is_fixed(
    tmp_path: Path, receivers: Callable[..., Receiver], fast_backoff: None
) -> None:
    hook = receivers()
    path = write_sinks(
        tmp_path / "sinks.yaml", {"name": "hook", "kind": "webhook", "url": "ftp://x"}
    )
    run = Run(settings_with(path), request())
    await run.until(lambda: len(run.beats) >= 3, "three tries")
    assert all("sinks.0.url" in b.last_errors[0] for b in run.beats)
    assert not run.task.done()  # it keeps trying: it did not raise
    write_sinks(path, {"name": "hook", "kind": "webhook", "url": hook.url})  # fixed
    outcome = await run.outcome()
    assert outcome.delivered == ["hook"] and outcome.complete
    assert len(hook.ok()) == 1


async def test_a_missing_sinks_file_keeps_trying_and_cancels_cleanly(
    tmp_path: Path, fast_backoff: None
) -> None:
    run = Run(settings_with(tmp_path / "not-yet.yaml"), request())
    await run.until(lambda: len(run.beats) >= 2, "two tries")
    assert "cannot read" in run.beats[-1].last_errors[0]
    outcome = await run.cancelled()
    assert outcome == NotifyOutcome(delivered=[], failed=[], complete=False)


async def test_a_sinks_file_that_is_not_utf8_keeps_trying(
    tmp_path: Path, fast_backoff: None
) -> None:
    path = tmp_path / "sinks.yaml"
    path.write_bytes(b"\xff\xfe- name: hook\n")
    run = Run(settings_with(path), request())
    await run.until(lambda: len(run.beats) >= 2, "two tries")
    outcome = await run.cancelled()
    assert outcome.complete is False


# ---- review findings: heartbeats while waiting, giving up, unusable URLs ----------------


async def test_a_slow_sink_is_heartbeated_past_with_the_fast_one_already_recorded(
    receivers: Callable[..., Receiver], fast_backoff: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "HEARTBEAT_EVERY_S", 0.05)
    fast, slow = receivers(), receivers(("slow", 1.0))
    req = request(sinks=[sink("fast", url=fast.url), sink("slow", url=slow.url, timeout_s=5)])
    run = Run(settings_with(None), req)
    # While the slow sink still answers, a heartbeat already names the fast one: a worker
    # dying now would not send it again.
    await run.until(lambda: any(b.delivered == ["fast"] for b in run.beats), "fast recorded")
    assert not run.task.done()
    outcome = await run.outcome()
    assert sorted(outcome.delivered) == ["fast", "slow"]


async def test_a_sink_down_past_give_up_after_s_is_recorded_undeliverable(
    receivers: Callable[..., Receiver], fast_backoff: None
) -> None:
    gone = receivers(up=False)
    req = request(sinks=[sink("gone", url=gone.url)]).model_copy(
        update={"give_up_after_s": 0.2, "queued_at": datetime.now(UTC)}
    )
    outcome = await Run(settings_with(None), req).outcome()
    assert outcome.delivered == [] and outcome.complete
    assert outcome.failed[0].startswith("gone: gave up after 0.2 s")
    assert "ConnectError" in outcome.failed[0]  # with the last reason it was not taken


def test_a_url_httpx_cannot_use_is_refused_by_the_spec() -> None:
    for url in ("http://[::1/x", "http://:80/", "ftp://example.com/"):
        with pytest.raises(ValueError, match="url"):
            sink("bad", url=url)
