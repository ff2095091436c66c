"""Short-lived access tokens (JWT, HS256) and API key secrets."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

API_KEY_PREFIX = "ck_"
_ISSUER = "coordd"


@dataclass(frozen=True)
class TokenClaims:
    user_id: str
    roles: tuple[str, ...]
    expire_time: datetime


class TokenError(Exception):
    pass


class AccessTokens:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self._ttl = timedelta(seconds=ttl_s)

    def issue(self, user_id: str, roles: list[str], now: datetime) -> tuple[str, datetime]:
        expire = now + self._ttl
        payload = {
            "iss": _ISSUER,
            "sub": user_id,
            "roles": roles,
            "iat": int(now.timestamp()),
            "exp": int(expire.timestamp()),
        }
        return jwt.encode(payload, self._secret, algorithm="HS256"), expire.replace(microsecond=0)

    def verify(self, token: str) -> TokenClaims:
        try:
            payload = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=_ISSUER,
                options={"require": ["exp", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("access token expired: log in again") from None
        except jwt.PyJWTError:
            raise TokenError("access token is not valid") from None

        return TokenClaims(
            user_id=str(payload["sub"]),
            roles=tuple(payload.get("roles") or ()),
            expire_time=datetime.fromtimestamp(payload["exp"], UTC),
        )


def new_api_key() -> tuple[str, str, str]:
    """Returns (secret, display prefix, sha256 hex of the secret)."""
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return secret, secret[:10], hash_api_key(secret)


def hash_api_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
