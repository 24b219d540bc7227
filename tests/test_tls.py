"""TLS, mTLS and API keys to Temporal, against a loopback TLS-terminating proxy.

The session's dev server speaks plaintext gRPC; :class:`TlsProxy` terminates TLS (ALPN h2,
certificates made here with ``cryptography``) and forwards the bytes to it, so the real SDK
connection code (rustls in the SDK core) talks TLS to a real Temporal frontend.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio import activity, workflow
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, GetSystemInfoRequest
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

import worker as worker_module
from activities import notify
from infra.client import TemporalConnectError, connect, tls_config
from infra.devserver import DevServer, DevServerError, ensure_server, free_port
from infra.settings import ENV_VARS, Settings, SettingsError
from ledger.store import Ledger
from starter import _settings, build_parser
from tests.receiver import Receiver
from tests.test_sinks import Run as SinkRun
from tests.test_sinks import request, settings_with, write_sinks

# ---- certificates ---------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    cn: str,
    *,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_suffix(".key")
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and localhost, a client one, a stranger CA."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _ca("Unstuck test CA")
    _, other_cert = _ca("Some other CA")
    server_key, server_cert = _leaf(
        ca_key,
        ca_cert,
        "localhost",
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key, client_cert = _leaf(
        ca_key,
        ca_cert,
        "unstuck-worker",
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        sans=[x509.DNSName("unstuck-worker")],
    )
    _write(d / "ca.pem", ca_cert)
    _write(d / "other-ca.pem", other_cert)
    _write(d / "server.pem", server_cert, server_key)
    _write(d / "client.pem", client_cert, client_key)
    return Pki(
        ca=d / "ca.pem",
        other_ca=d / "other-ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
    )


# ---- the TLS-terminating proxy ----------------------------------------------------------------


class TlsProxy:
    """TLS (ALPN h2) on a loopback port, the bytes forwarded to a plaintext gRPC port."""

    def __init__(self, target: str, context: ssl.SSLContext) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.context = context
        self.connections = 0
        self.handshakes = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> TlsProxy:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.context, ssl_handshake_timeout=10
        )
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._writers.difference_update((writer, up_writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def _server_context(pki: Pki, *, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.set_alpn_protocols(["h2"])
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=pki.ca)
    return context


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tls_proxy(temporal_server: DevServer, pki: Pki) -> AsyncIterator[TlsProxy]:
    proxy = await TlsProxy(
        temporal_server.address, _server_context(pki, require_client_cert=False)
    ).start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mtls_proxy(temporal_server: DevServer, pki: Pki) -> AsyncIterator[TlsProxy]:
    proxy = await TlsProxy(
        temporal_server.address, _server_context(pki, require_client_cert=True)
    ).start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest.fixture(autouse=True)
def _own_environment() -> Iterator[None]:
    """Connection flags set UNSTUCK_* variables: each test gets the environment back."""
    with mock.patch.dict(os.environ):
        for var in ENV_VARS.values():
            os.environ.pop(var, None)
        yield


def over(settings: Settings, proxy: TlsProxy | None = None, **values: Any) -> Settings:
    """The session's settings pointed at ``proxy``, with ``values``, validated."""
    base = settings.model_dump()
    if proxy is not None:
        base["temporal_address"] = proxy.address
    return Settings.validated({**base, **values})


# ---- a round trip through TLS --------------------------------------------------------------


@activity.defn(name="tls_shout")
async def shout(text: str) -> str:
    return text.upper()


@workflow.defn(name="TlsRoundTrip")
class RoundTrip:
    @workflow.run
    async def run(self, text: str) -> str:
        return await workflow.execute_activity(
            shout, text, start_to_close_timeout=timedelta(seconds=30)
        )


async def test_tls_with_the_ca_runs_a_workflow_round_trip(
    settings: Settings, tls_proxy: TlsProxy, pki: Pki
) -> None:
    tls = over(settings, tls_proxy, tls_ca=pki.ca)
    assert tls.uses_tls
    # ensure_server attaches through TLS (and registers nothing new: the attributes exist).
    server = await ensure_server(tls)
    assert not server.owned
    started = time.monotonic()
    client = await connect(tls)
    connected = time.monotonic() - started
    await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=tls.namespace)
    )
    queue = f"tls-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[RoundTrip],
        activities=[shout],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        result = await client.execute_workflow(
            RoundTrip.run,
            "over tls",
            id=f"tls-{uuid.uuid4().hex[:10]}",
            task_queue=queue,
            execution_timeout=timedelta(seconds=60),
        )
    assert result == "OVER TLS"
    assert tls_proxy.connections >= 1
    assert connected < 5, f"connecting over TLS took {connected:.2f} s"


