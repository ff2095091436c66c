"""Sign-In with Ethereum's own throttle: nonces per client address, attempts per client
address, signed sign-ins per Ethereum address (never spendable by someone without the key),
a cap on outstanding nonces, and the buckets shared by replicas through Redis.

Client addresses are chosen with x-forwarded-for behind a trusted proxy (127.0.0.1), as a
load balancer would set it. The `server` tests run on SQLite and on PostgreSQL + Redis."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from coordd.api.siwe_limits import SiweLimits
from coordd.config import ConfigError
from coordd.core.errors import ResourceExhausted
from coordd.store.auth import siwe as siwe_store
from coordd_client.siwe import address_of, compose, sign
from coordd_client.v1 import auth_pb2, auth_pb2_grpc
from tests.helpers import rpc_error
from tests.support import infra
from tests.support.server import ServerHandle, make_settings

PROXY = {"trusted_proxies": "127.0.0.1"}
SLOW = 0.06  # per minute: nothing refills while a test runs
JWT_SECRET = "siwe-throttle-test-secret-" + "x" * 16


def _from(address: str) -> tuple[tuple[str, str], ...]:
    return (("x-forwarded-for", address),)


def _retry_delay(error: grpc.RpcError) -> float:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo detail")


def _stub(server: ServerHandle) -> auth_pb2_grpc.AuthServiceStub:
    return auth_pb2_grpc.AuthServiceStub(server.channel)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _signed(server: ServerHandle, key: bytes, signer: bytes | None = None, client: str = "203.0.113.50"):
    nonce = _stub(server).CreateSiweNonce(auth_pb2.CreateSiweNonceRequest(), metadata=_from(client))
    message = compose(nonce.domain, address_of(key), nonce.uri, nonce.nonce, _now())
    return auth_pb2.SignInWithEthereumRequest(message=message, signature=sign(message, signer or key))


@pytest.fixture
def throttled(settings_factory, clock) -> Iterator[Callable[..., ServerHandle]]:
    handles: list[ServerHandle] = []

    def start(**limits: Any) -> ServerHandle:
        handles.append(ServerHandle(settings_factory(**PROXY, **limits), clock))
        return handles[-1]

    yield start
    for handle in handles:
        handle.stop()


def test_nonces_for_one_client_address_are_throttled_with_a_retry_delay(throttled):
    server = throttled(siwe_nonces_per_peer_per_min=SLOW, siwe_nonce_burst_per_peer=3)
    stub = _stub(server)
    for _ in range(3):
        stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest(), metadata=_from("203.0.113.7"))
    failure = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        stub.CreateSiweNonce,
        auth_pb2.CreateSiweNonceRequest(),
        metadata=_from("203.0.113.7"),
    )
    assert failure.reason == "SIWE_THROTTLED" and failure.metadata["scope"] == "siwe-nonce-peer"
    assert "retry in" in failure.details
    assert _retry_delay(failure.error) > 0 and int(failure.metadata["retry_after_ms"]) > 0
    # Another client address has its own budget.
    assert stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest(), metadata=_from("198.51.100.9")).nonce
    with pytest.raises(grpc.RpcError):  # a refused call issued no nonce
        stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest(), metadata=_from("203.0.113.7"))
    assert server.call(server.rt.run(siwe_store.count_nonces, 100)) == 4


def test_ipv6_clients_are_grouped_by_64(throttled):
    server = throttled(siwe_nonces_per_peer_per_min=SLOW, siwe_nonce_burst_per_peer=1)
    stub = _stub(server)
    stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest(), metadata=_from("2001:db8:1:2::1"))
    failure = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        stub.CreateSiweNonce,
        auth_pb2.CreateSiweNonceRequest(),
        metadata=_from("2001:db8:1:2:ffff::9"),
    )
    assert failure.reason == "SIWE_THROTTLED"
    stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest(), metadata=_from("2001:db8:1:3::1"))


def test_a_refused_client_is_admitted_again_after_the_retry_delay(throttled, clock):
    # 30 a minute: a token is back after 2 s, of the fake clock and of Redis's own clock (long
    # enough that a loaded machine does not refill the bucket between the three calls).
    server = throttled(siwe_nonces_per_peer_per_min=30, siwe_nonce_burst_per_peer=2)
    stub = _stub(server)
    for _ in range(2):
        stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest(), metadata=_from("203.0.113.8"))
    failure = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        stub.CreateSiweNonce,
        auth_pb2.CreateSiweNonceRequest(),
        metadata=_from("203.0.113.8"),
    )
    delay = _retry_delay(failure.error)
    assert 0 < delay <= 2.05
    clock.advance(delay + 0.05)
    time.sleep(delay + 0.05)
    assert stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest(), metadata=_from("203.0.113.8")).nonce


def test_sign_in_attempts_from_one_client_address_are_throttled_before_any_check(throttled):
    server = throttled(siwe_sign_ins_per_peer_per_min=SLOW, siwe_sign_in_burst_per_peer=2)
    stub = _stub(server)
    garbage = auth_pb2.SignInWithEthereumRequest(message="hello", signature=b"\x00" * 65)
    for _ in range(2):
        rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT, stub.SignInWithEthereum, garbage, metadata=_from("203.0.113.9")
        )
    failure = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, stub.SignInWithEthereum, garbage, metadata=_from("203.0.113.9")
    )
    assert failure.reason == "SIWE_THROTTLED" and failure.metadata["scope"] == "siwe-peer"
    assert _retry_delay(failure.error) > 60
    # A valid sign-in from that address is refused too; from another client it works.
    key = os.urandom(32)
    request = _signed(server, key)
    rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, stub.SignInWithEthereum, request, metadata=_from("203.0.113.9")
    )
    assert stub.SignInWithEthereum(request, metadata=_from("198.51.100.10")).access_token


def test_sign_ins_of_one_address_are_throttled_and_forgeries_never_count_against_it(throttled):
    server = throttled(siwe_sign_ins_per_address_per_min=SLOW, siwe_sign_in_burst_per_address=2)
    stub = _stub(server)
    victim = os.urandom(32)
    # An attacker floods forged messages naming the victim's address, from many clients.
    for i in range(6):
        forged = _signed(server, victim, signer=os.urandom(32))
        failure = rpc_error(
            grpc.StatusCode.UNAUTHENTICATED, stub.SignInWithEthereum, forged, metadata=_from(f"192.0.2.{i}")
        )
        assert failure.reason == "SIWE_BAD_SIGNATURE"
    # The owner signs in as often as the budget says, from anywhere.
    for i in range(2):
        assert stub.SignInWithEthereum(
            _signed(server, victim), metadata=_from(f"198.51.100.{i}")
        ).access_token
    request = _signed(server, victim)
    failure = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, stub.SignInWithEthereum, request, metadata=_from("198.51.100.77")
    )
    assert failure.reason == "SIWE_THROTTLED" and failure.metadata["scope"] == "siwe-address"
    assert "this Ethereum address" in failure.details
    # The refused sign-in did not consume its nonce; other addresses are not affected.
    nonce = re.search(r"^Nonce: (\w+)$", request.message, re.MULTILINE)
    assert nonce is not None
    assert server.call(server.rt.run(siwe_store.take_nonce, nonce.group(1), server.rt.now()))
    assert stub.SignInWithEthereum(
        _signed(server, os.urandom(32)), metadata=_from("198.51.100.77")
    ).access_token


def test_outstanding_nonces_are_capped_until_the_oldest_expire(throttled, clock):
    server = throttled(siwe_max_nonces=3, siwe_nonce_ttl_s=60)
    stub = _stub(server)
    nonces = [
        stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest(), metadata=_from(f"203.0.113.{20 + i}"))
        for i in range(3)
    ]
    failure = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        stub.CreateSiweNonce,
        auth_pb2.CreateSiweNonceRequest(),
        metadata=_from("203.0.113.30"),
    )
    assert failure.reason == "SIWE_NONCES_EXHAUSTED" and failure.metadata["limit"] == "3"
    assert 50 <= _retry_delay(failure.error) <= 61
    assert server.call(server.rt.run(siwe_store.count_nonces, 100)) == 3
    # A used nonce frees its place at once.
    key = os.urandom(32)
    message = compose(nonces[0].domain, address_of(key), nonces[0].uri, nonces[0].nonce, _now())
    stub.SignInWithEthereum(auth_pb2.SignInWithEthereumRequest(message=message, signature=sign(message, key)))
    stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest(), metadata=_from("203.0.113.31"))
    assert (
        rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, _signed, server, key).reason == "SIWE_NONCES_EXHAUSTED"
    )
    # Expired ones are dropped by the next issue.
    clock.advance(61)
    for i in range(3):
        stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest(), metadata=_from(f"203.0.113.{40 + i}"))
    assert server.call(server.rt.run(siwe_store.count_nonces, 100)) == 3


def test_bad_throttle_settings_stop_the_start(tmp_path):
    for bad in (
        {"siwe_nonces_per_peer_per_min": -1.0},
        {"siwe_sign_ins_per_address_per_min": 5.0, "siwe_sign_in_burst_per_address": 0},
        {"siwe_max_nonces": -1},
    ):
        with pytest.raises(ConfigError, match="siwe_"):
            make_settings(str(tmp_path), **bad)


def test_throttle_memory_is_bounded_by_the_bucket_key_cap(tmp_path):
    limits = SiweLimits(make_settings(str(tmp_path), siwe_sign_ins_per_address_per_min=SLOW), lambda: 1000.0)
    scope = limits.scopes["siwe-address"]
    assert scope is not None
    scope.local._max_keys = 100

    async def flood() -> None:
        for i in range(1000):
            await limits.admit_address(f"0x{i:040x}")

    asyncio.run(flood())
    assert len(scope.local) <= 100


def test_zero_turns_a_bucket_off(tmp_path):
    limits = SiweLimits(make_settings(str(tmp_path), siwe_sign_ins_per_address_per_min=0), lambda: 1000.0)
    assert limits.scopes["siwe-address"] is None

    async def many() -> None:
        for _ in range(100):
            await limits.admit_address("0x" + "ab" * 20)

    asyncio.run(many())


# -- shared by replicas (PostgreSQL + Redis) ---------------------------------------------------


@pytest.fixture
def replicas(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., ServerHandle]]:
    infra.require("postgresql", "redis")
    url = str(request.getfixturevalue("pg_session_database"))
    infra.wipe(url)
    prefix = infra.redis_prefix()
    handles: list[ServerHandle] = []

    def start(**limits: Any) -> ServerHandle:
        settings = make_settings(
            str(tmp_path / f"data{len(handles)}"),
            database_url=url,
            redis_url=infra.REDIS_URL,
            redis_prefix=prefix,
            scheduler_enabled=False,
            jwt_secret=JWT_SECRET,
            # Generous: this is about sharing, not about falling back when Redis is slow.
            rate_limit_redis_timeout_s=2.0,
            **PROXY,
            **limits,
        )
        handles.append(ServerHandle(settings))
        return handles[-1]

    yield start
    for handle in handles:
        handle.stop()


def test_replicas_share_the_siwe_budgets_through_redis(replicas):
    limits = {
        "siwe_nonces_per_peer_per_min": SLOW,
        "siwe_nonce_burst_per_peer": 4,
        "siwe_sign_ins_per_address_per_min": SLOW,
        "siwe_sign_in_burst_per_address": 2,
    }
    a, b = replicas(**limits), replicas(**limits)
    issued = 0
    refused = []
    for server in (a, b, a, b, a, b):
        try:
            _stub(server).CreateSiweNonce(auth_pb2.CreateSiweNonceRequest(), metadata=_from("203.0.113.60"))
            issued += 1
        except grpc.RpcError as exc:
            refused.append(exc)
    assert issued == 4, "one budget for the client address across both replicas, not one each"
    assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
    key = os.urandom(32)
    assert _stub(a).SignInWithEthereum(_signed(a, key, client="198.51.100.1")).access_token
    assert _stub(b).SignInWithEthereum(_signed(b, key, client="198.51.100.2")).access_token
    failure = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        _stub(a).SignInWithEthereum,
        _signed(b, key, client="198.51.100.3"),
    )
    assert failure.metadata["scope"] == "siwe-address"


def test_unit_scope_refusal_is_resource_exhausted_with_retry_after(tmp_path):
    settings = make_settings(
        str(tmp_path), siwe_sign_ins_per_address_per_min=60.0, siwe_sign_in_burst_per_address=1
    )
    now = [1000.0]
    limits = SiweLimits(settings, lambda: now[0])

    asyncio.run(limits.admit_address("0x" + "cd" * 20))
    with pytest.raises(ResourceExhausted) as refused:
        asyncio.run(limits.admit_address("0x" + "CD" * 20))  # addresses compare case-insensitively
    assert refused.value.retry_after_s == pytest.approx(1.0)
    now[0] += 1.0
    asyncio.run(limits.admit_address("0x" + "cd" * 20))
