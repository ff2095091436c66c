"""Jobs: escrowed budgets, leased claims, retries with backoff, signed attestations, payment.

States: queued -> running -> succeeded | (queued again for a retry) | failed | cancelled.
Every transition happens in one write transaction together with the money it moves:
submit holds the budget, success releases it to the provider (minus the platform fee),
a dead letter or a cancellation refunds it. A lease is (job, attempt, lease id, provider);
the attempt number is the fencing token, so a worker whose lease was rescued and given to
someone else cannot complete, fail or heartbeat the job any more.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import secrets
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import peewee

from coordd.core.errors import (
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Violations,
)
from coordd.core.principal import Principal
from coordd.domain import ledger
from coordd.runtime import Runtime
from coordd.store import job_queries
from coordd.store.db import Tx
from coordd.store.job_models import Job, JobAttempt, JobAttestation, JobLabel
from coordd.store.models import TimestampField
from coordd.store.paging import Page, PageRequest, keyset_page
from coordd_client.attestation import PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, pae

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
KINDS = ("inference", "training")

# Watch key every waiting worker listens on: a job became claimable.
QUEUE_KEY = "jobs:queue"

MAX_INLINE_BYTES = 1024 * 1024
MAX_LABELS = 32
MAX_PRIORITY = 9
MAX_ATTEMPTS = 20
MAX_CLAIM = 100
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class JobPolicy:
    """Deployment knobs of the job domain."""

    # Platform fee taken from each payment, in basis points (500 = 5%).
    fee_bps: int = 500
    default_max_attempts: int = 3
    default_heartbeat_ms: int = 60_000
    # Retry delay: min(max, base * 2**(attempt-1)), then "equal jitter" (half fixed, half random).
    backoff_base_s: float = 1.0
    backoff_max_s: float = 300.0
    # Inline input/output data of finished jobs is deleted after this long.
    payload_retention_s: float = 7 * 24 * 3600
    # Rows handled per scheduler transaction.
    task_batch: int = 200


DEFAULT_POLICY = JobPolicy()
_policies: weakref.WeakKeyDictionary[Runtime, JobPolicy] = weakref.WeakKeyDictionary()


def set_policy(rt: Runtime, policy: JobPolicy) -> None:
    _policies[rt] = policy


def policy_of(rt: Runtime) -> JobPolicy:
    return _policies.get(rt, DEFAULT_POLICY)


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


@dataclass(frozen=True, slots=True)
class Leased:
    """A job handed to a worker: the claimed row (times in microseconds) and its lease id."""

    job: job_queries.ClaimedRow
    lease_id: str


@dataclass(frozen=True)
class JobView:
    job: Job
    attempts: list[JobAttempt] = field(default_factory=list)


@dataclass(frozen=True)
class Completion:
    job: Job
    attestation: Attestation


@dataclass(frozen=True)
class Heartbeat:
    expire_time: datetime | None
    cancelled: bool


# -- validation --------------------------------------------------------------------------


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


# -- submission ----------------------------------------------------------------------------


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"jobs/{job_id} not found", metadata={"resource": f"jobs/{job_id}"})


def _enqueue_fields(job: Job, now: datetime, run_after: datetime) -> None:
    job.state = QUEUED
    job.run_after = run_after
    job.queue_time = now
    job.start_deadline = (
        run_after + timedelta(milliseconds=job.schedule_to_start_ms) if job.schedule_to_start_ms else None
    )
    job.lease_id = None
    job.lease_expire_time = None
    job.attempt_deadline = None


def insert_jobs(tx: Tx, submitter_id: str, specs: list[JobSpec]) -> list[Job]:
    """Queues jobs and holds their budgets, inside the caller's transaction (one INSERT for
    the jobs, one ledger entry per job posted as a batch)."""
    jobs: list[Job] = []
    for spec in specs:
        lease_ms = min(spec.heartbeat_ms, spec.start_to_close_ms or spec.heartbeat_ms)
        job = Job(  # the id comes from the model's default (new_id), generated once
            submitter=submitter_id,
            kind=spec.kind,
            model_ref=spec.model_ref,
            input_data=spec.input.data,
            input_uri=spec.input.uri,
            input_digest=spec.input.sha256,
            labels=spec.labels,
            label_count=len(spec.labels),
            gpus=spec.gpus,
            budget=spec.budget,
            fee=0,
            priority=spec.priority,
            max_attempts=spec.max_attempts,
            attempt_limit=spec.max_attempts,
            schedule_to_start_ms=spec.schedule_to_start_ms,
            start_to_close_ms=spec.start_to_close_ms,
            heartbeat_ms=spec.heartbeat_ms,
            schedule_to_close_ms=spec.schedule_to_close_ms,
            lease_ms=lease_ms,
            attempt=0,
            provider=None,
            create_time=tx.now,
            start_time=None,
            finish_time=None,
            progress=0.0,
            cancel_requested=False,
            output_data=None,
            output_uri="",
            output_digest="",
            error="",
            purge_time=None,
            payload_purged=False,
            close_deadline=(
                tx.now + timedelta(milliseconds=spec.schedule_to_close_ms)
                if spec.schedule_to_close_ms
                else None
            ),
        )
        _enqueue_fields(job, tx.now, tx.now)
        jobs.append(job)
    if not jobs:
        return []
    job_queries.insert_jobs(jobs)
    labels = [{"job": j.id, "label": label} for j in jobs for label in j.labels]
    if labels:
        JobLabel.insert_many(labels).execute()
    holds = [ledger.hold_entry(submitter_id, j.budget, f"jobs/{j.id}", "job.hold") for j in jobs if j.budget]
    ledger.post_many(tx, holds)
    return jobs


def insert_job(tx: Tx, submitter_id: str, spec: JobSpec) -> Job:
    """Queues one job and holds its budget, inside the caller's transaction."""
    return insert_jobs(tx, submitter_id, [spec])[0]


