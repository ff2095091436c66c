"""JobService submission: budgets held in the same transaction, validation, idempotency,
batches, privacy and listing."""

from __future__ import annotations

import hashlib

import grpc

from coordd_client.v1 import job_pb2, ledger_pb2
from tests.helpers import rpc_error
from tests.jobs.rows import count_jobs
from tests.jobs.support import seconds
from tests.support.server import bearer

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
    assert count_jobs() == 1, "a refused submission writes nothing"
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
        heartbeat_timeout=seconds(0),
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
    assert count_jobs() == 0
    assert env.balance(env.alice_id) == (10_000, 0)


def test_submit_with_idempotency_key_is_applied_once(env):
    meta = bearer(env.alice, **{"idempotency-key": "submit-1"})
    first = env.submit(budget=100, metadata=meta)
    second = env.submit(budget=100, metadata=meta)
    assert first == second
    assert count_jobs() == 1
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


def test_batch_submit_stores_every_byte_and_character_as_sent(env):
    """Batches go through COPY on PostgreSQL: tabs, newlines, backslashes, NUL bytes and
    non-ASCII text come back unchanged, on both backends."""
    data = bytes(range(256)) * 2
    ref = "org\\model\tv1\nrev \u00e9\\N"
    labels = ["gpu\\x", "caf\u00e9"]
    reply = env.stub.BatchSubmitJobs(
        job_pb2.BatchSubmitJobsRequest(
            requests=[
                _submission(model_ref=ref, input=job_pb2.Payload(data=data)),
                _submission(
                    model_ref=ref,
                    input=job_pb2.Payload(uri="https://x.test/a\\b", sha256=hashlib.sha256(b"a").hexdigest()),
                    requirements=job_pb2.Capabilities(labels=labels),
                ),
            ]
        ),
        metadata=bearer(env.alice),
    )
    assert [env.get(j.name) for j in reply.jobs] == list(reply.jobs)
    claimed = {x.job.name: x.job for x in env.claim(env.worker_a, max_jobs=2, labels=labels)}
    first, second = (claimed[j.name] for j in reply.jobs)
    assert first.model_ref == ref and first.input.data == data
    assert first.input.sha256 == hashlib.sha256(data).hexdigest()
    assert second.input.uri == "https://x.test/a\\b"
    assert sorted(second.requirements.labels) == sorted(labels)


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
    assert count_jobs() == 0
    assert env.balance(env.alice_id) == (10_000, 0)


def test_batch_submit_with_idempotency_key_is_applied_once(env):
    meta = bearer(env.alice, **{"idempotency-key": "batch-1"})
    request = job_pb2.BatchSubmitJobsRequest(requests=[_submission(budget=10)] * 4)
    first = env.stub.BatchSubmitJobs(request, metadata=meta)
    second = env.stub.BatchSubmitJobs(request, metadata=meta)
    assert first == second and len(first.jobs) == 4
    assert count_jobs() == 4
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


def test_an_admin_lists_every_submitters_jobs_with_users_dash_and_nobody_else_may(env):
    from coordd.domain import ledger

    bob_id, bob = env.server.make_user("participant")
    with env.server.rt.store.write() as tx:
        ledger.deposit(tx, bob_id, 100, "seed")
    mine = env.submit(budget=1)
    theirs = env.submit(token=bob, budget=1, kind=job_pb2.JOB_KIND_TRAINING)
    everyone = job_pb2.ListJobsRequest(submitter="users/-")
    seen, token = [], ""
    while True:
        everyone.page_token = token
        page = env.stub.ListJobs(everyone, metadata=bearer(env.admin))
        seen.extend(j.name for j in page.jobs)
        token = page.next_page_token
        if not token:
            break
    assert seen == [theirs.name, mine.name], "every submitter's jobs, newest first"
    by_kind = job_pb2.ListJobsRequest(submitter="users/-", kind=job_pb2.JOB_KIND_TRAINING)
    training = env.stub.ListJobs(by_kind, metadata=bearer(env.admin)).jobs
    assert [j.name for j in training] == [theirs.name]
    for token in (env.alice, bob, env.worker_b):
        rpc_error(grpc.StatusCode.PERMISSION_DENIED, env.stub.ListJobs, everyone, metadata=bearer(token))