async def test_server_name_override_is_verified(
    settings: Settings, tls_proxy: TlsProxy, pki: Pki
) -> None:
    # The certificate names localhost and 127.0.0.1: connect to 127.0.0.1, verify "localhost".
    ok = over(settings, tls_proxy, tls_ca=pki.ca, tls_server_name="localhost")
    client = await connect(ok)
    await client.workflow_service.get_system_info(GetSystemInfoRequest())
    wrong = over(settings, tls_proxy, tls_ca=pki.ca, tls_server_name="temporal.example.invalid")
    with pytest.raises(TemporalConnectError) as refused:
        await asyncio.wait_for(connect(wrong), 20)
    assert "server name temporal.example.invalid" in str(refused.value)
    assert "hint: the server's certificate is not valid for 'temporal.example.invalid'" in str(
        refused.value
    )


async def test_a_server_signed_by_another_ca_is_refused_with_a_clear_error(
    settings: Settings, tls_proxy: TlsProxy, pki: Pki
) -> None:
    wrong = over(settings, tls_proxy, tls_ca=pki.other_ca)
    started = time.monotonic()
    with pytest.raises(TemporalConnectError) as refused:
        await asyncio.wait_for(connect(wrong), 20)
    message = str(refused.value)
    assert f"cannot connect to Temporal at {tls_proxy.address} over TLS (CA {pki.other_ca}" in (
        message
    )
    assert f"hint: the server's certificate is not signed by the CA in tls_ca ({pki.other_ca})" in (
        message
    )
    assert time.monotonic() - started < 15
    with pytest.raises(
        DevServerError, match=r"Cannot connect to the Temporal server at \S+ over TLS"
    ):
        await ensure_server(wrong)
    # Without any CA, the system roots do not know the test CA either.
    with pytest.raises(TemporalConnectError, match="system root CAs"):
        await asyncio.wait_for(connect(over(settings, tls_proxy, tls=True)), 20)


async def test_plaintext_to_a_tls_port_and_tls_to_a_plaintext_port_fail(
    settings: Settings, tls_proxy: TlsProxy, pki: Pki
) -> None:
    with pytest.raises(TemporalConnectError) as refused:
        await asyncio.wait_for(connect(over(settings, tls_ca=pki.ca)), 20)  # the dev server
    assert "hint: the server does not speak TLS at this address" in str(refused.value)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(connect(over(settings, tls_proxy)), 20)


async def test_mtls_refuses_a_client_without_certificate_and_accepts_one_with_it(
    settings: Settings, mtls_proxy: TlsProxy, pki: Pki
) -> None:
    anonymous = over(settings, mtls_proxy, tls_ca=pki.ca)
    with pytest.raises(TemporalConnectError) as refused:
        await asyncio.wait_for(connect(anonymous), 20)
    assert "over TLS (CA" in str(refused.value)
    assert "it may require a client certificate (mTLS): set tls_cert and tls_key" in str(
        refused.value
    )
    assert mtls_proxy.connections == 0  # the proxy never forwarded an unauthenticated byte
    mutual = over(
        settings, mtls_proxy, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key
    )
    config = tls_config(mutual)
    assert not isinstance(config, bool)
    assert config.client_cert == pki.client_cert.read_bytes()
    client = await connect(mutual)
    reply = await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=mutual.namespace)
    )
    assert reply.namespace_info.name == mutual.namespace
    assert mtls_proxy.connections >= 1


async def test_an_api_key_goes_over_tls(
    settings: Settings, tls_proxy: TlsProxy, pki: Pki, tmp_path: Path
) -> None:
    key_file = tmp_path / "api.key"
    key_file.write_text("tmprl-test-key-1234\n")
    keyed = over(settings, tls_proxy, tls_ca=pki.ca, api_key_file=key_file)
    assert keyed.api_key_value == "tmprl-test-key-1234"
    client = await connect(keyed)
    assert client.service_client.config.api_key == "tmprl-test-key-1234"
    # The dev server behind the proxy ignores the bearer token, so the call goes through.
    await client.workflow_service.describe_namespace(
        DescribeNamespaceRequest(namespace=keyed.namespace)
    )
    # An API key alone means TLS (with the system roots), never a plaintext bearer token.
    assert tls_config(Settings.from_env(api_key="k")) is True


