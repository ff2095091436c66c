"""The health check reflects the database, and does not queue behind other work."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlparse

import peewee
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordd.config import load_settings
from coordd.store.db import Store
from coordd.store.probe import DatabaseProbe
from tests.support.server import ServerHandle

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FAST_PROBE = {"health_check_interval_s": 0.05, "health_check_timeout_s": 2.0, "scheduler_enabled": False}


def _status(server: ServerHandle) -> int:
    reply = health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return int(reply.status)


def _until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_health_stays_serving_while_slow_work_saturates_the_database_pool(settings_factory) -> None:
    server = ServerHandle(settings_factory(**FAST_PROBE))
    release = threading.Event()
    try:
        assert _status(server) == SERVING
        busy = [server.rt.executor.submit(release.wait) for _ in range(server.settings.db_threads * 2)]
        checks_before = server.app.health_checks

        # Every pool thread is blocked (and as much again queued): a probe that went through
        # the pool could not answer. Several probes complete, and health never flips.
        def probed_while_saturated() -> bool:
            assert _status(server) == SERVING
            return server.app.health_checks >= checks_before + 5

        _until(probed_while_saturated, "five health probes during the saturation")
        assert not any(f.done() for f in busy), "the pool stayed saturated throughout"
    finally:
        release.set()
        server.stop()


# An embedded SQLite file cannot become unreachable: this one is PostgreSQL's.
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_health_goes_not_serving_when_the_database_is_unreachable_and_recovers(
    settings_factory, backend: str
) -> None:
    settings = settings_factory(**FAST_PROBE)
    real = urlparse(settings.database_url)
    proxy = TcpProxy(real.port or 5432)
    proxied = real._replace(netloc=f"{real.username}@127.0.0.1:{proxy.port}").geturl()
    server = ServerHandle(dataclasses.replace(settings, database_url=proxied))
    try:
        assert _status(server) == SERVING
        proxy.close()  # the database is gone: open connections drop, new ones are refused
        _until(lambda: _status(server) == NOT_SERVING, "NOT_SERVING")

        proxy = TcpProxy(real.port or 5432, port=proxy.port)
        _until(lambda: _status(server) == SERVING, "SERVING again")
    finally:
        proxy.close()
        server.stop()


def test_the_probe_fails_on_a_closed_port(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    settings = load_settings(
        None, env={}, data_dir=str(tmp_path), database_url=f"postgresql://postgres@127.0.0.1:{closed_port}/x"
    )
    store = Store(settings)
    try:
        with pytest.raises(peewee.OperationalError):
            DatabaseProbe(store).check()
    finally:
        store.close()


class TcpProxy:
    """Forwards 127.0.0.1:port to PostgreSQL; close() makes the database unreachable."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(64)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