def submit(
    rt: Runtime, who: Principal, spec: JobSpec, handover: Worker | None = None
) -> tuple[Job, Leased | None]:
    """Queues the job; with `handover`, leases it to that waiting worker in the same transaction."""
    with rt.store.write() as tx:
        job = insert_job(tx, who.user_id, spec)
        leased = _claim(rt, tx, handover, 1, only_job=job.id) if handover is not None else []
        tx.emit(
            "job.submitted",
            f"jobs/{job.id}",
            {"budget": spec.budget, "watch_keys": [] if leased else [QUEUE_KEY]},
        )
    if leased:
        _mark_claimed(job, leased[0])
        return job, leased[0]
    return job, None


def _mark_claimed(job: Job, leased: Leased) -> None:
    """Brings a model loaded before its claim up to date with the claimed row."""
    to_time = TimestampField().python_value
    row = leased.job
    job.state = RUNNING
    job.attempt = row.attempt
    job.provider = row.provider
    job.lease_id = leased.lease_id
    job.lease_expire_time = to_time(row.lease_expire_us)
    job.start_time = to_time(row.start_us)
    job.start_deadline = None
    job.attempt_deadline = (
        job.start_time + timedelta(milliseconds=job.start_to_close_ms) if job.start_to_close_ms else None
    )
    job.progress = 0.0


MAX_SUBMIT_BATCH = 100


def submit_many(rt: Runtime, who: Principal, specs: list[JobSpec]) -> list[Job]:
    """Queues every job and holds every budget in one transaction, or none (insufficient
    funds for the total fails it all). One INSERT for the jobs, one ledger batch, one event:
    a producer's cost per job stops being a call and a commit per job."""
    if not 1 <= len(specs) <= MAX_SUBMIT_BATCH:
        raise InvalidArgument(
            f"requests: 1..{MAX_SUBMIT_BATCH} submissions",
            violations=[FieldViolation("requests", f"1..{MAX_SUBMIT_BATCH} items")],
        )
    with rt.store.write() as tx:
        queued = insert_jobs(tx, who.user_id, specs)
        names = [f"jobs/{job.id}" for job in queued]
        tx.emit(
            "jobs.submitted",
            names[0],
            {"jobs": names, "budget": sum(spec.budget for spec in specs), "watch_keys": [QUEUE_KEY]},
        )
    return queued


# -- claims ------------------------------------------------------------------------------


