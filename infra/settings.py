"""Process settings for the worker, the starter and the demo, read once from the environment.

Every setting has an environment variable (``UNSTUCK_*``) and, in ``worker.py`` and
``starter.py``, a command-line flag that overrides it (secrets have no flag: the API key is
read from ``--api-key-file``, the codec keys only from the environment).

The connection to Temporal in production (DESIGN §16): TLS with the system's root CAs
(``tls``) or a private CA (``tls_ca``), mTLS (``tls_cert`` + ``tls_key``), an API key for
Temporal Cloud (``api_key``, which implies TLS), and payload encryption (``codec_keys``, see
:mod:`infra.codec`). Secrets are :class:`pydantic.SecretStr`: never in a repr, a log line or
an error message.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator

from infra.codec import CodecKeyError, parse_keys

#: Custom search attributes every ticket upserts; registered when the dev server starts
#: and documented for production (``temporal operator search-attribute create``).
SEARCH_ATTRIBUTES: dict[str, str] = {
    "TicketStatus": "Keyword",
    "Phase": "Keyword",
    "OpenTasks": "Int",
    "StuckSince": "Datetime",
    "Diagnoses": "Int",
    "Restarts": "Int",
    "AnomalyScore": "Double",
    "EscalationSeverity": "Keyword",
}


class Settings(BaseModel):
    """Where Temporal and the ledger live, and where local files go."""

    temporal_address: str = Field(default="127.0.0.1:7233", description="host:port of Temporal")
    namespace: str = "default"
    task_queue: str = "unstuck"
    host_id: str = Field(
        default_factory=lambda: socket.gethostname() or "localhost",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="this worker's host identity: agent processes it starts are stopped and "
        "restarted through the task queue <task_queue>@<host_id>, which only it polls; "
        "give each worker on one machine its own (default: the host name)",
    )
    max_cached_tickets: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="how many workflows (tickets and diagnoses) this worker keeps in memory; "
        "a workflow task of one not kept replays its whole history first. Size it to the "
        "tickets a worker holds open: about 0.45 MB each (bench.memory)",
    )
    database_url: str = Field(
        default="", description="SQLAlchemy URL of the ledger; empty = SQLite under data_dir"
    )
    data_dir: Path = Path(".unstuck")
    ui_port: int = 8233
    start_dev_server: bool = Field(
        default=True, description="start `temporal server start-dev` when nothing answers"
    )
    otel_exporter: Literal["none", "console", "otlp", "file"] = Field(
        default="file", description="where OpenTelemetry spans go (file = <data_dir>/spans.jsonl)"
    )
    metrics_address: str = Field(
        default="", description="host:port of the Prometheus endpoint; empty = no metrics"
    )
    # ---- production connection (DESIGN §16) ----
    tls: bool = Field(
        default=False,
        description="TLS to Temporal with the system's root CAs (implied by every other TLS "
        "setting and by api_key)",
    )
    tls_ca: Path | None = Field(
        default=None, description="PEM file of the CA that signed the server's certificate"
    )
    tls_cert: Path | None = Field(
        default=None, description="PEM file of this process's client certificate (mTLS)"
    )
    tls_key: Path | None = Field(
        default=None, description="PEM file of the client certificate's private key (mTLS)"
    )
    tls_server_name: str = Field(
        default="",
        description="server name for SNI and certificate verification instead of the "
        "address's host",
    )
    api_key: SecretStr | None = Field(
        default=None, description="API key (Temporal Cloud); sent as a bearer token over TLS"
    )
    api_key_file: Path | None = Field(
        default=None, description="file holding the API key (instead of api_key)"
    )
    codec_keys: SecretStr | None = Field(
        default=None,
        description="payload encryption keys `id:base64key,...`; the first encrypts, all "
        "decrypt (infra.codec)",
    )
    codec_auth_token: SecretStr | None = Field(
        default=None, description="bearer token the codec server requires; unset = none"
    )
    # ---- escalations (DESIGN §14) ----
    sinks_file: Path | None = Field(
        default=None,
        description="YAML/JSON file of the deployment's escalation sinks (webhook, slack, "
        "pagerduty); read by the worker at each delivery, so its secrets stay off history",
    )
    ui_url: str = Field(
        default="",
        description="base URL of the Temporal Web UI in notifications; empty = "
        "http://<temporal host>:<ui_port>",
    )

    @model_validator(mode="after")
    def _check_connection(self) -> Settings:
        for name in ("tls_ca", "tls_cert", "tls_key", "api_key_file", "sinks_file"):
            path = getattr(self, name)
            if path is not None:
                setattr(self, name, path.expanduser())
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = (
                ("tls_cert", "tls_key") if self.tls_key is None else ("tls_key", "tls_cert")
            )
            raise ValueError(
                f"{_named(given)} is set but {_named(missing)} is not: mTLS needs the client "
                "certificate and its private key together"
            )
        if self.tls_ca is not None:
            _pem(self.tls_ca, "tls_ca", "CERTIFICATE")
        if self.tls_cert is not None and self.tls_key is not None:
            _pem(self.tls_cert, "tls_cert", "CERTIFICATE")
            _pem(self.tls_key, "tls_key", "PRIVATE KEY")
        name = self.tls_server_name.strip()
        if name and not _SERVER_NAME.fullmatch(name):
            raise ValueError(
                f"{_named('tls_server_name')} must be a host name or IP address (no scheme, "
                f"port or spaces), got {name!r}"
            )
        self.tls_server_name = name
        if self.api_key_file is not None:
            from_file = _read(self.api_key_file, "api_key_file").strip()
            if not from_file:
                raise ValueError(f"{_named('api_key_file')}: {self.api_key_file} is empty")
            if self.api_key is not None and self.api_key.get_secret_value() != from_file:
                raise ValueError(f"set {_named('api_key')} or {_named('api_key_file')}, not both")
            self.api_key = SecretStr(from_file)
        if self.api_key is not None:
            key = self.api_key.get_secret_value()
            if not key or key != key.strip() or any(c in key for c in "\r\n"):
                raise ValueError(
                    f"{_named('api_key')} must be one line without surrounding whitespace"
                )
        if self.codec_keys is not None:
            try:
                parse_keys(self.codec_keys.get_secret_value())
            except CodecKeyError as exc:
                raise ValueError(f"{_named('codec_keys')}: {exc}") from None
        if self.codec_auth_token is not None and not self.codec_auth_token.get_secret_value():
            self.codec_auth_token = None
        return self

    @property
    def uses_tls(self) -> bool:
        """Whether connections to Temporal use TLS (any TLS setting or an API key)."""
        return bool(
            self.tls
            or self.tls_ca
            or self.tls_cert
            or self.tls_server_name
            or self.api_key is not None
        )

    @property
    def api_key_value(self) -> str | None:
        """The API key itself (for the client only: never log it)."""
        return self.api_key.get_secret_value() if self.api_key is not None else None

    @property
    def ledger_url(self) -> str:
        """The ledger's database URL (SQLite file under the data directory by default)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ledger.db').resolve()}"

    def web_ui(self, ticket_id: str | None = None) -> str:
        """The Temporal Web UI: the namespace's workflow list, or one ticket's page (under
        ``ui_url`` when set, else the dev server's UI next to the Temporal address)."""
        if self.ui_url:
            base = self.ui_url.rstrip("/")
        else:
            host = self.host.strip("[]")
            base = f"http://{f'[{host}]' if ':' in host else host}:{self.ui_port}"
        page = f"{base}/namespaces/{quote(self.namespace, safe='')}/workflows"
        return f"{page}/{quote(ticket_id, safe='')}" if ticket_id else page

    @property
    def host(self) -> str:
        return self.temporal_address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.temporal_address.rsplit(":", 1)[1])

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from ``UNSTUCK_*`` environment variables; ``overrides`` (not None) win.

        Raises :class:`SettingsError` (a ValueError) naming the setting, its variable and the
        rule; the message never quotes a secret.
        """
        env = os.environ
        values: dict[str, object] = {}
        for field, var in ENV_VARS.items():
            if var in env and env[var] != "":
                values[field] = env[var]
        given = {k: v for k, v in overrides.items() if v is not None}
        if "api_key_file" in given:  # a key file given as an override beats a key from env
            values.pop("api_key", None)
        values.update(given)
        return cls.validated(values)

    @classmethod
    def validated(cls, values: dict[str, Any]) -> Settings:
        """``model_validate`` with errors as one :class:`SettingsError` (no input echoed)."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_describe(exc)) from None


