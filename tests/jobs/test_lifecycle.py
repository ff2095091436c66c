"""JobService lifecycle: claims, completion, attestation and payment, retries with backoff,
dead letters, cancellation, capabilities, hand-over, deadlines, purge, batch completion."""

from __future__ import annotations

import hashlib
import threading
import time

import grpc
import pytest
from google.protobuf import duration_pb2

from coordd.domain import jobs, ledger
from coordd.store.ledger.models import LedgerAccount, LedgerEntry
from coordd_client import attestation as offline
from coordd_client.v1 import job_pb2
from tests.helpers import rpc_error
from tests.jobs.support import TEST_POLICY, seconds
from tests.support.server import bearer

# -- claims, completion, attestation, payment ------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {
            "input": job_pb2.Payload(uri="s3://bucket/prompt", sha256="c" * 64),
            "requirements": job_pb2.Capabilities(labels=["a100", "eu"], gpus=2),
            "budget": 7,
            "priority": 3,
            "max_attempts": 4,
            "schedule_to_start_timeout": duration_pb2.Duration(seconds=600),
            "start_to_close_timeout": duration_pb2.Duration(seconds=90, nanos=250_000_000),
            "heartbeat_timeout": duration_pb2.Duration(seconds=30),
            "schedule_to_close_timeout": duration_pb2.Duration(seconds=3600),
        },
    ],
)
def test_claim_reply_shows_the_job_exactly_as_get_job_does(env, fields):
    """Claim replies are built straight from the claimed row, not from the model GetJob uses."""
    job = env.submit(**fields)
    [leased] = env.claim(env.worker_a, labels=["a100", "eu"], gpus=2)
    fetched = env.get(job.name, env.worker_a)
    assert [(a.attempt, a.outcome) for a in fetched.attempts] == [(1, "running")]
    del fetched.attempts[:]
    assert leased.job == fetched
    assert leased.lease.job == job.name and leased.lease.attempt == fetched.attempt == 1


def test_claim_complete_pays_the_provider_and_the_attestation_verifies(env):
    job = env.submit(budget=1_000, model_ref="hf://org/llm@7")
    [leased] = env.claim(env.worker_a)
    assert leased.job.name == job.name and leased.lease.attempt == 1
    assert leased.job.state == job_pb2.JOB_STATE_RUNNING and leased.job.input.data == b"prompt"
    beat = env.stub.HeartbeatJob(
        job_pb2.HeartbeatJobRequest(lease=leased.lease, progress=0.5), metadata=bearer(env.worker_a)
    )
    assert not beat.cancelled and beat.expire_time.ToDatetime() >= leased.lease.expire_time.ToDatetime()
    done = env.complete(env.worker_a, leased.lease, b"the answer")
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED and done.job.fee == 100
    assert env.balance(env.alice_id) == (9_000, 0)
    assert env.balance(env.worker_a_id) == (900, 0)
    assert LedgerAccount.get_by_id(ledger.PLATFORM_FEES).balance == 100

    key = env.stub.GetSigningKey(job_pb2.GetSigningKeyRequest())  # public: no credential
    fetched = env.stub.GetAttestation(
        job_pb2.GetAttestationRequest(name=job.name), metadata=bearer(env.alice)
    )
    assert fetched.attestation == done.attestation
    statement = offline.verify_envelope(done.attestation.envelope_json, key.public_key)
    assert offline.verify_output(statement, b"the answer")
    assert not offline.verify_output(statement, b"another answer")
    predicate = statement["predicate"]
    assert predicate["job"] == job.name and predicate["modelRef"] == "hf://org/llm@7"
    assert predicate["inputDigest"]["sha256"] == hashlib.sha256(b"prompt").hexdigest()
    assert predicate["attempt"] == 1 and predicate["provider"] == f"users/{env.worker_a_id}"
    att = done.attestation
    same = offline.verify_payload(
        att.payload_type, att.payload, [(s.keyid, s.sig) for s in att.signatures], key.public_key
    )
    assert same == statement
    assert key.key_id == att.signatures[0].keyid == offline.key_id(key.public_key)

    tampered = att.payload.replace(b"hf://org/llm@7", b"hf://org/llm@8")
    with pytest.raises(offline.AttestationError):
        offline.verify_payload(
            att.payload_type, tampered, [(s.keyid, s.sig) for s in att.signatures], key.public_key
        )
    bad_sig = bytes([att.signatures[0].sig[0] ^ 1]) + att.signatures[0].sig[1:]
    with pytest.raises(offline.AttestationError):
        offline.verify_payload(att.payload_type, att.payload, [("", bad_sig)], key.public_key)
    other_key = offline.key_id(b"\x01" * 32)
    with pytest.raises(offline.AttestationError):
        offline.verify_envelope(att.envelope_json.replace(att.signatures[0].keyid, other_key), key.public_key)
    with pytest.raises(offline.AttestationError):
        offline.verify_envelope("{not json", key.public_key)

    rpc_error(grpc.StatusCode.FAILED_PRECONDITION, env.complete, env.worker_a, leased.lease)
    queued = env.submit(budget=1)
    failure = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        env.stub.GetAttestation,
        job_pb2.GetAttestationRequest(name=queued.name),
        metadata=bearer(env.alice),
    )
    assert failure.reason == "NOT_ATTESTED"


