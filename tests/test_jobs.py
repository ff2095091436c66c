"""JobService: escrow, leased claims, retries, dead letters, attestations, payment."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import grpc
import peewee
import pytest
from google.protobuf import duration_pb2

from coordd.domain import jobs, ledger
from coordd.store.job_models import Job, JobAttempt, JobAttestation
from coordd.store.ledger_models import LedgerAccount
from coordd_client import attestation as offline
from coordd_client.v1 import job_pb2, job_pb2_grpc, ledger_pb2, ledger_pb2_grpc
from tests.helpers import rpc_error
from tests.support.server import ServerHandle, bearer

TEST_POLICY = jobs.JobPolicy(fee_bps=1000, backoff_base_s=1.0, backoff_max_s=4.0, payload_retention_s=3600)


def held_invariant_problems() -> list[str]:
    """Each user's held balance is exactly the budgets of their unfinished jobs."""
    expected: dict[str, int] = {}
    for job in Job.select(Job.submitter, Job.budget).where(Job.state.in_([jobs.QUEUED, jobs.RUNNING])):
        expected[job.submitter] = expected.get(job.submitter, 0) + job.budget
    problems = []
    for user in {*expected, *(j.submitter for j in Job.select(Job.submitter).distinct())}:
        held = ledger.balance(user).held
        if held != expected.get(user, 0):
            problems.append(f"users/{user}: held {held}, unfinished budgets {expected.get(user, 0)}")
    return problems


@dataclass
class Env:
    server: ServerHandle
    stub: job_pb2_grpc.JobServiceStub
    ledger: ledger_pb2_grpc.LedgerServiceStub
    admin: str
    alice_id: str
    alice: str
    worker_a_id: str
    worker_a: str
    worker_b_id: str
    worker_b: str

    def submit(self, token: str | None = None, **fields) -> job_pb2.Job:
        fields.setdefault("kind", job_pb2.JOB_KIND_INFERENCE)
        fields.setdefault("model_ref", "hf://org/model@1")
        fields.setdefault("input", job_pb2.Payload(data=b"prompt"))
        metadata = fields.pop("metadata", None) or bearer(token or self.alice)
        return self.stub.SubmitJob(job_pb2.SubmitJobRequest(**fields), metadata=metadata).job

    def claim(self, token: str, max_jobs: int = 1, wait_s: float = 0, **caps) -> list[job_pb2.LeasedJob]:
        request = job_pb2.ClaimJobsRequest(max_jobs=max_jobs, capabilities=job_pb2.Capabilities(**caps))
        if wait_s:
            request.wait.FromTimedelta(timedelta(seconds=wait_s))
        return list(self.stub.ClaimJobs(request, metadata=bearer(token)).jobs)

    def complete(
        self, token: str, lease: job_pb2.Lease, output: bytes = b"result"
    ) -> job_pb2.CompleteJobResponse:
        return self.stub.CompleteJob(
            job_pb2.CompleteJobRequest(lease=lease, output=job_pb2.Payload(data=output)),
            metadata=bearer(token),
        )

    def get(self, name: str, token: str | None = None) -> job_pb2.Job:
        return self.stub.GetJob(job_pb2.GetJobRequest(name=name), metadata=bearer(token or self.alice)).job

    def balance(self, user_id: str) -> tuple[int, int]:
        b = ledger.balance(user_id)
        return b.available, b.held


@pytest.fixture
def env(settings_factory, clock):
    # The scheduler stays off: tests run its tasks themselves, at the moment they choose.
    server = ServerHandle(settings_factory(scheduler_enabled=False), clock)
    jobs.set_policy(server.rt, TEST_POLICY)
    try:
        _, admin = server.make_user("admin")
        alice_id, alice = server.make_user("participant")
        worker_a_id, worker_a = server.make_user("provider")
        worker_b_id, worker_b = server.make_user("provider")
        with server.rt.store.write() as tx:
            ledger.deposit(tx, alice_id, 10_000, "seed")
        yield Env(
            server,
            job_pb2_grpc.JobServiceStub(server.channel),
            ledger_pb2_grpc.LedgerServiceStub(server.channel),
            admin,
            alice_id,
            alice,
            worker_a_id,
            worker_a,
            worker_b_id,
            worker_b,
        )
        assert ledger.check_consistency() == []
        assert held_invariant_problems() == []
    finally:
        server.stop()


def _seconds(value: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=value))
    return out


# -- submission ---------------------------------------------------------------------------------