#: The environment variable of every setting.
ENV_VARS: dict[str, str] = {
    "temporal_address": "UNSTUCK_TEMPORAL_ADDRESS",
    "namespace": "UNSTUCK_NAMESPACE",
    "task_queue": "UNSTUCK_TASK_QUEUE",
    "host_id": "UNSTUCK_HOST_ID",
    "max_cached_tickets": "UNSTUCK_MAX_CACHED_TICKETS",
    "database_url": "UNSTUCK_DATABASE_URL",
    "data_dir": "UNSTUCK_DATA_DIR",
    "ui_port": "UNSTUCK_UI_PORT",
    "start_dev_server": "UNSTUCK_START_DEV_SERVER",
    "otel_exporter": "UNSTUCK_OTEL_EXPORTER",
    "metrics_address": "UNSTUCK_METRICS_ADDRESS",
    "tls": "UNSTUCK_TEMPORAL_TLS",
    "tls_ca": "UNSTUCK_TEMPORAL_TLS_CA",
    "tls_cert": "UNSTUCK_TEMPORAL_TLS_CERT",
    "tls_key": "UNSTUCK_TEMPORAL_TLS_KEY",
    "tls_server_name": "UNSTUCK_TEMPORAL_TLS_SERVER_NAME",
    "api_key": "UNSTUCK_TEMPORAL_API_KEY",
    "api_key_file": "UNSTUCK_TEMPORAL_API_KEY_FILE",
    "codec_keys": "UNSTUCK_CODEC_KEYS",
    "codec_auth_token": "UNSTUCK_CODEC_AUTH_TOKEN",
    "sinks_file": "UNSTUCK_SINKS_FILE",
    "ui_url": "UNSTUCK_UI_URL",
}

