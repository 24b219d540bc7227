"""Payload encryption (infra.codec) and the codec server (infra.codec_server).

Unit tests of the AES-GCM codec and its key ring, the codec server's HTTP protocol, and an
integration run on the session's dev server: a client and worker with the codec run a
workflow whose input, result, signals, summaries, memo and failure carry a marker, and the
raw history bytes the server keeps do not contain it, while the codec server (and the
``temporal`` CLI through it) reads it back.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio import activity, workflow
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DefaultFailureConverterWithEncodedAttributes
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from infra.client import connect, data_converter
from infra.codec import (
    ENCODING,
    KEY_ID_KEY,
    CodecError,
    CodecKeyError,
    EncryptionCodec,
    KeyRing,
    new_key,
    parse_keys,
)
from infra.codec_server import CodecServer
from infra.devserver import find_temporal_binary, free_port
from infra.settings import ENV_VARS, Settings
from starter import run

K1 = new_key()
K2 = new_key()


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


@pytest.fixture(autouse=True)
def _own_environment() -> Iterator[None]:
    with mock.patch.dict(os.environ):
        for var in ENV_VARS.values():
            os.environ.pop(var, None)
        yield


# ---- the codec ------------------------------------------------------------------------------


async def test_round_trip_keeps_metadata_and_data() -> None:
    codec = EncryptionCodec.from_keys(f"k1:{K1}")
    original = Payload(
        metadata={"encoding": b"json/plain", "messageType": b"x"}, data=b'{"secret": 1}'
    )
    [sealed] = await codec.encode([original])
    assert sealed.metadata["encoding"] == ENCODING == b"binary/encrypted"
    assert sealed.metadata[KEY_ID_KEY] == b"k1"
    assert b"secret" not in sealed.SerializeToString()
    assert len(sealed.data) == 12 + len(original.SerializeToString()) + 16  # nonce, tag
    [opened] = await codec.decode([sealed])
    assert opened == original
    [again] = await codec.encode([original])
    assert again.data[:12] != sealed.data[:12] and again.data != sealed.data  # fresh nonce


async def test_rotation_decrypts_old_keys_and_encrypts_with_the_first() -> None:
    old = EncryptionCodec.from_keys(f"k1:{K1}")
    [by_k1] = await old.encode([plain("before rotation")])
    rotated = EncryptionCodec.from_keys(f"k2:{K2}, k1:{K1}")
    assert rotated.ring.encrypting_id == "k2" and rotated.ring.ids == ["k2", "k1"]
    assert await rotated.decode([by_k1]) == [plain("before rotation")]
    [by_k2] = await rotated.encode([plain("after rotation")])
    assert by_k2.metadata[KEY_ID_KEY] == b"k2"
    assert await rotated.decode([by_k2]) == [plain("after rotation")]
    with pytest.raises(CodecKeyError) as unknown:
        await old.decode([by_k2])
    assert str(unknown.value) == (
        "the payload was encrypted with key id 'k2', which UNSTUCK_CODEC_KEYS does not hold "
        "(it holds 'k1'); add that key to decrypt it"
    )


async def test_tampered_truncated_or_foreign_ciphertext_fails_authentication() -> None:
    codec = EncryptionCodec.from_keys(f"k1:{K1}")
    [sealed] = await codec.encode([plain("integrity")])
    for index in (0, 12, len(sealed.data) - 1):  # nonce, ciphertext, tag
        tampered = Payload()
        tampered.CopyFrom(sealed)
        data = bytearray(sealed.data)
        data[index] ^= 0x01
        tampered.data = bytes(data)
        with pytest.raises(CodecError, match="failed authentication: it was altered"):
            await codec.decode([tampered])
    short = Payload(metadata=dict(sealed.metadata), data=sealed.data[:20])
    with pytest.raises(CodecError, match="shorter than a nonce and a tag: truncated"):
        await codec.decode([short])
    impostor = EncryptionCodec.from_keys(f"k1:{K2}")  # another key under the same id
    with pytest.raises(CodecError, match="failed authentication"):
        await impostor.decode([sealed])
    no_id = Payload(metadata={"encoding": ENCODING}, data=sealed.data)
    with pytest.raises(CodecError, match="carries no 'encryption-key-id' metadata"):
        await codec.decode([no_id])


async def test_plain_payloads_pass_through_decode() -> None:
    codec = EncryptionCodec.from_keys(f"k1:{K1}")
    [sealed] = await codec.encode([plain("sealed")])
    cli = plain("sent by the temporal CLI")
    null = Payload(metadata={"encoding": b"binary/null"})
    wrapper = Payloads(payloads=[cli, sealed, null])
    await codec.decode_wrapper(wrapper)
    assert list(wrapper.payloads) == [cli, plain("sealed"), null]


def test_key_configuration_errors_name_the_entry_and_never_the_key() -> None:
    secret = base64.b64encode(b"s" * 31).decode()
    cases = {
        "": "UNSTUCK_CODEC_KEYS holds no key",
        f"k1{K1}": "entry 1 is not id:base64key (no colon)",
        f"k1:{K1},": "entry 2 is empty (stray comma?)",
        f"k 1:{K1}": "entry 1: the key id must be 1-64 letters",
        f"k1:{K1},k1:{K2}": "entry 2: key id 'k1' appears twice",
        "k1:not base64!": "entry 1 (key id 'k1'): the key is not valid base64",
        f"k1:{secret}": "the key is 31 bytes, AES-256 needs 32",
    }
    for text, expected in cases.items():
        with pytest.raises(CodecKeyError) as caught:
            parse_keys(text)
        assert expected in str(caught.value)
        assert K1 not in str(caught.value) and secret not in str(caught.value)
    assert [i for i, _ in parse_keys(f" a:{K1} , b.2:{K2} ")] == ["a", "b.2"]
    assert "k1" in repr(KeyRing.parse(f"k1:{K1}")) and K1 not in repr(KeyRing.parse(f"k1:{K1}"))


async def test_the_data_converter_encrypts_only_with_keys(settings: Settings) -> None:
    assert data_converter(settings) is pydantic_data_converter
    keyed = Settings.validated({**settings.model_dump(), "codec_keys": f"k1:{K1}"})
    converter = data_converter(keyed)
    assert isinstance(converter.payload_codec, EncryptionCodec)
    assert converter.failure_converter_class is DefaultFailureConverterWithEncodedAttributes
    [payload] = await converter.encode([{"note": "converted"}])
    assert payload.metadata["encoding"] == ENCODING and b"converted" not in payload.data
    assert await converter.decode([payload], [dict]) == [{"note": "converted"}]


# ---- the codec server -------------------------------------------------------------------------


def payloads_json(payloads: list[Payload]) -> dict[str, Any]:
    return json.loads(json_format.MessageToJson(Payloads(payloads=payloads), indent=None))


def from_json(body: dict[str, Any]) -> list[Payload]:
    return list(json_format.ParseDict(body, Payloads()).payloads)


@pytest.fixture
def codec_server() -> Iterator[CodecServer]:
    codec = EncryptionCodec.from_keys(f"k1:{K1}")
    with CodecServer(
        codec, port=0, origins=["http://localhost:8233"], token="t0ken-for-tests"
    ) as server:
        yield server


AUTH = {"Authorization": "Bearer t0ken-for-tests"}


def test_codec_server_speaks_the_protocol(codec_server: CodecServer) -> None:
    url = codec_server.url
    body = payloads_json([plain("through the codec server")])
    # The wire shape: proto3 JSON, every bytes field base64, metadata values included.
    assert body == {
        "payloads": [
            {
                "metadata": {"encoding": base64.b64encode(b"json/plain").decode()},
                "data": base64.b64encode(b'"through the codec server"').decode(),
            }
        ]
    }
    encoded = httpx.post(f"{url}/encode", json=body, headers=AUTH)
    assert encoded.status_code == 200 and encoded.headers["content-type"] == "application/json"
    [sealed] = from_json(encoded.json())
    assert sealed.metadata["encoding"] == ENCODING
    # Only the last path segment counts: the CLI's http://host/{namespace}/decode works.
    decoded = httpx.post(
        f"{url}/default/decode", json=encoded.json(), headers={**AUTH, "X-Namespace": "default"}
    )
    assert decoded.status_code == 200
    assert from_json(decoded.json()) == [plain("through the codec server")]
    # Plain payloads pass through; an empty list is an empty list.
    assert httpx.post(f"{url}/decode", json=body, headers=AUTH).json() == body
    assert httpx.post(f"{url}/decode", json={}, headers=AUTH).json() == {"payloads": []}


def test_codec_server_refusals(codec_server: CodecServer) -> None:
    url = codec_server.url
    body = payloads_json([plain("x")])
    assert httpx.post(f"{url}/decode", json=body).status_code == 401
    wrong = httpx.post(f"{url}/decode", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    assert httpx.post(f"{url}/transmogrify", json=body, headers=AUTH).status_code == 404
    bad = httpx.post(f"{url}/decode", content=b"{not json", headers=AUTH)
    assert bad.status_code == 400 and "not Payloads JSON" in bad.json()["error"]
    stranger = payloads_json(
        [Payload(metadata={"encoding": ENCODING, KEY_ID_KEY: b"k9"}, data=b"\0" * 40)]
    )
    unknown = httpx.post(f"{url}/decode", json=stranger, headers=AUTH)
    assert unknown.status_code == 400
    assert "key id 'k9', which UNSTUCK_CODEC_KEYS does not hold" in unknown.json()["error"]


def test_codec_server_cors_for_the_web_ui(codec_server: CodecServer) -> None:
    url = codec_server.url
    preflight = httpx.options(
        f"{url}/decode",
        headers={
            "Origin": "http://localhost:8233",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:8233"
    assert preflight.headers["access-control-allow-methods"] == "POST, OPTIONS"
    allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "x-namespace", "authorization"} <= allowed
    assert preflight.headers["access-control-allow-credentials"] == "true"
    other = httpx.options(f"{url}/decode", headers={"Origin": "http://evil.example"})
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
    posted = httpx.post(
        f"{url}/decode",
        json=payloads_json([plain("x")]),
        headers={**AUTH, "Origin": "http://localhost:8233"},
    )
    assert posted.headers["access-control-allow-origin"] == "http://localhost:8233"
    # A page of another site cannot use it, token or not (CORS alone only hides the reply).
    foreign = httpx.post(
        f"{url}/decode",
        json=payloads_json([plain("x")]),
        headers={**AUTH, "Origin": "http://evil.example"},
    )
    assert foreign.status_code == 403 and "not allowed" in foreign.json()["error"]
    # A refusal carries the CORS headers too, so the Web UI can show why.
    refused = httpx.post(f"{url}/decode", json={}, headers={"Origin": "http://localhost:8233"})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "http://localhost:8233"


def test_a_codec_server_off_loopback_needs_a_token() -> None:
    codec = EncryptionCodec.from_keys(f"k1:{K1}")
    with pytest.raises(ValueError, match="is reachable from other machines"):
        CodecServer(codec, host="0.0.0.0", port=0)
    with CodecServer(codec, host="0.0.0.0", port=0, token="t") as server:
        assert server.port > 0


async def test_starter_codec_server_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(["codec-server", "--port", "1"]) == 2
    assert "codec-server needs the payload keys: set UNSTUCK_CODEC_KEYS" in capsys.readouterr().err
    os.environ["UNSTUCK_CODEC_KEYS"] = f"k2:{K2},k1:{K1}"
    port = free_port()
    serving = asyncio.create_task(
        run(["codec-server", "--port", str(port), "--origin", "http://ui.example:8080"])
    )
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(100):
                try:
                    reply = await http.post(
                        f"http://127.0.0.1:{port}/encode", json=payloads_json([plain("cli")])
                    )
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the codec server did not start")
            assert from_json(reply.json())[0].metadata[KEY_ID_KEY] == b"k2"
            preflight = await http.options(
                f"http://127.0.0.1:{port}/decode", headers={"Origin": "http://ui.example:8080"}
            )
            assert preflight.status_code == 204
    finally:
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{port}" in out and "encrypting with k2" in out
    assert K1 not in out and K2 not in out


# ---- on the real dev server ---------------------------------------------------------------------


@activity.defn(name="codec_probe_fail")
async def fail_loudly(marker: str) -> str:
    raise ApplicationError(f"activity failed holding {marker}", non_retryable=True)


@workflow.defn(name="CodecProbe")
class CodecProbe:
    def __init__(self) -> None:
        self.notes: list[str] = []

    @workflow.run
    async def run(self, marker: str) -> str:
        workflow.set_current_details(f"current details {marker}")
        await workflow.sleep(0.01, summary=f"timer summary {marker}")
        try:
            await workflow.execute_activity(
                fail_loudly,
                marker,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=1),
                summary=f"activity summary {marker}",
            )
        except ActivityError as err:
            failure = str(err.cause)
        else:
            failure = "no failure"
        await workflow.wait_condition(lambda: len(self.notes) >= 2)
        return f"result {marker}; {failure}; notes {sorted(self.notes)}"

    @workflow.signal
    def note(self, text: str) -> None:
        self.notes.append(text)

    @workflow.update
    def rename(self, name: str) -> str:
        return f"renamed {name}"

    @rename.validator
    def _check_rename(self, name: str) -> None:
        if name == "bad":
            raise ApplicationError("name: must not be 'bad' (rule: not-bad)", type="Refused")


def all_payloads(message: Message) -> Iterator[Payload]:
    """Every Payload anywhere in a protobuf message (history events hold them deep down)."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = list(value.values())
            if items and isinstance(items[0], Message):
                for item in items:
                    yield from all_payloads(item)
        elif field.is_repeated:
            for item in value:
                yield from all_payloads(item)
        else:
            yield from all_payloads(value)


