"""The one way Unstuck processes connect to Temporal: plain-JSON payloads via pydantic.

In production the connection carries TLS (the system's root CAs or ``tls_ca``), mTLS
(``tls_cert`` + ``tls_key``) or an API key (Temporal Cloud), and payloads may be encrypted
(``codec_keys``, :mod:`infra.codec`): see :class:`infra.settings.Settings` and
``docs/security.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from temporalio.client import Client, Interceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from infra.codec import EncryptionCodec
from infra.settings import Settings
from infra.telemetry import tracing_interceptors

__all__ = [
    "TemporalConnectError",
    "connect",
    "data_converter",
    "describe_connection",
    "tls_config",
]


class TemporalConnectError(RuntimeError):
    """Connecting to Temporal failed; the message says where, how (TLS, mTLS, API key) and why."""


def tls_config(settings: Settings) -> TLSConfig | bool:
    """The ``tls`` argument of ``Client.connect`` for ``settings``.

    False without TLS settings; True (the system's root CAs) for ``tls`` or an API key alone;
    else a :class:`TLSConfig` with the CA, the client certificate and key, the server name.
    """
    if not settings.uses_tls:
        return False
    if not (settings.tls_ca or settings.tls_cert or settings.tls_server_name):
        return True
    return TLSConfig(
        server_root_ca_cert=_read_pem(settings, "tls_ca"),
        client_cert=_read_pem(settings, "tls_cert"),
        client_private_key=_read_pem(settings, "tls_key"),
        domain=settings.tls_server_name or None,
    )


def _read_pem(settings: Settings, field: str) -> bytes | None:
    path = getattr(settings, field)
    if path is None:
        return None
    try:
        data: bytes = path.read_bytes()
    except OSError as exc:
        raise TemporalConnectError(f"cannot read {field} {path}: {exc.strerror or exc}") from None
    return data


def data_converter(settings: Settings) -> DataConverter:
    """The pydantic data converter; with ``codec_keys`` it encrypts every payload.

    With a codec, failure messages and stack traces move into the failure's encoded
    attributes (so the codec encrypts them too); the Python SDK, the Web UI and the CLI
    with the codec server decode them back.
    """
    if settings.codec_keys is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec.from_keys(settings.codec_keys.get_secret_value()),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def describe_connection(settings: Settings) -> str:
    """How ``settings`` connect, for messages: e.g. ``TLS (CA ca.pem, client certificate)``."""
    if not settings.uses_tls:
        return "plaintext"
    parts = [f"CA {settings.tls_ca}" if settings.tls_ca else "system root CAs"]
    if settings.tls_cert:
        parts.append(f"client certificate {settings.tls_cert}")
    if settings.tls_server_name:
        parts.append(f"server name {settings.tls_server_name}")
    if settings.api_key is not None:
        parts.append("API key")
    return f"TLS ({', '.join(parts)})"


async def connect(
    settings: Settings,
    *,
    interceptors: Sequence[Interceptor] = (),
    runtime: Runtime | None = None,
) -> Client:
    """A client for ``settings.namespace`` at ``settings.temporal_address``.

    Payloads use the pydantic data converter, so every message is plain JSON that the
    ``temporal`` CLI or an SDK in any language can read and write (with ``codec_keys`` the
    JSON is encrypted; the CLI then reads it through the codec server). When tracing is
    configured in this process (:func:`infra.telemetry.configure_tracing`) the client
    carries the SDK's tracing interceptor, and so do the workers built on it. ``runtime``
    is the temporalio Runtime (e.g. with Prometheus metrics); None = the default one.

    A TLS connection that fails raises :class:`TemporalConnectError` (a RuntimeError) saying
    how it tried to connect.
    """
    tls = tls_config(settings)
    try:
        return await Client.connect(
            settings.temporal_address,
            namespace=settings.namespace,
            data_converter=data_converter(settings),
            interceptors=[*tracing_interceptors(), *interceptors],
            runtime=runtime,
            tls=tls,
            api_key=settings.api_key_value,
        )
    except RuntimeError as exc:
        if tls is False or isinstance(exc, TemporalConnectError):
            raise
        detail = " ".join(str(exc).split())
        hint = _hint(settings, detail)
        raise TemporalConnectError(
            f"cannot connect to Temporal at {settings.temporal_address} over "
            f"{describe_connection(settings)}: {detail}" + (f" ({hint})" if hint else "")
        ) from exc


def _hint(settings: Settings, detail: str) -> str:
    """What a TLS failure of the SDK core (rustls) most likely means, in the settings' terms."""
    if "UnknownIssuer" in detail:
        where = f"the CA in tls_ca ({settings.tls_ca})" if settings.tls_ca else "a system root CA"
        return f"hint: the server's certificate is not signed by {where}"
    if "NotValidForName" in detail:
        name = settings.tls_server_name or settings.host
        return (
            f"hint: the server's certificate is not valid for {name!r}; tls_server_name sets "
            "the name to verify"
        )
    if "CertificateExpired" in detail or "NotValidYet" in detail:
        return "hint: the server's certificate is outside its validity period"
    # How the hang-up shows depends on timing: an alert, a reset, or hyper's "connection
    # closed" when the server drops the connection before the first HTTP/2 frame.
    closed = (
        "close_notify",
        "CertificateRequired",
        "BrokenPipe",
        "ConnectionReset",
        "connection closed",
    )
    if settings.tls_cert is None and any(sign in detail for sign in closed):
        return (
            "hint: the server closed the connection after the handshake; it may require a "
            "client certificate (mTLS): set tls_cert and tls_key"
        )
    if "InvalidContentType" in detail or "CorruptMessage" in detail:
        return "hint: the server does not speak TLS at this address"
    return ""
