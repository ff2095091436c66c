"""Users, sign-up and login, API keys, and turning a credential into a Principal."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import peewee

from coordd.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Violations,
)
from coordd.core.principal import (
    ALL_ROLES,
    SELF_SERVICE_ROLES,
    Principal,
    format_roles,
    parse_roles,
)
from coordd.crypto.tokens import API_KEY_PREFIX, TokenError, hash_api_key, new_api_key
from coordd.runtime import Runtime
from coordd.store.models import ApiKey, User
from coordd.store.paging import Page, PageRequest, keyset_page

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024


@dataclass(frozen=True)
class Session:
    user: User
    access_token: str
    expire_time: datetime


def _check_email(v: Violations, email: str, path: str = "email") -> None:
    if not email:
        v.add(path, "required")
    elif len(email) > 254 or not EMAIL_RE.match(email):
        v.add(path, "not a valid email address")


def _check_display_name(v: Violations, name: str, path: str = "display_name") -> None:
    if len(name) > 100:
        v.add(path, "at most 100 characters")
    elif name != name.strip():
        v.add(path, "must not start or end with white space")


def _check_roles(v: Violations, roles: list[str], path: str = "roles") -> None:
    for index, role in enumerate(roles):
        if role not in ALL_ROLES:
            v.add(f"{path}[{index}]", "unknown role")


def create_user(
    rt: Runtime,
    email: str,
    password: str,
    display_name: str,
    roles: list[str],
    *,
    self_service: bool,
) -> User:
    v = Violations()
    _check_email(v, email)
    if len(password) < MIN_PASSWORD:
        v.add("password", f"at least {MIN_PASSWORD} characters")
    elif len(password) > MAX_PASSWORD:
        v.add("password", f"at most {MAX_PASSWORD} characters")
    _check_display_name(v, display_name)
    _check_roles(v, roles)
    v.raise_if_any()
    wanted = set(roles) or {"participant"}
    if self_service and not wanted <= SELF_SERVICE_ROLES:
        elevated = ", ".join(sorted(wanted - SELF_SERVICE_ROLES))
        raise PermissionDenied(
            f"sign-up cannot grant {elevated}: ask an admin", reason="ROLE_NOT_SELF_SERVICE"
        )
    # Hash before the transaction: a memory-hard KDF must not hold the write lock.
    password_hash = rt.passwords.hash(password)
    try:
        with rt.store.write() as tx:
            user = User.create(
                email=email,
                email_key=email.lower(),
                display_name=display_name or email.split("@", 1)[0],
                password_hash=password_hash,
                roles=format_roles(wanted),
                create_time=tx.now,
            )
            tx.emit("auth.user.created", f"users/{user.id}", {"roles": sorted(wanted)})
    except peewee.IntegrityError:
        raise AlreadyExists(
            "a user with this email already exists", reason="EMAIL_TAKEN", metadata={"email": email}
        ) from None
    return user


def sign_up(rt: Runtime, email: str, password: str, display_name: str, roles: list[str]) -> Session:
    user = create_user(rt, email, password, display_name, roles, self_service=True)
    token, expire = rt.tokens.issue(user.id, sorted(parse_roles(user.roles)), rt.now())
    return Session(user, token, expire)


def login(rt: Runtime, email: str, password: str) -> Session:
    v = Violations()
    _check_email(v, email)
    if not password:
        v.add("password", "required")
    v.raise_if_any()
    user = User.get_or_none(User.email_key == email.lower())
    ok = rt.passwords.verify(user.password_hash if user else None, password)
    if not ok or user is None or user.disabled:
        raise Unauthenticated("wrong email or password", reason="BAD_CREDENTIALS")
    token, expire = rt.tokens.issue(user.id, sorted(parse_roles(user.roles)), rt.now())
    return Session(user, token, expire)


def get_user(user_id: str) -> User:
    user = User.get_or_none(User.id == user_id)
    if user is None:
        raise NotFound(f"users/{user_id} not found", metadata={"resource": f"users/{user_id}"})
    return user


def create_api_key(
    rt: Runtime, who: Principal, display_name: str, roles: list[str], expire_time: datetime | None
) -> tuple[ApiKey, str]:
    v = Violations()
    if not display_name:
        v.add("display_name", "required")
    _check_display_name(v, display_name)
    _check_roles(v, roles)
    if expire_time is not None and expire_time <= rt.now():
        v.add("expire_time", "must be in the future")
    v.raise_if_any()
    if who.kind == "api_key":
        raise PermissionDenied("API keys are created with a login token, not another API key")
    wanted = set(roles) or set(who.roles)
    if not wanted <= who.roles:
        raise PermissionDenied("an API key can only carry roles its owner has", reason="ROLE_NOT_HELD")
    secret, prefix, digest = new_api_key()
    with rt.store.write() as tx:
        key = ApiKey.create(
            user=who.user_id,
            display_name=display_name,
            prefix=prefix,
            secret_hash=digest,
            roles=format_roles(wanted),
            create_time=tx.now,
            expire_time=expire_time,
        )
        tx.emit("auth.api_key.created", f"apiKeys/{key.id}", {"owner": f"users/{who.user_id}"})
    return key, secret


def list_api_keys(who: Principal, page: PageRequest, show_revoked: bool) -> Page[ApiKey]:
    query = ApiKey.select().where(ApiKey.user == who.user_id)
    if not show_revoked:
        query = query.where(ApiKey.revoke_time.is_null())
    return keyset_page(query, ApiKey.id, page, filters={"revoked": show_revoked, "u": who.user_id})


def revoke_api_key(rt: Runtime, who: Principal, key_id: str) -> ApiKey:
    with rt.store.write() as tx:
        key = ApiKey.get_or_none(ApiKey.id == key_id)
        if key is None or (key.user_id != who.user_id and not who.is_admin):
            # Someone else's key is reported as missing: existence is not leaked.
            raise NotFound(f"apiKeys/{key_id} not found", metadata={"resource": f"apiKeys/{key_id}"})
        if key.revoke_time is None:
            key.revoke_time = tx.now
            key.save()
            tx.emit("auth.api_key.revoked", f"apiKeys/{key.id}", {})
    forget_api_key(key.secret_hash)
    return key


# -- authentication --------------------------------------------------------------------

_api_key_cache: dict[str, tuple[float, Principal | None]] = {}
_api_key_cache_lock = threading.Lock()


def forget_api_key(secret_hash: str) -> None:
    with _api_key_cache_lock:
        _api_key_cache.pop(secret_hash, None)


def authenticate_token(rt: Runtime, token: str) -> Principal:
    """JWTs are verified without a database round trip; API keys hit a short cache."""
    if token.startswith(API_KEY_PREFIX):
        raise FailedPrecondition("internal: API keys are resolved by authenticate_api_key")
    try:
        # Wall-clock time, not rt.now(): token expiry is a security property of real time.
        claims = rt.tokens.verify(token)
    except TokenError as exc:
        raise Unauthenticated(str(exc), reason="BAD_TOKEN") from None
    return Principal(user_id=claims.user_id, roles=frozenset(claims.roles), kind="token")


def authenticate_api_key(rt: Runtime, secret: str) -> Principal:
    digest = hash_api_key(secret)
    with _api_key_cache_lock:
        hit = _api_key_cache.get(digest)
    principal = hit[1] if hit is not None and hit[0] > time.monotonic() else _load_api_key(rt, digest)
    if principal is None:
        raise Unauthenticated("API key is not valid, revoked or expired", reason="BAD_API_KEY")
    return principal


def _load_api_key(rt: Runtime, digest: str) -> Principal | None:
    now = rt.now()
    key = ApiKey.select(ApiKey, User).join(User).where(ApiKey.secret_hash == digest).first()
    principal: Principal | None = None
    valid_until = time.monotonic() + rt.settings.api_key_cache_ttl_s
    if (
        key is not None
        and key.revoke_time is None
        and not key.user.disabled
        and (key.expire_time is None or key.expire_time > now)
    ):
        # A key never carries more than its owner holds now.
        roles = parse_roles(key.roles) & parse_roles(key.user.roles)
        principal = Principal(user_id=key.user_id, roles=roles, kind="api_key", api_key_id=key.id)
        if key.expire_time is not None:
            valid_until = min(valid_until, time.monotonic() + (key.expire_time - now).total_seconds())
    with _api_key_cache_lock:
        if len(_api_key_cache) > 100_000:
            _api_key_cache.clear()
        _api_key_cache[digest] = (valid_until, principal)
    return principal
