"""A codec server: the Web UI and the ``temporal`` CLI read encrypted payloads through it.

    python starter.py codec-server --port 8888 [--origin http://localhost:8233]

Temporal's codec server protocol: ``POST .../encode`` and ``POST .../decode`` (only the last
path segment counts, so ``http://host:8888/{namespace}/decode`` works too) with the JSON of a
``temporal.api.common.v1.Payloads`` message, ``{"payloads": [{"metadata": {"encoding":
"<base64>"}, "data": "<base64>"}]}``, answered in the same shape. CORS for the Web UI's
origins (the preflight allows ``content-type``, ``x-namespace`` and ``authorization``). With
``UNSTUCK_CODEC_AUTH_TOKEN`` set every POST needs ``Authorization: Bearer <token>``, compared
in constant time.

The standard library's threading HTTP server (no extra dependency); the codec itself is
:class:`infra.codec.EncryptionCodec`. Whoever can reach this server can decrypt and encrypt
with the keys: bind it to loopback (the default) or put it behind TLS and a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import signal
import ssl
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from infra.codec import CodecError, EncryptionCodec

__all__ = ["MAX_BODY_BYTES", "CodecServer", "serve"]

log = logging.getLogger("unstuck.codec_server")

#: Largest request body accepted (a history page of payloads; Temporal caps one at 2 MB).
MAX_BODY_BYTES = 64 * 1024 * 1024
ALLOWED_HEADERS = "content-type, x-namespace, authorization"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    codec: EncryptionCodec
    origins: frozenset[str]
    token: bytes | None


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "unstuck-codec"
    protocol_version = "HTTP/1.1"

    # ---- CORS ----

    def _cors(self) -> None:
        origin = self.headers.get("Origin")
        if origin and origin in self.server.origins:
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Vary", "Origin")

    def do_OPTIONS(self) -> None:
        origin = self.headers.get("Origin")
        if not origin or origin not in self.server.origins:
            self._reply(HTTPStatus.FORBIDDEN, {"error": f"origin {origin!r} is not allowed"})
            return
        self.send_response(HTTPStatus.NO_CONTENT)
        self._cors()
        self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    # ---- encode / decode ----

    def do_POST(self) -> None:
        action = urlsplit(self.path).path.rstrip("/").rsplit("/", 1)[-1]
        if action not in ("encode", "decode"):
            self._reply(HTTPStatus.NOT_FOUND, {"error": "POST to .../encode or .../decode"})
            return
        origin = self.headers.get("Origin")
        if origin is not None and origin.rstrip("/") not in self.server.origins:
            # A browser sends Origin on every cross-site POST: a page of another site (or a
            # DNS-rebinding one) must not use this server to decrypt, even without a token.
            self._reply(HTTPStatus.FORBIDDEN, {"error": f"origin {origin!r} is not allowed"})
            return
        if not self._authorized():
            self._reply(
                HTTPStatus.UNAUTHORIZED,
                {"error": "missing or wrong Authorization: Bearer token"},
                extra={"WWW-Authenticate": 'Bearer realm="unstuck-codec"'},
            )
            return
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
            return
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            self._reply(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"error": f"body over {MAX_BODY_BYTES} bytes"},
            )
            return
        body = self.rfile.read(length)
        try:
            payloads = json_format.Parse(body, Payloads())
        except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": f"not Payloads JSON: {exc}"})
            return
        codec = self.server.codec
        try:
            if action == "encode":
                out = [codec.encrypt(p) for p in payloads.payloads]
            else:
                out = [codec.decrypt(p) for p in payloads.payloads]
        except CodecError as exc:
            self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        log.debug(
            "%s %d payload(s) for namespace %s",
            action,
            len(out),
            self.headers.get("X-Namespace", "?"),
        )
        # proto3 JSON of a Payloads message (bytes as base64), "payloads" even when empty.
        self._reply(HTTPStatus.OK, {"payloads": [json_format.MessageToDict(p) for p in out]})

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "").encode("utf-8", errors="replace")
        return hmac.compare_digest(given, b"Bearer " + token)

    def _reply(
        self,
        status: HTTPStatus,
        body: dict[str, Any],
        *,
        extra: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self._cors()
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if status >= 400:  # the request's body may be unread: no keep-alive after it
            self.close_connection = True
            self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # never payloads, never tokens
        log.info("%s %s", self.address_string(), format % args)


class CodecServer:
    """The codec server on a background thread: ``with CodecServer(codec) as server: ...``.

    ``port=0`` picks a free port (see :attr:`port`). ``origins`` are the Web UI origins
    allowed by CORS. ``token``: the bearer token every POST must carry (None = none).
    ``certfile``/``keyfile``: serve HTTPS (a Web UI on https:// needs an https:// endpoint).
    """

    def __init__(
        self,
        codec: EncryptionCodec,
        *,
        host: str = "127.0.0.1",
        port: int = 8888,
        origins: Sequence[str] = ("http://localhost:8233",),
        token: str | None = None,
        certfile: Path | None = None,
        keyfile: Path | None = None,
    ) -> None:
        if token is None and not _loopback(host):
            raise ValueError(
                f"host: {host!r} is reachable from other machines; a codec server there "
                "needs a token (UNSTUCK_CODEC_AUTH_TOKEN), or bind 127.0.0.1"
            )
        self._server = _Server((host, port), _Handler)
        self._server.codec = codec
        self._server.origins = frozenset(o.rstrip("/") for o in origins)
        self._server.token = token.encode("utf-8") if token else None
        self.scheme = "http"
        if certfile is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(certfile, keyfile)
            # The handshake happens on the handler's thread, not in the accept loop.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def url(self) -> str:
        host = str(self._server.server_address[0])
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self) -> CodecServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="codec-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> CodecServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def serve(server: CodecServer, *, ready: asyncio.Event | None = None) -> None:
    """Run ``server`` until SIGINT or SIGTERM (or until cancelled)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not where signals cannot be handled (Windows: NotImplementedError; a thread other
        # than the main one: RuntimeError/ValueError): there it runs until cancelled.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        with server:
            if ready is not None:
                ready.set()
            await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
