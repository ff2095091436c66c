"""An in-process coordd on an ephemeral port, driven through the generated sync stubs,
exactly as a backend service would call it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc

from coordd.app import App
from coordd.config import Settings, load_settings
from coordd.core.clock import utcnow
from coordd.core.principal import parse_roles
from coordd.domain import auth
from coordd.runtime import Runtime
from coordd_client.v1 import auth_pb2, auth_pb2_grpc, status_pb2_grpc

T = TypeVar("T")

FAST_TEST_SETTINGS: dict[str, Any] = {
    "listen": "127.0.0.1:0",
    "argon2_memory_kib": 8,
    "argon2_time_cost": 1,
    "argon2_parallelism": 1,
    "log_level": "warning",
    "log_format": "console",
    "scheduler_lease_s": 0.6,
    "health_check_interval_s": 0.2,
    "shutdown_grace_s": 2.0,
    "db_threads": 8,
    # Tests also touch the database from their own threads, beside the daemon's pool.
    "db_pool_size": 48,
    # Webhook receivers in tests listen on 127.0.0.1; test_webhook_* turn this off again.
    "webhook_allow_private_networks": True,
}


def make_settings(data_dir: str, database_url: str = "", redis_url: str = "", **extra: Any) -> Settings:
    values = {**FAST_TEST_SETTINGS, **extra}
    return load_settings(
        None, env={}, data_dir=data_dir, database_url=database_url, redis_url=redis_url, **values
    )


class Clock:
    """A controllable clock: tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


class ServerHandle:
    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="coordd-test-loop", daemon=True)
        self.thread.start()
        self.app = App(settings, clock)
        try:
            self.port = self.call(self.app.start())
        except BaseException:
            self._stop_loop()
            raise
        self.target = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.target)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.status = status_pb2_grpc.StatusServiceStub(self.channel)
        self._stopped = False

    @property
    def rt(self) -> Runtime:
        assert self.app.rt is not None
        return self.app.rt

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            self._dump_stacks()
            raise

    def _dump_stacks(self) -> None:
        """A hang is diagnosed from its stacks: every thread, and every task on the loop."""
        import faulthandler
        import sys

        print("\n=== coordd test server hung; thread stacks ===", file=sys.stderr)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        print("=== asyncio tasks ===", file=sys.stderr)
        for task in asyncio.all_tasks(self.loop):
            task.print_stack(file=sys.stderr)

    def stop(self, grace: float = 0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.channel.close()
        try:
            self.call(self.app.stop(grace))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # -- principals ----------------------------------------------------------------------

    def make_user(self, *roles: str, email: str | None = None) -> tuple[str, str]:
        """Creates a user with any roles directly through the domain; returns (user id, token)."""
        import uuid

        user = auth.create_user(
            self.rt,
            email or f"u{uuid.uuid4().hex[:10]}@example.com",
            "correct horse battery",
            "",
            list(roles) or ["participant"],
            self_service=False,
        )
        token, _ = self.rt.tokens.issue(user.id, sorted(parse_roles(user.roles)), datetime.now(UTC))
        return user.id, token

    def sign_up(self, email: str | None = None, **fields: Any) -> auth_pb2.SignUpResponse:
        import uuid

        request = auth_pb2.SignUpRequest(
            email=email or f"s{uuid.uuid4().hex[:10]}@example.com", password="correct horse battery", **fields
        )
        return self.auth.SignUp(request)


def bearer(token: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"), *extra.items())