async def test_no_dev_server_is_started_for_tls_settings(settings: Settings, pki: Pki) -> None:
    port = free_port()
    tls = over(settings, temporal_address=f"127.0.0.1:{port}", tls_ca=pki.ca)
    tls = tls.model_copy(update={"start_dev_server": True})
    with pytest.raises(DevServerError, match="dev server is not started"):
        await ensure_server(tls)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "something listens: a server started"


# ---- settings, flags, secrets -------------------------------------------------------------------


def test_settings_name_the_setting_and_the_rule(pki: Pki, tmp_path: Path) -> None:
    def error(**values: Any) -> str:
        with pytest.raises(SettingsError) as caught:
            Settings.from_env(**values)
        return str(caught.value)

    assert error(tls_cert=pki.client_cert) == (
        "tls_cert (UNSTUCK_TEMPORAL_TLS_CERT) is set but tls_key (UNSTUCK_TEMPORAL_TLS_KEY) is "
        "not: mTLS needs the client certificate and its private key together"
    )
    assert error(tls_key=pki.client_key).startswith(
        "tls_key (UNSTUCK_TEMPORAL_TLS_KEY) is set but tls_cert (UNSTUCK_TEMPORAL_TLS_CERT) is not"
    )
    missing = tmp_path / "nope.pem"
    assert error(tls_ca=missing) == (
        f"tls_ca (UNSTUCK_TEMPORAL_TLS_CA): cannot read {missing}: No such file or directory"
    )
    assert error(tls_ca=pki.client_key) == (
        f"tls_ca (UNSTUCK_TEMPORAL_TLS_CA): {pki.client_key} holds no PEM CERTIFICATE block"
    )
    assert "holds no PEM PRIVATE KEY block" in error(
        tls_cert=pki.client_cert, tls_key=pki.client_cert
    )
    assert "tls_server_name (UNSTUCK_TEMPORAL_TLS_SERVER_NAME) must be a host name" in error(
        tls_server_name="https://temporal:7233/"
    )
    key_file = tmp_path / "key"
    key_file.write_text("from-file")
    assert "set api_key (UNSTUCK_TEMPORAL_API_KEY) or api_key_file" in error(
        api_key="other-key", api_key_file=key_file
    )
    (tmp_path / "empty").write_text("\n")
    assert "is empty" in error(api_key_file=tmp_path / "empty")
    assert "must be one line" in error(api_key="two\nlines")
    unreadable = error(api_key_file=tmp_path)
    assert unreadable.startswith("api_key_file (UNSTUCK_TEMPORAL_API_KEY_FILE): cannot read")


async def test_the_workflow_cache_is_sized_by_a_setting(
    client: Client, settings: Settings, ledger: Ledger
) -> None:
    """A worker holding more open tickets than its cache replays a ticket's whole history on
    each of its workflow tasks: the cache size is the operator's (UNSTUCK_MAX_CACHED_TICKETS)."""
    assert Settings.from_env().max_cached_tickets == 1000
    os.environ["UNSTUCK_MAX_CACHED_TICKETS"] = "12000"
    try:
        sized = Settings.from_env(temporal_address=settings.temporal_address)
    finally:
        del os.environ["UNSTUCK_MAX_CACHED_TICKETS"]
    built = worker_module.build_worker(client, sized, ledger)
    assert built.shared.config()["max_cached_workflows"] == 12000
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(max_cached_tickets="0")
    assert str(caught.value) == (
        "max_cached_tickets (UNSTUCK_MAX_CACHED_TICKETS): Input should be greater than or "
        "equal to 1"
    )


