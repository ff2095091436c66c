"""WorkJobs, the worker stream: jobs leased and completed as columns on one call, each
completion checked, signed and paid as BatchCompleteJobs does, the next claim in the same
message; jobs asked for are sent when they become claimable; bad messages end the stream with
INVALID_ARGUMENT and change nothing; leases are ordinary leases that outlive the stream."""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
import time

import grpc
import pytest

import coordd_client.aio
from coordd.domain import jobs, ledger
from coordd_client import attestation as offline
from coordd_client.v1 import job_pb2
from coordd_client.worker import JobWorker, StreamedJob
from tests.helpers import RpcFailure
from tests.jobs.rows import count_jobs, job_row
from tests.jobs.support import seconds
from tests.support.server import bearer

_DONE = object()


class Stream:
    """One WorkJobs call driven from a test: messages go in through a queue, replies come out."""

    def __init__(self, env, token: str, **open_fields) -> None:
        self._requests: queue.Queue[object] = queue.Queue()
        self.call = env.stub.WorkJobs(iter(self._requests.get, _DONE), metadata=bearer(token), timeout=30)
        self._first = job_pb2.WorkJobsOpen(**open_fields)

    def open(self, max_jobs: int = 0) -> None:
        self.send(open=self._first, max_jobs=max_jobs)

    def send(self, **fields) -> None:
        self._requests.put(job_pb2.WorkJobsRequest(**fields))

    def read(self) -> job_pb2.WorkJobsResponse:
        return next(self.call)

    def close(self) -> None:
        self._requests.put(_DONE)


def _completions(leases: job_pb2.JobLeases, outputs: list[bytes], lease_ids: list[str] | None = None):
    return job_pb2.JobCompletions(
        jobs=leases.jobs,
        attempts=leases.attempts,
        lease_ids=lease_ids or [leases.lease_id] * len(leases.jobs),
        output_sha256=[""] * len(leases.jobs),  # computed from the inline data
        output_data=outputs,
    )


def _wait_until_queued(name: str, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while job_row(name).state != "queued":
        assert time.monotonic() < deadline, f"{name} is {job_row(name).state}, not back in the queue"
        time.sleep(0.02)


def _stream_error(stream: Stream) -> RpcFailure:
    with pytest.raises(grpc.RpcError) as info:
        while True:
            stream.read()
    return RpcFailure(info.value)  # type: ignore[arg-type]


def _assert_invalid(stream: Stream, field: str) -> None:
    """The stream ended with INVALID_ARGUMENT naming `field`."""
    failure = _stream_error(stream)
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in failure.violations, failure.violations


def test_a_stream_leases_jobs_as_columns_and_completion_pays_like_batch_complete(env):
    names = [env.submit(budget=100, input=job_pb2.Payload(data=f"p{i}".encode())).name for i in range(3)]
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=3)
    leases = stream.read().leases
    assert sorted(leases.jobs) == sorted(names)
    assert list(leases.attempts) == [1, 1, 1]
    assert leases.lease_id and all(t > 0 for t in leases.expire_times_us)
    assert set(leases.kinds) == {job_pb2.JOB_KIND_INFERENCE}
    assert {bytes(d) for d in leases.input_data} == {b"p0", b"p1", b"p2"}
    assert list(leases.input_sha256) == [hashlib.sha256(bytes(d)).hexdigest() for d in leases.input_data]
    assert all(job_row(n).state == "running" for n in names)

    stream.send(complete=_completions(leases, [b"r"] * 3))
    completed = stream.read().completed
    assert completed.succeeded == 3 and not completed.failed_jobs
    assert not completed.attested_jobs  # only with open.attestations
    stream.close()
    assert env.balance(env.alice_id) == (9_700, 0)
    assert env.balance(env.worker_a_id) == (270, 0)  # 10% platform fee (TEST_POLICY)
    assert all(env.get(n).state == job_pb2.JOB_STATE_SUCCEEDED for n in names)


