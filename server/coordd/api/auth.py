"""AuthService: sign-up, login, WhoAmI and API keys."""

from __future__ import annotations

from typing import Any

from coordd.api.convert import from_ts, parse_name, roles_from_proto, roles_to_proto, ts
from coordd.core.paging import PageRequest
from coordd.core.principal import parse_roles, require_user
from coordd.domain import auth
from coordd.runtime import Runtime
from coordd_client.v1 import auth_pb2, auth_pb2_grpc


def user_to_proto(user: auth.User) -> auth_pb2.User:
    return auth_pb2.User(
        name=f"users/{user.id}",
        email=user.email,
        display_name=user.display_name,
        roles=roles_to_proto(parse_roles(user.roles)),
        create_time=ts(user.create_time),
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
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def SignUp(self, request: auth_pb2.SignUpRequest, context: Any) -> auth_pb2.SignUpResponse:
        roles = roles_from_proto(request.roles)
        session = await self.rt.run(
            auth.sign_up, self.rt, request.email, request.password, request.display_name, roles
        )
        return auth_pb2.SignUpResponse(
            user=user_to_proto(session.user),
            access_token=session.access_token,
            expire_time=ts(session.expire_time),
        )

    async def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.LoginResponse:
        session = await self.rt.run(auth.login, self.rt, request.email, request.password)
        return auth_pb2.LoginResponse(
            user=user_to_proto(session.user),
            access_token=session.access_token,
            expire_time=ts(session.expire_time),
        )

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: Any) -> auth_pb2.WhoAmIResponse:
        who = require_user()
        user = await self.rt.run(auth.get_user, who.user_id)
        return auth_pb2.WhoAmIResponse(
            user=user_to_proto(user),
            effective_roles=roles_to_proto(who.roles),
            credential_kind=who.kind,
            api_key=f"apiKeys/{who.api_key_id}" if who.api_key_id else "",
        )

    async def CreateApiKey(
        self, request: auth_pb2.CreateApiKeyRequest, context: Any
    ) -> auth_pb2.CreateApiKeyResponse:
        who = require_user()
        roles = roles_from_proto(request.roles)
        expire = from_ts(request.expire_time) if request.HasField("expire_time") else None
        key, secret = await self.rt.run(
            auth.create_api_key, self.rt, who, request.display_name, roles, expire
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
