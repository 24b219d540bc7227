"""The LLM hypothesis provider against a real local HTTP server speaking chat completions.

The server (``http.server`` in a thread on 127.0.0.1) records every request and answers as
the test tells it: valid structured output, broken JSON, schema violations, HTTP 500 or too
slowly. Whatever goes wrong, the rules answer instead and ``fallback_reason`` says why.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from diagnosis.llm import LLMSettings, generate_hypotheses
from diagnosis.rules import SUBMIT_RESULT_TITLE
from models.diagnosis import Evidence, HypothesisSet
from tests.test_rules import seed_scenario

API_KEY = "test-key-0123456789"


@dataclass
class Reply:
    status: int = 200
    content: str | None = None  # choices[0].message.content
    raw: bytes | None = None  # the whole body instead
    delay_s: float = 0.0


@dataclass
class FakeLLM:
    """What the server answers next, and every request it got."""

    reply: Reply = field(default_factory=Reply)
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    base_url: str = ""

    def settings(self, timeout_s: float = 5.0, **fields: Any) -> LLMSettings:
        return LLMSettings(
            base_url=self.base_url,
            model="test-model",
            api_key=API_KEY,
            timeout_s=timeout_s,
            **fields,
        )


def _handler(fake: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            fake.requests.append(
                {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
            )
            reply = fake.reply
            if reply.delay_s:
                fake.release.wait(reply.delay_s)
            if reply.raw is not None:
                payload = reply.raw
            else:
                payload = json.dumps(
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "model": "test-model",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply.content},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                ).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the timeout test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="fake-llm", daemon=True
    )
    thread.start()
    try:
        yield fake
    finally:
        fake.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def hypothesis(signature: str, likelihood: float, title: str = "Do it") -> dict[str, Any]:
    return {
        "signature": signature,
        "statement": f"{signature} explains it",
        "likelihood": likelihood,
        "evidence": ["15 of 15 tasks done"],
        "counterpoints": [],
        "recommendations": [
            {
                "title": title,
                "description": "details",
                "phase": "testing",
                "priority": "high",
                "type": "submission",
            }
        ],
    }


def evidence() -> Evidence:
    return seed_scenario()


def assert_rules_fallback(found: HypothesisSet, reason_start: str) -> None:
    assert found.generator == "rules"
    assert found.fallback_reason is not None
    assert found.fallback_reason.startswith(reason_start), found.fallback_reason
    assert found.hypotheses[0].signature == "missing_result_submission"
    assert found.hypotheses[0].recommendations[0].title == SUBMIT_RESULT_TITLE


async def test_valid_structured_output_is_used_reranked_and_capped(fake_llm: FakeLLM) -> None:
    answer = {
        "hypotheses": [
            hypothesis("other", 0.1),
            hypothesis("validation_loop", 0.3),
            hypothesis("missing_result_submission", 0.9, SUBMIT_RESULT_TITLE),
            hypothesis("crash_looping_agent", 0.2),
            hypothesis("environment_error", 0.4),
            hypothesis("dependency_deadlock", 0.05),
            hypothesis("phase_without_tasks", 0.5),
        ]
    }
    fake_llm.reply = Reply(content=json.dumps(answer))
    found = await generate_hypotheses(evidence(), fake_llm.settings())

    assert found.generator == "llm:test-model"
    assert found.fallback_reason is None
    assert [h.likelihood for h in found.hypotheses] == [0.9, 0.5, 0.4, 0.3, 0.2]
    assert found.hypotheses[0].recommendations[0].title == SUBMIT_RESULT_TITLE

    (request,) = fake_llm.requests
    assert request["path"] == "/v1/chat/completions"
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["authorization"] == f"Bearer {API_KEY}"
    body = request["body"]
    assert body["model"] == "test-model"
    assert body["temperature"] == 0
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user"]
    assert "JSON" in body["messages"][0]["content"]
    assert "requirements, implementation, testing" in body["messages"][0]["content"]
    user = json.loads(body["messages"][1]["content"])
    assert user["snapshot"]["ticket_id"] == "login"
    response_format = body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["name"] == "hypotheses"
    assert response_format["json_schema"]["strict"] is False
    assert response_format["json_schema"]["schema"] == HypothesisSet.model_json_schema()


async def test_content_in_a_markdown_fence_is_accepted(fake_llm: FakeLLM) -> None:
    answer = json.dumps({"hypotheses": [hypothesis("other", 0.4)]})
    fake_llm.reply = Reply(content=f"```json\n{answer}\n```")
    found = await generate_hypotheses(evidence(), fake_llm.settings())
    assert found.generator == "llm:test-model"
    assert [h.signature for h in found.hypotheses] == ["other"]


async def test_invalid_json_falls_back_to_the_rules(fake_llm: FakeLLM) -> None:
    fake_llm.reply = Reply(content="Sure! Here are my hypotheses: {not json")
    found = await generate_hypotheses(evidence(), fake_llm.settings())
    assert_rules_fallback(found, "llm returned invalid output: not JSON")


async def test_schema_violating_output_falls_back_to_the_rules(fake_llm: FakeLLM) -> None:
    bad = hypothesis("missing_result_submission", 7.0)
    fake_llm.reply = Reply(content=json.dumps({"hypotheses": [bad]}))
    found = await generate_hypotheses(evidence(), fake_llm.settings())
    assert_rules_fallback(found, "llm returned invalid output: hypotheses[0].likelihood")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (json.dumps({"answer": "missing result"}), 'expected an object with a "hypotheses"'),
        (json.dumps({"hypotheses": []}), "no hypotheses"),
        (json.dumps({"hypotheses": [{"signature": "gremlins", "statement": "x"}]}), "signature"),
        ("", "empty message content"),
    ],
)
async def test_other_unusable_answers_fall_back(
    fake_llm: FakeLLM, content: str, reason: str
) -> None:
    fake_llm.reply = Reply(content=content)
    found = await generate_hypotheses(evidence(), fake_llm.settings())
    assert_rules_fallback(found, "llm returned invalid output")
    assert found.fallback_reason is not None and reason in found.fallback_reason


async def test_a_body_without_choices_falls_back(fake_llm: FakeLLM) -> None:
    fake_llm.reply = Reply(raw=b'{"error": {"message": "model overloaded"}}')
    found = await generate_hypotheses(evidence(), fake_llm.settings())
    assert_rules_fallback(found, "llm returned invalid output: no choices[0].message.content")


async def test_http_500_falls_back_to_the_rules(fake_llm: FakeLLM) -> None:
    fake_llm.reply = Reply(status=500, raw=b'{"error": "internal"}')
    found = await generate_hypotheses(evidence(), fake_llm.settings())
    assert_rules_fallback(found, "llm returned HTTP 500")


async def test_a_slow_answer_times_out_and_falls_back(fake_llm: FakeLLM) -> None:
    fake_llm.reply = Reply(
        content=json.dumps({"hypotheses": [hypothesis("other", 0.9)]}), delay_s=10
    )
    found = await generate_hypotheses(evidence(), fake_llm.settings(timeout_s=0.3))
    assert_rules_fallback(found, "llm timed out after 0.3s")


async def test_an_unreachable_server_falls_back(fake_llm: FakeLLM) -> None:
    settings = fake_llm.settings().model_copy(update={"base_url": "http://127.0.0.1:9/v1"})
    found = await generate_hypotheses(evidence(), settings)
    assert_rules_fallback(found, "llm request failed")


async def test_unset_settings_use_the_rules(fake_llm: FakeLLM) -> None:
    found = await generate_hypotheses(evidence(), None)
    assert found.generator == "rules" and found.fallback_reason is None
    assert found.hypotheses[0].recommendations[0].title == SUBMIT_RESULT_TITLE
    assert fake_llm.requests == []


async def test_the_evidence_sent_is_cut_to_the_character_budget(fake_llm: FakeLLM) -> None:
    big = evidence().model_copy(
        update={"progress_notes": [f"note {i} " + "x" * 500 for i in range(2000)]}
    )
    fake_llm.reply = Reply(content=json.dumps({"hypotheses": [hypothesis("other", 0.5)]}))
    await generate_hypotheses(big, fake_llm.settings(max_prompt_chars=20_000))
    user = fake_llm.requests[0]["body"]["messages"][1]["content"]
    assert len(user) <= 20_000
    sent = json.loads(user)
    assert sent["truncated"] is True
    assert sent["progress_notes"][-1].startswith("note 1999 ")  # the newest notes stay


def test_settings_from_the_environment() -> None:
    assert LLMSettings.from_env({}) is None
    assert LLMSettings.from_env({"UNSTUCK_LLM_MODEL": "m"}) is None
    settings = LLMSettings.from_env(
        {
            "UNSTUCK_LLM_BASE_URL": "http://127.0.0.1:11434/v1/",
            "UNSTUCK_LLM_MODEL": "llama3",
            "UNSTUCK_LLM_API_KEY": "key-s3cr3t",
            "UNSTUCK_LLM_TIMEOUT_S": "12.5",
        }
    )
    assert settings is not None
    assert settings.endpoint == "http://127.0.0.1:11434/v1/chat/completions"
    assert (settings.model, settings.api_key, settings.timeout_s) == ("llama3", "key-s3cr3t", 12.5)
    assert "key-s3cr3t" not in repr(settings)
    with pytest.raises(ValueError, match="UNSTUCK_LLM_MODEL"):
        LLMSettings.from_env({"UNSTUCK_LLM_BASE_URL": "http://x/v1"})
    with pytest.raises(ValueError, match="UNSTUCK_LLM_TIMEOUT_S"):
        LLMSettings.from_env(
            {
                "UNSTUCK_LLM_BASE_URL": "http://x",
                "UNSTUCK_LLM_MODEL": "m",
                "UNSTUCK_LLM_TIMEOUT_S": "soon",
            }
        )


async def test_the_hypotheses_activity_heartbeats_while_the_llm_thinks(
    fake_llm: FakeLLM, tmp_path: Any
) -> None:
    """A worker killed during a slow LLM call is noticed by its heartbeat timeout (10 s),
    not after the activity's 3-minute limit: the activity beats every 2 s while it waits."""
    from temporalio.testing import ActivityEnvironment

    from activities.diagnosis import HEARTBEAT_EVERY_S, DiagnosisActivities
    from ledger.store import Ledger
    from workflows import diagnosis as diagnosis_workflow

    fake_llm.reply = Reply(
        content=json.dumps({"hypotheses": [hypothesis("missing_result_submission", 0.9)]}),
        delay_s=2.5 * HEARTBEAT_EVERY_S,
    )
    beats: list[Any] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    acts = DiagnosisActivities(None, ledger, fake_llm.settings(timeout_s=30))  # type: ignore[arg-type]
    found = await env.run(acts.generate_hypotheses, evidence())
    ledger.dispose()
    assert found.generator.startswith("llm")
    assert len(beats) >= 3 and beats[0] == ("generating hypotheses",)
    # ... and the workflow gives it a heartbeat timeout a few beats long.
    source = Path(diagnosis_workflow.__file__).read_text()
    assert "heartbeat_timeout=timedelta(seconds=10)" in source


async def test_the_llm_picks_among_the_same_typed_remedies(fake_llm: FakeLLM) -> None:
    answer = hypothesis("dependency_deadlock", 0.8, title="Redo the mailer setup")
    answer["recommendations"][0].update(remedy="replace_task", replaces="T2")
    fake_llm.reply = Reply(content=json.dumps({"hypotheses": [answer]}))
    found = await generate_hypotheses(evidence(), fake_llm.settings())
    assert found.generator == "llm:test-model"
    [rec] = found.hypotheses[0].recommendations
    assert (rec.remedy, rec.replaces) == ("replace_task", "T2")
    sent = fake_llm.requests[-1]["body"]["messages"][0]["content"]
    assert "replace_task adds it in place of the failed or cancelled task" in sent
