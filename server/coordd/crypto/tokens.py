"""Short-lived access tokens (JWT, HS256 only) and API key secrets.

Verification is done here rather than through PyJWT: every authenticated RPC verifies a
token, and PyJWT's key-format probing cost ~100 µs per call (see docs/PERFORMANCE.md).
The format is standard (RFC 7519, compact JWS, alg HS256), so any JWT library reads it;
only HS256 is accepted, which rules out algorithm-confusion attacks by construction.

A token that verified is remembered (by its exact text, per AccessTokens, so per secret) until
it expires: the next call with it skips the base64, JSON and HMAC work. Its expiry is checked
on every hit; revocation is not a property of the token (see coordd.domain.auth.sessions).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from coordd.core.memo import remember

API_KEY_PREFIX = "ck_"
_ISSUER = "coordd"
_HEADER = {"alg": "HS256", "typ": "JWT"}
_MAX_REMEMBERED = 10_000


@dataclass(frozen=True)
class TokenClaims:
    user_id: str
    roles: tuple[str, ...]
    expire_time: datetime
    # `jti`: this token's id (audit rows name it; never a secret on its own).
    token_id: str = ""
    # The user's revocation epoch when the token was issued: a token whose epoch is behind
    # the user's current one was revoked (see coordd.domain.auth.sessions).
    epoch: int = 0


class TokenError(Exception):
    pass


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AccessTokens:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self._ttl = timedelta(seconds=ttl_s)
        self._header = _b64encode(json.dumps(_HEADER, separators=(",", ":")).encode())
        # token -> (its claims, its expiry as a Unix time): tokens that verified.
        self._verified: dict[str, tuple[TokenClaims, float]] = {}

    def _sign(self, signing_input: bytes) -> bytes:
        return hmac.new(self._secret, signing_input, hashlib.sha256).digest()

    def issue(self, user_id: str, roles: list[str], now: datetime, *, epoch: int = 0) -> tuple[str, datetime]:
        expire = now + self._ttl
        payload: dict[str, object] = {
            "iss": _ISSUER,
            "sub": user_id,
            "roles": roles,
            "iat": int(now.timestamp()),
            "exp": int(expire.timestamp()),
            "jti": secrets.token_hex(12),
        }
        if epoch:
            payload["ep"] = epoch
        body = _b64encode(json.dumps(payload, separators=(",", ":")).encode())
        signing_input = f"{self._header}.{body}"
        token = f"{signing_input}.{_b64encode(self._sign(signing_input.encode()))}"
        return token, expire.replace(microsecond=0)

    def verify(self, token: str, now: datetime | None = None) -> TokenClaims:
        if now is None:
            hit = self._verified.get(token)
            if hit is not None:
                if hit[1] > time.time():
                    return hit[0]
                raise TokenError("access token expired: log in again")
        claims = self._verify(token, now)
        if now is None:
            remember(self._verified, token, (claims, claims.expire_time.timestamp()), _MAX_REMEMBERED)
        return claims

    def _verify(self, token: str, now: datetime | None) -> TokenClaims:
        invalid = TokenError("access token is not valid")
        parts = token.split(".")
        if len(parts) != 3:
            raise invalid
        header_b64, payload_b64, signature_b64 = parts
        try:
            header = json.loads(_b64decode(header_b64))
            signature = _b64decode(signature_b64)
        except (ValueError, binascii.Error):
            raise invalid from None
        if not isinstance(header, dict) or header.get("alg") != "HS256":
            raise invalid
        if not hmac.compare_digest(self._sign(f"{header_b64}.{payload_b64}".encode()), signature):
            raise invalid
        try:
            payload = json.loads(_b64decode(payload_b64))
        except (ValueError, binascii.Error):
            raise invalid from None
        if not isinstance(payload, dict) or payload.get("iss") != _ISSUER:
            raise invalid
        sub, exp, roles = payload.get("sub"), payload.get("exp"), payload.get("roles") or []
        if not isinstance(sub, str) or not sub or not isinstance(exp, int) or not isinstance(roles, list):
            raise invalid
        jti, epoch = payload.get("jti", ""), payload.get("ep", 0)
        if not isinstance(jti, str) or not isinstance(epoch, int):
            raise invalid
        current = (now or datetime.now(UTC)).timestamp()
        if exp <= current:
            raise TokenError("access token expired: log in again")
        return TokenClaims(
            user_id=sub,
            roles=tuple(str(r) for r in roles),
            expire_time=datetime.fromtimestamp(exp, UTC),
            token_id=jti,
            epoch=epoch,
        )


def new_api_key() -> tuple[str, str, str]:
    """Returns (secret, display prefix, sha256 hex of the secret)."""
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return secret, secret[:10], hash_api_key(secret)


def hash_api_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
