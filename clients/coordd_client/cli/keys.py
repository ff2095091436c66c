"""coordctl api-key create|list|revoke: the caller's API keys, optionally scoped to some
services or methods (`--scope coordd.v1.JobService`, `--scope coordd.v1.JobService.GetJob`)."""

from __future__ import annotations

import argparse
from typing import Any

from coordd_client.cli.common import Context, emit, table
from coordd_client.v1 import auth_pb2, common_pb2


def register(sub: Any) -> None:
    keys = sub.add_parser("api-key", help="the caller's API keys").add_subparsers(
        dest="api_key_command", required=True
    )
    create = keys.add_parser("create", help="create an API key and print its secret once")
    create.add_argument("--name", required=True, help="display name")
    create.add_argument("--role", action="append", default=[], help="a role it carries (default: all yours)")
    create.add_argument(
        "--scope",
        action="append",
        default=[],
        help="a service or method it may call, e.g. coordd.v1.JobService (repeatable; default: unscoped)",
    )
    create.set_defaults(func=_create)
    listing = keys.add_parser("list", help="the caller's keys, with their scopes")
    listing.add_argument("--show-revoked", action="store_true")
    listing.set_defaults(func=_list)
    revoke = keys.add_parser("revoke", help="revoke a key (it stops working at once)")
    revoke.add_argument("key", metavar="api_key", help="apiKeys/{id}")
    revoke.set_defaults(func=_revoke)


def _create(ctx: Context, args: argparse.Namespace) -> int:
    roles = [common_pb2.Role.Value("ROLE_" + r.upper()) for r in args.role]
    reply = ctx.client.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name=args.name, roles=roles, scopes=args.scope)
    )
    scope = ", ".join(reply.api_key.scopes) or "unscoped"
    emit(ctx, reply, f"{reply.api_key.name} created ({scope}); secret (shown once): {reply.secret}")
    return 0


def _list(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(show_revoked=args.show_revoked))
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    table(
        ctx,
        "API keys",
        ["key", "name", "prefix", "scopes", "revoked"],
        [
            [
                k.name,
                k.display_name,
                k.prefix,
                ",".join(k.scopes) or "-",
                "yes" if k.revoke_time.seconds else "",
            ]
            for k in reply.api_keys
        ],
    )
    return 0


def _revoke(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.auth.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(name=args.key))
    emit(ctx, reply, f"{reply.api_key.name} revoked")
    return 0
