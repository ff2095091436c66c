"""Fair share: within a priority, claims alternate between submitters instead of draining
one backlog first; aging raises a waiting job's priority so a low priority never starves."""

from __future__ import annotations

from coordd.domain import jobs, ledger
from coordd_client.v1 import job_pb2
from tests.support.server import bearer

_SPEC = jobs.make_spec("inference", "m", jobs.Payload(b"x", "", ""), [], 0, 0, 0, 1, None, None, None, None)


def _claim_until_all_started(rt, provider_id: str, wanted: set[str], batch: int) -> int:
    """Claims `batch` at a time; how many jobs were claimed when the last of `wanted` started."""
    worker = jobs.Worker(provider_id, frozenset(), 0)
    started = 0
    seen: set[str] = set()
    while True:
        leased = jobs.claim(rt, worker, batch)
        assert leased, "the queue ran dry before every wanted job started"
        for item in leased:
            started += 1
            seen.add(item.job.id)
            if wanted <= seen:
                return started


def test_ten_jobs_behind_a_10000_job_backlog_start_within_the_first_21_claimed(env):
    """Bound: the k-th job of a submitter arriving behind a backlog starts after at most k
    jobs of the other submitter (start-time fair queuing): all 10 within 2 * 10 + 1 = 21
    jobs, measured one claim at a time."""
    rt = env.server.rt
    bob_id, _ = env.server.make_user("participant")
    with rt.store.write() as tx:
        for _ in range(10):
            jobs.insert_jobs(tx, env.alice_id, [_SPEC] * 1000)
    with rt.store.write() as tx:
        ledger.deposit(tx, bob_id, 10, "seed")
        bobs = {j.id for j in jobs.insert_jobs(tx, bob_id, [_SPEC] * 10)}
    assert _claim_until_all_started(rt, env.worker_a_id, bobs, 1) <= 21


def test_with_claims_of_100_the_ten_jobs_start_in_the_first_claim(env):
    rt = env.server.rt
    bob_id, _ = env.server.make_user("participant")
    with rt.store.write() as tx:
        for _ in range(10):
            jobs.insert_jobs(tx, env.alice_id, [_SPEC] * 1000)
        bobs = {j.id for j in jobs.insert_jobs(tx, bob_id, [_SPEC] * 10)}
    assert _claim_until_all_started(rt, env.worker_a_id, bobs, 100) <= 100


def _claim_order(env, n):
    return [env.claim(env.worker_a)[0].job.name for _ in range(n)]


def test_one_claim_at_a_time_alternates_between_two_backlogs(env):
    _, bob = env.server.make_user("participant")
    alice_jobs = [env.submit().name for _ in range(4)]
    bob_jobs = [env.submit(token=bob).name for _ in range(4)]
    claimed = _claim_order(env, 8)
    owners = "".join("a" if n in alice_jobs else "b" for n in claimed)
    # Virtual times: alice 1, 2, 3, 4; bob (arriving with alice's head at 1) 2, 3, 4, 5; ties
    # go to the older job. FIFO would have been aaaabbbb.
    assert owners == "aabababb"
    assert set(claimed) == set(alice_jobs + bob_jobs)


def test_a_waiting_low_priority_job_ages_to_the_top_and_is_not_starved(env, clock):
    rt = env.server.rt
    _, bob = env.server.make_user("participant")
    low = env.submit(priority=0)
    clock.advance(9 * jobs.DEFAULT_POLICY.priority_aging_s + 1)
    for _ in range(3):
        env.submit(token=bob, priority=9)
    assert jobs.age_priorities(rt) == 1
    [first] = env.claim(env.worker_a)
    assert first.job.name == low.name  # aged to 9, and ahead of the later priority-9 jobs
    assert env.get(low.name).priority == 0  # the submitted priority is what a job shows


def test_aging_is_gradual(env, clock):
    rt = env.server.rt
    env.submit(priority=2)
    clock.advance(jobs.DEFAULT_POLICY.priority_aging_s * 3 + 1)
    jobs.age_priorities(rt)
    [leased] = env.claim(env.worker_a)
    assert leased.job.priority == 5  # the claim reply shows the effective priority
    reply = env.stub.GetJob(job_pb2.GetJobRequest(name=leased.job.name), metadata=bearer(env.alice)).job
    assert reply.priority == 2
