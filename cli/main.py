"""The parser and the entry points: ``run`` (in a running event loop), ``main``, ``cli``.

Adding a command group (say ``cli/escalations.py``):

1. Write the module: its ``cmd_*`` coroutines take ``(args: argparse.Namespace, ctx: Context)``
   and return the exit code (raise ``StarterError`` for an expected failure: one ``error:``
   line and its exit code), plus ``add_commands(command: AddCommand) -> None``, which
   registers each command with ``sub = command(name, cmd_x, help)`` and adds its arguments
   to ``sub``. Shared plumbing is in ``cli.common``, tables in ``cli.render``.
2. Import it below and add its ``add_commands`` to ``COMMAND_GROUPS``: the order there is
   the order of the commands in ``--help``.
3. Re-export from ``starter.py`` whatever scripts or tests call directly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from rich.console import Console
from rich.text import Text

from cli import admin, demo, escalations, serve, tickets
from cli.common import (
    AddCommand,
    Command,
    Context,
    StarterError,
    _common_flags,
    _one_line,
    _settings,
)
from infra.telemetry import core_log_to_file, forward_core_logs

#: Every command group's ``add_commands``, in the order of ``--help``.
COMMAND_GROUPS: tuple[Callable[[AddCommand], None], ...] = (
    tickets.add_commands,
    escalations.add_commands,
    admin.add_commands,
    demo.add_commands,
    serve.add_commands,
)


def build_parser(prog: str = "starter.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Launch, watch and operate Unstuck tickets.",
        epilog="Exit codes: 0 success, 1 failure, 2 bad usage or invalid ticket spec.",
    )
    _common_flags(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Command, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _common_flags(sub, suppress=True)
        sub.set_defaults(handler=handler)
        return sub

    for add_commands in COMMAND_GROUPS:
        add_commands(command)
    return parser


async def run(argv: Sequence[str] | None = None, *, prog: str = "starter.py") -> int:
    """Parse ``argv``, run one command and return its exit code, in the running event loop.

    Expected failures are printed as one ``error: ...`` line on stderr, never raised.
    """
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: argparse already printed it
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    out, err = Console(), Console(stderr=True)
    try:
        settings = _settings(args)
    except ValueError as exc:
        err.print(Text(f"error: invalid settings: {_one_line(str(exc))}", style="red"))
        return 2
    handler: Command = args.handler
    with contextlib.suppress(OSError):  # a log we cannot write is no reason to fail
        core_log_to_file(settings.data_dir)
    try:
        return await handler(args, Context(settings, out, err))
    except StarterError as exc:
        # Spec errors list one field per line; every other failure is one line.
        err.print(Text(f"error: {exc}", style="red"), soft_wrap=True)
        return exc.exit_code


def main(argv: Sequence[str] | None = None, *, prog: str = "starter.py") -> int:
    """Run one command in a new event loop; returns the exit code."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    forward_core_logs()
    try:
        return asyncio.run(run(argv, prog=prog))
    except KeyboardInterrupt:
        Console(stderr=True).print(Text("interrupted", style="yellow"))
        return 130


def _exit(code: int) -> NoReturn:
    """Leave without interpreter teardown.

    The SDK's Rust runtime threads can crash CPython's teardown of a short-lived client
    process ("PyGILState_Release ... finalizing", temporalio/sdk-python#300). Everything
    is done and flushed here, so skip the teardown.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cli() -> NoReturn:
    """The installed ``unstuck`` command ([project.scripts])."""
    _exit(main(prog="unstuck"))
