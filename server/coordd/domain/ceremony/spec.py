"""A ceremony's settable fields (`CeremonySpec`), their validation, the limits that apply, and
the turn timeout a ceremony's settings give a circuit."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import coordd.domain.ceremony.eligibility as eligibility
from coordd.core.errors import PermissionDenied, Violations
from coordd.core.principal import Principal
from coordd.domain.ceremony.names import listed
from coordd.domain.ceremony.timeouts import DYNAMIC, FIXED, TimeoutRule, average, turn_timeout
from coordd.domain.ceremony.verifier import check_command
from coordd.store.ceremony.models import Ceremony, Circuit

PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
HEX_RE = re.compile(r"^(?:[0-9a-f]{2})+$")
DEFAULT_START_WINDOW_S = 60.0
DEFAULT_VERIFY_TIMEOUT_S = 600.0
MAX_VERIFY_TIMEOUT_S = 86400.0
# Kept for callers that compute "past the verification limit"; the lease below is what
# decides when a verification is presumed dead.
VERIFY_GRACE_S = 30.0
# A verification whose process stops renewing its lease this long is run again elsewhere.
VERIFY_LEASE_S = 6.0
DEFAULT_MAX_CONTRIBUTION_BYTES = 1 << 30
MAX_CHUNK_BYTES = 1 << 20
HASH_BYTES = 64
CONTRIBUTION_KIND = "contribution"
ARTIFACT_KINDS = ("r1cs", "ptau")


@dataclass
class CeremonySpec:
    """A ceremony's settable fields, already converted from the wire (seconds, aware datetimes)."""

    title: str = ""
    description: str = ""
    prefix: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    timeout_policy: str = ""
    fixed_timeout_s: float = 0.0
    dynamic_threshold_pct: int = 0
    dynamic_floor_s: float = 0.0
    start_window_s: float = 0.0
    penalty_s: float = 0.0
    verifier_command: str = ""
    verify_timeout_s: float = 0.0
    # A declared verifier's name, or "none" (see verifiers.py).
    verifier_name: str = ""
    # None: the default (DEFAULT_UPLOAD_RETRIES).
    upload_retries: int | None = None
    # Eligibility (see eligibility.py).
    allowed_identities: list[str] = field(default_factory=list)
    min_account_age_s: float = 0.0
    require_ethereum: bool = False


UPDATABLE = (
    "title",
    "description",
    "start_time",
    "end_time",
    "timeout",
    "verifier",
    "upload_retries",
    "eligibility",
)
DEFAULT_UPLOAD_RETRIES = 2
MAX_UPLOAD_RETRIES = 10


def check_spec(v: Violations, spec: CeremonySpec, fields: set[str], who: Principal, creating: bool) -> None:
    if "title" in fields:
        if not spec.title.strip():
            v.add("title", "required")
        elif len(spec.title) > 200:
            v.add("title", "at most 200 characters")
    if "description" in fields and len(spec.description) > 5000:
        v.add("description", "at most 5000 characters")
    if creating and not PREFIX_RE.match(spec.prefix):
        v.add(
            "prefix", "2-63 characters: lower-case letters, digits and '-', starting with a letter or digit"
        )
    if "start_time" in fields and spec.start_time is None:
        v.add("start_time", "required")
    if "end_time" in fields and spec.end_time is None:
        v.add("end_time", "required")
    if spec.start_time is not None and spec.end_time is not None and spec.end_time <= spec.start_time:
        v.add("end_time", "must be after start_time")
    if "timeout" in fields:
        if spec.timeout_policy not in (FIXED, DYNAMIC):
            v.add("timeout.policy", "FIXED or DYNAMIC")
        if spec.timeout_policy == FIXED and spec.fixed_timeout_s <= 0:
            v.add("timeout.fixed_timeout", "must be positive for FIXED")
        if spec.timeout_policy == DYNAMIC:
            if spec.dynamic_floor_s <= 0:
                v.add(
                    "timeout.dynamic_floor", "must be positive for DYNAMIC (the first turn needs a deadline)"
                )
            if not 0 <= spec.dynamic_threshold_pct <= 1000:
                v.add("timeout.dynamic_threshold_percent", "0..1000")
        if spec.start_window_s < 0:
            v.add("timeout.start_window", "must not be negative")
        if spec.penalty_s < 0:
            v.add("timeout.penalty", "must not be negative")
    if "verifier" in fields:
        if spec.verifier_command:
            problem = check_command(spec.verifier_command)
            if problem:
                v.add("verifier.command", problem)
        if not 0 <= spec.verify_timeout_s <= MAX_VERIFY_TIMEOUT_S:
            v.add("verifier.timeout", f"0..{MAX_VERIFY_TIMEOUT_S:g} seconds")
    if (
        "upload_retries" in fields
        and spec.upload_retries is not None
        and not 0 <= spec.upload_retries <= MAX_UPLOAD_RETRIES
    ):
        v.add("upload_retries", f"0..{MAX_UPLOAD_RETRIES}")
    if "eligibility" in fields:
        eligibility.check_rules(v, spec.allowed_identities, spec.min_account_age_s)
    v.raise_if_any()
    if "verifier" in fields and spec.verifier_command and not who.is_admin:
        raise PermissionDenied(
            "an external verifier command runs on the daemon's host: only an admin may set one",
            reason="VERIFIER_COMMAND_NEEDS_ADMIN",
        )


