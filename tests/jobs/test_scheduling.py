"""Delayed jobs and worker control: a job scheduled later is pending (not claimable) until
its time; a worker may snooze a leased job without spending an attempt; a cancellation
reaches the worker in its heartbeat reply and wins over a snooze."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import grpc
from google.protobuf import timestamp_pb2

from coordd.app import apply_domain_settings
from coordd.config import Settings
from coordd.domain import jobs
from coordd_client.v1 import job_pb2
from tests.helpers import rpc_error
from tests.jobs.support import TEST_POLICY, seconds
from tests.support.server import bearer


def _at(env, seconds_from_now: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(env.server.rt.now() + timedelta(seconds=seconds_from_now))
    return out


def _snooze(env, token, lease, seconds_from_now, reason="busy"):
    return env.stub.SnoozeJob(
        job_pb2.SnoozeJobRequest(lease=lease, snooze_time=_at(env, seconds_from_now), reason=reason),
        metadata=bearer(token),
    ).job


def test_a_job_scheduled_later_is_pending_and_claimable_only_from_its_time(env, clock):
    job = env.submit(budget=7, schedule_time=_at(env, 60))
    assert job.state == job_pb2.JOB_STATE_PENDING
    assert job.schedule_time.ToDatetime() == job.next_attempt_time.ToDatetime()
    assert env.balance(env.alice_id) == (9_993, 7)  # held while pending
    assert env.claim(env.worker_a) == []
    assert jobs.release_pending(env.server.rt) == 0  # not yet
    clock.advance(61)
    assert env.claim(env.worker_a) == []  # released by the scheduler task, not by the claim
    assert jobs.release_pending(env.server.rt) == 1
    [leased] = env.claim(env.worker_a)
    assert leased.job.name == job.name


def test_a_schedule_time_in_the_past_queues_at_once(env):
    job = env.submit(schedule_time=_at(env, -5))
    assert job.state == job_pb2.JOB_STATE_QUEUED
    assert [x.job.name for x in env.claim(env.worker_a)] == [job.name]


def test_a_schedule_time_more_than_366_days_ahead_is_invalid(env):
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, env.submit, schedule_time=_at(env, 367 * 86400))
    assert "schedule_time" in failure.violations


def test_a_pending_job_is_cancelled_and_refunded_at_once(env):
    job = env.submit(budget=9, schedule_time=_at(env, 3600))
    reply = env.stub.CancelJob(job_pb2.CancelJobRequest(name=job.name), metadata=bearer(env.alice))
    assert reply.job.state == job_pb2.JOB_STATE_CANCELLED
    assert env.balance(env.alice_id) == (10_000, 0)


def test_schedule_to_close_counts_from_the_schedule_time(env, clock):
    job = env.submit(schedule_time=_at(env, 100), schedule_to_close_timeout=seconds(50))
    clock.advance(120)  # past submission + 50s, not past schedule time + 50s
    jobs.enforce_deadlines(env.server.rt)
    assert env.get(job.name).state == job_pb2.JOB_STATE_PENDING
    clock.advance(40)
    jobs.enforce_deadlines(env.server.rt)
    assert env.get(job.name).state == job_pb2.JOB_STATE_FAILED


def test_a_snoozed_job_waits_until_its_time_and_keeps_its_attempts(env, clock):
    job = env.submit(budget=10, max_attempts=1)
    [first] = env.claim(env.worker_a)
    snoozed = _snooze(env, env.worker_a, first.lease, 30, "GPU busy")
    assert snoozed.state == job_pb2.JOB_STATE_PENDING
    assert snoozed.error == "GPU busy"
    # The old lease is over.
    rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        env.stub.HeartbeatJob,
        job_pb2.HeartbeatJobRequest(lease=first.lease),
        metadata=bearer(env.worker_a),
    )
    clock.advance(31)
    jobs.release_pending(env.server.rt)
    [second] = env.claim(env.worker_b)
    assert second.lease.attempt == 2
    # max_attempts=1: the snooze did not spend the one attempt; this is it, and it dead-letters.
    failed = env.stub.FailJob(
        job_pb2.FailJobRequest(lease=second.lease, error="boom", retryable=True),
        metadata=bearer(env.worker_b),
    ).job
    assert failed.state == job_pb2.JOB_STATE_FAILED
    outcomes = [a.outcome for a in env.get(job.name).attempts]
    assert outcomes == ["snoozed", "failed"]
    assert env.balance(env.alice_id) == (10_000, 0)


def test_a_snooze_does_not_count_against_max_attempts_across_retries(env, clock):
    env.submit(max_attempts=2)
    [one] = env.claim(env.worker_a)
    _snooze(env, env.worker_a, one.lease, 5)
    clock.advance(6)
    jobs.release_pending(env.server.rt)
    [two] = env.claim(env.worker_a)
    retried = env.stub.FailJob(
        job_pb2.FailJobRequest(lease=two.lease, error="flaky", retryable=True), metadata=bearer(env.worker_a)
    ).job
    assert retried.state == job_pb2.JOB_STATE_QUEUED  # the first real failure, one attempt left


def test_a_job_snoozed_as_often_as_the_limit_allows_is_refused_another_snooze(env, clock):
    jobs.set_policy(env.server.rt, replace(TEST_POLICY, max_snoozes=2))
    job = env.submit(budget=10)
    for _ in range(2):
        [leased] = env.claim(env.worker_a)
        _snooze(env, env.worker_a, leased.lease, 5)
        clock.advance(6)
        jobs.release_pending(env.server.rt)
    [third] = env.claim(env.worker_a)
    error = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        env.stub.SnoozeJob,
        job_pb2.SnoozeJobRequest(lease=third.lease, snooze_time=_at(env, 5), reason="again"),
        metadata=bearer(env.worker_a),
    )
    assert "snoozed 2 times" in error.details and "job_max_snoozes = 2" in error.details
    assert error.reason == "SNOOZE_LIMIT"
    # The lease is still held: the worker can finish the job.
    done = env.complete(env.worker_a, third.lease)
    assert done.job.state == job_pb2.JOB_STATE_SUCCEEDED
    assert [a.outcome for a in env.get(job.name).attempts] == ["snoozed", "snoozed", "succeeded"]


def test_the_snooze_limit_comes_from_the_config_with_a_default_of_100(env_with):
    assert Settings().job_max_snoozes == 100
    env = env_with(job_max_snoozes=7)
    apply_domain_settings(env.server.rt)
    assert jobs.policy_of(env.server.rt).max_snoozes == 7


def test_snooze_time_must_be_in_the_future(env):
    env.submit()
    [leased] = env.claim(env.worker_a)
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _snooze, env, env.worker_a, leased.lease, -1)
    assert "snooze_time" in failure.violations
    rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _snooze, env, env.worker_a, leased.lease, 31 * 86400)


def test_only_the_lease_holder_may_snooze(env):
    env.submit()
    [leased] = env.claim(env.worker_a)
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, _snooze, env, env.worker_b, leased.lease, 10)


def test_a_cancellation_reaches_the_worker_in_its_heartbeat_reply(env):
    job = env.submit(budget=4)
    [leased] = env.claim(env.worker_a)
    env.stub.CancelJob(job_pb2.CancelJobRequest(name=job.name), metadata=bearer(env.alice))
    beat = env.stub.HeartbeatJob(
        job_pb2.HeartbeatJobRequest(lease=leased.lease), metadata=bearer(env.worker_a)
    )
    assert beat.cancelled
    assert env.get(job.name).state == job_pb2.JOB_STATE_CANCELLED
    assert env.balance(env.alice_id) == (10_000, 0)


def test_a_cancellation_wins_over_a_snooze(env):
    job = env.submit(budget=4)
    [leased] = env.claim(env.worker_a)
    env.stub.CancelJob(job_pb2.CancelJobRequest(name=job.name), metadata=bearer(env.alice))
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _snooze, env, env.worker_a, leased.lease, 10)
    assert failure.reason == "JOB_CANCELLED"
    assert env.get(job.name).state == job_pb2.JOB_STATE_CANCELLED
    assert env.balance(env.alice_id) == (10_000, 0)
