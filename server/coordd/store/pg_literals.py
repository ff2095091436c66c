"""Statement parameters written into the SQL text in Python, for the types the store sends.

psycopg2 has no server-side parameters: it always writes them into the statement's text on the
client, adapting each `%s` through its adapter protocol with the GIL held. A completion batch of
100 jobs has 703 of them: 0.5-0.7 ms of one thread's GIL time on an idle machine, more under load,
while the event loop waits (bench/pg_literals.py; docs/PERFORMANCE.md, "Issue #18, session 14").
For the types the store actually sends (str, int, bool, None, bytes and psycopg2's `Binary`,
finite floats), `interpolate` writes the same text psycopg2 would, byte for byte
(tests/store/test_pg_literals.py compares them), 2-4 times faster; for any other type it
answers None and the caller lets psycopg2 do it.

It relies on `standard_conforming_strings` being on (PostgreSQL's default since 9.1): a
backslash in a string literal is then an ordinary character and only a quote needs doubling.
`conforming(conn)` tells; with it off, nothing here is used.
"""

from __future__ import annotations

import math
from typing import Any

from psycopg2.extensions import Binary

_BINARY = type(Binary(b""))


class _Unsupported(Exception):
    pass


def _literal(value: Any) -> str:
    kind = type(value)
    if kind is str:
        if "\0" in value:
            # psycopg2's own message: PostgreSQL text cannot hold NUL.
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        return "'" + value.replace("'", "''") + "'"
    if kind is int:
        # A leading space keeps `x-%s` with -1 from turning into the comment `x--1`.
        return str(value) if value >= 0 else " " + str(value)
    if value is None:
        return "NULL"
    if kind is bool:
        return "true" if value else "false"
    if kind is bytes or kind is bytearray or kind is memoryview:
        return "'\\x" + bytes(value).hex() + "'::bytea"
    if kind is _BINARY:
        return _literal(value.adapted)
    if kind is float and math.isfinite(value):
        text = repr(value)
        return text if value >= 0 else " " + text
    raise _Unsupported


def interpolate(sql: str, params: tuple[Any, ...] | list[Any]) -> str | None:
    """`sql` with its `%s` placeholders replaced by `params` written as literals (and `%%` by
    `%`), as psycopg2 writes it; None when a parameter is of a type this module leaves to
    psycopg2. Raises ValueError for a string holding NUL, as psycopg2 does."""
    try:
        literals = tuple([_literal(value) for value in params])
    except _Unsupported:
        return None
    return sql % literals


def conforming(conn: Any) -> bool:
    """Whether `conn` (a psycopg2 connection) reads backslashes in string literals literally."""
    return bool(conn.get_parameter_status("standard_conforming_strings") == "on")
