"""Users: the input rules every account form shares, creating a user, reading one."""

from __future__ import annotations

import re

from coordd.core.errors import AlreadyExists, NotFound, PermissionDenied, Violations
from coordd.core.principal import ALL_ROLES, SELF_SERVICE_ROLES, format_roles
from coordd.runtime import Runtime
from coordd.store.auth import queries
from coordd.store.auth.models import User

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
MIN_PASSWORD = 10
MAX_PASSWORD = 1024


def check_email(v: Violations, email: str, path: str = "email") -> None:
    if not email:
        v.add(path, "required")
    elif len(email) > 254 or not EMAIL_RE.match(email):
        v.add(path, "not a valid email address")


def check_password(v: Violations, password: str, path: str = "password") -> None:
    if len(password) < MIN_PASSWORD:
        v.add(path, f"at least {MIN_PASSWORD} characters")
    elif len(password) > MAX_PASSWORD:
        v.add(path, f"at most {MAX_PASSWORD} characters")


def check_display_name(v: Violations, name: str, path: str = "display_name") -> None:
    if len(name) > 100:
        v.add(path, "at most 100 characters")
    elif name != name.strip():
        v.add(path, "must not start or end with white space")


def check_roles(v: Violations, roles: list[str], path: str = "roles") -> None:
    for index, role in enumerate(roles):
        if role not in ALL_ROLES:
            v.add(f"{path}[{index}]", "unknown role")


def checked_roles(
    email: str, password: str, display_name: str, roles: list[str], *, self_service: bool
) -> set[str]:
    """Checks a new account's fields; returns the roles it gets."""
    v = Violations()
    check_email(v, email)
    check_password(v, password)
    check_display_name(v, display_name)
    check_roles(v, roles)
    v.raise_if_any()
    wanted = set(roles) or {"participant"}
    if self_service and not wanted <= SELF_SERVICE_ROLES:
        elevated = ", ".join(sorted(wanted - SELF_SERVICE_ROLES))
        raise PermissionDenied(
            f"sign-up cannot grant {elevated}: ask an admin", reason="ROLE_NOT_SELF_SERVICE"
        )
    return wanted


def create_user(
    rt: Runtime,
    email: str,
    password: str,
    display_name: str,
    roles: list[str],
    *,
    self_service: bool,
) -> User:
    """Creates a user from this thread (the CLI's and tests' way; SignUp hashes in the pool)."""
    wanted = checked_roles(email, password, display_name, roles, self_service=self_service)
    # Hash before the transaction: a memory-hard KDF must not hold the write lock.
    password_hash = rt.passwords.hash(password)
    return insert_user(rt, email, password_hash, display_name, wanted)


def insert_user(rt: Runtime, email: str, password_hash: str, display_name: str, roles: set[str]) -> User:
    """Stores a user whose password is hashed already."""
    try:
        with rt.store.write() as tx:
            user = queries.insert_user(
                email, display_name or email.split("@", 1)[0], password_hash, format_roles(roles), tx.now
            )
            tx.emit("auth.user.created", f"users/{user.id}", {"roles": sorted(roles)})
    except queries.EmailTaken:
        raise AlreadyExists(
            "a user with this email already exists", reason="EMAIL_TAKEN", metadata={"email": email}
        ) from None
    return user


def get_user(user_id: str) -> User:
    user = queries.user_by_id(user_id)
    if user is None:
        raise NotFound(f"users/{user_id} not found", metadata={"resource": f"users/{user_id}"})
    return user
