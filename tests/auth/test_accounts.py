"""Account control: disable/enable, roles, password reset and change, revoking tokens."""

from __future__ import annotations

import grpc

from coordd_client.v1 import auth_pb2, common_pb2
from tests.helpers import rpc_error
from tests.support.server import bearer

PASSWORD = "correct horse battery"


def _login(server, email, password=PASSWORD):
    return server.auth.Login(auth_pb2.LoginRequest(email=email, password=password))


def _whoami(server, credential):
    return server.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(credential))


def test_a_disabled_users_tokens_and_api_keys_stop_working_at_once(server):
    _, admin = server.make_user("admin")
    user = server.sign_up(email="dis@example.com")
    key = server.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name="k"), metadata=bearer(user.access_token)
    )
    assert _whoami(server, key.secret).user.name == user.user.name  # cached from now on
    reply = server.auth.DisableUser(auth_pb2.DisableUserRequest(name=user.user.name), metadata=bearer(admin))
    assert reply.user.disabled
    for credential in (user.access_token, key.secret):
        failure = rpc_error(grpc.StatusCode.UNAUTHENTICATED, _whoami, server, credential)
        assert failure.reason == "ACCOUNT_DISABLED"
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, _login, server, "dis@example.com")
    enabled = server.auth.EnableUser(auth_pb2.EnableUserRequest(name=user.user.name), metadata=bearer(admin))
    assert not enabled.user.disabled
    assert _whoami(server, user.access_token).user.name == user.user.name
    assert _whoami(server, key.secret).user.name == user.user.name
    assert _login(server, "dis@example.com").access_token


def test_account_control_is_for_admins_and_not_against_ones_own_account(server):
    admin_id, admin = server.make_user("admin")
    user = server.sign_up()
    for call, request in (
        (server.auth.DisableUser, auth_pb2.DisableUserRequest(name=f"users/{admin_id}")),
        (server.auth.EnableUser, auth_pb2.EnableUserRequest(name=f"users/{admin_id}")),
        (
            server.auth.SetUserRoles,
            auth_pb2.SetUserRolesRequest(name=f"users/{admin_id}", roles=[common_pb2.ROLE_ADMIN]),
        ),
        (
            server.auth.ResetUserPassword,
            auth_pb2.ResetUserPasswordRequest(name=f"users/{admin_id}", new_password="x" * 12),
        ),
    ):
        failure = rpc_error(
            grpc.StatusCode.PERMISSION_DENIED, call, request, metadata=bearer(user.access_token)
        )
        assert failure.reason == "ROLE_REQUIRED"
    own = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        server.auth.DisableUser,
        auth_pb2.DisableUserRequest(name=f"users/{admin_id}"),
        metadata=bearer(admin),
    )
    assert own.reason == "SELF_ACCOUNT"
    demote = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        server.auth.SetUserRoles,
        auth_pb2.SetUserRolesRequest(name=f"users/{admin_id}", roles=[common_pb2.ROLE_PARTICIPANT]),
        metadata=bearer(admin),
    )
    assert demote.reason == "SELF_ACCOUNT"
    missing = rpc_error(
        grpc.StatusCode.NOT_FOUND,
        server.auth.DisableUser,
        auth_pb2.DisableUserRequest(name="users/nobody"),
        metadata=bearer(admin),
    )
    assert "users/nobody" in missing.details
    bad = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        server.auth.SetUserRoles,
        auth_pb2.SetUserRolesRequest(name=user.user.name),
        metadata=bearer(admin),
    )
    assert "roles" in bad.violations


def test_changing_roles_revokes_tokens_and_narrows_api_keys_at_once(server):
    _, admin = server.make_user("admin")
    user = server.sign_up(
        email="roles@example.com", roles=[common_pb2.ROLE_PARTICIPANT, common_pb2.ROLE_PROVIDER]
    )
    key = server.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name="k"), metadata=bearer(user.access_token)
    )
    assert set(_whoami(server, key.secret).effective_roles) == {
        common_pb2.ROLE_PARTICIPANT,
        common_pb2.ROLE_PROVIDER,
    }
    reply = server.auth.SetUserRoles(
        auth_pb2.SetUserRolesRequest(name=user.user.name, roles=[common_pb2.ROLE_PARTICIPANT]),
        metadata=bearer(admin),
    )
    assert list(reply.user.roles) == [common_pb2.ROLE_PARTICIPANT]
    failure = rpc_error(grpc.StatusCode.UNAUTHENTICATED, _whoami, server, user.access_token)
    assert failure.reason == "TOKEN_REVOKED"
    assert list(_whoami(server, key.secret).effective_roles) == [common_pb2.ROLE_PARTICIPANT]
    fresh = _login(server, "roles@example.com")
    assert list(_whoami(server, fresh.access_token).effective_roles) == [common_pb2.ROLE_PARTICIPANT]


