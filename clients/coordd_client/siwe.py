"""Sign-In with Ethereum for clients: the EIP-4361 message a wallet signs and its EIP-191
(`personal_sign`) signature, made with a secp256k1 key held by the user.

The same libraries as the daemon's offline check (coordd/domain/auth/siwe_message.py):
coincurve (libsecp256k1) and pycryptodome's keccak-256.

    key = load_private_key(Path("eth.key").read_text())
    message = compose(domain, address_of(key), uri, nonce, issued_at)
    signature = sign(message, key)          # 65 bytes: r, s, v (27/28)
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import coincurve
from Crypto.Hash import keccak

HEADER = " wants you to sign in with your Ethereum account:"
_HEX_KEY = re.compile(r"^(0x)?([0-9a-fA-F]{64})$")
# The order of secp256k1's group: a private key is an integer in [1, N).
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class BadKey(ValueError):
    """The private key text is not a secp256k1 key; the message says why (never the key)."""


def keccak256(data: bytes) -> bytes:
    return keccak.new(digest_bits=256, data=data).digest()


def checksum(address: str) -> str:
    """EIP-55 mixed-case checksum of a 0x-prefixed hex address."""
    lower = address[2:].lower()
    digest = keccak256(lower.encode()).hex()
    return "0x" + "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(lower))


def load_private_key(text: str) -> bytes:
    """32 bytes from 64 hex digits (optionally 0x-prefixed, surrounding whitespace ignored)."""
    match = _HEX_KEY.match(text.strip())
    if match is None:
        raise BadKey("the Ethereum key must be 64 hex digits (optionally 0x-prefixed), alone in its file")
    key = bytes.fromhex(match.group(2))
    if not 0 < int.from_bytes(key, "big") < _N:
        raise BadKey("the Ethereum key is out of range for secp256k1")
    return key


def address_of(private_key: bytes) -> str:
    raw = coincurve.PrivateKey(private_key).public_key.format(compressed=False)[1:]
    return checksum("0x" + keccak256(raw)[-20:].hex())


def eip191_hash(message: str) -> bytes:
    data = message.encode()
    return keccak256(b"\x19Ethereum Signed Message:\n" + str(len(data)).encode() + data)


def sign(message: str, private_key: bytes) -> bytes:
    """personal_sign: r, s, v (27/28)."""
    signed = coincurve.PrivateKey(private_key).sign_recoverable(eip191_hash(message), hasher=None)
    return signed[:64] + bytes([signed[64] + 27])


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def compose(
    domain: str,
    address: str,
    uri: str,
    nonce: str,
    issued_at: str,
    *,
    statement: str = "",
    chain_id: int = 1,
    expiration_time: str = "",
) -> str:
    """An EIP-4361 message as wallets show it."""
    lines = [f"{domain}{HEADER}", address, ""]
    if statement:
        lines += [statement, ""]
    lines += [
        f"URI: {uri}",
        "Version: 1",
        f"Chain ID: {chain_id}",
        f"Nonce: {nonce}",
        f"Issued At: {issued_at}",
    ]
    if expiration_time:
        lines.append(f"Expiration Time: {expiration_time}")
    return "\n".join(lines)
