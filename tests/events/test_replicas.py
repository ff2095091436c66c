"""Streams on one replica hear about changes committed through another, with the PostgreSQL
bus (no Redis), with Redis, and while Redis is down (PostgreSQL carries the events)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordd.domain import ledger
from coordd.events.bus import HEALTH_SERVICE
from coordd_client.v1 import job_pb2, job_pb2_grpc, status_pb2
from tests.events.support import (
    ARRIVES_WITHIN_S,
    REFRESH_NEVER_S,
    EventReader,
    RedisServer,
    free_port,
    replica,
    wait_for,
)
from tests.support import infra
from tests.support.server import ServerHandle, bearer


@pytest.fixture
def pg_url(pg_session_database: str) -> str:
    infra.wipe(pg_session_database)
    return pg_session_database


@pytest.fixture
def started() -> Iterator[list]:
    """Everything a test starts (servers, readers, redis-servers), stopped at the end."""
    things: list = []
    yield things
    for thing in reversed(things):
        (thing.close if isinstance(thing, EventReader) else thing.stop)()


def _pair(
    started: list, tmp_path: Path, pg_url: str, redis_url: str = ""
) -> tuple[ServerHandle, ServerHandle]:
    prefix = infra.redis_prefix()
    a = replica(tmp_path / "data", pg_url, redis_url, redis_prefix=prefix)
    started.append(a)
    b = replica(tmp_path / "data", pg_url, redis_url, redis_prefix=prefix)
    started.append(b)
    return a, b


def _bus(server: ServerHandle, token: str) -> str:
    return server.status.GetStatus(status_pb2.GetStatusRequest(), metadata=bearer(token)).event_bus


def _health(server: ServerHandle, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=service)).status


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _crosses(a: ServerHandle, reader_on_b: EventReader, timeout: float = ARRIVES_WITHIN_S) -> bool:
    return reader_on_b.sees(a.sign_up().user.name, timeout)


def test_without_redis_a_stream_on_b_sees_a_sign_up_through_a_over_postgresql(started, tmp_path, pg_url):
    infra.require("postgresql")
    a, b = _pair(started, tmp_path, pg_url)
    _, admin = a.make_user("admin")
    on_b = EventReader(b, admin)
    started.append(on_b)
    assert _crosses(a, on_b), "WatchEvents has no timer: only the PostgreSQL bus can bring A's event to B"
    assert _bus(b, admin) == "postgresql"
    assert _health(b, HEALTH_SERVICE) == SERVING


def test_without_redis_a_replicas_own_events_reach_its_streams_once(started, tmp_path, pg_url):
    infra.require("postgresql")
    a, b = _pair(started, tmp_path, pg_url)
    _, admin = a.make_user("admin")
    on_a = EventReader(a, admin)
    on_b = EventReader(b, admin)
    started += [on_a, on_b]
    first = a.sign_up().user.name
    assert on_b.sees(first)  # the notification went out, so A's own copy came back too
    second = a.sign_up().user.name
    assert on_a.sees(second)
    assert on_a.subjects.count(first) == 1


def test_without_redis_watch_job_on_b_sees_a_cancel_through_a_before_any_refresh(
    started, tmp_path, pg_url, monkeypatch
):
    infra.require("postgresql")
    monkeypatch.setattr("coordd.api.jobs.WATCH_REFRESH_S", REFRESH_NEVER_S)
    a, b = _pair(started, tmp_path, pg_url)
    alice_id, alice = a.make_user("participant")
    with a.rt.store.write() as tx:
        ledger.deposit(tx, alice_id, 1000, "seed")
    on_a = job_pb2_grpc.JobServiceStub(a.channel)
    job = on_a.SubmitJob(
        job_pb2.SubmitJobRequest(
            kind=job_pb2.JOB_KIND_INFERENCE,
            model_ref="hf://org/model@1",
            budget=10,
            input=job_pb2.Payload(data=b"prompt"),
        ),
        metadata=bearer(alice),
    ).job
    updates: list[job_pb2.WatchJobResponse] = []
    stream = job_pb2_grpc.JobServiceStub(b.channel).WatchJob(
        job_pb2.WatchJobRequest(name=job.name), metadata=bearer(alice)
    )
    reader = threading.Thread(target=lambda: updates.extend(stream), daemon=True)
    reader.start()
    try:
        assert wait_for(lambda: updates)
        assert updates[0].job.state == job_pb2.JOB_STATE_QUEUED
        on_a.CancelJob(job_pb2.CancelJobRequest(name=job.name), metadata=bearer(alice))
        assert wait_for(lambda: updates[-1].job.state == job_pb2.JOB_STATE_CANCELLED), (
            f"B's stream refreshes only every {REFRESH_NEVER_S:g} s: the cancel must come over the bus"
        )
    finally:
        stream.cancel()
        reader.join(5)


def test_with_redis_a_stream_on_b_sees_a_sign_up_through_a(started, tmp_path, pg_url):
    infra.require("postgresql", "redis")
    a, b = _pair(started, tmp_path, pg_url, infra.REDIS_URL)
    _, admin = a.make_user("admin")
    on_b = EventReader(b, admin)
    started.append(on_b)
    assert _crosses(a, on_b)
    assert _bus(b, admin) == "redis"
    assert _health(b, HEALTH_SERVICE) == SERVING
    # Redis is up: the events went over Redis, not PostgreSQL.
    assert a.rt.bus.sent["redis"] > 0 and "postgresql" not in a.rt.bus.sent


def test_with_redis_unreachable_replicas_fall_back_to_postgresql_and_say_so(started, tmp_path, pg_url):
    infra.require("postgresql")
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    a, b = _pair(started, tmp_path, pg_url, nowhere)
    _, admin = a.make_user("admin")
    on_b = EventReader(b, admin)
    started.append(on_b)
    assert _crosses(a, on_b)
    state = _bus(b, admin)
    assert state.startswith("redis (down since ") and state.endswith(", falling back to postgresql)"), state
    assert wait_for(lambda: _health(b, HEALTH_SERVICE) == NOT_SERVING)
    assert _health(b) == SERVING, "the database is fine: the daemon still serves"


def test_a_redis_outage_mid_run_falls_back_to_postgresql_and_recovers(started, tmp_path, pg_url):
    infra.require("postgresql")
    server = RedisServer(tmp_path)
    server.start()
    started.append(server)
    a, b = _pair(started, tmp_path, pg_url, server.url)
    _, admin = a.make_user("admin")
    on_b = EventReader(b, admin)
    started.append(on_b)
    assert _crosses(a, on_b)
    assert _bus(a, admin) == "redis"

    server.stop()
    assert wait_for(lambda: "falling back to postgresql" in _bus(a, admin))
    assert wait_for(lambda: "falling back to postgresql" in _bus(b, admin))
    assert wait_for(lambda: _health(b, HEALTH_SERVICE) == NOT_SERVING)
    assert _health(b) == SERVING
    for _ in range(3):
        assert _crosses(a, on_b), "with Redis down the change still reaches B"

    server.start()
    assert wait_for(lambda: _bus(a, admin) == "redis" and _bus(b, admin) == "redis")
    assert wait_for(lambda: _health(b, HEALTH_SERVICE) == SERVING)
    assert _crosses(a, on_b)


def test_on_sqlite_an_unreachable_redis_falls_back_to_the_refresh_interval(tmp_path, started):
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    server = replica(tmp_path / "data", "", nowhere)
    started.append(server)
    _, admin = server.make_user("admin")
    state = _bus(server, admin)
    assert state.startswith("redis (down since "), state
    assert state.endswith(", falling back to the refresh interval)"), state
    # The replica's own streams still hear its own changes.
    on_it = EventReader(server, admin)
    started.append(on_it)


def test_the_postgresql_listener_reconnects_after_its_connection_is_killed(started, tmp_path, pg_url):
    infra.require("postgresql")
    import psycopg2

    a, b = _pair(started, tmp_path, pg_url)
    _, admin = a.make_user("admin")
    on_b = EventReader(b, admin)
    started.append(on_b)
    assert _crosses(a, on_b)
    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'coordd-events-%'"
            )
            assert cur.rowcount >= 2  # both replicas' listeners (and publishers) are gone
    finally:
        conn.close()
    # Until it is back, streams run on their timers; then events flow again.
    assert wait_for(lambda: _crosses(a, on_b, timeout=2), timeout=30)
    assert wait_for(lambda: _bus(b, admin) == "postgresql")
    assert on_b.ended is None


def test_without_a_database_url_the_bus_stays_in_process(tmp_path, started):
    server = replica(tmp_path / "data", "")
    started.append(server)
    _, admin = server.make_user("admin")
    assert _bus(server, admin) == "memory"
    assert type(server.rt.bus).__name__ == "EventBus"
    assert _health(server, HEALTH_SERVICE) == SERVING
