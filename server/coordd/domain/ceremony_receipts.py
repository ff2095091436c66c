"""Contribution receipts: a canonical encoding signed with the coordinator's Ed25519 key.

The encoding is "coordd.ceremony.receipt.v1\\n" followed by JSON with sorted keys, no
spaces and ASCII only, so any client can rebuild or parse it byte for byte; the client
package (`coordd_client.transcript`) verifies receipts offline with the public key.
"""

from __future__ import annotations

import json
from typing import Any

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