def _claim(rt: Runtime, tx: Tx, worker: Worker, limit: int, only_job: str | None = None) -> list[Leased]:
    """Leases up to `limit` claimable jobs to `worker`, in the caller's transaction (see
    job_queries.claim_jobs)."""
    lease_id = secrets.token_hex(12)
    claimed = job_queries.claim_jobs(
        rt.store, tx.now, lease_id, worker.provider_id, worker.labels, worker.gpus, limit, only_job
    )
    if not claimed:
        return []
    claimed.sort(key=lambda j: (-j.priority, j.id))
    leased = [Leased(j, lease_id) for j in claimed]
    # One event per claim, not per job: its watch keys still wake each job's watchers.
    names = [f"jobs/{j.id}" for j in claimed]
    tx.emit(
        "job.started",
        names[0],
        {
            "jobs": names,
            "attempts": [j.attempt for j in claimed],
            "provider": f"users/{worker.provider_id}",
            "watch_keys": [*names, QUEUE_KEY],
        },
    )
    return leased


def claim(rt: Runtime, worker: Worker, limit: int) -> list[Leased]:
    """One claim attempt; empty when nothing matching is claimable now."""
    if not 1 <= limit <= MAX_CLAIM:
        raise InvalidArgument(f"max_jobs must be 1..{MAX_CLAIM}")
    with rt.store.write() as tx:
        return _claim(rt, tx, worker, limit)


def return_lease(rt: Runtime, leased: Leased) -> bool:
    """A job handed to a worker whose call had already gone: back to the queue, attempt not spent."""
    with rt.store.write() as tx:
        job = _lock(rt, leased.job.id)
        if job is None or job.state != RUNNING or job.lease_id != leased.lease_id:
            return False
        _close_attempt(tx, job, "returned", "the claiming call ended before the job was delivered")
        job.attempt_limit += 1
        _enqueue_fields(job, tx.now, tx.now)
        job.save()
        tx.emit("job.returned", f"jobs/{job.id}", {"watch_keys": [QUEUE_KEY]})
        return True


# -- lease holders ---------------------------------------------------------------------------


def _lock(rt: Runtime, job_id: str) -> Job | None:
    query = Job.select().where(Job.id == job_id)
    if rt.store.is_postgres:
        query = query.for_update()
    return query.first()


def _lease_error(job: Job | None, who: Principal, lease: LeaseRef) -> DomainError | None:
    if job is None:
        return _not_found(lease.job_id)
    if job.provider != who.user_id and job.attempt == lease.attempt:
        return PermissionDenied("this lease belongs to another provider", reason="NOT_LEASE_HOLDER")
    if job.state != RUNNING or job.attempt != lease.attempt or job.lease_id != lease.lease_id:
        return FailedPrecondition(
            f"the lease on jobs/{job.id} attempt {lease.attempt} is no longer held",
            reason="STALE_LEASE",
            metadata={"state": job.state, "attempt": str(job.attempt)},
        )
    return None


def _leased_job(rt: Runtime, who: Principal, lease: LeaseRef) -> Job:
    job = _lock(rt, lease.job_id)
    error = _lease_error(job, who, lease)
    if error is not None:
        raise error
    assert job is not None
    return job


def _close_attempt(tx: Tx, job: Job, outcome: str, error: str = "") -> None:
    """Records the attempt that just ended without success; call before the job row's lease
    fields are cleared. Successful and running attempts are read from the job row instead
    (see `attempt_history`), so the hot path (claim, complete) writes no attempt row."""
    JobAttempt.insert(
        job=job.id,
        attempt=job.attempt,
        provider=job.provider or "",
        lease_id=job.lease_id or "",
        start_time=job.start_time or tx.now,
        end_time=tx.now,
        outcome=outcome,
        error=error[:4000],
    ).execute()


def attempt_history(job: Job, ended: list[JobAttempt]) -> list[JobAttempt]:
    """Every attempt in order: the stored rows of attempts that ended without success, then
    the current attempt (running) or the successful one, taken from the job row."""
    history = list(ended)
    current = job.attempt
    if current and job.state in (RUNNING, SUCCEEDED) and (not history or history[-1].attempt != current):
        history.append(
            JobAttempt(
                job=job.id,
                attempt=current,
                provider=job.provider or "",
                lease_id=job.lease_id or "",
                start_time=job.start_time,
                end_time=job.finish_time if job.state == SUCCEEDED else None,
                outcome=job.state,
                error="",
            )
        )
    return history