def check_mask(mask: list[str]) -> None:
    v = Violations()
    if not mask:
        v.add("update_mask", "name at least one field")
    for index, path in enumerate(mask):
        if path not in UPDATABLE:
            v.add(f"update_mask.paths[{index}]", f"not updatable (one of: {listed(UPDATABLE)})")
    v.raise_if_any()


def merged_spec(c: Ceremony, spec: CeremonySpec, fields: set[str]) -> CeremonySpec:
    """An update's spec with the times it leaves alone taken from the ceremony, so the
    start/end order is checked on what the ceremony will have."""
    merged = CeremonySpec(
        start_time=spec.start_time if "start_time" in fields else c.start_time,
        end_time=spec.end_time if "end_time" in fields else c.end_time,
    )
    for name in ("title", "description"):
        setattr(merged, name, getattr(spec, name))
    for name in ("timeout_policy", "fixed_timeout_s", "dynamic_threshold_pct", "dynamic_floor_s"):
        setattr(merged, name, getattr(spec, name))
    merged.start_window_s, merged.penalty_s = spec.start_window_s, spec.penalty_s
    merged.verifier_command, merged.verify_timeout_s = spec.verifier_command, spec.verify_timeout_s
    merged.verifier_name, merged.upload_retries = spec.verifier_name, spec.upload_retries
    merged.allowed_identities, merged.min_account_age_s = spec.allowed_identities, spec.min_account_age_s
    merged.require_ethereum = spec.require_ethereum
    return merged


def apply_spec(c: Ceremony, spec: CeremonySpec, fields: set[str]) -> None:
    if "title" in fields:
        c.title = spec.title
    if "description" in fields:
        c.description = spec.description
    if "start_time" in fields:
        c.start_time = spec.start_time
    if "end_time" in fields:
        c.end_time = spec.end_time
    if "timeout" in fields:
        c.timeout_policy = spec.timeout_policy
        c.fixed_timeout_s = spec.fixed_timeout_s
        c.dynamic_threshold_pct = spec.dynamic_threshold_pct
        c.dynamic_floor_s = spec.dynamic_floor_s
        c.start_window_s = spec.start_window_s or DEFAULT_START_WINDOW_S
        c.penalty_s = spec.penalty_s
    if "verifier" in fields:
        c.verifier_command = spec.verifier_command
        c.verifier_name = spec.verifier_name
        c.verify_timeout_s = spec.verify_timeout_s or DEFAULT_VERIFY_TIMEOUT_S
    if "eligibility" in fields:
        c.eligibility = eligibility.normalized(
            spec.allowed_identities, spec.min_account_age_s, spec.require_ethereum
        )
    if "upload_retries" in fields:
        c.transport_retries = DEFAULT_UPLOAD_RETRIES if spec.upload_retries is None else spec.upload_retries
    c.state_due_time = c.start_time


def rule_of(c: Ceremony) -> TimeoutRule:
    return TimeoutRule(
        c.timeout_policy,
        timedelta(seconds=c.fixed_timeout_s),
        c.dynamic_threshold_pct,
        timedelta(seconds=c.dynamic_floor_s),
    )


def circuit_turn_timeout(c: Ceremony, circuit: Circuit) -> timedelta:
    return turn_timeout(rule_of(c), average(circuit.contribution_total_s, circuit.contribution_count))