async def test_an_https_sink_behind_an_internal_ca_gets_escalations(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deliveries share one TLS context per worker (built once: loading the CA bundle was the
    largest cost of an escalation at scale), and it trusts what SSL_CERT_FILE names."""
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(pki.server_cert, pki.server_key)
    receiver = Receiver(tls=served).up()
    try:
        path = write_sinks(
            tmp_path / "sinks.yaml", {"name": "hook", "kind": "webhook", "url": receiver.url}
        )
        monkeypatch.setattr(notify, "FIRST_BACKOFF_S", 0.05)
        # Not trusted (the public CA bundle): not delivered, the error says why, retried.
        untrusted = notify.NotifyActivities(settings_with(path))
        run = SinkRun(untrusted, request())
        await run.until(lambda: any(b.last_errors for b in run.beats), "a failed try")
        assert "CERTIFICATE_VERIFY_FAILED" in run.beats[-1].last_errors[0]
        assert (await run.cancelled()).delivered == [] and receiver.ok() == []
        # The operator's CA: every delivery of one worker, over one context.
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        trusting = notify.NotifyActivities(settings_with(path))
        for n in (1, 2):
            outcome = await SinkRun(trusting, request()).outcome()
            assert (outcome.delivered, outcome.complete) == (["hook"], True)
            assert len(receiver.ok()) == n
    finally:
        receiver.down()


def test_secrets_stay_out_of_reprs_and_errors(tmp_path: Path) -> None:
    settings = Settings.from_env(api_key="sekret-api-key", codec_keys=f"k1:{'A' * 43}=")
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "sekret-api-key" not in text
        assert "A" * 43 not in text
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(api_key="sekret-api-key", ui_port="not-a-port")
    assert "sekret-api-key" not in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(codec_keys="k1:c2VrcmV0LWNvZGVjLWtleQ==")
    assert "c2VrcmV0LWNvZGVjLWtleQ" not in str(caught.value)
    assert "codec_keys (UNSTUCK_CODEC_KEYS)" in str(caught.value)


def test_environment_variables_configure_the_connection(pki: Pki, tmp_path: Path) -> None:
    key_file = tmp_path / "api.key"
    key_file.write_text("env-key")
    os.environ.update(
        {
            "UNSTUCK_TEMPORAL_TLS_CA": str(pki.ca),
            "UNSTUCK_TEMPORAL_TLS_CERT": str(pki.client_cert),
            "UNSTUCK_TEMPORAL_TLS_KEY": str(pki.client_key),
            "UNSTUCK_TEMPORAL_TLS_SERVER_NAME": "temporal.internal",
            "UNSTUCK_TEMPORAL_API_KEY": "env-value",
        }
    )
    s = Settings.from_env()
    assert (s.tls_ca, s.tls_cert, s.tls_key) == (pki.ca, pki.client_cert, pki.client_key)
    assert s.tls_server_name == "temporal.internal" and s.api_key_value == "env-value"
    config = tls_config(s)
    assert not isinstance(config, bool)
    assert config.domain == "temporal.internal"
    assert config.server_root_ca_cert == pki.ca.read_bytes()
    assert config.client_private_key == pki.client_key.read_bytes()
    # A key file given as a flag/override wins over the key in the environment.
    assert Settings.from_env(api_key_file=key_file).api_key_value == "env-key"
    os.environ["UNSTUCK_TEMPORAL_TLS"] = "true"
    del os.environ["UNSTUCK_TEMPORAL_TLS_CA"]
    assert Settings.from_env(tls_cert=None).tls


def test_connection_flags_reach_the_settings_and_the_environment(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "api.key"
    key_file.write_text("flag-key")
    argv = [
        "--tls-ca",
        str(pki.ca),
        "status",
        "some-ticket",
        "--tls-cert",
        str(pki.client_cert),
        "--tls-key",
        str(pki.client_key),
        "--tls-server-name",
        "localhost",
        "--api-key-file",
        str(key_file),
    ]
    s = _settings(build_parser().parse_args(argv))
    assert s.tls_ca == pki.ca and s.tls_cert == pki.client_cert and s.tls_key == pki.client_key
    assert s.tls_server_name == "localhost" and s.api_key_value == "flag-key"
    # Exported, so agent processes the worker starts connect the same way.
    assert os.environ["UNSTUCK_TEMPORAL_TLS_CA"] == str(pki.ca)
    assert os.environ["UNSTUCK_TEMPORAL_API_KEY_FILE"] == str(key_file)
    assert "flag-key" not in " ".join(os.environ.values())
    # The worker's own command line takes the same flags.
    for var in ENV_VARS.values():
        os.environ.pop(var, None)
    ws = worker_module.parse_args(["--tls", "--tls-ca", str(pki.ca), "--no-dev-server"])
    assert ws.tls and ws.tls_ca == pki.ca and ws.uses_tls and not ws.start_dev_server
    with pytest.raises(SystemExit) as usage:
        worker_module.parse_args(["--tls-cert", str(pki.client_cert)])
    assert usage.value.code == 2
    # No flag carries the key itself (it would show in ps).
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--api-key", "visible-in-ps", "list"])
    assert "is not a flag: a command line is visible" in capsys.readouterr().err
    assert "UNSTUCK_TEMPORAL_API_KEY_FILE" not in os.environ  # not taken for --api-key-file