def test_an_admin_resets_a_password_and_the_old_one_and_old_tokens_stop_working(server):
    _, admin = server.make_user("admin")
    user = server.sign_up(email="reset@example.com")
    rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        server.auth.ResetUserPassword,
        auth_pb2.ResetUserPasswordRequest(name=user.user.name, new_password="short"),
        metadata=bearer(admin),
    )
    server.auth.ResetUserPassword(
        auth_pb2.ResetUserPasswordRequest(name=user.user.name, new_password="a brand new secret"),
        metadata=bearer(admin),
    )
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, _login, server, "reset@example.com")
    assert _login(server, "reset@example.com", "a brand new secret").access_token
    assert (
        rpc_error(grpc.StatusCode.UNAUTHENTICATED, _whoami, server, user.access_token).reason
        == "TOKEN_REVOKED"
    )


def test_a_user_changes_their_own_password_with_the_current_one(server):
    user = server.sign_up(email="own@example.com")
    other = _login(server, "own@example.com")
    wrong = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        server.auth.ChangePassword,
        auth_pb2.ChangePasswordRequest(current_password="not my password", new_password="my new password!"),
        metadata=bearer(user.access_token),
    )
    assert wrong.reason == "WRONG_PASSWORD"
    assert _login(server, "own@example.com").access_token, "a wrong current password changes nothing"
    reply = server.auth.ChangePassword(
        auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password="my new password!"),
        metadata=bearer(user.access_token),
    )
    assert _whoami(server, reply.access_token).user.name == user.user.name
    for old in (user.access_token, other.access_token):
        assert rpc_error(grpc.StatusCode.UNAUTHENTICATED, _whoami, server, old).reason == "TOKEN_REVOKED"
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, _login, server, "own@example.com")
    assert _login(server, "own@example.com", "my new password!").access_token


def test_revoking_all_tokens_of_a_user(server):
    _, admin = server.make_user("admin")
    alice = server.sign_up(email="alice@example.com")
    bob = server.sign_up(email="bob@example.com")
    hidden = rpc_error(
        grpc.StatusCode.NOT_FOUND,
        server.auth.RevokeUserTokens,
        auth_pb2.RevokeUserTokensRequest(name=alice.user.name),
        metadata=bearer(bob.access_token),
    )
    assert alice.user.name in hidden.details
    assert _whoami(server, alice.access_token).user.name == alice.user.name
    key = server.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name="k"), metadata=bearer(alice.access_token)
    )
    server.auth.RevokeUserTokens(
        auth_pb2.RevokeUserTokensRequest(name=alice.user.name), metadata=bearer(admin)
    )
    assert (
        rpc_error(grpc.StatusCode.UNAUTHENTICATED, _whoami, server, alice.access_token).reason
        == "TOKEN_REVOKED"
    )
    assert _whoami(server, key.secret).user.name == alice.user.name, "API keys are revoked one by one"
    fresh = _login(server, "alice@example.com")
    assert _whoami(server, fresh.access_token).user.name == alice.user.name
    # Log out everywhere, oneself.
    server.auth.RevokeUserTokens(
        auth_pb2.RevokeUserTokensRequest(name=bob.user.name), metadata=bearer(bob.access_token)
    )
    assert (
        rpc_error(grpc.StatusCode.UNAUTHENTICATED, _whoami, server, bob.access_token).reason
        == "TOKEN_REVOKED"
    )


def test_a_fresh_replica_knows_of_earlier_changes(server, settings_factory, clock):
    """What another process changed is read from the database on the first call."""
    from tests.support.server import ServerHandle

    _, admin = server.make_user("admin")
    user = server.sign_up(email="replica@example.com")
    server.auth.DisableUser(auth_pb2.DisableUserRequest(name=user.user.name), metadata=bearer(admin))
    server.stop()
    again = ServerHandle(settings_factory(), clock)
    try:
        failure = rpc_error(grpc.StatusCode.UNAUTHENTICATED, _whoami, again, user.access_token)
        assert failure.reason == "ACCOUNT_DISABLED"
    finally:
        again.stop()
