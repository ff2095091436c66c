"""The auth rules' queries: users by email or id, API keys by owner or secret digest."""

from __future__ import annotations

from datetime import datetime

import peewee

from coordd.core.paging import Page, PageRequest
from coordd.store.auth.models import ApiKey, User
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
) -> ApiKey:
    return ApiKey.create(
        user=user_id,
        display_name=display_name,
        prefix=prefix,
        secret_hash=secret_hash,
        roles=roles,
        create_time=create_time,
        expire_time=expire_time,
    )


def api_key_by_id(key_id: str) -> ApiKey | None:
    return ApiKey.get_or_none(ApiKey.id == key_id)


def api_key_with_owner(secret_hash: str) -> ApiKey | None:
    """The key whose secret has this digest, with its owner (`key.user`) in the same query."""
    return ApiKey.select(ApiKey, User).join(User).where(ApiKey.secret_hash == secret_hash).first()


def api_keys_page(user_id: str, page: PageRequest, show_revoked: bool) -> Page[ApiKey]:
    query = ApiKey.select().where(ApiKey.user == user_id)
    if not show_revoked:
        query = query.where(ApiKey.revoke_time.is_null())
    return keyset_page(query, ApiKey.id, page, filters={"revoked": show_revoked, "u": user_id})


def save(row: User | ApiKey) -> None:
    row.save()
