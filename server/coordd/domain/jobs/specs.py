"""What callers hand the domain, validated: a submission (`JobSpec`), a worker and its
capabilities, a lease reference, a payload. Every violation of a request is collected."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from coordd.core.errors import Violations
from coordd.domain import ledger
from coordd.domain.jobs.policy import DEFAULT_POLICY, JobPolicy
from coordd.domain.jobs.states import (
    KINDS,
    MAX_ATTEMPTS,
    MAX_INLINE_BYTES,
    MAX_LABELS,
    MAX_PRIORITY,
    MAX_TIMEOUT_MS,
)

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Payload:
    data: bytes | None
    uri: str
    sha256: str


@dataclass(frozen=True)
class JobSpec:
    kind: str
    model_ref: str
    input: Payload
    labels: list[str]
    gpus: int
    budget: int
    priority: int
    max_attempts: int
    schedule_to_start_ms: int
    start_to_close_ms: int
    heartbeat_ms: int
    schedule_to_close_ms: int


@dataclass(frozen=True)
class Worker:
    """A provider polling for work, and what its machine offers."""

    provider_id: str
    labels: frozenset[str]
    gpus: int

    def can_run(self, labels: Iterable[str], gpus: int) -> bool:
        return gpus <= self.gpus and set(labels) <= self.labels


@dataclass(frozen=True)
class LeaseRef:
    job_id: str
    attempt: int
    lease_id: str


def check_payload(v: Violations, payload: Payload | None, path: str) -> Payload | None:
    """Inline data gets its digest computed (and checked if given); a URI needs a digest."""
    if payload is None or (payload.data is None and not payload.uri):
        v.add(path, "required: data or uri")
        return None
    digest = payload.sha256.lower()
    if digest and (len(digest) != 64 or not set(digest) <= _HEX):
        v.add(f"{path}.sha256", "64 hex characters")
        return None
    if payload.data is not None:
        if len(payload.data) > MAX_INLINE_BYTES:
            v.add(f"{path}.data", f"at most {MAX_INLINE_BYTES} bytes; send a uri instead")
            return None
        actual = hashlib.sha256(payload.data).hexdigest()
        if digest and digest != actual:
            v.add(f"{path}.sha256", "does not match the data")
            return None
        return Payload(payload.data, "", actual)
    if len(payload.uri) > 2000:
        v.add(f"{path}.uri", "at most 2000 characters")
    elif "://" not in payload.uri:
        v.add(f"{path}.uri", "must be an absolute URI")
    if not digest:
        v.add(f"{path}.sha256", "required with a uri")
    return Payload(None, payload.uri, digest)


def _check_labels(v: Violations, labels: list[str], path: str) -> list[str]:
    if len(labels) > MAX_LABELS:
        v.add(path, f"at most {MAX_LABELS} labels")
    for i, label in enumerate(labels):
        if not label or len(label) > 100 or not label.isprintable() or label != label.strip():
            v.add(f"{path}[{i}]", "1..100 printable characters without surrounding space")
    return sorted(set(labels))


def _check_ms(v: Violations, value: int | None, path: str, default: int = 0) -> int:
    if value is None:
        return default
    if value <= 0 or value > MAX_TIMEOUT_MS:
        v.add(path, "must be positive and at most 7 days")
    return value


def make_spec(
    kind: str,
    model_ref: str,
    input_payload: Payload | None,
    labels: list[str],
    gpus: int,
    budget: int,
    priority: int,
    max_attempts: int,
    schedule_to_start_ms: int | None,
    start_to_close_ms: int | None,
    heartbeat_ms: int | None,
    schedule_to_close_ms: int | None,
    policy: JobPolicy = DEFAULT_POLICY,
) -> JobSpec:
    """Validates a submission, collecting every violation."""
    v = Violations()
    if kind not in KINDS:
        v.add("kind", "required: inference or training")
    if not model_ref or len(model_ref) > 500 or model_ref != model_ref.strip():
        v.add("model_ref", "required, at most 500 characters")
    payload = check_payload(v, input_payload, "input")
    labels = _check_labels(v, labels, "requirements.labels")
    if gpus < 0 or gpus > 1024:
        v.add("requirements.gpus", "0..1024")
    ledger.check_amount_into(v, budget, "budget", allow_zero=True)
    if not 0 <= priority <= MAX_PRIORITY:
        v.add("priority", f"0..{MAX_PRIORITY}")
    if max_attempts == 0:
        max_attempts = policy.default_max_attempts
    if not 1 <= max_attempts <= MAX_ATTEMPTS:
        v.add("max_attempts", f"1..{MAX_ATTEMPTS}")
    s2s = _check_ms(v, schedule_to_start_ms, "schedule_to_start_timeout")
    s2c = _check_ms(v, start_to_close_ms, "start_to_close_timeout")
    hb = _check_ms(v, heartbeat_ms, "heartbeat_timeout", policy.default_heartbeat_ms)
    total = _check_ms(v, schedule_to_close_ms, "schedule_to_close_timeout")
    v.raise_if_any()
    assert payload is not None
    return JobSpec(
        kind, model_ref, payload, labels, gpus, budget, priority, max_attempts, s2s, s2c, hb, total
    )


def check_worker(provider_id: str, labels: list[str], gpus: int) -> Worker:
    v = Violations()
    clean = _check_labels(v, labels, "capabilities.labels")
    if gpus < 0 or gpus > 1024:
        v.add("capabilities.gpus", "0..1024")
    v.raise_if_any()
    return Worker(provider_id, frozenset(clean), gpus)


def check_lease(job_id: str, attempt: int, lease_id: str) -> LeaseRef:
    v = Violations()
    if attempt <= 0:
        v.add("lease.attempt", "required")
    if not lease_id or len(lease_id) > 32:
        v.add("lease.lease_id", "required")
    v.raise_if_any()
    return LeaseRef(job_id, attempt, lease_id)
