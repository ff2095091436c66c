"""AuthService: sign-up, login, credentials, roles and API keys."""

from __future__ import annotations

from datetime import timedelta

import grpc
import jwt
from google.protobuf import timestamp_pb2

from coordd.store.auth.models import ApiKey, User
from coordd_client.v1 import auth_pb2, common_pb2, status_pb2
from tests.helpers import rpc_error
from tests.support.server import bearer


def test_signup_returns_a_token_that_whoami_accepts(server):
    reply = server.sign_up(email="Ada@Example.com", display_name="Ada")
    assert reply.user.name.startswith("users/")
    assert list(reply.user.roles) == [common_pb2.ROLE_PARTICIPANT]
    me = server.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(reply.access_token))
    assert me.user.email == "Ada@Example.com"
    assert me.user.display_name == "Ada"
    assert me.credential_kind == "token"


def test_email_is_unique_case_insensitively(server):
    server.sign_up(email="grace@example.com")
    failure = rpc_error(grpc.StatusCode.ALREADY_EXISTS, server.sign_up, email="GRACE@example.COM")
    assert failure.reason == "EMAIL_TAKEN"
    assert User.select().count() == 1


def test_signup_bad_input_lists_every_violation_and_writes_nothing(server):
    request = auth_pb2.SignUpRequest(email="not-an-email", password="short", display_name=" x")
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, server.auth.SignUp, request)
    assert set(failure.violations) == {"email", "password", "display_name"}
    assert User.select().count() == 0


def test_signup_cannot_pick_elevated_roles(server):
    for role in (common_pb2.ROLE_ADMIN, common_pb2.ROLE_COORDINATOR):
        failure = rpc_error(grpc.StatusCode.PERMISSION_DENIED, server.sign_up, roles=[role])
        assert failure.reason == "ROLE_NOT_SELF_SERVICE"
    rpc_error(grpc.StatusCode.INVALID_ARGUMENT, server.sign_up, roles=[common_pb2.ROLE_UNSPECIFIED])
    assert User.select().count() == 0


def test_signup_may_pick_self_service_roles(server):
    reply = server.sign_up(roles=[common_pb2.ROLE_ORGANIZER, common_pb2.ROLE_PROVIDER])
    assert set(reply.user.roles) == {common_pb2.ROLE_ORGANIZER, common_pb2.ROLE_PROVIDER}


def test_login_with_right_password_and_wrong_password(server):
    server.sign_up(email="lin@example.com")
    ok = server.auth.Login(auth_pb2.LoginRequest(email="LIN@example.com", password="correct horse battery"))
    assert ok.access_token
    failure = rpc_error(
        grpc.StatusCode.UNAUTHENTICATED,
        server.auth.Login,
        auth_pb2.LoginRequest(email="lin@example.com", password="wrong password!"),
    )
    assert failure.reason == "BAD_CREDENTIALS"
    unknown = rpc_error(
        grpc.StatusCode.UNAUTHENTICATED,
        server.auth.Login,
        auth_pb2.LoginRequest(email="nobody@example.com", password="whatever12345"),
    )
    assert unknown.details == failure.details, "an unknown email is indistinguishable from a wrong password"


def test_call_without_credential_is_unauthenticated(server):
    failure = rpc_error(grpc.StatusCode.UNAUTHENTICATED, server.auth.WhoAmI, auth_pb2.WhoAmIRequest())
    assert failure.reason == "CREDENTIAL_MISSING"


def test_malformed_forged_and_expired_tokens_are_unauthenticated(server):
    user_id, _ = server.make_user("participant")
    forged = jwt.encode({"iss": "coordd", "sub": user_id, "exp": 4102444800}, "x" * 32, algorithm="HS256")
    expired, _ = server.rt.tokens.issue(user_id, ["participant"], server.rt.now() - timedelta(days=1))
    for header, reason in (
        (("authorization", "Basic abc"), "BAD_AUTHORIZATION_HEADER"),
        (("authorization", f"Bearer {forged}"), "BAD_TOKEN"),
        (("authorization", f"Bearer {expired}"), "BAD_TOKEN"),
    ):
        failure = rpc_error(
            grpc.StatusCode.UNAUTHENTICATED, server.auth.WhoAmI, auth_pb2.WhoAmIRequest(), metadata=(header,)
        )
        assert failure.reason == reason


def test_wrong_role_is_permission_denied(server):
    _, participant = server.make_user("participant")
    _, admin = server.make_user("admin")
    failure = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        server.status.ListEvents,
        status_pb2.ListEventsRequest(),
        metadata=bearer(participant),
    )
    assert failure.reason == "ROLE_REQUIRED"
    assert server.status.ListEvents(status_pb2.ListEventsRequest(), metadata=bearer(admin)).events


