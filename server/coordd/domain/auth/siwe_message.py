"""EIP-4361 (Sign-In with Ethereum) messages and their EIP-191 signatures, checked offline:
the message is parsed field by field, and the signer's address is recovered from the
signature over keccak-256("\\x19Ethereum Signed Message:\\n" + length + message).

    message = SiweMessage.parse(text)
    signer = recover_address(text, signature)   # EIP-55 checksummed
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

import coincurve

# The message format and the hashing are shared with the client package (coordctl signs with
# them); the daemon adds parsing and offline verification.
from coordd_client.siwe import HEADER, checksum, eip191_hash, keccak256

ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
NONCE_RE = re.compile(r"^[A-Za-z0-9]{8,}$")
FIELDS = {
    "URI": "uri",
    "Version": "version",
    "Chain ID": "chain_id",
    "Nonce": "nonce",
    "Issued At": "issued_at",
    "Expiration Time": "expiration_time",
    "Not Before": "not_before",
    "Request ID": "request_id",
}
MAX_MESSAGE_CHARS = 8192


class SiweError(ValueError):
    """The message or its signature is not acceptable; the text says why."""


def _time(text: str, name: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SiweError(f"{name} is not an RFC 3339 time: {text!r}") from None
    if value.tzinfo is None:
        raise SiweError(f"{name} needs a time zone")
    return value


@dataclass(frozen=True)
class SiweMessage:
    domain: str
    address: str
    uri: str
    version: str
    chain_id: int
    nonce: str
    issued_at: datetime
    statement: str = ""
    expiration_time: datetime | None = None
    not_before: datetime | None = None
    request_id: str = ""
    resources: list[str] = field(default_factory=list)

    @staticmethod
    def parse(text: str) -> SiweMessage:
        if len(text) > MAX_MESSAGE_CHARS:
            raise SiweError(f"the message is over {MAX_MESSAGE_CHARS} characters")
        lines = text.split("\n")
        if len(lines) < 3 or not lines[0].endswith(HEADER):
            raise SiweError("not an EIP-4361 message: the first line must end with" + HEADER)
        domain = lines[0][: -len(HEADER)]
        if "://" in domain:
            domain = domain.split("://", 1)[1]
        address = lines[1]
        if not ADDRESS_RE.match(address):
            raise SiweError("the second line must be a 0x-prefixed 20-byte address")
        if address != checksum(address):
            raise SiweError("the address is not EIP-55 checksummed")
        rest = lines[2:]
        i = 0
        while i < len(rest) and rest[i] == "":
            i += 1
        statement = ""
        if i < len(rest) and not rest[i].startswith("URI: "):
            statement = rest[i]
            i += 1
        while i < len(rest) and rest[i] == "":
            i += 1
        values: dict[str, str] = {}
        resources: list[str] = []
        for line in rest[i:]:
            if line == "Resources:":
                values["_resources"] = ""
                continue
            if "_resources" in values:
                if not line.startswith("- "):
                    raise SiweError(f"a resource line must start with '- ': {line!r}")
                resources.append(line[2:])
                continue
            key, sep, value = line.partition(": ")
            if not sep or key not in FIELDS:
                if line == "":
                    continue
                raise SiweError(f"unexpected line in the message: {line[:80]!r}")
            if FIELDS[key] in values:
                raise SiweError(f"{key} given twice")
            values[FIELDS[key]] = value
        for needed in ("uri", "version", "chain_id", "nonce", "issued_at"):
            if needed not in values:
                raise SiweError(f"the message has no {needed.replace('_', ' ')}")
        if values["version"] != "1":
            raise SiweError("Version must be 1")
        if not values["chain_id"].isdigit():
            raise SiweError("Chain ID must be a number")
        if not NONCE_RE.match(values["nonce"]):
            raise SiweError("Nonce must be at least 8 alphanumeric characters")
        return SiweMessage(
            domain=domain,
            address=address,
            uri=values["uri"],
            version=values["version"],
            chain_id=int(values["chain_id"]),
            nonce=values["nonce"],
            issued_at=_time(values["issued_at"], "Issued At"),
            statement=statement,
            expiration_time=_time(values["expiration_time"], "Expiration Time")
            if "expiration_time" in values
            else None,
            not_before=_time(values["not_before"], "Not Before") if "not_before" in values else None,
            request_id=values.get("request_id", ""),
            resources=resources,
        )


def recover_address(message: str, signature: bytes) -> str:
    """The checksummed address whose key made `signature` (r, s, v) over the message."""
    if len(signature) != 65:
        raise SiweError("the signature must be 65 bytes (r, s, v)")
    v = signature[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1):
        raise SiweError("the signature's recovery id (v) must be 27 or 28")
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v]), eip191_hash(message), hasher=None
        )
    except Exception:  # coincurve raises plain Exceptions for unrecoverable signatures
        raise SiweError("the signature does not verify") from None
    raw = public.format(compressed=False)[1:]
    return checksum("0x" + keccak256(raw)[-20:].hex())
