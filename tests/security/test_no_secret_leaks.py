"""Every secret a suite of calls creates stays where it belongs: not in a log line (also when
calls fail unexpectedly with the secret in a local variable), not in the database files."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from coordd.domain import auth, node
from coordd.domain import notify as outbox
from coordd.store.db import SQLITE_SUFFIXES
from coordd_client.v1 import auth_pb2, node_pb2, node_pb2_grpc, notification_pb2, notification_pb2_grpc
from tests.helpers import rpc_error
from tests.support.server import bearer

PASSWORD = "correct horse battery"  # ServerHandle.make_user's


class Secrets:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def add(self, what: str, value: str) -> str:
        assert value, f"{what}: the call returned no secret"
        self.values[what] = value
        return value


def _key(prefix: str) -> dict[str, str]:
    return {"idempotency-key": f"{prefix}-{uuid.uuid4().hex[:8]}"}


def _create_secrets(server, found: Secrets) -> None:
    """The normal path: every mutating call sends an idempotency key, as the client does."""
    email = f"leak-{uuid.uuid4().hex[:8]}@example.com"
    password = found.add("sign-up password", "sign-up-password-" + uuid.uuid4().hex)
    signup = server.auth.SignUp(
        auth_pb2.SignUpRequest(email=email, password=password), metadata=tuple(_key("signup").items())
    )
    found.add("sign-up access token", signup.access_token)
    login = server.auth.Login(auth_pb2.LoginRequest(email=email, password=password))
    found.add("login access token", login.access_token)
    meta = bearer(login.access_token, **_key("api-key"))
    created = server.auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(display_name="ci"), metadata=meta)
    replayed = server.auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(display_name="ci"), metadata=meta)
    assert replayed.secret == found.add("API key", created.secret)
    who = server.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(created.secret))
    assert who.credential_kind == "api_key", "a real, working secret"

    _, operator = server.make_user("node_operator")
    found.add("operator password", PASSWORD)
    nodes = node_pb2_grpc.NodeServiceStub(server.channel)
    channels = notification_pb2_grpc.NotificationServiceStub(server.channel)
    project = nodes.CreateProject(
        node_pb2.CreateProjectRequest(display_name="p", slug=f"p-{uuid.uuid4().hex[:8]}"),
        metadata=bearer(operator, **_key("project")),
    ).project
    registered = nodes.RegisterNode(
        node_pb2.RegisterNodeRequest(project=project.name, display_name="edge"),
        metadata=bearer(operator, **_key("node")),
    )
    node_key = found.add("node key", registered.api_key_secret)
    nodes.Heartbeat(node_pb2.HeartbeatRequest(), metadata=bearer(node_key))
    chosen = found.add("chosen webhook secret", "chosen-webhook-secret-" + uuid.uuid4().hex)
    channels.CreateChannel(
        notification_pb2.CreateChannelRequest(display_name="a", url="http://127.0.0.1:9/hook", secret=chosen),
        metadata=bearer(operator, **_key("channel")),
    )
    generated = channels.CreateChannel(
        notification_pb2.CreateChannelRequest(display_name="b", url="http://127.0.0.1:9/hook"),
        metadata=bearer(operator, **_key("channel")),
    )
    found.add("generated webhook secret", generated.secret)


def _force_unexpected_errors(server, found: Secrets, monkeypatch: pytest.MonkeyPatch) -> int:
    """Each call fails with an exception while a fresh secret sits in a frame's locals (and,
    for the API key, in the exception's message too). Returns how many calls failed."""
    _, user = server.make_user("participant")
    _, operator = server.make_user("node_operator")
    nodes = node_pb2_grpc.NodeServiceStub(server.channel)
    channels = notification_pb2_grpc.NotificationServiceStub(server.channel)
    project = nodes.CreateProject(
        node_pb2.CreateProjectRequest(display_name="p", slug=f"p-{uuid.uuid4().hex[:8]}"),
        metadata=bearer(operator),
    ).project
    real_create_api_key, real_register = auth.create_api_key, node.register_node
    real_channel = outbox.create_channel
    real_hash = server.rt.passwords.hash

    def create_api_key(*args: Any, **kwargs: Any) -> Any:
        _key_row, secret = real_create_api_key(*args, **kwargs)
        found.add("API key of a failed call", secret)
        raise RuntimeError(f"could not finish API key {secret}")

    def register_node(*args: Any, **kwargs: Any) -> Any:
        _node_row, secret = real_register(*args, **kwargs)
        found.add("node key of a failed call", secret)
        raise RuntimeError("the node registry fell over")

    def create_channel(*args: Any, **kwargs: Any) -> Any:
        _channel_row, secret = real_channel(*args, **kwargs)
        found.add("webhook secret of a failed call", secret)
        raise KeyError("channel index")

    def hash_password(password: str) -> str:
        password_hash = found.add("password hash of a failed sign-up", real_hash(password))
        raise OSError(f"no space left after hashing ({len(password_hash)} bytes)")

    def verify(stored: str | None, password: str) -> bool:
        raise ValueError("the verifier broke")

    monkeypatch.setattr(auth, "create_api_key", create_api_key)
    monkeypatch.setattr(node, "register_node", register_node)
    monkeypatch.setattr(outbox, "create_channel", create_channel)
    monkeypatch.setattr(server.rt.passwords, "hash", hash_password)
    monkeypatch.setattr(server.rt.passwords, "verify", verify)

    failing = [
        lambda: server.auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(display_name="x"), metadata=bearer(user, **_key("k"))
        ),
        lambda: nodes.RegisterNode(
            node_pb2.RegisterNodeRequest(project=project.name, display_name="n"),
            metadata=bearer(operator, **_key("n")),
        ),
        lambda: channels.CreateChannel(
            notification_pb2.CreateChannelRequest(display_name="c", url="http://127.0.0.1:9/hook"),
            metadata=bearer(operator, **_key("c")),
        ),
        lambda: server.auth.SignUp(
            auth_pb2.SignUpRequest(
                email=f"x-{uuid.uuid4().hex[:6]}@example.com",
                password=found.add("password of a failed sign-up", "failed-sign-up-" + uuid.uuid4().hex),
            )
        ),
        lambda: server.auth.Login(
            auth_pb2.LoginRequest(
                email="who@example.com",
                password=found.add("password of a failed login", "failed-login-" + uuid.uuid4().hex),
            )
        ),
    ]
    for call in failing:
        failure = rpc_error(grpc.StatusCode.INTERNAL, call)
        assert failure.details.startswith("internal error; request id ")
    return len(failing)


