"""What callers hand the domain, validated: a submission (`JobSpec`), a worker and its
capabilities, a lease reference, a payload. Every violation of a request is collected."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from coordd.core.errors import Violations
from coordd.domain import ledger
from coordd.domain.jobs.policy import DEFAULT_POLICY, JobPolicy
from coordd.domain.jobs.states import (
    CLAIM_REPLY_HEADROOM,
    DEFAULT_REPLY_BYTES,
    KINDS,
    LEASED_JOB_OVERHEAD,
    MAX_ATTEMPTS,
    MAX_INLINE_BYTES,
    MAX_LABELS,
    MAX_PARENTS,
    MAX_PRIORITY,
    MAX_TIMEOUT_MS,
    MIN_REPLY_BYTES,
)

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Payload:
    data: bytes | None
    uri: str
    sha256: str


@dataclass(frozen=True)
class UniqueSpec:
    """A submission's deduplication key (see domain.jobs.unique)."""

    key: str
    per_model: bool = False
    # 0: unique while the holder is unfinished; else for this long after its submission.
    window_ms: int = 0
    return_existing: bool = False


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
    # Claimable from then (None: at once); unique key; parent job ids (see domain.jobs.graph).
    schedule_time: datetime | None = None
    unique: UniqueSpec | None = None
    parents: tuple[str, ...] = field(default=())

    @property
    def claim_bytes(self) -> int:
        data = len(self.input.data) if self.input.data is not None else 0
        return claim_bytes(data, self.input.uri, self.model_ref, self.labels)


def claim_bytes(data_bytes: int, uri: str, model_ref: str, labels: list[str]) -> int:
    """An upper bound of what one job adds to a claim reply: its variable-length columns as
    stored (the claim statement computes the same sum in SQL) plus LEASED_JOB_OVERHEAD."""
    # The stored JSON list; "[]" (2 bytes) without labels, the common case, without encoding it.
    stored = len(json.dumps(sorted(labels), separators=(",", ":")).encode()) if labels else 2
    return (data_bytes + len(uri.encode()) + len(model_ref.encode()) + stored) + LEASED_JOB_OVERHEAD


def reply_budget(send_limit: int, max_reply_bytes: int = 0) -> int:
    """Bytes of leased jobs one claim reply may carry: the smaller of the server's send limit
    and what the worker accepts (0: DEFAULT_REPLY_BYTES), minus CLAIM_REPLY_HEADROOM."""
    return min(send_limit, max_reply_bytes or DEFAULT_REPLY_BYTES) - CLAIM_REPLY_HEADROOM


@dataclass(frozen=True)
class Worker:
    """A provider polling for work, what its machine offers, and how many bytes of jobs one
    reply to it may carry."""

    provider_id: str
    labels: frozenset[str]
    gpus: int
    reply_budget: int = DEFAULT_REPLY_BYTES - CLAIM_REPLY_HEADROOM

    def can_run(self, labels: Iterable[str], gpus: int, size: int = 0) -> bool:
        return gpus <= self.gpus and set(labels) <= self.labels and size <= self.reply_budget


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


MAX_UNIQUE_WINDOW_MS = 30 * 24 * 3600 * 1000


def with_scheduling(
    spec: JobSpec,
    schedule_time: datetime | None = None,
    unique: UniqueSpec | None = None,
    parents: list[str] | None = None,
) -> JobSpec:
    """`spec` with a schedule time, a unique key and parents, validated (every violation
    collected). The schedule time's distance from now is checked at submission."""
    v = Violations()
    if unique is not None:
        key = unique.key
        if not key or len(key) > 200 or not key.isprintable():
            v.add("unique.key", "required: 1..200 printable characters")
        if unique.window_ms and not 1000 <= unique.window_ms <= MAX_UNIQUE_WINDOW_MS:
            v.add("unique.window", "1s..30d, or unset (unique while unfinished)")
    clean: list[str] = []
    for i, parent in enumerate(parents or []):
        if parent in clean:
            v.add(f"parents[{i}]", "listed twice")
        clean.append(parent)
    if len(clean) > MAX_PARENTS:
        v.add("parents", f"at most {MAX_PARENTS}")
    v.raise_if_any()
    return replace(spec, schedule_time=schedule_time, unique=unique, parents=tuple(clean))


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
    max_claim_bytes: int | None = None,
) -> JobSpec:
    """Validates a submission, collecting every violation. With `max_claim_bytes` (the
    server's reply budget), a job too large to ever be delivered in a claim reply is refused."""
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
    spec = JobSpec(
        kind, model_ref, payload, labels, gpus, budget, priority, max_attempts, s2s, s2c, hb, total
    )
    _check_claim_bytes(spec, max_claim_bytes)
    return spec


def _check_claim_bytes(spec: JobSpec, max_claim_bytes: int | None) -> None:
    """A job too large to ever be delivered in a claim reply is refused."""
    if max_claim_bytes is not None and spec.claim_bytes > max_claim_bytes:
        payload = spec.input
        fixed = spec.claim_bytes - (len(payload.data) if payload.data is not None else 0)
        room = max(0, max_claim_bytes - fixed)
        v = Violations()
        v.add("input.data", f"at most {room} bytes on this server (a claim reply must carry it); send a uri")
        v.raise_if_any()


def with_input(spec: JobSpec, input_payload: Payload | None, max_claim_bytes: int | None = None) -> JobSpec:
    """`make_spec` of `spec`'s settings (already valid: `spec` came from `make_spec`) with
    another input: only the input is validated, with the same violations. For a batch whose
    submissions differ only in their inputs, the common case: the rest is checked once."""
    v = Violations()
    payload = check_payload(v, input_payload, "input")
    v.raise_if_any()
    assert payload is not None and spec.schedule_time is None and spec.unique is None and not spec.parents
    # `spec` with another input, built as a copy of its fields (a frozen dataclass's
    # constructor costs ~1.8 us, a copy ~0.4), the labels list its own.
    out = object.__new__(JobSpec)
    fields = out.__dict__
    fields.update(spec.__dict__)
    fields["input"], fields["labels"] = payload, list(spec.labels)
    _check_claim_bytes(out, max_claim_bytes)
    return out


def check_worker(
    provider_id: str,
    labels: list[str],
    gpus: int,
    max_reply_bytes: int = 0,
    send_limit: int = DEFAULT_REPLY_BYTES,
) -> Worker:
    v = Violations()
    clean = _check_labels(v, labels, "capabilities.labels")
    if gpus < 0 or gpus > 1024:
        v.add("capabilities.gpus", "0..1024")
    if max_reply_bytes and max_reply_bytes < MIN_REPLY_BYTES:
        v.add("max_reply_bytes", f"0 (the default) or at least {MIN_REPLY_BYTES}")
    v.raise_if_any()
    return Worker(provider_id, frozenset(clean), gpus, reply_budget(send_limit, max_reply_bytes))


def check_lease(job_id: str, attempt: int, lease_id: str) -> LeaseRef:
    v = Violations()
    if attempt <= 0:
        v.add("lease.attempt", "required")
    if not lease_id or len(lease_id) > 32:
        v.add("lease.lease_id", "required")
    v.raise_if_any()
    return LeaseRef(job_id, attempt, lease_id)
