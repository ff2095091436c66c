"""TLS and mutual TLS on the gRPC port: the daemon, the client package and coordctl.

TLS does not depend on the database, so these run on the embedded SQLite store only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import coordd_client
from coordd.app import StartupError
from coordd_client import aio
from coordd_client.errors import Unavailable
from coordd_client.v1 import auth_pb2
from tests.security.certs import CertificateAuthority, Issued
from tests.support.process import COORDCTL, Daemon
from tests.support.server import ServerHandle, make_settings


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


@pytest.fixture
def server_cert(ca: CertificateAuthority) -> Issued:
    return ca.issue("coordd", server=True, stem="server")


def _serve(tmp_path: Path, **tls: str) -> ServerHandle:
    return ServerHandle(make_settings(str(tmp_path / "data"), scheduler_enabled=False, **tls))


@pytest.fixture
def tls_server(tmp_path: Path, server_cert: Issued) -> Iterator[ServerHandle]:
    handle = _serve(tmp_path, tls_cert_file=str(server_cert.cert), tls_key_file=str(server_cert.key))
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def mtls_server(tmp_path: Path, ca: CertificateAuthority, server_cert: Issued) -> Iterator[ServerHandle]:
    handle = _serve(
        tmp_path,
        tls_cert_file=str(server_cert.cert),
        tls_key_file=str(server_cert.key),
        tls_client_ca_file=str(ca.path),
    )
    try:
        yield handle
    finally:
        handle.stop()


def _health(channel: grpc.Channel) -> int:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return int(reply.status)


def _secure_health(target: str, ca: bytes, key: bytes | None = None, chain: bytes | None = None) -> int:
    with grpc.secure_channel(target, grpc.ssl_channel_credentials(ca, key, chain)) as channel:
        return _health(channel)


def _refused(target: str, ca: bytes, key: bytes | None = None, chain: bytes | None = None) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _secure_health(target, ca, key, chain)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_client_that_trusts_the_ca_calls_over_tls(tls_server: ServerHandle, ca: CertificateAuthority) -> None:
    _, token = tls_server.make_user("participant")
    with coordd_client.connect(tls_server.target, token=token, ca_file=str(ca.path), retries=0) as client:
        assert client.auth.WhoAmI(auth_pb2.WhoAmIRequest()).user.name.startswith("users/")


def test_the_async_client_calls_over_tls(tls_server: ServerHandle, ca: CertificateAuthority) -> None:
    import asyncio

    _, token = tls_server.make_user("participant")

    async def who() -> str:
        async with aio.connect(tls_server.target, token=token, ca_file=str(ca.path), retries=0) as client:
            return str((await client.auth.WhoAmI(auth_pb2.WhoAmIRequest())).user.name)

    assert asyncio.run(who()).startswith("users/")


def test_plaintext_client_cannot_call_a_tls_port(tls_server: ServerHandle) -> None:
    with grpc.insecure_channel(tls_server.target) as channel, pytest.raises(grpc.RpcError) as info:
        _health(channel)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


def test_client_refuses_a_server_whose_ca_it_does_not_trust(tls_server: ServerHandle, tmp_path: Path) -> None:
    other = CertificateAuthority(tmp_path / "other", "another CA")
    _refused(tls_server.target, other.pem)


def test_server_name_override_checks_the_certificate_against_that_name(
    tls_server: ServerHandle, ca: CertificateAuthority
) -> None:
    _, token = tls_server.make_user("participant")
    options = {"token": token, "ca_file": str(ca.path), "retries": 0, "timeout": 10}
    with coordd_client.connect(tls_server.target, server_name="localhost", **options) as client:
        client.auth.WhoAmI(auth_pb2.WhoAmIRequest())
    with (
        coordd_client.connect(tls_server.target, server_name="not-coordd.example", **options) as client,
        pytest.raises(Unavailable),
    ):
        client.auth.WhoAmI(auth_pb2.WhoAmIRequest())


def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_server: ServerHandle, ca: CertificateAuthority
) -> None:
    _refused(mtls_server.target, ca.pem)


def test_mutual_tls_refuses_a_client_certificate_from_another_ca(
    mtls_server: ServerHandle, ca: CertificateAuthority, tmp_path: Path
) -> None:
    stranger = CertificateAuthority(tmp_path / "other", "another CA").issue("stranger", server=False)
    _refused(mtls_server.target, ca.pem, stranger.key.read_bytes(), stranger.cert.read_bytes())


def test_mutual_tls_serves_a_client_with_a_certificate_from_the_ca(
    mtls_server: ServerHandle, ca: CertificateAuthority
) -> None:
    worker = ca.issue("worker-1", server=False)
    _, token = mtls_server.make_user("participant")
    with coordd_client.connect(
        mtls_server.target,
        token=token,
        ca_file=str(ca.path),
        cert_file=str(worker.cert),
        key_file=str(worker.key),
        retries=0,
    ) as client:
        assert client.auth.WhoAmI(auth_pb2.WhoAmIRequest()).user.name.startswith("users/")


def test_reload_serves_the_new_certificate_to_new_connections(
    tls_server: ServerHandle, ca: CertificateAuthority, server_cert: Issued, tmp_path: Path
) -> None:
    assert _secure_health(tls_server.target, ca.pem) == health_pb2.HealthCheckResponse.SERVING
    rotated = CertificateAuthority(tmp_path / "rotated", "rotated CA").issue("coordd", server=True)
    server_cert.cert.write_bytes(rotated.cert.read_bytes())
    server_cert.key.write_bytes(rotated.key.read_bytes())

    assert tls_server.app.reload_tls() is True

    rotated_ca = (tmp_path / "rotated" / "rotated-CA.pem").read_bytes()
    assert _secure_health(tls_server.target, rotated_ca) == health_pb2.HealthCheckResponse.SERVING
    _refused(tls_server.target, ca.pem)


def test_a_broken_certificate_on_reload_keeps_the_current_one(
    tls_server: ServerHandle, ca: CertificateAuthority, server_cert: Issued
) -> None:
    server_cert.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")

    assert tls_server.app.reload_tls() is False

    assert _secure_health(tls_server.target, ca.pem) == health_pb2.HealthCheckResponse.SERVING


def test_start_fails_with_one_line_when_the_key_does_not_match_the_certificate(
    tmp_path: Path, ca: CertificateAuthority, server_cert: Issued
) -> None:
    other = ca.issue("other", server=True)
    with pytest.raises(StartupError, match="tls_key_file: the key does not match"):
        _serve(tmp_path, tls_cert_file=str(server_cert.cert), tls_key_file=str(other.key))


def test_start_fails_when_only_the_certificate_is_set(tmp_path: Path, server_cert: Issued) -> None:
    with pytest.raises(StartupError, match="set both"):
        _serve(tmp_path, tls_cert_file=str(server_cert.cert))


# -- the real daemon: SIGHUP and the plaintext warning -----------------------------------------


def _tls_env(cert: Issued) -> dict[str, str]:
    return {"COORDD_TLS_CERT_FILE": str(cert.cert), "COORDD_TLS_KEY_FILE": str(cert.key)}


def test_sighup_makes_the_daemon_serve_a_rotated_certificate(
    tmp_path: Path, ca: CertificateAuthority, server_cert: Issued
) -> None:
    daemon = Daemon(tmp_path / "data", env=_tls_env(server_cert)).wait_ready()
    try:
        assert _secure_health(daemon.target, ca.pem) == health_pb2.HealthCheckResponse.SERVING
        rotated_ca = CertificateAuthority(tmp_path / "rotated", "rotated CA")
        rotated = rotated_ca.issue("coordd", server=True)
        server_cert.key.write_bytes(rotated.key.read_bytes())
        server_cert.cert.write_bytes(rotated.cert.read_bytes())

        daemon.proc.send_signal(signal.SIGHUP)

        deadline = time.monotonic() + 20
        while "TLS certificate reloaded" not in daemon.log():
            assert daemon.proc.poll() is None, daemon.log()
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
        assert _secure_health(daemon.target, rotated_ca.pem) == health_pb2.HealthCheckResponse.SERVING
        _refused(daemon.target, ca.pem)
    finally:
        daemon.stop()


def test_plaintext_on_a_non_loopback_address_logs_a_loud_warning(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "data", "--listen", "0.0.0.0:0").wait_ready()
    try:
        warnings = [
            json.loads(line)
            for line in daemon.log().splitlines()
            if line.startswith("{") and "PLAINTEXT" in line
        ]
        assert warnings and warnings[0]["level"] == "warning"
        assert warnings[0]["listen"] == "0.0.0.0:0"
    finally:
        daemon.stop()


def test_plaintext_on_loopback_logs_no_warning(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "data").wait_ready()
    try:
        with grpc.insecure_channel(daemon.target) as channel:
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert "PLAINTEXT" not in daemon.log()
    finally:
        daemon.stop()


def test_coordctl_connects_with_tls_flags_and_environment(
    mtls_server: ServerHandle, ca: CertificateAuthority
) -> None:
    worker = ca.issue("coordctl", server=False)
    _, token = mtls_server.make_user("participant")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDCTL_")}
    env["XDG_CONFIG_HOME"] = str(ca.directory / "config")
    base = [COORDCTL, "--target", mtls_server.target, "--token", token, "--json"]

    def whoami(*flags: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *flags, "whoami"], capture_output=True, text=True, timeout=60, env={**env, **extra_env}
        )

    by_flags = whoami("--tls-ca", str(ca.path), "--tls-cert", str(worker.cert), "--tls-key", str(worker.key))
    assert by_flags.returncode == 0, by_flags.stderr
    assert json.loads(by_flags.stdout)["user"]["name"].startswith("users/")

    by_env = whoami(
        COORDCTL_TLS_CA=str(ca.path), COORDCTL_TLS_CERT=str(worker.cert), COORDCTL_TLS_KEY=str(worker.key)
    )
    assert by_env.returncode == 0, by_env.stderr

    without_cert = whoami("--tls-ca", str(ca.path), "--timeout", "5")
    assert without_cert.returncode != 0
    assert "UNAVAILABLE" in without_cert.stdout + without_cert.stderr