def test_worker_killed_mid_job_is_retried_elsewhere_paid_once_and_the_zombie_is_rejected(env, clock):
    job = env.submit(budget=500, heartbeat_timeout=seconds(10))
    [first] = env.claim(env.worker_a)
    # Worker A dies: no heartbeat. The lease expires and the rescue task re-queues the job.
    clock.advance(11)
    assert jobs.rescue_expired_leases(env.server.rt) == 1
    rescued = env.get(job.name)
    assert rescued.state == job_pb2.JOB_STATE_QUEUED and rescued.attempt == 1
    assert "lease expired" in rescued.error
    assert env.claim(env.worker_b) == [], "retry backoff: not claimable at once"
    clock.advance(TEST_POLICY.backoff_max_s)
    [second] = env.claim(env.worker_b)
    assert second.lease.attempt == 2

    # The zombie comes back: every call with its stale lease fails and changes nothing.
    for call in (
        lambda: env.complete(env.worker_a, first.lease),
        lambda: env.stub.HeartbeatJob(
            job_pb2.HeartbeatJobRequest(lease=first.lease), metadata=bearer(env.worker_a)
        ),
        lambda: env.stub.FailJob(
            job_pb2.FailJobRequest(lease=first.lease, error="x"), metadata=bearer(env.worker_a)
        ),
    ):
        failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, call)
        assert failure.reason == "STALE_LEASE"
    # Another provider cannot use B's lease either.
    stolen = rpc_error(grpc.StatusCode.PERMISSION_DENIED, env.complete, env.worker_a, second.lease)
    assert stolen.reason == "NOT_LEASE_HOLDER"
    assert env.get(job.name).state == job_pb2.JOB_STATE_RUNNING

    done = env.complete(env.worker_b, second.lease)
    assert done.job.provider == f"users/{env.worker_b_id}"
    assert env.balance(env.worker_b_id) == (450, 0)
    assert env.balance(env.worker_a_id) == (0, 0)
    assert env.balance(env.alice_id) == (9_500, 0)
    payments = LedgerEntry.select().where(
        (LedgerEntry.reference == job.name) & (LedgerEntry.reason == "job.payment")
    )
    assert payments.count() == 1, "paid once"
    attempts = env.get(job.name).attempts
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "lease_expired"), (2, "succeeded")]
    rpc_error(grpc.StatusCode.FAILED_PRECONDITION, env.complete, env.worker_a, first.lease)


def test_heartbeat_extends_the_lease_until_start_to_close(env, clock):
    job = env.submit(budget=10, heartbeat_timeout=seconds(10), start_to_close_timeout=seconds(25))
    [leased] = env.claim(env.worker_a)
    for _ in range(2):
        clock.advance(8)
        env.stub.HeartbeatJob(job_pb2.HeartbeatJobRequest(lease=leased.lease), metadata=bearer(env.worker_a))
        assert jobs.rescue_expired_leases(env.server.rt) == 0
    clock.advance(10)  # 26s after the start: past start-to-close although it heartbeated
    assert jobs.rescue_expired_leases(env.server.rt) == 1
    got = env.get(job.name)
    assert got.state == job_pb2.JOB_STATE_QUEUED and got.attempts[0].outcome == "timed_out"


