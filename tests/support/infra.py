"""Real PostgreSQL and Redis for tests: a fresh database per test, a private Redis prefix.

In CI (CI=true) a missing service fails the run; on a laptop the tests that need it skip
with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

PG_ADMIN_URL = os.environ.get("COORDD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("COORDD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_status: dict[str, str | None] = {}


def _pg_problem() -> str | None:
    if "pg" not in _status:
        try:
            import psycopg2

            psycopg2.connect(PG_ADMIN_URL, connect_timeout=3).close()
            _status["pg"] = None
        except Exception as exc:
            _status["pg"] = f"PostgreSQL at {PG_ADMIN_URL} unreachable: {str(exc).strip()}"
    return _status["pg"]


def _redis_problem() -> str | None:
    if "redis" not in _status:
        try:
            import redis

            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
            _status["redis"] = None
        except Exception as exc:
            _status["redis"] = f"Redis at {REDIS_URL} unreachable: {exc}"
    return _status["redis"]


def require(*services: str) -> None:
    """Skips (or, in CI, fails) the calling test when a real service is not there."""
    checks = {"postgresql": _pg_problem, "redis": _redis_problem}
    for service in services:
        problem = checks[service]()
        if problem:
            if IN_CI:
                pytest.fail(f"{problem} (CI=true: these tests must run)")
            pytest.skip(problem)


def _admin_connection():  # type: ignore[no-untyped-def]
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_URL, connect_timeout=5)
    conn.autocommit = True
    return conn


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """Creates an empty database for one test and drops it afterwards."""
    name = f"coordd_t_{uuid.uuid4().hex[:12]}"
    conn = _admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0]
        yield f"{base}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def redis_prefix() -> str:
    return f"coordd-test-{uuid.uuid4().hex[:10]}"
