"""Account control: admins disable and enable users, change their roles and reset their
passwords; users change their own password; a user's tokens are revoked all at once.

Each change bumps what sessions.py checks on every call (disabled, revocation epoch,
roles), writes an audit row in the same transaction, and emits `auth.user.access` so other
replicas learn of it at once. Roles, password and revocation changes bump the epoch: the
user's access tokens stop working (they carry the old roles); API keys keep working with
at most the new roles. Disabling stops both at once.
"""

from __future__ import annotations

from coordd.core.errors import FailedPrecondition, NotFound, PermissionDenied, Violations
from coordd.core.principal import ADMIN, Principal, format_roles, parse_roles
from coordd.domain.auth.audit import FAILED, actor_of, record, record_by
from coordd.domain.auth.login import Session, issue_session
from coordd.domain.auth.sessions import ACCESS_EVENT, Access, access_changed, access_event_data, state_of
from coordd.domain.auth.throttle import peer_address
from coordd.domain.auth.users import check_password, check_roles
from coordd.runtime import Runtime
from coordd.store.auth import queries
from coordd.store.auth.models import User


def _change(
    rt: Runtime,
    who: Principal,
    user_id: str,
    action: str,
    peer: str,
    *,
    disabled: bool | None = None,
    roles: set[str] | None = None,
    password_hash: str | None = None,
    bump_epoch: bool = False,
    **detail: object,
) -> User:
    """The one write every account change goes through."""
    with rt.store.write() as tx:
        user = queries.lock_user(user_id)
        if user is None:
            raise NotFound(f"users/{user_id} not found", metadata={"resource": f"users/{user_id}"})
        if disabled is not None:
            user.disabled = disabled
        if roles is not None:
            detail["roles_before"] = sorted(parse_roles(user.roles))
            detail["roles_after"] = sorted(roles)
            user.roles = format_roles(roles)
        if password_hash is not None:
            user.password_hash = password_hash
        if bump_epoch:
            user.token_epoch += 1
        user.auth_change_time = tx.now
        queries.save(user)
        access = Access(bool(user.disabled), user.token_epoch, parse_roles(user.roles))
        tx.emit(ACCESS_EVENT, f"users/{user.id}", access_event_data(access))
        record_by(rt, who, action, f"users/{user.id}", peer, **detail)
    access_changed(rt, user.id, access)
    return user


def _not_self(who: Principal, user_id: str, what: str) -> None:
    if who.user_id == user_id:
        raise FailedPrecondition(f"an admin cannot {what} their own account", reason="SELF_ACCOUNT")


def set_disabled(rt: Runtime, who: Principal, user_id: str, disabled: bool, peer: str) -> User:
    if disabled:
        _not_self(who, user_id, "disable")
    action = "auth.user.disable" if disabled else "auth.user.enable"
    return _change(rt, who, user_id, action, peer, disabled=disabled)


def set_roles(rt: Runtime, who: Principal, user_id: str, roles: list[str], peer: str) -> User:
    v = Violations()
    if not roles:
        v.add("roles", "at least one role")
    check_roles(v, roles)
    v.raise_if_any()
    if who.user_id == user_id and ADMIN not in roles:
        raise FailedPrecondition("an admin cannot remove their own admin role", reason="SELF_ACCOUNT")
    return _change(rt, who, user_id, "auth.user.set_roles", peer, roles=set(roles), bump_epoch=True)


async def reset_password(rt: Runtime, who: Principal, user_id: str, new_password: str, peer: str) -> User:
    v = Violations()
    check_password(v, new_password, "new_password")
    v.raise_if_any()
    password_hash = await rt.passwords.hash_in_pool(new_password)
    return await rt.run(
        _change,
        rt,
        who,
        user_id,
        "auth.user.reset_password",
        peer,
        password_hash=password_hash,
        bump_epoch=True,
    )


async def change_password(
    rt: Runtime, who: Principal, current_password: str, new_password: str, peer: str
) -> Session:
    """The caller's own password; needs the current one (throttled like a login). Every
    other session of the user ends; the reply carries a fresh token."""
    v = Violations()
    if not current_password:
        v.add("current_password", "required")
    check_password(v, new_password, "new_password")
    v.raise_if_any()
    throttle = state_of(rt).throttle
    account, address = f"users/{who.user_id}", peer_address(peer)
    throttle.begin(account, address, rt.now().timestamp())
    user = await rt.run(queries.user_by_id, who.user_id)
    if user is None:
        raise NotFound(f"users/{who.user_id} not found")
    if not await rt.passwords.verify_in_pool(user.password_hash, current_password):
        await rt.run(
            record,
            rt,
            "auth.user.change_password",
            actor=actor_of(who),
            credential=who.kind,
            target=actor_of(who),
            peer=peer,
            outcome=FAILED,
            detail={"reason": "wrong current password"},
        )
        raise PermissionDenied("the current password is wrong", reason="WRONG_PASSWORD")
    throttle.succeeded(account, address)
    password_hash = await rt.passwords.hash_in_pool(new_password)
    user = await rt.run(
        _change,
        rt,
        who,
        who.user_id,
        "auth.user.change_password",
        peer,
        password_hash=password_hash,
        bump_epoch=True,
    )
    return issue_session(rt, user)


def revoke_tokens(rt: Runtime, who: Principal, user_id: str, peer: str) -> User:
    """Every access token issued to the user so far stops working (API keys do not)."""
    if who.user_id != user_id and not who.is_admin:
        # Someone else's account is reported as missing: existence is not leaked.
        raise NotFound(f"users/{user_id} not found", metadata={"resource": f"users/{user_id}"})
    return _change(rt, who, user_id, "auth.user.revoke_tokens", peer, bump_epoch=True)
