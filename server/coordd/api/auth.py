"""AuthService: sign-up, login, WhoAmI, API keys, account control and the audit trail."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool, struct_pb2

from coordd.api.convert import from_ts, parse_name, roles_from_proto, roles_to_proto, ts
from coordd.api.peer import client_peer
from coordd.api.siwe_limits import SiweLimits
from coordd.core.memo import remember
from coordd.core.paging import PageRequest
from coordd.core.principal import parse_roles, require_user
from coordd.domain import auth
from coordd.domain.auth import siwe
from coordd.runtime import Runtime
from coordd_client.v1 import auth_pb2, auth_pb2_grpc

_MAX_WHOAMI_REPLIES = 10_000


def user_to_proto(user: auth.User | auth.UserView) -> auth_pb2.User:
    return auth_pb2.User(
        name=f"users/{user.id}",
        email=user.email,
        display_name=user.display_name,
        roles=roles_to_proto(parse_roles(user.roles)),
        create_time=ts(user.create_time),
        disabled=bool(user.disabled),
    )


def api_key_to_proto(key: auth.ApiKey) -> auth_pb2.ApiKey:
    return auth_pb2.ApiKey(
        name=f"apiKeys/{key.id}",
        display_name=key.display_name,
        prefix=key.prefix,
        roles=roles_to_proto(parse_roles(key.roles)),
        create_time=ts(key.create_time),
        expire_time=ts(key.expire_time),
        revoke_time=ts(key.revoke_time),
        owner=f"users/{key.user_id}",
        scopes=sorted(s for s in key.scopes.split(",") if s),
    )


def known_scope(name: str) -> bool:
    """A coordd service (`coordd.v1.JobService`) or method (`coordd.v1.JobService.GetJob`)."""
    if not name.startswith("coordd.") or len(name) > 200:
        return False
    pool = descriptor_pool.Default()
    for find in (pool.FindServiceByName, pool.FindMethodByName):
        try:
            find(name)
            return True
        except KeyError:
            continue
    return False


def audit_event_to_proto(row: auth.AuditRow) -> auth_pb2.AuditEvent:
    detail = struct_pb2.Struct()
    detail.update(row.detail or {})
    return auth_pb2.AuditEvent(
        name=f"auditEvents/{row.id}",
        create_time=ts(row.create_time),
        action=row.action,
        actor=row.actor,
        credential=row.credential,
        target=row.target,
        peer=row.peer,
        outcome=row.outcome,
        detail=detail,
    )


def _peer(context: Any, rt: Runtime) -> str:
    return client_peer(context, rt.settings.trusted_proxies)


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.siwe_limits = SiweLimits(rt.settings, lambda: rt.now().timestamp())
        self._siwe_closer = self.siwe_limits.close_when(rt.stopping)
        # WhoAmI replies by everything they show: a caller asking again gets the same message
        # (never mutated; grpc only serializes it) instead of one built again.
        self._whoami: dict[tuple[object, ...], auth_pb2.WhoAmIResponse] = {}

    async def SignUp(self, request: auth_pb2.SignUpRequest, context: Any) -> auth_pb2.SignUpResponse:
        roles = roles_from_proto(request.roles)
        session = await auth.sign_up(self.rt, request.email, request.password, request.display_name, roles)
        return auth_pb2.SignUpResponse(
            user=user_to_proto(session.user),
            access_token=session.access_token,
            expire_time=ts(session.expire_time),
        )

    async def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.LoginResponse:
        session = await auth.login(self.rt, request.email, request.password, _peer(context, self.rt))
        return auth_pb2.LoginResponse(
            user=user_to_proto(session.user),
            access_token=session.access_token,
            expire_time=ts(session.expire_time),
        )

    async def CreateSiweNonce(
        self, request: auth_pb2.CreateSiweNonceRequest, context: Any
    ) -> auth_pb2.CreateSiweNonceResponse:
        await self.siwe_limits.admit_nonce(context)
        nonce = await self.rt.run(siwe.create_nonce, self.rt)
        return auth_pb2.CreateSiweNonceResponse(
            nonce=nonce.nonce, expire_time=ts(nonce.expire_time), domain=nonce.domain, uri=nonce.uri
        )

    async def SignInWithEthereum(
        self, request: auth_pb2.SignInWithEthereumRequest, context: Any
    ) -> auth_pb2.SignInWithEthereumResponse:
        await self.siwe_limits.admit_attempt(context)
        peer = _peer(context, self.rt)
        message = await self.rt.run(siwe.check_signed, self.rt, request.message, request.signature, peer)
        await self.siwe_limits.admit_address(message.address)
        session, address = await self.rt.run(siwe.complete_sign_in, self.rt, message, peer)
        return auth_pb2.SignInWithEthereumResponse(
            user=user_to_proto(session.user),
            access_token=session.access_token,
            expire_time=ts(session.expire_time),
            address=address,
        )

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: Any) -> auth_pb2.WhoAmIResponse:
        who = require_user()
        # From the replica's access map: no database read after the user's first call.
        user = await auth.current_user(self.rt, who.user_id)
        shown = (user, who.roles, who.kind, who.api_key_id)
        reply = self._whoami.get(shown)
        if reply is None:
            reply = auth_pb2.WhoAmIResponse(
                user=user_to_proto(user),
                effective_roles=roles_to_proto(who.roles),
                credential_kind=who.kind,
                api_key=f"apiKeys/{who.api_key_id}" if who.api_key_id else "",
            )
            remember(self._whoami, shown, reply, _MAX_WHOAMI_REPLIES)
        return reply

    async def CreateApiKey(
        self, request: auth_pb2.CreateApiKeyRequest, context: Any
    ) -> auth_pb2.CreateApiKeyResponse:
        who = require_user()
        roles = roles_from_proto(request.roles)
        expire = from_ts(request.expire_time) if request.HasField("expire_time") else None
        key, secret = await self.rt.run(
            auth.create_api_key,
            self.rt,
            who,
            request.display_name,
            roles,
            expire,
            list(request.scopes),
            known_scope,
        )
        return auth_pb2.CreateApiKeyResponse(api_key=api_key_to_proto(key), secret=secret)

    async def ListApiKeys(
        self, request: auth_pb2.ListApiKeysRequest, context: Any
    ) -> auth_pb2.ListApiKeysResponse:
        who = require_user()
        page_request = PageRequest.of(request.page_size, request.page_token)
        page = await self.rt.run(auth.list_api_keys, who, page_request, request.show_revoked)
        return auth_pb2.ListApiKeysResponse(
            api_keys=[api_key_to_proto(k) for k in page.items], next_page_token=page.next_token
        )

    async def RevokeApiKey(
        self, request: auth_pb2.RevokeApiKeyRequest, context: Any
    ) -> auth_pb2.RevokeApiKeyResponse:
        who = require_user()
        key_id = parse_name(request.name, "apiKeys")
        key = await self.rt.run(auth.revoke_api_key, self.rt, who, key_id)
        return auth_pb2.RevokeApiKeyResponse(api_key=api_key_to_proto(key))

    async def DisableUser(
        self, request: auth_pb2.DisableUserRequest, context: Any
    ) -> auth_pb2.DisableUserResponse:
        user_id = parse_name(request.name, "users")
        user = await self.rt.run(
            auth.set_disabled, self.rt, require_user(), user_id, True, _peer(context, self.rt)
        )
        return auth_pb2.DisableUserResponse(user=user_to_proto(user))

    async def EnableUser(
        self, request: auth_pb2.EnableUserRequest, context: Any
    ) -> auth_pb2.EnableUserResponse:
        user_id = parse_name(request.name, "users")
        user = await self.rt.run(
            auth.set_disabled, self.rt, require_user(), user_id, False, _peer(context, self.rt)
        )
        return auth_pb2.EnableUserResponse(user=user_to_proto(user))

    async def SetUserRoles(
        self, request: auth_pb2.SetUserRolesRequest, context: Any
    ) -> auth_pb2.SetUserRolesResponse:
        user_id = parse_name(request.name, "users")
        roles = roles_from_proto(request.roles)
        user = await self.rt.run(
            auth.set_roles, self.rt, require_user(), user_id, roles, _peer(context, self.rt)
        )
        return auth_pb2.SetUserRolesResponse(user=user_to_proto(user))

    async def ResetUserPassword(
        self, request: auth_pb2.ResetUserPasswordRequest, context: Any
    ) -> auth_pb2.ResetUserPasswordResponse:
        user_id = parse_name(request.name, "users")
        user = await auth.reset_password(
            self.rt, require_user(), user_id, request.new_password, _peer(context, self.rt)
        )
        return auth_pb2.ResetUserPasswordResponse(user=user_to_proto(user))

    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: Any
    ) -> auth_pb2.ChangePasswordResponse:
        session = await auth.change_password(
            self.rt, require_user(), request.current_password, request.new_password, _peer(context, self.rt)
        )
        return auth_pb2.ChangePasswordResponse(
            access_token=session.access_token, expire_time=ts(session.expire_time)
        )

    async def RevokeUserTokens(
        self, request: auth_pb2.RevokeUserTokensRequest, context: Any
    ) -> auth_pb2.RevokeUserTokensResponse:
        user_id = parse_name(request.name, "users")
        user = await self.rt.run(
            auth.revoke_tokens, self.rt, require_user(), user_id, _peer(context, self.rt)
        )
        return auth_pb2.RevokeUserTokensResponse(user=user_to_proto(user))

    async def ListAuditEvents(
        self, request: auth_pb2.ListAuditEventsRequest, context: Any
    ) -> auth_pb2.ListAuditEventsResponse:
        page_request = PageRequest.of(request.page_size, request.page_token)
        page = await self.rt.run(auth.list_audit_events, page_request, request.filter)
        return auth_pb2.ListAuditEventsResponse(
            audit_events=[audit_event_to_proto(e) for e in page.items], next_page_token=page.next_token
        )
