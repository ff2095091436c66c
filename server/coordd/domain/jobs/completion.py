"""Completion: a worker's results are checked against their leases, signed, recorded and paid
for (minus the platform fee) with a fixed number of statements per batch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from coordd.core.errors import DomainError, FailedPrecondition
from coordd.core.principal import Principal
from coordd.domain import ledger
from coordd.domain.jobs.attestation import Attestation, statement_json
from coordd.domain.jobs.graph import parents_succeeded
from coordd.domain.jobs.leases import Leased, lease_to
from coordd.domain.jobs.policy import JobPolicy, platform_fee, policy_of
from coordd.domain.jobs.specs import LeaseRef, Payload, Worker
from coordd.domain.jobs.states import CANCELLED, SUCCEEDED
from coordd.domain.jobs.transitions import close_attempt, lease_error, lock, refund_and_finish
from coordd.runtime import Runtime
from coordd.store.db import Tx
from coordd.store.jobs import queries
from coordd.store.jobs.models import Job
from coordd_client.attestation import PAYLOAD_TYPE, pae


@dataclass(frozen=True)
class Completion:
    job: Job
    attestation: Attestation


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
        for row in queries.lock_leased(
            rt.store, provider, [(lease.job_id, lease.attempt, lease.lease_id) for lease, _ in items]
        )
    }
    results: list[Attestation | DomainError] = []
    done: list[Attestation] = []
    successes: list[tuple[str, int, bytes | None, str, str, bytes]] = []
    payments: list[ledger.Entry] = []
    paid = fees = 0
    parents: list[str] = []
    accepted: set[str] = set()
    sign, key_id = rt.signer.sign, rt.signer.key_id
    for lease, output in items:
        row = locked.pop(lease.job_id, None)
        if row is None and lease.job_id in accepted:
            # The same job twice in one batch: its row is not updated yet, so the lease still
            # looks held; the first completion is the one (before: an AssertionError below).
            results.append(
                FailedPrecondition(
                    f"the lease on jobs/{lease.job_id} attempt {lease.attempt} is no longer held:"
                    " the job is completed earlier in this batch",
                    reason="STALE_LEASE",
                    metadata={"state": SUCCEEDED, "attempt": str(lease.attempt)},
                )
            )
            continue
        if row is None:
            results.append(_explain_rejected_completion(rt, tx, who, lease, policy))
            continue
        accepted.add(row.id)
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
        if row.has_children:
            parents.append(row.id)
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
    queries.record_successes(rt.store, tx.now, purge_time, key_id, successes)
    ledger.post_many(tx, payments)
    if parents:
        parents_succeeded(tx, parents)
    names = [f"jobs/{a.job_id}" for a in done]
    # One event per batch: its watch keys wake each job's watchers.
    tx.emit(
        "job.succeeded",
        names[0],
        {"jobs": names, "provider": f"users/{provider}", "paid": paid, "fee": fees, "watch_keys": names},
    )
    return results


def _explain_rejected_completion(
    rt: Runtime, tx: Tx, who: Principal, lease: LeaseRef, policy: JobPolicy
) -> DomainError:
    """Why the conditional UPDATE skipped a completion: a lease error, or a pending
    cancellation, which is carried out now."""
    job = lock(rt, lease.job_id)
    error = lease_error(job, who, lease)
    if error is not None:
        return error
    assert job is not None and job.cancel_requested
    close_attempt(tx, job, CANCELLED, "cancelled by request")
    refund_and_finish(tx, job, CANCELLED, "cancelled while running", policy)
    return FailedPrecondition(
        f"jobs/{job.id} was cancelled; the result is not accepted", reason="JOB_CANCELLED"
    )


def complete(rt: Runtime, who: Principal, lease: LeaseRef, output: Payload) -> Completion:
    with rt.store.write() as tx:
        [result] = _complete_batch(rt, tx, who, [(lease, output)])
    if isinstance(result, DomainError):
        raise result
    # The batch path loads only the columns it needs; the single call returns the whole job.
    return Completion(queries.job_by_id(result.job_id), result)


def complete_many(
    rt: Runtime, who: Principal, items: list[tuple[LeaseRef, Payload]]
) -> list[Attestation | DomainError]:
    """Completes a batch in one transaction; each item succeeds or fails on its own. Batched
    acks are what make a worker's throughput independent of per-call overhead."""
    with rt.store.write() as tx:
        return _complete_batch(rt, tx, who, items)


def complete_and_claim(
    rt: Runtime, who: Principal, items: list[tuple[LeaseRef, Payload]], worker: Worker, limit: int
) -> tuple[list[Attestation | DomainError], list[Leased]]:
    """A worker stream's message: its completions, then a claim of up to `limit` more jobs
    (none when 0), in one transaction: one commit for both."""
    with rt.store.write() as tx:
        results = _complete_batch(rt, tx, who, items) if items else []
        leased = lease_to(rt, tx, worker, limit) if limit else []
    return results, leased