def test_submit_holds_the_budget_in_the_same_transaction(env):
    job = env.submit(budget=300, priority=3, requirements=job_pb2.Capabilities(labels=["cuda"], gpus=1))
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert job.name.startswith("jobs/") and job.submitter == f"users/{env.alice_id}"
    assert job.input.sha256 == hashlib.sha256(b"prompt").hexdigest()
    assert job.max_attempts == 3 and job.heartbeat_timeout.seconds == 60
    assert env.balance(env.alice_id) == (9_700, 300)
    balance = env.ledger.GetBalance(ledger_pb2.GetBalanceRequest(), metadata=bearer(env.alice)).balance
    assert (balance.available, balance.held) == (9_700, 300)

    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, env.submit, budget=9_701)
    assert failure.reason == "INSUFFICIENT_FUNDS"
    assert Job.select().count() == 1, "a refused submission writes nothing"
    assert env.balance(env.alice_id) == (9_700, 300)


def test_submit_rejects_bad_input_and_writes_nothing(env):
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        env.submit,
        kind=job_pb2.JOB_KIND_UNSPECIFIED,
        model_ref="",
        input=job_pb2.Payload(uri="s3://bucket/x"),
        budget=-1,
        priority=10,
        max_attempts=21,
        heartbeat_timeout=_seconds(0),
    )
    assert {
        "kind",
        "model_ref",
        "input.sha256",
        "budget",
        "priority",
        "max_attempts",
        "heartbeat_timeout",
    } <= set(failure.violations)
    bad_digest = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, env.submit, input=job_pb2.Payload(data=b"x", sha256="0" * 64)
    )
    assert "input.sha256" in bad_digest.violations
    assert "input" in rpc_error(grpc.StatusCode.INVALID_ARGUMENT, env.submit, input=None).violations
    denied = rpc_error(grpc.StatusCode.PERMISSION_DENIED, env.submit, token=env.worker_a)
    assert denied.reason == "ROLE_REQUIRED"
    assert Job.select().count() == 0
    assert env.balance(env.alice_id) == (10_000, 0)


def test_submit_with_idempotency_key_is_applied_once(env):
    meta = bearer(env.alice, **{"idempotency-key": "submit-1"})
    first = env.submit(budget=100, metadata=meta)
    second = env.submit(budget=100, metadata=meta)
    assert first == second
    assert Job.select().count() == 1
    assert env.balance(env.alice_id) == (9_900, 100)


def _submission(**fields) -> job_pb2.SubmitJobRequest:
    fields.setdefault("kind", job_pb2.JOB_KIND_INFERENCE)
    fields.setdefault("model_ref", "hf://org/model@1")
    fields.setdefault("input", job_pb2.Payload(data=b"prompt"))
    return job_pb2.SubmitJobRequest(**fields)


def test_batch_submit_queues_every_job_in_order_and_holds_every_budget(env):
    reply = env.stub.BatchSubmitJobs(
        job_pb2.BatchSubmitJobsRequest(
            requests=[_submission(budget=100), _submission(budget=250, priority=5), _submission(budget=0)]
        ),
        metadata=bearer(env.alice),
    )
    assert [j.budget for j in reply.jobs] == [100, 250, 0]
    assert all(j.state == job_pb2.JOB_STATE_QUEUED for j in reply.jobs)
    assert [env.get(j.name) for j in reply.jobs] == list(reply.jobs)
    assert env.balance(env.alice_id) == (9_650, 350)
    claimed = env.claim(env.worker_a, max_jobs=3)
    assert claimed[0].job.name == reply.jobs[1].name, "priority 5 first"
    assert {x.job.name for x in claimed} == {j.name for j in reply.jobs}


def test_batch_submit_is_all_or_nothing(env):
    bad = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        env.stub.BatchSubmitJobs,
        job_pb2.BatchSubmitJobsRequest(
            requests=[_submission(budget=1), _submission(model_ref=""), _submission(priority=99)]
        ),
        metadata=bearer(env.alice),
    )
    assert {"requests[1].model_ref", "requests[2].priority"} <= set(bad.violations)
    broke = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        env.stub.BatchSubmitJobs,
        job_pb2.BatchSubmitJobsRequest(requests=[_submission(budget=6_000), _submission(budget=6_000)]),
        metadata=bearer(env.alice),
    )
    assert broke.reason == "INSUFFICIENT_FUNDS"
    for requests in ([], [_submission()] * 101):
        rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            env.stub.BatchSubmitJobs,
            job_pb2.BatchSubmitJobsRequest(requests=requests),
            metadata=bearer(env.alice),
        )
    assert Job.select().count() == 0
    assert env.balance(env.alice_id) == (10_000, 0)


