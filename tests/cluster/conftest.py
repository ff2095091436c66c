"""Fixtures: a 3-replica cluster (deploy/cluster.toml) on a fresh PostgreSQL database, behind
nginx, with Redis and without it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.cluster import Cluster, RedisServer, running_cluster
from tests.support import infra


@pytest.fixture(scope="module", params=["redis", "no-redis"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Shared by the tests of a module that leave it as they found it (no killed replica)."""
    infra.require("postgresql")
    base = tmp_path_factory.mktemp(f"cluster-{request.param}")
    with infra.fresh_pg_database() as url:
        redis = RedisServer(base / "redis").start() if request.param == "redis" else None
        try:
            with running_cluster(base, url, redis.url if redis else "") as running:
                yield running
        finally:
            if redis is not None:
                redis.stop()


@pytest.fixture
def own_cluster(tmp_path) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    """A cluster of its own, without Redis, for a test that kills, pauses or restarts replicas."""
    infra.require("postgresql")
    with infra.fresh_pg_database() as url, running_cluster(tmp_path, url) as running:
        yield running
