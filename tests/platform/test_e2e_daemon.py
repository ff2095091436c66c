"""A real `coordd serve` process driven as operators drive it: grpcurl, signals, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import grpc
import pytest

from coordd_client.v1 import status_pb2, status_pb2_grpc
from tests.support.process import Daemon, grpcurl

pytestmark = pytest.mark.e2e


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path / "data").wait_ready()
    try:
        yield d
    finally:
        d.stop()


def test_grpcurl_lists_describes_checks_health_and_signs_up(daemon):
    listed = grpcurl(daemon.target, "list")
    assert listed.returncode == 0, listed.stderr
    from coordd.app import services

    listed_names = set(listed.stdout.split())
    assert listed_names >= {
        "coordd.v1.AuthService",
        "coordd.v1.StatusService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert listed_names >= {service.name for service in services()}, "reflection lists every service"
    described = grpcurl(daemon.target, "describe", "coordd.v1.AuthService")
    assert "rpc SignUp" in described.stdout and "rpc WhoAmI" in described.stdout
    health = grpcurl(daemon.target, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout)["status"] == "SERVING"

    signup = grpcurl(
        daemon.target,
        "coordd.v1.AuthService/SignUp",
        data={"email": "ops@example.com", "password": "correct horse battery", "roles": ["ROLE_ORGANIZER"]},
    )
    assert signup.returncode == 0, signup.stderr
    token = json.loads(signup.stdout)["access_token"]
    me = grpcurl(daemon.target, "coordd.v1.AuthService/WhoAmI", headers={"authorization": f"Bearer {token}"})
    assert me.returncode == 0, me.stderr
    body = json.loads(me.stdout)
    assert body["user"]["email"] == "ops@example.com"
    assert body["effective_roles"] == ["ROLE_ORGANIZER"]

    denied = grpcurl(daemon.target, "coordd.v1.AuthService/WhoAmI")
    assert denied.returncode != 0
    assert "Unauthenticated" in denied.stderr
    bad = grpcurl(daemon.target, "coordd.v1.AuthService/SignUp", data={"email": "x", "password": "y"})
    assert "InvalidArgument" in bad.stderr and "field_violations" in bad.stderr


def test_a_second_daemon_on_the_same_sqlite_file_refuses_to_start(daemon):
    second = Daemon(daemon.data_dir)
    code = second.proc.wait(30)
    second.stop()
    assert code == 2
    out = second.log()
    assert "another coordd" in out and "one daemon per SQLite file" in out
    assert "Traceback" not in out


def test_a_port_in_use_is_a_one_line_error(daemon, tmp_path):
    second = Daemon(tmp_path / "other")
    second.proc.kill()
    second.stop()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordd",
            "serve",
            "--data-dir",
            str(tmp_path / "third"),
            "--listen",
            daemon.target,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert f"cannot listen on {daemon.target}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_drains_streams_and_exits_cleanly(tmp_path):
    d = Daemon(tmp_path / "data").wait_ready()
    try:
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "coordd",
                "admin",
                "create-user",
                "--data-dir",
                str(d.data_dir),
                "--email",
                "root@example.com",
                "--role",
                "admin",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "COORDD_ARGON2_MEMORY_KIB": "8",
                "COORDD_ARGON2_TIME_COST": "1",
                "COORDD_ARGON2_PARALLELISM": "1",
                "PATH": "/usr/bin:/bin",
            },
        )
        assert created.returncode == 0, created.stderr
        secret = json.loads(created.stdout)["api_key_secret"]
        channel = grpc.insecure_channel(d.target)
        stream = status_pb2_grpc.StatusServiceStub(channel).WatchEvents(
            status_pb2.WatchEventsRequest(), metadata=(("authorization", f"Bearer {secret}"),)
        )
        stream.initial_metadata()
        outcome: list = []

        def consume() -> None:
            try:
                for _ in stream:
                    pass
                outcome.append("ended")
            except grpc.RpcError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        time.sleep(0.2)
        started = time.monotonic()
        assert d.terminate() == 0
        assert time.monotonic() - started < 10
        thread.join(5)
        channel.close()
        assert isinstance(outcome[0], grpc.RpcError)
        assert outcome[0].code() == grpc.StatusCode.UNAVAILABLE
        assert outcome[0].details() == "shutting down"
        assert '"stopped"' in d.log()
    finally:
        d.stop()


def test_bad_config_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "coordd", "serve", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"COORDD_METRICS_PORT": "not-a-number", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "metrics_port" in proc.stderr


def test_migrate_command_applies_then_reports_nothing_pending(tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "coordd", "migrate", "--data-dir", str(tmp_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.strip().splitlines()[-1])["applied"]
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert json.loads(second.stdout.strip().splitlines()[-1]) == {"applied": []}