def _database_contents(server) -> list[bytes]:
    """Every table's rows (a logical dump, both backends) and, on SQLite, the raw files."""
    db = server.rt.store.db
    dump: list[bytes] = []
    for table in db.get_tables():
        for row in db.execute_sql(f'SELECT * FROM "{table}"').fetchall():
            for value in row:
                dump.append(bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode())
    if server.settings.backend == "sqlite":
        path = Path(server.settings.db_path())
        for suffix in SQLITE_SUFFIXES:
            companion = path.with_name(path.name + suffix)
            if companion.exists():
                dump.append(companion.read_bytes())
    return dump


def test_no_secret_created_by_a_suite_of_calls_reaches_the_logs_or_the_database(
    server, json_logs, monkeypatch
):
    found = Secrets()
    _create_secrets(server, found)
    failed = _force_unexpected_errors(server, found, monkeypatch)

    tracebacks = json_logs.events("rpc failed", wait_for=failed)
    assert len(tracebacks) == failed, "every unexpected error is logged, with its traceback"
    assert all(line["exception"][0]["frames"] for line in tracebacks)
    rpc_lines = json_logs.events("rpc", wait_for=16)
    logs = json_logs.text
    dump = _database_contents(server)
    assert len(found.values) == 14
    for what, secret in found.values.items():
        assert secret not in logs, f"the {what} is in the log"
        assert not any(secret.encode() in chunk for chunk in dump), f"the {what} is in the database"
    assert len(rpc_lines) == 16 and all(line["peer"] for line in rpc_lines)
