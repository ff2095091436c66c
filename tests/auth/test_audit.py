"""The audit trail: logins with the peer, denials, admin actions; listable by admins only,
filtered and paged; never a secret in a row."""

from __future__ import annotations

import json

import grpc

from coordd.store.auth.models import AuditEvent
from coordd_client.v1 import auth_pb2, common_pb2, status_pb2
from tests.helpers import rpc_error
from tests.support.server import bearer

PASSWORD = "correct horse battery"


def _audit(server, token, filter_text="", page_size=0, page_token=""):
    return server.auth.ListAuditEvents(
        auth_pb2.ListAuditEventsRequest(filter=filter_text, page_size=page_size, page_token=page_token),
        metadata=bearer(token),
    )


def test_logins_are_audited_with_outcome_and_peer(server):
    _, admin = server.make_user("admin")
    user = server.sign_up(email="audited@example.com")
    server.auth.Login(auth_pb2.LoginRequest(email="audited@example.com", password=PASSWORD))
    rpc_error(
        grpc.StatusCode.UNAUTHENTICATED,
        server.auth.Login,
        auth_pb2.LoginRequest(email="audited@example.com", password="wrong password!"),
    )
    rpc_error(
        grpc.StatusCode.UNAUTHENTICATED,
        server.auth.Login,
        auth_pb2.LoginRequest(email="ghost@example.com", password="wrong password!"),
    )
    logins = _audit(server, admin, 'action = "auth.login"').audit_events
    assert [(e.outcome, e.actor) for e in logins] == [
        ("failed", ""),
        ("failed", user.user.name),
        ("ok", user.user.name),
    ]
    assert all(e.peer.startswith("ipv4:127.0.0.1:") for e in logins)
    assert all(e.credential == "password" for e in logins)
    assert logins[0].detail["email"] == "ghost@example.com"
    assert logins[1].detail["reason"] == "wrong password"
    failed = _audit(
        server, admin, f'action = "auth.login" AND outcome = "failed" AND actor = "{user.user.name}"'
    )
    assert [e.name for e in failed.audit_events] == [logins[1].name]


def test_denials_are_audited_by_role_and_by_rule(server):
    _, admin = server.make_user("admin")
    user_id, participant = server.make_user("participant")
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        server.status.ListEvents,
        status_pb2.ListEventsRequest(),
        metadata=bearer(participant),
    )
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        server.auth.CreateApiKey,
        auth_pb2.CreateApiKeyRequest(display_name="k", roles=[common_pb2.ROLE_ADMIN]),
        metadata=bearer(participant),
    )
    denied = _audit(server, admin, 'action = "rpc.denied"').audit_events
    assert [(e.target, e.detail["reason"]) for e in denied] == [
        ("/coordd.v1.AuthService/CreateApiKey", "ROLE_NOT_HELD"),
        ("/coordd.v1.StatusService/ListEvents", "ROLE_REQUIRED"),
    ]
    assert {(e.actor, e.outcome, e.credential) for e in denied} == {(f"users/{user_id}", "denied", "token")}


def test_the_audit_trail_is_for_admins_and_a_refusal_is_itself_audited(server):
    user_id, participant = server.make_user("participant")
    _, admin = server.make_user("admin")
    failure = rpc_error(grpc.StatusCode.PERMISSION_DENIED, _audit, server, participant)
    assert failure.reason == "ROLE_REQUIRED"
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, server.auth.ListAuditEvents, auth_pb2.ListAuditEventsRequest())
    denied = _audit(server, admin, f'actor = "users/{user_id}"').audit_events
    assert [e.target for e in denied] == ["/coordd.v1.AuthService/ListAuditEvents"]


def test_admin_actions_record_who_what_when_and_target(server):
    admin_id, admin = server.make_user("admin")
    user = server.sign_up()
    server.auth.SetUserRoles(
        auth_pb2.SetUserRolesRequest(
            name=user.user.name, roles=[common_pb2.ROLE_PARTICIPANT, common_pb2.ROLE_ORGANIZER]
        ),
        metadata=bearer(admin),
    )
    server.auth.DisableUser(auth_pb2.DisableUserRequest(name=user.user.name), metadata=bearer(admin))
    key = server.auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(display_name="ops"), metadata=bearer(admin))
    server.auth.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(name=key.api_key.name), metadata=bearer(admin))
    events = _audit(server, admin, f'actor = "users/{admin_id}"').audit_events
    assert [(e.action, e.target) for e in events] == [
        ("admin.call", key.api_key.name),
        ("admin.call", "/coordd.v1.AuthService/CreateApiKey"),
        ("auth.user.disable", user.user.name),
        ("auth.user.set_roles", user.user.name),
    ]
    assert events[0].detail["method"] == "/coordd.v1.AuthService/RevokeApiKey"
    assert list(events[3].detail["roles_before"]) == ["participant"]
    assert list(events[3].detail["roles_after"]) == ["organizer", "participant"]
    assert all(e.HasField("create_time") and e.outcome == "ok" for e in events)


def test_filter_errors_and_paging(server):
    _, admin = server.make_user("admin")
    for _ in range(5):
        rpc_error(
            grpc.StatusCode.UNAUTHENTICATED,
            server.auth.Login,
            auth_pb2.LoginRequest(email="nobody@example.com", password="wrong password!"),
        )
    seen: list[str] = []
    token = ""
    while True:
        page = _audit(server, admin, 'action = "auth.login"', page_size=2, page_token=token)
        seen.extend(e.name for e in page.audit_events)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == 5 and seen == sorted(seen, key=lambda n: int(n.split("/")[1]), reverse=True)
    first = _audit(server, admin, 'action = "auth.login"', page_size=2)
    reused = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, _audit, server, admin, 'outcome = "ok"', 2, first.next_page_token
    )
    assert reused.reason == "BAD_PAGE_TOKEN"
    for bad in (
        'colour = "red"',
        'action > "a"',
        "create_time = 2026",
        'create_time > "yesterday"',
        'action = "a" OR x',
    ):
        failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _audit, server, admin, bad)
        assert failure.reason == "BAD_FILTER" and "filter" in failure.violations
    newest = first.audit_events[0].create_time.ToJsonString()
    assert [e.name for e in _audit(server, admin, f'create_time >= "{newest}"').audit_events][:1] == [
        first.audit_events[0].name
    ]
    assert not _audit(server, admin, f'action = "auth.login" AND create_time > "{newest}"').audit_events


def test_no_secret_reaches_an_audit_row(server):
    _, admin = server.make_user("admin")
    user = server.sign_up(email="secretive@example.com")
    server.auth.Login(auth_pb2.LoginRequest(email="secretive@example.com", password=PASSWORD))
    rpc_error(
        grpc.StatusCode.UNAUTHENTICATED,
        server.auth.Login,
        auth_pb2.LoginRequest(email="secretive@example.com", password="my guessed secret"),
    )
    server.auth.ResetUserPassword(
        auth_pb2.ResetUserPasswordRequest(name=user.user.name, new_password="reset secret value"),
        metadata=bearer(admin),
    )
    key = server.auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(display_name="k"), metadata=bearer(admin))
    server.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(key.secret))
    rows = json.dumps([row.__data__ for row in AuditEvent.select()], default=str)
    assert len(AuditEvent.select()) >= 4
    for secret in (PASSWORD, "my guessed secret", "reset secret value", key.secret, user.access_token, admin):
        assert secret not in rows
    assert "$argon2" not in rows
