"""The audit trail: logins (success and failure, with the peer), permission denials and
every admin action: who, what, when, to what, from where. Rows never carry a secret: no
password, hash, token or API key, only resource names, emails and reasons.

Account changes (disable, roles, passwords, revocations) are written in the transaction of
the change itself; other mutating calls by an admin are recorded after they succeed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.runtime import Runtime
from coordd.store.auth import queries
from coordd.store.auth.models import AuditEvent

LOGIN = "auth.login"
DENIED = "rpc.denied"
ADMIN_CALL = "admin.call"
OK, FAILED, DENIED_OUTCOME = "ok", "failed", "denied"
MAX_PEER = 200

# AuthService methods that audit themselves, inside the change's own transaction.
SELF_AUDITED = frozenset(
    f"/coordd.v1.AuthService/{m}"
    for m in (
        "DisableUser",
        "EnableUser",
        "SetUserRoles",
        "ResetUserPassword",
        "ChangePassword",
        "RevokeUserTokens",
    )
)

AuditRow = AuditEvent


def actor_of(who: Principal) -> str:
    return f"users/{who.user_id}" if who.user_id else ""


def record(
    rt: Runtime,
    action: str,
    *,
    actor: str = "",
    credential: str = "",
    target: str = "",
    peer: str = "",
    outcome: str = OK,
    detail: dict[str, Any] | None = None,
) -> None:
    """One audit row, in the caller's transaction when there is one."""
    with rt.store.write() as tx:
        queries.insert_audit(
            tx.now, action, actor, credential, target[:200], peer[:MAX_PEER], outcome, dict(detail or {})
        )


def record_by(rt: Runtime, who: Principal, action: str, target: str, peer: str, **detail: Any) -> None:
    if who.api_key_id:
        detail["api_key"] = f"apiKeys/{who.api_key_id}"
    record(rt, action, actor=actor_of(who), credential=who.kind, target=target, peer=peer, detail=detail)


def record_denial(rt: Runtime, who: Principal, method: str, reason: str, peer: str) -> None:
    detail: dict[str, Any] = {"method": method, "reason": reason}
    if who.api_key_id:
        detail["api_key"] = f"apiKeys/{who.api_key_id}"
    record(
        rt,
        DENIED,
        actor=actor_of(who),
        credential="" if who.is_anonymous else who.kind,
        target=method,
        peer=peer,
        outcome=DENIED_OUTCOME,
        detail=detail,
    )


def is_admin_action(who: Principal, method: str, mutating: bool) -> bool:
    """What the api's interceptor records after the call: every mutating call an admin
    makes, except those that audit themselves."""
    return mutating and who.is_admin and method not in SELF_AUDITED


def record_admin_call(rt: Runtime, who: Principal, method: str, target: str, peer: str) -> None:
    record_by(rt, who, ADMIN_CALL, target or method, peer, method=method)


# -- listing (AIP-132 with an AIP-160 subset) -----------------------------------------

_TERM = re.compile(r'\s*([a-z_]+)\s*(<=|>=|=|<|>)\s*("(?:[^"\\]|\\.)*"|[^\s"()]+)\s*')
_AND = re.compile(r"AND\b\s*")
_UNESCAPE = re.compile(r"\\(.)")
_TEXT_FIELDS = ("action", "actor", "target", "peer", "outcome")


@dataclass(frozen=True)
class _Bound:
    at: datetime
    inclusive: bool


def parse_filter(text: str) -> queries.AuditQuery:
    """`field = "value"` terms joined by AND. Fields: action, actor, target, peer, outcome
    (equality) and create_time (<, <=, >, >= an RFC 3339 time)."""
    values: dict[str, Any] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TERM.match(text, pos)
        if match is None:
            raise _bad_filter(f"cannot read the filter at character {pos + 1}")
        field, op, raw = match.groups()
        value = _UNESCAPE.sub(r"\1", raw[1:-1]) if raw.startswith('"') else raw
        if field in _TEXT_FIELDS:
            if op != "=":
                raise _bad_filter(f"{field} supports only =")
            values[field] = value
        elif field == "create_time":
            if op == "=":
                raise _bad_filter("create_time supports <, <=, > and >=")
            try:
                at = datetime.fromisoformat(value)
            except ValueError:
                raise _bad_filter("create_time needs an RFC 3339 time") from None
            if at.tzinfo is None:
                raise _bad_filter("create_time needs a time zone (e.g. Z)")
            # Stored times have microsecond precision: a strict bound is one microsecond in.
            step = 0 if "=" in op else 1
            if op.startswith(">"):
                values["since"] = at + timedelta(microseconds=step)
            else:
                values["until"] = at - timedelta(microseconds=step)
        else:
            raise _bad_filter(
                f"unknown field {field!r}; use action, actor, target, peer, outcome, create_time"
            )
        pos = match.end()
        if pos < len(text):
            joined = _AND.match(text, pos)
            if joined is None:
                raise _bad_filter(f"expected AND at character {pos + 1}")
            pos = joined.end()
    return queries.AuditQuery(**values)


def _bad_filter(why: str) -> InvalidArgument:
    return InvalidArgument(f"filter: {why}", reason="BAD_FILTER", violations=[FieldViolation("filter", why)])


def list_audit_events(page: PageRequest, filter_text: str) -> Page[AuditEvent]:
    query = parse_filter(filter_text)
    return queries.audit_page(query, page, repr(tuple(query)))
