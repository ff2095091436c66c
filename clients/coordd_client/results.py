"""Offline verification of signed competition results (CompetitionService.GetResults).

Pure Python + `cryptography`: nothing here talks to the daemon. The coordinator signs
`RESULTS_CONTEXT + payload` with Ed25519, where `payload` is canonical JSON; verify the
signature over the exact bytes received, then parse them.

    from coordd_client.results import verify_results
    doc = verify_results(reply.results.payload, reply.results.signature, trusted_public_key)
    doc["ranking"][0]["user"]
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

RESULTS_CONTEXT = b"coordd.competition.results.v1\n"


class ResultsVerificationError(Exception):
    """The signature does not match the payload, or the payload is not a results document."""


def key_id(public_key: bytes) -> str:
    """The coordinator's key id: first 16 hex chars of SHA-256 of the raw public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def verify_results(
    payload: bytes, signature: bytes, public_key: bytes, competition: str | None = None
) -> dict[str, Any]:
    """Returns the verified results document; raises ResultsVerificationError otherwise.

    `public_key` is the raw 32-byte Ed25519 key you trust (obtained out of band, or pinned
    by its key id); `competition`, when given, must match the document's competition name,
    so results signed for one competition cannot be passed off as another's.
    """
    if len(public_key) != 32:
        raise ResultsVerificationError("public_key must be a raw 32-byte Ed25519 key")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, RESULTS_CONTEXT + payload)
    except InvalidSignature:
        raise ResultsVerificationError("signature does not match the results payload") from None
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ResultsVerificationError(f"payload is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("ranking"), list):
        raise ResultsVerificationError("payload is not a results document")
    if document.get("key_id") != key_id(public_key):
        raise ResultsVerificationError("payload names a different signing key")
    if competition is not None and document.get("competition") != competition:
        raise ResultsVerificationError(
            f"results are for {document.get('competition')!r}, not {competition!r}"
        )
    return document
