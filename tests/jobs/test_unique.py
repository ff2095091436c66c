"""Unique jobs: a submission with a unique key is a duplicate while the first job is
unfinished (or within its window); duplicates are ALREADY_EXISTS naming the existing job, or
the existing job itself when asked; racing submits create one job."""

from __future__ import annotations

import threading

import grpc

from coordd.core.errors import AlreadyExists
from coordd.core.principal import Principal
from coordd.domain import jobs
from coordd_client.v1 import job_pb2
from tests.helpers import rpc_error
from tests.jobs.rows import count_jobs
from tests.jobs.support import seconds


def _unique(key: str, **fields) -> job_pb2.UniqueOptions:
    return job_pb2.UniqueOptions(key=key, **fields)


def test_a_duplicate_while_the_first_is_unfinished_is_already_exists_naming_it(env):
    first = env.submit(budget=10, unique=_unique("nightly-report"))
    failure = rpc_error(
        grpc.StatusCode.ALREADY_EXISTS, env.submit, budget=10, unique=_unique("nightly-report")
    )
    assert failure.reason == "DUPLICATE_JOB"
    assert failure.metadata["job"] == first.name
    assert first.unique_key == "nightly-report"
    assert env.balance(env.alice_id) == (9_990, 10)  # the duplicate held nothing
    assert count_jobs() == 1


def test_a_duplicate_returns_the_existing_job_when_asked(env):
    first = env.submit(unique=_unique("k"))
    reply = env.stub.SubmitJob(
        job_pb2.SubmitJobRequest(
            kind=job_pb2.JOB_KIND_INFERENCE,
            model_ref="hf://org/model@1",
            input=job_pb2.Payload(data=b"other"),
            unique=_unique("k", return_existing=True),
        ),
        metadata=[("authorization", f"Bearer {env.alice}")],
    )
    assert reply.already_existed
    assert reply.job.name == first.name


def test_the_key_is_free_again_once_the_job_finished(env):
    first = env.submit(unique=_unique("k"))
    env.stub.CancelJob(
        job_pb2.CancelJobRequest(name=first.name), metadata=[("authorization", f"Bearer {env.alice}")]
    )
    second = env.submit(unique=_unique("k"))
    assert second.name != first.name


def test_keys_are_per_submitter_and_optionally_per_model(env):
    _, bob = env.server.make_user("participant")
    env.submit(unique=_unique("k"))
    env.submit(token=bob, unique=_unique("k"))  # another submitter: not a duplicate
    env.submit(unique=_unique("m", per_model=True), model_ref="hf://a@1")
    env.submit(unique=_unique("m", per_model=True), model_ref="hf://b@1")  # another model
    rpc_error(
        grpc.StatusCode.ALREADY_EXISTS,
        env.submit,
        unique=_unique("m", per_model=True),
        model_ref="hf://a@1",
    )
    env.submit(unique=_unique("m"), model_ref="hf://a@1")  # a key without per_model is another key


def test_a_window_keeps_the_key_after_the_job_finished_until_it_passes(env, clock):
    first = env.submit(unique=_unique("w", window=seconds(60)))
    env.stub.CancelJob(
        job_pb2.CancelJobRequest(name=first.name), metadata=[("authorization", f"Bearer {env.alice}")]
    )
    failure = rpc_error(grpc.StatusCode.ALREADY_EXISTS, env.submit, unique=_unique("w", window=seconds(60)))
    assert failure.metadata["job"] == first.name
    clock.advance(61)
    assert env.submit(unique=_unique("w", window=seconds(60))).name != first.name


def test_bad_unique_options_are_invalid_argument(env):
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, env.submit, unique=_unique(""))
    assert "unique.key" in failure.violations
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, env.submit, unique=_unique("k", window=seconds(0.5))
    )
    assert "unique.window" in failure.violations


def test_a_batch_with_the_same_key_twice_queues_one_job_when_asked(env):
    request = job_pb2.SubmitJobRequest(
        kind=job_pb2.JOB_KIND_INFERENCE,
        model_ref="m",
        input=job_pb2.Payload(data=b"x"),
        budget=5,
        unique=_unique("b", return_existing=True),
    )
    reply = env.stub.BatchSubmitJobs(
        job_pb2.BatchSubmitJobsRequest(requests=[request, request]),
        metadata=[("authorization", f"Bearer {env.alice}")],
    )
    assert reply.jobs[0].name == reply.jobs[1].name
    assert env.balance(env.alice_id) == (9_995, 5)


def test_unique_submits_racing_from_8_threads_create_one_job(env):
    rt = env.server.rt
    who = Principal(env.alice_id, frozenset({"participant"}), "token")
    base = jobs.make_spec(
        "inference", "m", jobs.Payload(b"x", "", ""), [], 0, 3, 0, 1, None, None, None, None
    )
    spec = jobs.with_scheduling(base, unique=jobs.UniqueSpec("race"))
    start = threading.Barrier(8)
    created: list[str] = []
    duplicates: list[str] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            start.wait()
            for _ in range(5):
                try:
                    job, _ = jobs.submit(rt, who, spec)
                    created.append(job.id)
                except AlreadyExists as exc:
                    duplicates.append(exc.metadata["job"])
        except BaseException as exc:
            errors.append(exc)
        finally:
            rt.store.close_thread_connection()

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(created) == 1
    assert set(duplicates) == {f"jobs/{created[0]}"} and len(duplicates) == 39
    assert count_jobs() == 1
    assert env.balance(env.alice_id) == (9_997, 3)
