"""Automated checks (file_exists, file_contains, command_success), run synchronously.

No Temporal here: ``activities/checks.py`` runs :func:`run_checks` in a thread for workflows.
"""

from validation.checks import ChecksCancelled, run_check, run_checks

__all__ = ["ChecksCancelled", "run_check", "run_checks"]
