"""Concurrency caps: at most N running jobs per submitter (one, or each), per model ref and
per label, enforced by the claim itself (also across concurrent claimers); set and listed by
admins only; a finished job frees its slot."""

from __future__ import annotations

import threading

import grpc

from coordd.domain import jobs, ledger
from coordd_client.v1 import job_pb2
from tests.helpers import rpc_error
from tests.support.server import bearer

SUBMITTER = job_pb2.JOB_LIMIT_SCOPE_SUBMITTER
MODEL = job_pb2.JOB_LIMIT_SCOPE_MODEL
LABEL = job_pb2.JOB_LIMIT_SCOPE_LABEL


def _set(env, scope, key, max_running):
    return env.stub.SetJobLimit(
        job_pb2.SetJobLimitRequest(limit=job_pb2.JobLimit(scope=scope, key=key, max_running=max_running)),
        metadata=bearer(env.admin),
    ).limits


def test_a_submitter_cap_limits_their_running_jobs_and_a_finished_job_frees_a_slot(env):
    _set(env, SUBMITTER, f"users/{env.alice_id}", 2)
    _, bob = env.server.make_user("participant")
    for _ in range(4):
        env.submit()
    other = env.submit(token=bob)
    leased = env.claim(env.worker_a, max_jobs=10)
    names = [x.job.name for x in leased]
    assert len(names) == 3 and other.name in names  # 2 of alice's, and bob's (no cap)
    assert env.claim(env.worker_b, max_jobs=10) == []  # alice is at her cap
    env.complete(env.worker_a, next(x for x in leased if x.job.name != other.name).lease)
    assert len(env.claim(env.worker_b, max_jobs=10)) == 1


def test_a_cap_set_while_jobs_wait_applies_to_the_next_claim(env):
    """The uncapped claim is one statement that checks no cap exists: a cap set after the
    jobs were queued (and after an uncapped claim) still holds on the next claim."""
    for _ in range(5):
        env.submit()
    assert len(env.claim(env.worker_a, max_jobs=1)) == 1  # no cap yet: the one-statement claim
    _set(env, SUBMITTER, f"users/{env.alice_id}", 2)
    assert len(env.claim(env.worker_b, max_jobs=10)) == 1  # one running already, one slot left
    assert env.claim(env.worker_b, max_jobs=10) == []


def test_a_cap_for_each_submitter_applies_to_every_submitter_and_a_users_own_cap_overrides_it(env):
    bob_id, bob = env.server.make_user("participant")
    with env.server.rt.store.write() as tx:
        ledger.deposit(tx, bob_id, 100, "seed")
    _set(env, SUBMITTER, "*", 1)
    _set(env, SUBMITTER, f"users/{bob_id}", 3)
    for _ in range(3):
        env.submit()
        env.submit(token=bob)
    leased = env.claim(env.worker_a, max_jobs=10)
    by = [x.job.submitter for x in leased]
    assert by.count(f"users/{env.alice_id}") == 1 and by.count(f"users/{bob_id}") == 3


def test_model_and_label_caps_limit_running_jobs_of_that_model_or_label(env):
    _set(env, MODEL, "hf://big@1", 1)
    _set(env, LABEL, "gpu-a100", 2)
    for _ in range(3):
        env.submit(model_ref="hf://big@1")
        env.submit(model_ref="hf://small@1", requirements=job_pb2.Capabilities(labels=["gpu-a100"]))
    leased = env.claim(env.worker_a, max_jobs=10, labels=["gpu-a100"])
    models = [x.job.model_ref for x in leased]
    assert models.count("hf://big@1") == 1 and models.count("hf://small@1") == 2


def test_removing_a_cap_lifts_it(env):
    _set(env, MODEL, "m", 1)
    for _ in range(3):
        env.submit(model_ref="m")
    assert len(env.claim(env.worker_a, max_jobs=10)) == 1
    assert _set(env, MODEL, "m", 0) == []
    assert len(env.claim(env.worker_a, max_jobs=10)) == 2


def test_caps_hold_under_concurrent_claims(env):
    rt = env.server.rt
    _set(env, MODEL, "m", 5)
    spec = jobs.make_spec(
        "inference", "m", jobs.Payload(b"x", "", ""), [], 0, 0, 0, 1, None, None, None, None
    )
    with rt.store.write() as tx:
        jobs.insert_jobs(tx, env.alice_id, [spec] * 60)
    providers = [env.server.make_user("provider")[0] for _ in range(6)]
    got: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def work(index: int) -> None:
        worker = jobs.Worker(providers[index], frozenset(), 0)
        try:
            start.wait()
            for _ in range(5):
                got.extend(x.job.id for x in jobs.claim(rt, worker, 3))
        except BaseException as exc:
            errors.append(exc)
        finally:
            rt.store.close_thread_connection()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(got) == 5 == len(set(got))


def test_only_admins_set_or_list_caps_and_bad_caps_are_invalid(env):
    request = job_pb2.SetJobLimitRequest(limit=job_pb2.JobLimit(scope=MODEL, key="m", max_running=1))
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, env.stub.SetJobLimit, request, metadata=bearer(env.alice))
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        env.stub.ListJobLimits,
        job_pb2.ListJobLimitsRequest(),
        metadata=bearer(env.worker_a),
    )
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, _set, env, job_pb2.JOB_LIMIT_SCOPE_UNSPECIFIED, "m", 1
    )
    assert "scope" in failure.violations
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _set, env, MODEL, "*", 1)
    assert "key" in failure.violations
    rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _set, env, MODEL, "m", -1)
    _set(env, LABEL, "x", 4)
    listed = env.stub.ListJobLimits(job_pb2.ListJobLimitsRequest(), metadata=bearer(env.admin)).limits
    assert [(x.scope, x.key, x.max_running) for x in listed] == [(LABEL, "x", 4)]
