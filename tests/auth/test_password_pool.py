"""Password hashing runs in its own small bounded pool: not on the event loop, not in the
database pool, so a flood of logins cannot starve database work or health."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordd.core.errors import ResourceExhausted
from coordd.crypto.passwords import Passwords
from coordd_client.v1 import auth_pb2
from tests.support.server import bearer

PASSWORD = "correct horse battery"


def test_login_checks_the_password_in_the_password_pool(server, monkeypatch):
    server.sign_up(email="pool@example.com")
    threads: list[str] = []
    real = server.rt.passwords.verify

    def verify(stored, password):
        threads.append(threading.current_thread().name)
        return real(stored, password)

    monkeypatch.setattr(server.rt.passwords, "verify", verify)
    server.auth.Login(auth_pb2.LoginRequest(email="pool@example.com", password=PASSWORD))
    assert threads and all(name.startswith("coordd-kdf") for name in threads)


def test_a_login_flood_leaves_database_calls_and_health_serving(server, monkeypatch):
    """Every password-pool thread is stuck and more logins queue behind them; calls that
    need the database and the health check are still answered."""
    _, token = server.make_user("participant")
    release = threading.Event()
    real = server.rt.passwords.verify
    entered = threading.Semaphore(0)

    def stuck(stored, password):
        entered.release()
        release.wait(30)
        return real(stored, password)

    monkeypatch.setattr(server.rt.passwords, "verify", stuck)
    flood = server.settings.db_threads * 2
    pool = ThreadPoolExecutor(flood)
    try:
        pending = [
            pool.submit(
                server.auth.Login,
                # One account each: the throttle admits one failure per account and address.
                auth_pb2.LoginRequest(email=f"flood{i}@example.com", password="wrong password!"),
                timeout=60,
            )
            for i in range(flood)
        ]
        for _ in range(server.rt.passwords.threads):
            assert entered.acquire(timeout=30), "the flood occupies every password thread"
        # WhoAmI reads the user through the database pool.
        me = server.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(token), timeout=20)
        assert me.user.name
        health = health_pb2_grpc.HealthStub(server.channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest(), timeout=20).status
            == health_pb2.HealthCheckResponse.SERVING
        )
        assert not any(f.done() for f in pending), "the logins were still waiting for the pool"
    finally:
        release.set()
        for future in pending:
            with pytest.raises(grpc.RpcError):
                future.result(60)
        pool.shutdown()


def test_the_pool_refuses_work_beyond_its_bound():
    passwords = Passwords(8, 1, 1, threads=1, max_waiting=1)
    gate = threading.Event()
    real = passwords.verify

    def slow(stored, password):
        gate.wait(30)
        return real(stored, password)

    passwords.verify = slow  # type: ignore[method-assign]

    async def main() -> None:
        stored = passwords.hash(PASSWORD)
        first = asyncio.ensure_future(passwords.verify_in_pool(stored, PASSWORD))
        second = asyncio.ensure_future(passwords.verify_in_pool(stored, "wrong password"))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted) as busy:
            await passwords.verify_in_pool(stored, PASSWORD)
        assert busy.value.reason == "PASSWORD_CHECKS_BUSY" and busy.value.retry_after_s
        gate.set()
        assert await first is True
        assert await second is False
        assert await passwords.verify_in_pool(stored, PASSWORD) is True

    try:
        asyncio.run(main())
    finally:
        gate.set()
        passwords.close()
