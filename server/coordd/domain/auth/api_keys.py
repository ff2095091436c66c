"""API keys: long-lived credentials a user creates for services, workers and nodes."""

from __future__ import annotations

from datetime import datetime

from coordd.core.errors import NotFound, PermissionDenied, Violations
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal, format_roles
from coordd.crypto.tokens import new_api_key
from coordd.domain.auth.credentials import forget_api_key
from coordd.domain.auth.users import check_display_name, check_roles
from coordd.runtime import Runtime
from coordd.store.auth import queries
from coordd.store.auth.models import ApiKey


def create_api_key(
    rt: Runtime, who: Principal, display_name: str, roles: list[str], expire_time: datetime | None
) -> tuple[ApiKey, str]:
    v = Violations()
    if not display_name:
        v.add("display_name", "required")
    check_display_name(v, display_name)
    check_roles(v, roles)
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
        key = queries.insert_api_key(
            who.user_id, display_name, prefix, digest, format_roles(wanted), tx.now, expire_time
        )
        tx.emit("auth.api_key.created", f"apiKeys/{key.id}", {"owner": f"users/{who.user_id}"})
    return key, secret


def list_api_keys(who: Principal, page: PageRequest, show_revoked: bool) -> Page[ApiKey]:
    return queries.api_keys_page(who.user_id, page, show_revoked)


def revoke_api_key(rt: Runtime, who: Principal, key_id: str) -> ApiKey:
    with rt.store.write() as tx:
        key = queries.api_key_by_id(key_id)
        if key is None or (key.user_id != who.user_id and not who.is_admin):
            # Someone else's key is reported as missing: existence is not leaked.
            raise NotFound(f"apiKeys/{key_id} not found", metadata={"resource": f"apiKeys/{key_id}"})
        if key.revoke_time is None:
            key.revoke_time = tx.now
            queries.save(key)
            tx.emit("auth.api_key.revoked", f"apiKeys/{key.id}", {})
    forget_api_key(key.secret_hash)
    return key
