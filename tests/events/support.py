"""Two replicas on one PostgreSQL database, a WatchEvents reader, and a private redis-server."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import redis

from coordd_client.v1 import status_pb2, status_pb2_grpc
from tests.support.server import ServerHandle, bearer, make_settings

# Streams would refresh only after this long: anything seen sooner came over the bus.
REFRESH_NEVER_S = 300.0
# How long a cross-replica event may take in a test on a loaded machine (the budget is ~50 ms).
ARRIVES_WITHIN_S = 10.0
JWT_SECRET = "x" * 40


def wait_for(predicate: Callable[[], Any], timeout: float = ARRIVES_WITHIN_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def replica(data_dir: Path, database_url: str, redis_url: str = "", **extra: Any) -> ServerHandle:
    """Replicas share the data dir (keys) and the JWT secret, as the operations guide asks."""
    extra.setdefault("jwt_secret", JWT_SECRET)
    return ServerHandle(make_settings(str(data_dir), database_url, redis_url, **extra))


class EventReader:
    """Reads a WatchEvents stream on a thread; `subjects` is what arrived, in order."""

    def __init__(self, server: ServerHandle, token: str, prefix: str = "auth.user.") -> None:
        self.channel = grpc.insecure_channel(server.target)
        self.events: list[status_pb2.Event] = []
        self.ended: grpc.RpcError | None = None
        self._stream = status_pb2_grpc.StatusServiceStub(self.channel).WatchEvents(
            status_pb2.WatchEventsRequest(type_prefix=prefix), metadata=bearer(token)
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self._server = server
        self._subscribed(server)

    def _read(self) -> None:
        try:
            for message in self._stream:
                self.events.append(message.event)
        except grpc.RpcError as exc:
            self.ended = exc

    def _subscribed(self, server: ServerHandle) -> None:
        """Headers come before the servicer subscribes: a local sign-up seen means subscribed."""
        for _ in range(20):
            name = server.sign_up().user.name
            if wait_for(lambda name=name: name in self.subjects, timeout=1):
                return
        raise AssertionError("the WatchEvents stream never saw a local event")

    @property
    def subjects(self) -> list[str]:
        return [e.subject for e in self.events]

    def sees(self, subject: str, timeout: float = ARRIVES_WITHIN_S) -> bool:
        return wait_for(lambda: subject in self.subjects, timeout)

    def close(self) -> None:
        self._stream.cancel()
        self.channel.close()
        self._thread.join(5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own on a free port, stopped and started at will."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.pidfile = workdir / f"redis-{self.port}.pid"
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.pid = 0

    def start(self) -> None:
        subprocess.run(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--dir",
                str(self.workdir),
                "--pidfile",
                str(self.pidfile),
            ],
            check=True,
            capture_output=True,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            assert wait_for(lambda: _pings(client), 10), "redis-server did not start"
        finally:
            client.close()
        assert wait_for(self.pidfile.exists, 5)
        self.pid = int(self.pidfile.read_text().strip())

    def stop(self) -> None:
        if not self.pid:
            return
        pid, self.pid = self.pid, 0
        os.kill(pid, 9)
        assert wait_for(lambda: not _alive(pid), 10), "redis-server did not stop"
        self.pidfile.unlink(missing_ok=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of a daemonized server is reaped by init; /proc tells it apart.
    try:
        return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0
    except FileNotFoundError:
        return False
