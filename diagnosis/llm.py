"""The optional LLM hypothesis provider, and the one interface the diagnosis calls.

:func:`generate_hypotheses` asks an OpenAI-compatible chat-completions endpoint for a
:class:`HypothesisSet` (structured output, JSON Schema) when one is configured, and falls
back to the built-in rules whenever it is not configured, times out, fails or answers with
something that is not a valid hypothesis set. The fallback says why in ``fallback_reason``.

Configuration (``LLMSettings.from_env``): ``UNSTUCK_LLM_BASE_URL`` (e.g.
``https://api.openai.com/v1`` or ``http://127.0.0.1:11434/v1``; unset = no LLM),
``UNSTUCK_LLM_MODEL``, ``UNSTUCK_LLM_API_KEY`` (optional), ``UNSTUCK_LLM_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import httpx
from pydantic import BaseModel, Field, ValidationError

from diagnosis.evidence import fit_evidence
from diagnosis.rules import rank, rule_hypotheses
from models.diagnosis import Evidence, Hypothesis, HypothesisSet

__all__ = [
    "LLMError",
    "LLMSettings",
    "build_request",
    "generate_hypotheses",
    "llm_hypotheses",
    "parse_response",
]

log = logging.getLogger("unstuck.diagnosis")

#: Characters of evidence JSON sent in the user message (about 25k tokens).
DEFAULT_PROMPT_CHARS = 100_000
DEFAULT_TIMEOUT_S = 60.0


class LLMSettings(BaseModel):
    """Where the OpenAI-compatible endpoint is and how long to wait for it."""

    base_url: str = Field(min_length=1, description="API root, e.g. https://api.openai.com/v1")
    model: str = Field(min_length=1)
    api_key: str | None = Field(default=None, repr=False)
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0)
    max_prompt_chars: int = Field(default=DEFAULT_PROMPT_CHARS, ge=1_000)

    @property
    def endpoint(self) -> str:
        return f"{self.base_url.rstrip('/')}/chat/completions"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LLMSettings | None:
        """Settings from ``UNSTUCK_LLM_*``; None when ``UNSTUCK_LLM_BASE_URL`` is unset.

        Raises ``ValueError`` when the base URL is set but the model is not, or the timeout
        is not a positive number: a misconfigured provider should fail at start-up, not
        silently fall back on every diagnosis.
        """
        env = os.environ if env is None else env
        base_url = env.get("UNSTUCK_LLM_BASE_URL", "").strip()
        if not base_url:
            return None
        model = env.get("UNSTUCK_LLM_MODEL", "").strip()
        if not model:
            raise ValueError("UNSTUCK_LLM_MODEL is required when UNSTUCK_LLM_BASE_URL is set")
        values: dict[str, Any] = {"base_url": base_url, "model": model}
        if api_key := env.get("UNSTUCK_LLM_API_KEY", "").strip():
            values["api_key"] = api_key
        if timeout := env.get("UNSTUCK_LLM_TIMEOUT_S", "").strip():
            try:
                values["timeout_s"] = float(timeout)
            except ValueError:
                raise ValueError(
                    f"UNSTUCK_LLM_TIMEOUT_S must be a number, not {timeout!r}"
                ) from None
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ValueError(f"invalid UNSTUCK_LLM_* settings: {exc}") from None


class LLMError(Exception):
    """The LLM could not give a usable answer; the message is the fallback reason."""


SYSTEM_PROMPT = """\
You diagnose stuck tickets in Unstuck, a supervisor for autonomous multi-agent work.
A ticket is split into tasks across ordered phases; agents (workers, validators, diagnostic
agents) claim tasks, complete them, and someone must submit the ticket's final result,
which a validator checks against the ticket's result criteria. The ticket below stopped
moving. The user message is the evidence as JSON: a snapshot of the ticket (task counts by
status and phase, recent and problem tasks, agents, results with feedback, earlier
diagnoses), a summary of the ticket workflow's event history, progress notes, ledger
excerpts and reviews. Secrets were replaced by [REDACTED].

Answer with one JSON object matching the given JSON Schema, nothing else:
{"hypotheses": [{"signature", "statement", "likelihood", "evidence", "counterpoints",
"recommendations": [{"title", "description", "phase", "priority", "type", "remedy",
"task_id", "task_ids", "replaces", "agent"}]}]}
- At most 5 hypotheses, most likely first; likelihood is a probability between 0 and 1.
- signature: one of missing_result_submission, premature_completion, validation_loop,
  crash_looping_agent, environment_error, dependency_deadlock, phase_without_tasks,
  validator_unavailable, agent_looping, agent_stalled, task_storm, low_quality_results,
  other. Each agent in the snapshot carries its anomaly score (0-1) and the behaviour
  signals behind it (repetition, stall, creation, quality), its latest notes, and
  "agent_logs" may hold the tail of its process log.
- evidence: concrete facts from the evidence (task ids, counts, quoted feedback);
  counterpoints: facts that speak against the hypothesis.
- recommendations: 1 to 3 recovery tasks an agent can do, each with a short imperative
  title, a description of what to do and how to show it is done, a phase that is one of:
  {phases}, a priority (low, normal, high, critical) and a type (implementation, analysis,
  fix, design, test, documentation, submission). If all work is done but no final result
  was submitted, recommend exactly "Submit final result with evidence" (type submission).
