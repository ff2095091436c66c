"""Dependencies: a job listing parents is pending until every parent succeeded; a failed or
cancelled parent fails or cancels every pending dependant below it, each refunded; parents
must exist (and be the submitter's) before the child, so no cycle can be formed."""

from __future__ import annotations

import grpc

from coordd_client.v1 import job_pb2
from tests.helpers import rpc_error
from tests.support.server import bearer


def _fail(env, leased, retryable=False):
    return env.stub.FailJob(
        job_pb2.FailJobRequest(lease=leased.lease, error="broken", retryable=retryable),
        metadata=bearer(env.worker_a),
    ).job


def _claim_named(env, name):
    leased = env.claim(env.worker_a, max_jobs=10)
    assert [x.job.name for x in leased] == [name]
    return leased[0]


def test_a_child_waits_for_all_its_parents_then_is_released_when_the_last_succeeds(env):
    a = env.submit(model_ref="a")
    b = env.submit(model_ref="b")
    child = env.submit(model_ref="c", parents=[a.name, b.name], budget=5)
    assert child.state == job_pb2.JOB_STATE_PENDING
    assert list(child.parents) == [a.name, b.name]
    leased = env.claim(env.worker_a, max_jobs=10)
    assert sorted(x.job.name for x in leased) == sorted([a.name, b.name])  # the child is not claimable
    first, second = sorted(leased, key=lambda x: x.job.name)
    env.complete(env.worker_a, first.lease)
    assert env.get(child.name).state == job_pb2.JOB_STATE_PENDING
    env.complete(env.worker_a, second.lease)
    # Released in the completing transaction: claimable at once, without the scheduler.
    assert env.get(child.name).state == job_pb2.JOB_STATE_QUEUED
    _claim_named(env, child.name)


def test_a_dag_with_a_failing_parent_fails_and_refunds_every_dependant(env):
    root = env.submit(model_ref="root", budget=10)
    other = env.submit(model_ref="other", budget=10)
    left = env.submit(model_ref="left", parents=[root.name], budget=20)
    right = env.submit(model_ref="right", parents=[root.name, other.name], budget=30)
    join = env.submit(model_ref="join", parents=[left.name, right.name], budget=40)
    leaf = env.submit(model_ref="leaf", parents=[join.name], budget=50)
    assert env.balance(env.alice_id) == (10_000 - 160, 160)
    leased = {x.job.model_ref: x for x in env.claim(env.worker_a, max_jobs=10)}
    assert set(leased) == {"root", "other"}
    failed = _fail(env, leased["root"])
    assert failed.state == job_pb2.JOB_STATE_FAILED
    for job in (left, right, join, leaf):
        row = env.get(job.name)
        assert row.state == job_pb2.JOB_STATE_FAILED, job.model_ref
        assert row.error.startswith("parent jobs/") and "failed" in row.error
    # Every dependant's budget is back; only the independent parent is still held.
    assert env.balance(env.alice_id) == (10_000 - 10, 10)
    env.complete(env.worker_a, leased["other"].lease)
    assert env.get(right.name).state == job_pb2.JOB_STATE_FAILED  # stays finished


def test_a_retried_parent_keeps_its_children_waiting(env):
    parent = env.submit(model_ref="p", max_attempts=3)
    child = env.submit(model_ref="c", parents=[parent.name])
    [leased] = env.claim(env.worker_a)
    assert _fail(env, leased, retryable=True).state == job_pb2.JOB_STATE_QUEUED
    assert env.get(child.name).state == job_pb2.JOB_STATE_PENDING


def test_cancelling_a_parent_cancels_its_dependants_refunded(env):
    parent = env.submit(model_ref="p", budget=10)
    child = env.submit(model_ref="c", parents=[parent.name], budget=20)
    grandchild = env.submit(model_ref="g", parents=[child.name], budget=30)
    env.stub.CancelJob(job_pb2.CancelJobRequest(name=parent.name), metadata=bearer(env.alice))
    for job in (child, grandchild):
        row = env.get(job.name)
        assert row.state == job_pb2.JOB_STATE_CANCELLED
        assert "was cancelled" in row.error
    assert env.balance(env.alice_id) == (10_000, 0)


def test_a_succeeded_parent_does_not_hold_a_child_back(env):
    parent = env.submit(model_ref="p")
    env.complete(env.worker_a, env.claim(env.worker_a)[0].lease)
    child = env.submit(model_ref="c", parents=[parent.name])
    assert child.state == job_pb2.JOB_STATE_QUEUED
    assert list(child.parents) == [parent.name]


def test_a_parent_that_failed_or_was_cancelled_is_refused(env):
    parent = env.submit(model_ref="p")
    env.stub.CancelJob(job_pb2.CancelJobRequest(name=parent.name), metadata=bearer(env.alice))
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, env.submit, parents=[parent.name], budget=5)
    assert failure.reason == "PARENT_FINISHED"
    assert env.balance(env.alice_id) == (10_000, 0)


def test_unknown_or_foreign_parents_are_not_found_and_so_no_cycle_can_be_formed(env):
    _, bob = env.server.make_user("participant")
    foreign = env.submit(token=bob)
    rpc_error(grpc.StatusCode.NOT_FOUND, env.submit, parents=[foreign.name])
    # A job's name exists only once it is submitted: naming a job not yet created is refused,
    # so every parent is older than its child and the graph cannot close a cycle.
    rpc_error(grpc.StatusCode.NOT_FOUND, env.submit, parents=["jobs/01JZZZZZZZZZZZZZZZZZZZZZZZ"])


def test_parents_listed_twice_or_too_many_are_invalid(env):
    parent = env.submit()
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, env.submit, parents=[parent.name, parent.name])
    assert "parents[1]" in failure.violations
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, env.submit, parents=[f"jobs/x{i}" for i in range(33)]
    )
    assert "parents" in failure.violations
