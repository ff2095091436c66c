"""Replicas die, drain and come back: the scheduler moves to exactly one other replica that every
replica names, and a stream through nginx ends with a status a client retries."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest

from coordd_client.v1 import job_pb2, job_pb2_grpc, status_pb2, status_pb2_grpc
from tests.cluster.cluster import LEASE_S, Cluster, bearer, wait_for

pytestmark = pytest.mark.e2e


def _failover(cluster: Cluster, stop) -> tuple[float, str]:  # type: ignore[no-untyped-def]
    """Stops the leader with `stop(daemon)`; returns (seconds until the survivors agree on a new
    leader, its instance id)."""
    old = cluster.leader()
    old_id = cluster.status(old).instance_id
    survivors = [r for r in cluster.replicas if r is not old]
    started = time.monotonic()
    stop(old)
    new = cluster.leader(among=survivors, timeout=10 * LEASE_S)
    elapsed = time.monotonic() - started
    new_id = cluster.status(new).instance_id
    assert new_id != old_id
    return elapsed, new_id


def test_sigkill_of_the_leader_hands_the_scheduler_to_one_other_replica_named_by_every_replica(
    own_cluster: Cluster,
):
    name, submitter, worker = _job_with_a_dead_worker(own_cluster)
    elapsed, new_id = _failover(own_cluster, lambda d: d.proc.kill())
    print(f"\nfigure: failover after SIGKILL of the leader {elapsed:.2f} s (lease {LEASE_S} s)")
    # The lease rescue the dead leader owed is done by the new one, once (nginx skips the dead
    # replica: its port refuses connections).
    job = _finish_after_rescue(own_cluster.front, name, submitter, worker)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [a.outcome for a in job.attempts] == ["lease_expired", "succeeded"]
    # Tasks keep running under the new leader: its task runs move on.
    leader = own_cluster.leader()
    runs = {t.name: t.run_count for t in own_cluster.status(leader).scheduler.tasks}
    wait_for(
        "the new leader to run its tasks",
        lambda: any(
            t.run_count > runs.get(t.name, 0) and t.name == "node-detect-down"
            for t in own_cluster.status(leader).scheduler.tasks
        ),
        timeout=10,
    )
    # The killed replica comes back as a follower: still one leader, the same one.
    killed = next(i for i, r in enumerate(own_cluster.replicas) if r.proc.poll() is not None)
    back = own_cluster.restart(killed)
    assert own_cluster.leader() is not back
    assert own_cluster.status(back).scheduler.leader_instance_id == new_id


def test_a_replica_stopped_with_sigterm_ends_a_stream_through_nginx_with_unavailable(own_cluster: Cluster):
    stub = status_pb2_grpc.StatusServiceStub(own_cluster.front)
    call = stub.WatchEvents(status_pb2.WatchEventsRequest(), metadata=bearer(own_cluster.admin_key))
    ended: list[grpc.RpcError] = []

    def read() -> None:
        try:
            for _ in call:
                pass
        except grpc.RpcError as exc:
            ended.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    serving = wait_for(
        "the stream to open on a replica",
        lambda: [r for r in own_cluster.replicas if own_cluster.status(r).open_streams > 0],
    )
    assert len(serving) == 1
    assert serving[0].terminate() == 0
    reader.join(30)
    assert ended and ended[0].code() == grpc.StatusCode.UNAVAILABLE, ended
    assert "shutting down" in ended[0].details()
    # The front door keeps answering on the two replicas left.
    for _ in range(4):
        assert stub.GetStatus(status_pb2.GetStatusRequest(), metadata=bearer(own_cluster.admin_key)).serving


def _job_with_a_dead_worker(cluster: Cluster) -> tuple[str, str, str]:
    """A job claimed through nginx by a worker that then never beats: (job name, submitter
    token, a second provider's token). Its lease runs out 1 s after the claim."""
    from tests.cluster.test_replicas import secs, signup

    _, submitter = signup(cluster.front)
    (_, dead), (_, alive) = signup(cluster.front, 5), signup(cluster.front, 5)  # ROLE_PROVIDER
    jobs = job_pb2_grpc.JobServiceStub(cluster.front)
    job = jobs.SubmitJob(
        job_pb2.SubmitJobRequest(
            kind=job_pb2.JOB_KIND_INFERENCE,
            model_ref="noop",
            input=job_pb2.Payload(data=b"{}"),
            heartbeat_timeout=secs(1),
            max_attempts=3,
        ),
        metadata=bearer(submitter),
    ).job
    claimed = jobs.ClaimJobs(job_pb2.ClaimJobsRequest(max_jobs=1), metadata=bearer(dead)).jobs
    assert [c.job.name for c in claimed] == [job.name]
    return job.name, submitter, alive


def _finish_after_rescue(channel: grpc.Channel, name: str, submitter: str, worker: str) -> job_pb2.Job:
    """Waits until the lease is rescued (the job claimable again), runs it to success."""
    from tests.cluster.test_replicas import secs

    jobs = job_pb2_grpc.JobServiceStub(channel)
    leased = wait_for(
        "the expired lease rescued and the job claimable again",
        lambda: list(
            jobs.ClaimJobs(
                job_pb2.ClaimJobsRequest(max_jobs=1, wait=secs(1)), metadata=bearer(worker), timeout=10
            ).jobs
        ),
        timeout=30,
    )
    assert [x.job.name for x in leased] == [name] and leased[0].job.attempt == 2
    jobs.CompleteJob(
        job_pb2.CompleteJobRequest(lease=leased[0].lease, output=job_pb2.Payload(data=b"ok")),
        metadata=bearer(worker),
        timeout=10,
    )
    return jobs.GetJob(job_pb2.GetJobRequest(name=name), metadata=bearer(submitter), timeout=10).job


def test_a_paused_leader_is_replaced_its_lease_rescue_is_done_once_and_resumed_it_stands_down(
    own_cluster: Cluster,
):
    name, submitter, worker = _job_with_a_dead_worker(own_cluster)
    old = own_cluster.leader()
    old_id = own_cluster.status(old).instance_id
    paused_at = time.monotonic()
    os.kill(old.proc.pid, signal.SIGSTOP)
    survivors = [r for r in own_cluster.replicas if r is not old]
    new = own_cluster.leader(among=survivors, timeout=10 * LEASE_S)
    elapsed = time.monotonic() - paused_at
    new_id = own_cluster.status(new).instance_id
    assert new_id != old_id
    print(f"\nfigure: failover after SIGSTOP of the leader {elapsed:.2f} s (lease {LEASE_S} s)")
    # The lease rescue the paused leader owed is done by the new one, once. (Straight to the new
    # leader, not through nginx: nginx has no active health checks, so a call it routes to the
    # paused replica's open connection waits there until the caller's deadline.)
    job = _finish_after_rescue(own_cluster.channel(new.target), name, submitter, worker)
    assert job.state == job_pb2.JOB_STATE_SUCCEEDED

    os.kill(old.proc.pid, signal.SIGCONT)
    wait_for(
        "the resumed leader to name the new one",
        lambda: own_cluster.status(old).scheduler.leader_instance_id == new_id,
        timeout=10 * LEASE_S,
    )
    assert not own_cluster.status(old).scheduler.is_leader
    # A while later: still the new leader, everywhere; the resumed replica did nothing to the job.
    time.sleep(2 * LEASE_S)
    assert own_cluster.leader() is new
    after = (
        job_pb2_grpc.JobServiceStub(own_cluster.front)
        .GetJob(job_pb2.GetJobRequest(name=name), metadata=bearer(submitter))
        .job
    )
    assert after.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [a.outcome for a in after.attempts] == ["lease_expired", "succeeded"]


def test_a_watch_through_nginx_whose_replica_is_killed_is_resumed_by_the_client_on_another(
    own_cluster: Cluster,
):
    from coordd_client.client import resume_stream
    from tests.cluster.test_bus import _claimed_job

    name, submitter, lease, worker = _claimed_job(own_cluster, own_cluster.front)
    watch = job_pb2_grpc.JobServiceStub(own_cluster.front)
    stream = resume_stream(
        lambda: watch.WatchJob(job_pb2.WatchJobRequest(name=name), metadata=bearer(submitter), timeout=120)
    )
    updates: list[job_pb2.WatchJobResponse] = []
    failures: list[Exception] = []

    def read() -> None:
        try:
            updates.extend(stream)
        except Exception as exc:
            failures.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    serving = wait_for(
        "the watch to open on a replica",
        lambda: [r for r in own_cluster.replicas if own_cluster.status(r).open_streams > 0],
    )
    assert len(serving) == 1 and updates and updates[0].job.state == job_pb2.JOB_STATE_RUNNING
    serving[0].proc.kill()  # nginx resets the stream: INTERNAL "RST_STREAM" to the client
    wait_for("the stream resumed", lambda: stream.resumes >= 1)
    alive = next(r for r in own_cluster.replicas if r is not serving[0])
    job_pb2_grpc.JobServiceStub(own_cluster.channel(alive.target)).CompleteJob(
        job_pb2.CompleteJobRequest(lease=lease, output=job_pb2.Payload(data=b"ok")),
        metadata=bearer(worker),
        timeout=10,
    )
    reader.join(60)
    assert failures == []
    assert updates[-1].job.state == job_pb2.JOB_STATE_SUCCEEDED, "the watch ends on the final state, once"
