"""`coordd serve | migrate | admin ...`. Errors a user can fix print as one line, exit 2."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from coordd import __version__
from coordd.config import ConfigError, Settings, load_settings
from coordd.logging import configure


def _settings(args: argparse.Namespace, level: str | None = None) -> Settings:
    """Loads the settings, configures logging, and logs what loading warned about."""
    settings = load_settings(
        args.config,
        listen=getattr(args, "listen", None),
        http_listen=getattr(args, "http", None),
        data_dir=args.data_dir,
        database_url=args.database_url,
    )
    configure(settings.log_format, level or settings.log_level)
    import structlog

    for warning in settings.warnings:
        structlog.get_logger("coordd").warning("configuration", problem=warning)
    return settings


def _serve(args: argparse.Namespace) -> int:
    from coordd.app import App

    settings = _settings(args)
    if args.processes is not None:
        from coordd.supervisor import Supervisor

        if settings.http_listen:
            print(
                "coordd: the web pages are served by one process: drop --http (COORDD_HTTP_LISTEN) from a"
                " --processes supervisor and serve them from a separate `coordd serve --http`",
                file=sys.stderr,
            )
            return 2

        forward = [
            f"--{name.replace('_', '-')}={value}"
            for name in ("config", "data_dir", "database_url")
            if (value := getattr(args, name)) is not None
        ]
        return Supervisor(settings, args.processes, forward, args.port_file).run()
    reuse_port = False
    if args.child_reservation_fd is not None:
        from coordd.supervisor import verify_reservation, watch_lifeline

        verify_reservation(args.child_reservation_fd, settings.listen)
        if args.child_lifeline_fd is not None:
            watch_lifeline(args.child_lifeline_fd)
        reuse_port = True
    app = App(settings, reuse_port=reuse_port, slot=args.child_slot)
    asyncio.run(app.serve_forever(port_file=args.port_file))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from coordd.runtime import Runtime
    from coordd.store.migrations import migrate

    settings = _settings(args)
    rt = Runtime(settings)
    try:
        applied = migrate(rt.store)
    finally:
        rt.close()
    print(json.dumps({"applied": applied}))
    return 0


def _create_user(args: argparse.Namespace) -> int:
    settings = _settings(args, "warning")
    with tempfile.TemporaryDirectory(prefix="coordd-admin-") as scratch:
        if settings.database_url:
            # Nothing here signs, seals or issues tokens: on PostgreSQL the data dir (and the
            # configured key paths) are left alone, so an operator's shell or a replica's
            # volume never gets stray key files. The Runtime's keys are throw-away ones.
            settings = dataclasses.replace(
                settings,
                data_dir=scratch,
                jwt_secret=secrets.token_urlsafe(32),
                signing_key_path=str(Path(scratch) / "coordinator.key"),
                sealing_key_path=str(Path(scratch) / "secrets.key"),
            )
        return _create_user_with(args, settings)


def _create_user_with(args: argparse.Namespace, settings: Settings) -> int:
    from coordd.core.principal import Principal, parse_roles
    from coordd.domain import auth
    from coordd.runtime import Runtime
    from coordd.store.migrations import migrate

    rt = Runtime(settings)
    try:
        migrate(rt.store)
        password = args.password or secrets.token_urlsafe(18)
        user = auth.create_user(
            rt,
            args.email,
            password,
            args.display_name or "",
            args.role or ["participant"],
            self_service=False,
        )
        owner = Principal(user_id=user.id, roles=parse_roles(user.roles), kind="token")
        key, secret = auth.create_api_key(rt, owner, "bootstrap (coordd admin create-user)", [], None)
    finally:
        rt.close()
    out: dict[str, Any] = {
        "user": f"users/{user.id}",
        "email": user.email,
        "roles": sorted(parse_roles(user.roles)),
        "api_key": f"apiKeys/{key.id}",
        "api_key_secret": secret,
    }
    if not args.password:
        out["password"] = password
    print(json.dumps(out, indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coordd", description="gRPC coordination daemon")
    parser.add_argument("--version", action="version", version=f"coordd {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML settings file (COORDD_* environment wins over it)")
    common.add_argument("--data-dir", help="directory for the SQLite file and generated secrets")
    common.add_argument("--database-url", help="postgresql://... (default: SQLite under the data dir)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the daemon")
    serve.add_argument("--listen", help="host:port (port 0 picks a free one)")
    serve.add_argument("--port-file", help="write the bound port here once serving")
    serve.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="PostgreSQL only: a supervisor runs N serving processes on the one port (0: one per core)",
    )
    # Set by the supervisor on the children it starts (coordd.supervisor), not by hand.
    serve.add_argument("--child-slot", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--child-reservation-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--child-lifeline-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--http", metavar="HOST:PORT", help="also serve the web pages here (default: off)")
    serve.set_defaults(func=_serve)

    mig = sub.add_parser("migrate", parents=[common], help="apply pending schema migrations")
    mig.set_defaults(func=_migrate)

    admin = sub.add_parser("admin", help="operator commands that work on the database directly")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    cu = admin_sub.add_parser(
        "create-user", parents=[common], help="create a user (any role) and print an API key for it"
    )
    cu.add_argument("--email", required=True)
    cu.add_argument("--role", action="append", help="repeat for several roles (default participant)")
    cu.add_argument("--password", help="default: a generated one, printed once")
    cu.add_argument("--display-name")
    cu.set_defaults(func=_create_user)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Whatever the daemon creates (data dir, database, keys, blobs, port file) is its user's
    # alone; the explicit modes in store.db and crypto.secrets hold without this too.
    os.umask(0o077)
    from coordd.app import StartupError
    from coordd.core.errors import DomainError
    from coordd.store.lock import DataDirLocked
    from coordd.supervisor import SupervisorError

    try:
        return int(args.func(args))
    except (ConfigError, StartupError, DataDirLocked, PermissionError, SupervisorError) as exc:
        print(f"coordd: {exc}", file=sys.stderr)
        return 2
    except DomainError as exc:
        print(f"coordd: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