def test_a_message_with_completions_and_max_jobs_gets_both_in_one_reply(env):
    first, second = env.submit().name, env.submit().name
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=1)
    leases = stream.read().leases
    assert list(leases.jobs) == [first]
    stream.send(complete=_completions(leases, [b"r"]), max_jobs=1)
    reply = stream.read()
    assert reply.completed.succeeded == 1
    assert list(reply.leases.jobs) == [second]
    assert reply.leases.lease_id != leases.lease_id  # a new claim, a new lease
    stream.close()


def test_jobs_asked_for_are_sent_as_soon_as_one_is_submitted(env):
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=2)
    replies: list[job_pb2.WorkJobsResponse] = []
    reader = threading.Thread(target=lambda: replies.append(stream.read()))
    reader.start()
    time.sleep(0.3)  # the stream is waiting for work
    assert not replies
    job = env.submit()
    reader.join(10)
    assert [list(r.leases.jobs) for r in replies] == [[job.name]]
    assert job_row(job.name).provider == env.worker_a_id
    stream.close()


def test_a_completion_arriving_while_the_stream_waits_for_work_is_answered_at_once(env):
    job = env.submit()
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=1)
    leases = stream.read().leases
    stream.send(max_jobs=5)  # the queue is empty now: the stream waits for work
    stream.send(complete=_completions(leases, [b"r"]))
    assert stream.read().completed.succeeded == 1
    assert env.get(job.name).state == job_pb2.JOB_STATE_SUCCEEDED
    stream.close()


def test_a_stale_completion_fails_alone_and_the_others_are_recorded(env):
    names = [env.submit(budget=10).name for _ in range(2)]
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=2)
    leases = stream.read().leases
    wrong = [leases.lease_id, "0" * 24]
    stream.send(complete=_completions(leases, [b"r", b"r"], lease_ids=wrong))
    completed = stream.read().completed
    assert completed.succeeded == 1
    assert list(completed.failed_jobs) == [leases.jobs[1]]
    assert list(completed.error_codes) == ["FAILED_PRECONDITION"]
    assert list(completed.error_reasons) == ["STALE_LEASE"]
    assert env.get(leases.jobs[0]).state == job_pb2.JOB_STATE_SUCCEEDED
    assert env.get(leases.jobs[1]).state == job_pb2.JOB_STATE_RUNNING
    stream.close()
    assert sorted(names) == sorted(leases.jobs)


def test_with_attestations_each_success_carries_an_envelope_that_verifies(env):
    job = env.submit()
    stream = Stream(env, env.worker_a, attestations=True)
    stream.open(max_jobs=1)
    leases = stream.read().leases
    stream.send(complete=_completions(leases, [b"the answer"]))
    completed = stream.read().completed
    stream.close()
    key = env.stub.GetSigningKey(job_pb2.GetSigningKeyRequest())
    assert list(completed.attested_jobs) == [job.name]
    assert completed.attestation_key_id == key.key_id
    statement = offline.verify_payload(
        offline.PAYLOAD_TYPE,
        completed.attestation_payloads[0],
        [(completed.attestation_key_id, completed.attestation_signatures[0])],
        key.public_key,
    )
    assert offline.verify_output(statement, b"the answer")
    stored = env.stub.GetAttestation(job_pb2.GetAttestationRequest(name=job.name), metadata=bearer(env.alice))
    assert stored.attestation.payload == completed.attestation_payloads[0]


def test_a_stream_honours_the_workers_capabilities(env):
    gpu_job = env.submit(requirements=job_pb2.Capabilities(labels=["gpu"], gpus=1)).name
    plain = env.submit().name
    stream = Stream(env, env.worker_a)  # no labels, no GPUs
    stream.open(max_jobs=2)
    assert list(stream.read().leases.jobs) == [plain]
    stream.close()
    assert job_row(gpu_job).state == "queued"


def test_the_first_message_must_open_the_stream(env):
    stream = Stream(env, env.worker_a)
    stream.send(max_jobs=1)
    _assert_invalid(stream, "open")