def test_retryable_failures_back_off_then_dead_letter_with_refund_and_requeue(env, clock):
    job = env.submit(budget=200, max_attempts=2)
    [one] = env.claim(env.worker_a)
    failed = env.stub.FailJob(
        job_pb2.FailJobRequest(lease=one.lease, error="CUDA OOM", retryable=True),
        metadata=bearer(env.worker_a),
    ).job
    assert failed.state == job_pb2.JOB_STATE_QUEUED
    assert failed.next_attempt_time.ToDatetime() > env.server.rt.now().replace(tzinfo=None)
    clock.advance(TEST_POLICY.backoff_max_s)
    [two] = env.claim(env.worker_b)
    dead = env.stub.FailJob(
        job_pb2.FailJobRequest(lease=two.lease, error="CUDA OOM again", retryable=True),
        metadata=bearer(env.worker_b),
    ).job
    assert dead.state == job_pb2.JOB_STATE_FAILED and dead.error == "CUDA OOM again"
    assert env.balance(env.alice_id) == (10_000, 0), "dead letter refunded"
    assert [(a.outcome, a.error) for a in env.get(job.name).attempts] == [
        ("failed", "CUDA OOM"),
        ("failed", "CUDA OOM again"),
    ]
    clock.advance(TEST_POLICY.backoff_max_s)
    assert env.claim(env.worker_a) == []

    denied = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        env.stub.RequeueJob,
        job_pb2.RequeueJobRequest(name=job.name),
        metadata=bearer(env.alice),
    )
    assert denied.reason == "ROLE_REQUIRED"
    requeued = env.stub.RequeueJob(job_pb2.RequeueJobRequest(name=job.name), metadata=bearer(env.admin)).job
    assert requeued.state == job_pb2.JOB_STATE_QUEUED
    assert env.balance(env.alice_id) == (9_800, 200), "held again"
    [three] = env.claim(env.worker_a)
    assert three.lease.attempt == 3
    env.complete(env.worker_a, three.lease)
    rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        env.stub.RequeueJob,
        job_pb2.RequeueJobRequest(name=job.name),
        metadata=bearer(env.admin),
    )


def test_non_retryable_failure_dead_letters_at_once(env):
    job = env.submit(budget=50, max_attempts=5)
    [leased] = env.claim(env.worker_a)
    dead = env.stub.FailJob(
        job_pb2.FailJobRequest(lease=leased.lease, error="bad input", retryable=False),
        metadata=bearer(env.worker_a),
    ).job
    assert dead.state == job_pb2.JOB_STATE_FAILED and dead.attempt == 1
    assert env.balance(env.alice_id) == (10_000, 0)
    assert env.get(job.name).attempts[0].error == "bad input"


def test_lease_expiry_on_the_last_attempt_dead_letters(env, clock):
    job = env.submit(budget=70, max_attempts=1, heartbeat_timeout=seconds(5))
    env.claim(env.worker_a)
    clock.advance(6)
    jobs.rescue_expired_leases(env.server.rt)
    got = env.get(job.name)
    assert got.state == job_pb2.JOB_STATE_FAILED and got.attempts[0].outcome == "lease_expired"
    assert env.balance(env.alice_id) == (10_000, 0)


def test_cancel_queued_refunds_and_cancel_running_takes_effect_at_the_next_heartbeat(env):
    queued = env.submit(budget=100)
    cancelled = env.stub.CancelJob(job_pb2.CancelJobRequest(name=queued.name), metadata=bearer(env.alice)).job
    assert cancelled.state == job_pb2.JOB_STATE_CANCELLED
    assert env.balance(env.alice_id) == (10_000, 0)
    again = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        env.stub.CancelJob,
        job_pb2.CancelJobRequest(name=queued.name),
        metadata=bearer(env.alice),
    )
    assert again.reason == "JOB_FINISHED"

    running = env.submit(budget=100)
    [leased] = env.claim(env.worker_a)
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        env.stub.CancelJob,
        job_pb2.CancelJobRequest(name=running.name),
        metadata=bearer(env.worker_a),
    )
    asked = env.stub.CancelJob(job_pb2.CancelJobRequest(name=running.name), metadata=bearer(env.alice)).job
    assert asked.state == job_pb2.JOB_STATE_RUNNING and asked.cancel_requested
    beat = env.stub.HeartbeatJob(
        job_pb2.HeartbeatJobRequest(lease=leased.lease), metadata=bearer(env.worker_a)
    )
    assert beat.cancelled
    assert env.get(running.name).state == job_pb2.JOB_STATE_CANCELLED
    assert env.balance(env.alice_id) == (10_000, 0)
    assert env.balance(env.worker_a_id) == (0, 0)

    late = env.submit(budget=100)
    [leased] = env.claim(env.worker_a)
    env.stub.CancelJob(job_pb2.CancelJobRequest(name=late.name), metadata=bearer(env.alice))
    refused = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, env.complete, env.worker_a, leased.lease)
    assert refused.reason == "JOB_CANCELLED"
    assert env.get(late.name).state == job_pb2.JOB_STATE_CANCELLED, "the cancellation committed"
    assert env.balance(env.worker_a_id) == (0, 0)


