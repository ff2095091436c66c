"""API keys: long-lived credentials a user creates for services, workers and nodes. A key
may be scoped to some services and methods; the AuthInterceptor enforces the scope."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from coordd.core.errors import NotFound, PermissionDenied, Violations
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import TOKEN, Principal, format_roles
from coordd.crypto.tokens import new_api_key
from coordd.domain.auth.credentials import forget_api_key
from coordd.domain.auth.users import check_display_name, check_roles
from coordd.runtime import Runtime
from coordd.store.auth import queries
from coordd.store.auth.models import ApiKey

MAX_SCOPES = 50


def check_scopes(v: Violations, scopes: list[str], known: Callable[[str], bool]) -> None:
    """Each scope names a service or a method that exists (`known` asks the api layer)."""
    if len(scopes) > MAX_SCOPES:
        v.add("scopes", f"at most {MAX_SCOPES}")
        return
    for index, scope in enumerate(scopes):
        if not known(scope):
            v.add(
                f"scopes[{index}]",
                "not a coordd service or method: expected e.g. coordd.v1.JobService or "
                "coordd.v1.JobService.GetJob",
            )


def create_api_key(
    rt: Runtime,
    who: Principal,
    display_name: str,
    roles: list[str],
    expire_time: datetime | None,
    scopes: list[str] | None = None,
    known_scope: Callable[[str], bool] = lambda _: False,
) -> tuple[ApiKey, str]:
    """A key with a subset of the caller's roles, optionally restricted to some services
    and methods (`scopes`, checked with `known_scope`)."""
    scopes = scopes or []
    v = Violations()
    if not display_name:
        v.add("display_name", "required")
    check_display_name(v, display_name)
    check_roles(v, roles)
    check_scopes(v, scopes, known_scope)
    if expire_time is not None and expire_time <= rt.now():
        v.add("expire_time", "must be in the future")
    v.raise_if_any()
    if who.kind != TOKEN:
        raise PermissionDenied("API keys are created with a login token, not another API key")
    wanted = set(roles) or set(who.roles)
    if not wanted <= who.roles:
        raise PermissionDenied("an API key can only carry roles its owner has", reason="ROLE_NOT_HELD")
    secret, prefix, digest = new_api_key()
    with rt.store.write() as tx:
        key = queries.insert_api_key(
            who.user_id,
            display_name,
            prefix,
            digest,
            format_roles(wanted),
            tx.now,
            expire_time,
            scopes=",".join(sorted(set(scopes))),
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
