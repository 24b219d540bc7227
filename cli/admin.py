"""Administration commands: join-secret (enrollment) and schema."""

from __future__ import annotations

import argparse

from rich import box
from rich.table import Table

from cli.common import AddCommand, Context, StarterError
from infra.enrollment import JOIN_KINDS, EnrollmentError, join_key, join_secret
from models.schema import json_schemas, write_schemas


async def cmd_join_secret(args: argparse.Namespace, ctx: Context) -> int:
    """Print the secret an agent of ``--kind`` registers with on the ticket (enrollment).

    Derived from the deployment's join key (UNSTUCK_JOIN_KEY or <data dir>/join.key), so
    only who holds the key can mint it; the ticket keeps only its hash. Printed alone on
    stdout, for ``export UNSTUCK_JOIN_SECRET=$(python starter.py join-secret ID)``.
    """
    try:
        key = join_key(ctx.settings.data_dir)
    except EnrollmentError as exc:
        raise StarterError(str(exc)) from None
    print(join_secret(key, args.ticket_id, args.kind))
    return 0


async def cmd_schema(args: argparse.Namespace, ctx: Context) -> int:
    names = list(json_schemas())
    written = write_schemas(args.out)
    table = Table(title=f"JSON Schemas in {args.out}", box=box.SIMPLE_HEAVY)
    table.add_column("schema")
    table.add_column("file")
    for name, path in zip(names, written, strict=False):
        table.add_row(name, str(path))
    ctx.out.print(table)
    ctx.out.print(f"{len(names)} schemas and {written[-1].name} written to {args.out}")
    return 0


def add_commands(command: AddCommand) -> None:
    """Register join-secret and schema (in this order in ``--help``)."""
    join = command(
        "join-secret",
        cmd_join_secret,
        "Print the secret an agent of one kind registers with on a ticket "
        "(UNSTUCK_JOIN_SECRET; keep it like a password).",
    )
    join.add_argument("ticket_id", metavar="TICKET_ID")
    join.add_argument("--kind", choices=JOIN_KINDS, default="worker", help="agent kind (worker)")

    schema = command("schema", cmd_schema, "Write the JSON Schema of every message.")
    schema.add_argument("--out", default="schemas", metavar="DIR", help="directory (./schemas)")
