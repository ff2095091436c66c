"""Two real `coordd serve` replicas on one PostgreSQL database: the scheduler leader is
SIGSTOPped (a pause: its connections stay open) and later SIGKILLed, or its database
connections hang (behind a forwarder that stops moving bytes); the other replica takes over
each time, and the one that comes back stands down. GetStatus on every replica names the
current leader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest

from coordd_client.v1 import auth_pb2, auth_pb2_grpc, status_pb2, status_pb2_grpc
from tests.scheduler.freezer import FreezingProxy
from tests.support import infra
from tests.support.process import FAST_KDF_ENV, Daemon

LEASE_S = 2.0
SECRET = "failover-test-secret-0123456789abcdef"


@pytest.fixture
def database():
    infra.require("postgresql")
    with infra.fresh_pg_database() as url:
        yield url


class Replica:
    def __init__(self, tmp: Path, name: str, url: str) -> None:
        self.name = name
        env = {
            "COORDD_JWT_SECRET": SECRET,
            "COORDD_SCHEDULER_LEASE_S": str(LEASE_S),
            "COORDD_LOG_LEVEL": "info",
        }
        (tmp / name).mkdir()
        self.daemon = Daemon(tmp / name / "data", "--database-url", url, env=env)

    def ready(self) -> Replica:
        self.daemon.wait_ready(60)
        self.channel = grpc.insecure_channel(self.daemon.target)
        self.status_stub = status_pb2_grpc.StatusServiceStub(self.channel)
        return self

    def status(self, token: str) -> status_pb2.GetStatusResponse:
        """GetStatus; an INTERNAL (an unexpected error: never right, even while the database
        hangs) fails the test at once, with what the daemon logged about it."""
        try:
            return self.status_stub.GetStatus(
                status_pb2.GetStatusRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=5
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INTERNAL:
                raise AssertionError(f"replica {self.name}: {self.daemon.unexpected_errors()}") from exc
            raise

    def signal(self, sig: signal.Signals) -> None:
        self.daemon.proc.send_signal(sig)

    def close(self) -> None:
        if self.daemon.proc.poll() is None:
            self.signal(signal.SIGCONT)
        self.daemon.stop()
        if hasattr(self, "channel"):
            self.channel.close()


def _admin_token(tmp: Path, url: str, replica: Replica) -> str:
    """An admin (GetStatus shows the scheduler to admins), created as an operator does."""
    email, password = "ops@example.com", "correct horse battery"
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordd",
            "admin",
            "create-user",
            "--data-dir",
            str(tmp / "admin"),
            "--database-url",
            url,
            "--email",
            email,
            "--role",
            "admin",
            "--password",
            password,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **FAST_KDF_ENV},
    )
    assert created.returncode == 0, created.stderr
    login = auth_pb2_grpc.AuthServiceStub(replica.channel).Login(
        auth_pb2.LoginRequest(email=email, password=password), timeout=10
    )
    return str(login.access_token)


def _wait_for(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except grpc.RpcError:
            pass
        time.sleep(0.02)
    return False


def _leads(replica: Replica, token: str) -> bool:
    reply = replica.status(token)
    return reply.scheduler.is_leader and reply.scheduler.leader_instance_id == reply.instance_id


def _task_runs(url: str) -> dict[str, tuple[int, str]]:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT name, run_count, last_instance_id FROM scheduler_task_run")
            return {name: (count, holder) for name, count, holder in cur.fetchall()}
    finally:
        conn.close()


def test_a_paused_leader_is_replaced_and_stands_down_when_resumed_then_a_killed_one_is_replaced(
    tmp_path, database
):
    a = Replica(tmp_path, "a", database)
    b = Replica(tmp_path, "b", database)
    replicas = [a, b]
    try:
        for replica in replicas:
            replica.ready()
        token = _admin_token(tmp_path, database, a)
        assert _wait_for(lambda: sum(_leads(r, token) for r in replicas) == 1)
        first = next(r for r in replicas if _leads(r, token))
        other = b if first is a else a
        first_id = first.status(token).instance_id
        assert other.status(token).scheduler.leader_instance_id == first_id

        first.signal(signal.SIGSTOP)
        paused = time.monotonic()
        assert _wait_for(lambda: _leads(other, token))
        sigstop_failover = time.monotonic() - paused
        other_id = other.status(token).instance_id

        first.signal(signal.SIGCONT)
        assert _wait_for(lambda: first.status(token).scheduler.leader_instance_id == other_id)
        assert not first.status(token).scheduler.is_leader
        # From now on every task run recorded is the new leader's: the resumed one runs nothing.
        before = _task_runs(database)
        time.sleep(LEASE_S * 2)
        after = _task_runs(database)
        changed = {name for name, run in after.items() if run != before.get(name)}
        assert changed, "the new leader kept running its tasks"
        assert {after[name][1] for name in changed} == {other_id}
        assert _leads(other, token) and not first.status(token).scheduler.is_leader

        other.signal(signal.SIGKILL)
        killed = time.monotonic()
        assert _wait_for(lambda: _leads(first, token))
        sigkill_failover = time.monotonic() - killed
        assert first.status(token).scheduler.leader_instance_id == first_id
        print(
            json.dumps(
                {
                    "lease_s": LEASE_S,
                    "failover_after_sigstop_s": round(sigstop_failover, 2),
                    "failover_after_sigkill_s": round(sigkill_failover, 2),
                }
            )
        )
    finally:
        for replica in replicas:
            replica.close()


def test_a_leader_whose_database_connection_hangs_is_replaced_and_stands_down_when_it_returns(
    tmp_path, database
):
    parsed = urlparse(database)
    proxy = FreezingProxy((parsed.hostname or "127.0.0.1", parsed.port or 5432))
    a = Replica(tmp_path, "a", parsed._replace(netloc=f"{parsed.username}@127.0.0.1:{proxy.port}").geturl())
    replicas = [a]
    try:
        a.ready()
        token = _admin_token(tmp_path, database, a)
        assert _wait_for(lambda: _leads(a, token))
        a_id = a.status(token).instance_id
        b = Replica(tmp_path, "b", database)
        replicas.append(b)
        b.ready()
        assert _wait_for(lambda: b.status(token).scheduler.leader_instance_id == a_id)
        epoch = _lease(database)[1]

        proxy.freeze()  # every connection of a hangs; none fails
        frozen = time.monotonic()
        assert _wait_for(lambda: _leads(b, token))
        hung_failover = time.monotonic() - frozen
        b_id = b.status(token).instance_id
        assert _lease(database) == (b_id, epoch + 1)

        proxy.thaw()
        assert _wait_for(lambda: a.status(token).scheduler.leader_instance_id == b_id)
        assert not a.status(token).scheduler.is_leader
        # What a had in flight when it hung was refused; it runs nothing now.
        before = _task_runs(database)
        time.sleep(LEASE_S * 2)
        after = _task_runs(database)
        changed = {name for name, run in after.items() if run != before.get(name)}
        assert changed and {after[name][1] for name in changed} == {b_id}
        assert _lease(database) == (b_id, epoch + 1)
        print(json.dumps({"lease_s": LEASE_S, "failover_after_connection_hang_s": round(hung_failover, 2)}))
    finally:
        proxy.thaw()
        for replica in replicas:
            replica.close()
        proxy.close()


def _lease(url: str) -> tuple[str, int]:
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT instance_id, epoch FROM scheduler_leader WHERE name = 'scheduler'")
            holder, epoch = cur.fetchone()
            return str(holder), int(epoch)
    finally:
        conn.close()
