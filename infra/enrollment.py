"""Join secrets: who may register an agent on a ticket, and as which kind.

Temporal lets every client of a namespace send any update, so a ticket admits an agent only
with a credential issued for that ticket and that kind (worker, validator, diagnostic). The
credential is derived, never stored: ``HMAC-SHA256(join key, ticket id, kind)``, where the
*join key* is one secret of the deployment:

- ``UNSTUCK_JOIN_KEY`` when set (production: give the same value to every worker and to
  the operators' ``starter.py``), else
- ``<data dir>/join.key``, created (mode 0600) by the first ``starter.py launch``.

The ticket keeps only the sha256 of each kind's secret (``TicketInput.join_sha256``), so
neither the key nor a secret ever reaches Temporal's history. Who holds the key can mint
secrets (``starter.py join-secret``); the local-process and command runtimes hand each agent
the one secret of its kind (``UNSTUCK_JOIN_SECRET``), never the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from models.spec import AgentKind

__all__ = [
    "JOIN_KEY_ENV",
    "JOIN_KINDS",
    "JOIN_SECRET_ENV",
    "EnrollmentError",
    "join_hashes",
    "join_key",
    "join_secret",
]

JOIN_KINDS: tuple[AgentKind, ...] = ("worker", "validator", "diagnostic")
JOIN_KEY_ENV = "UNSTUCK_JOIN_KEY"
#: The one join secret an agent process is given by its runtime.
JOIN_SECRET_ENV = "UNSTUCK_JOIN_SECRET"
KEY_FILE = "join.key"
#: A key shorter than this is refused: a join secret is only as strong as the key.
MIN_KEY_CHARS = 32
PREFIX = "ujs1_"


class EnrollmentError(Exception):
    """No usable join key: the message says where one is looked for."""


def key_path(data_dir: Path) -> Path:
    return data_dir / KEY_FILE


def join_key(data_dir: Path | None, *, create: bool = False) -> bytes:
    """The deployment's join key: ``UNSTUCK_JOIN_KEY``, else ``<data_dir>/join.key``.

    ``create`` makes the file (mode 0600, 256 random bits) when neither exists; otherwise a
    missing key raises :class:`EnrollmentError`.
    """
    value = os.environ.get(JOIN_KEY_ENV, "").strip()
    if value:
        if len(value) < MIN_KEY_CHARS:
            raise EnrollmentError(
                f"{JOIN_KEY_ENV}: is {len(value)} characters; at least {MIN_KEY_CHARS} "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return value.encode("utf-8")
    if data_dir is None:
        raise EnrollmentError(f"no join key: set {JOIN_KEY_ENV}")
    path = key_path(data_dir)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if not create:
            raise EnrollmentError(
                f"no join key: set {JOIN_KEY_ENV} or share {path} (written by the first "
                "`starter.py launch`)"
            ) from None
        return _create_key(path)
    except OSError as exc:
        raise EnrollmentError(f"cannot read the join key {path}: {exc.strerror}") from None
    if len(text) < MIN_KEY_CHARS:
        raise EnrollmentError(f"the join key {path} is shorter than {MIN_KEY_CHARS} characters")
    return text.encode("utf-8")


def _create_key(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_urlsafe(32)
    pending = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    try:
        os.link(pending, path)  # never replaces a key another process created meanwhile
    except FileExistsError:
        pass
    finally:
        pending.unlink(missing_ok=True)
    return path.read_text(encoding="utf-8").strip().encode("utf-8")


def join_secret(key: bytes, ticket_id: str, kind: str) -> str:
    """The secret an agent of ``kind`` registers with on ``ticket_id``."""
    if kind not in JOIN_KINDS:
        raise ValueError(f"kind: must be one of {', '.join(JOIN_KINDS)}, got {kind!r}")
    mac = hmac.new(key, f"unstuck/join/v1/{ticket_id}/{kind}".encode(), hashlib.sha256)
    return PREFIX + base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def join_hashes(key: bytes, ticket_id: str) -> dict[str, str]:
    """kind -> sha256 of its join secret: what a ticket keeps (TicketInput.join_sha256)."""
    return {
        kind: hashlib.sha256(join_secret(key, ticket_id, kind).encode()).hexdigest()
        for kind in JOIN_KINDS
    }
