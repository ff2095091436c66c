"""Login throttling: per (account, address) with growing delays, per address across
accounts, refused attempts cost nothing, and an attacker cannot lock the real user out."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from coordd.core.errors import ResourceExhausted
from coordd.domain import auth
from coordd.domain.auth import throttle as t
from coordd_client.v1 import auth_pb2
from tests.helpers import rpc_error

PASSWORD = "correct horse battery"


def test_failures_for_one_account_and_address_are_delayed_more_and_more():
    throttle = t.LoginThrottle()
    for _ in range(t.FREE_FAILURES):
        throttle.begin("ada@example.com", "203.0.113.7", 1000.0)
    with pytest.raises(ResourceExhausted) as refused:
        throttle.begin("ada@example.com", "203.0.113.7", 1000.0)
    assert refused.value.reason == "LOGIN_THROTTLED"
    assert refused.value.retry_after_s == t.BASE_DELAY_S
    throttle.begin("ada@example.com", "203.0.113.7", 1000.0 + t.BASE_DELAY_S)
    with pytest.raises(ResourceExhausted) as longer:
        throttle.begin("ada@example.com", "203.0.113.7", 1000.0 + t.BASE_DELAY_S + 1)
    assert longer.value.retry_after_s == 2 * t.BASE_DELAY_S - 1


def test_the_same_account_from_another_address_is_not_locked_out():
    throttle = t.LoginThrottle()
    for _ in range(t.FREE_FAILURES):
        throttle.begin("ada@example.com", "203.0.113.7", 1000.0)
    with pytest.raises(ResourceExhausted):
        throttle.begin("ada@example.com", "203.0.113.7", 1000.0)
    throttle.begin("ada@example.com", "198.51.100.1", 1000.0)  # the real user, elsewhere


def test_a_success_clears_the_pair():
    throttle = t.LoginThrottle()
    for _ in range(t.FREE_FAILURES):
        throttle.begin("ada@example.com", "203.0.113.7", 1000.0)
    throttle.succeeded("ada@example.com", "203.0.113.7")
    for _ in range(t.FREE_FAILURES):
        throttle.begin("ada@example.com", "203.0.113.7", 1000.0)


def test_one_address_spraying_many_accounts_runs_out_of_budget():
    throttle = t.LoginThrottle()
    for i in range(int(t.PEER_BURST)):
        throttle.begin(f"user{i}@example.com", "203.0.113.7", 1000.0)
    with pytest.raises(ResourceExhausted) as refused:
        throttle.begin("someone-else@example.com", "203.0.113.7", 1000.0)
    assert refused.value.retry_after_s == pytest.approx(1 / t.PEER_REFILL_PER_S)
    throttle.begin("someone-else@example.com", "198.51.100.1", 1000.0)
    throttle.begin("someone-else@example.com", "203.0.113.7", 1000.0 + 1 / t.PEER_REFILL_PER_S)


def test_state_is_bounded():
    throttle = t.LoginThrottle(max_entries=50)
    for i in range(500):
        throttle.begin(f"user{i}@example.com", f"10.0.{i // 250}.{i % 250}", 1000.0)
    assert len(throttle) == 50


def test_addresses_drop_the_port_and_ipv6_groups_by_64():
    assert t.peer_address("ipv4:203.0.113.7:53012") == "203.0.113.7"
    assert t.peer_address("ipv6:[2001:db8:1:2:3:4:5:6]:443") == "2001:db8:1:2::/64"
    assert t.peer_address("ipv6:[2001:db8:1:2:ffff::1]:443") == "2001:db8:1:2::/64"
    assert t.peer_address("unix:/tmp/sock") == "unix:/tmp/sock"


def _retry_delay(error: grpc.RpcError) -> float:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo detail")


def test_guessing_over_grpc_is_refused_with_retry_info_and_hashes_nothing(server, clock):
    server.sign_up(email="victim@example.com")
    wrong = auth_pb2.LoginRequest(email="victim@example.com", password="wrong password!")
    refused = None
    for _ in range(t.FREE_FAILURES + 8):
        try:
            server.auth.Login(wrong)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                refused = exc
                break
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
    assert refused is not None, "repeated wrong passwords are throttled"
    assert _retry_delay(refused) >= 1
    hashed = server.rt.passwords.pool_calls
    failure = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, server.auth.Login, wrong)
    assert failure.reason == "LOGIN_THROTTLED"
    assert server.rt.passwords.pool_calls == hashed, "a refused attempt never reaches the password pool"
    # The real user, from another address, logs in meanwhile.
    session = server.call(auth.login(server.rt, "victim@example.com", PASSWORD, "ipv4:198.51.100.7:4000"))
    assert session.access_token
    # And from the attacker's address too, once the delay has passed.
    clock.advance(t.MAX_DELAY_S + 1)
    ok = server.auth.Login(auth_pb2.LoginRequest(email="victim@example.com", password=PASSWORD))
    assert ok.access_token
