"""Batched completions and their lease check: a repeated or stale lease is refused, another
provider's lease too, a job cancelled while running is cancelled and refunded, and nothing is
paid twice."""

from __future__ import annotations

import hashlib

from coordd.core.errors import DomainError
from coordd.core.principal import Principal
from coordd.domain import jobs, ledger
from coordd.store.jobs import queries

OUT = jobs.Payload(b"ok", "", hashlib.sha256(b"ok").hexdigest())


def _queue(env, count: int, budget: int = 0) -> None:
    spec = jobs.make_spec(
        "inference", "m", jobs.Payload(b"x", "", ""), [], 0, budget, 0, 2, None, None, None, None
    )
    with env.server.rt.store.write() as tx:
        jobs.insert_jobs(tx, env.alice_id, [spec] * count)


def _provider(env) -> tuple[Principal, jobs.Worker]:
    who = Principal(env.worker_a_id, frozenset({"provider"}), "token")
    return who, jobs.Worker(who.user_id, frozenset(), 0)


def _lease(item: jobs.Leased) -> jobs.LeaseRef:
    return jobs.LeaseRef(item.job.id, item.job.attempt, item.lease_id)


def _reason(result: object) -> str:
    assert isinstance(result, DomainError), result
    return result.reason


def test_a_lease_completed_twice_is_refused_the_second_time_and_paid_once(env):
    rt = env.server.rt
    _queue(env, 1, budget=100)
    who, worker = _provider(env)
    [item] = jobs.claim(rt, worker, 1)
    before = ledger.balance(env.worker_a_id).available

    first = jobs.complete_many(rt, who, [(_lease(item), OUT), (_lease(item), OUT)])
    again = jobs.complete_many(rt, who, [(_lease(item), OUT)])

    assert isinstance(first[0], jobs.Attestation)
    assert _reason(first[1]) == "STALE_LEASE", "the same lease twice in one batch"
    assert _reason(again[0]) == "STALE_LEASE"
    assert ledger.balance(env.worker_a_id).available - before == 100 - 10, "paid once, minus the 10% fee"


def test_a_stale_remembered_lease_cannot_complete_the_job_claimed_again(env):
    rt = env.server.rt
    _queue(env, 1)
    who, worker = _provider(env)
    [first] = jobs.claim(rt, worker, 1)
    assert jobs.return_leases(rt, [first]) == 1  # back in the queue; its lease is void
    [second] = jobs.claim(rt, worker, 1)
    assert second.job.id == first.job.id and second.lease_id != first.lease_id

    [stale] = jobs.complete_many(rt, who, [(_lease(first), OUT)])
    [done] = jobs.complete_many(rt, who, [(_lease(second), OUT)])

    assert _reason(stale) == "STALE_LEASE"
    assert isinstance(done, jobs.Attestation)
    assert queries.job_by_id(done.job_id).attempt == second.job.attempt


def test_another_providers_completion_of_a_remembered_lease_is_refused(env):
    rt = env.server.rt
    _queue(env, 1)
    who, worker = _provider(env)
    [item] = jobs.claim(rt, worker, 1)
    intruder = Principal(env.worker_b_id, frozenset({"provider"}), "token")

    [refused] = jobs.complete_many(rt, intruder, [(_lease(item), OUT)])
    [done] = jobs.complete_many(rt, who, [(_lease(item), OUT)])

    assert _reason(refused) == "NOT_LEASE_HOLDER"
    assert isinstance(done, jobs.Attestation), "the holder still completes"


def test_a_remembered_lease_on_a_job_cancelled_while_running_cancels_and_refunds_it(env):
    rt = env.server.rt
    _queue(env, 1, budget=100)
    who, worker = _provider(env)
    [item] = jobs.claim(rt, worker, 1)
    alice = Principal(env.alice_id, frozenset({"participant"}), "token")
    jobs.cancel(rt, alice, item.job.id, "no longer needed")
    available, held = env.balance(env.alice_id)

    [result] = jobs.complete_many(rt, who, [(_lease(item), OUT)])

    assert _reason(result) == "JOB_CANCELLED"
    assert queries.job_by_id(item.job.id).state == jobs.CANCELLED
    assert env.balance(env.alice_id) == (available + 100, held - 100), "the hold is refunded"
    assert ledger.balance(env.worker_a_id).available == 0, "nothing is paid"
