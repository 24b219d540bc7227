"""Optional payload encryption: AES-256-GCM with a key ring that rotates by key id.

With ``UNSTUCK_CODEC_KEYS`` set, every payload a client or worker sends to Temporal (workflow
and activity inputs and results, signal, update and query arguments and replies, memos,
user metadata, failure details) is encrypted before it leaves the process, so the Temporal
server, its database and anyone reading its history see only ciphertext. The Web UI and the
``temporal`` CLI read it through the codec server (:mod:`infra.codec_server`).

Keys: ``UNSTUCK_CODEC_KEYS="k2:BASE64,k1:BASE64"``, each a key id and a base64 256-bit key
(``openssl rand -base64 32``). The first key encrypts; every key decrypts, so a rotation adds
the new key first and keeps the old ones until no open workflow holds their payloads.

Format (the one Temporal's encryption samples use, so their codec servers in other languages
read it): the original payload (metadata and data) serialized as protobuf is the plaintext;
the new payload's metadata is ``encoding: binary/encrypted`` and ``encryption-key-id: <id>``
and its data is a random 96-bit nonce followed by the AES-GCM ciphertext and tag. A payload
that is not ``binary/encrypted`` passes through :meth:`EncryptionCodec.decode` unchanged, so
plain JSON that an agent sends with the ``temporal`` CLI without the codec still reads.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

__all__ = [
    "ENCODING",
    "KEY_ID_KEY",
    "CodecError",
    "CodecKeyError",
    "EncryptionCodec",
    "KeyRing",
    "new_key",
    "parse_keys",
]

#: The ``encoding`` metadata of an encrypted payload.
ENCODING = b"binary/encrypted"
#: The metadata key naming the key that encrypted a payload.
KEY_ID_KEY = "encryption-key-id"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_VAR = "UNSTUCK_CODEC_KEYS"


class CodecError(ValueError):
    """A payload could not be encrypted or decrypted; the message says why (never a key)."""


class CodecKeyError(CodecError):
    """The key configuration is malformed, or a payload names a key the ring lacks."""


def parse_keys(text: str) -> list[tuple[str, bytes]]:
    """``id:base64key,...`` as (id, 32-byte key) pairs, the encrypting key first.

    Raises :class:`CodecKeyError` naming the entry and the rule (never the key material).
    """
    entries = [part.strip() for part in text.split(",")]
    if not any(entries):
        raise CodecKeyError(f"{_VAR} holds no key; expected id:base64key[,id:base64key...]")
    keys: list[tuple[str, bytes]] = []
    for number, entry in enumerate(entries, start=1):
        if not entry:
            raise CodecKeyError(f"{_VAR} entry {number} is empty (stray comma?)")
        key_id, sep, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not sep:
            raise CodecKeyError(f"{_VAR} entry {number} is not id:base64key (no colon)")
        if not _KEY_ID.fullmatch(key_id):
            raise CodecKeyError(
                f"{_VAR} entry {number}: the key id must be 1-64 letters, digits, '.', '_' or '-'"
            )
        if any(known == key_id for known, _ in keys):
            raise CodecKeyError(f"{_VAR} entry {number}: key id {key_id!r} appears twice")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise CodecKeyError(
                f"{_VAR} entry {number} (key id {key_id!r}): the key is not valid base64"
            ) from None
        if len(key) != KEY_BYTES:
            raise CodecKeyError(
                f"{_VAR} entry {number} (key id {key_id!r}): the key is {len(key)} bytes, "
                f"AES-256 needs {KEY_BYTES} (make one with `openssl rand -base64 32`)"
            )
        keys.append((key_id, key))
    return keys


def new_key() -> str:
    """A fresh random 256-bit key, base64 (for ``UNSTUCK_CODEC_KEYS``)."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


class KeyRing:
    """The keys by id; the first one encrypts."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise CodecKeyError("a key ring needs at least one key")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys}
        if len(self._ciphers) != len(keys):
            raise CodecKeyError("key ids must be unique")
        self.encrypting_id = keys[0][0]

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        return cls(parse_keys(text))

    @property
    def ids(self) -> list[str]:
        return list(self._ciphers)

    def cipher(self, key_id: str) -> AESGCM:
        try:
            return self._ciphers[key_id]
        except KeyError:
            raise CodecKeyError(
                f"the payload was encrypted with key id {key_id!r}, which {_VAR} does not "
                f"hold (it holds {', '.join(repr(i) for i in self._ciphers)}); add that key "
                "to decrypt it"
            ) from None

    def __repr__(self) -> str:
        return f"KeyRing(ids={self.ids!r}, encrypting_id={self.encrypting_id!r})"


class EncryptionCodec(PayloadCodec):
    """Temporal payload codec: AES-256-GCM under the key ring's first key."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    @classmethod
    def from_keys(cls, text: str) -> EncryptionCodec:
        """From ``UNSTUCK_CODEC_KEYS`` syntax: ``id:base64key,...``."""
        return cls(KeyRing.parse(text))

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self.ring.encrypting_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self.ring.cipher(key_id).encrypt(nonce, payload.SerializeToString(), None)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_KEY: key_id.encode()},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        """The original payload; one that is not ``binary/encrypted`` is returned as it is."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        raw_id = payload.metadata.get(KEY_ID_KEY)
        if raw_id is None:
            raise CodecError(f"an encrypted payload carries no {KEY_ID_KEY!r} metadata")
        key_id = raw_id.decode("utf-8", errors="replace")
        cipher = self.ring.cipher(key_id)
        data = payload.data
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise CodecError(
                f"an encrypted payload (key id {key_id!r}) is {len(data)} bytes, shorter than "
                "a nonce and a tag: truncated"
            )
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
        except InvalidTag:
            raise CodecError(
                f"an encrypted payload (key id {key_id!r}) failed authentication: it was "
                "altered, truncated, or encrypted with another key under the same id"
            ) from None
        try:
            return Payload.FromString(plain)
        except DecodeError:
            raise CodecError(
                f"an encrypted payload (key id {key_id!r}) decrypted to no payload"
            ) from None
