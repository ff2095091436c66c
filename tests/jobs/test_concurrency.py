"""Jobs under concurrency: no double claim, gRPC workers never share a job, the running
scheduler, replicas woken through Redis, a killed worker process."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import timedelta

import grpc
import peewee
import pytest

from coordd.domain import jobs, ledger
from coordd.store.jobs.models import JobAttempt
from coordd_client.v1 import job_pb2, job_pb2_grpc
from tests.helpers import rpc_error
from tests.jobs.rows import count_jobs
from tests.jobs.support import TEST_POLICY, seconds
from tests.support.server import ServerHandle, bearer

# -- concurrency ----------------------------------------------------------------------------------


def test_no_double_claim_8_workers_x_500_jobs(env):
    """8 concurrent workers drain 4,000 jobs through the domain functions the servicer calls."""
    rt = env.server.rt
    spec = jobs.make_spec(
        "inference", "m", jobs.Payload(b"x", "", ""), [], 0, 1, 0, 1, None, None, None, None
    )
    with rt.store.write() as tx:
        ledger.deposit(tx, env.alice_id, 4_000, "bulk")
        jobs.insert_jobs(tx, env.alice_id, [spec] * (8 * 500))
    from coordd.core.principal import Principal

    claimed: list[list[tuple[str, int]]] = [[] for _ in range(8)]
    errors: list[BaseException] = []
    providers = [env.server.make_user("provider")[0] for _ in range(8)]

    def work(index: int) -> None:
        who = Principal(providers[index], frozenset({"provider"}), "token")
        worker = jobs.Worker(who.user_id, frozenset(), 0)
        try:
            while True:
                batch = jobs.claim(rt, worker, 50)
                if not batch:
                    return
                claimed[index].extend((x.job.id, x.job.attempt) for x in batch)
                leases = [jobs.LeaseRef(x.job.id, x.job.attempt, x.lease_id) for x in batch]
                out = jobs.Payload(b"ok", "", hashlib.sha256(b"ok").hexdigest())
                results = jobs.complete_many(rt, who, [(lease, out) for lease in leases])
                bad = [r for r in results if not isinstance(r, jobs.Attestation)]
                assert not bad, bad
        except BaseException as exc:
            errors.append(exc)
        finally:
            rt.store.close_thread_connection()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    everything = [c for per_worker in claimed for c in per_worker]
    assert len(everything) == 4_000 and len({job_id for job_id, _ in everything}) == 4_000
    assert {attempt for _, attempt in everything} == {1}
    assert sum(1 for per_worker in claimed if per_worker) >= 2, "the work was actually shared"
    assert count_jobs(jobs.SUCCEEDED) == 4_000
    assert JobAttempt.select().count() == 0, "a successful attempt is read from its job row"
    paid = sum(ledger.balance(p).available for p in providers)
    assert paid == 4_000, "a budget of 1 carries no fee at 10%: fees round down"


def test_concurrent_grpc_workers_never_share_a_job(env):
    """The same property end to end: 4 workers long-polling over gRPC while jobs arrive."""
    total = 120
    seen: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()
    tokens = [
        env.worker_a,
        env.worker_b,
        env.server.make_user("provider")[1],
        env.server.make_user("provider")[1],
    ]

    def work(token: str) -> None:
        try:
            while not stop.is_set():
                for leased in env.claim(token, max_jobs=5, wait_s=0.5):
                    with lock:
                        seen.append(leased.job.name)
                    env.complete(token, leased.lease)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    names = [env.submit(budget=1).name for _ in range(total)]
    deadline = time.monotonic() + 60
    while len(seen) < total and time.monotonic() < deadline and not errors:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors, errors[:3]
    assert sorted(seen) == sorted(names), "every job once, none twice"
    assert count_jobs(jobs.SUCCEEDED) == total


def test_job_tables_reject_a_second_attempt_row(env):
    env.submit(budget=1)
    [leased] = env.claim(env.worker_a)
    job_id = leased.job.name.split("/")[1]
    with pytest.raises(peewee.IntegrityError), env.server.rt.store.write():
        JobAttempt.create(job=job_id, attempt=1, provider="x", lease_id="y", start_time=env.server.rt.now())
    env.complete(env.worker_a, leased.lease)


def test_the_running_scheduler_rescues_expired_leases_by_itself(server, clock):
    """The tasks are registered: with the daemon's scheduler on, an expired lease is rescued
    without anyone calling the task."""
    from coordd.scheduler.tasks import all_tasks

    names = {t.name for t in all_tasks()}
    assert {"jobs-rescue-expired-leases", "jobs-enforce-deadlines", "jobs-purge-payloads"} <= names
    jobs.set_policy(server.rt, TEST_POLICY)
    stub = job_pb2_grpc.JobServiceStub(server.channel)
    alice_id, alice = server.make_user("participant")
    _, worker = server.make_user("provider")
    with server.rt.store.write() as tx:
        ledger.deposit(tx, alice_id, 100, "seed")
    job = stub.SubmitJob(
        job_pb2.SubmitJobRequest(
            kind=job_pb2.JOB_KIND_TRAINING,
            model_ref="m",
            input=job_pb2.Payload(uri="s3://b/k", sha256="a" * 64),
            budget=100,
            max_attempts=1,
            heartbeat_timeout=seconds(5),
        ),
        metadata=bearer(alice),
    ).job
    stub.ClaimJobs(job_pb2.ClaimJobsRequest(), metadata=bearer(worker))
    clock.advance(6)
    deadline = time.monotonic() + 15
    state = job_pb2.JOB_STATE_RUNNING
    while state == job_pb2.JOB_STATE_RUNNING and time.monotonic() < deadline:
        time.sleep(0.1)
        state = stub.GetJob(job_pb2.GetJobRequest(name=job.name), metadata=bearer(alice)).job.state
    assert state == job_pb2.JOB_STATE_FAILED, "one attempt only: the rescue dead-letters it"
    assert ledger.balance(alice_id) == ledger.Balance(alice_id, 100, 0)
    assert ledger.check_consistency() == []


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_worker_waiting_on_another_replica_is_woken_through_redis(settings_factory, clock, monkeypatch):
    """Two replicas on one PostgreSQL and Redis: a job submitted on A reaches a worker
    long-polling on B through the queue event, not through B's periodic re-poll."""
    from coordd.api import job_workers as jobs_api

    monkeypatch.setattr(jobs_api, "REPOLL_S", 60.0)  # only an event can wake the waiter in time
    a = ServerHandle(settings_factory(scheduler_enabled=False), clock)
    b = ServerHandle(settings_factory(scheduler_enabled=False), clock)
    try:
        _, alice = a.make_user("participant")
        _, worker = a.make_user("provider")
        stub_a, stub_b = job_pb2_grpc.JobServiceStub(a.channel), job_pb2_grpc.JobServiceStub(b.channel)
        request = job_pb2.ClaimJobsRequest()
        request.wait.FromTimedelta(timedelta(seconds=30))
        got: list[list[job_pb2.LeasedJob]] = []
        poller = threading.Thread(
            target=lambda: got.append(list(stub_b.ClaimJobs(request, metadata=bearer(worker)).jobs))
        )
        poller.start()
        deadline = time.monotonic() + 10
        while b.rt.notifier.waiting(jobs.QUEUE_KEY) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        job = stub_a.SubmitJob(
            job_pb2.SubmitJobRequest(
                kind=job_pb2.JOB_KIND_INFERENCE, model_ref="m", input=job_pb2.Payload(data=b"x")
            ),
            metadata=bearer(alice),
        ).job
        assert job.state == job_pb2.JOB_STATE_QUEUED, "no worker waits on replica A"
        poller.join(20)
        assert not poller.is_alive()
        [[leased]] = got
        assert leased.job.name == job.name
    finally:
        b.stop()
        a.stop()