def _finish(tx: Tx, job: Job, state: str, error: str, policy: JobPolicy) -> None:
    job.state = state
    job.error = error[:4000]
    job.finish_time = tx.now
    job.lease_id = None
    job.lease_expire_time = None
    job.attempt_deadline = None
    job.start_deadline = None
    job.close_deadline = None
    job.purge_time = tx.now + timedelta(seconds=policy.payload_retention_s)


def _refund_and_finish(tx: Tx, job: Job, state: str, error: str, policy: JobPolicy) -> None:
    _finish(tx, job, state, error, policy)
    if job.budget:
        ledger.refund(tx, job.submitter, job.budget, f"jobs/{job.id}", reason="job.refund")
    job.save()
    tx.emit(f"job.{state}", f"jobs/{job.id}", {"error": job.error, "refunded": job.budget})


def backoff_s(attempt: int, policy: JobPolicy, rng: random.Random | None = None) -> float:
    """Exponential backoff with equal jitter: half the delay fixed, half random."""
    delay = min(policy.backoff_max_s, policy.backoff_base_s * math.pow(2, max(attempt - 1, 0)))
    return delay / 2 + (rng or random).uniform(0, delay / 2)


def _retry_or_dead(tx: Tx, job: Job, outcome: str, error: str, retryable: bool, policy: JobPolicy) -> None:
    """After a failed attempt: cancel if asked, retry with backoff while attempts remain, else dead letter."""
    _close_attempt(tx, job, outcome, error)
    if job.cancel_requested:
        _refund_and_finish(tx, job, CANCELLED, "cancelled while running", policy)
        return
    if retryable and job.attempt < job.attempt_limit:
        delay = backoff_s(job.attempt, policy)
        _enqueue_fields(job, tx.now, tx.now + timedelta(seconds=delay))
        job.error = error[:4000]
        job.save()
        tx.emit(
            "job.retry_scheduled",
            f"jobs/{job.id}",
            {"attempt": job.attempt, "delay_s": round(delay, 3), "watch_keys": [QUEUE_KEY]},
        )
        return
    _refund_and_finish(tx, job, FAILED, error, policy)


def heartbeat(rt: Runtime, who: Principal, lease: LeaseRef, progress: float) -> Heartbeat:
    if not 0.0 <= progress <= 1.0 or math.isnan(progress):
        raise InvalidArgument("progress must be 0..1", violations=[FieldViolation("progress", "0..1")])
    policy = policy_of(rt)
    with rt.store.write() as tx:
        job = _leased_job(rt, who, lease)
        if job.cancel_requested:
            job = _lock(rt, job.id)  # the whole row: it is saved below
            assert job is not None
            _close_attempt(tx, job, CANCELLED, "cancelled by request")
            _refund_and_finish(tx, job, CANCELLED, "cancelled while running", policy)
            return Heartbeat(None, True)
        expire = tx.now + timedelta(milliseconds=job.heartbeat_ms)
        if job.attempt_deadline is not None:
            expire = min(expire, job.attempt_deadline)
        job.lease_expire_time = expire
        job.progress = progress
        job.save()
        tx.emit("job.progress", f"jobs/{job.id}", {"progress": progress})
        return Heartbeat(expire, False)


