"""Completion: a worker's results are checked against their leases, signed, recorded and paid
for (minus the platform fee) with a fixed number of statements per batch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from coordd.core.errors import DomainError, FailedPrecondition
from coordd.core.principal import Principal
from coordd.domain import ledger
from coordd.domain.jobs.attestation import Attestation, statement_json
from coordd.domain.jobs.graph import parents_succeeded
from coordd.domain.jobs.lease_memo import Remembered, memo_of
from coordd.domain.jobs.policy import JobPolicy, platform_fee, policy_of
from coordd.domain.jobs.specs import LeaseRef, Payload
from coordd.domain.jobs.states import CANCELLED
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


class _Accepted:
    """The completions of one batch that will be recorded, with their payments."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.done: list[Attestation] = []
        self.payments: list[ledger.Entry] = []
        self.paid = self.fees = 0
        self.parents: list[str] = []

    def add(
        self, attestation: Attestation, submitter: str, budget: int, fee: int, has_children: bool
    ) -> None:
        self.done.append(attestation)
        job_id = attestation.job_id
        if has_children:
            self.parents.append(job_id)
        if budget:
            self.payments.append(
                ledger.release_entry(submitter, self.provider, budget, f"jobs/{job_id}", fee, "job.payment")
            )
            self.paid += budget - fee
            self.fees += fee


def _complete_batch(
    rt: Runtime, tx: Tx, who: Principal, items: list[tuple[LeaseRef, Payload]]
) -> list[Attestation | DomainError]:
    """Records results for many leases with a fixed number of statements whatever the batch
    size, and pays for them.

    Leases this process handed out (domain.jobs.lease_memo) are signed from what their claim
    remembered and recorded by one UPDATE that is itself the lease check. The others, and
    any that UPDATE did not find, take the locking path: one SELECT ... FOR UPDATE that is the
    lease check, one UPDATE that records the outputs and signatures. Then one ledger batch
    and one event.

    A bad lease yields its error without touching anything. A job cancelled while running
    is finalized as cancelled (and refunded) and yields JOB_CANCELLED; that still commits.
    """
    policy = policy_of(rt)
    provider = who.user_id
    sign, key_id = rt.signer.sign, rt.signer.key_id
    purge_time = tx.now + timedelta(seconds=policy.payload_retention_s)
    results: list[Attestation | DomainError | None] = [None] * len(items)
    accepted = _Accepted(provider)
    memo = memo_of(rt)
    fast: list[tuple[int, Remembered, Attestation, int]] = []
    for i, (lease, output) in enumerate(items):
        known = memo.take(lease.job_id, lease.attempt, lease.lease_id)
        if known is None:
            continue
        payload = statement_json(
            lease.job_id,
            known.kind,
            known.submitter,
            known.model_ref,
            known.input_digest,
            known.attempt,
            provider,
            queries.time_of_us(known.start_us),
            tx.now,
            output.sha256,
        )
        signature = sign(pae(PAYLOAD_TYPE, payload))
        fee = platform_fee(known.budget, policy)
        fast.append((i, known, Attestation(lease.job_id, PAYLOAD_TYPE, payload, key_id, signature), fee))
    if fast:
        updated = queries.complete_leased(
            rt.store,
            provider,
            tx.now,
            purge_time,
            key_id,
            [
                (
                    a.job_id,
                    k.attempt,
                    k.lease_id,
                    k.budget,
                    fee,
                    items[i][1].data,
                    items[i][1].uri,
                    items[i][1].sha256,
                    a.signature,
                )
                for i, k, a, fee in fast
            ],
        )
        for i, known, attestation, fee in fast:
            has_children = updated.get(attestation.job_id)
            if has_children is not None:
                results[i] = attestation
                accepted.add(attestation, known.submitter, known.budget, fee, has_children)
    rest = [i for i, r in enumerate(results) if r is None]
    if rest:
        _complete_locking(rt, tx, who, [(i, *items[i]) for i in rest], purge_time, results, accepted)
    if accepted.done:
        ledger.post_many(tx, accepted.payments)
        if accepted.parents:
            parents_succeeded(tx, accepted.parents)
        names = [f"jobs/{a.job_id}" for a in accepted.done]
        # One event per batch: its watch keys wake each job's watchers.
        tx.emit(
            "job.succeeded",
            names[0],
            {
                "jobs": names,
                "provider": f"users/{provider}",
                "paid": accepted.paid,
                "fee": accepted.fees,
                "watch_keys": names,
            },
        )
    return [r for r in results if r is not None]


def _complete_locking(
    rt: Runtime,
    tx: Tx,
    who: Principal,
    items: list[tuple[int, LeaseRef, Payload]],
    purge_time: datetime,
    results: list[Attestation | DomainError | None],
    accepted: _Accepted,
) -> None:
    """The leases not remembered (or not found by the remembered path): locked and checked by
    one SELECT ... FOR UPDATE, signed, then recorded by one UPDATE."""
    policy = policy_of(rt)
    provider = who.user_id
    locked = {
        row.id: row
        for row in queries.lock_leased(
            rt.store, provider, [(lease.job_id, lease.attempt, lease.lease_id) for _, lease, _ in items]
        )
    }
    successes: list[tuple[str, int, bytes | None, str, str, bytes]] = []
    sign, key_id = rt.signer.sign, rt.signer.key_id
    for i, lease, output in items:
        row = locked.pop(lease.job_id, None)
        if row is None:
            results[i] = _explain_rejected_completion(rt, tx, who, lease, policy)
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
        results[i] = attestation
        accepted.add(attestation, row.submitter, row.budget, fee, row.has_children)
    queries.record_successes(rt.store, tx.now, purge_time, key_id, successes)


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