- remedy (default create_task) says what the ticket does with a recommendation:
  create_task adds it as a task; retry_task puts the failed task task_id back to pending
  with fresh retries; replace_task adds it in place of the failed or cancelled task
  replaces (the tasks waiting on that one wait on the new one); spawn_agent starts the
  snapshot's on-demand agent named agent (see "spawnable"); reassign_task takes the held
  task task_id from its agent for another one; interrupt_agent makes the agent with id
  agent drop its tasks and gives it the description as feedback; restart_agent restarts
  the agent with id agent; quarantine_agent takes the agent with id agent out of the work
  (no more tasks, its process stopped, a person told) when other agents can do it;
  cancel_tasks cancels the pending tasks task_ids (duplicates, a
  storm); escalate hands the ticket to a person when no agent can fix it (e.g. no
  validator can be had). Do not repeat a plan an earlier diagnosis already ran without
  success (its "plan" and "outcome"): take the next rung (interrupt, then restart, then
  escalate).
"""


def build_request(evidence: Evidence, llm: LLMSettings) -> dict[str, Any]:
    """The chat-completions request body for ``evidence``."""
    phases = ", ".join(p.name for p in evidence.snapshot.phases) or "implementation"
    # Shrink structurally first (oldest notes/excerpts go), then cut as a last resort.
    fitted = fit_evidence(evidence, llm.max_prompt_chars)
    content = fitted.model_dump_json(exclude_defaults=True)
    if len(content) > llm.max_prompt_chars:
        content = content[: llm.max_prompt_chars] + " …[truncated]"
    return {
        "model": llm.model,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT.replace("{phases}", phases)},
            {"role": "user", "content": content},
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "hypotheses",
                "schema": HypothesisSet.model_json_schema(),
                "strict": False,
            },
        },
        "temperature": 0,
    }


_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def _short(error: Exception | str, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_response(body: Any, model: str) -> HypothesisSet:
    """The hypothesis set in a chat-completions response body; raises :class:`LLMError`.

    Every hypothesis must validate; the set is then re-ranked and capped at five, whatever
    order or number the model returned.
    """
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LLMError(
            "llm returned invalid output: no choices[0].message.content in the response"
        ) from None
    if not isinstance(content, str) or not content.strip():
        raise LLMError("llm returned invalid output: empty message content")
    if fenced := _FENCE.match(content):
        content = fenced.group(1)
    try:
        data = json.loads(content)
    except json.JSONDecodeError as exc:
        raise LLMError(f"llm returned invalid output: not JSON ({_short(exc)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("hypotheses"), list):
        raise LLMError('llm returned invalid output: expected an object with a "hypotheses" list')
    raw = data["hypotheses"]
    if not raw:
        raise LLMError("llm returned invalid output: no hypotheses")
    hypotheses: list[Hypothesis] = []
    for index, item in enumerate(raw):
        try:
            hypotheses.append(Hypothesis.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise LLMError(
                f"llm returned invalid output: hypotheses[{index}]"
                f"{'.' + where if where else ''}: {_short(first['msg'], 200)}"
            ) from None
    return HypothesisSet(hypotheses=rank(hypotheses), generator=f"llm:{model}")


async def llm_hypotheses(
    evidence: Evidence, llm: LLMSettings, *, client: httpx.AsyncClient | None = None
) -> HypothesisSet:
    """Ask the LLM; raises :class:`LLMError` (message = fallback reason) on any failure."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if llm.api_key:
        headers["Authorization"] = f"Bearer {llm.api_key}"
    body = build_request(evidence, llm)
    own = client is None
    http = client or httpx.AsyncClient(timeout=httpx.Timeout(llm.timeout_s))
    try:
        # httpx timeouts are per read/write; the overall deadline bounds a slow drip too.
        async with asyncio.timeout(llm.timeout_s):
            response = await http.post(llm.endpoint, json=body, headers=headers)
    except (TimeoutError, httpx.TimeoutException):
        raise LLMError(f"llm timed out after {llm.timeout_s}s") from None
    except httpx.HTTPError as exc:
        raise LLMError(f"llm request failed: {type(exc).__name__}: {_short(exc)}") from None
    finally:
        if own:
            await http.aclose()
    if response.status_code != 200:
        raise LLMError(f"llm returned HTTP {response.status_code}: {_short(response.text, 200)}")
    try:
        payload = response.json()
    except ValueError as exc:
        raise LLMError(
            f"llm returned invalid output: response is not JSON ({_short(exc)})"
        ) from None
    return parse_response(payload, llm.model)


async def generate_hypotheses(evidence: Evidence, llm: LLMSettings | None) -> HypothesisSet:
    """Hypotheses for ``evidence``: from the LLM when configured, else (or on failure) rules."""
    if llm is None:
        return rule_hypotheses(evidence)
    try:
        return await llm_hypotheses(evidence, llm)
    except LLMError as exc:
        reason = str(exc)
    except Exception as exc:  # the rules are the fallback whatever went wrong
        log.exception("diagnosis %s: the llm provider failed unexpectedly", evidence.run_id)
        reason = f"llm provider error: {type(exc).__name__}: {_short(exc)}"
    log.warning("diagnosis %s: falling back to the rules: %s", evidence.run_id, reason)
    return rule_hypotheses(evidence).model_copy(update={"fallback_reason": reason})