def statement(job: Job, output_digest: str, finish_time: datetime) -> dict[str, object]:
    """The in-toto Statement v1 the coordinator signs for a result (the readable definition;
    `statement_json` writes the same bytes faster)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": f"jobs/{job.id}/output", "digest": {"sha256": output_digest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "job": f"jobs/{job.id}",
            "kind": job.kind,
            "submitter": f"users/{job.submitter}",
            "modelRef": job.model_ref,
            "inputDigest": {"sha256": job.input_digest},
            "attempt": job.attempt,
            "provider": f"users/{job.provider}",
            "startedOn": _rfc3339(job.start_time),
            "finishedOn": _rfc3339(finish_time),
        },
    }


def _rfc3339(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


_quote = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) quotes strings with
# canonical_json(statement(...)) with its keys in sorted order, as a template.
_STATEMENT = (
    '{"_type":' + _quote(STATEMENT_TYPE) + ',"predicate":{"attempt":%d,"finishedOn":%s,'
    '"inputDigest":{"sha256":%s},"job":%s,"kind":%s,"modelRef":%s,"provider":%s,"startedOn":%s,'
    '"submitter":%s},"predicateType":' + _quote(PREDICATE_TYPE) + ',"subject":[{"digest":{"sha256":%s},'
    '"name":%s}]}'
)


def statement_json(
    job_id: str,
    kind: str,
    submitter: str,
    model_ref: str,
    input_digest: str,
    attempt: int,
    provider: str,
    started: datetime,
    finished: datetime,
    output_digest: str,
) -> bytes:
    """canonical_json(statement(...)), byte for byte (a test holds them equal), at a fifth of
    the cost: it runs once per completed job."""
    return (
        _STATEMENT
        % (
            attempt,
            _quote(_rfc3339(finished)),
            _quote(input_digest),
            _quote(f"jobs/{job_id}"),
            _quote(kind),
            _quote(model_ref),
            _quote(f"users/{provider}"),
            _quote(_rfc3339(started)),
            _quote(f"users/{submitter}"),
            _quote(output_digest),
            _quote(f"jobs/{job_id}/output"),
        )
    ).encode()


@dataclass(frozen=True, slots=True)
class Attestation:
    """A signed DSSE envelope's parts, as stored and served."""

    job_id: str
    payload_type: str
    payload: bytes
    key_id: str
    signature: bytes

    @staticmethod
    def of(row: JobAttestation) -> Attestation:
        return Attestation(row.job_id, row.payload_type, bytes(row.payload), row.key_id, bytes(row.signature))


def _complete_batch(
    rt: Runtime, tx: Tx, who: Principal, items: list[tuple[LeaseRef, Payload]]
) -> list[Attestation | DomainError]:
    """Records results for many leases with a fixed number of statements whatever the batch
    size: one SELECT ... FOR UPDATE that is the lease check, one UPDATE that records the
    outputs and signatures, one ledger batch and one event.

    A bad lease yields its error without touching anything. A job cancelled while running
    is finalized as cancelled (and refunded) and yields JOB_CANCELLED; that still commits.
    """
    policy = policy_of(rt)
    provider = who.user_id
    locked = {
        row.id: row
        for row in job_queries.lock_leased(
            rt.store, provider, [(lease.job_id, lease.attempt, lease.lease_id) for lease, _ in items]
        )
    }
    results: list[Attestation | DomainError] = []
    done: list[Attestation] = []
    successes: list[tuple[str, int, bytes | None, str, str, bytes]] = []
    payments: list[ledger.Entry] = []
    paid = fees = 0
    sign, key_id = rt.signer.sign, rt.signer.key_id
    for lease, output in items:
        row = locked.pop(lease.job_id, None)
        if row is None:
            results.append(_explain_rejected_completion(rt, tx, who, lease, policy))
            continue
        payload = statement_json(
            row.id,
            row.kind,
            row.submitter,
            row.model_ref,
            row.input_digest,
            row.attempt,
            provider,
            row.start_time,
            tx.now,
            output.sha256,
        )
        signature = sign(pae(PAYLOAD_TYPE, payload))
        fee = platform_fee(row.budget, policy)
        successes.append((row.id, fee, output.data, output.uri, output.sha256, signature))
        attestation = Attestation(row.id, PAYLOAD_TYPE, payload, key_id, signature)
        done.append(attestation)
        results.append(attestation)
        if row.budget:
            payments.append(
                ledger.release_entry(
                    row.submitter, provider, row.budget, f"jobs/{row.id}", fee, "job.payment"
                )
            )
            paid += row.budget - fee
            fees += fee
    if not done:
        return results
    purge_time = tx.now + timedelta(seconds=policy.payload_retention_s)
    job_queries.record_successes(rt.store, tx.now, purge_time, key_id, successes)
    ledger.post_many(tx, payments)
    names = [f"jobs/{a.job_id}" for a in done]
    # One event per batch: its watch keys wake each job's watchers.
    tx.emit(
        "job.succeeded",
        names[0],
        {"jobs": names, "provider": f"users/{provider}", "paid": paid, "fee": fees, "watch_keys": names},
    )
    return results


