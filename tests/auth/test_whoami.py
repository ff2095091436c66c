"""WhoAmI answers from the replica's memory after a user's first call, as their access stands now."""

from __future__ import annotations

import grpc

from coordd_client.v1 import auth_pb2, common_pb2
from tests.helpers import rpc_error
from tests.support.server import bearer

PASSWORD = "correct horse battery"


def _whoami(server, credential):
    return server.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(credential))


def test_whoami_shows_roles_an_admin_set_after_the_user_was_first_seen(server):
    _, admin = server.make_user("admin")
    user = server.sign_up(email="roles@example.com")
    first = _whoami(server, user.access_token)
    assert list(first.user.roles) == [common_pb2.ROLE_PARTICIPANT]
    server.auth.SetUserRoles(
        auth_pb2.SetUserRolesRequest(
            name=user.user.name, roles=[common_pb2.ROLE_PARTICIPANT, common_pb2.ROLE_PROVIDER]
        ),
        metadata=bearer(admin),
    )
    fresh = server.auth.Login(auth_pb2.LoginRequest(email="roles@example.com", password=PASSWORD))
    again = _whoami(server, fresh.access_token)
    assert set(again.user.roles) == {common_pb2.ROLE_PARTICIPANT, common_pb2.ROLE_PROVIDER}
    assert set(again.effective_roles) == {common_pb2.ROLE_PARTICIPANT, common_pb2.ROLE_PROVIDER}
    assert again.user.email == "roles@example.com"
    assert again.user.create_time == first.user.create_time


def test_whoami_of_a_user_disabled_after_being_seen_is_refused_and_shown_enabled_again(server):
    _, admin = server.make_user("admin")
    user = server.sign_up(email="gone@example.com")
    key = server.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name="k"), metadata=bearer(user.access_token)
    )
    assert not _whoami(server, key.secret).user.disabled
    server.auth.DisableUser(auth_pb2.DisableUserRequest(name=user.user.name), metadata=bearer(admin))
    failure = rpc_error(grpc.StatusCode.UNAUTHENTICATED, _whoami, server, key.secret)
    assert failure.reason == "ACCOUNT_DISABLED"
    server.auth.EnableUser(auth_pb2.EnableUserRequest(name=user.user.name), metadata=bearer(admin))
    shown = _whoami(server, key.secret)
    assert not shown.user.disabled
    assert shown.credential_kind == "api_key"
    assert shown.api_key == key.api_key.name


def test_whoami_answers_each_caller_with_their_own_account_when_calls_alternate(server):
    first = server.sign_up(email="first@example.com")
    second = server.sign_up(email="second@example.com")
    for _ in range(3):
        assert _whoami(server, first.access_token).user.email == "first@example.com"
        assert _whoami(server, second.access_token).user.email == "second@example.com"
    key = server.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name="k"), metadata=bearer(first.access_token)
    )
    by_key = _whoami(server, key.secret)
    by_token = _whoami(server, first.access_token)
    assert (by_key.credential_kind, by_key.api_key) == ("api_key", key.api_key.name)
    assert by_token.api_key == "" and by_token.credential_kind != "api_key"