def test_api_key_authenticates_until_revoked(server):
    _, token = server.make_user("participant", "provider")
    created = server.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name="worker", roles=[common_pb2.ROLE_PROVIDER]),
        metadata=bearer(token),
    )
    assert created.secret.startswith("ck_")
    assert created.secret.startswith(created.api_key.prefix)
    stored = ApiKey.get_by_id(created.api_key.name.split("/")[1])
    assert created.secret not in (stored.secret_hash, stored.prefix), "the secret is never stored"
    me = server.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(created.secret))
    assert me.credential_kind == "api_key"
    assert list(me.effective_roles) == [common_pb2.ROLE_PROVIDER]
    assert me.api_key == created.api_key.name
    revoked = server.auth.RevokeApiKey(
        auth_pb2.RevokeApiKeyRequest(name=created.api_key.name), metadata=bearer(token)
    )
    assert revoked.api_key.HasField("revoke_time")
    failure = rpc_error(
        grpc.StatusCode.UNAUTHENTICATED,
        server.auth.WhoAmI,
        auth_pb2.WhoAmIRequest(),
        metadata=bearer(created.secret),
    )
    assert failure.reason == "BAD_API_KEY"


def test_api_key_cannot_carry_roles_its_owner_lacks(server):
    _, token = server.make_user("participant")
    failure = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        server.auth.CreateApiKey,
        auth_pb2.CreateApiKeyRequest(display_name="k", roles=[common_pb2.ROLE_ADMIN]),
        metadata=bearer(token),
    )
    assert failure.reason == "ROLE_NOT_HELD"
    assert ApiKey.select().count() == 0


def test_expired_api_key_is_rejected(server, clock):
    _, token = server.make_user("participant")
    expire = timestamp_pb2.Timestamp()
    expire.FromDatetime(server.rt.now() + timedelta(minutes=5))
    created = server.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name="short-lived", expire_time=expire), metadata=bearer(token)
    )
    clock.advance(600)
    from coordd.domain.auth import forget_api_key

    forget_api_key(ApiKey.get_by_id(created.api_key.name.split("/")[1]).secret_hash)
    rpc_error(
        grpc.StatusCode.UNAUTHENTICATED,
        server.auth.WhoAmI,
        auth_pb2.WhoAmIRequest(),
        metadata=bearer(created.secret),
    )


def test_someone_elses_key_is_not_found_and_stays_valid(server):
    _, alice = server.make_user("participant")
    _, bob = server.make_user("participant")
    key = server.auth.CreateApiKey(auth_pb2.CreateApiKeyRequest(display_name="a"), metadata=bearer(alice))
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        server.auth.RevokeApiKey,
        auth_pb2.RevokeApiKeyRequest(name=key.api_key.name),
        metadata=bearer(bob),
    )
    assert server.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=bearer(key.secret)).user
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        server.auth.RevokeApiKey,
        auth_pb2.RevokeApiKeyRequest(name="users/abc"),
        metadata=bearer(bob),
    )
    assert "name" in failure.violations


def test_list_api_keys_pages_and_rejects_a_foreign_token(server):
    _, token = server.make_user("participant")
    names = {
        server.auth.CreateApiKey(
            auth_pb2.CreateApiKeyRequest(display_name=f"k{i}"), metadata=bearer(token)
        ).api_key.name
        for i in range(5)
    }
    seen: list[str] = []
    page_token = ""
    while True:
        page = server.auth.ListApiKeys(
            auth_pb2.ListApiKeysRequest(page_size=2, page_token=page_token), metadata=bearer(token)
        )
        seen.extend(k.name for k in page.api_keys)
        page_token = page.next_page_token
        if not page_token:
            break
    assert len(seen) == 5 and set(seen) == names
    first = server.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(page_size=2), metadata=bearer(token))
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        server.auth.ListApiKeys,
        auth_pb2.ListApiKeysRequest(page_size=2, page_token=first.next_page_token, show_revoked=True),
        metadata=bearer(token),
    )
    assert failure.reason == "BAD_PAGE_TOKEN"
    rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        server.auth.ListApiKeys,
        auth_pb2.ListApiKeysRequest(page_size=-1),
        metadata=bearer(token),
    )


def test_oversized_string_is_invalid_argument(server):
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, server.sign_up, display_name="x" * 20000)
    assert failure.reason == "STRING_TOO_LONG"
    assert "display_name" in failure.violations
    assert User.select().count() == 0


def test_request_id_is_echoed_in_trailers(server):
    reply, call = server.auth.SignUp.with_call(
        auth_pb2.SignUpRequest(email="rid@example.com", password="correct horse battery"),
        metadata=(("x-request-id", "req-123"),),
    )
    assert dict(call.trailing_metadata())["x-request-id"] == "req-123"
    assert reply.user.email == "rid@example.com"