def platform_fee(budget: int, policy: JobPolicy) -> int:
    """The platform's share of a payment, rounded down: a budget of 1 at 5% pays no fee."""
    return budget * policy.fee_bps // 10_000


def _explain_rejected_completion(
    rt: Runtime, tx: Tx, who: Principal, lease: LeaseRef, policy: JobPolicy
) -> DomainError:
    """Why the conditional UPDATE skipped a completion: a lease error, or a pending
    cancellation, which is carried out now."""
    job = _lock(rt, lease.job_id)
    error = _lease_error(job, who, lease)
    if error is not None:
        return error
    assert job is not None and job.cancel_requested
    _close_attempt(tx, job, CANCELLED, "cancelled by request")
    _refund_and_finish(tx, job, CANCELLED, "cancelled while running", policy)
    return FailedPrecondition(
        f"jobs/{job.id} was cancelled; the result is not accepted", reason="JOB_CANCELLED"
    )


def complete(rt: Runtime, who: Principal, lease: LeaseRef, output: Payload) -> Completion:
    with rt.store.write() as tx:
        [result] = _complete_batch(rt, tx, who, [(lease, output)])
    if isinstance(result, DomainError):
        raise result
    # The batch path loads only the columns it needs; the single call returns the whole job.
    return Completion(Job.get_by_id(result.job_id), result)


def complete_many(
    rt: Runtime, who: Principal, items: list[tuple[LeaseRef, Payload]]
) -> list[Attestation | DomainError]:
    """Completes a batch in one transaction; each item succeeds or fails on its own. Batched
    acks are what make a worker's throughput independent of per-call overhead."""
    with rt.store.write() as tx:
        return _complete_batch(rt, tx, who, items)


def fail(rt: Runtime, who: Principal, lease: LeaseRef, error: str, retryable: bool) -> Job:
    if len(error) > 4000:
        raise InvalidArgument("error: at most 4000 characters")
    with rt.store.write() as tx:
        job = _leased_job(rt, who, lease)
        _retry_or_dead(tx, job, FAILED, error or "failed", retryable, policy_of(rt))
        return job


# -- submitter and operator operations -----------------------------------------------------


def _visible(who: Principal, job: Job) -> bool:
    return who.is_admin or who.user_id in (job.submitter, job.provider)


def get_job(who: Principal, job_id: str) -> JobView:
    job = Job.get_or_none(Job.id == job_id)
    if job is None or not _visible(who, job):
        # Someone else's job is reported as missing: existence is not leaked.
        raise _not_found(job_id)
    ended = list(JobAttempt.select().where(JobAttempt.job == job_id).order_by(JobAttempt.attempt))
    return JobView(job, attempt_history(job, ended))


def queue_position(job: Job) -> int:
    """1-based position among claimable queued jobs (priority, then age); 0 if not queued."""
    if job.state != QUEUED:
        return 0
    ahead = (
        Job.select()
        .where(
            (Job.state == QUEUED)
            & ((Job.priority > job.priority) | ((Job.priority == job.priority) & (Job.id < job.id)))
        )
        .count()
    )
    return ahead + 1


def watch_view(who: Principal, job_id: str) -> tuple[JobView, int]:
    view = get_job(who, job_id)
    return view, queue_position(view.job)


def list_jobs(who: Principal, page: PageRequest, state: str, kind: str, submitter: str) -> Page[Job]:
    target = submitter or who.user_id
    if target != who.user_id and not who.is_admin:
        raise PermissionDenied("only admins may list other users' jobs", reason="NOT_OWNER")
    fields = [f for f in Job._meta.sorted_fields if f.name not in ("input_data", "output_data")]
    query = Job.select(*fields).where(Job.submitter == target)
    if state:
        query = query.where(Job.state == state)
    if kind:
        query = query.where(Job.kind == kind)
    return keyset_page(query, Job.id, page, {"s": state, "k": kind, "u": target}, descending=True)


