"""`coordctl login --ethereum`: Sign-In with Ethereum with a secp256k1 key the user holds.

coordctl asks the daemon for a nonce (CreateSiweNonce: the nonce, its expiry, and the domain
and URI to sign in to), writes the EIP-4361 message, signs it (EIP-191 personal_sign) and
sends both (SignInWithEthereum). The session is saved like a password login's.

The key never appears on the command line (where `ps` and shell history would show it): it
is read from `--key-file PATH` (`-` for stdin), else the file named by COORDCTL_ETH_KEY_FILE,
else the hex in COORDCTL_ETH_KEY. The file holds the 64 hex digits of the private key
(optionally 0x-prefixed); a file that others may read is used with a warning.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coordd_client import siwe
from coordd_client.cli.common import Context
from coordd_client.v1 import auth_pb2

KEY_FILE_ENV = "COORDCTL_ETH_KEY_FILE"
KEY_ENV = "COORDCTL_ETH_KEY"
KEY_HELP = (
    "Sign-In with Ethereum: the secp256k1 private key is read from --key-file (a file holding its "
    f"64 hex digits; '-' reads stdin), else the file in {KEY_FILE_ENV}, else the hex in {KEY_ENV}; "
    "never from a command-line argument"
)


def add_flags(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--key-file", help=f"with --ethereum: the private key's file (or env {KEY_FILE_ENV})")
    cmd.add_argument(
        "--chain-id", type=int, default=1, help="with --ethereum: the EIP-155 chain id (default 1)"
    )
    cmd.add_argument(
        "--statement", default="Sign in to coordd.", help="with --ethereum: the message's statement line"
    )


def _read_key_file(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text()
    except OSError as exc:
        raise SystemExit(f"error: cannot read the Ethereum key file {path}: {exc.strerror}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(f"warning: {path} is accessible by other users; chmod 600 it", file=sys.stderr)
    return text


def private_key(args: argparse.Namespace) -> bytes:
    """The user's key from --key-file, COORDCTL_ETH_KEY_FILE or COORDCTL_ETH_KEY."""
    path = args.key_file or os.environ.get(KEY_FILE_ENV)
    if path:
        text, where = _read_key_file(path), path
    elif os.environ.get(KEY_ENV):
        text, where = os.environ[KEY_ENV], KEY_ENV
    else:
        raise SystemExit(f"error: no Ethereum key. {KEY_HELP}.")
    try:
        return siwe.load_private_key(text)
    except siwe.BadKey as exc:
        raise SystemExit(f"error: {where}: {exc}") from None


def fetch_nonce(client: Any) -> auth_pb2.CreateSiweNonceResponse:
    return client.auth.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest())


def signed_request(
    nonce: auth_pb2.CreateSiweNonceResponse, key: bytes, args: argparse.Namespace
) -> auth_pb2.SignInWithEthereumRequest:
    """The EIP-4361 message for the daemon's nonce, valid until the nonce expires, signed."""
    expire = nonce.expire_time.ToDatetime(tzinfo=UTC) if nonce.HasField("expire_time") else None
    message = siwe.compose(
        nonce.domain,
        siwe.address_of(key),
        nonce.uri,
        nonce.nonce,
        siwe.rfc3339(datetime.now(UTC)),
        statement=args.statement,
        chain_id=args.chain_id,
        expiration_time=siwe.rfc3339(expire) if expire is not None else "",
    )
    return auth_pb2.SignInWithEthereumRequest(message=message, signature=siwe.sign(message, key))


def sign_in(ctx: Context, args: argparse.Namespace) -> auth_pb2.SignInWithEthereumResponse:
    """The SignInWithEthereumResponse for the user's key."""
    if "\n" in args.statement:
        raise SystemExit("error: --statement must be one line")
    key = private_key(args)
    with ctx.anonymous_client() as client:
        request = signed_request(fetch_nonce(client), key, args)
        return client.auth.SignInWithEthereum(request)
