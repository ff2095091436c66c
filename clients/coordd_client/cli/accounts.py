"""coordctl passwd | user disable|enable|set-roles|reset-password|revoke-tokens | audit."""

from __future__ import annotations

import argparse
import getpass
import os
from typing import Any

from coordd_client.cli.common import Context, emit, resource_name, table
from coordd_client.v1 import auth_pb2, common_pb2

ROLES = ["admin", "organizer", "coordinator", "participant", "provider", "node_operator"]


def register(sub: Any) -> None:
    sub.add_parser(
        "passwd", help="change your password (COORDCTL_PASSWORD / COORDCTL_NEW_PASSWORD or prompts)"
    ).set_defaults(func=_passwd)
    user = sub.add_parser("user", help="account control (admin)").add_subparsers(
        dest="user_command", required=True
    )
    for name, func, helptext in (
        ("disable", _disable, "disable a user: their tokens and API keys stop working"),
        ("enable", _enable, "enable a disabled user"),
        ("revoke-tokens", _revoke, "revoke every access token of a user (yours without admin)"),
        ("reset-password", _reset, "set a user's password (COORDCTL_NEW_PASSWORD or a prompt)"),
    ):
        cmd = user.add_parser(name, help=helptext)
        cmd.add_argument("user", help="users/{id} or the id")
        cmd.set_defaults(func=func)
    roles = user.add_parser("set-roles", help="replace a user's roles")
    roles.add_argument("user", help="users/{id} or the id")
    roles.add_argument("--role", action="append", required=True, choices=ROLES, help="repeat for several")
    roles.set_defaults(func=_set_roles)
    audit = sub.add_parser("audit", help="the audit trail, newest first (admin)")
    audit.add_argument("--filter", default="", help='e.g. action = "auth.login" AND outcome = "failed"')
    audit.add_argument("--page-size", type=int, default=50)
    audit.add_argument("--page-token", default="")
    audit.set_defaults(func=_audit)


def _new_password() -> str:
    return os.environ.get("COORDCTL_NEW_PASSWORD") or getpass.getpass("new password: ")


def _user_reply(ctx: Context, reply: Any, what: str) -> int:
    emit(ctx, reply.user, f"{reply.user.email} ({reply.user.name}): {what}")
    return 0


def _passwd(ctx: Context, args: argparse.Namespace) -> int:
    current = os.environ.get("COORDCTL_PASSWORD") or getpass.getpass("current password: ")
    reply = ctx.client.auth.ChangePassword(
        auth_pb2.ChangePasswordRequest(current_password=current, new_password=_new_password())
    )
    emit(ctx, {"expire_time": reply.expire_time.ToJsonString()}, "password changed; other sessions ended")
    return 0


def _disable(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.auth.DisableUser(auth_pb2.DisableUserRequest(name=resource_name("users", args.user)))
    return _user_reply(ctx, reply, "disabled")


def _enable(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.auth.EnableUser(auth_pb2.EnableUserRequest(name=resource_name("users", args.user)))
    return _user_reply(ctx, reply, "enabled")


def _revoke(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.auth.RevokeUserTokens(
        auth_pb2.RevokeUserTokensRequest(name=resource_name("users", args.user))
    )
    return _user_reply(ctx, reply, "access tokens revoked")


def _reset(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.auth.ResetUserPassword(
        auth_pb2.ResetUserPasswordRequest(
            name=resource_name("users", args.user), new_password=_new_password()
        )
    )
    return _user_reply(ctx, reply, "password reset; access tokens revoked")


def _set_roles(ctx: Context, args: argparse.Namespace) -> int:
    roles = [common_pb2.Role.Value("ROLE_" + r.upper()) for r in args.role]
    reply = ctx.client.auth.SetUserRoles(
        auth_pb2.SetUserRolesRequest(name=resource_name("users", args.user), roles=roles)
    )
    return _user_reply(ctx, reply, "roles now " + ", ".join(sorted(args.role)))


def _audit(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.auth.ListAuditEvents(
        auth_pb2.ListAuditEventsRequest(
            filter=args.filter, page_size=args.page_size, page_token=args.page_token
        )
    )
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    table(
        ctx,
        "audit events",
        ["time", "action", "outcome", "actor", "target", "peer"],
        [
            [e.create_time.ToJsonString(), e.action, e.outcome, e.actor or "-", e.target or "-", e.peer]
            for e in reply.audit_events
        ],
    )
    if reply.next_page_token:
        print(f"more: --page-token {reply.next_page_token}")
    return 0