def test_open_twice_is_invalid(env):
    stream = Stream(env, env.worker_a)
    stream.open()
    stream.open()
    _assert_invalid(stream, "open")


def test_columns_of_different_lengths_end_the_stream_and_change_nothing(env):
    job = env.submit(budget=10)
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=1)
    leases = stream.read().leases
    bad = _completions(leases, [b"r"])
    bad.attempts.append(1)
    stream.send(complete=bad)
    _assert_invalid(stream, "complete.attempts")
    assert job_row(job.name).state == "running"
    assert env.balance(env.alice_id) == (9_990, 10)


def test_a_bad_output_digest_names_its_column_and_row(env):
    env.submit()
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=1)
    leases = stream.read().leases
    bad = _completions(leases, [b"r"])
    bad.output_sha256[0] = "f" * 64  # not the data's
    stream.send(complete=bad)
    _assert_invalid(stream, "complete.output_sha256[0]")


def test_more_than_100_jobs_asked_for_and_not_sent_is_invalid(env):
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=60)
    stream.send(max_jobs=41)
    _assert_invalid(stream, "max_jobs")


def test_a_submitter_without_the_provider_role_cannot_open_a_stream(env):
    stream = Stream(env, env.alice)
    stream.open(max_jobs=1)
    assert _stream_error(stream).code == grpc.StatusCode.PERMISSION_DENIED


def test_leases_outlive_the_stream_and_complete_through_the_unary_call(env):
    job = env.submit()
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=1)
    leases = stream.read().leases
    stream.close()
    with pytest.raises(StopIteration):
        stream.read()
    assert job_row(job.name).state == "running"
    lease = job_pb2.Lease(job=leases.jobs[0], attempt=leases.attempts[0], lease_id=leases.lease_id)
    assert env.complete(env.worker_a, lease).job.state == job_pb2.JOB_STATE_SUCCEEDED


def test_a_stream_cancelled_while_waiting_leaves_later_jobs_queued(env):
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=1)
    time.sleep(0.3)  # waiting for work
    stream.call.cancel()
    job = env.submit()
    _wait_until_queued(job.name)  # at once, or once a hand-over to the ended stream came back
    assert [x.job.name for x in env.claim(env.worker_b)] == [job.name]


# -- coordd_client.worker.JobWorker: the loop a worker writes -----------------------------------


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_job_worker_runs_every_job_and_its_completions_are_paid(env):
    names = {env.submit(budget=10, input=job_pb2.Payload(data=f"in{i}".encode())).name for i in range(25)}

    async def work() -> tuple[JobWorker, list[StreamedJob]]:
        seen: list[StreamedJob] = []
        async with (
            coordd_client.aio.connect(env.server.target, token=env.worker_a) as client,
            JobWorker(client.job, batch=10) as worker,
        ):
            async for job in worker:
                seen.append(job)
                worker.complete(job, data=job.input_data.upper())
                if len(seen) == 25:
                    worker.stop()
        return worker, seen

    worker, seen = _run(work())
    assert {j.name for j in seen} == names and len(seen) == 25
    assert worker.succeeded == 25 and worker.failures == [] and worker.unprocessed == []
    assert env.balance(env.worker_a_id) == (225, 0)
    done = env.get(seen[0].name)
    assert done.state == job_pb2.JOB_STATE_SUCCEEDED
    assert done.output.data == seen[0].input_data.upper()


def test_job_worker_reports_a_completion_the_server_refused(env):
    env.submit()

    async def work() -> JobWorker:
        async with (
            coordd_client.aio.connect(env.server.target, token=env.worker_a) as client,
            JobWorker(client.job, batch=1, attestations=True) as worker,
        ):
            async for job in worker:
                worker.complete(job._replace(lease_id="0" * 24), data=b"late")
                worker.stop()
        return worker

    worker = _run(work())
    assert worker.succeeded == 0 and worker.attested == []
    [failure] = worker.failures
    assert (failure.code, failure.reason) == ("FAILED_PRECONDITION", "STALE_LEASE")


