"""BatchSubmitJobs' request and reply, a batch at a time. The submissions of one batch usually
differ only in their input, and the jobs of its reply only in their id and input: what they
share is validated, and built, once per batch."""

from __future__ import annotations

import operator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from coordd.api.job_messages import job_to_proto, payload_from_proto, spec_from_proto
from coordd.core.memo import remember
from coordd.domain import jobs
from coordd_client.v1 import job_pb2


def _settings_key(r: job_pb2.SubmitJobRequest) -> tuple[Any, ...]:
    """Every field set in the submission but its input (so a field added to the message is
    part of the key without anyone listing it): messages by their bytes, lists as tuples."""
    return tuple(
        (field.number, _hashable(field, value)) for field, value in r.ListFields() if field.number != _INPUT
    )


def _hashable(field: Any, value: Any) -> Any:
    if field.is_repeated:
        return tuple(_hashable_item(field, v) for v in value)
    return _hashable_item(field, value)


def _hashable_item(field: Any, value: Any) -> Any:
    return value.SerializeToString(deterministic=True) if field.type == _MESSAGE else value


_INPUT = job_pb2.SubmitJobRequest.DESCRIPTOR.fields_by_name["input"].number
_MESSAGE = FieldDescriptor.TYPE_MESSAGE


class BatchSpecs:
    """The specs of one batch's submissions. Submissions that differ only in their input
    share their settings: validated once, then each input alone (`jobs.with_input`: the same
    specs and violations as `spec_from_proto`)."""

    def __init__(self, policy: jobs.JobPolicy, max_claim: int, limit: int = 1024) -> None:
        self.policy, self.max_claim = policy, max_claim
        self._settings: dict[tuple[Any, ...], jobs.JobSpec] = {}
        self._limit = limit  # settings kept; a long-lived instance forgets them all past it

    def spec(self, r: job_pb2.SubmitJobRequest) -> jobs.JobSpec:
        has = r.HasField
        if has("schedule_time") or has("unique") or r.parents or not has("input"):
            return spec_from_proto(r, self.policy, self.max_claim)
        key = _settings_key(r)
        known = self._settings.get(key)
        if known is None:
            return remember(self._settings, key, spec_from_proto(r, self.policy, self.max_claim), self._limit)
        return jobs.with_input(known, payload_from_proto(r.input, True), self.max_claim)


# -- the reply ------------------------------------------------------------------------------

# What a reply's jobs of one batch usually share: every field `job_to_proto` reads but the
# id, the payloads and the label and parent lists (compared as tuples).
_SHARED = (
    "submitter", "kind", "model_ref", "gpus", "budget", "base_priority", "max_attempts",
    "schedule_to_start_ms", "start_to_close_ms", "heartbeat_ms", "schedule_to_close_ms", "state",
    "attempt", "provider", "create_time", "start_time", "finish_time", "run_after", "progress",
    "cancel_requested", "output_uri", "output_digest", "payload_purged", "error", "fee",
    "schedule_time", "unique_key",
)  # fmt: skip
_shared_of = operator.itemgetter(*_SHARED)


class JobTemplates:
    """Fills reply messages with `job_to_proto(job)`. Jobs without output (new submissions)
    that differ only in id and input share one message built once, copied and given their
    name and input: building each message from its ~30 fields cost ~11 us per job of a
    100-job batch reply, a copy ~1 us. Kept across calls, it also serves the SubmitJob calls
    gathered into one transaction (their jobs share a create time); at most `limit`
    templates are kept."""

    def __init__(self, limit: int = 64) -> None:
        self._templates: dict[tuple[Any, ...], job_pb2.Job] = {}
        self._limit = limit
        self._last: tuple[Any, ...] | None = None
        self._template = job_pb2.Job()

    def fill(self, message: job_pb2.Job, job: jobs.Job) -> None:
        """`message` (empty) becomes `job_to_proto(job)`."""
        data = job.__data__
        g = data.get
        if g("output_data") is not None:
            message.CopyFrom(job_to_proto(job))
            return
        try:
            shared = _shared_of(data)
        except KeyError:  # a model without every field loaded
            shared = tuple(map(g, _SHARED))
        key = (shared, tuple(g("labels") or ()), tuple(g("parents") or ()))
        # Consecutive jobs mostly share the template: their values are the same objects, so
        # comparing with the last key is cheaper than hashing this one.
        if key != self._last:
            found = self._templates.get(key)
            if found is None:
                found = remember(self._templates, key, job_to_proto(job), self._limit)
                found.ClearField("name")
                found.ClearField("input")
            self._template, self._last = found, key
        message.CopyFrom(self._template)
        message.name = f"jobs/{g('id')}"
        digest = g("input_digest")
        if digest:  # as `_payload` in the full view
            source = message.input
            source.sha256 = digest
            source.purged = g("payload_purged")
            data, uri = g("input_data"), g("input_uri")
            if uri:
                source.uri = uri
            elif data is not None:
                source.data = bytes(data)
                source.size_bytes = len(data)


def batch_submit_reply(batch: list[jobs.Job]) -> job_pb2.BatchSubmitJobsResponse:
    """The reply's `job_to_proto(job)` of each job, through one batch's `JobTemplates`."""
    reply = job_pb2.BatchSubmitJobsResponse()
    add, fill = reply.jobs.add, JobTemplates(len(batch)).fill
    for job in batch:
        fill(add(), job)
    return reply
