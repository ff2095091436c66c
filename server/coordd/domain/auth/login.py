"""Sign-up and login: a password becomes a session (a short-lived access token).

Passwords are hashed and verified in the password pool (`rt.passwords`), outside any
database transaction and off the database pool. A login first passes the throttle
(throttle.py): a refused attempt reads nothing and hashes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from coordd.core.errors import Unauthenticated, Violations
from coordd.core.principal import parse_roles
from coordd.domain.auth.audit import FAILED, LOGIN, OK, record
from coordd.domain.auth.sessions import state_of
from coordd.domain.auth.throttle import peer_address
from coordd.domain.auth.users import check_email, checked_roles, insert_user
from coordd.runtime import Runtime
from coordd.store.auth import queries
from coordd.store.auth.models import User


@dataclass(frozen=True)
class Session:
    user: User
    access_token: str
    expire_time: datetime


def issue_session(rt: Runtime, user: User) -> Session:
    token, expire = rt.tokens.issue(
        user.id, sorted(parse_roles(user.roles)), rt.now(), epoch=user.token_epoch
    )
    return Session(user, token, expire)


async def sign_up(rt: Runtime, email: str, password: str, display_name: str, roles: list[str]) -> Session:
    wanted = checked_roles(email, password, display_name, roles, self_service=True)
    password_hash = await rt.passwords.hash_in_pool(password)
    user = await rt.run(insert_user, rt, email, password_hash, display_name, wanted)
    return issue_session(rt, user)


async def login(rt: Runtime, email: str, password: str, peer: str = "") -> Session:
    v = Violations()
    check_email(v, email)
    if not password:
        v.add("password", "required")
    v.raise_if_any()
    throttle = state_of(rt).throttle
    account, address = email.lower(), peer_address(peer)
    throttle.begin(account, address, rt.now().timestamp())
    user = await rt.run(queries.user_by_email, email)
    ok = await rt.passwords.verify_in_pool(user.password_hash if user else None, password)
    if not ok or user is None or user.disabled:
        why = "unknown email" if user is None else "disabled" if ok else "wrong password"
        await rt.run(_audit_login, rt, user, email, peer, FAILED, why)
        raise Unauthenticated("wrong email or password", reason="BAD_CREDENTIALS")
    throttle.succeeded(account, address)
    session = issue_session(rt, user)
    await rt.run(_audit_login, rt, user, email, peer, OK, "")
    return session


def _audit_login(rt: Runtime, user: User | None, email: str, peer: str, outcome: str, why: str) -> None:
    detail = {"email": email}
    if why:
        detail["reason"] = why
    actor = f"users/{user.id}" if user is not None else ""
    record(
        rt,
        LOGIN,
        actor=actor,
        credential="password",
        target=actor,
        peer=peer,
        outcome=outcome,
        detail=detail,
    )
