"""Secrets the daemon must keep readable sealed at rest with AES-256-GCM: webhook signing keys
(text, `seal`/`open`) and stored idempotency responses (bytes, `seal_bytes`/`open_bytes`),
which hold the secrets a reply carries (new API keys, node keys, access tokens).

A copy of the database (a backup, a replica, a stolen dump) then does not carry what it takes
to forge a coordd webhook; the key lives in the data dir (`secrets.key`, 0600) or at
`sealing_key_path`, outside the database, and replicas must share it like the signing key.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from coordd.crypto.secrets import load_or_create

_PREFIX = "sealed:v1:"
# Sealed bytes start with a NUL: a serialized protobuf message never does (field number 0 is
# invalid), so bytes stored before sealing existed are told apart from sealed ones.
_BYTES_PREFIX = b"\x00s1"


class Unsealable(Exception):
    """The sealed value does not open with this key and context (another key, or copied)."""


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the sealing key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, context: str) -> str:
        """`context` (e.g. what the secret belongs to) is authenticated, not stored: a sealed
        value copied onto another row does not open there."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, stored: str, context: str) -> str:
        """The plaintext; values stored before sealing existed are returned as they are."""
        if not stored.startswith(_PREFIX):
            return stored
        raw = base64.urlsafe_b64decode(stored[len(_PREFIX) :])
        return self._aead.decrypt(raw[:12], raw[12:], context.encode()).decode()

    def seal_bytes(self, plaintext: bytes, context: str) -> bytes:
        """Like `seal`, for bytes: `context` is authenticated, not stored."""
        nonce = os.urandom(12)
        return _BYTES_PREFIX + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open_bytes(self, stored: bytes, context: str) -> bytes:
        """The plaintext; bytes stored before sealing existed (no prefix) are returned as they
        are. Raises Unsealable when the value was sealed with another key or context."""
        if not stored.startswith(_BYTES_PREFIX):
            return stored
        body = stored[len(_BYTES_PREFIX) :]
        try:
            return self._aead.decrypt(body[:12], body[12:], context.encode())
        except (InvalidTag, ValueError):
            raise Unsealable("the sealed value does not open here") from None

    @staticmethod
    def load_or_create(path: Path) -> Sealer:
        return Sealer(load_or_create(path))