def cancel(rt: Runtime, who: Principal, job_id: str, reason: str) -> Job:
    if len(reason) > 500:
        raise InvalidArgument("reason: at most 500 characters")
    policy = policy_of(rt)
    with rt.store.write() as tx:
        job = _lock(rt, job_id)
        if job is None or not (who.is_admin or job.submitter == who.user_id):
            raise _not_found(job_id)
        if job.state in TERMINAL:
            raise FailedPrecondition(f"jobs/{job_id} is already {job.state}", reason="JOB_FINISHED")
        if job.state == QUEUED:
            _refund_and_finish(tx, job, CANCELLED, reason or "cancelled", policy)
        elif not job.cancel_requested:
            job.cancel_requested = True
            job.error = reason or "cancelled"
            job.save()
            tx.emit("job.cancel_requested", f"jobs/{job.id}", {})
        return job


def requeue(rt: Runtime, who: Principal, job_id: str) -> Job:
    """Dead letter -> queued with a fresh set of attempts; the budget is held again."""
    with rt.store.write() as tx:
        job = _lock(rt, job_id)
        if job is None:
            raise _not_found(job_id)
        if job.state != FAILED:
            raise FailedPrecondition(
                f"only failed jobs can be requeued; jobs/{job_id} is {job.state}", reason="JOB_NOT_FAILED"
            )
        if job.payload_purged:
            raise FailedPrecondition("the job's input was purged", reason="PAYLOAD_PURGED")
        if job.budget:
            ledger.hold(tx, job.submitter, job.budget, f"jobs/{job.id}", reason="job.hold")
        job.attempt_limit = job.attempt + job.max_attempts
        job.finish_time = None
        job.purge_time = None
        job.error = ""
        job.cancel_requested = False
        job.close_deadline = (
            tx.now + timedelta(milliseconds=job.schedule_to_close_ms) if job.schedule_to_close_ms else None
        )
        _enqueue_fields(job, tx.now, tx.now)
        job.save()
        tx.emit("job.requeued", f"jobs/{job.id}", {"by": f"users/{who.user_id}", "watch_keys": [QUEUE_KEY]})
        return job


def get_attestation(who: Principal, job_id: str) -> Attestation:
    job = Job.get_or_none(Job.id == job_id)
    if job is None or not _visible(who, job):
        raise _not_found(job_id)
    if job.attestation_sig is not None:
        return attestation_of(job)
    legacy = JobAttestation.get_or_none(JobAttestation.job == job_id)
    if legacy is None:
        raise FailedPrecondition(
            f"jobs/{job_id} has no attestation: it is {job.state}", reason="NOT_ATTESTED"
        )
    return Attestation.of(legacy)


def attestation_of(job: Job) -> Attestation:
    """The signed envelope of a succeeded job, its statement rebuilt from the row (see
    Job.attestation_sig)."""
    payload = statement_json(
        job.id,
        job.kind,
        job.submitter,
        job.model_ref,
        job.input_digest,
        job.attempt,
        job.provider,
        job.start_time,
        job.finish_time,
        job.output_digest,
    )
    return Attestation(job.id, PAYLOAD_TYPE, payload, job.attestation_key_id, bytes(job.attestation_sig))


@dataclass(frozen=True)
class QueueStats:
    depths: list[tuple[str, int, int]]
    oldest_queued_age_s: float
    window_s: float
    succeeded: int
    failed: int
    average_run_time_s: float

    @property
    def throughput(self) -> float:
        return (self.succeeded + self.failed) / self.window_s

    @property
    def success_rate(self) -> float:
        done = self.succeeded + self.failed
        return self.succeeded / done if done else 0.0