def test_batch_submit_with_idempotency_key_is_applied_once(env):
    meta = bearer(env.alice, **{"idempotency-key": "batch-1"})
    request = job_pb2.BatchSubmitJobsRequest(requests=[_submission(budget=10)] * 4)
    first = env.stub.BatchSubmitJobs(request, metadata=meta)
    second = env.stub.BatchSubmitJobs(request, metadata=meta)
    assert first == second and len(first.jobs) == 4
    assert Job.select().count() == 4
    assert env.balance(env.alice_id) == (9_960, 40)


def test_jobs_are_private_and_listed_with_filters(env):
    a = env.submit(budget=1)
    b = env.submit(budget=1, kind=job_pb2.JOB_KIND_TRAINING)
    c = env.submit(budget=1)
    rpc_error(grpc.StatusCode.NOT_FOUND, env.get, a.name, env.worker_a)
    assert env.get(a.name, env.admin).name == a.name
    seen, token = [], ""
    while True:
        page = env.stub.ListJobs(
            job_pb2.ListJobsRequest(page_size=2, page_token=token), metadata=bearer(env.alice)
        )
        seen.extend(j.name for j in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert seen == [c.name, b.name, a.name]
    training = env.stub.ListJobs(
        job_pb2.ListJobsRequest(kind=job_pb2.JOB_KIND_TRAINING), metadata=bearer(env.alice)
    ).jobs
    assert [j.name for j in training] == [b.name]
    assert not training[0].input.HasField("data") and training[0].input.sha256, "lists leave payload data out"
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        env.stub.ListJobs,
        job_pb2.ListJobsRequest(submitter=f"users/{env.alice_id}"),
        metadata=bearer(env.worker_a),
    )
    as_admin = env.stub.ListJobs(
        job_pb2.ListJobsRequest(submitter=f"users/{env.alice_id}", state=job_pb2.JOB_STATE_QUEUED),
        metadata=bearer(env.admin),
    ).jobs
    assert len(as_admin) == 3


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
    job = env.submit(budget=500, heartbeat_timeout=_seconds(10))
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
    payments = ledger.LedgerEntry.select().where(
        (ledger.LedgerEntry.reference == job.name) & (ledger.LedgerEntry.reason == "job.payment")
    )
    assert payments.count() == 1, "paid once"
    attempts = env.get(job.name).attempts
    assert [(a.attempt, a.outcome) for a in attempts] == [(1, "lease_expired"), (2, "succeeded")]
    rpc_error(grpc.StatusCode.FAILED_PRECONDITION, env.complete, env.worker_a, first.lease)


def test_heartbeat_extends_the_lease_until_start_to_close(env, clock):
    job = env.submit(budget=10, heartbeat_timeout=_seconds(10), start_to_close_timeout=_seconds(25))
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
    job = env.submit(budget=70, max_attempts=1, heartbeat_timeout=_seconds(5))
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
    never_started = env.submit(budget=10, schedule_to_start_timeout=_seconds(30))
    too_slow = env.submit(budget=20, schedule_to_close_timeout=_seconds(60))
    [leased] = env.claim(env.worker_a, max_jobs=1)
    assert leased.job.name == never_started.name
    env.complete(env.worker_a, leased.lease)  # started in time: its start deadline no longer applies
    [leased] = env.claim(env.worker_a)
    assert leased.job.name == too_slow.name
    late = env.submit(budget=30, schedule_to_start_timeout=_seconds(30))
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
        job_pb2.GetQueueStatsRequest(window=_seconds(0)),
        metadata=bearer(env.alice),
    )


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
    row = Job.get_by_id(job.name.split("/")[1])
    JobAttestation.create(
        job=row.id,
        payload_type=done.attestation.payload_type,
        payload=done.attestation.payload,
        key_id=row.attestation_key_id,
        signature=row.attestation_sig,
        create_time=row.finish_time,
    )
    Job.update(attestation_sig=None, attestation_key_id="").where(Job.id == row.id).execute()
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
    assert Job.select().where(Job.state == jobs.SUCCEEDED).count() == 4_000
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
    assert Job.select().where(Job.state == jobs.SUCCEEDED).count() == total


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
            heartbeat_timeout=_seconds(5),
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
    from coordd.api import jobs as jobs_api

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

    job = env.submit(budget=400, heartbeat_timeout=_seconds(10))
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
