"""The coordinator's Ed25519 key: signs ceremony receipts, job attestations and results.

Generated into the data dir on first start (0600) or loaded from `signing_key_path`.
Replicas must share it (mount the same file). Clients verify offline with the public key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import SigningKey

from coordd.crypto.secrets import load_or_create


class Signer:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        # The same key in libsodium, which signs faster (Ed25519 signatures are deterministic:
        # the bytes are identical) and releases the GIL while it does.
        self._fast = SigningKey(private_key.private_bytes_raw())
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        # A short, stable id for the key (first 16 hex chars of SHA-256 of the raw public key).
        self.key_id = hashlib.sha256(self.public_key).hexdigest()[:16]

    def sign(self, payload: bytes) -> bytes:
        return self._fast.sign(payload).signature

    def public_key_pem(self) -> str:
        return (
            self._key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    @staticmethod
    def load_or_create(path: Path) -> Signer:
        seed = load_or_create(path, Ed25519PrivateKey.generate().private_bytes_raw())
        if len(seed) != 32:
            raise ValueError(f"{path}: expected a 32-byte raw Ed25519 seed")
        return Signer(Ed25519PrivateKey.from_private_bytes(seed))
