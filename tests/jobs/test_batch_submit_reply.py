"""A batch submission's reply is encoded once per group of jobs that differ only in id and
input (api/job_batches.batch_submit_reply), and its ids from one random draw
(domain/jobs/ids.py): each job in the reply must still be exactly the job as stored. A claim's
reply is built the same way (api/job_messages.claim_reply): each leased job must be exactly the
message built for it alone."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta

import grpc

from coordd.api.job_batches import batch_submit_reply
from coordd.api.job_messages import claim_reply, job_to_proto, leased_to_proto
from coordd.core import ids as core_ids
from coordd.domain.jobs import ids
from coordd.domain.jobs.leases import Leased
from coordd.store.jobs.queries import ClaimedRow
from coordd_client.v1 import job_pb2
from tests.jobs.rows import job_row
from tests.support.server import bearer


def _item(**fields) -> job_pb2.SubmitJobRequest:
    fields.setdefault("kind", job_pb2.JOB_KIND_INFERENCE)
    fields.setdefault("model_ref", "hf://org/model@1")
    fields.setdefault("input", job_pb2.Payload(data=b"prompt"))
    return job_pb2.SubmitJobRequest(**fields)


def test_each_job_of_a_batch_reply_is_the_stored_job(env):
    uri = job_pb2.Payload(uri="https://x.test/in", sha256=hashlib.sha256(b"in").hexdigest())
    later = job_pb2.SubmitJobRequest()
    later.schedule_time.FromDatetime(env.server.rt.now() + timedelta(hours=1))
    items = [
        _item(),
        _item(input=job_pb2.Payload(data=b"other prompt")),
        _item(),  # the same as the first, but for its id
        _item(input=uri),
        _item(budget=7),
        _item(requirements=job_pb2.Capabilities(labels=["cuda"], gpus=1)),
        _item(requirements=job_pb2.Capabilities(labels=["tpu"], gpus=1)),
        _item(model_ref="hf://org/other@2", priority=4, max_attempts=5),
        _item(schedule_time=later.schedule_time),
        _item(unique=job_pb2.UniqueOptions(key="k-1")),
        _item(input=job_pb2.Payload(data=b"")),
    ]
    reply = env.stub.BatchSubmitJobs(
        job_pb2.BatchSubmitJobsRequest(requests=items), metadata=bearer(env.alice)
    )
    assert len({j.name for j in reply.jobs}) == len(items)
    assert [env.get(j.name) for j in reply.jobs] == list(reply.jobs)
    first, other, again, by_uri = reply.jobs[:4]
    assert first.input.data == again.input.data == b"prompt" and other.input.data == b"other prompt"
    assert other.input.size_bytes == 12 and not by_uri.input.data and by_uri.input.uri == uri.uri
    assert [j.budget for j in reply.jobs[4:6]] == [7, 0]
    assert [list(j.requirements.labels) for j in reply.jobs[5:7]] == [["cuda"], ["tpu"]]
    assert reply.jobs[8].state == job_pb2.JOB_STATE_PENDING and reply.jobs[9].unique_key == "k-1"
    assert reply.jobs[10].input.sha256 == hashlib.sha256(b"").hexdigest()
    # Each job has its own submission's settings, however they alternate along the batch.
    for item, job in zip(items, reply.jobs, strict=True):
        settings = (job.model_ref, job.priority, job.budget, job.requirements.gpus)
        assert settings == (item.model_ref, item.priority, item.budget, item.requirements.gpus)
    assert reply.jobs[7].max_attempts == 5 and reply.jobs[8].max_attempts == reply.jobs[0].max_attempts != 5


def test_a_batch_reply_encodes_exactly_as_the_message_built_job_by_job(env):
    """The reply is built a batch at a time (one template per group): it must encode to the
    bytes of the message built job by job, for every shape of job a reply can hold."""
    uri = job_pb2.Payload(uri="https://x.test/in\u00e9", sha256=hashlib.sha256(b"in").hexdigest())
    items = [
        _item(),
        _item(input=job_pb2.Payload(data=b"x" * 300)),  # a length of two varint bytes
        _item(input=uri),
        _item(input=job_pb2.Payload(data=b"")),
        _item(requirements=job_pb2.Capabilities(labels=["cuda", "a100"], gpus=2), budget=5),
        _item(model_ref="hf://org/other@2", priority=4, max_attempts=5),
        _item(unique=job_pb2.UniqueOptions(key="k-2")),
    ]
    reply = env.stub.BatchSubmitJobs(
        job_pb2.BatchSubmitJobsRequest(requests=items), metadata=bearer(env.alice)
    )
    ids = [j.name.removeprefix("jobs/") for j in reply.jobs]
    with env.server.rt.store.read():
        stored = {i: job_row(i) for i in ids}
    batch = [stored[i] for i in ids]
    purged, finished = job_row(ids[0]), job_row(ids[1])
    purged.payload_purged = True
    finished.output_data, finished.output_digest = b"out", hashlib.sha256(b"out").hexdigest()
    batch += [purged, finished, stored[ids[0]]]
    expected = job_pb2.BatchSubmitJobsResponse(jobs=[job_to_proto(j) for j in batch])
    assert batch_submit_reply(batch).SerializeToString() == expected.SerializeToString()


def test_batch_ids_have_the_layout_of_single_ids(monkeypatch):
    noise = os.urandom(10 * 50)
    monkeypatch.setattr(ids.os, "urandom", lambda n: noise[:n])
    batch = ids.new_ids(50, now_ms=1_700_000_000_123)
    singles = []
    for i in range(50):
        monkeypatch.setattr(core_ids.os, "urandom", lambda n, i=i: noise[10 * i : 10 * i + n])
        singles.append(core_ids.new_id(now_ms=1_700_000_000_123))
    assert batch == singles
    monkeypatch.undo()
    assert all(core_ids.is_id(x) for x in batch)
    # Time-ordered across milliseconds, whatever the random part.
    assert ids.new_ids(1, now_ms=1_700_000_000_124)[0] > max(batch)
    assert ids.encode_id(0) == "0" * 26 and ids.encode_id(2**128 - 1) == "7" + "z" * 25
    assert len(set(ids.new_ids(1000))) == 1000


def _claimed(i: int, **fields) -> ClaimedRow:
    row = ClaimedRow(
        f"01J{i:023d}", "alice", "inference", "hf://org/model@1", b"prompt", "", "ab" * 32, [], 0, 0, 0, 3,
        0, 0, 30_000, 0, 1, "worker", 1_764_672_000_123_456, 1_764_671_000_000_000 + i, 1_764_671_999_000_000,
        False,
    )  # fmt: skip
    return row._replace(**fields)


def test_each_job_of_a_claim_reply_is_the_message_built_for_it_alone():
    leased = [
        Leased(_claimed(0), "lease-1"),
        Leased(_claimed(1, input_data=b"other prompt"), "lease-1"),
        Leased(_claimed(2), "lease-1"),  # the same as the first, but for its id and create time
        Leased(_claimed(3, input_data=None, input_uri="https://x.test/in"), "lease-1"),
        Leased(_claimed(4, input_data=None, input_digest=""), "lease-1"),
        Leased(_claimed(5, attempt=3, payload_purged=True), "lease-1"),
        Leased(_claimed(6, labels=["cuda"], gpus=1), "lease-1"),
        Leased(_claimed(7, labels=["tpu"], gpus=1), "lease-1"),
        Leased(_claimed(8, budget=7, priority=4, submitter="bob", model_ref="hf://org/other@2"), "lease-1"),
        Leased(_claimed(9, heartbeat_ms=5_000, schedule_to_close_ms=60_000), "lease-1"),
        Leased(_claimed(10, lease_expire_us=1_764_672_999_000_000), "lease-2"),
        Leased(_claimed(11), "lease-2"),
    ]
    alone = job_pb2.ClaimJobsResponse(jobs=[leased_to_proto(x) for x in leased])
    built = claim_reply(leased)
    assert list(built.jobs) == list(alone.jobs)
    assert built.SerializeToString() == alone.SerializeToString()
    assert [j.lease.lease_id for j in built.jobs[-2:]] == ["lease-2", "lease-2"]
    assert built.jobs[3].job.input.uri == "https://x.test/in" and not built.jobs[3].job.input.data
    assert built.jobs[4].job.HasField("input") and built.jobs[5].lease.attempt == 3


def test_the_jobs_of_a_claim_through_grpc_are_the_stored_jobs(env):
    items = [_item(), _item(input=job_pb2.Payload(data=b"other")), _item(), _item(budget=3)]
    env.stub.BatchSubmitJobs(job_pb2.BatchSubmitJobsRequest(requests=items), metadata=bearer(env.alice))
    claimed = env.claim(env.worker_a, max_jobs=10)
    assert len({x.job.name for x in claimed}) == 4
    for x in claimed:
        stored = env.get(x.job.name)
        assert x.lease.job == stored.name and x.lease.attempt == stored.attempt == x.job.attempt
        assert x.job.input == stored.input and x.job.create_time == stored.create_time
        assert x.job.budget == stored.budget and x.job.start_time == stored.start_time


def test_submit_job_calls_that_repeat_their_settings_each_get_their_own_job(env):
    """SubmitJob keeps validated settings and reply templates across calls: each call must
    still be answered with, and store, exactly its own submission."""
    items = [
        _item(),
        _item(input=job_pb2.Payload(data=b"other prompt")),
        _item(),
        _item(priority=3),
        _item(input=job_pb2.Payload(data=b"x", sha256="0" * 64)),  # refused, settings known
        _item(requirements=job_pb2.Capabilities(labels=["cuda"], gpus=1)),
        _item(),
    ]
    replies = []
    for item in items:
        try:
            replies.append(env.stub.SubmitJob(item, metadata=bearer(env.alice)).job)
        except grpc.RpcError as exc:
            replies.append(exc.code())
    assert replies[4] == grpc.StatusCode.INVALID_ARGUMENT
    jobs = [j for j in replies if not isinstance(j, grpc.StatusCode)]
    assert len({j.name for j in jobs}) == len(jobs) == 6
    assert [env.get(j.name) for j in jobs] == jobs
    assert [j.input.data for j in jobs] == [
        b"prompt",
        b"other prompt",
        b"prompt",
        b"prompt",
        b"prompt",
        b"prompt",
    ]
    assert [j.priority for j in jobs] == [0, 0, 0, 3, 0, 0]
    assert [list(j.requirements.labels) for j in jobs] == [[], [], [], [], ["cuda"], []]
    alone = job_to_proto(job_row(jobs[2].name))
    assert jobs[2].SerializeToString(deterministic=True) == alone.SerializeToString(deterministic=True)
