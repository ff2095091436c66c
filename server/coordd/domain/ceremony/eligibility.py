"""Who may join a ceremony (Sybil resistance, as the KZG ceremony's thresholds): an allow list
of identities, a minimum account age, and Sign-In with Ethereum required. Each user joins a
ceremony once (a unique participant), so one identity contributes once per circuit.

A refusal is PERMISSION_DENIED with reason NOT_ELIGIBLE and the rule that refused it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from coordd.core.errors import PermissionDenied, Violations
from coordd.domain.auth.siwe import address_of_user
from coordd.store.auth.models import User

ADDRESS_RE = re.compile(r"^0x[0-9a-f]{40}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+$")
MAX_IDENTITIES = 100_000
MAX_AGE_S = 10 * 365 * 86400


def normalized(allowed: list[str], min_age_s: float, require_ethereum: bool) -> dict[str, Any]:
    """The stored form of the rules (identities lower-cased, sorted, without duplicates)."""
    rules: dict[str, Any] = {}
    if allowed:
        rules["allowed"] = sorted({a.strip().lower() for a in allowed})
    if min_age_s:
        rules["min_account_age_s"] = min_age_s
    if require_ethereum:
        rules["require_ethereum"] = True
    return rules


def check_rules(v: Violations, allowed: list[str], min_age_s: float) -> None:
    if len(allowed) > MAX_IDENTITIES:
        v.add("eligibility.allowed_identities", f"at most {MAX_IDENTITIES}")
    for i, identity in enumerate(allowed[:MAX_IDENTITIES]):
        text = identity.strip().lower()
        if not (ADDRESS_RE.match(text) or EMAIL_RE.match(text)):
            v.add(f"eligibility.allowed_identities[{i}]", "an email address or a 0x Ethereum address")
            break
    if not 0 <= min_age_s <= MAX_AGE_S:
        v.add("eligibility.min_account_age", "0 to 10 years")


def identity_of(user: User) -> str:
    return address_of_user(user) or user.email.lower()


def _refuse(rule: str, why: str) -> PermissionDenied:
    return PermissionDenied(
        f"you may not join this ceremony: {why}", reason="NOT_ELIGIBLE", metadata={"rule": rule}
    )


def require_eligible(rules: dict[str, Any], user: User | None, now: datetime) -> None:
    if not rules:
        return
    if user is None:
        raise _refuse("account", "no such account")
    address = address_of_user(user)
    if rules.get("require_ethereum") and not address:
        raise _refuse("require_ethereum", "this ceremony takes contributors signed in with Ethereum only")
    allowed = rules.get("allowed")
    if allowed and identity_of(user) not in set(allowed):
        raise _refuse("allowed_identities", f"{identity_of(user)} is not on its allow list")
    age = float(rules.get("min_account_age_s", 0))
    if age and user.create_time > now - timedelta(seconds=age):
        old = (now - user.create_time).total_seconds()
        raise _refuse("min_account_age", f"accounts must be at least {age:g} s old; yours is {old:.0f} s old")
