"""coordctl's account-control and audit commands, run in-process against a test server."""

from __future__ import annotations

import json

import grpc

from coordd_client.cli import main
from coordd_client.v1 import auth_pb2
from tests.helpers import rpc_error
from tests.support.server import bearer


def _run(server, token, capsys, *args):
    code = main(["--target", server.target, "--token", token, "--json", *args])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_admin_disables_enables_and_reads_the_audit_trail(server, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    _, admin = server.make_user("admin")
    user = server.sign_up()
    code, body = _run(server, admin, capsys, "user", "disable", user.user.name.split("/")[1])
    assert code == 0 and body["disabled"] is True
    rpc_error(
        grpc.StatusCode.UNAUTHENTICATED,
        server.auth.WhoAmI,
        auth_pb2.WhoAmIRequest(),
        metadata=bearer(user.access_token),
    )
    code, body = _run(server, admin, capsys, "user", "enable", user.user.name)
    assert code == 0 and "disabled" not in body
    code, body = _run(server, admin, capsys, "user", "set-roles", user.user.name, "--role", "organizer")
    assert code == 0 and body["roles"] == ["ROLE_ORGANIZER"]
    code, body = _run(server, admin, capsys, "audit", "--filter", f'target = "{user.user.name}"')
    assert code == 0
    assert [e["action"] for e in body["audit_events"]] == [
        "auth.user.set_roles",
        "auth.user.enable",
        "auth.user.disable",
    ]


def test_a_user_changes_their_password(server, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    user = server.sign_up(email="cli-passwd@example.com")
    monkeypatch.setenv("COORDCTL_PASSWORD", "correct horse battery")
    monkeypatch.setenv("COORDCTL_NEW_PASSWORD", "a newer horse battery")
    code, body = _run(server, user.access_token, capsys, "passwd")
    assert code == 0 and body["expire_time"]
    assert server.auth.Login(
        auth_pb2.LoginRequest(email="cli-passwd@example.com", password="a newer horse battery")
    ).access_token
    code, body = _run(server, user.access_token, capsys, "user", "revoke-tokens", user.user.name)
    assert code == 1 and body["error"]["reason"] == "TOKEN_REVOKED"
