"""StatusService, health, events and shutdown of streams."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordd_client.v1 import auth_pb2, auth_pb2_grpc, status_pb2, status_pb2_grpc
from tests.helpers import rpc_error
from tests.support.server import ServerHandle, bearer


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_get_status_reports_backend_counts_and_scheduler(server, backend):
    # Internals are for admins (issue #12): see test_get_status_shows_internals_to_admins_only.
    _, token = server.make_user("admin")
    server.sign_up()
    assert _wait_for(
        lambda: any(
            t.run_count
            for t in server.status.GetStatus(
                status_pb2.GetStatusRequest(), metadata=bearer(token)
            ).scheduler.tasks
        )
    )
    reply = server.status.GetStatus(status_pb2.GetStatusRequest(), metadata=bearer(token))
    assert reply.version == "0.1.0"
    expected = {
        "sqlite": status_pb2.DATABASE_BACKEND_SQLITE,
        "postgresql": status_pb2.DATABASE_BACKEND_POSTGRESQL,
    }[backend]
    assert reply.database_backend == expected
    assert reply.event_bus == ("redis" if backend == "postgresql" else "memory")
    assert reply.counts["users"] == 2
    assert reply.scheduler.is_leader
    assert reply.scheduler.leader_instance_id == reply.instance_id
    task = {t.name: t for t in reply.scheduler.tasks}["purge-idempotency-records"]
    assert task.run_count >= 1 and task.last_error == ""
    assert task.interval.seconds == 60


def test_list_events_pages_newest_first_and_filters(server):
    _, admin = server.make_user("admin")
    for _ in range(3):
        server.sign_up()
    page = server.status.ListEvents(
        status_pb2.ListEventsRequest(page_size=2, type_prefix="auth.user."), metadata=bearer(admin)
    )
    assert [e.type for e in page.events] == ["auth.user.created"] * 2
    ids = [int(e.name.split("/")[1]) for e in page.events]
    assert ids == sorted(ids, reverse=True)
    rest = server.status.ListEvents(
        status_pb2.ListEventsRequest(page_size=10, type_prefix="auth.user.", page_token=page.next_page_token),
        metadata=bearer(admin),
    )
    assert len(rest.events) == 2  # 3 sign-ups + the admin itself
    assert not rest.next_page_token
    subject = page.events[0].subject
    only = server.status.ListEvents(status_pb2.ListEventsRequest(subject=subject), metadata=bearer(admin))
    assert [e.subject for e in only.events] == [subject]
    assert only.events[0].data["roles"] == ["participant"]


def _watch(server, token, prefix, into, ready):
    stream = server.status.WatchEvents(
        status_pb2.WatchEventsRequest(type_prefix=prefix), metadata=bearer(token)
    )
    stream.initial_metadata()
    ready.set()
    try:
        for message in stream:
            into.append(message.event)
    except grpc.RpcError as exc:
        into.append(exc)
    return stream


def _sign_ups_reach_watcher(server, seen) -> bool:
    """Headers reach the client just before the servicer subscribes, so the first event may
    precede the subscription (events are hints); a few sign-ups make the check deterministic."""
    for _ in range(5):
        name = server.sign_up().user.name
        if _wait_for(lambda name=name: any(getattr(e, "subject", "") == name for e in seen), timeout=2):
            return True
    return False


def test_watch_events_streams_committed_events(server):
    _, admin = server.make_user("admin")
    seen: list = []
    ready = threading.Event()
    threading.Thread(target=_watch, args=(server, admin, "auth.user.", seen, ready), daemon=True).start()
    assert ready.wait(5)
    assert _sign_ups_reach_watcher(server, seen)


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_events_fan_out_across_replicas_through_redis(settings_factory, clock):
    a = ServerHandle(settings_factory(), clock)
    b = ServerHandle(settings_factory(), clock)
    try:
        _, admin = a.make_user("admin")
        seen: list = []
        ready = threading.Event()
        threading.Thread(target=_watch, args=(b, admin, "auth.", seen, ready), daemon=True).start()
        assert ready.wait(5)
        assert _sign_ups_reach_watcher(a, seen)
        # Exactly one replica leads the scheduler.
        assert _wait_for(lambda: a.app.scheduler.is_leader or b.app.scheduler.is_leader)
        assert not (a.app.scheduler.is_leader and b.app.scheduler.is_leader)
    finally:
        a.stop()
        b.stop()


def test_health_is_serving_and_streams_end_unavailable_on_shutdown(settings_factory, clock):
    server = ServerHandle(settings_factory(), clock)
    health = health_pb2_grpc.HealthStub(server.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="coordd.v1.AuthService")).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    _, admin = server.make_user("admin")
    channel = grpc.insecure_channel(server.target)
    seen: list = []
    ready = threading.Event()

    def watch() -> None:
        stream = status_pb2_grpc.StatusServiceStub(channel).WatchEvents(
            status_pb2.WatchEventsRequest(), metadata=bearer(admin)
        )
        stream.initial_metadata()
        ready.set()
        try:
            for message in stream:
                seen.append(message)
        except grpc.RpcError as exc:
            seen.append(exc)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert ready.wait(5)
    server.stop(grace=2)
    thread.join(5)
    channel.close()
    assert isinstance(seen[-1], grpc.RpcError)
    assert seen[-1].code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in seen[-1].details()


def test_health_follows_the_database(server):
    health = health_pb2_grpc.HealthStub(server.channel)
    server.rt.store.ping = _broken_ping  # the next health probe cannot reach the database
    assert _wait_for(
        lambda: (
            health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        )
    )
    del server.rt.store.ping
    assert _wait_for(
        lambda: health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    )


def _broken_ping() -> None:
    import peewee

    raise peewee.OperationalError("connection refused")


def test_unexpected_error_is_internal_with_request_id_and_no_leak(server, monkeypatch):
    from coordd.domain import auth

    def explode(*args, **kwargs):
        raise RuntimeError("secret internals: password=hunter2")

    monkeypatch.setattr(auth, "login", explode)
    failure = rpc_error(
        grpc.StatusCode.INTERNAL,
        server.auth.Login,
        auth_pb2.LoginRequest(email="a@example.com", password="whatever12345"),
    )
    assert "hunter2" not in failure.details
    assert failure.trailers["x-request-id"] in failure.details


def test_prometheus_metrics_count_rpcs_by_method_and_code(settings_factory, clock):
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ServerHandle(settings_factory(metrics_port=port), clock)
    try:
        server.sign_up()
        rpc_error(grpc.StatusCode.UNAUTHENTICATED, server.auth.WhoAmI, auth_pb2.WhoAmIRequest())
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.stop()
    assert 'coordd_rpcs_total{code="OK",method="/coordd.v1.AuthService/SignUp"}' in body
    assert 'coordd_rpcs_total{code="UNAUTHENTICATED",method="/coordd.v1.AuthService/WhoAmI"}' in body
    assert "coordd_rpc_duration_seconds_bucket" in body
    assert "coordd_scheduler_leader" in body


def test_shutdown_lets_a_unary_call_in_flight_finish(settings_factory, clock, monkeypatch):
    from coordd.domain import auth

    server = ServerHandle(settings_factory(), clock)
    server.sign_up(email="slow@example.com")
    real_login = auth.login
    entered = threading.Event()

    def slow_login(*args, **kwargs):
        entered.set()
        time.sleep(0.5)
        return real_login(*args, **kwargs)

    monkeypatch.setattr(auth, "login", slow_login)
    outcome: list = []
    channel = grpc.insecure_channel(server.target)  # the handle closes its own channel on stop

    def call() -> None:
        try:
            outcome.append(
                auth_pb2_grpc.AuthServiceStub(channel).Login(
                    auth_pb2.LoginRequest(email="slow@example.com", password="correct horse battery")
                )
            )
        except grpc.RpcError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    assert entered.wait(5)
    server.stop(grace=5)
    thread.join(5)
    channel.close()
    assert isinstance(outcome[0], auth_pb2.LoginResponse), outcome


def test_get_status_shows_internals_to_admins_only(server, backend):
    _, participant = server.make_user("participant")
    _, admin = server.make_user("admin")
    minimal = server.status.GetStatus(status_pb2.GetStatusRequest(), metadata=bearer(participant))
    assert minimal.version == "0.1.0" and minimal.serving
    assert minimal.database_backend != status_pb2.DATABASE_BACKEND_UNSPECIFIED
    assert not minimal.instance_id, "host name and pid are internals"
    assert not minimal.counts and not minimal.HasField("scheduler") and not minimal.HasField("uptime")
    assert not minimal.event_bus and not minimal.HasField("start_time")
    full = server.status.GetStatus(status_pb2.GetStatusRequest(), metadata=bearer(admin))
    assert full.serving and full.instance_id and full.counts["users"] == 2 and full.HasField("scheduler")
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, server.status.GetStatus, status_pb2.GetStatusRequest())