def test_job_worker_hands_out_only_jobs_it_can_run(env):
    env.submit(requirements=job_pb2.Capabilities(labels=["gpu"]))
    plain = env.submit().name

    async def work() -> list[str]:
        got: list[str] = []
        async with (
            coordd_client.aio.connect(env.server.target, token=env.worker_a) as client,
            JobWorker(client.job, batch=5) as worker,
        ):
            async for job in worker:
                got.append(job.name)
                worker.complete(job, data=b"ok")
                worker.stop()
        return got

    assert _run(work()) == [plain]


def test_four_stream_workers_share_a_queue_and_complete_each_job_once(env):
    rt = env.server.rt
    spec = jobs.make_spec(
        "inference", "m", jobs.Payload(b"x", "", ""), [], 0, 1, 0, 1, None, None, None, None
    )
    with rt.store.write() as tx:
        ledger.deposit(tx, env.alice_id, 1_200, "bulk")
        jobs.insert_jobs(tx, env.alice_id, [spec] * 1_200)
    tokens = [env.server.make_user("provider")[1] for _ in range(4)]
    workers: list[JobWorker] = []
    handed: list[str] = []

    async def work(token: str) -> tuple[list[str], JobWorker]:
        got: list[str] = []
        async with (
            coordd_client.aio.connect(env.server.target, token=token) as client,
            JobWorker(client.job, batch=50) as worker,
        ):
            workers.append(worker)
            async for job in worker:
                got.append(job.name)
                handed.append(job.name)
                worker.complete(job, data=b"ok")
                if len(handed) == 1_200:  # the last one: every worker stops, the waiting ones too
                    for each in workers:
                        each.stop()
        return got, worker

    async def all_workers() -> list[tuple[list[str], JobWorker]]:
        return await asyncio.gather(*(work(t) for t in tokens))

    results = _run(all_workers())
    names = [n for got, _ in results for n in got]
    assert len(names) == 1_200 and len(set(names)) == 1_200, "every job handed out once"
    assert sum(w.succeeded for _, w in results) == 1_200
    assert all(w.failures == [] for _, w in results)
    assert sum(1 for got, _ in results if got) >= 2, "the work was actually shared"
    assert count_jobs(jobs.SUCCEEDED) == 1_200
    assert ledger.check_consistency() == []


def test_job_worker_stopped_from_another_task_stops_waiting_for_jobs(env):
    async def work() -> list[StreamedJob]:
        got: list[StreamedJob] = []
        async with (
            coordd_client.aio.connect(env.server.target, token=env.worker_a) as client,
            JobWorker(client.job, batch=5) as worker,
        ):
            asyncio.get_running_loop().call_later(0.3, worker.stop)  # the queue is empty: it waits
            async for job in worker:
                got.append(job)
        return got

    assert _run(work()) == []
    job = env.submit()  # nothing stays leased to the stream that ended
    _wait_until_queued(job.name)
    assert [x.job.name for x in env.claim(env.worker_b)] == [job.name]


def test_a_nul_in_a_lease_id_ends_the_stream_with_invalid_argument_and_changes_nothing(env):
    job = env.submit(budget=10)
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=1)
    leases = stream.read().leases
    stream.send(complete=_completions(leases, [b"r"], lease_ids=["a\x00b"]))
    failure = _stream_error(stream)
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT, failure.details
    assert job_row(job.name).state == "running"


def test_job_worker_refuses_a_result_it_cannot_send():
    worker = JobWorker(object(), batch=1)
    job = StreamedJob("jobs/x", 1, "l" * 24, job_pb2.JOB_KIND_INFERENCE, "m", b"", "", "", 0, 0, 0)
    with pytest.raises(ValueError, match="data or uri"):
        worker.complete(job)
    with pytest.raises(ValueError, match="needs its sha256"):
        worker.complete(job, uri="s3://bucket/out")
    worker.complete(job, uri="s3://bucket/out", sha256="a" * 64)  # buffered, nothing sent yet


# -- heartbeats on the stream -------------------------------------------------------------------


