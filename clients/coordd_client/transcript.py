"""Offline verification of a ceremony transcript: receipts and hash chains.

Pure Python plus `cryptography`; nothing here talks to the daemon. Give it a
`GetTranscriptResponse` and the coordinator's public key obtained out of band (or from
GetCoordinatorKey, compared against a published fingerprint):

    report = verify_transcript(transcript, public_key)
    assert report.ok, report.problems

    text = attestation(transcript, "ceremonies/.../participants/...", public_key)  # to publish
    verify_attestation(text, public_key)  # anyone, offline

A receipt is the coordinator's Ed25519 signature over
"coordd.ceremony.receipt.v1\\n" + JSON (sorted keys, no spaces, ASCII). Each circuit's
valid contributions form a chain: index 0 (genesis) has no previous hash, and each next
valid one names the hash of the one before; invalid ones are listed but not chained.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

RECEIPT_PREFIX = b"coordd.ceremony.receipt.v1\n"
_VALID = 2  # ContributionState.CONTRIBUTION_STATE_VALID


class ReceiptError(Exception):
    """A receipt that does not verify, or does not describe the contribution it is attached to."""


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


def canonical(fields: dict[str, Any]) -> bytes:
    return RECEIPT_PREFIX + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("ascii")


def verify_receipt(public_key: bytes, payload: bytes, signature: bytes) -> dict[str, Any]:
    """Checks the signature and the encoding; returns the signed fields."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, payload)
    except (InvalidSignature, ValueError) as exc:
        raise ReceiptError("the signature does not verify with this key") from exc
    if not payload.startswith(RECEIPT_PREFIX):
        raise ReceiptError("not a coordd ceremony receipt")
    fields = json.loads(payload[len(RECEIPT_PREFIX) :])
    if not isinstance(fields, dict) or canonical(fields) != payload:
        raise ReceiptError("the receipt is not in canonical form")
    return fields


def verify_contribution(public_key: bytes, contribution: Any) -> dict[str, Any]:
    """Verifies a Contribution message's receipt and that it signs exactly what the message says."""
    receipt = contribution.receipt
    if not receipt.signature:
        raise ReceiptError(f"{contribution.name}: no receipt")
    if receipt.key_id and receipt.key_id != key_id(public_key):
        raise ReceiptError(f"{contribution.name}: signed by key {receipt.key_id}, not {key_id(public_key)}")
    fields = verify_receipt(public_key, receipt.payload, receipt.signature)
    expected = {
        "contribution": contribution.name,
        "index": contribution.index,
        "contributor": contribution.contributor,
        "hash": contribution.hash_hex,
        "previous_hash": contribution.previous_hash_hex,
        "size": contribution.size_bytes,
        "valid": contribution.state == _VALID,
        "final": contribution.final,
    }
    for name, value in expected.items():
        if fields.get(name) != value:
            raise ReceiptError(
                f"{contribution.name}: receipt says {name}={fields.get(name)!r}, entry says {value!r}"
            )
    return fields


def file_hash(path: str) -> str:
    """BLAKE2b-512 hex of a file, to match a downloaded contribution against the transcript."""
    h = hashlib.blake2b(digest_size=64)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass
class Report:
    receipts: int = 0
    valid: int = 0
    invalid: int = 0
    # Per circuit name: the hash at the end of its valid chain.
    heads: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # The daemon says no real verifier checked the contributions (verifier "none"): the
    # chain of hashes is signed, but nothing attests that each zkey extends the last.
    unverified: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_transcript(transcript: Any, public_key: bytes) -> Report:
    """Every receipt, and every circuit's chain of valid contributions."""
    report = Report(unverified=bool(getattr(transcript, "unverified", False)))
    if transcript.public_key and transcript.public_key != public_key:
        report.problems.append("the transcript names a different coordinator key")
    for entry in transcript.circuits:
        circuit = entry.circuit.name
        previous_hash, previous_index = "", -1
        for contribution in entry.contributions:
            try:
                fields = verify_contribution(public_key, contribution)
            except ReceiptError as exc:
                report.problems.append(str(exc))
                continue
            report.receipts += 1
            if fields.get("circuit") != circuit:
                report.problems.append(f"{contribution.name}: receipt is for circuit {fields.get('circuit')}")
            if contribution.state != _VALID:
                report.invalid += 1
                continue
            report.valid += 1
            if contribution.index != previous_index + 1:
                report.problems.append(
                    f"{contribution.name}: index {contribution.index} follows {previous_index}"
                )
            if contribution.previous_hash_hex != previous_hash:
                report.problems.append(f"{contribution.name}: previous hash does not match the chain")
            previous_hash, previous_index = contribution.hash_hex, contribution.index
        report.heads[circuit] = previous_hash
    return report


