"""coordctl signup | login (email and password, or --ethereum) | logout | whoami."""

from __future__ import annotations

import argparse
import getpass
import os
from typing import Any

from coordd_client.cli import siwe_login
from coordd_client.cli.common import Context, emit, load_config, save_config, to_dict
from coordd_client.v1 import auth_pb2, common_pb2


def register(sub: Any) -> None:
    for name, func, helptext in (
        ("signup", _signup, "create an account and save its token"),
        ("login", _login, "log in and save the token"),
    ):
        cmd = sub.add_parser(name, help=helptext, epilog=siwe_login.KEY_HELP if name == "login" else None)
        if name == "login":
            how = cmd.add_mutually_exclusive_group(required=True)
            how.add_argument("--email")
            how.add_argument(
                "--ethereum",
                action="store_true",
                help="Sign-In with Ethereum (EIP-4361) with a secp256k1 key",
            )
            siwe_login.add_flags(cmd)
        else:
            cmd.add_argument("--email", required=True)
        cmd.add_argument(
            "--password",
            help="default: COORDCTL_PASSWORD or a prompt (never a command-line argument in scripts)",
        )
        if name == "signup":
            cmd.add_argument("--display-name", default="")
            cmd.add_argument(
                "--role",
                action="append",
                choices=["participant", "organizer", "provider", "node_operator"],
                help="repeat for several (default participant)",
            )
        cmd.set_defaults(func=func)
    sub.add_parser("logout", help="forget the saved token").set_defaults(func=_logout)
    sub.add_parser("whoami", help="show the current principal").set_defaults(func=_whoami)


def _password(args: argparse.Namespace) -> str:
    return args.password or os.environ.get("COORDCTL_PASSWORD") or getpass.getpass("password: ")


def _save(ctx: Context, reply: Any, **extra: str) -> None:
    config = load_config()
    config.update({"target": ctx.target, "token": reply.access_token, "email": reply.user.email})
    path = save_config(config)
    emit(
        ctx,
        {
            "user": to_dict(reply.user),
            "expire_time": reply.expire_time.ToJsonString(),
            "config": str(path),
            **extra,
        },
        f"logged in as {reply.user.email} ({reply.user.name}); token saved to {path}",
    )


def _signup(ctx: Context, args: argparse.Namespace) -> int:
    roles = [common_pb2.Role.Value("ROLE_" + r.upper()) for r in (args.role or [])]
    with ctx.anonymous_client() as client:
        reply = client.auth.SignUp(
            auth_pb2.SignUpRequest(
                email=args.email, password=_password(args), display_name=args.display_name, roles=roles
            )
        )
    _save(ctx, reply)
    return 0


def _login(ctx: Context, args: argparse.Namespace) -> int:
    if args.ethereum:
        reply = siwe_login.sign_in(ctx, args)
        _save(ctx, reply, address=reply.address)
        return 0
    with ctx.anonymous_client() as client:
        reply = client.auth.Login(auth_pb2.LoginRequest(email=args.email, password=_password(args)))
    _save(ctx, reply)
    return 0


def _logout(ctx: Context, args: argparse.Namespace) -> int:
    config = load_config()
    config.pop("token", None)
    save_config(config)
    emit(ctx, {"logged_out": True}, "logged out")
    return 0


def _whoami(ctx: Context, args: argparse.Namespace) -> int:
    me = ctx.client.auth.WhoAmI(auth_pb2.WhoAmIRequest())
    roles = ", ".join(common_pb2.Role.Name(r)[5:].lower() for r in me.effective_roles)
    emit(ctx, me, f"{me.user.email} ({me.user.name}) via {me.credential_kind}; roles: {roles}")
    return 0
