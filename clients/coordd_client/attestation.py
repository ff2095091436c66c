"""Offline verification of coordd job attestations (pure Python + `cryptography`).

An attestation is a DSSE envelope (https://github.com/secure-systems-lab/dsse) whose payload
is an in-toto Statement v1 about a job's output. The coordinator signs the DSSE
pre-authentication encoding (PAE) with its Ed25519 key; GetSigningKey serves the public key.
Nothing here talks to the server, so a third party holding the public key can check a
result without trusting the transport:

    statement = verify_envelope(envelope_json, public_key_bytes)
    assert statement["subject"][0]["digest"]["sha256"] == hashlib.sha256(output).hexdigest()
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://coordd.dev/attestation/job-result/v1"


class AttestationError(Exception):
    """The envelope is malformed, not signed by the given key, or not a coordd job statement."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_id(public_key: bytes) -> str:
    """The key id coordd uses: first 16 hex characters of SHA-256 of the raw public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def envelope_json(payload_type: str, payload: bytes, signatures: list[tuple[str, bytes]]) -> str:
    """The standard DSSE JSON form (payload and signatures base64)."""
    return json.dumps(
        {
            "payloadType": payload_type,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": k, "sig": base64.b64encode(s).decode()} for k, s in signatures],
        },
        separators=(",", ":"),
    )


def verify_envelope(envelope: str | bytes | dict[str, Any], public_key: bytes) -> dict[str, Any]:
    """Checks the Ed25519 signature over PAE(payloadType, payload) and returns the statement.

    `public_key` is the raw 32-byte key from GetSigningKey. Raises AttestationError when the
    envelope is malformed, no signature by this key verifies, or the statement is not a
    coordd job-result statement.
    """
    try:
        raw = envelope if isinstance(envelope, dict) else json.loads(envelope)
        payload_type = raw["payloadType"]
        payload = base64.b64decode(raw["payload"], validate=True)
        signatures = [
            (s.get("keyid", ""), base64.b64decode(s["sig"], validate=True)) for s in raw["signatures"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AttestationError(f"malformed envelope: {exc}") from None
    return verify_payload(payload_type, payload, signatures, public_key)


def verify_payload(
    payload_type: str, payload: bytes, signatures: list[tuple[str, bytes]], public_key: bytes
) -> dict[str, Any]:
    """Like verify_envelope, for the fields of the Attestation message."""
    if payload_type != PAYLOAD_TYPE:
        raise AttestationError(f"unexpected payload type {payload_type!r}")
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError as exc:
        raise AttestationError(f"bad public key: {exc}") from None
    wanted = key_id(public_key)
    message = pae(payload_type, payload)
    for keyid, sig in signatures:
        if keyid and keyid != wanted:
            continue
        try:
            key.verify(sig, message)
        except InvalidSignature:
            continue
        break
    else:
        raise AttestationError("no valid signature by this key")
    try:
        statement = json.loads(payload)
    except ValueError:
        raise AttestationError("payload is not JSON") from None
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise AttestationError("payload is not an in-toto Statement v1")
    if statement.get("predicateType") != PREDICATE_TYPE:
        raise AttestationError(f"unexpected predicate type {statement.get('predicateType')!r}")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects or "sha256" not in (subjects[0].get("digest") or {}):
        raise AttestationError("statement has no sha256 subject")
    return statement


def verify_output(statement: dict[str, Any], output: bytes) -> bool:
    """True when `output` is the content the statement's subject names."""
    return bool(statement["subject"][0]["digest"]["sha256"] == hashlib.sha256(output).hexdigest())
