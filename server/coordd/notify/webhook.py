"""Signed webhook POSTs with the standard library: no extra dependency, a hard timeout."""

from __future__ import annotations

import hashlib
import hmac
import urllib.error
import urllib.request
from dataclasses import dataclass

SIGNATURE_HEADER = "X-Coordd-Signature"
EVENT_HEADER = "X-Coordd-Event"
DELIVERY_HEADER = "X-Coordd-Delivery"
TIMEOUT_S = 5.0


def sign(secret: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of the exact body bytes, as receivers recompute it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """For receivers (and tests): constant-time comparison of the signature header."""
    return hmac.compare_digest(sign(secret, body), header)


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int
    error: str


def post(url: str, secret: str, body: str, event_type: str, delivery_id: str) -> Outcome:
    data = body.encode()
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "coordd-webhook/1",
            SIGNATURE_HEADER: sign(secret, data),
            EVENT_HEADER: event_type,
            DELIVERY_HEADER: delivery_id,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            code = response.status
    except urllib.error.HTTPError as exc:
        return Outcome(False, exc.code, f"HTTP {exc.code}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return Outcome(False, 0, f"{type(exc).__name__}: {reason}"[:500])
    return Outcome(200 <= code < 300, code, "" if 200 <= code < 300 else f"HTTP {code}")
