"""`coordctl`: the command line for contributors, workers, node operators and operators.

Human output (tables, progress) by default, plain when stdout is not a terminal, and
`--json` for scripts. Credentials from `coordctl login` live in the user's config dir
(mode 0600); `--token`, `--api-key` or COORDCTL_TOKEN / COORDCTL_API_KEY override them.
"""

from __future__ import annotations

import argparse
import sys

from coordd_client.cli import (
    accounts,
    auth,
    ceremony,
    competition,
    job,
    keys,
    node,
    notification,
    project,
    status,
)
from coordd_client.cli.common import Context, add_connection_flags, fail
from coordd_client.errors import CoorddError

COMMAND_MODULES = [auth, accounts, keys, status, job, node, project, notification, competition, ceremony]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coordctl", description="coordd command line")
    parser.add_argument(
        "--target", help="host:port of coordd (default: saved, COORDCTL_TARGET or 127.0.0.1:50051)"
    )
    parser.add_argument("--token", help="access token (default: the one saved by `coordctl login`)")
    parser.add_argument("--api-key", help="API key (ck_...)")
    add_connection_flags(parser)
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-call deadline in seconds")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ctx = Context.from_args(args)
    try:
        return int(args.func(ctx, args) or 0)
    except CoorddError as exc:
        return fail(ctx, exc)
    except KeyboardInterrupt:
        return 130
    finally:
        ctx.close()


if __name__ == "__main__":
    sys.exit(main())
