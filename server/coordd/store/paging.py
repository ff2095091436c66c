"""Keyset pagination over peewee queries; the page types and tokens live in `coordd.core.paging`."""

from __future__ import annotations

from typing import Any

import peewee

from coordd.core.paging import Page, PageRequest, decode_token, encode_token

__all__ = ["Page", "PageRequest", "decode_token", "encode_token", "keyset_page"]


def keyset_page(
    query: peewee.ModelSelect,
    key: peewee.Field,
    page: PageRequest,
    filters: dict[str, Any],
    descending: bool = False,
) -> Page[Any]:
    """Pages `query` by a unique, ordered `key` column."""
    if page.token:
        after = decode_token(page.token, filters)
        query = query.where(key < after) if descending else query.where(key > after)
    rows = list(query.order_by(key.desc() if descending else key.asc()).limit(page.size + 1))
    more = len(rows) > page.size
    rows = rows[: page.size]
    next_token = encode_token(getattr(rows[-1], key.name), filters) if more else ""
    return Page(rows, next_token)
