"""coordd_client.connect: stubs as attributes, credentials, typed errors, safe retries."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

import coordd_client
from coordd.store.models import IdempotencyRecord
from coordd_client import aio, errors
from coordd_client.v1 import auth_pb2, status_pb2
from tests.support.server import ServerHandle


def test_connect_exposes_every_service_and_attaches_the_credential(server):
    _, token = server.make_user("participant")
    with coordd_client.connect(server.target, token=token) as client:
        assert {"auth", "status"} <= set(client.services)
        me = client.auth.WhoAmI(auth_pb2.WhoAmIRequest())
        assert me.credential_kind == "token"
        assert client.status.GetStatus(status_pb2.GetStatusRequest()).version


def test_errors_are_typed_with_details(server):
    with coordd_client.connect(server.target) as client:
        with pytest.raises(errors.InvalidArgument) as info:
            client.auth.SignUp(auth_pb2.SignUpRequest(email="nope", password="x"))
        assert set(info.value.violations) == {"email", "password"}
        assert info.value.request_id
        with pytest.raises(errors.Unauthenticated) as denied:
            client.auth.WhoAmI(auth_pb2.WhoAmIRequest())
        assert denied.value.reason == "CREDENTIAL_MISSING"
        assert isinstance(denied.value, coordd_client.CoorddError)


def test_mutating_calls_carry_an_idempotency_key(server):
    _, token = server.make_user("participant")
    with coordd_client.connect(server.target, token=token) as client:
        client.auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(display_name="k"))
        client.auth.WhoAmI(auth_pb2.WhoAmIRequest())
    records = list(IdempotencyRecord.select())
    assert [r.method for r in records] == ["/coordd.v1.AuthService/CreateApiKey"]


def test_unavailable_is_retried_until_the_server_is_up(settings_factory, clock):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started: list[ServerHandle] = []

    def start_later() -> None:
        time.sleep(0.4)
        started.append(ServerHandle(settings_factory(listen=f"127.0.0.1:{port}"), clock))

    thread = threading.Thread(target=start_later)
    thread.start()
    try:
        with coordd_client.connect(f"127.0.0.1:{port}", retries=8) as client:
            reply = client.auth.SignUp(
                auth_pb2.SignUpRequest(email="late@example.com", password="correct horse battery")
            )
        assert reply.user.email == "late@example.com"
    finally:
        thread.join()
        for handle in started:
            handle.stop()


def test_async_client(server):
    _, token = server.make_user("participant")

    async def run() -> None:
        async with aio.connect(server.target, token=token) as client:
            me = await client.auth.WhoAmI(auth_pb2.WhoAmIRequest())
            assert me.credential_kind == "token"
            await client.auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(display_name="a"))
        async with aio.connect(server.target) as anonymous:
            with pytest.raises(errors.Unauthenticated):
                await anonymous.auth.WhoAmI(auth_pb2.WhoAmIRequest())

    asyncio.run(run())
    assert IdempotencyRecord.select().count() == 1


def test_a_callers_channel_option_replaces_the_default_instead_of_being_ignored():
    """gRPC honours the first of two equal keys: the node agent's 500 ms reconnect cap was
    silently beaten by the package's own 5 s default until the defaults were merged."""
    from coordd_client.client import KEEPALIVE_OPTIONS, channel_options

    assert dict(KEEPALIVE_OPTIONS)["grpc.max_reconnect_backoff_ms"] == 5_000
    merged = channel_options([], [("grpc.max_reconnect_backoff_ms", 500)])
    keys = [key for key, _ in merged]
    assert keys.count("grpc.max_reconnect_backoff_ms") == 1
    assert dict(merged)["grpc.max_reconnect_backoff_ms"] == 500
