"""DiagnosticWorkflow: one diagnosis of a ticket, run as the ticket's child workflow.

collect evidence → generate hypotheses → plan 1–5 recovery tasks → record the run. The
parent (the ticket) adds the recovery tasks and follows their outcome.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from models.diagnosis import (
        COLLECT_EVIDENCE_ACTIVITY,
        GENERATE_HYPOTHESES_ACTIVITY,
        PLAN_RECOVERY_ACTIVITY,
        DiagnosisInput,
        DiagnosisReport,
        Evidence,
        HypothesisSet,
        PlanRequest,
        RecoveryPlan,
    )
    from models.ledger import (
        WRITE_LEDGER_ACTIVITY,
        DiagnosticRunRecord,
        LedgerBatch,
        LedgerWriteReport,
    )


# Evidence and hypotheses may call slow services (Temporal's history API, an LLM): bounded
# attempts with backoff; the ticket counts a diagnosis that still fails as a failed one.
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=20),
    maximum_attempts=5,
)


@workflow.defn(name="Diagnosis")
class DiagnosticWorkflow:
    @workflow.run
    async def run(self, input: DiagnosisInput) -> DiagnosisReport:
        started = input.snapshot.taken_at  # the trigger time: the parent's ledger row has it
        evidence = await workflow.execute_activity(
            COLLECT_EVIDENCE_ACTIVITY,
            input,
            result_type=Evidence,
            start_to_close_timeout=timedelta(minutes=3),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=RETRY,
            summary="collect evidence",
        )
        hypotheses = await workflow.execute_activity(
            GENERATE_HYPOTHESES_ACTIVITY,
            evidence,
            result_type=HypothesisSet,
            start_to_close_timeout=timedelta(minutes=3),
            # It heartbeats every 2 s: a worker killed mid-call costs seconds, not 3 minutes.
            heartbeat_timeout=timedelta(seconds=10),
            retry_policy=RETRY,
            summary="generate hypotheses",
        )
        plan = await workflow.execute_activity(
            PLAN_RECOVERY_ACTIVITY,
            PlanRequest(hypotheses=hypotheses, snapshot=input.snapshot),
            result_type=RecoveryPlan,
            start_to_close_timeout=timedelta(seconds=10),  # pure and fast: a lost worker
            retry_policy=RETRY,
            summary="plan recovery tasks",
        )
        summary = summarize(evidence)
        finished = workflow.now()
        await workflow.execute_activity(
            WRITE_LEDGER_ACTIVITY,
            LedgerBatch(
                ticket_id=input.ticket_id,
                diagnostic_runs=[
                    DiagnosticRunRecord(
                        id=input.run_id,
                        ticket_id=input.ticket_id,
                        number=input.number,
                        trigger=input.trigger,
                        reason=input.reason,
                        status="completed",
                        outcome=None,
                        counts_at_trigger=dict(input.snapshot.counts_by_status),
                        idle_seconds=input.idle_seconds,
                        evidence_summary=summary,
                        hypotheses=[h.model_dump(mode="json") for h in hypotheses.hypotheses],
                        generator=hypotheses.generator,
                        created_task_ids=[],
                        started_at=started,
                        finished_at=finished,
                    )
                ],
            ),
            result_type=LedgerWriteReport,
            start_to_close_timeout=timedelta(seconds=60),
            summary="record diagnostic run",
        )
        return DiagnosisReport(
            run_id=input.run_id,
            trigger=input.trigger,
            hypotheses=hypotheses,
            plan=plan,
            evidence_summary=summary,
            started_at=started,
            finished_at=finished,
        )


def summarize(evidence: Evidence) -> str:
    """One paragraph for people: what the diagnosis looked at."""
    snap = evidence.snapshot
    counts = ", ".join(f"{n} {s}" for s, n in snap.counts_by_status.items()) or "no tasks"
    parts = [
        f"trigger {evidence.trigger}",
        f"{snap.total_tasks} tasks ({counts})",
        f"{len(snap.agents)} agents",
        f"{len(snap.results)} result version(s)",
        f"{len(snap.diagnoses)} earlier diagnosis record(s)",
    ]
    if evidence.history is not None:
        parts.append(
            f"{evidence.history.events_in_window} history events in the last "
            f"{evidence.history.window_minutes:g} min"
        )
    parts.append(f"{len(evidence.progress_notes)} progress notes")
    if evidence.spans:
        parts.append(f"{len(evidence.spans)} spans")
    if evidence.redactions:
        parts.append(f"{evidence.redactions} secret(s) redacted")
    if evidence.truncated:
        parts.append("evidence truncated to the size cap")
    return "; ".join(parts)
