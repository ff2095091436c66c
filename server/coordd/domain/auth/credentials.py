"""Turning a credential (access token or API key) into a Principal, on every call."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import datetime

from coordd.core.errors import FailedPrecondition, Unauthenticated
from coordd.core.memo import remember
from coordd.core.principal import API_KEY, NODE_KEY, TOKEN, Principal, parse_roles
from coordd.crypto.tokens import API_KEY_PREFIX, TokenClaims, TokenError, hash_api_key
from coordd.domain.auth.sessions import AuthState, fresh_state, state_of
from coordd.runtime import Runtime
from coordd.store.auth import queries

# digest -> (valid until, monotonic; the principal or None; the key's expire time).
_api_key_cache: dict[str, tuple[float, Principal | None, datetime | None]] = {}
_api_key_cache_lock = threading.Lock()


# access token -> the Principal its verified claims make (the same token always makes the same
# one; the token is still verified, expiry included, on every call).
_token_principals: dict[str, Principal] = {}
_MAX_TOKEN_PRINCIPALS = 10_000


def _token_principal(credential: str, claims: TokenClaims) -> Principal:
    principal = _token_principals.get(credential)
    if principal is None:
        principal = Principal(user_id=claims.user_id, roles=frozenset(claims.roles), kind=TOKEN)
        remember(_token_principals, credential, principal, _MAX_TOKEN_PRINCIPALS)
    return principal


def forget_api_key(secret_hash: str) -> None:
    with _api_key_cache_lock:
        _api_key_cache.pop(secret_hash, None)


async def authenticate(rt: Runtime, credential: str) -> Principal:
    """The caller behind an access token or API key, as the user's access stands now
    (see sessions): disabled users, revoked tokens and removed roles are refused at once."""
    state = await fresh_state(rt)
    claims: TokenClaims | None = None
    if credential.startswith(API_KEY_PREFIX):
        principal = await rt.run(authenticate_api_key, rt, credential)
    else:
        claims = _verify(rt, credential)
        principal = _token_principal(credential, claims)
    return _as_access_stands(state, principal, claims)


def authenticate_now(rt: Runtime, credential: str) -> Principal | None:
    """`authenticate` without leaving the event loop, when nothing needs the database: None
    when the access map was never loaded or an API key is not in the cache (the caller then
    awaits `authenticate`). The same checks, the same errors."""
    state = state_of(rt)
    if not state.loaded:
        return None
    if time.monotonic() >= state.fresh_until:
        state.start_refresh(rt)  # in the background, as fresh_state does
    claims: TokenClaims | None = None
    if credential.startswith(API_KEY_PREFIX):
        hit, principal = _cached_api_key(rt, hash_api_key(credential))
        if not hit:
            return None
        if principal is None:
            raise _bad_api_key()
    else:
        claims = _verify(rt, credential)
        principal = _token_principal(credential, claims)
    return _as_access_stands(state, principal, claims)


def _as_access_stands(state: AuthState, principal: Principal, claims: TokenClaims | None) -> Principal:
    access = state.access.get(principal.user_id)
    if access is None:
        return principal
    if access.disabled:
        raise Unauthenticated("this account is disabled", reason="ACCOUNT_DISABLED")
    if claims is not None and claims.epoch < access.epoch:
        raise Unauthenticated("this access token was revoked: log in again", reason="TOKEN_REVOKED")
    roles = principal.roles & access.roles
    if roles == principal.roles:
        return principal
    return dataclasses.replace(principal, roles=roles)


def _verify(rt: Runtime, token: str) -> TokenClaims:
    try:
        # Wall-clock time, not rt.now(): token expiry is a security property of real time.
        return rt.tokens.verify(token)
    except TokenError as exc:
        raise Unauthenticated(str(exc), reason="BAD_TOKEN") from None


def authenticate_token(rt: Runtime, token: str) -> Principal:
    """JWTs are verified without a database round trip (revocation: see `authenticate`)."""
    if token.startswith(API_KEY_PREFIX):
        raise FailedPrecondition("internal: API keys are resolved by authenticate_api_key")
    claims = _verify(rt, token)
    return Principal(user_id=claims.user_id, roles=frozenset(claims.roles), kind=TOKEN)


def parse_scopes(text: str) -> frozenset[str]:
    return frozenset(s for s in text.split(",") if s)


def _bad_api_key() -> Unauthenticated:
    return Unauthenticated("API key is not valid, revoked or expired", reason="BAD_API_KEY")


def _cached_api_key(rt: Runtime, digest: str) -> tuple[bool, Principal | None]:
    """(True, the principal or None for a refused key) from the cache, else (False, None)."""
    with _api_key_cache_lock:
        hit = _api_key_cache.get(digest)
    if hit is None or hit[0] <= time.monotonic():
        return False, None
    principal, expire_time = hit[1], hit[2]
    # The cache outlives nothing: an expiry (a rotated-out node key) is checked against
    # the daemon's clock on every hit.
    if expire_time is not None and expire_time <= rt.now():
        principal = None
    return True, principal


def authenticate_api_key(rt: Runtime, secret: str) -> Principal:
    digest = hash_api_key(secret)
    hit, principal = _cached_api_key(rt, digest)
    if not hit:
        principal = _load_api_key(rt, digest)
    if principal is None:
        raise _bad_api_key()
    return principal


def _load_api_key(rt: Runtime, digest: str) -> Principal | None:
    now = rt.now()
    key = queries.api_key_with_owner(digest)
    principal: Principal | None = None
    valid_until = time.monotonic() + rt.settings.api_key_cache_ttl_s
    if (
        key is not None
        and key.revoke_time is None
        and not key.user_disabled
        and (key.expire_time is None or key.expire_time > now)
    ):
        # A key never carries more than its owner holds now.
        roles = parse_roles(key.roles) & parse_roles(key.user_roles)
        principal = Principal(
            user_id=key.user_id,
            roles=roles,
            kind=NODE_KEY if key.node_id else API_KEY,
            api_key_id=key.id,
            scopes=parse_scopes(key.scopes),
        )
        if key.expire_time is not None:
            valid_until = min(valid_until, time.monotonic() + (key.expire_time - now).total_seconds())
    with _api_key_cache_lock:
        if len(_api_key_cache) > 100_000:
            _api_key_cache.clear()
        _api_key_cache[digest] = (valid_until, principal, None if key is None else key.expire_time)
    return principal
