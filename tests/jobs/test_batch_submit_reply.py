"""A batch submission's reply is built from one message per group of jobs that differ only
in id and input (api/job_messages.batch_submit_reply), and its ids from one random draw
(domain/jobs/ids.py): each job in the reply must still be exactly the job as stored."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta

from coordd.core import ids as core_ids
from coordd.domain.jobs import ids
from coordd_client.v1 import job_pb2
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
