"""Overload protection: per-caller and per-peer token buckets (RESOURCE_EXHAUSTED with a
RetryInfo) and the per-caller cap on open streams.

The limits live in the interceptor chain and never touch the database, so these run on the
embedded SQLite store only. Buckets are set to refill at 0.001/s: nothing refills while a
test runs, so no assertion depends on timing."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from coordd.api.limits import Buckets
from coordd.app import StartupError
from coordd_client.v1 import auth_pb2, status_pb2, status_pb2_grpc
from tests.helpers import rpc_error
from tests.support.server import ServerHandle, bearer, make_settings

SLOW = 0.001  # tokens per second: no refill within a test


def _retry_delay(error: grpc.RpcError) -> float:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToNanoseconds()) / 1e9
    raise AssertionError("no RetryInfo detail")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServerHandle]]:
    handles: list[ServerHandle] = []

    def start(**limits: Any) -> ServerHandle:
        settings = make_settings(str(tmp_path / f"data{len(handles)}"), scheduler_enabled=False, **limits)
        handles.append(ServerHandle(settings))
        return handles[-1]

    yield start
    for handle in handles:
        handle.stop()


def _whoami(server: ServerHandle, token: str) -> Any:
    return server.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(token), timeout=10)


def test_a_caller_over_its_burst_gets_resource_exhausted_with_retry_info(serve) -> None:
    server = serve(rate_limit_caller_rps=SLOW, rate_limit_caller_burst=3, rate_limit_peer_rps=0)
    _, token = server.make_user("participant")
    for _ in range(3):
        _whoami(server, token)

    failure = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, _whoami, server, token)

    assert failure.reason == "RATE_LIMITED"
    assert failure.metadata["scope"] == "caller"
    assert _retry_delay(failure.error) > 0


def test_one_callers_flood_does_not_limit_another_caller(serve) -> None:
    server = serve(rate_limit_caller_rps=SLOW, rate_limit_caller_burst=2, rate_limit_peer_rps=0)
    _, flooder = server.make_user("participant")
    _, other = server.make_user("participant")
    for _ in range(2):
        _whoami(server, flooder)
    rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, _whoami, server, flooder)

    assert _whoami(server, other).user.name.startswith("users/")


def test_a_peer_over_its_burst_is_refused_before_authentication(serve) -> None:
    server = serve(rate_limit_peer_rps=SLOW, rate_limit_peer_burst=3, rate_limit_caller_rps=0)
    for _ in range(3):
        rpc_error(grpc.StatusCode.UNAUTHENTICATED, _whoami, server, "ck_not-a-real-key")

    # The same bad API key would cost a database lookup in auth; the peer bucket answers first.
    failure = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, _whoami, server, "ck_not-a-real-key")

    assert failure.reason == "RATE_LIMITED"
    assert failure.metadata["scope"] == "peer"
    assert _retry_delay(failure.error) > 0


def test_health_and_reflection_are_exempt_from_rate_limits(serve) -> None:
    server = serve(rate_limit_peer_rps=SLOW, rate_limit_peer_burst=1)
    server.auth.SignUp(auth_pb2.SignUpRequest(email="a@example.com", password="correct horse battery"))
    rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, server.status.GetStatus, status_pb2.GetStatusRequest())

    health = health_pb2_grpc.HealthStub(server.channel)
    for _ in range(5):
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = reflection.ServerReflectionInfo(iter([ask]))
    assert any(s.name == "coordd.v1.AuthService" for s in next(replies).list_services_response.service)


def test_bad_limit_settings_stop_the_start_with_one_line(serve) -> None:
    with pytest.raises(StartupError, match="rate_limit_caller"):
        serve(rate_limit_caller_rps=-1)
    with pytest.raises(StartupError, match="max_streams_per_caller"):
        serve(max_streams_per_caller=-1)


def test_buckets_refill_at_their_rate_up_to_the_burst() -> None:
    buckets = Buckets(rate=4, burst=2)
    assert buckets.take("k", 100.0) == 0.0
    assert buckets.take("k", 100.0) == 0.0
    assert buckets.take("k", 100.0) == 0.25
    assert buckets.take("k", 100.25) == 0.0  # one token back after 1/rate seconds
    assert buckets.take("k", 200.0) == 0.0  # a long pause refills to the burst, not beyond
    assert buckets.take("k", 200.0) == 0.0
    assert buckets.take("k", 200.0) > 0


def test_buckets_forget_refilled_keys_instead_of_growing_without_bound() -> None:
    buckets = Buckets(rate=1, burst=1, max_keys=100)
    for i in range(1000):
        buckets.take(f"peer-{i}", float(i))
    assert len(buckets) <= 100


# -- open streams ------------------------------------------------------------------------------


class Watch:
    """A WatchEvents stream read on its own thread."""

    def __init__(self, server: ServerHandle, token: str, channel: grpc.Channel | None = None) -> None:
        stub = status_pb2_grpc.StatusServiceStub(channel or server.channel)
        self.call = stub.WatchEvents(status_pb2.WatchEventsRequest(), metadata=bearer(token))
        self.error: grpc.RpcError | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for _ in self.call:
                pass
        except grpc.RpcError as exc:
            self.error = exc

    def ended(self) -> grpc.RpcError:
        self.thread.join(10)
        assert self.error is not None
        return self.error


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_caller_holding_its_stream_limit_is_refused_another_stream(serve) -> None:
    server = serve(max_streams_per_caller=2)
    admin_id, admin = server.make_user("admin")
    _, other = server.make_user("admin")
    held = server.app.limits.open_streams  # type: ignore[union-attr]
    watches = [Watch(server, admin), Watch(server, admin)]
    _until(lambda: held.get(admin_id) == 2, "two open streams")

    refused = Watch(server, admin).ended()
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    assert "open streams" in (refused.details() or "")  # type: ignore[attr-defined]
    assert held.get(admin_id) == 2, "a refused stream is not counted"

    other_watch = Watch(server, other)  # another caller has its own allowance
    _until(lambda: len(held) == 2, "the other caller's stream")
    assert other_watch.error is None
    for watch in [*watches, other_watch]:
        watch.call.cancel()


def test_a_cancelled_stream_frees_its_place(serve) -> None:
    server = serve(max_streams_per_caller=1)
    admin_id, admin = server.make_user("admin")
    held = server.app.limits.open_streams  # type: ignore[union-attr]
    first = Watch(server, admin)
    _until(lambda: held.get(admin_id) == 1, "one open stream")

    first.call.cancel()
    _until(lambda: admin_id not in held, "the cancelled stream to be released")

    second = Watch(server, admin)
    _until(lambda: held.get(admin_id) == 1, "a new stream in the freed place")
    assert second.error is None
    second.call.cancel()
    _until(lambda: admin_id not in held, "the second stream to be released")


def test_streams_ended_by_shutdown_are_released(serve) -> None:
    server = serve(max_streams_per_caller=5)
    admin_id, admin = server.make_user("admin")
    held = server.app.limits.open_streams  # type: ignore[union-attr]
    channel = grpc.insecure_channel(server.target)
    watches = [Watch(server, admin, channel) for _ in range(3)]
    _until(lambda: held.get(admin_id) == 3, "three open streams")

    server.stop(grace=1)

    assert [w.ended().code() for w in watches] == [grpc.StatusCode.UNAVAILABLE] * 3  # type: ignore[attr-defined]
    assert held == {}
    channel.close()


def test_client_streams_count_against_the_callers_limit_until_they_end(serve) -> None:
    from coordd_client.v1 import node_pb2, node_pb2_grpc

    server = serve(max_streams_per_caller=1)
    _, operator = server.make_user("node_operator")
    nodes = node_pb2_grpc.NodeServiceStub(server.channel)
    project = nodes.CreateProject(
        node_pb2.CreateProjectRequest(display_name="p", slug="limits-p"), metadata=bearer(operator)
    ).project
    key = nodes.RegisterNode(
        node_pb2.RegisterNodeRequest(project=project.name, display_name="n"), metadata=bearer(operator)
    ).api_key_secret
    held = server.app.limits.open_streams  # type: ignore[union-attr]
    stop = threading.Event()

    def beats() -> Iterator[node_pb2.StreamHeartbeatsRequest]:
        yield node_pb2.StreamHeartbeatsRequest()
        stop.wait(30)

    first = nodes.StreamHeartbeats.future(beats(), metadata=bearer(key))
    _until(lambda: len(held) == 1, "the heartbeat stream to be counted")

    second = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        nodes.StreamHeartbeats,
        iter([node_pb2.StreamHeartbeatsRequest()]),
        metadata=bearer(key),
    )
    assert second.reason == "TOO_MANY_STREAMS"

    stop.set()
    assert first.result(timeout=20).beats == 1
    _until(lambda: held == {}, "the ended stream to be released")
