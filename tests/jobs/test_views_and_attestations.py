"""JobService reads: WatchJob, queue stats; backoff; attestations old and new, and the
statement template against canonical JSON."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from coordd.domain import jobs
from coordd.store.jobs.models import Job, JobAttestation
from coordd_client import attestation as offline
from coordd_client.v1 import job_pb2
from tests.helpers import rpc_error
from tests.jobs.rows import forget_signature, job_row
from tests.jobs.support import seconds
from tests.support.server import bearer


def test_watch_job_streams_position_state_and_progress_until_done(env):
    env.submit(budget=1, priority=5)
    job = env.submit(budget=1)
    updates: list[job_pb2.WatchJobResponse] = []
    stream = env.stub.WatchJob(job_pb2.WatchJobRequest(name=job.name), metadata=bearer(env.alice))

    def read() -> None:
        updates.extend(stream)

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 10
    while not updates and time.monotonic() < deadline:
        time.sleep(0.01)
    assert updates[0].job.state == job_pb2.JOB_STATE_QUEUED and updates[0].queue_position == 2
    env.claim(env.worker_b)  # the priority-5 job: ours moves up
    while updates[-1].queue_position != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    [leased] = env.claim(env.worker_a)
    env.stub.HeartbeatJob(
        job_pb2.HeartbeatJobRequest(lease=leased.lease, progress=0.25), metadata=bearer(env.worker_a)
    )
    while updates[-1].job.progress != pytest.approx(0.25) and time.monotonic() < deadline:
        time.sleep(0.01)
    env.complete(env.worker_a, leased.lease)
    reader.join(10)
    assert not reader.is_alive(), "the stream ends when the job finishes"
    states = [u.job.state for u in updates]
    assert states[-1] == job_pb2.JOB_STATE_SUCCEEDED
    assert job_pb2.JOB_STATE_RUNNING in states
    assert [u.queue_position for u in updates if u.job.state == job_pb2.JOB_STATE_QUEUED][:2] == [2, 1]
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        lambda: list(
            env.stub.WatchJob(job_pb2.WatchJobRequest(name=job.name), metadata=bearer(env.worker_b))
        ),
    )


def test_queue_stats(env, clock):
    for priority in (0, 0, 4):
        env.submit(budget=1, priority=priority)
    [leased] = env.claim(env.worker_a)
    clock.advance(2)
    env.complete(env.worker_a, leased.lease)
    [leased] = env.claim(env.worker_a)
    env.stub.FailJob(job_pb2.FailJobRequest(lease=leased.lease, error="x"), metadata=bearer(env.worker_a))
    env.submit(budget=1, priority=2)
    [running] = env.claim(env.worker_b)
    assert running.job.priority == 2
    stats = env.stub.GetQueueStats(job_pb2.GetQueueStatsRequest(), metadata=bearer(env.alice))
    assert [(d.state, d.priority, d.count) for d in stats.depths] == [
        (job_pb2.JOB_STATE_QUEUED, 0, 1),
        (job_pb2.JOB_STATE_RUNNING, 2, 1),
    ]
    assert stats.oldest_queued_age.seconds >= 2
    assert (stats.succeeded, stats.failed) == (1, 1) and stats.success_rate == pytest.approx(0.5)
    assert stats.throughput_per_second == pytest.approx(2 / 60)
    assert stats.average_run_time.seconds >= 2
    rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        env.stub.GetQueueStats,
        job_pb2.GetQueueStatsRequest(window=seconds(0)),
        metadata=bearer(env.alice),
    )


def test_queue_stats_count_pending_jobs_by_priority(env):
    """Jobs scheduled later and jobs waiting on a parent are pending: counted on their own."""
    later = timestamp_pb2.Timestamp()
    later.FromDatetime(env.server.rt.now() + timedelta(hours=1))
    parent = env.submit(priority=1, schedule_time=later)
    env.submit(priority=1, parents=[parent.name])
    env.submit(priority=3, schedule_time=later)
    env.submit(priority=0)
    stats = env.stub.GetQueueStats(job_pb2.GetQueueStatsRequest(), metadata=bearer(env.alice))
    assert [(d.state, d.priority, d.count) for d in stats.depths] == [
        (job_pb2.JOB_STATE_PENDING, 3, 1),
        (job_pb2.JOB_STATE_PENDING, 1, 2),
        (job_pb2.JOB_STATE_QUEUED, 0, 1),
    ]


def test_backoff_grows_exponentially_with_bounded_jitter():
    import random

    policy = jobs.JobPolicy(backoff_base_s=1.0, backoff_max_s=60.0)
    rng = random.Random(7)
    for attempt, full in ((1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (30, 60.0)):
        values = [jobs.backoff_s(attempt, policy, rng) for _ in range(50)]
        assert all(full / 2 <= v <= full for v in values)
        assert len(set(values)) > 1, "jittered"


def test_attestations_signed_before_migration_12_are_still_served(env):
    """Those stored the whole envelope in job_attestation; newer ones only the signature."""
    job = env.submit(budget=10)
    [leased] = env.claim(env.worker_a)
    done = env.complete(env.worker_a, leased.lease, b"out")
    row = job_row(job.name)
    JobAttestation.create(
        job=row.id,
        payload_type=done.attestation.payload_type,
        payload=done.attestation.payload,
        key_id=row.attestation_key_id,
        signature=row.attestation_sig,
        create_time=row.finish_time,
    )
    forget_signature(row.id)
    fetched = env.stub.GetAttestation(
        job_pb2.GetAttestationRequest(name=job.name), metadata=bearer(env.alice)
    )
    assert fetched.attestation == done.attestation


@pytest.mark.parametrize(
    "model_ref",
    ["hf://org/llm@7", 'quote " backslash \\ slash /', "tab\tnewline\ncontrol\x01\x1f", "ünïcødé ✓ 𝄞 \u2028"],
)
def test_statement_json_is_the_canonical_statement_byte_for_byte(model_ref):
    """The signed bytes come from a template; they must equal canonical JSON of the readable
    statement, or a verifier that re-serializes the statement would disagree with us."""
    from datetime import UTC, datetime

    started = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)
    finished = datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC)
    job = Job(
        id="01m81ej29r25djv99zvz4t1x6a",
        kind="training",
        submitter="01submitter",
        model_ref=model_ref,
        input_digest="a" * 64,
        attempt=3,
        provider="01provider",
        start_time=started,
    )
    fast = jobs.statement_json(
        job.id,
        job.kind,
        job.submitter,
        model_ref,
        job.input_digest,
        3,
        job.provider,
        started,
        finished,
        "b" * 64,
    )
    assert fast == offline.canonical_json(jobs.statement(job, "b" * 64, finished))