def _beats(leases: job_pb2.JobLeases, progress: list[float], lease_ids: list[str] | None = None):
    return job_pb2.JobHeartbeats(
        jobs=leases.jobs,
        attempts=leases.attempts,
        lease_ids=lease_ids or [leases.lease_id] * len(leases.jobs),
        progress=progress,
    )


def test_a_stream_heartbeat_extends_every_lease_and_records_progress(env, clock):
    names = [env.submit(heartbeat_timeout=seconds(10)).name for _ in range(2)]
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=2)
    leases = stream.read().leases
    clock.advance(5)
    stream.send(heartbeat=_beats(leases, [0.5, 0.25]))
    beats = stream.read().heartbeats
    stream.close()
    assert not beats.failed_jobs and not beats.cancelled_jobs
    moved = [b - a for a, b in zip(leases.expire_times_us, beats.expire_times_us, strict=True)]
    assert all(5_000_000 <= m < 6_000_000 for m in moved), moved  # the clock moved 5 s (and a little)
    progress = {n: job_row(n).progress for n in leases.jobs}
    assert progress == {leases.jobs[0]: 0.5, leases.jobs[1]: 0.25}
    assert sorted(names) == sorted(leases.jobs)


def test_a_stream_heartbeat_ends_a_cancelled_job_and_reports_a_stale_lease_alone(env):
    first, second = env.submit(budget=10).name, env.submit(budget=10).name
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=2)
    leases = stream.read().leases
    cancelled = leases.jobs[list(leases.jobs).index(first)]
    env.stub.CancelJob(job_pb2.CancelJobRequest(name=first), metadata=bearer(env.alice))
    ids = [leases.lease_id if name == cancelled else "0" * 24 for name in leases.jobs]
    stream.send(heartbeat=_beats(leases, [], lease_ids=ids))
    beats = stream.read().heartbeats
    stream.close()
    assert list(beats.cancelled_jobs) == [first]
    assert list(beats.failed_jobs) == [second]
    assert (list(beats.error_codes), list(beats.error_reasons)) == (["FAILED_PRECONDITION"], ["STALE_LEASE"])
    assert list(beats.expire_times_us) == [0, 0]
    assert env.get(first).state == job_pb2.JOB_STATE_CANCELLED
    assert env.get(second).state == job_pb2.JOB_STATE_RUNNING
    assert env.balance(env.alice_id) == (9_990, 10)  # the cancelled job's budget came back


def test_a_heartbeat_progress_out_of_range_ends_the_stream_and_changes_nothing(env):
    job = env.submit()
    stream = Stream(env, env.worker_a)
    stream.open(max_jobs=1)
    leases = stream.read().leases
    stream.send(heartbeat=_beats(leases, [1.5]))
    _assert_invalid(stream, "heartbeat.progress[0]")
    assert job_row(job.name).progress == 0.0


def test_job_worker_heartbeats_a_running_job_and_learns_of_its_cancellation(env):
    kept, dropped = env.submit().name, env.submit().name

    async def work() -> tuple[list[set[str]], JobWorker]:
        answers: list[set[str]] = []
        async with (
            coordd_client.aio.connect(env.server.target, token=env.worker_a) as client,
            JobWorker(client.job, batch=2) as worker,
        ):
            async for job in worker:
                if job.name == dropped:
                    await client.job.CancelJob(
                        job_pb2.CancelJobRequest(name=dropped), metadata=bearer(env.alice)
                    )
                answers.append(await worker.heartbeat([job], [0.5]))
                if job.name == kept:
                    worker.complete(job, data=b"ok")
                if len(answers) == 2:
                    worker.stop()
        return answers, worker

    answers, worker = _run(work())
    assert sorted(answers, key=len) == [set(), {dropped}]
    assert worker.succeeded == 1 and worker.heartbeat_failures == []
    assert env.get(kept).state == job_pb2.JOB_STATE_SUCCEEDED
    assert env.get(dropped).state == job_pb2.JOB_STATE_CANCELLED
