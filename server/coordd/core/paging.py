"""Page requests, pages and opaque page tokens (AIP-158).

A token carries the last key seen and a hash of the request's filters; reusing a token
with different filters is INVALID_ARGUMENT, as AIP-158 asks. The store's keyset queries
(`coordd.store.paging`) build pages from these.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from coordd.core.errors import FieldViolation, InvalidArgument

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class PageRequest:
    size: int
    token: str

    @staticmethod
    def of(page_size: int, page_token: str) -> PageRequest:
        if page_size < 0:
            raise InvalidArgument(
                "page_size must not be negative",
                violations=[FieldViolation("page_size", "must not be negative")],
            )
        size = DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)
        return PageRequest(size, page_token)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_token: str


def _fingerprint(filters: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True, default=str).encode()).hexdigest()[:16]


def encode_token(after: Any, filters: dict[str, Any]) -> str:
    raw = json.dumps({"a": after, "f": _fingerprint(filters)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, filters: dict[str, Any]) -> Any:
    bad = InvalidArgument(
        "page_token is not valid for this request",
        reason="BAD_PAGE_TOKEN",
        violations=[FieldViolation("page_token", "not a token returned for this request")],
    )
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, TypeError):
        raise bad from None
    if not isinstance(raw, dict) or raw.get("f") != _fingerprint(filters) or "a" not in raw:
        raise bad
    return raw["a"]
