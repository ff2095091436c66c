"""Parameters written into PostgreSQL statements by store/pg_literals.py: the same text psycopg2
writes, byte for byte, for every type the store sends; psycopg2 itself for anything else or for a
connection that does not read backslashes literally; hostile strings arrive as data, never SQL."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlparse

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg2.extensions import Binary

from coordd.store.pg import PostgresDatabase
from coordd.store.pg_literals import conforming, interpolate

_TEXT = st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)))
_VALUES = st.one_of(
    _TEXT,
    st.sampled_from(["", "'", "''", "\\", "\\'", "%", "%%", "%s", "--", "$$", "a'); DROP TABLE t; --"]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.binary(),
    st.binary().map(bytearray),
    st.binary().map(memoryview),
    st.binary().map(Binary),
    st.floats(allow_nan=False, allow_infinity=False),
)


@pytest.fixture(scope="module")
def conn(pg_session_database: str) -> Iterator[psycopg2.extensions.connection]:
    connection = psycopg2.connect(pg_session_database)
    connection.autocommit = True
    yield connection
    connection.close()


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(_VALUES, max_size=8))
def test_interpolate_writes_what_psycopg2_writes(conn, values):
    sql = "SELECT 100%% WHERE x IN (" + ", ".join(["%s"] * len(values)) + ") AND y-%s"
    params = [*values, -1]
    expected = conn.cursor().mogrify(sql, params).decode()
    assert interpolate(sql, params) == expected


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_TEXT | st.sampled_from(["'", "\\'", "';--", "$$;SELECT 1;$$", "\\", "%", "E'\\''"]))
def test_a_hostile_string_reaches_postgresql_as_the_same_data(conn, value):
    with conn.cursor() as cur:
        cur.execute(interpolate("SELECT %s::text, %s::bytea", [value, value.encode()]))
        text, data = cur.fetchone()
    assert text == value
    assert bytes(data) == value.encode()


def test_a_nul_in_a_string_is_refused_like_psycopg2_refuses_it(conn):
    with pytest.raises(ValueError) as theirs:
        conn.cursor().mogrify("SELECT %s", ["a\0b"])
    with pytest.raises(ValueError) as ours:
        interpolate("SELECT %s", ["a\0b"])
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize(
    "value", [datetime(2026, 12, 4, tzinfo=UTC), Decimal("1.5"), [1, 2], math.nan, math.inf, 2**0.5 * 1j]
)
def test_other_types_are_left_to_psycopg2(value):
    assert interpolate("SELECT %s", ["a", value]) is None


@pytest.fixture
def db(pg_session_database: str) -> Iterator[PostgresDatabase]:
    parsed = urlparse(pg_session_database)
    database = PostgresDatabase(
        parsed.path.lstrip("/"),
        user=parsed.username,
        host=parsed.hostname,
        port=parsed.port,
        max_connections=1,
    )
    database.execute_sql("CREATE TABLE IF NOT EXISTS literal_probe (k text PRIMARY KEY, v bytea, n bigint)")
    database.execute_sql("DELETE FROM literal_probe")
    yield database
    database.execute_sql("DROP TABLE literal_probe")
    database.close_all()


def test_the_store_writes_and_reads_back_every_parameter_exactly(db):
    rows = [("it's", b"\x00\xff'", -5), ("back\\slash %s", b"", 2**62), ("plain", None, None)]
    with db.atomic():
        for row in rows:
            db.defer("INSERT INTO literal_probe VALUES (%s, %s, %s)", row)
        db.execute_sql("UPDATE literal_probe SET n = n - %s WHERE k = %s", (1, "it's"))
    got = db.execute_sql(
        "SELECT k, v, n FROM literal_probe WHERE k IN (%s, %s, %s) ORDER BY k", [r[0] for r in rows]
    )
    assert [(k, None if v is None else bytes(v), n) for k, v, n in got.fetchall()] == [
        ("back\\slash %s", b"", 2**62),
        ("it's", b"\x00\xff'", -6),
        ("plain", None, None),
    ]


def test_without_standard_conforming_strings_psycopg2_writes_the_parameters(db):
    """A backslash then needs escaping, which only psycopg2 does here: the store must not use
    its own literals (a quote after a backslash would otherwise end the string)."""
    db.execute_sql("SET standard_conforming_strings = off")
    assert not conforming(db.connection())
    value = "a\\'; SELECT 1; --"
    with db.atomic():
        db.defer("INSERT INTO literal_probe VALUES (%s, %s, %s)", (value, b"\\", 1))
    k, v = db.execute_sql("SELECT k, v FROM literal_probe WHERE k = %s", (value,)).fetchone()
    assert (k, bytes(v)) == (value, b"\\")
    db.execute_sql("SET standard_conforming_strings = on")
    assert conforming(db.connection())
