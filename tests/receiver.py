"""A real local HTTP receiver for escalation sinks: down, slow, failing or healthy.

It listens on a real port (in a thread), records every request it answered, and answers
each one by the next entry of its script (then by ``then``): an int is a status code,
``("slow", seconds)`` answers 200 after sleeping, ``("status", code, body)`` a status with a
body. ``down()`` closes the port (connections are refused) until ``up()``.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = int | tuple[Any, ...]


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    port: int = 0
    script: deque[Reply] = field(default_factory=deque)
    then: Reply = 200
    requests: list[Received] = field(default_factory=list)
    attempts: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Serve HTTPS with this (server) context instead of plain HTTP.
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        if not self.port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    def answer(self, *replies: Reply, then: Reply = 200) -> Receiver:
        self.script = deque(replies)
        self.then = then
        return self

    def up(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.attempts += 1
                    reply = receiver.script.popleft() if receiver.script else receiver.then
                status, text = 200, b"ok"
                if isinstance(reply, int):
                    status, text = reply, b"error" if reply >= 400 else b"ok"
                elif reply[0] == "slow":
                    time.sleep(reply[1])
                elif reply[0] == "status":
                    status, text = reply[1], reply[2].encode()
                # Recorded before the answer is written: a client that has its answer (and a
                # test that then reads ok()) must find the request here already.
                received = Received(self.path, dict(self.headers), body, status, time.time())
                with receiver._lock:
                    receiver.requests.append(received)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                except OSError:  # the client gave up waiting (a slow answer): it did not get it
                    with receiver._lock:
                        receiver.requests.remove(received)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ok(self) -> list[Received]:
        """The requests it answered with a 2xx."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def events(self) -> list[tuple[str, str]]:
        """(event, dedup key) of each accepted webhook/PagerDuty message, in order."""
        out = []
        for r in self.ok():
            data = r.json
            if "event_action" in data:
                out.append((data["event_action"], data["dedup_key"]))
            elif "event" in data:
                out.append((data["event"], data["dedup_key"]))
            else:
                out.append(("slack", data["text"]))
        return out