def queue_stats(rt: Runtime, window_s: float) -> QueueStats:
    now = rt.now()
    # Each through its partial index: job_claim_order (queued), job_lease_due (running jobs,
    # and only they, have a lease expiry).
    queued = Job.select(Job.priority, peewee.fn.COUNT(Job.id).alias("n")).where(Job.state == QUEUED)
    running = Job.select(Job.priority, peewee.fn.COUNT(Job.id).alias("n")).where(
        Job.lease_expire_time.is_null(False) & (Job.state == RUNNING)
    )
    depths = [
        (state, r.priority, r.n)
        for state, query in ((QUEUED, queued), (RUNNING, running))
        for r in query.group_by(Job.priority).order_by(Job.priority.desc())
    ]
    oldest = (
        Job.select(peewee.fn.MIN(Job.queue_time))
        .where((Job.state == QUEUED) & (Job.run_after <= now))
        .scalar()
    )
    oldest_age = 0.0
    if oldest is not None:
        if not isinstance(oldest, datetime):
            oldest = TimestampField().python_value(oldest)
        oldest_age = max(0.0, (now - oldest).total_seconds())
    since = now - timedelta(seconds=window_s)
    rows = {
        r.state: (r.n, r.run_us)
        for r in Job.select(
            Job.state,
            peewee.fn.COUNT(Job.id).alias("n"),
            peewee.fn.AVG(Job.finish_time - Job.start_time).alias("run_us"),
        )
        .where((Job.finish_time >= since) & Job.state.in_([SUCCEEDED, FAILED]))
        .group_by(Job.state)
    }
    succeeded, run_us = rows.get(SUCCEEDED, (0, None))
    failed = rows.get(FAILED, (0, None))[0]
    return QueueStats(
        depths, oldest_age, window_s, int(succeeded), int(failed), float(run_us or 0) / 1_000_000
    )


# -- scheduler tasks -------------------------------------------------------------------------


def _due(rt: Runtime, column: peewee.Field, states: tuple[str, ...], limit: int) -> list[str]:
    return [
        r.id
        for r in Job.select(Job.id)
        .where((column <= rt.now()) & Job.state.in_(states))
        .order_by(column)
        .limit(limit)
    ]


def rescue_expired_leases(rt: Runtime) -> int:
    """Running jobs whose lease ran out (no heartbeat, or start-to-close reached): retried or
    dead-lettered."""
    policy = policy_of(rt)
    total = 0
    while True:
        ids = _due(rt, Job.lease_expire_time, (RUNNING,), policy.task_batch)
        with rt.store.write() as tx:
            for job_id in ids:
                job = _lock(rt, job_id)
                if job is None or job.state != RUNNING or job.lease_expire_time is None:
                    continue
                if job.lease_expire_time > tx.now:
                    continue  # heartbeated since we looked
                timed_out = job.attempt_deadline is not None and job.attempt_deadline <= tx.now
                outcome = "timed_out" if timed_out else "lease_expired"
                error = (
                    "start-to-close timeout"
                    if timed_out
                    else f"lease expired: no heartbeat from users/{job.provider}"
                )
                _retry_or_dead(tx, job, outcome, error, True, policy)
                total += 1
        if len(ids) < policy.task_batch:
            return total


def enforce_deadlines(rt: Runtime) -> int:
    """Schedule-to-start (queued too long) and schedule-to-close (not done in time) -> failed, refunded."""
    policy = policy_of(rt)
    total = 0
    for column, states, reason in (
        (Job.start_deadline, (QUEUED,), "schedule-to-start timeout"),
        (Job.close_deadline, (QUEUED, RUNNING), "schedule-to-close timeout"),
    ):
        while True:
            ids = _due(rt, column, states, policy.task_batch)
            with rt.store.write() as tx:
                for job_id in ids:
                    job = _lock(rt, job_id)
                    if job is None or job.state not in states:
                        continue
                    deadline = getattr(job, column.name)
                    if deadline is None or deadline > tx.now:
                        continue
                    if job.state == RUNNING:
                        _close_attempt(tx, job, "timed_out", reason)
                    _refund_and_finish(tx, job, FAILED, reason, policy)
                    total += 1
            if len(ids) < policy.task_batch:
                break
    return total


def purge_payloads(rt: Runtime) -> int:
    """Deletes inline input/output data of jobs finished longer ago than the retention period."""
    policy = policy_of(rt)
    total = 0
    while True:
        with rt.store.write() as tx:
            ids = [
                r.id
                for r in Job.select(Job.id)
                .where(Job.purge_time <= tx.now)
                .order_by(Job.purge_time)
                .limit(policy.task_batch)
            ]
            if ids:
                Job.update(input_data=None, output_data=None, payload_purged=True, purge_time=None).where(
                    Job.id.in_(ids)
                ).execute()
        total += len(ids)
        if len(ids) < policy.task_batch:
            return total
