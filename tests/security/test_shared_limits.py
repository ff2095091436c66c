"""Rate limits shared by replicas through Redis, their fallback when Redis is gone, and the
caller's address behind a trusted proxy (x-forwarded-for).

Two ServerHandles on one PostgreSQL database and one Redis prefix are two replicas. Buckets
refill at 0.001/s, so nothing refills while a test runs and no assertion depends on timing."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from coordd.api.peer import client_peer
from coordd.app import StartupError
from coordd_client.v1 import auth_pb2
from tests.helpers import rpc_error
from tests.security.test_limits import _retry_delay
from tests.support import infra
from tests.support.server import ServerHandle, bearer, make_settings

SLOW = 0.001  # tokens per second: no refill within a test
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1
JWT_SECRET = "shared-limits-test-secret-" + "x" * 16


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    infra.require("postgresql", "redis")
    url = str(request.getfixturevalue("pg_session_database"))
    infra.wipe(url)
    return url


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServerHandle]]:
    handles: list[ServerHandle] = []

    def start(**extra: Any) -> ServerHandle:
        extra.setdefault("scheduler_enabled", False)
        extra.setdefault("jwt_secret", JWT_SECRET)
        settings = make_settings(str(tmp_path / f"data{len(handles)}"), **extra)
        handles.append(ServerHandle(settings))
        return handles[-1]

    yield start
    for handle in handles:
        handle.stop()


def _whoami(server: ServerHandle, token: str, *extra: tuple[str, str]) -> Any:
    return server.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=(*bearer(token), *extra), timeout=10)


def _outcomes(calls: list[Callable[[], Any]]) -> dict[str, list[grpc.RpcError]]:
    """Runs the calls in order; returns the failures by status code name ("OK": no error)."""
    seen: dict[str, list[grpc.RpcError]] = {}
    for call in calls:
        try:
            call()
            seen.setdefault("OK", []).append(None)  # type: ignore[arg-type]
        except grpc.RpcError as exc:
            seen.setdefault(exc.code().name, []).append(exc)
    return seen


def _two_replicas(serve, pg_url: str, redis_url: str, **limits: Any) -> tuple[ServerHandle, ServerHandle]:
    prefix = infra.redis_prefix()
    # Generous: these tests are about sharing, not about falling back when Redis is slow.
    limits.setdefault("rate_limit_redis_timeout_s", 2.0)
    a = serve(database_url=pg_url, redis_url=redis_url, redis_prefix=prefix, **limits)
    b = serve(database_url=pg_url, redis_url=redis_url, redis_prefix=prefix, **limits)
    return a, b


CALLER_20 = {"rate_limit_caller_rps": SLOW, "rate_limit_caller_burst": 20, "rate_limit_peer_rps": 0}


def test_two_replicas_sharing_redis_admit_one_callers_budget_once_between_them(serve, pg_url) -> None:
    a, b = _two_replicas(serve, pg_url, infra.REDIS_URL, **CALLER_20)
    _, token = a.make_user("participant")

    seen = _outcomes([lambda s=s: _whoami(s, token) for _ in range(20) for s in (a, b)])

    assert len(seen["OK"]) == 20
    refused = seen["RESOURCE_EXHAUSTED"]
    assert len(refused) == 20
    assert all(_retry_delay(error) > 0 for error in refused)
    assert a.app.limits.shared and b.app.limits.shared  # type: ignore[union-attr]


def test_without_redis_each_replica_keeps_its_own_budget(serve, pg_url) -> None:
    a, b = _two_replicas(serve, pg_url, "", **CALLER_20)
    _, token = a.make_user("participant")

    seen = _outcomes([lambda s=s: _whoami(s, token) for _ in range(20) for s in (a, b)])

    assert len(seen["OK"]) == 40  # documented: N replicas without Redis admit N budgets
    assert not a.app.limits.shared  # type: ignore[union-attr]


def test_the_per_peer_bucket_is_shared_by_replicas_too(serve, pg_url) -> None:
    limits = {"rate_limit_peer_rps": SLOW, "rate_limit_peer_burst": 10, "rate_limit_caller_rps": 0}
    a, b = _two_replicas(serve, pg_url, infra.REDIS_URL, **limits)

    seen = _outcomes([lambda s=s: _whoami(s, "ck_not-a-real-key") for _ in range(10) for s in (a, b)])

    assert len(seen["UNAUTHENTICATED"]) == 10
    assert len(seen["RESOURCE_EXHAUSTED"]) == 10


def test_shared_buckets_live_under_the_prefix_with_a_ttl(serve, pg_url) -> None:
    a, _ = _two_replicas(serve, pg_url, infra.REDIS_URL, **CALLER_20)
    _, token = a.make_user("participant")
    _whoami(a, token)

    client = redis.Redis.from_url(infra.REDIS_URL)
    try:
        keys = list(client.scan_iter(f"{a.settings.redis_prefix}:rl:caller:*"))
        assert len(keys) == 1
        assert client.pttl(keys[0]) > 0
    finally:
        client.close()


def test_with_redis_unreachable_calls_still_pass_under_the_local_limits(serve) -> None:
    server = serve(redis_url=DEAD_REDIS, redis_prefix=infra.redis_prefix(), pg_event_bus=False, **CALLER_20)
    _, token = server.make_user("participant")

    seen = _outcomes([lambda: _whoami(server, token) for _ in range(25)])

    assert len(seen["OK"]) == 20  # the process's own bucket still holds the line
    assert len(seen["RESOURCE_EXHAUSTED"]) == 5
    assert not server.app.limits.shared  # type: ignore[union-attr]
    assert server.app.limits.store.failures > 0  # type: ignore[union-attr]


def test_bad_shared_limit_settings_stop_the_start(serve) -> None:
    with pytest.raises(StartupError, match="trusted_proxies"):
        serve(trusted_proxies="10.0.0.0/8, not-an-address")
    with pytest.raises(StartupError, match="rate_limit_redis_timeout_s"):
        serve(rate_limit_redis_timeout_s=0)


# -- the caller's address behind a proxy ------------------------------------------------------

PEER_2 = {"rate_limit_peer_rps": SLOW, "rate_limit_peer_burst": 2, "rate_limit_caller_rps": 0}


def _anonymous(server: ServerHandle, forwarded: str) -> grpc.StatusCode:
    try:
        _whoami(server, "ck_not-a-real-key", ("x-forwarded-for", forwarded))
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_behind_a_trusted_proxy_each_forwarded_address_has_its_own_bucket(serve, json_logs) -> None:
    server = serve(trusted_proxies="127.0.0.1", **PEER_2)
    for _ in range(2):
        assert _anonymous(server, "203.0.113.9") == grpc.StatusCode.UNAUTHENTICATED
    assert _anonymous(server, "203.0.113.9") == grpc.StatusCode.RESOURCE_EXHAUSTED

    # Another client behind the same proxy is not limited by the first one's flood.
    assert _anonymous(server, "198.51.100.7") == grpc.StatusCode.UNAUTHENTICATED
    peers = {line["peer"] for line in json_logs.events("rpc", wait_for=4)}
    assert peers == {"ipv4:203.0.113.9", "ipv4:198.51.100.7"}


def test_from_an_untrusted_peer_the_forwarded_header_is_ignored(serve) -> None:
    for trusted in ("", "10.0.0.0/8"):
        server = serve(trusted_proxies=trusted, **PEER_2)
        assert _anonymous(server, "203.0.113.1") == grpc.StatusCode.UNAUTHENTICATED
        assert _anonymous(server, "203.0.113.2") == grpc.StatusCode.UNAUTHENTICATED
        # A client naming a fresh address in x-forwarded-for still has only its own bucket.
        assert _anonymous(server, "203.0.113.3") == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_login_through_a_trusted_proxy_is_audited_and_throttled_under_the_forwarded_address(
    serve,
) -> None:
    server = serve(trusted_proxies="127.0.0.0/8")
    _, admin = server.make_user("admin")
    email = f"p{uuid.uuid4().hex[:8]}@example.com"
    server.sign_up(email=email)
    rpc_error(
        grpc.StatusCode.UNAUTHENTICATED,
        server.auth.Login,
        auth_pb2.LoginRequest(email=email, password="wrong password!"),
        metadata=(("x-forwarded-for", "192.0.2.1, 203.0.113.50"),),
    )
    events = server.auth.ListAuditEvents(
        auth_pb2.ListAuditEventsRequest(filter='action = "auth.login"'), metadata=bearer(admin)
    ).audit_events
    assert [e.peer for e in events] == ["ipv4:203.0.113.50"]


class _Context:
    """What client_peer reads of a grpc ServicerContext."""

    def __init__(self, peer: str, *metadata: tuple[str, str]) -> None:
        self._peer, self._metadata = peer, metadata

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


NGINX = "ipv4:10.0.0.5:40000"


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        # The rightmost address that is not a trusted proxy: what the first trusted proxy saw.
        (_Context(NGINX, ("x-forwarded-for", "203.0.113.9")), "ipv4:203.0.113.9"),
        (_Context(NGINX, ("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.7")), "ipv4:203.0.113.9"),
        (
            _Context(NGINX, ("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.9")),
            "ipv4:203.0.113.9",
        ),
        (_Context(NGINX, ("x-forwarded-for", "2001:db8::1")), "ipv6:[2001:db8::1]"),
        (_Context(NGINX, ("x-real-ip", "198.51.100.2")), "ipv4:198.51.100.2"),
        # Garbage or nothing forwarded: the proxy itself.
        (_Context(NGINX, ("x-forwarded-for", "not an address")), NGINX),
        (_Context(NGINX), NGINX),
        # Not from a trusted proxy: the headers are the client's word, ignored.
        (_Context("ipv4:192.0.2.8:5000", ("x-forwarded-for", "203.0.113.9")), "ipv4:192.0.2.8:5000"),
        (_Context("ipv6:[2001:db8::8]:5000", ("x-real-ip", "203.0.113.9")), "ipv6:[2001:db8::8]:5000"),
    ],
)
def test_client_peer_reads_the_forwarded_address_only_from_trusted_proxies(context, expected) -> None:
    assert client_peer(context, "10.0.0.0/24") == expected


def test_without_trusted_proxies_the_tcp_peer_is_the_callers_address() -> None:
    context = _Context(NGINX, ("x-forwarded-for", "203.0.113.9"))
    assert client_peer(context, "") == NGINX


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:203.0.113.9:5000", "203.0.113.9"),
        ("ipv4:203.0.113.9", "203.0.113.9"),  # a forwarded address has no port
        ("ipv6:[2001:db8::1]:5000", "2001:db8::/64"),
        ("ipv6:[2001:db8::1]", "2001:db8::/64"),
    ],
)
def test_the_login_throttle_keys_forwarded_addresses_like_tcp_peers(peer, address) -> None:
    from coordd.domain.auth.throttle import peer_address

    assert peer_address(peer) == address


def test_with_redis_answering_too_slowly_calls_are_decided_by_the_local_limits(serve) -> None:
    import socket

    # A listener that never accepts: connections complete in the kernel's backlog, and no
    # command is ever answered, the slowest Redis there is.
    mute = socket.create_server(("127.0.0.1", 0), backlog=64)
    try:
        port = mute.getsockname()[1]
        server = serve(
            redis_url=f"redis://127.0.0.1:{port}/0",
            redis_prefix=infra.redis_prefix(),
            pg_event_bus=False,
            **CALLER_20,
        )
        _, token = server.make_user("participant")

        seen = _outcomes([lambda: _whoami(server, token) for _ in range(25)])

        assert len(seen["OK"]) == 20
        assert len(seen["RESOURCE_EXHAUSTED"]) == 5
        assert not server.app.limits.shared  # type: ignore[union-attr]
    finally:
        mute.close()