# -- attestations --------------------------------------------------------------------------

ATTESTATION_BEGIN = "-----BEGIN COORDD CEREMONY RECEIPTS-----"
ATTESTATION_END = "-----END COORDD CEREMONY RECEIPTS-----"


def _grouped(hex_text: str) -> str:
    """A 64-byte hash as snarkjs prints it: 8-digit groups, four per line."""
    groups = [hex_text[i : i + 8] for i in range(0, len(hex_text), 8)]
    return "\n".join("      " + " ".join(groups[i : i + 4]) for i in range(0, len(groups), 4))


def attestation(transcript: Any, contributor: str, public_key: bytes) -> str:
    """A ready-to-publish attestation of `contributor`'s contributions (a participant name):
    the ceremony, each circuit with the snarkjs contribution hash and the zkey's BLAKE2b-512,
    and the coordinator's signed receipts, which `verify_attestation` checks offline. Every
    receipt is verified with `public_key` first: an attestation is never made from an
    unverified one."""
    c = transcript.ceremony
    mine = []
    for entry in transcript.circuits:
        for contribution in entry.contributions:
            if contribution.contributor == contributor:
                verify_contribution(public_key, contribution)
                mine.append((entry.circuit, contribution))
    if not mine:
        raise ReceiptError(f"{contributor} has no contribution in {c.name}")
    lines = [
        f'I contributed to the trusted-setup ceremony "{c.title}" ({c.name}, prefix {c.prefix}).',
        f"Contributor: {contributor}",
        "",
    ]
    for circuit, contribution in mine:
        state = "VALID" if contribution.state == _VALID else "INVALID"
        lines.append(
            f"Circuit {circuit.display_name} ({circuit.name}): contribution #{contribution.index}, {state}"
            f" (verifier: {contribution.verifier or 'unknown'})"
        )
        if contribution.contribution_hash_hex:
            lines.append("  snarkjs contribution hash:")
            lines.append(_grouped(contribution.contribution_hash_hex))
        lines.append(f"  BLAKE2b-512 of the zkey: {contribution.hash_hex}")
    if getattr(transcript, "unverified", False):
        lines += [
            "",
            "Note: this ceremony's contributions were checked for size and hash only (no proof check).",
        ]
    lines += [
        "",
        f"Coordinator key: Ed25519 {public_key.hex()} (key id {key_id(public_key)})",
        "Signed receipts (verify with coordd_client.transcript.verify_attestation):",
        ATTESTATION_BEGIN,
    ]
    for _, contribution in mine:
        blob = {
            "payload": base64.b64encode(contribution.receipt.payload).decode(),
            "signature": base64.b64encode(contribution.receipt.signature).decode(),
        }
        lines.append(json.dumps(blob, sort_keys=True, separators=(",", ":")))
    lines.append(ATTESTATION_END)
    return "\n".join(lines) + "\n"


def verify_attestation(text: str, public_key: bytes) -> list[dict[str, Any]]:
    """Checks a published attestation offline: every receipt's signature with the coordinator
    key, and that the text names exactly what the receipts sign (contribution hashes, zkey
    hashes). Returns the signed fields of each receipt."""
    if ATTESTATION_BEGIN not in text or ATTESTATION_END not in text:
        raise ReceiptError("no receipts block in the attestation")
    head, rest = text.split(ATTESTATION_BEGIN, 1)
    block = rest.split(ATTESTATION_END, 1)[0]
    signed = []
    for line in filter(None, (x.strip() for x in block.splitlines())):
        try:
            blob = json.loads(line)
            payload, signature = base64.b64decode(blob["payload"]), base64.b64decode(blob["signature"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ReceiptError(f"a receipt line cannot be read: {exc}") from None
        signed.append(verify_receipt(public_key, payload, signature))
    if not signed:
        raise ReceiptError("the attestation carries no receipt")
    words = "".join(head.split())
    for fields in signed:
        for name in ("hash", "contribution_hash"):
            if fields.get(name) and fields[name] not in words:
                raise ReceiptError(f"{fields['contribution']}: the text does not state the signed {name}")
        if f"contribution#{fields['index']}" not in words or fields["circuit"] not in words:
            raise ReceiptError(f"{fields['contribution']}: the text does not name its circuit and index")
    return signed
