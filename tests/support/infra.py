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


def _url(name: str) -> str:
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


@contextmanager
def migrated_database() -> Iterator[str]:
    """One database per test session with every migration applied. Tests share it and
    `wipe()` it before each test: emptying ~40 small tables takes milliseconds, where
    creating a database (even from a template) cost 0.6-1 s per test on this machine."""
    import tempfile

    from coordd.config import load_settings
    from coordd.store.db import Store
    from coordd.store.migrations import migrate

    name = f"coordd_s_{uuid.uuid4().hex[:12]}"
    conn = _admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        with tempfile.TemporaryDirectory() as data_dir:
            store = Store(load_settings(None, env={}, database_url=_url(name), data_dir=data_dir))
            try:
                migrate(store)
            finally:
                store.close()
        yield _url(name)
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def wipe(url: str) -> None:
    """Deletes every row except the migration record; foreign keys are not checked meanwhile."""
    import psycopg2

    conn = psycopg2.connect(url, connect_timeout=5)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT tablename FROM pg_tables "
                "WHERE schemaname = 'public' AND tablename <> 'schema_migration'"
            )
            tables = [row[0] for row in cur.fetchall()]
            cur.execute("SET LOCAL session_replication_role = replica")
            for table in tables:
                cur.execute(f'DELETE FROM "{table}"')
            # Session advisory locks (the scheduler's) die with their connections; none may survive a test.
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
    finally:
        conn.close()


@contextmanager
def fresh_pg_database(template: str | None = None) -> Iterator[str]:
    """A database of its own (empty, or a copy of `template`), dropped afterwards."""
    name = f"coordd_t_{uuid.uuid4().hex[:12]}"
    conn = _admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        yield _url(name)
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def redis_prefix() -> str:
    return f"coordd-test-{uuid.uuid4().hex[:10]}"
