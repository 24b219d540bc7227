"""The evidence size cap: evidence travels in Temporal payloads and LLM prompts.

:func:`fit_evidence` returns evidence whose JSON is at most ``max_bytes`` (256 KB by
default), whatever went in. It gives up detail in order of value:

1. the oldest progress notes and ledger excerpts (lists are kept oldest first);
2. the oldest reviews, notable history events and spans;
3. then every string is cut, every list keeps only its newest entries and every mapping its
   first entries, at stricter and stricter limits; the last level is small by construction.

Whenever something was dropped or cut, ``truncated`` is True. ``size_bytes`` is always the
size of the returned evidence's JSON.
"""

from __future__ import annotations

from typing import Any

import pydantic_core
from pydantic import BaseModel

from models.diagnosis import Evidence

__all__ = ["EVIDENCE_MAX_BYTES", "evidence_size", "fit_evidence"]

#: The default cap (DESIGN §5 evidence, carried in a child workflow's payloads).
EVIDENCE_MAX_BYTES = 256 * 1024

#: Room for the ``size_bytes`` and ``truncated`` fields changing after a measurement.
_SLACK = 64

#: (longest string, newest list entries kept, first mapping entries kept), strictest last.
_SHRINK_LEVELS: tuple[tuple[int, int, int], ...] = (
    (4_000, 100, 500),
    (1_000, 30, 200),
    (300, 15, 60),
    (100, 5, 20),
)


def evidence_size(evidence: Evidence) -> int:
    """Bytes of the evidence's JSON, as the pydantic data converter would send it."""
    return len(evidence.__pydantic_serializer__.to_json(evidence))


def fit_evidence(evidence: Evidence, max_bytes: int = EVIDENCE_MAX_BYTES) -> Evidence:
    """A copy of ``evidence`` whose JSON is ≤ ``max_bytes``; see the module docstring."""
    budget = max(max_bytes - _SLACK, 1)
    size = evidence_size(evidence)
    truncated = evidence.truncated
    if size > budget:
        truncated = True
        # Item sizes are exact (an item and its comma), so only one re-measure is needed.
        for fields in (("progress_notes", "ledger_excerpts"), ("reviews", "spans")):
            if size > budget:
                evidence, freed = _drop_oldest(evidence, fields, size - budget)
                size -= freed
        if size > budget:
            evidence, freed = _drop_oldest_notable(evidence, size - budget)
            size -= freed
        size = evidence_size(evidence)
    for max_chars, max_items, max_keys in _SHRINK_LEVELS:
        if size <= budget:
            break
        candidate = _shrink(evidence, max_chars, max_items, max_keys)
        evidence, size = candidate, evidence_size(candidate)
    evidence = evidence.model_copy(update={"truncated": truncated, "size_bytes": 0})
    # size_bytes is part of what it measures: settle the number of its digits.
    size = evidence_size(evidence)
    while evidence.size_bytes != size:
        evidence = evidence.model_copy(update={"size_bytes": size})
        size = evidence_size(evidence)
    return evidence


def _json_size(value: Any) -> int:
    if isinstance(value, BaseModel):
        return len(value.__pydantic_serializer__.to_json(value))
    return len(pydantic_core.to_json(value))


def _drop_oldest(evidence: Evidence, fields: tuple[str, ...], excess: int) -> tuple[Evidence, int]:
    """Drop the oldest entries of ``fields`` (always from the currently largest list) until
    ``excess`` bytes are freed; returns the evidence and the bytes freed."""
    lists = {name: list(getattr(evidence, name)) for name in fields}
    sizes = {name: [_json_size(item) + 1 for item in items] for name, items in lists.items()}
    totals = {name: sum(values) for name, values in sizes.items()}
    start = dict.fromkeys(fields, 0)
    freed = 0
    while freed < excess:
        candidates = [name for name in fields if start[name] < len(lists[name])]
        if not candidates:
            break
        name = max(candidates, key=lambda n: (totals[n], -fields.index(n)))
        size = sizes[name][start[name]]
        start[name] += 1
        totals[name] -= size
        freed += size
    if not freed:
        return evidence, 0
    update = {name: lists[name][start[name] :] for name in fields}
    return evidence.model_copy(update=update), freed


def _drop_oldest_notable(evidence: Evidence, excess: int) -> tuple[Evidence, int]:
    """Drop the oldest notable history events until ``excess`` bytes are freed."""
    if evidence.history is None or not evidence.history.notable:
        return evidence, 0
    notable = list(evidence.history.notable)
    freed = 0
    while notable and freed < excess:
        freed += _json_size(notable.pop(0)) + 1
    history = evidence.history.model_copy(update={"notable": notable})
    return evidence.model_copy(update={"history": history}), freed


def _cut(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _shrink(value: Any, max_chars: int, max_items: int, max_keys: int) -> Any:
    """``value`` with every string ≤ max_chars, every list ≤ max_items (the newest, i.e.
    the last ones) and every mapping ≤ max_keys entries; models are copied."""
    if isinstance(value, str):
        return _cut(value, max_chars)
    if isinstance(value, BaseModel):
        updates = {
            name: _shrink(getattr(value, name), max_chars, max_items, max_keys)
            for name in type(value).model_fields
        }
        return value.model_copy(update=updates)
    if isinstance(value, list | tuple):
        kept = list(value)[-max_items:] if max_items else []
        items = [_shrink(item, max_chars, max_items, max_keys) for item in kept]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in list(value.items())[:max_keys]:
            new_key = _cut(key, max_chars) if isinstance(key, str) else key
            out.setdefault(new_key, _shrink(item, max_chars, max_items, max_keys))
        return out
    return value