async def run_probe(
    client: Client, plain_client: Client, marker: str, queue: str
) -> tuple[str, str, bytes, list[Any]]:
    """Run CodecProbe on ``client``; one signal from a client without codec (as a CLI agent)."""
    workflow_id = f"codec-probe-{uuid.uuid4().hex[:10]}"
    handle = await client.start_workflow(
        CodecProbe.run,
        marker,
        id=workflow_id,
        task_queue=queue,
        memo={"note": f"memo {marker}"},
        static_summary=f"static summary {marker}",
        static_details=f"static details {marker}",
        execution_timeout=timedelta(seconds=60),
    )
    await handle.signal(CodecProbe.note, f"signal {marker}")
    await plain_client.get_workflow_handle(workflow_id).signal("note", f"plain-{marker}")
    result = await handle.result()
    history = await handle.fetch_history()
    raw = b"".join(event.SerializeToString() for event in history.events)
    return workflow_id, result, raw, list(history.events)


async def test_history_holds_no_plaintext_and_the_codec_server_reads_it(
    settings: Settings, client: Client
) -> None:
    keys = f"k1:{K1}"
    keyed = Settings.validated({**settings.model_dump(), "codec_keys": keys})
    sealed_client = await connect(keyed)
    marker = f"secret-{uuid.uuid4().hex}"
    control = f"visible-{uuid.uuid4().hex}"
    queue, plain_queue = f"codec-{uuid.uuid4().hex[:8]}", f"plain-{uuid.uuid4().hex[:8]}"
    runner = UnsandboxedWorkflowRunner()
    common: dict[str, Any] = {
        "workflows": [CodecProbe],
        "activities": [fail_loudly],
        "workflow_runner": runner,
    }
    async with (
        Worker(sealed_client, task_queue=queue, **common),
        Worker(client, task_queue=plain_queue, **common),
    ):
        workflow_id, result, raw, events = await run_probe(sealed_client, client, marker, queue)
        _, _, plain_raw, _ = await run_probe(client, client, control, plain_queue)

    # The control run without codec keeps its marker in the history bytes: the check can see.
    assert control.encode() in plain_raw
    # The codec run: decrypted for the client, never in what the server stores ...
    assert result.startswith(f"result {marker}; activity failed holding {marker};")
    assert f"signal {marker}" in result and f"plain-{marker}" in result
    assert marker.encode() not in raw.replace(f"plain-{marker}".encode(), b"")
    # ... except what a codec-less agent (the plain temporal CLI) sent: plaintext, and read fine.
    assert f"plain-{marker}".encode() in raw
    # The failure message and stack trace went into the encrypted encoded attributes.
    failed = [e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED]
    assert failed and failed[0].activity_task_failed_event_attributes.failure.message == (
        "Encoded failure"
    )
    # User metadata (static summary/details, timer and activity summaries) is encrypted too.
    summaries = [e.user_metadata.summary for e in events if e.user_metadata.HasField("summary")]
    assert len(summaries) >= 3
    assert all(p.metadata["encoding"] == ENCODING for p in summaries)

    # The codec server decodes every payload of that history back to the marker.
    payloads = list(all_payloads_of(events))
    encrypted = [p for p in payloads if p.metadata.get("encoding") == ENCODING]
    assert len(encrypted) >= 8
    with CodecServer(EncryptionCodec.from_keys(keys), port=0) as server:
        reply = httpx.post(f"{server.url}/decode", json=payloads_json(payloads))
        assert reply.status_code == 200
        decoded = b"\n".join(p.data for p in from_json(reply.json()))
        for text in (
            f'"{marker}"',  # the input
            f"result {marker}",
            f"signal {marker}",
            f"memo {marker}",
            f"static summary {marker}",
            f"static details {marker}",
            f"timer summary {marker}",
            f"activity summary {marker}",
            f"activity failed holding {marker}",  # the encoded failure attributes
        ):
            assert text.encode() in decoded, text
        # The temporal CLI reads the same history through the codec server.
        cli = subprocess.run(
            [
                str(find_temporal_binary()),
                "workflow",
                "show",
                "--workflow-id",
                workflow_id,
                "--address",
                settings.temporal_address,
                "--namespace",
                settings.namespace,
                "--codec-endpoint",
                server.url + "/{namespace}",
                "--output",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        shown = list(json_payloads(json.loads(cli.stdout)))
        assert not [p for p in shown if p["metadata"].get("encoding") == "binary/encrypted"]
        assert any(f"result {marker}".encode() in base64.b64decode(p["data"]) for p in shown)


def json_payloads(node: Any) -> Iterator[dict[str, Any]]:
    """Every payload (``{"metadata": {"encoding": ...}, "data": ...}``) in a JSON history."""
    if isinstance(node, dict):
        metadata = node.get("metadata")
        if isinstance(metadata, dict) and "encoding" in metadata and "data" in node:
            yield {
                "metadata": {k: base64.b64decode(v).decode() for k, v in metadata.items()},
                "data": node["data"],
            }
            return
        for value in node.values():
            yield from json_payloads(value)
    elif isinstance(node, list):
        for value in node:
            yield from json_payloads(value)


def all_payloads_of(events: list[Any]) -> Iterator[Payload]:
    for event in events:
        yield from all_payloads(event)


async def test_a_cli_agent_reads_replies_and_refusals_through_the_codec_server(
    settings: Settings,
) -> None:
    keys = f"k1:{K1}"
    keyed = Settings.validated({**settings.model_dump(), "codec_keys": keys})
    sealed_client = await connect(keyed)
    queue = f"codec-cli-{uuid.uuid4().hex[:8]}"
    workflow_id = f"codec-cli-{uuid.uuid4().hex[:10]}"

    async def cli(name: str, codec: dict[str, str]) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            str(find_temporal_binary()),
            *("workflow", "update", "execute", "--workflow-id", workflow_id),
            *("--name", "rename", "--input", json.dumps(name), "--output", "json"),
            *("--address", settings.temporal_address, "--namespace", settings.namespace),
            env={**os.environ, **codec},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, (out + err).decode()

    with CodecServer(EncryptionCodec.from_keys(keys), port=0, token="cli-token") as server:
        codec = {"TEMPORAL_CODEC_ENDPOINT": server.url, "TEMPORAL_CODEC_AUTH": "Bearer cli-token"}
        async with Worker(
            sealed_client,
            task_queue=queue,
            workflows=[CodecProbe],
            activities=[fail_loudly],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            handle = await sealed_client.start_workflow(
                CodecProbe.run, "cli", id=workflow_id, task_queue=queue
            )
            try:
                # Without the codec server a refusal says only "Encoded failure" ...
                code, text = await cli("bad", {})
                assert code != 0 and "Encoded failure" in text and "not-bad" not in text
                # ... with it (TEMPORAL_CODEC_ENDPOINT, TEMPORAL_CODEC_AUTH) the CLI reads why.
                code, text = await cli("bad", codec)
                assert code != 0 and "name: must not be 'bad' (rule: not-bad)" in text
                code, text = await cli("fine", codec)
                assert code == 0 and "renamed fine" in text, text
            finally:
                await handle.terminate("test over")
