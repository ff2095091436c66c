"""Contribution receipts: a canonical encoding signed with the coordinator's Ed25519 key.

The encoding is "coordd.ceremony.receipt.v1\\n" followed by JSON with sorted keys, no
spaces and ASCII only, so any client can rebuild or parse it byte for byte; the client
package (`coordd_client.transcript`) verifies receipts offline with the public key.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from coordd.domain.ceremony.names import ceremony_name, circuit_name, contribution_name
from coordd.domain.ceremony.states import VALID
from coordd.store.ceremony.models import Ceremony, Circuit, Contribution

RECEIPT_PREFIX = b"coordd.ceremony.receipt.v1\n"


def encode(fields: dict[str, Any]) -> bytes:
    return RECEIPT_PREFIX + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("ascii")


def decode(payload: bytes) -> dict[str, Any]:
    if not payload.startswith(RECEIPT_PREFIX):
        raise ValueError("not a coordd ceremony receipt")
    value = json.loads(payload[len(RECEIPT_PREFIX) :])
    if not isinstance(value, dict):
        raise ValueError("receipt body is not an object")
    return value


def receipt_fields(c: Ceremony, circuit: Circuit, contrib: Contribution) -> dict[str, Any]:
    """What a contribution's receipt says, once its verdict is in."""
    fields: dict[str, Any] = {
        "ceremony": ceremony_name(c.id),
        "circuit": circuit_name(c.id, circuit.id),
        "circuit_sequence": circuit.sequence,
        "contribution": contribution_name(c.id, circuit.id, contrib.id),
        "index": contrib.index,
        "contributor": contrib.contributor,
        "hash": contrib.hash,
        "previous_hash": contrib.previous_hash,
        "size": contrib.size,
        "valid": contrib.state == VALID,
        "final": contrib.is_final,
        "upload_time_us": _micros(contrib.upload_time),
        "verify_time_us": _micros(contrib.verify_time),
    }
    extra = contrib.extra or {}
    if "verifier" in extra:
        fields["verifier"] = extra["verifier"]
    if extra.get("contribution_hash"):
        fields["contribution_hash"] = extra["contribution_hash"]
    if extra.get("transport_fault"):
        fields["transport_fault"] = True
    if contrib.is_final:
        fields["beacon_hash"] = (contrib.extra or {}).get("beacon_hash", "")
        fields["beacon_iterations_exponent"] = (contrib.extra or {}).get("beacon_iterations_exponent", 0)
    return fields


def _micros(value: datetime | None) -> int:
    return 0 if value is None else round(value.timestamp() * 1_000_000)
