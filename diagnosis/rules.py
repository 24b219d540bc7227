"""The built-in rule engine: known failure signatures over :class:`Evidence` (DESIGN §5).

Each rule is a pure function ``Evidence -> Hypothesis | None`` that recognises one signature
and cites the concrete facts it saw (task ids, counts, feedback). :func:`rule_hypotheses`
runs them all, lowers the likelihood of what earlier diagnoses already tried in vain, ranks
(likelihood, then signature order, then statement: deterministic) and keeps five. When no
rule matches it returns one low-likelihood ``other`` hypothesis, so a recovery plan always
exists. :func:`plan_recovery` turns ranked hypotheses into 1–5 recovery tasks.

No clock, no I/O: "now" is the snapshot's ``taken_at``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Literal, get_args

from core.behaviour import family as title_family
from core.state import ACTIVE_STATUSES, WORKED_STATUSES
from models.diagnosis import (
    BEHAVIOUR_SIGNATURES,
    MAX_HYPOTHESES,
    MAX_RECOVERY_TASKS,
    Evidence,
    Hypothesis,
    HypothesisSet,
    Recommendation,
    RecoveryPlan,
    Remedy,
    Signature,
    SnapshotAgent,
    SnapshotDiagnosis,
    SnapshotTask,
    TicketSnapshot,
)

__all__ = [
    "RULES",
    "SIGNATURE_ORDER",
    "SUBMIT_RESULT_TITLE",
    "agent_anomaly",
    "crash_looping_agent",
    "dependency_deadlock",
    "environment_error",
    "missing_result_submission",
    "other",
    "phase_without_tasks",
    "plan_recovery",
    "premature_completion",
    "rank",
    "rule_hypotheses",
    "unclaimed_work",
    "validation_loop",
    "validator_unavailable",
]

#: The title of the recovery task for the seed scenario (DESIGN §10), exactly.
SUBMIT_RESULT_TITLE = "Submit final result with evidence"
INVESTIGATE_TITLE = "Investigate why the ticket stopped moving"

#: Signatures whose remedies act on agents: their plan is theirs alone (no task of another
#: hypothesis mixed in), so that its outcome says whether acting on those agents helped.
FOCUSED_SIGNATURES: frozenset[str] = frozenset({*BEHAVIOUR_SIGNATURES, "unclaimed_work"})
#: Tie-break order of equally likely hypotheses: the order of ``Signature``.
SIGNATURE_ORDER: tuple[str, ...] = get_args(Signature)

RecommendationType = Literal[
    "implementation", "analysis", "fix", "design", "test", "documentation", "submission"
]
RECOMMENDATION_TYPES: frozenset[str] = frozenset(get_args(RecommendationType))
Priority = Literal["low", "normal", "high", "critical"]

#: Agent states in which an agent can still do work.
LIVE_AGENT_STATES: frozenset[str] = frozenset({"spawning", "idle", "running", "degraded"})
REVIEW_STATUSES: frozenset[str] = frozenset({"under_review", "validation_in_progress"})
DEAD_TASK_STATUSES: frozenset[str] = frozenset({"failed", "cancelled"})

#: A repeated signature whose earlier recovery failed loses this much likelihood per failure.
REPEAT_PENALTY = 0.15
#: Word overlap above which an earlier top statement counts as the same hypothesis.
SAME_STATEMENT_OVERLAP = 0.6
#: Hypotheses below this share of the top one contribute no recovery tasks.
PLAN_RELATIVE_CUTOFF = 0.5
PLAN_ABSOLUTE_CUTOFF = 0.3

# ---- small text helpers -------------------------------------------------------------------

_STOPWORD_TEXT = (
    "the and for are but not you all any can had has have her was one our out its his how "
    "its may new now see two who did get got let put say she too use with this that from "
    "they them then than there their what when which while will would should could into "
    "onto over under about after before again also been being does doing done each just "
    "more most must only other same some such very your yours here where why"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[a-z0-9]+")


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _tokens(text: str) -> set[str]:
    """Content words of ``text``: lower-case, stemmed, no stopwords or short words."""
    return {_stem(w) for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOPWORDS}


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def _clip(text: str, limit: int) -> str:
    """``text`` stripped and cut to ``limit`` characters (an ellipsis marks the cut)."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _line(text: str, limit: int = 200) -> str:
    """``text`` on one line, clipped."""
    return _clip(" ".join(text.split()), limit)


def _quote(text: str, limit: int = 240) -> str:
    return f'"{_line(text, limit)}"'


