"""Operate Unstuck tickets from the command line.

    python starter.py launch examples/login.yaml --id login-1
    python starter.py list --status open
    python starter.py status login-1            (--json for scripts)
    python starter.py timeline login-1
    python starter.py watch login-1             (live, until the ticket finishes)
    python starter.py diagnose login-1 --reason "looks stuck"
    python starter.py result login-1 --version 2
    python starter.py cancel login-1 --reason "superseded"
    python starter.py schema --out schemas
    python starter.py demo                      (the whole story, end to end)
    python starter.py worker                    (the worker; as `python worker.py`)

Installed as the `unstuck` command (`.venv/bin/unstuck launch ...`).

Settings come from ``UNSTUCK_*`` environment variables; ``--address``, ``--namespace``,
``--task-queue``, ``--database-url`` and ``--data-dir`` override them (as in ``worker.py``).
Only ``demo`` and ``worker`` start a Temporal dev server; every other command talks to the
server that answers at the address and needs a worker (``python starter.py worker``) for
queries.

Exit codes: 0 success; 1 failure (ticket not found, server unreachable, message refused);
2 bad usage or an invalid ticket spec.

The code is in the ``cli`` package, one module per command group (``cli/main.py`` says how
to add one); this script re-exports the names scripts and tests use (``starter.run``,
``starter.launch_ticket``, ...). Patch a name in the module that uses it, not here.
"""

from __future__ import annotations

from cli.common import StarterError, open_client, token_path, ui_url
from cli.common import _read as _read
from cli.common import _settings as _settings
from cli.demo import run_demo
from cli.main import _exit, build_parser, main, run
from cli.main import cli as cli  # the `unstuck` command: starter:cli in [project.scripts]
from cli.render import live_view
from cli.tickets import (
    Launched,
    TicketRow,
    TicketSnapshot,
    cancel_ticket,
    diagnose_ticket,
    fetch_result,
    fetch_snapshot,
    launch_ticket,
    list_tickets,
)

__all__ = [
    "Launched",
    "StarterError",
    "TicketRow",
    "TicketSnapshot",
    "build_parser",
    "cancel_ticket",
    "diagnose_ticket",
    "fetch_result",
    "fetch_snapshot",
    "launch_ticket",
    "list_tickets",
    "live_view",
    "main",
    "open_client",
    "run",
    "run_demo",
    "token_path",
    "ui_url",
]

if __name__ == "__main__":
    _exit(main())