_WORKER_SCRIPT = """
import sys
import grpc
from coordd_client.v1 import job_pb2, job_pb2_grpc

target, token = sys.argv[1], sys.argv[2]
stub = job_pb2_grpc.JobServiceStub(grpc.insecure_channel(target))
reply = stub.ClaimJobs(job_pb2.ClaimJobsRequest(), metadata=(("authorization", "Bearer " + token),))
sys.stdout.buffer.write(reply.jobs[0].lease.SerializeToString())
sys.stdout.flush()
import os
import time

os.close(1)  # end of output: the test reads the lease to EOF
time.sleep(600)  # "working" until killed
"""


def test_a_killed_worker_process_loses_its_job_to_another_worker_which_is_paid_once(env, clock, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    job = env.submit(budget=400, heartbeat_timeout=seconds(10))
    script = tmp_path / "worker.py"
    script.write_text(_WORKER_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), env.server.target, env.worker_a], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        lease = job_pb2.Lease.FromString(proc.stdout.read())
        assert lease.job == job.name and lease.attempt == 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert env.get(job.name).state == job_pb2.JOB_STATE_RUNNING
    clock.advance(11)
    assert jobs.rescue_expired_leases(env.server.rt) == 1
    clock.advance(TEST_POLICY.backoff_max_s)
    [retry] = env.claim(env.worker_b)
    assert retry.lease.attempt == 2
    env.complete(env.worker_b, retry.lease)
    # The dead worker's lease, replayed by anyone, is stale.
    assert (
        rpc_error(grpc.StatusCode.FAILED_PRECONDITION, env.complete, env.worker_a, lease).reason
        == "STALE_LEASE"
    )
    assert env.balance(env.worker_b_id) == (360, 0) and env.balance(env.worker_a_id) == (0, 0)
    assert env.balance(env.alice_id) == (9_600, 0)
