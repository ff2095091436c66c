"""Job views (AIP-157, issue #12): lists and streams leave inline payload bytes out unless
asked for JOB_VIEW_FULL; GetJob includes them unless asked for JOB_VIEW_BASIC. Sizes and
digests are there in every view."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from coordd_client.v1 import job_pb2
from tests.support.server import bearer

BASIC, FULL = job_pb2.JOB_VIEW_BASIC, job_pb2.JOB_VIEW_FULL
INPUT = b"i" * 5000


def _get(env, name: str, view: int = job_pb2.JOB_VIEW_UNSPECIFIED) -> job_pb2.Job:  # type: ignore[no-untyped-def]
    request = job_pb2.GetJobRequest(name=name, view=view)
    return env.stub.GetJob(request, metadata=bearer(env.alice)).job


def _succeeded(env) -> str:  # type: ignore[no-untyped-def]
    name = env.submit(input=job_pb2.Payload(data=INPUT)).name
    (leased,) = env.claim(env.worker_a)
    env.complete(env.worker_a, leased.lease, output=b"o" * 300)
    return name


def test_get_job_returns_the_payload_bytes_unless_asked_for_the_basic_view(env):
    name = _succeeded(env)
    for view in (job_pb2.JOB_VIEW_UNSPECIFIED, FULL):
        job = _get(env, name, view)
        assert (job.input.data, job.input.size_bytes) == (INPUT, 5000)
        assert (job.output.data, job.output.size_bytes) == (b"o" * 300, 300)
    basic = _get(env, name, BASIC)
    assert basic.input.WhichOneof("source") is None and basic.output.WhichOneof("source") is None
    assert (basic.input.size_bytes, basic.output.size_bytes) == (5000, 300)
    assert basic.input.sha256 == hashlib.sha256(INPUT).hexdigest()
    assert basic.output.sha256 == hashlib.sha256(b"o" * 300).hexdigest()
    assert basic.state == job_pb2.JOB_STATE_SUCCEEDED and len(basic.attempts) == 1


def test_list_jobs_leaves_payload_bytes_out_unless_asked_for_the_full_view(env):
    name = _succeeded(env)
    for view in (job_pb2.JOB_VIEW_UNSPECIFIED, BASIC):
        request = job_pb2.ListJobsRequest(view=view)
        (job,) = env.stub.ListJobs(request, metadata=bearer(env.alice)).jobs
        assert job.name == name and not job.input.data and not job.output.data
        assert (job.input.size_bytes, job.output.size_bytes) == (5000, 300)
    (job,) = env.stub.ListJobs(job_pb2.ListJobsRequest(view=FULL), metadata=bearer(env.alice)).jobs
    assert (job.input.data, job.output.data) == (INPUT, b"o" * 300)


def test_a_full_list_page_ends_before_the_payloads_that_would_not_fit_in_one_reply(env_with):
    env = env_with(max_message_bytes=256 * 1024)
    names = [env.submit(input=job_pb2.Payload(data=bytes([i]) * 50_000)).name for i in range(3)]
    request = job_pb2.ListJobsRequest(view=FULL, page_size=10)
    first = env.stub.ListJobs(request, metadata=bearer(env.alice))
    # Newest first; payloads take at most half of the (256 KiB - headroom) reply: two 50 kB jobs.
    assert [j.name for j in first.jobs] == names[::-1][:2]
    assert all(len(j.input.data) == 50_000 for j in first.jobs)
    assert first.next_page_token
    request.page_token = first.next_page_token
    second = env.stub.ListJobs(request, metadata=bearer(env.alice))
    assert [j.name for j in second.jobs] == names[:1] and not second.next_page_token


def test_watch_job_streams_no_payload_bytes_by_default(env):
    name = env.submit(input=job_pb2.Payload(data=INPUT)).name
    stream = env.stub.WatchJob(job_pb2.WatchJobRequest(name=name), metadata=bearer(env.alice))
    try:
        first = next(stream).job
    finally:
        stream.cancel()
    assert first.state == job_pb2.JOB_STATE_QUEUED
    assert first.input.WhichOneof("source") is None and first.input.size_bytes == 5000


def test_a_full_watch_carries_the_input_and_then_the_output_bytes(env):
    name = env.submit(input=job_pb2.Payload(data=INPUT)).name
    request = job_pb2.WatchJobRequest(name=name, view=FULL)
    stream = env.stub.WatchJob(request, metadata=bearer(env.alice))
    try:
        assert next(stream).job.input.data == INPUT
        (leased,) = env.claim(env.worker_a)
        env.complete(env.worker_a, leased.lease, output=b"done")
        last = None
        for update in stream:
            last = update.job
            assert last.input.data == INPUT
            if last.state == job_pb2.JOB_STATE_SUCCEEDED:
                break
    finally:
        stream.cancel()
    assert last is not None and last.output.data == b"done" and last.output.size_bytes == 4


@pytest.mark.parametrize("rpc", ["GetJob", "ListJobs", "WatchJob"])
def test_an_unknown_view_is_invalid(env, rpc):
    name = env.submit().name
    request = {
        "GetJob": job_pb2.GetJobRequest(name=name, view=7),
        "ListJobs": job_pb2.ListJobsRequest(view=7),
        "WatchJob": job_pb2.WatchJobRequest(name=name, view=7),
    }[rpc]
    with pytest.raises(grpc.RpcError) as err:
        reply = getattr(env.stub, rpc)(request, metadata=bearer(env.alice))
        if rpc == "WatchJob":
            next(reply)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "view" in err.value.details()