_SERVER_NAME = re.compile(r"[A-Za-z0-9._:\[\]-]+")
#: Largest PEM file read (a certificate chain is a few KB).
_PEM_LIMIT = 1024 * 1024


class SettingsError(ValueError):
    """Invalid settings; the message names each setting, its variable and the rule broken."""


def _named(field: str) -> str:
    return f"{field} ({ENV_VARS[field]})"


def _read(path: Path, field: str) -> str:
    try:
        if path.stat().st_size > _PEM_LIMIT:
            raise ValueError(f"{_named(field)}: {path} is larger than {_PEM_LIMIT} bytes")
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{_named(field)}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{_named(field)}: {path} is not a text (PEM) file") from None


def _pem(path: Path, field: str, kind: str) -> None:
    """A readable PEM file holding a ``kind`` block (CERTIFICATE, PRIVATE KEY)."""
    text = _read(path, field)
    if not re.search(rf"-----BEGIN [A-Z ]*{kind}-----", text):
        raise ValueError(f"{_named(field)}: {path} holds no PEM {kind} block")


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        loc = ".".join(str(part) for part in error.get("loc", ()))
        if loc in ENV_VARS:
            message = f"{_named(loc)}: {message}"
        elif loc:
            message = f"{loc}: {message}"
        problems.append(message)
    return "; ".join(problems)


# ---- command-line flags for the connection -------------------------------------------------


class _ExportEnv(argparse.Action):
    """Sets the flag's ``UNSTUCK_*`` variable in this process's environment.

    So the flag overrides the environment for :meth:`Settings.from_env`, and the processes
    this one starts (the local-process runtime's agents inherit the worker's environment)
    connect the same way.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, *, env: str, **kwargs: Any):
        self.env = env
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        value = "true" if self.nargs == 0 else str(values)
        os.environ[self.env] = value
        setattr(namespace, self.dest, value)


class _RefuseSecret(argparse.Action):
    """``--api-key VALUE``: refused (the value would show in ``ps``), and not taken as an
    abbreviation of ``--api-key-file``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} is not a flag: a command line is visible to every user (ps). "
            "Use --api-key-file FILE or the UNSTUCK_TEMPORAL_API_KEY environment variable."
        )


def add_connection_flags(group: argparse._ActionsContainer) -> None:
    """``--tls``, ``--tls-ca``, ``--tls-cert``, ``--tls-key``, ``--tls-server-name``,
    ``--api-key-file``: each sets its ``UNSTUCK_*`` variable for this process and its children.

    The API key itself has no flag (a command line is visible to every user in ``ps``).
    """
    group.add_argument(
        "--tls",
        action=_ExportEnv,
        default=argparse.SUPPRESS,
        nargs=0,
        env=ENV_VARS["tls"],
        help="TLS to Temporal with the system's root CAs (UNSTUCK_TEMPORAL_TLS)",
    )
    for option, field, metavar, what in (
        ("--tls-ca", "tls_ca", "PEM", "CA certificate to verify the server's certificate with"),
        ("--tls-cert", "tls_cert", "PEM", "client certificate for mTLS"),
        ("--tls-key", "tls_key", "PEM", "client private key for mTLS"),
        ("--tls-server-name", "tls_server_name", "NAME", "server name to verify (SNI)"),
        ("--api-key-file", "api_key_file", "FILE", "file holding the API key (Temporal Cloud)"),
    ):
        group.add_argument(
            option,
            action=_ExportEnv,
            default=argparse.SUPPRESS,
            metavar=metavar,
            env=ENV_VARS[field],
            help=f"{what} ({ENV_VARS[field]})",
        )
    group.add_argument(
        "--api-key", action=_RefuseSecret, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