def _at(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "never"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _n(count: int, noun: str, *, verb: bool = True) -> str:
    """``1 task is`` / ``3 tasks are`` (``verb=False``: ``1 task`` / ``3 tasks``)."""
    text = f"{count} {noun}" + ("" if count == 1 else "s")
    return text + ((" is" if count == 1 else " are") if verb else "")


def _ids(ids: Iterable[str], limit: int = 8) -> str:
    items = list(ids)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _criteria_named(feedback: str, criteria: Sequence[str]) -> list[str]:
    """The result criteria a piece of feedback talks about (text or most content words)."""
    if not feedback:
        return []
    lowered = " ".join(feedback.lower().split())
    words = _tokens(feedback)
    named = []
    for criterion in criteria:
        text = " ".join(criterion.lower().split())
        wanted = _tokens(criterion)
        if (text and text in lowered) or (wanted and len(wanted & words) / len(wanted) >= 0.75):
            named.append(criterion)
    return named


_UNMET = re.compile(
    r"\b(not met|unmet|missing|lacks?|does ?n[o']t|do ?n[o']t|is ?n[o']t|not (?:yet )?"
    r"(?:done|implemented|covered|tested|addressed|satisfied|shown|demonstrated|passing)|"
    r"fails?|failing|failed|incomplete|no evidence|without|broken)\b",
    re.IGNORECASE,
)

# ---- snapshot helpers ----------------------------------------------------------------------


def _known_tasks(snapshot: TicketSnapshot) -> dict[str, SnapshotTask]:
    """Every task the snapshot shows (problem and recent tasks), oldest update first."""
    tasks = {t.id: t for t in snapshot.problem_tasks}
    tasks.update({t.id: t for t in snapshot.recent_tasks})
    return dict(sorted(tasks.items(), key=lambda kv: (kv[1].updated_at, _task_order(kv[0]))))


def _task_order(task_id: str) -> tuple[int, str]:
    digits = re.sub(r"\D", "", task_id)
    return (int(digits) if digits else 0, task_id)


def _phase_names(snapshot: TicketSnapshot) -> list[str]:
    return [p.name for p in snapshot.phases]


def _last_phase(snapshot: TicketSnapshot) -> str:
    names = _phase_names(snapshot)
    return names[-1] if names else "implementation"


def _current_phase(snapshot: TicketSnapshot) -> str:
    """The first phase with unfinished tasks, else the last phase."""
    for name in _phase_names(snapshot):
        counts = snapshot.counts_by_phase.get(name, {})
        if any(n for status, n in counts.items() if status in ACTIVE_STATUSES):
            return name
    return _last_phase(snapshot)


def _phase_for(text: str, snapshot: TicketSnapshot) -> str:
    """The phase whose name, description and done definitions share most words with text."""
    words = _tokens(text)
    best, best_score = _last_phase(snapshot), 0
    for phase in snapshot.phases:
        about = _tokens(" ".join([phase.name, phase.description, *phase.done_definitions]))
        score = len(words & about)
        if score > best_score:
            best, best_score = phase.name, score
    return best


def _count(snapshot: TicketSnapshot, statuses: Iterable[str]) -> int:
    return sum(snapshot.counts_by_status.get(s, 0) for s in statuses)


def _active(snapshot: TicketSnapshot) -> int:
    return _count(snapshot, ACTIVE_STATUSES)


def _idle_seconds(evidence: Evidence) -> float:
    snapshot = evidence.snapshot
    return (snapshot.taken_at - snapshot.last_activity_at).total_seconds()


def _phase_totals(snapshot: TicketSnapshot) -> dict[str, int]:
    totals = {
        name: sum(snapshot.counts_by_phase.get(name, {}).values())
        for name in _phase_names(snapshot)
    }
    for name, counts in snapshot.counts_by_phase.items():
        totals.setdefault(name, sum(counts.values()))
    return totals


def _counts_line(snapshot: TicketSnapshot) -> str:
    parts = [f"{n} {status}" for status, n in sorted(snapshot.counts_by_status.items()) if n]
    return f"{snapshot.total_tasks} tasks: " + (", ".join(parts) if parts else "none")


def _task_label(task: SnapshotTask) -> str:
    return f"{task.id} {_quote(task.title, 80)}"


def _rec_type(value: str, default: RecommendationType = "fix") -> RecommendationType:
    if value in RECOMMENDATION_TYPES:
        return value  # type: ignore[return-value]
    return default


def _phase_task_type(phase: str) -> RecommendationType:
    name = phase.lower()
    if "test" in name or "valid" in name or "qa" in name:
        return "test"
    if "require" in name or "design" in name or "spec" in name or "plan" in name:
        return "design"
    if "doc" in name:
        return "documentation"
    return "implementation"


def _recommend(
    title: str,
    description: str,
    phase: str,
    *,
    priority: Priority = "high",
    type: RecommendationType = "fix",
    replaces: str | None = None,
    remedy: Remedy | None = None,
    agent: str | None = None,
    task_id: str | None = None,
    task_ids: Sequence[str] = (),
) -> Recommendation:
    return Recommendation(
        title=_line(title, 200),
        description=_clip(description, 4000),
        phase=phase,
        priority=priority,
        type=type,
        remedy=remedy or ("replace_task" if replaces else "create_task"),
        replaces=replaces,
        agent=agent,
        task_id=task_id,
        task_ids=list(task_ids)[:500],
    )


def _hypothesis(
    signature: Signature,
    statement: str,
    likelihood: float,
    evidence: Sequence[str],
    counterpoints: Sequence[str],
    recommendations: Sequence[Recommendation],
) -> Hypothesis:
    return Hypothesis(
        signature=signature,
        statement=_clip(statement, 1000),
        likelihood=round(min(1.0, max(0.0, likelihood)), 3),
        evidence=[_clip(e, 1000) for e in evidence if e][:20],
        counterpoints=[_clip(c, 1000) for c in counterpoints if c][:20],
        recommendations=list(recommendations)[:5],
    )


def _criteria_text(snapshot: TicketSnapshot) -> str:
    if not snapshot.result_criteria:
        return f"the goal: {_quote(snapshot.goal or snapshot.title)}"
    return "; ".join(f"{i}. {c}" for i, c in enumerate(snapshot.result_criteria, 1))


# ---- the rules -------------------------------------------------------------------------------


def missing_result_submission(evidence: Evidence) -> Hypothesis | None:
    """All (or nearly all) tasks are done, none is active, yet no final result was submitted."""
    s = evidence.snapshot
    done = s.counts_by_status.get("done", 0)
    if s.total_tasks == 0 or _active(s) or s.results or s.validated_version is not None:
        return None
    ratio = done / s.total_tasks
    if ratio < 0.8:
        return None
    likelihood = 0.55 + 0.4 * (ratio - 0.8) / 0.2
    totals = _phase_totals(s)
    phase_parts = ", ".join(
        f"{name} {s.counts_by_phase.get(name, {}).get('done', 0)}/{totals[name]}"
        for name in totals
        if totals[name]
    )
    done_tasks = [t for t in _known_tasks(s).values() if t.status == "done"]
    support = [
        f"{done} of {s.total_tasks} tasks are done across {len([n for n in totals.values() if n])}"
        f" phases ({phase_parts})",
        "no task is active (pending, assigned, running, under review or needs work)",
        "no final result was ever submitted (0 result versions)",
        f"no task activity for {_duration(_idle_seconds(evidence))} "
        f"(last at {_at(s.last_activity_at)})",
    ]
    if done_tasks:
        support.append(
            "latest completed tasks: " + ", ".join(_task_label(t) for t in done_tasks[-3:])
        )
    if s.result_criteria:
        support.append(f"result criteria waiting to be shown met: {_criteria_text(s)}")
    counter = []
    dead = _count(s, DEAD_TASK_STATUSES)
    if dead:
        counter.append(f"{_n(dead, 'task')} failed or were cancelled; the work may be incomplete")
    unfinished = [
        p.name
        for p in s.phases
        if p.required and not s.counts_by_phase.get(p.name, {}).get("done", 0)
    ]
    if unfinished:
        likelihood -= 0.1
        counter.append(f"required phases without a done task: {', '.join(unfinished)}")
    evidence_from = ", ".join(t.id for t in done_tasks[-5:]) or "the completed tasks"
    recommendation = _recommend(
        SUBMIT_RESULT_TITLE,
        f"Every task of ticket {s.ticket_id} ({s.title}) is done, but no final result was "
        f"submitted, so nothing can be validated and the ticket cannot finish. Gather "
        f"evidence that each result criterion is met ({_criteria_text(s)}) from the "
        f"completed tasks' results (e.g. {evidence_from}), then submit the final result "
        f"with that evidence (submit_result).",
        _last_phase(s),
        priority="high",
        type="submission",
    )
    return _hypothesis(
        "missing_result_submission",
        f"The work on {_quote(s.title, 120)} is finished ({done}/{s.total_tasks} tasks done) "
        f"but nobody submitted the ticket's final result, so it can never be validated and "
        f"the ticket does not complete.",
        likelihood,
        support,
        counter,
        [recommendation],
    )


def premature_completion(evidence: Evidence) -> Hypothesis | None:
    """The latest final result was rejected for criteria it does not meet yet."""
    s = evidence.snapshot
    if not s.results:
        return None
    latest = max(s.results, key=lambda r: r.version)
    feedback = latest.feedback or ""
    if latest.status != "rejected":
        return None
    named = _criteria_named(feedback, s.result_criteria)
    unmet = _UNMET.search(feedback)
    if not named and not unmet:
        return None
    likelihood = 0.8 + 0.05 * min(len(named) - 1, 2) if named else 0.6
    support = [
        f"result v{latest.version} by {latest.agent_id} was rejected"
        f"{' by ' + latest.validator_id if latest.validator_id else ''}: {_quote(feedback, 400)}",
    ]
    if named:
        support.append("the feedback names result criteria: " + "; ".join(named))
    if unmet:
        support.append(f"the feedback says something is unmet ({_quote(unmet.group(0), 40)})")
    support.append(
        f"{_counts_line(s)}; no result submitted after v{latest.version} "
        f"(at {_at(latest.submitted_at)})"
    )
    counter = []
    active = _active(s)
    if active:
        likelihood -= 0.15
        counter.append(f"{_n(active, 'task')} still active; the gap may already be in the works")
    recs = [
        _recommend(
            f"Meet result criterion: {criterion}",
            f"Result v{latest.version} was rejected: {_quote(feedback, 1000)}. Make the work "
            f"meet the criterion {_quote(criterion)} and record evidence (commands run, "
            f"files changed, test output) for the next result.",
            _phase_for(criterion, s),
            type="test" if "test" in criterion.lower() else "fix",
        )
        for criterion in named[:3]
    ]
    if not recs:
        recs.append(
            _recommend(
                f"Address the validator's feedback on result v{latest.version}",
                f"Result v{latest.version} was rejected: {_quote(feedback, 1000)}. Close the "
                f"gaps it names and record evidence for the next result.",
                _phase_for(feedback, s),
            )
        )
    recs.append(
        _recommend(
            "Resubmit final result with evidence",
            f"After the gaps are closed, gather evidence that each result criterion is met "
            f"({_criteria_text(s)}), explicitly answering the feedback on v{latest.version}, "
            f"and submit a new final result version.",
            _last_phase(s),
            type="submission",
        )
    )
    what = "; ".join(named) if named else "its result criteria"
    return _hypothesis(
        "premature_completion",
        f"The final result v{latest.version} was submitted before the work met {what}; the "
        f"validator rejected it and nobody has closed the gap or resubmitted.",
        likelihood,
        support,
        counter,
        recs,
    )


#: Every version of the final result is one subject: rejecting v1 and v2 alike is a loop.
FINAL_RESULT = "the final result"


class _Rejection:
    """One rejected review (of a final result or a task iteration), for loop detection."""

    def __init__(
        self, label: str, subject: str, feedback: str, at: datetime, phase: str | None
    ) -> None:
        self.label = label
        self.subject = subject
        self.feedback = feedback
        self.at = at
        self.phase = phase
        self.words = _tokens(feedback)


def _rejections(evidence: Evidence) -> list[_Rejection]:
    s = evidence.snapshot
    tasks = _known_tasks(s)
    found: list[_Rejection] = []
    versions = set()
    for result in s.results:
        if result.status == "rejected" and result.feedback:
            versions.add(str(result.version))
            found.append(
                _Rejection(
                    f"result v{result.version}",
                    FINAL_RESULT,
                    result.feedback,
                    result.submitted_at,
                    None,
                )
            )
    for review in evidence.reviews:
        if review.passed or not review.feedback:
            continue
        if review.subject_kind == "result":
            if review.subject_id in versions:
                continue
            versions.add(review.subject_id)
            label = f"result v{review.subject_id}"
            phase = None
        else:
            label = f"task {review.subject_id} iteration {review.iteration}"
            task = tasks.get(review.subject_id)
            phase = task.phase if task is not None else None
        found.append(
            _Rejection(
                label,
                FINAL_RESULT if review.subject_kind == "result" else f"task {review.subject_id}",
                review.feedback,
                review.created_at,
                phase,
            )
        )
    return sorted(found, key=lambda r: (r.at, r.label))


def validation_loop(evidence: Evidence) -> Hypothesis | None:
    """Two or more rejections whose feedback names the same criterion or says the same."""
    s = evidence.snapshot
    rejections = _rejections(evidence)
    if len(rejections) < 2:
        return None
    named = {id(r): set(_criteria_named(r.feedback, s.result_criteria)) for r in rejections}

    def similar(a: _Rejection, b: _Rejection) -> bool:
        return bool(named[id(a)] & named[id(b)]) or _jaccard(a.words, b.words) >= 0.5

    groups = [(a, [b for b in rejections if b is a or similar(a, b)]) for a in rejections]
    anchor, group = max(groups, key=lambda g: len(g[1]))  # the earliest of equal groups
    if len(group) < 2:
        return None
    shared = set.intersection(*(named[id(r)] for r in group))
    criterion = next((c for c in s.result_criteria if c in shared), None)
    subjects = sorted({r.subject for r in group})
    likelihood = 0.6 + 0.1 * min(len(group) - 2, 2)
    if criterion is not None:
        likelihood += 0.1
    if len(subjects) == 1:
        likelihood += 0.05
    if criterion is not None:
        gist = criterion
        reason = f"criterion {_quote(criterion)}"
    else:
        gist = _line(group[-1].feedback.splitlines()[0] if group[-1].feedback else "", 80)
        overlap = min(_jaccard(anchor.words, b.words) for b in group if b is not anchor)
        reason = f"feedback similar to {anchor.label}'s (≥{int(overlap * 100)}% word overlap)"
    support = [f"{r.label} rejected at {_at(r.at)}: {_quote(r.feedback, 200)}" for r in group[-6:]]
    support.append(f"{len(group)} rejections share {reason}")
    counter = []
    if len(subjects) > 1:
        counter.append(
            "the rejections concern different subjects ("
            + ", ".join(subjects)
            + "); a strict validator rather than a loop is possible"
        )
    phase = next((r.phase for r in reversed(group) if r.phase), None) or _phase_for(gist, s)
    quotes = "; ".join(f"{r.label}: {_quote(r.feedback, 300)}" for r in group[-4:])
    recs = [
        _recommend(
            f"Fix the recurring validation failure: {gist}",
            f"{len(group)} reviews rejected the work for the same reason ({quotes}). Compare "
            f"the rejected attempts, find why each fix misses it, fix the root cause and "
            f"include evidence that answers this feedback in the next submission.",
            phase,
        ),
        _recommend(
            f"Clarify what the validator expects for: {gist}",
            "Write down the precise acceptance check the validator applies (commands, files, "
            "expected output) and compare it with the result criteria; if they disagree or the "
            "criterion is ambiguous, say so in the task result so the operator can decide.",
            phase,
            priority="normal",
            type="analysis",
        ),
    ]
    return _hypothesis(
        "validation_loop",
        f"Validation is looping: {len(group)} reviews rejected the work for the same reason "
        f"({reason}), and each new attempt repeats the gap instead of fixing it.",
        likelihood,
        support,
        counter,
        recs,
    )


def _agent_score(agent: SnapshotAgent) -> float:
    if agent.state == "quarantined":
        score = 0.8
    elif agent.restarts >= 3:
        score = 0.75
    elif agent.restarts >= 2:
        score = 0.6
    else:  # unresponsive
        score = 0.5
    return score + (0.05 if agent.tasks else 0.0)


def crash_looping_agent(evidence: Evidence) -> Hypothesis | None:
    """An agent restarted twice or more, or quarantined / unresponsive."""
    s = evidence.snapshot
    flagged = [a for a in s.agents if a.restarts >= 2 or a.state in ("quarantined", "unresponsive")]
    if not flagged:
        return None
    flagged.sort(key=lambda a: (-_agent_score(a), -a.restarts, a.id))
    worst = flagged[0]
    likelihood = _agent_score(worst) + 0.05 * min(len(flagged) - 1, 2)
    tasks = _known_tasks(s)
    support = [
        f"agent {a.id} {_quote(a.name, 60)} ({a.kind}): state {a.state}, {a.restarts} restarts, "
        f"last heartbeat {_at(a.last_heartbeat_at)}, holds "
        + (_ids(a.tasks) if a.tasks else "no tasks")
        for a in flagged[:5]
    ]
    counter = []
    healthy = [a for a in s.agents if a.state in LIVE_AGENT_STATES and a not in flagged]
    if healthy:
        counter.append(f"{_n(len(healthy), 'other agent')} alive ({_ids(a.id for a in healthy)})")
    if worst.restarts < 2:
        counter.append(f"agent {worst.id} was never restarted; it may only be slow or stalled")
    held = [tasks[t] for t in worst.tasks if t in tasks]
    phase = Counter(t.phase for t in held).most_common(1)[0][0] if held else _current_phase(s)
    what = f"restarted {worst.restarts} times" if worst.restarts else "stopped answering"
    recs = [
        _recommend(
            f"Find why agent {worst.name} keeps crashing",
            f"Agent {worst.id} ({worst.name}, {worst.kind}) was {what} and is now {worst.state}. "
            f"Read its logs and progress notes, find the cause (a crash, a resource limit, "
            f"bad input in a task such as {_ids(worst.tasks) or 'its last task'}) and report it.",
            phase,
            type="analysis",
        ),
        _recommend(
            f"Fix the crash of agent {worst.name}",
            f"Fix the cause found for agent {worst.id} so its work "
            f"({_ids(worst.tasks) or 'its tasks'}) can continue; if one task triggers the "
            f"crash, split or rewrite that task.",
            phase,
        ),
    ]
    more = f" ({len(flagged)} agents are affected)" if len(flagged) > 1 else ""
    return _hypothesis(
        "crash_looping_agent",
        f"Agent {worst.name} ({worst.id}) is crash-looping: {what}, now {worst.state}; the work "
        f"it holds cannot progress{more}.",
        likelihood,
        support,
        counter,
        recs,
    )


_ERROR_LINE = re.compile(r"^[\w.]*(?:Error|Exception|Exit|Failure)\b")
_ERRORISH = re.compile(
    r"\b(error|exception|not found|no such|denied|refused|fatal|failed|cannot|can't|unable|"
    r"timed? ?out|missing)\b",
    re.IGNORECASE,
)
#: Errors about a credential or an account: the environment, but not one an agent can fix.
_CREDENTIALS = re.compile(
    r"(api[ _-]?key|unauthori[sz]ed|authenticat|please run /login|not logged in|"
    r"\b401\b|\b403\b|forbidden|invalid token|expired token|quota|billing|credit balance)",
    re.IGNORECASE,
)
_ENVIRONMENTAL = re.compile(
    r"(modulenotfound|importerror|no module named|command not found|not installed|no such file|"
    r"permission denied|connection refused|econnrefused|could not resolve|name or service not "
    r"known|no space left|enospc|out of memory|certificate|ssl|timed? ?out|cannot find|"
    r"not found in path|rate limit|quota|unauthori[sz]ed|forbidden)",
    re.IGNORECASE,
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:~|\.{1,2})?(?:[\\/][\w.\-@+~]+){2,}[\\/]?")
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b")
_NUMBER = re.compile(r"\d+")


def error_line(reason: str) -> str:
    """The line of a failure reason that names the error, normalised for comparison.

    Python-style ``SomeError: …`` lines win (the last one, as in a traceback), then the last
    line that sounds like an error, then the first line. Paths, uuids, hex and numbers are
    replaced by placeholders, so the same error from different places compares equal.
    """
    lines = [line.strip() for line in _ANSI.sub("", reason).splitlines() if line.strip()]
    if not lines:
        return ""
    chosen = next((line for line in reversed(lines) if _ERROR_LINE.match(line)), None)
    chosen = chosen or next((line for line in reversed(lines) if _ERRORISH.search(line)), lines[0])
    chosen = _UUID.sub("<uuid>", chosen)
    chosen = _PATH.sub("<path>", chosen)
    chosen = _HEX.sub("<hex>", chosen)
    chosen = _NUMBER.sub("<n>", chosen)
    return _line(chosen, 200)


def environment_error(evidence: Evidence) -> Hypothesis | None:
    """The same (normalised) error line twice or more: across tasks, or on the attempts of
    one task (recognised from its first repetition, before it spreads)."""
    s = evidence.snapshot
    groups: dict[str, list[SnapshotTask]] = {}
    seen: Counter[str] = Counter()  # failed attempts per error line
    shown: dict[str, str] = {}
    for task in _known_tasks(s).values():
        reasons = task.failure_reasons or ([task.failure_reason] if task.failure_reason else [])
        keys = set()
        for reason in reasons:
            line = error_line(reason)
            if not line:
                continue
            key = line.lower()
            seen[key] += 1
            shown.setdefault(key, line)
            keys.add(key)
        for key in keys:
            groups.setdefault(key, []).append(task)
    candidates = [(key, tasks) for key, tasks in groups.items() if seen[key] >= 2]
    if not candidates:
        return None
    key, tasks = min(candidates, key=lambda kv: (-len(kv[1]), -seen[kv[0]], kv[0]))
    line = shown[key]
    environmental = bool(_ENVIRONMENTAL.search(line))
    spread = max(len(tasks), min(seen[key], 3))  # attempts of one task count, a little less
    likelihood = 0.55 + 0.1 * min(spread - 2, 3) + (0.1 if environmental else 0.0)
    if len(tasks) == 1:
        likelihood -= 0.05
    support = [
        f"{_task_label(t)} ({t.status}, {t.failures} failures, phase {t.phase}): "
        f"{_quote(t.failure_reason or '', 200)}"
        for t in tasks[:6]
    ]
    if len(tasks) == 1:
        support.append(f"{seen[key]} failed attempts of {tasks[0].id} end in {_quote(line)}")
    else:
        support.append(f"{len(tasks)} tasks share the error line {_quote(line)}")
    agents = sorted({t.assigned_agent for t in tasks if t.assigned_agent})
    counter = []
    if len(agents) > 1:
        support.append(f"the failures come from {len(agents)} different agents ({_ids(agents)})")
    elif agents:
        counter.append(
            f"every failure comes from agent {agents[0]}; its own setup may be the cause"
        )
    if environmental:
        support.append(
            "the error is typical of the environment (dependency, file, permission or service)"
        )
    else:
        counter.append("the error does not look environmental; the tasks may share a code bug")
    phase_counts = Counter(t.phase for t in tasks)
    order = {name: i for i, name in enumerate(_phase_names(s))}
    phase = min(phase_counts, key=lambda p: (-phase_counts[p], order.get(p, len(order)), p))
    ids = [t.id for t in tasks]
    if _CREDENTIALS.search(line):
        # A missing or rejected credential is the deployment's to fix: a task for the agents
        # would go to the agents that fail on it, and fail the same way.
        support.append("the error is about a credential or an account, which no task can fix")
        recs = [
            _recommend(
                f"Escalate: a credential is missing or rejected: {line}",
                f"Tasks {_ids(ids)} failed with {_quote(line)}. Give the agents a valid "
                "credential (API key, login, quota) in the worker's environment, then redo "
                "the failed work.",
                phase,
                priority="critical",
                remedy="escalate",
            )
        ]
        return _hypothesis(
            "environment_error",
            f"{len(tasks)} task(s) failed on a credential no agent can fix: {_quote(line)}.",
            min(likelihood + 0.1, 0.95),
            support,
            counter,
            recs,
        )
    recs = [
        _recommend(
            f"Fix the environment: {line}",
            f"Tasks {_ids(ids)} failed with the same error: {_quote(line)}. Reproduce it, fix the "
            f"environment (install or configure the missing dependency, file, permission or "
            f"service), verify the fix with a minimal reproduction and note what changed.",
            phase,
            priority="critical" if len(tasks) >= 3 else "high",
        )
    ]
    dead = [t for t in tasks if t.status in DEAD_TASK_STATUSES]
    if dead:
        types = Counter(t.type for t in dead).most_common(1)[0][0]
        recs.append(
            _recommend(
                f"Redo the tasks that failed on the environment error: {_ids(t.id for t in dead)}",
                "After the environment is fixed, redo the work of "
                + "; ".join(_task_label(t) for t in dead[:5])
                + ", which failed for good on this error.",
                phase,
                type=_rec_type(types, "implementation"),
            )
        )
    return _hypothesis(
        "environment_error",
        (
            f"{len(tasks)} tasks failed with the same error, which points to the environment "
            f"rather than the tasks: {_quote(line)}."
            if len(tasks) > 1
            else f"{tasks[0].id} failed {seen[key]} times with the same error, which points to "
            f"the environment rather than the task: {_quote(line)}."
        ),
        likelihood,
        support,
        counter,
        recs,
    )


def dependency_deadlock(evidence: Evidence) -> Hypothesis | None:
    """Pending tasks that depend (transitively) on failed or cancelled tasks."""
    s = evidence.snapshot
    tasks = _known_tasks(s)
    dead = {tid for tid, t in tasks.items() if t.status in DEAD_TASK_STATUSES}
    if not dead:
        return None
    # roots[t]: the dead tasks that pending task t transitively waits on.
    roots: dict[str, set[str]] = {}
    changed = True
    while changed:
        changed = False
        for tid, task in tasks.items():
            if task.status != "pending":
                continue
            found = set(roots.get(tid, set()))
            for dep in task.depends_on:
                if dep in dead:
                    found.add(dep)
                elif dep in roots:
                    found |= roots[dep]
            if found and found != roots.get(tid):
                roots[tid] = found
                changed = True
    if not roots:
        return None
    blocked = sorted(roots, key=_task_order)
    pending = s.counts_by_status.get("pending", 0)
    other_active = _count(s, ACTIVE_STATUSES - {"pending"})
    likelihood = 0.75
    if len(blocked) >= pending:
        likelihood += 0.1
    if not other_active:
        likelihood += 0.05
    support = []
    for tid in blocked[:8]:
        task = tasks[tid]
        waits = []
        for dep in task.depends_on:
            if dep in dead:
                reason = tasks[dep].failure_reason
                waits.append(
                    f"{dep} ({tasks[dep].status}"
                    + (f": {_quote(reason, 120)}" if reason else "")
                    + ")"
                )
            elif dep in roots:
                waits.append(f"{dep} (pending, itself blocked)")
        support.append(f"{_task_label(task)} (pending) waits on " + ", ".join(waits))
    all_roots = sorted(set().union(*roots.values()), key=_task_order)
    support.append(
        f"{len(blocked)} of {_n(pending, 'pending task')} can never become eligible; "
        f"{_n(other_active, 'other task')} active"
    )
    counter = []
    if s.total_tasks > len(tasks):
        counter.append(
            f"the snapshot shows {len(tasks)} of {s.total_tasks} tasks; other dependencies "
            f"were not checked"
        )
    dependents = {r: [t for t in blocked if r in roots[t]] for r in all_roots}
    ranked_roots = sorted(all_roots, key=lambda r: (-len(dependents[r]), _task_order(r)))
    recs = []
    tried = [key for d in s.diagnoses for key in d.plan]
    for root_id in ranked_roots[:3]:
        root = tasks[root_id]
        waiting = dependents[root_id]
        # The ladder: retry it first (the cause may be gone); a retry that already failed
        # is not repeated: a new task takes its place.
        if not any(key.startswith(f"retry_task({root_id})") for key in tried):
            recs.append(
                Recommendation(
                    title=f"Retry failed dependency {root.id}: {root.title}"[:200],
                    description=_clip(
                        f"{_task_label(root)} is {root.status}"
                        + (
                            f" ({_quote(root.failure_reason or '', 300)})"
                            if root.failure_reason
                            else ""
                        )
                        + f"; {_ids(waiting)} {'waits' if len(waiting) == 1 else 'wait'} on it. "
                        f"It goes back to pending with fresh retries.",
                        4000,
                    ),
                    phase=root.phase,
                    priority="high",
                    type=_rec_type(root.type),
                    remedy="retry_task",
                    task_id=root.id,
                )
            )
            continue
        recs.append(
            _recommend(
                f"Redo {root.status} dependency {root.id}: {root.title}",
                f"{_task_label(root)} is {root.status}"
                + (f" ({_quote(root.failure_reason or '', 300)})" if root.failure_reason else "")
                + f"; {_ids(waiting)} {'waits' if len(waiting) == 1 else 'wait'} on it and "
                f"could never start. This task replaces {root.id}: the tasks that waited on "
                f"{root.id} wait on this task instead. "
                f"Fix the cause of the failure, then do {root.id}'s work"
                + (f" ({_quote(root.title, 200)})" if root.title else "")
                + ".",
                root.phase,
                type=_rec_type(root.type),
                replaces=root.id,
            )
        )
    return _hypothesis(
        "dependency_deadlock",
        f"Dependency deadlock: {_n(len(blocked), 'pending task', verb=False)} "
        f"({_ids(blocked)}) {'depends' if len(blocked) == 1 else 'depend'}, directly or "
        f"transitively, on failed or cancelled tasks ({_ids(all_roots)}), so they can never "
        f"become eligible for claiming.",
        likelihood,
        support,
        counter,
        recs,
    )


def phase_without_tasks(evidence: Evidence) -> Hypothesis | None:
    """A required phase that has no tasks at all."""
    s = evidence.snapshot
    if s.total_tasks == 0:
        return None
    totals = _phase_totals(s)
    empty = [p for p in s.phases if p.required and not totals.get(p.name, 0)]
    if not empty:
        return None
    active = _active(s)
    likelihood = 0.5 + (0.2 if not active else 0.0)
    names = ", ".join(p.name for p in empty)
    support = [
        f"required phase {p.name} has 0 tasks"
        + (f"; done definitions: {'; '.join(p.done_definitions)}" if p.done_definitions else "")
        for p in empty
    ]
    support.append("tasks per phase: " + ", ".join(f"{name} {n}" for name, n in totals.items()))
    counter = []
    if active:
        counter.append(f"{_n(active, 'task')} still active; someone may yet plan the phase")
    recs = [
        _recommend(
            f"Plan and do the {p.name} phase",
            f"The required phase {p.name}"
            + (f" ({p.description})" if p.description else "")
            + " has no tasks. Break it into tasks that meet its done definitions ("
            + ("; ".join(p.done_definitions) or "none written down")
            + ") and create them with create_task, or do the work directly and record the "
            "evidence.",
            p.name,
            type=_phase_task_type(p.name),
        )
        for p in empty[:3]
    ]
    return _hypothesis(
        "phase_without_tasks",
        f"Required phase(s) {names} have no tasks: nobody planned that work, so the ticket "
        f"cannot meet its done definitions.",
        likelihood,
        support,
        counter,
        recs,
    )


def unclaimed_work(evidence: Evidence) -> Hypothesis | None:
    """Tasks wait to be claimed and nobody works on anything: the workers are gone, wedged
    (alive, heartbeating, never claiming) or filtered to other phases. A wedged agent is
    restarted; with no worker at all an on-demand one is started, else a person is told."""
    s = evidence.snapshot
    if evidence.trigger not in ("no_result", "manual"):
        return None  # a specific trigger has its own explanation
    if not s.claimable or any(s.counts_by_status.get(st, 0) for st in WORKED_STATUSES):
        return None
    waiting = _ids(s.claimable)
    workers = [a for a in s.agents if a.kind == "worker" and a.state in LIVE_AGENT_STATES]
    idle = _duration(_idle_seconds(evidence))
    support = [
        f"{_n(len(s.claimable), 'task', verb=False)} can be claimed now ({waiting}); none "
        f"is being worked on; no task activity for {idle}",
        f"live workers: {_ids(a.id for a in workers) if workers else 'none'}",
    ]
    tried = [
        d.run_id
        for d in s.diagnoses
        if d.outcome == "failed" and d.top_signature == "unclaimed_work"
    ]
    phase = _current_phase(s)
    spawn = next((a for a in s.spawnable if a.kind == "worker" and not a.running), None)
    if workers and not tried:
        statement = (
            f"The work waits and {_n(len(workers), 'live worker', verb=False)} "
            f"({_ids(a.id for a in workers)}) claim nothing: wedged, or filtered to other "
            "phases."
        )
        recs = [
            _recommend(
                f"Restart {a.id}: alive but claiming nothing",
                f"{a.id} heartbeats ({a.state}) yet nothing was claimed for {idle} while "
                f"{waiting} can be claimed. A fresh process starts from a clean state.",
                phase,
                remedy="restart_agent",
                agent=a.id,
            )
            for a in workers[:3]
        ]
    elif not workers and spawn is not None and not tried:
        statement = f"No worker is alive to take {waiting}; {spawn.name} starts on demand."
        recs = [
            _recommend(
                f"Start worker {spawn.name}",
                f"No live worker while {waiting} can be claimed.",
                phase,
                remedy="spawn_agent",
                agent=spawn.name,
            )
        ]
    else:
        who = (
            f"the workers ({_ids(a.id for a in workers)}) claim nothing even after "
            f"{', '.join(tried)}"
            if workers
            else "no worker is alive and none can be started by the ticket"
        )
        statement = f"Nobody takes the work: {who}."
        recs = [
            _recommend(
                "Escalate: nobody takes the work",
                f"{waiting} can be claimed and nobody works on anything: {who}. Start a "
                "worker for this ticket (or check the phases its workers claim).",
                phase,
                priority="critical",
                remedy="escalate",
            )
        ]
    return _hypothesis("unclaimed_work", statement, 0.85, support, [], recs)


def validator_unavailable(evidence: Evidence) -> Hypothesis | None:
    """Work waits for validation but no validator agent is alive."""
    s = evidence.snapshot
    pending = [r for r in s.results if r.status == "pending_validation"]
    reviewing = _count(s, REVIEW_STATUSES)
    # A validation timeout points at the validator even though the task it hit has failed
    # (and so is no longer under review).
    timed_out = evidence.trigger == "validation_timeout"
    if not pending and not reviewing and not timed_out:
        return None
    validators = [a for a in s.agents if a.kind == "validator"]
    # Alive is not enough after a timeout: a validator that holds a review without a verdict
    # is as unavailable as a dead one.
    if not timed_out and any(a.state in LIVE_AGENT_STATES for a in validators):
        return None
    # After a timeout it outranks what the timeout caused (a failed task's dependants).
    likelihood = (0.85 if not validators else 0.8) + (0.12 if timed_out else 0.0)
    support = [
        f"result v{r.version} by {r.agent_id} awaits validation since {_at(r.submitted_at)}"
        for r in pending
    ]
    if timed_out:
        support.insert(0, f"validator timeout: {evidence.reason or 'no verdict in time'}")
    waiting_tasks = [t for t in _known_tasks(s).values() if t.status in REVIEW_STATUSES]
    if reviewing:
        support.append(
            f"{_n(reviewing, 'task')} under review"
            + (f" ({_ids(t.id for t in waiting_tasks)})" if waiting_tasks else "")
        )
    if validators:
        support.extend(
            f"validator {a.id} {_quote(a.name, 60)} is {a.state} "
            f"(last heartbeat {_at(a.last_heartbeat_at)}, {a.restarts} restarts)"
            for a in validators[:5]
        )
    else:
        support.append("no validator agent is registered on this ticket")
    parts = [f"result v{r.version}" for r in pending]
    if reviewing:
        parts.append(f"{_n(reviewing, 'task', verb=False)} under review")
    if not parts:
        parts.append("the work whose review timed out")
    what = " and ".join(parts)
    # A worker cannot start a validator: a task asking one to would be done and change
    # nothing. The ticket starts one itself when its spec has one on demand; otherwise no
    # remedy of the ticket's own can work, and a person is told at once.
    spare = next((a for a in s.spawnable if a.kind == "validator" and not a.running), None)
    if spare is not None:
        support.append(f"the spec has validator {spare.name!r} to start on demand")
        return _hypothesis(
            "validator_unavailable",
            f"Work is waiting for validation ({what}) but no validator agent is alive to "
            f"review it; the spec's on-demand validator {spare.name!r} is not running.",
            likelihood,
            support,
            [],
            [
                Recommendation(
                    title=f"Start the on-demand validator {spare.name}",
                    description=f"Start {spare.name!r} (spawn: on_demand) to review {what}.",
                    phase=_last_phase(s),
                    priority="critical",
                    remedy="spawn_agent",
                    agent=spare.name,
                )
            ],
        )
    recs = [
        _recommend(
            "No validator can review the pending work",
            f"Start a validator agent (kind: validator) for ticket {s.ticket_id}, or add one "
            f"to the spec's agents with a runtime that starts it, so that {what} gets "
            f"reviewed against the result criteria ({_criteria_text(s)}).",
            _last_phase(s),
            priority="critical",
            remedy="escalate",
        )
    ]
    live = [a for a in validators if a.state in LIVE_AGENT_STATES]
    statement = (
        f"No verdict on {what} came within the validator timeout although "
        f"{_ids(a.id for a in live)} {'is' if len(live) == 1 else 'are'} alive: the "
        f"validator holds reviews without judging them."
        if live
        else f"Work is waiting for validation ({what}) but no validator agent is alive to "
        f"review it."
    )
    return _hypothesis(
        "validator_unavailable",
        statement,
        likelihood,
        support,
        [],
        recs,
    )


def other(evidence: Evidence) -> Hypothesis:
    """The fallback when no signature matches: investigate (always a plan)."""
    s = evidence.snapshot
    support = [
        f"trigger {evidence.trigger}" + (f": {evidence.reason}" if evidence.reason else ""),
        _counts_line(s),
        f"no task activity for {_duration(_idle_seconds(evidence))} "
        f"(last at {_at(s.last_activity_at)})",
        f"{len(s.results)} result versions, {len(s.agents)} agents, "
        f"{len(s.diagnoses)} earlier diagnoses",
    ]
    if evidence.history is not None:
        support.extend(f"history: {n}" for n in evidence.history.notable[-5:])
    support.extend(f"progress note: {_quote(n, 200)}" for n in evidence.progress_notes[-3:])
    phase = _current_phase(s)
    return _hypothesis(
        "other",
        "No known failure signature matches: the ticket stopped moving for a reason the rules "
        "do not recognise.",
        0.2,
        support,
        ["the rules only know common signatures; this is a guess, not a finding"],
        [
            _recommend(
                INVESTIGATE_TITLE,
                f"Ticket {s.ticket_id} ({s.title}) stopped moving (trigger {evidence.trigger}"
                + (f": {evidence.reason}" if evidence.reason else "")
                + f"; {_counts_line(s)}). Review its timeline, tasks, agents and results, find "
                "what blocks progress, and create the tasks that unblock it.",
                phase,
                type="analysis",
            )
        ],
    )


# ---- behaviour anomalies (DESIGN §12) ------------------------------------------------------


def _rung(snapshot: TicketSnapshot, signature: str, agent: SnapshotAgent) -> list[str]:
    """The earlier diagnoses that acted on this agent's lineage for this signature: the
    ladder's next rung is one past them. One that looked calm for its window counts too:
    the agent relapsed into the same behaviour, so that remedy did not hold."""
    ids = {a.id for a in snapshot.agents if a.lineage and a.lineage == agent.lineage} | {agent.id}
    return [
        d.run_id
        for d in snapshot.diagnoses
        if d.outcome in ("failed", "recovered")
        and d.top_signature == signature
        and any(f"({aid})" in key for key in d.plan for aid in ids)
    ]


def _storm_duplicates(agent: SnapshotAgent) -> list[str]:
    """Its pending tasks of the burst that repeat an earlier one's title (numbers aside)."""
    seen: set[tuple[str, str]] = set()
    extra = []
    for task in sorted(agent.created_open, key=lambda t: _task_order(t.id)):
        family = (task.phase, title_family(task.title))
        if family in seen:
            extra.append(task.id)
        seen.add(family)
    return extra


def agent_anomaly(evidence: Evidence) -> Hypothesis | None:
    """An agent busy but stuck: looping, stalled, storming or handing in trivial results.

    Its composite anomaly score (core.behaviour) names the signature. The remedy climbs a
    ladder per agent lineage: interrupt with feedback (a storm: its duplicate tasks
    cancelled too), then restart, then escalate to a person.
    """
    s = evidence.snapshot
    suspects = sorted(
        (a for a in s.agents if a.anomaly_signature and a.anomaly >= 0.5),
        key=lambda a: (-a.anomaly, a.id),
    )
    if not suspects:
        return None
    agent = suspects[0]
    signature = agent.anomaly_signature or "agent_looping"
    # Anomalous now (at or above the default threshold), whatever triggered the diagnosis:
    # the agent's behaviour explains the symptoms (trivial results make a validation loop).
    if evidence.trigger == "anomaly" and agent.id in evidence.reason:
        likelihood = 0.99  # the detector named this agent and measured it for a whole window
    elif agent.anomaly >= 0.7:
        likelihood = 0.5 + 0.45 * agent.anomaly
    else:
        likelihood = 0.4 * agent.anomaly
    phase = _current_phase(s)
    held = _ids(agent.tasks) if agent.tasks else "nothing"
    support = [
        f"agent {agent.id} ({agent.kind}, {agent.state}) anomaly score {agent.anomaly:.2f}, "
        f"holds {held}",
        *agent.signals[:4],
    ]
    if agent.notes:
        support.append("its latest notes: " + " | ".join(_quote(n, 80) for n in agent.notes[-4:]))
    counter = (
        [f"{_n(len(suspects) - 1, 'other agent')} also scores high"] if len(suspects) > 1 else []
    )
    earlier = _rung(s, signature, agent)
    what = {
        "agent_looping": "repeats itself without progress",
        "agent_stalled": "holds work without progress",
        "task_storm": "creates tasks faster than the ticket's bound",
        "low_quality_results": "hands in trivial results",
    }.get(signature, "behaves abnormally")
    signal = agent.signals[0].split(": ", 1)[-1] if agent.signals else what
    feedback = {
        "agent_looping": (
            f"Unstuck interrupted you: {signal}. Your task went back to the queue. Do not "
            "repeat the same step: if you are blocked, fail the task with the reason."
        ),
        "agent_stalled": (
            f"Unstuck interrupted you: {signal}. Your task went back to the queue. Report "
            "progress while you work, and fail a task you cannot finish."
        ),
        "task_storm": (
            f"Unstuck interrupted you: {signal}. Create a task only for distinct work; "
            "duplicates of your burst were cancelled."
        ),
        "low_quality_results": (
            f"Unstuck interrupted you: {signal}. A result must meet the criteria: "
            f"{_criteria_text(s)}."
        ),
    }.get(signature, f"Unstuck interrupted you: {signal}.")
    recs: list[Recommendation] = []
    duplicates = _storm_duplicates(agent) if signature == "task_storm" else []
    if duplicates:
        recs.append(
            _recommend(
                f"Cancel {len(duplicates)} duplicate tasks of {agent.id}'s burst",
                f"{agent.id} created {agent.created_last_minute} tasks in a minute; these repeat "
                f"an earlier title of the burst: {_ids(duplicates)}",
                phase,
                remedy="cancel_tasks",
                agent=agent.id,
                task_ids=duplicates,
            )
        )
    others = [
        a.id
        for a in s.agents
        if a.kind == agent.kind and a.id != agent.id and a.state in LIVE_AGENT_STATES
    ]
    if not earlier and others and signature in ("agent_looping", "agent_stalled"):
        # Another agent can take its work: the tasks go to it, away from this one.
        recs += [
            _recommend(
                f"Reassign {task_id} away from {agent.id}",
                f"{agent.id} {what} on it: {signal}. {_ids(others)} can take it.",
                phase,
                remedy="reassign_task",
                task_id=task_id,
            )
            for task_id in agent.tasks[:3]
        ]
    if not earlier:
        recs.append(
            _recommend(
                f"Interrupt {agent.id}: it {what}",
                feedback,
                phase,
                remedy="interrupt_agent",
                agent=agent.id,
            )
        )
    elif len(earlier) == 1:
        recs.append(
            _recommend(
                f"Restart {agent.id}: it {what} after an interrupt",
                f"{earlier[0]} interrupted this agent's lineage with feedback and it went on: "
                f"{signal}. A fresh process starts from a clean context; its tasks go back to "
                "the queue.",
                phase,
                remedy="restart_agent",
                agent=agent.id,
            )
        )
    elif others:
        # Interrupted and restarted, and still at it: take it out of the work, so that the
        # agents that can do it carry the ticket on; a person is told about this agent (and
        # may release it), and the rest of the ticket keeps healing.
        recs = [
            _recommend(
                f"Quarantine {agent.id}: it {what} after interrupt and restart",
                f"Diagnoses {', '.join(earlier)} interrupted and restarted this agent's lineage "
                f"({agent.lineage or agent.id}); it still {what}: {signal}. Its tasks go to "
                f"{_ids(others)}; a person should look at its prompt, tools or task.",
                phase,
                priority="critical",
                remedy="quarantine_agent",
                agent=agent.id,
            )
        ]
    else:
        recs = [
            _recommend(
                f"Escalate: {agent.id} {what} after interrupt and restart",
                f"Diagnoses {', '.join(earlier)} interrupted and restarted this agent's lineage "
                f"({agent.lineage or agent.id}); it still {what}: {signal}. A person should look "
                "at its prompt, tools or task.",
                phase,
                priority="critical",
                remedy="escalate",
            )
        ]
    return _hypothesis(
        signature,  # type: ignore[arg-type]
        f"Agent {agent.id} {what}: {signal}.",
        likelihood,
        support,
        counter,
        recs,
    )


#: Every signature rule, in ``Signature`` order.
RULES: tuple[Callable[[Evidence], Hypothesis | None], ...] = (
    missing_result_submission,
    premature_completion,
    validation_loop,
    crash_looping_agent,
    environment_error,
    dependency_deadlock,
    phase_without_tasks,
    validator_unavailable,
    agent_anomaly,
    unclaimed_work,
)


def _same_signature(diagnosis: SnapshotDiagnosis, hypothesis: Hypothesis) -> bool:
    """Whether an earlier diagnosis's top hypothesis was this one (signature or wording)."""
    if diagnosis.top_signature is not None:
        return diagnosis.top_signature == hypothesis.signature
    top = diagnosis.top_hypothesis or ""
    return hypothesis.signature in top or (
        _jaccard(_tokens(top), _tokens(hypothesis.statement)) >= SAME_STATEMENT_OVERLAP
    )


def _penalise_repeats(hypothesis: Hypothesis, snapshot: TicketSnapshot) -> Hypothesis:
    """Lower a signature that earlier diagnoses already acted on without success (behaviour
    anomalies climb their own ladder instead: :func:`agent_anomaly`)."""
    if hypothesis.signature == "other" or hypothesis.signature in BEHAVIOUR_SIGNATURES:
        return hypothesis
    failed = [
        d for d in snapshot.diagnoses if d.outcome == "failed" and _same_signature(d, hypothesis)
    ]
    if not failed:
        return hypothesis
    counter = [
        f"diagnosis {d.run_id} ({d.trigger}) already acted on this and its recovery failed"
        for d in failed[-3:]
    ]
    return hypothesis.model_copy(
        update={
            "likelihood": round(max(0.05, hypothesis.likelihood - REPEAT_PENALTY * len(failed)), 3),
            "counterpoints": [*hypothesis.counterpoints, *counter][:20],
        }
    )


def rank(hypotheses: Iterable[Hypothesis]) -> list[Hypothesis]:
    """Highest likelihood first; ties by signature order, then statement. At most five."""
    order = {name: i for i, name in enumerate(SIGNATURE_ORDER)}
    ranked = sorted(
        hypotheses,
        key=lambda h: (-h.likelihood, order.get(h.signature, len(order)), h.statement),
    )
    return ranked[:MAX_HYPOTHESES]


def rule_hypotheses(evidence: Evidence) -> HypothesisSet:
    """Run every rule over the evidence; ranked, at most five, never empty."""
    found = [h for rule in RULES if (h := rule(evidence)) is not None]
    found = [_penalise_repeats(h, evidence.snapshot) for h in found]
    return HypothesisSet(hypotheses=rank(found) or [other(evidence)], generator="rules")


# ---- planning ------------------------------------------------------------------------------


def _title_key(title: str) -> str:
    return " ".join(title.lower().split())


def _tried_before(
    top: Hypothesis, plan: list[Recommendation], snapshot: TicketSnapshot
) -> Recommendation | None:
    """A ladder, never a loop: a plan that already ran for the same signature without
    clearing its condition is not run again; the ticket escalates instead (returned)."""
    if any(rec.remedy == "escalate" for rec in plan):
        return None
    keys = {rec.key() for rec in plan}
    for earlier in reversed(snapshot.diagnoses):
        if earlier.outcome != "failed" or not earlier.plan or not _same_signature(earlier, top):
            continue
        if set(earlier.plan) != keys:
            continue
        tried = "; ".join(rec.title for rec in plan)
        return _recommend(
            f"Escalate: {top.signature.replace('_', ' ')} persists after the same remedy",
            f"Diagnosis {earlier.run_id} already ran this plan ({tried}) and it did not help"
            + (f" (condition: {earlier.condition})" if earlier.condition else "")
            + f". Top hypothesis now: {top.statement}",
            _last_phase(snapshot),
            priority="critical",
            remedy="escalate",
        )
    return None


def plan_recovery(hypotheses: HypothesisSet, snapshot: TicketSnapshot) -> RecoveryPlan:
    """1–5 recovery tasks from the top hypotheses' recommendations.

    The top hypothesis always contributes; others only when their likelihood is at least
    half the top's (and ≥ 0.3), unless the top is a behaviour anomaly (its remedies aim at
    one agent and are judged by that agent alone). Recommendations are taken in rank
    order, de-duplicated by title (case and spacing ignored); a phase the ticket does not
    have becomes its last phase. Priorities are kept as recommended. With no usable
    recommendation at all the plan is the single task "Investigate why the ticket stopped
    moving". A plan equal to one that already failed for the same signature becomes an
    ``escalate`` remedy.
    """
    phases = set(_phase_names(snapshot))
    ranked = rank(hypotheses.hypotheses)
    tasks: list[Recommendation] = []
    seen: set[str] = set()
    if ranked:
        cutoff = max(PLAN_ABSOLUTE_CUTOFF, ranked[0].likelihood * PLAN_RELATIVE_CUTOFF)
        chosen = [ranked[0], *(h for h in ranked[1:] if h.likelihood >= cutoff)]
        if ranked[0].signature in FOCUSED_SIGNATURES:
            chosen = chosen[:1]  # remedies aimed at agents, judged by what those agents do
        for hypothesis in chosen:
            for rec in hypothesis.recommendations:
                key = _title_key(rec.title)
                if key in seen:
                    continue
                seen.add(key)
                if rec.phase not in phases:
                    rec = rec.model_copy(update={"phase": _last_phase(snapshot)})
                tasks.append(rec)
                if len(tasks) == MAX_RECOVERY_TASKS:
                    break
            if len(tasks) == MAX_RECOVERY_TASKS:
                break
    if tasks and ranked and (tried := _tried_before(ranked[0], tasks, snapshot)) is not None:
        return RecoveryPlan(tasks=[tried])
    if not tasks:
        statement = ranked[0].statement if ranked else "no hypothesis was produced"
        tasks.append(
            _recommend(
                INVESTIGATE_TITLE,
                f"Ticket {snapshot.ticket_id} ({snapshot.title}) stopped moving and the "
                f"diagnosis proposed no concrete task (top hypothesis: {statement}). Review its "
                f"timeline, tasks, agents and results, find what blocks progress, and create "
                f"the tasks that unblock it.",
                _current_phase(snapshot),
                type="analysis",
            )
        )
    return RecoveryPlan(tasks=tasks)
