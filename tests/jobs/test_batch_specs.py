"""A batch's submissions that differ only in their input share their settings, validated once
(api/job_batches.BatchSpecs, domain/jobs/specs.with_input): each submission must still get
exactly the spec, or the violations, that validating it alone gives."""

from __future__ import annotations

import hashlib

from google.protobuf import duration_pb2

from coordd.api.job_batches import BatchSpecs
from coordd.api.job_messages import spec_from_proto
from coordd.core.errors import InvalidArgument
from coordd.domain.jobs.policy import JobPolicy
from coordd_client.v1 import job_pb2

POLICY = JobPolicy()
MAX_CLAIM = 4096


def _item(**fields) -> job_pb2.SubmitJobRequest:
    fields.setdefault("kind", job_pb2.JOB_KIND_INFERENCE)
    fields.setdefault("model_ref", "hf://org/model@1")
    fields.setdefault("input", job_pb2.Payload(data=b"prompt"))
    return job_pb2.SubmitJobRequest(**fields)


def _outcome(make, item):
    try:
        return make(item)
    except InvalidArgument as exc:
        return [(v.field, v.description) for v in exc.violations]


def test_each_submission_of_a_batch_gets_the_spec_or_violations_it_gets_alone():
    digest = hashlib.sha256(b"in").hexdigest()
    minute = duration_pb2.Duration(seconds=60)
    items = [
        _item(),
        _item(input=job_pb2.Payload(data=b"other")),  # same settings, another input
        _item(input=job_pb2.Payload(data=b"x", sha256="0" * 64)),  # digest does not match
        _item(input=job_pb2.Payload(uri="https://x.test/in", sha256=digest)),
        _item(input=job_pb2.Payload(uri="https://x.test/in")),  # a uri needs a digest
        _item(input=job_pb2.Payload(uri="relative/path", sha256=digest)),
        _item(input=job_pb2.Payload(data=b"z" * 5000)),  # too large for a claim reply
        _item(input=job_pb2.Payload()),  # neither data nor uri
        _item(priority=5, input=job_pb2.Payload(data=b"other")),
        _item(priority=5),
        _item(priority=50),  # invalid settings: refused each time, never remembered
        _item(priority=50, input=job_pb2.Payload(data=b"other")),
        _item(heartbeat_timeout=minute),
        _item(heartbeat_timeout=minute, input=job_pb2.Payload(data=b"other")),
        _item(heartbeat_timeout=duration_pb2.Duration()),  # set to zero is not unset
        _item(requirements=job_pb2.Capabilities(labels=["b", "a"], gpus=1)),
        _item(requirements=job_pb2.Capabilities(labels=["a", "b"], gpus=1)),
        _item(max_attempts=3, budget=10),
        _item(max_attempts=3, budget=10, input=job_pb2.Payload(data=b"")),
        _item(unique=job_pb2.UniqueOptions(key="k")),
        _item(),
    ]
    batch = BatchSpecs(POLICY, MAX_CLAIM)
    shared = [_outcome(batch.spec, item) for item in items]
    alone = [_outcome(lambda r: spec_from_proto(r, POLICY, MAX_CLAIM), item) for item in items]
    assert shared == alone
    assert shared[1].input.data == b"other" and shared[0].input.data == b"prompt"
    assert shared[0].labels is not shared[-1].labels, "each spec has its own labels list"
    assert shared[2] == [("input.sha256", "does not match the data")]
    assert shared[6][0][0] == "input.data" and shared[10] == shared[11] == [("priority", "0..9")]


def test_a_long_lived_batch_specs_forgets_past_its_limit_and_still_validates_each_call():
    specs = BatchSpecs(POLICY, MAX_CLAIM, limit=2)
    for priority in range(5):  # more settings than it keeps
        for data in (b"a", b"b"):
            spec = specs.spec(_item(priority=priority, input=job_pb2.Payload(data=data)))
            assert (spec.priority, spec.input.data) == (priority, data)
    assert len(specs._settings) <= 2
    assert _outcome(specs.spec, _item(priority=4, input=job_pb2.Payload(data=b"x", sha256="0" * 64))) == [
        ("input.sha256", "does not match the data")
    ]