def test_claims_respect_capabilities_and_priority(env):
    gpu = env.submit(budget=1, requirements=job_pb2.Capabilities(labels=["a100", "cuda"], gpus=2))
    low = env.submit(budget=1, priority=1)
    high = env.submit(budget=1, priority=7)
    got = env.claim(env.worker_a, max_jobs=10, labels=["cuda"], gpus=8)
    assert [j.job.name for j in got] == [high.name, low.name], "no a100 label: the gpu job stays queued"
    assert env.claim(env.worker_b, labels=["a100", "cuda"], gpus=1) == []
    [got_gpu] = env.claim(env.worker_b, labels=["a100", "cuda", "fp8"], gpus=2)
    assert got_gpu.job.name == gpu.name
    rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        env.stub.ClaimJobs,
        job_pb2.ClaimJobsRequest(max_jobs=101),
        metadata=bearer(env.worker_a),
    )
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, env.claim, env.alice)


def test_a_waiting_worker_gets_a_new_job_handed_over_in_memory(env):
    got: list[list[job_pb2.LeasedJob]] = []
    poller = threading.Thread(target=lambda: got.append(env.claim(env.worker_a, wait_s=30)))
    poller.start()
    deadline = time.monotonic() + 10
    while env.server.rt.notifier.waiting(jobs.QUEUE_KEY) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    job = env.submit(budget=10)
    poller.join(10)
    assert not poller.is_alive()
    # Leased in the submitting transaction: the submitter already sees it running.
    assert job.state == job_pb2.JOB_STATE_RUNNING and job.provider == f"users/{env.worker_a_id}"
    [[leased]] = got
    assert leased.job.name == job.name
    env.complete(env.worker_a, leased.lease)


def test_claim_wait_returns_empty_when_nothing_comes(env):
    assert env.claim(env.worker_a, wait_s=0.3) == []


def test_schedule_to_start_and_schedule_to_close_deadlines_fail_and_refund(env, clock):
    never_started = env.submit(budget=10, schedule_to_start_timeout=seconds(30))
    too_slow = env.submit(budget=20, schedule_to_close_timeout=seconds(60))
    [leased] = env.claim(env.worker_a, max_jobs=1)
    assert leased.job.name == never_started.name
    env.complete(env.worker_a, leased.lease)  # started in time: its start deadline no longer applies
    [leased] = env.claim(env.worker_a)
    assert leased.job.name == too_slow.name
    late = env.submit(budget=30, schedule_to_start_timeout=seconds(30))
    clock.advance(61)
    assert jobs.enforce_deadlines(env.server.rt) == 2
    assert env.get(late.name).error == "schedule-to-start timeout"
    slow = env.get(too_slow.name)
    assert slow.state == job_pb2.JOB_STATE_FAILED and slow.error == "schedule-to-close timeout"
    assert slow.attempts[0].outcome == "timed_out"
    assert env.get(never_started.name).state == job_pb2.JOB_STATE_SUCCEEDED
    assert env.balance(env.alice_id) == (9_990, 0)
    stale = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, env.complete, env.worker_a, leased.lease)
    assert stale.reason == "STALE_LEASE"


def test_payloads_are_purged_after_the_retention_period(env, clock):
    job = env.submit(budget=10)
    [leased] = env.claim(env.worker_a)
    env.complete(env.worker_a, leased.lease, b"out")
    assert jobs.purge_payloads(env.server.rt) == 0
    clock.advance(TEST_POLICY.payload_retention_s + 1)
    assert jobs.purge_payloads(env.server.rt) == 1
    got = env.get(job.name)
    assert got.input.purged and not got.input.HasField("data") and got.input.sha256
    assert got.output.purged and not got.output.HasField("data")
    assert env.stub.GetAttestation(job_pb2.GetAttestationRequest(name=job.name), metadata=bearer(env.alice))


def test_batch_complete_reports_each_result(env):
    env.submit(budget=10)
    env.submit(budget=10)
    leases = [j.lease for j in env.claim(env.worker_a, max_jobs=2)]
    stale = job_pb2.Lease()
    stale.CopyFrom(leases[1])
    stale.attempt = 7
    reply = env.stub.BatchCompleteJobs(
        job_pb2.BatchCompleteJobsRequest(
            requests=[
                job_pb2.CompleteJobRequest(lease=leases[0], output=job_pb2.Payload(data=b"a")),
                job_pb2.CompleteJobRequest(lease=stale, output=job_pb2.Payload(data=b"b")),
            ]
        ),
        metadata=bearer(env.worker_a),
    )
    assert reply.results[0].attestation.payload and not reply.results[0].error_code
    assert (reply.results[1].error_code, reply.results[1].error_reason) == (
        "FAILED_PRECONDITION",
        "STALE_LEASE",
    )
    assert env.get(reply.results[1].job).state == job_pb2.JOB_STATE_RUNNING
    assert env.balance(env.worker_a_id) == (9, 0)
    env.complete(env.worker_a, leases[1])
