"""The auth rules' queries: users by email or id, API keys by owner or secret digest, the
users whose access changed, and the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import peewee

from coordd.core.paging import Page, PageRequest
from coordd.store.auth.models import ApiKey, AuditEvent, User
from coordd.store.paging import keyset_page


class EmailTaken(Exception):
    """The email is taken (compared case-insensitively); the transaction must roll back."""


def insert_user(email: str, display_name: str, password_hash: str, roles: str, create_time: datetime) -> User:
    try:
        return User.create(
            email=email,
            email_key=email.lower(),
            display_name=display_name,
            password_hash=password_hash,
            roles=roles,
            create_time=create_time,
        )
    except peewee.IntegrityError:
        raise EmailTaken(email) from None


def user_by_email(email: str) -> User | None:
    return User.get_or_none(User.email_key == email.lower())


def user_by_id(user_id: str) -> User | None:
    return User.get_or_none(User.id == user_id)


def insert_api_key(
    user_id: str,
    display_name: str,
    prefix: str,
    secret_hash: str,
    roles: str,
    create_time: datetime,
    expire_time: datetime | None,
    scopes: str = "",
) -> ApiKey:
    return ApiKey.create(
        user=user_id,
        display_name=display_name,
        prefix=prefix,
        secret_hash=secret_hash,
        roles=roles,
        create_time=create_time,
        expire_time=expire_time,
        scopes=scopes,
    )


def api_key_by_id(key_id: str) -> ApiKey | None:
    return ApiKey.get_or_none(ApiKey.id == key_id)


class KeyWithOwner(NamedTuple):
    """What authenticating an API key needs: the key and its owner's access."""

    id: str
    user_id: str
    roles: str
    scopes: str
    node_id: str | None
    expire_time: datetime | None
    revoke_time: datetime | None
    user_roles: str
    user_disabled: bool


_KEY_WITH_OWNER = (
    'SELECT k."id", k."user_id", k."roles", k."scopes", k."node_id", k."expire_time", k."revoke_time", '
    'u."roles", u."disabled" FROM "{keys}" AS k JOIN "{users}" AS u ON u."id" = k."user_id" '
    'WHERE k."secret_hash" = {p} LIMIT 1'
)


def api_key_with_owner(secret_hash: str) -> KeyWithOwner | None:
    """The key whose secret has this digest, with its owner's access, by fixed SQL text (paid
    once per new call's key; a fleet reconnecting opens thousands of streams a minute, and
    peewee's query building and model rows cost several times the read)."""
    db = ApiKey._meta.database
    sql = _KEY_WITH_OWNER.format(keys=ApiKey._meta.table_name, users=User._meta.table_name, p=db.param)
    row = db.execute_sql(sql, (secret_hash,)).fetchone()
    if row is None:
        return None
    key_id, user_id, roles, scopes, node_id, expire, revoke, user_roles, disabled = row
    ts = ApiKey.expire_time.python_value
    return KeyWithOwner(
        key_id, user_id, roles, scopes or "", node_id, ts(expire), ts(revoke), user_roles, bool(disabled)
    )


def api_keys_page(user_id: str, page: PageRequest, show_revoked: bool) -> Page[ApiKey]:
    query = ApiKey.select().where(ApiKey.user == user_id)
    if not show_revoked:
        query = query.where(ApiKey.revoke_time.is_null())
    return keyset_page(query, ApiKey.id, page, filters={"revoked": show_revoked, "u": user_id})


def save(row: User | ApiKey) -> None:
    row.save()


# -- account control ------------------------------------------------------------------


class AccessRow(NamedTuple):
    """What every call's authentication needs to know about a user whose access changed."""

    user_id: str
    disabled: bool
    token_epoch: int
    roles: str


def lock_user(user_id: str) -> User | None:
    """The user row, locked for the rest of the transaction on PostgreSQL (SQLite writers
    are serialized already)."""
    query = User.select().where(User.id == user_id)
    if isinstance(User._meta.database.obj, peewee.PostgresqlDatabase):
        query = query.for_update()
    return query.first()


def users_changed_since(since: datetime | None) -> list[AccessRow]:
    """Every user whose access was ever changed (since=None), or changed at or after `since`."""
    query = User.select(User.id, User.disabled, User.token_epoch, User.roles)
    if since is None:
        query = query.where(User.auth_change_time.is_null(False))
    else:
        query = query.where(User.auth_change_time >= since)
    return [AccessRow(u.id, bool(u.disabled), int(u.token_epoch), u.roles) for u in query]


def api_key_hashes(user_id: str) -> list[str]:
    return [k.secret_hash for k in ApiKey.select(ApiKey.secret_hash).where(ApiKey.user == user_id)]


# -- audit ----------------------------------------------------------------------------


class AuditQuery(NamedTuple):
    """Equality filters (empty: any) and an optional time range, bounds inclusive."""

    action: str = ""
    actor: str = ""
    target: str = ""
    peer: str = ""
    outcome: str = ""
    since: datetime | None = None
    until: datetime | None = None


def insert_audit(
    create_time: datetime,
    action: str,
    actor: str,
    credential: str,
    target: str,
    peer: str,
    outcome: str,
    detail: dict[str, Any],
) -> None:
    AuditEvent.insert(
        create_time=create_time,
        action=action,
        actor=actor,
        credential=credential,
        target=target,
        peer=peer,
        outcome=outcome,
        detail=detail,
    ).execute()


def audit_page(q: AuditQuery, page: PageRequest, fingerprint: str) -> Page[AuditEvent]:
    """Newest first; `fingerprint` identifies the filter in page tokens."""
    query = AuditEvent.select()
    for column, value in (
        (AuditEvent.action, q.action),
        (AuditEvent.actor, q.actor),
        (AuditEvent.target, q.target),
        (AuditEvent.peer, q.peer),
        (AuditEvent.outcome, q.outcome),
    ):
        if value:
            query = query.where(column == value)
    if q.since is not None:
        query = query.where(AuditEvent.create_time >= q.since)
    if q.until is not None:
        query = query.where(AuditEvent.create_time <= q.until)
    return keyset_page(query, AuditEvent.id, page, filters={"audit": fingerprint}, descending=True)
