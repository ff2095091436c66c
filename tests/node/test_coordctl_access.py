"""coordctl api-key (scoped keys), project membership and node rotate-key, run in-process
against a test server."""

from __future__ import annotations

import json

import grpc

from coordd_client.cli import main
from coordd_client.v1 import auth_pb2
from tests.helpers import rpc_error
from tests.node.helpers import Fleet
from tests.support.server import bearer


def _run(server, token, capsys, *args):
    code = main(["--target", server.target, "--token", token, "--json", *args])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def test_coordctl_creates_lists_and_revokes_a_scoped_api_key(server, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    _, token = server.make_user("participant")
    code, body = _run(
        server, token, capsys, "api-key", "create", "--name", "ci", "--scope", "coordd.v1.JobService"
    )
    assert code == 0 and body["api_key"]["scopes"] == ["coordd.v1.JobService"]
    denied = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        server.auth.WhoAmI,
        auth_pb2.WhoAmIRequest(),
        metadata=bearer(body["secret"]),
    )
    assert denied.reason == "CREDENTIAL_SCOPE"
    code, listed = _run(server, token, capsys, "api-key", "list")
    assert code == 0 and [k["scopes"] for k in listed["api_keys"]] == [["coordd.v1.JobService"]]
    code, revoked = _run(server, token, capsys, "api-key", "revoke", body["api_key"]["name"])
    assert code == 0 and revoked["api_key"]["revoke_time"]
    code, _ = _run(server, token, capsys, "api-key", "create", "--name", "bad", "--scope", "nope.Service")
    assert code != 0


def test_coordctl_invites_accepts_lists_removes_members_and_rotates_a_node_key(
    server, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    owner, member = Fleet(server), Fleet(server)
    project = owner.project()
    code, invited = _run(
        server,
        owner.token,
        capsys,
        "project",
        "invite",
        "--project",
        project.name,
        "--user",
        f"users/{member.owner_id}",
    )
    assert code == 0 and invited["member"]["state"] == "STATE_INVITED"
    name = invited["member"]["name"]
    code, accepted = _run(server, member.token, capsys, "project", "accept", name)
    assert code == 0 and accepted["member"]["state"] == "STATE_ACTIVE"
    code, listed = _run(server, owner.token, capsys, "project", "members", "--project", project.name)
    assert code == 0 and [m["name"] for m in listed["members"]] == [name]
    node, key = member.node(project, "m")
    code, rotated = _run(server, member.token, capsys, "node", "rotate-key", node.name, "--overlap", "0")
    assert code == 0 and rotated["api_key_secret"].startswith("ck_")
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, member.beat, key)
    assert member.beat(rotated["api_key_secret"]).node == node.name
    code, removed = _run(server, owner.token, capsys, "project", "remove-member", name)
    assert code == 0 and removed["decommissioned_nodes"] == [node.name]
