"""Sign-up and login: a password becomes a session (a short-lived access token)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from coordd.core.errors import Unauthenticated, Violations
from coordd.core.principal import parse_roles
from coordd.domain.auth.users import check_email, create_user
from coordd.runtime import Runtime
from coordd.store.auth import queries
from coordd.store.auth.models import User


@dataclass(frozen=True)
class Session:
    user: User
    access_token: str
    expire_time: datetime


def sign_up(rt: Runtime, email: str, password: str, display_name: str, roles: list[str]) -> Session:
    user = create_user(rt, email, password, display_name, roles, self_service=True)
    token, expire = rt.tokens.issue(user.id, sorted(parse_roles(user.roles)), rt.now())
    return Session(user, token, expire)


def login(rt: Runtime, email: str, password: str) -> Session:
    v = Violations()
    check_email(v, email)
    if not password:
        v.add("password", "required")
    v.raise_if_any()
    user = queries.user_by_email(email)
    ok = rt.passwords.verify(user.password_hash if user else None, password)
    if not ok or user is None or user.disabled:
        raise Unauthenticated("wrong email or password", reason="BAD_CREDENTIALS")
    token, expire = rt.tokens.issue(user.id, sorted(parse_roles(user.roles)), rt.now())
    return Session(user, token, expire)
