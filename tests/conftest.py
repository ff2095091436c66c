"""Fixtures: every service test runs against SQLite and against PostgreSQL + Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import infra
from tests.support.server import Clock, ServerHandle, make_settings


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        infra.require("postgresql", "redis")
    return str(request.param)


@pytest.fixture(scope="session")
def pg_session_database() -> Iterator[str]:
    infra.require("postgresql")
    with infra.migrated_database() as url:
        yield url


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str:
    """SQLite: "" (a fresh file under the test's tmp dir). PostgreSQL: the session's
    database, emptied before the test."""
    if backend == "sqlite":
        return ""
    url = str(request.getfixturevalue("pg_session_database"))
    infra.wipe(url)
    return url


@pytest.fixture
def redis_url(backend: str) -> str:
    return infra.REDIS_URL if backend == "postgresql" else ""


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings_factory(tmp_path: Path, database_url: str, redis_url: str):  # type: ignore[no-untyped-def]
    prefix = infra.redis_prefix()

    def make(**extra):  # type: ignore[no-untyped-def]
        extra.setdefault("redis_prefix", prefix)
        return make_settings(str(tmp_path / "data"), database_url, redis_url, **extra)

    return make


@pytest.fixture
def server(settings_factory, clock: Clock) -> Iterator[ServerHandle]:  # type: ignore[no-untyped-def]
    handle = ServerHandle(settings_factory(), clock)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    from coordd.logging import configure

    configure("console", "warning")
