"""Automated checks: the request validators and result validation send, and what comes back.

The checks themselves (``FileExistsCheck``, ``FileContainsCheck``, ``CommandSuccessCheck``)
are part of the ticket spec (``models/spec.py``); ``validation/checks.py`` runs them and the
``run_checks`` activity (``activities/checks.py``) runs them for a workflow. Pure pydantic:
workflow code imports this module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from models.spec import MB, AutomatedCheck

RUN_CHECKS_ACTIVITY = "run_checks"
"""The activity name the worker registers (``activities.checks.run_checks``)."""

CheckKind = Literal["file_exists", "file_contains", "command_success"]


class CheckResult(BaseModel):
    """The outcome of one automated check. A failing check is a result, never an error."""

    kind: CheckKind
    passed: bool
    summary: str = Field(
        description="one line a person reads, e.g. \"file_contains: 'def login' found in "
        'app/auth.py (line 12)"'
    )
    detail: str = Field(
        default="",
        description="the longer story: resolved paths, the matching line, the command's "
        "output (stdout and stderr interleaved; only the tail when it was too long)",
    )
    duration_s: float = Field(default=0.0, ge=0)
    exit_code: int | None = Field(
        default=None,
        description="command_success only: the exit code; negative = killed by that signal; "
        "None when the command did not start or was stopped at its timeout",
    )


class RunChecks(BaseModel):
    """Run these checks on the worker; relative paths and ``cwd`` resolve against ``base_dir``."""

    checks: list[AutomatedCheck] = Field(default_factory=list)
    base_dir: str = Field(
        default=".", description="directory relative paths and command cwds resolve against"
    )
    max_output_bytes: int = Field(
        default=8192,
        ge=0,
        le=1 * MB,
        description="per command: keep at most this many bytes of output (the tail)",
    )


class ChecksReport(BaseModel):
    """Every check's result, in request order; ``passed`` when all passed (none = passed)."""

    results: list[CheckResult] = Field(default_factory=list)
    passed: bool = True

    @model_validator(mode="after")
    def _all_passed(self) -> ChecksReport:
        self.passed = all(r.passed for r in self.results)
        return self
