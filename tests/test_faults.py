"""The fault suite's short form (bench/faults.py): real server, real agent processes."""

from __future__ import annotations

import pytest
from temporalio.client import Client

from bench.faults import FAULTS, QUICK, Fault, run_fault
from infra.settings import Settings

QUICK_FAULTS = [f for f in FAULTS if f.kind in QUICK]


def test_the_suite_covers_the_fault_kinds_of_the_design() -> None:
    kinds = {f.kind for f in FAULTS}
    assert {
        "missing_result",
        "premature_completion",
        "crashed_agent",
        "crash_looping_agent",
        "validation_loop",
        "validator_absent",
        "validator_timeout",
        "environment_error",
        "dependency_failed",
        "looping_agent",
        "task_storm",
        "trivial_results",
        "stalled_agent",
        "wedged_worker",
        "no_worker",
    } <= kinds
    assert len(kinds - {"healthy"}) >= 12


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("fault", QUICK_FAULTS, ids=lambda f: f.kind)
async def test_fault_ends_as_expected(fault: Fault, client: Client, settings: Settings) -> None:
    run = await run_fault(client, settings, fault)
    assert run.outcome == fault.expected, (run.outcome, run.signatures, run.remedies)
    if fault.kind == "healthy":
        assert run.diagnoses == 0, run.signatures  # no false positive
    else:
        assert run.diagnoses >= 1
