"""Secret redaction for everything a diagnosis collects (DESIGN §5: "Secrets redacted").

Evidence leaves the ticket: it is stored in the diagnosis's history, the ledger and may be
sent to an LLM. So every string in it goes through :func:`redact` first. Recognised:

* provider tokens: OpenAI-style ``sk-…`` / ``sk-proj-…``, AWS access key ids ``AKIA…``,
  GitHub ``ghp_ / gho_ / ghs_ / ghu_ / ghr_ / github_pat_``, Slack ``xox[abpors]-``,
  Stripe ``sk_live_ / rk_live_``, Google ``AIza…``;
* JSON Web Tokens (``eyJ….eyJ….…``), ``Bearer <token>``, ``Authorization: …`` headers;
* ``key=value`` / ``key: value`` (also quoted, as in JSON) where the key contains password,
  passwd, secret, token, api key, access key or private key: the key stays visible
  (``password=[REDACTED]``) so the evidence still says *what* was there;
* PEM private key blocks (also when cut off before their END line);
* credentials in URLs (``scheme://user:password@host`` keeps the user).

Redaction is idempotent: redacting redacted text changes nothing and counts nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel

__all__ = ["REDACTED", "redact", "redact_model", "redact_value"]

REDACTED = "[REDACTED]"

_Replacer = Callable[[re.Match[str]], str | None]
"""Returns the replacement, or None to leave the match alone (not counted)."""

_NOT_REDACTED = r"(?!\[REDACTED)"


def _whole(match: re.Match[str]) -> str:
    return REDACTED


def _pem(match: re.Match[str]) -> str:
    return "[REDACTED PRIVATE KEY]"


def _url_credentials(match: re.Match[str]) -> str:
    return f"{match['scheme']}{match['user']}:{REDACTED}@"


def _authorization(match: re.Match[str]) -> str:
    scheme = f"{match['scheme']} " if match["scheme"] else ""
    return f"{match['key']}{scheme}{REDACTED}"


def _bearer(match: re.Match[str]) -> str:
    return f"{match['scheme']} {REDACTED}"


def _key_value(match: re.Match[str]) -> str | None:
    value = match["value"]
    quote = value[0] if value[0] in "\"'" else ""
    inner = value[1:-1] if quote else value
    if not inner or inner == REDACTED:
        return None
    return f"{match['key']}{match['sep']}{quote}{REDACTED}{quote}"


_SECRET_KEY = (
    r"(?:password|passwd|pwd|passphrase|secret|token|api[_-]?key|access[_-]?key"
    r"|private[_-]?key)"
)

#: (name, pattern, replacer), applied in this order: specific shapes before generic ones.
_RULES: tuple[tuple[str, re.Pattern[str], _Replacer], ...] = (
    (
        "pem_private_key",
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            r"[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)"
        ),
        _pem,
    ),
    (
        "url_credentials",
        re.compile(
            r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s:/@]*):"
            + _NOT_REDACTED
            + r"(?P<password>[^\s@/]+)@"
        ),
        _url_credentials,
    ),
    (
        "authorization_header",
        re.compile(
            r"(?P<key>\b(?:proxy-)?authorization[\"']?[ \t]*[:=][ \t]*[\"']?)"
            r"(?:(?P<scheme>bearer|basic|token|digest|negotiate|ntlm|apikey)[ \t]+)?+"
            + _NOT_REDACTED
            + r"(?P<value>[^\s\"',;]+)",
            re.IGNORECASE,
        ),
        _authorization,
    ),
    (
        "bearer_token",
        re.compile(
            r"\b(?P<scheme>bearer)[ \t]+" + _NOT_REDACTED + r"[A-Za-z0-9\-._~+/]{8,}=*",
            re.IGNORECASE,
        ),
        _bearer,
    ),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), _whole),
    # sk-<16+ word chars>, optionally sk-proj-/sk-svcacct-…: not slugs like sk-learn-tools.
    ("openai_key", re.compile(r"\bsk-(?:[a-z]+-)?[A-Za-z0-9_]{16,}[A-Za-z0-9_-]*"), _whole),
    ("stripe_key", re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"), _whole),
    ("aws_access_key_id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), _whole),
    (
        "github_token",
        re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
        _whole,
    ),
    ("slack_token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{8,}"), _whole),
    ("google_api_key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), _whole),
    (
        "secret_key_value",
        re.compile(
            r"(?P<key>\b[\w.-]*?" + _SECRET_KEY + r"[\w-]*)"
            r"(?P<sep>[\"']?[ \t]*[:=][ \t]*)"
            r"(?P<value>\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|" + _NOT_REDACTED + r"[^\s,;&\"'<>{}]+)",
            re.IGNORECASE,
        ),
        _key_value,
    ),
)


def redact(text: str) -> tuple[str, int]:
    """``text`` with every recognised secret replaced, and how many were replaced."""
    if not text:
        return text, 0
    count = 0

    def counting(replacer: _Replacer) -> Callable[[re.Match[str]], str]:
        def replace(match: re.Match[str]) -> str:
            nonlocal count
            new = replacer(match)
            if new is None:
                return match.group(0)
            count += 1
            return new

        return replace

    for _name, pattern, replacer in _RULES:
        text = pattern.sub(counting(replacer), text)
    return text, count


T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def redact_value(value: T) -> tuple[T, int]:
    """``value`` with every string in it redacted (models, lists, tuples, dict keys/values).

    Models are copied without re-validation (a redacted string may be longer than a field
    allows); values with nothing to redact are returned as the same object.
    """
    new, count = _walk(value)
    return new, count


def redact_model(model: M) -> tuple[M, int]:
    """A copy of ``model`` with every string in it redacted, and the number of redactions."""
    return redact_value(model)


def _walk(value: Any) -> tuple[Any, int]:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, BaseModel):
        updates: dict[str, Any] = {}
        total = 0
        for name in type(value).model_fields:
            new, count = _walk(getattr(value, name))
            if count:
                updates[name] = new
                total += count
        return (value.model_copy(update=updates) if updates else value), total
    if isinstance(value, list | tuple):
        items: list[Any] = []
        total = 0
        for item in value:
            new, count = _walk(item)
            items.append(new)
            total += count
        if not total:
            return value, 0
        return (items if isinstance(value, list) else tuple(items)), total
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        total = 0
        for key, item in value.items():
            new_key, key_count = _walk(key) if isinstance(key, str) else (key, 0)
            new_item, item_count = _walk(item)
            out.setdefault(new_key, new_item)
            total += key_count + item_count
        return (out if total else value), total
    return value, 0
