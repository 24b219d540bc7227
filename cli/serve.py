"""Long-running servers: worker, mcp (coding agents' tools), codec-server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cli.common import (
    AddCommand,
    Context,
    StarterError,
    _positive_float,
    _positive_int,
    open_client,
)
from cli.render import _print_fields
from infra.telemetry import CORE_LOGGER


async def cmd_worker(args: argparse.Namespace, ctx: Context) -> int:
    from worker import serve

    logging.getLogger().setLevel(logging.INFO)  # the worker's log is its output,
    logging.getLogger(CORE_LOGGER).propagate = True  # the SDK core's warnings included
    settings = ctx.settings
    if args.no_dev_server:
        settings = settings.model_copy(update={"start_dev_server": False})
    return await serve(settings)


#: The bearer token the MCP server's HTTP transport requires.
MCP_TOKEN_ENV = "UNSTUCK_MCP_TOKEN"


def _log_to_stderr() -> None:
    """The MCP server's log on stderr: on stdio, stdout is the protocol's channel."""
    logger = logging.getLogger("unstuck")
    if not any(h.get_name() == "unstuck-mcp" for h in logger.handlers):
        handler: logging.Handler = logging.StreamHandler(sys.__stderr__)
        handler.set_name("unstuck-mcp")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


async def cmd_mcp(args: argparse.Namespace, ctx: Context) -> int:
    """Serve the ticket's tools over MCP: one agent on stdio, or many over HTTP."""
    from agent_client.mcp_server import Identity, Sessions, serve_http, serve_stdio

    if args.http is None:
        if not args.ticket or not args.name:
            raise StarterError("mcp: --ticket and --name say which agent this server is", 2)
        _log_to_stderr()
        client = await open_client(ctx.settings)
        who = Identity(args.ticket, args.name, args.kind, os.environ.get("UNSTUCK_JOIN_SECRET"))
        await serve_stdio(
            Sessions(client, fixed=who, state_dir=Path(ctx.settings.data_dir) / "mcp")
        )
        return 0
    host, _, port_text = args.http.rpartition(":")
    if not host or not port_text.isdigit():
        raise StarterError(f"--http: give HOST:PORT, got {args.http!r}", 2)
    token = os.environ.get(MCP_TOKEN_ENV, "")
    if len(token) < 16:
        raise StarterError(
            f"--http needs a bearer token of at least 16 characters in {MCP_TOKEN_ENV}: every "
            "client sends it as Authorization: Bearer <token>",
            2,
        )
    _log_to_stderr()
    client = await open_client(ctx.settings)
    ctx.err.print(f"MCP over streamable HTTP at http://{host}:{port_text}/mcp")
    await serve_http(Sessions(client, idle_s=args.idle_timeout), host, int(port_text), token)
    return 0


async def cmd_codec_server(args: argparse.Namespace, ctx: Context) -> int:
    """Serve Temporal's codec protocol with the UNSTUCK_CODEC_KEYS keys until Ctrl-C."""
    from infra.codec import EncryptionCodec
    from infra.codec_server import CodecServer, serve

    settings = ctx.settings
    if settings.codec_keys is None:
        raise StarterError(
            "codec-server needs the payload keys: set UNSTUCK_CODEC_KEYS (id:base64key,...)", 2
        )
    codec = EncryptionCodec.from_keys(settings.codec_keys.get_secret_value())
    token = settings.codec_auth_token
    origins = args.origin or [
        f"http://localhost:{settings.ui_port}",
        f"http://127.0.0.1:{settings.ui_port}",
    ]
    try:
        server = CodecServer(
            codec,
            host=args.host,
            port=args.port,
            origins=origins,
            token=token.get_secret_value() if token is not None else None,
            certfile=Path(args.https_cert) if args.https_cert else None,
            keyfile=Path(args.https_key) if args.https_key else None,
        )
    except OSError as exc:
        raise StarterError(f"cannot serve the codec on {args.host}:{args.port}: {exc}") from None
    except ValueError as exc:
        raise StarterError(str(exc), 2) from None
    _print_fields(
        ctx.out,
        [
            ("codec server", f"{server.url} (POST /encode, /decode)"),
            ("keys", f"{', '.join(codec.ring.ids)}; encrypting with {codec.ring.encrypting_id}"),
            ("CORS origins", ", ".join(origins)),
            ("auth", "bearer token (UNSTUCK_CODEC_AUTH_TOKEN)" if token else "none"),
            ("Web UI", f"temporal server start-dev --ui-codec-endpoint {server.url}"),
            ("CLI", f"temporal workflow show -w ID --codec-endpoint {server.url}"),
        ],
    )
    await serve(server)
    return 0


def add_commands(command: AddCommand) -> None:
    """Register worker, mcp and codec-server (in this order in ``--help``)."""
    worker = command(
        "worker",
        cmd_worker,
        "Run the Unstuck worker (starts the embedded dev server when nothing answers).",
    )
    worker.add_argument(
        "--no-dev-server",
        action="store_true",
        help="never start the embedded dev server; fail if Temporal does not answer",
    )
    mcp = command(
        "mcp",
        cmd_mcp,
        "Serve a ticket's tools to coding agents over MCP (stdio: one agent; --http: many).",
    )
    mcp.add_argument("--ticket", help="stdio: the ticket the agent works on")
    mcp.add_argument("--name", help="stdio: the agent's name on the ticket")
    mcp.add_argument(
        "--kind", choices=("worker", "validator", "diagnostic"), default="worker", help="(worker)"
    )
    mcp.add_argument(
        "--idle-timeout",
        type=_positive_float,
        default=600.0,
        metavar="SECONDS",
        help="--http: stop heartbeating for an agent that called no tool for this long (600)",
    )
    mcp.add_argument(
        "--http",
        metavar="HOST:PORT",
        help=f"serve many agents over streamable HTTP at /mcp (bearer token: {MCP_TOKEN_ENV})",
    )
    codec = command(
        "codec-server",
        cmd_codec_server,
        "Serve the payload codec (UNSTUCK_CODEC_KEYS) for the Web UI and the temporal CLI.",
    )
    codec.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    codec.add_argument("--port", type=_positive_int, default=8888, help="port (8888)")
    codec.add_argument(
        "--origin",
        action="append",
        metavar="URL",
        help="Web UI origin allowed by CORS, repeatable (http://localhost:<ui port>)",
    )
    codec.add_argument("--https-cert", metavar="PEM", help="serve HTTPS with this certificate")
    codec.add_argument("--https-key", metavar="PEM", help="the HTTPS certificate's private key")
