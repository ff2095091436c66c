"""Bounded memo tables: a plain dict that forgets everything once it is full.

For values that are cheap to make again but made on every call (a token's claims, a reply
that shows the same things): a hit is one dict lookup, and a table that would grow without
end (one entry per token, per user) is emptied instead of evicted entry by entry.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(table: dict[K, V], key: K, value: V, limit: int) -> V:
    """Stores `value` under `key` (emptying `table` first when it holds `limit` entries) and
    returns it."""
    if len(table) >= limit:
        table.clear()
    table[key] = value
    return value
