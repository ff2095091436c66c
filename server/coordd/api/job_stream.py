"""JobService.WorkJobs: a worker's claims and completions on one stream, jobs as columns.

Each request may carry completions and ask for more jobs; both go to the database in one
transaction (`jobs.complete_and_claim`). Jobs asked for and not claimable yet are waited for
as ClaimJobs waits (a hand-over from a submission, a queue event, or a re-poll every
second), while the stream keeps reading: a completion arriving meanwhile is answered at
once. Per job there is no message object either way: the columns are read and written as
lists, which is what this RPC is for (the unary calls build and parse ~25 fields a job).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from coordd.api.decoding import CheckedStream
from coordd.api.job_messages import KIND_PROTO, job_id_of
from coordd.api.validation import check_request
from coordd.core.clock import micros_of
from coordd.core.errors import DomainError, FieldViolation, InvalidArgument, Unavailable, Violations
from coordd.core.principal import Principal
from coordd.domain import jobs
from coordd.runtime import Runtime
from coordd_client.v1 import job_pb2

_UNSPECIFIED = job_pb2.JOB_KIND_UNSPECIFIED


# check_payload's paths (`<path>`, `<path>.sha256`, ...) -> this message's columns.
_OUTPUT_COLUMNS = {
    "": "output_data",
    ".data": "output_data",
    ".uri": "output_uris",
    ".sha256": "output_sha256",
}


def _columns(
    v: Violations, message: Any, prefix: str, every: tuple[str, ...], each_or_none: tuple[str, ...]
) -> int:
    """How many jobs `message` carries (its `jobs` column); a column of another length is a
    violation (`each_or_none` columns may also be empty). Raises when any is."""
    count = len(message.jobs)
    if count > jobs.MAX_CLAIM:
        v.add(f"{prefix}.jobs", f"at most {jobs.MAX_CLAIM} jobs a message")
    for column in every:
        if len(getattr(message, column)) != count:
            v.add(f"{prefix}.{column}", f"one element a job ({count})")
    for column in each_or_none:
        if len(getattr(message, column)) not in (0, count):
            v.add(f"{prefix}.{column}", f"one element a job ({count}) or none")
    v.raise_if_any()
    return count


def _lease(v: Violations, prefix: str, i: int, name: str, attempt: int, lease_id: str) -> jobs.LeaseRef:
    """Row i's lease, as jobs.check_lease checks one, with this message's field paths."""
    job_id = job_id_of(name, f"{prefix}.jobs[{i}]")
    if attempt <= 0:
        v.add(f"{prefix}.attempts[{i}]", "required")
    if not lease_id or len(lease_id) > 32:
        v.add(f"{prefix}.lease_ids[{i}]", "required, at most 32 characters")
    return jobs.LeaseRef(job_id, attempt, lease_id)


def completions_from_proto(c: job_pb2.JobCompletions) -> list[tuple[jobs.LeaseRef, jobs.Payload]]:
    """The completions, checked as BatchCompleteJobs checks its requests (field paths
    `complete.<column>[i]`); INVALID_ARGUMENT for the whole message otherwise."""
    v = Violations()
    count = _columns(
        v, c, "complete", ("attempts", "lease_ids", "output_sha256"), ("output_data", "output_uris")
    )
    data = list(c.output_data) or [b""] * count
    uris = list(c.output_uris) or [""] * count
    items: list[tuple[jobs.LeaseRef, jobs.Payload]] = []
    check_payload = jobs.check_payload
    columns = zip(c.jobs, c.attempts, c.lease_ids, c.output_sha256, data, uris, strict=True)
    for i, (name, attempt, lease_id, digest, inline, uri) in enumerate(columns):
        lease = _lease(v, "complete", i, name, attempt, lease_id)
        found = len(v.items)
        output = check_payload(v, jobs.Payload(None if uri else inline, uri, digest), "")
        for k in range(found, len(v.items)):
            p = v.items[k]
            v.items[k] = FieldViolation(f"complete.{_OUTPUT_COLUMNS[p.field]}[{i}]", p.description)
        if output is not None:
            items.append((lease, output))
    v.raise_if_any()
    return items


def heartbeats_from_proto(h: job_pb2.JobHeartbeats) -> list[tuple[jobs.LeaseRef, float]]:
    """The heartbeats, checked (field paths `heartbeat.<column>[i]`); INVALID_ARGUMENT otherwise."""
    v = Violations()
    count = _columns(v, h, "heartbeat", ("attempts", "lease_ids"), ("progress",))
    progress = list(h.progress) or [0.0] * count
    columns = zip(h.jobs, h.attempts, h.lease_ids, progress, strict=True)
    items = [(_lease(v, "heartbeat", i, *row[:3]), row[3]) for i, row in enumerate(columns)]
    v.raise_if_any()
    return items


def heartbeat_results_to_proto(
    items: list[tuple[jobs.LeaseRef, float]], outcomes: list[jobs.Heartbeat | DomainError]
) -> job_pb2.JobHeartbeatResults:
    out = job_pb2.JobHeartbeatResults()
    expiries = []
    for (lease, _), outcome in zip(items, outcomes, strict=True):
        name = f"jobs/{lease.job_id}"
        if isinstance(outcome, DomainError):
            expiries.append(0)
            out.failed_jobs.append(name)
            out.error_codes.append(outcome.code)
            out.error_reasons.append(outcome.reason)
            out.error_messages.append(outcome.message)
        elif outcome.cancelled or outcome.expire_time is None:
            expiries.append(0)
            out.cancelled_jobs.append(name)
        else:
            expiries.append(micros_of(outcome.expire_time))
    out.expire_times_us.extend(expiries)
    return out


def leases_to_proto(leased: list[jobs.Leased]) -> job_pb2.JobLeases:
    rows = [x.job for x in leased]
    return job_pb2.JobLeases(
        lease_id=leased[0].lease_id,
        jobs=[f"jobs/{r.id}" for r in rows],
        attempts=[r.attempt for r in rows],
        expire_times_us=[r.lease_expire_us for r in rows],
        kinds=[KIND_PROTO.get(r.kind, _UNSPECIFIED) for r in rows],
        model_refs=[r.model_ref for r in rows],
        input_data=[b"" if r.input_uri or r.input_data is None else r.input_data for r in rows],
        input_uris=[r.input_uri for r in rows],
        input_sha256=[r.input_digest for r in rows],
        start_to_close_timeouts_ms=[r.start_to_close_ms for r in rows],
        heartbeat_timeouts_ms=[r.heartbeat_ms for r in rows],
    )


def results_to_proto(
    items: list[tuple[jobs.LeaseRef, jobs.Payload]],
    outcomes: list[jobs.Attestation | DomainError],
    attestations: bool,
) -> job_pb2.JobCompletionResults:
    out = job_pb2.JobCompletionResults()
    succeeded = 0
    for (lease, _), outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, DomainError):
            out.failed_jobs.append(f"jobs/{lease.job_id}")
            out.error_codes.append(outcome.code)
            out.error_reasons.append(outcome.reason)
            out.error_messages.append(outcome.message)
            continue
        succeeded += 1
        if attestations:
            out.attested_jobs.append(f"jobs/{outcome.job_id}")
            out.attestation_payloads.append(outcome.payload)
            out.attestation_signatures.append(outcome.signature)
            out.attestation_key_id = outcome.key_id
    out.succeeded = succeeded
    return out


T = TypeVar("T")


async def committing(call: Awaitable[T], if_abandoned: Callable[[T], None]) -> T:
    """Awaits a database call that may lease jobs. If the caller goes away meanwhile (its task
    is cancelled), the call still commits in its thread and `if_abandoned` gets its result
    (to hand the leased jobs back at once): ClaimJobs and WorkJobs both claim this way."""
    task = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def abandoned(done: asyncio.Future[T]) -> None:
            if not done.cancelled() and done.exception() is None:
                if_abandoned(done.result())

        task.add_done_callback(abandoned)
        raise


Replies = list[tuple[job_pb2.WorkJobsResponse, list[jobs.Leased]]]


class WorkStream:
    """One WorkJobs call: the worker, and how many jobs it asked for that were not sent yet."""

    def __init__(
        self,
        rt: Runtime,
        who: Principal,
        stream: CheckedStream,
        wait_for_work: Callable[[jobs.Worker], Awaitable[jobs.Leased | None]],
        give_back: Callable[[list[jobs.Leased]], None],
    ) -> None:
        """`wait_for_work` and `give_back` are the servicer's (api/job_workers.py): a wait for its
        hand-over dispatcher or the queue event, re-polling as ClaimJobs does, and how jobs
        leased but not delivered go back to the queue."""
        self.rt = rt
        self._wait = wait_for_work
        self._give_back = give_back
        self.who = who
        self.stream = stream
        self.wanted = 0
        self.worker = jobs.Worker(who.user_id, frozenset(), 0)
        self.attestations = False

    async def _read(self) -> job_pb2.WorkJobsRequest | None:
        """The next message, checked as the pipeline checks a unary request (string lengths, NUL,
        times): a stream's messages arrive after the pipeline's own check."""
        request = await self.stream.read()
        if request is not None:
            check_request(request, self.rt.settings.max_string_chars)
        return request

    async def serve(self) -> AsyncIterator[job_pb2.WorkJobsResponse]:
        request = await self._read()
        if request is None:
            return
        self._open(request)
        reading = asyncio.ensure_future(self._read())
        try:
            while True:
                if request is not None:
                    replies = await self._handle(request)
                    request = None
                elif self.wanted and not reading.done():
                    replies = await self._wait_for_work(reading)
                else:
                    request = await reading
                    if request is None:
                        return
                    reading = asyncio.ensure_future(self._read())
                    if request.HasField("open"):
                        raise InvalidArgument(
                            "open: only in a stream's first message",
                            violations=[FieldViolation("open", "first message only")],
                        )
                    continue
                for reply, leased in replies:
                    try:
                        yield reply
                    except BaseException:
                        # Closed before the reply was sent (the stream broke, the call was
                        # cancelled): its jobs go back as if never claimed.
                        self._give_back(leased)
                        raise
                    self.wanted -= len(leased)
        finally:
            reading.cancel()

    def _open(self, request: job_pb2.WorkJobsRequest) -> None:
        if not request.HasField("open"):
            raise InvalidArgument(
                "open: required in a stream's first message", violations=[FieldViolation("open", "required")]
            )
        spec = request.open
        self.worker = jobs.check_worker(
            self.who.user_id,
            list(spec.capabilities.labels),
            spec.capabilities.gpus,
            spec.max_reply_bytes,
            self.rt.settings.max_message_bytes,
        )
        self.attestations = spec.attestations

    async def _handle(self, request: job_pb2.WorkJobsRequest) -> Replies:
        asked = request.max_jobs
        if not 0 <= asked <= jobs.MAX_CLAIM - self.wanted:
            raise InvalidArgument(
                f"max_jobs: at most {jobs.MAX_CLAIM} asked for and not sent yet ({self.wanted} are)",
                violations=[FieldViolation("max_jobs", f"0..{jobs.MAX_CLAIM - self.wanted}")],
            )
        items = completions_from_proto(request.complete) if request.HasField("complete") else []
        beats = heartbeats_from_proto(request.heartbeat) if request.HasField("heartbeat") else []
        self.wanted += asked
        replies: Replies = []
        if beats:
            outcomes = await self.rt.run(jobs.heartbeat_many, self.rt, self.who, beats)
            answer = heartbeat_results_to_proto(beats, outcomes)
            replies.append((job_pb2.WorkJobsResponse(heartbeats=answer), []))
        return replies + await self._complete_and_claim(items, asked)

    async def _complete_and_claim(
        self, items: list[tuple[jobs.LeaseRef, jobs.Payload]], asked: int
    ) -> Replies:
        if not items:
            return await self._claim() if asked else []
        rt, worker = self.rt, self.worker
        call = rt.run(jobs.complete_and_claim, rt, self.who, items, worker, self.wanted)
        outcomes, leased = await committing(call, lambda result: self._give_back(result[1]))
        completed = results_to_proto(items, outcomes, self.attestations)
        if not leased:
            return [(job_pb2.WorkJobsResponse(completed=completed), [])]
        reply = job_pb2.WorkJobsResponse(leases=leases_to_proto(leased))
        if reply.ByteSize() + completed.ByteSize() > worker.reply_budget + jobs.CLAIM_REPLY_HEADROOM:
            # Together they could pass the worker's receive limit: the answer goes first.
            return [(job_pb2.WorkJobsResponse(completed=completed), []), (reply, leased)]
        reply.completed.CopyFrom(completed)
        return [(reply, leased)]

    async def _claim(self) -> Replies:
        leased = await committing(self.rt.run(jobs.claim, self.rt, self.worker, self.wanted), self._give_back)
        return [(job_pb2.WorkJobsResponse(leases=leases_to_proto(leased)), leased)] if leased else []

    async def _wait_for_work(self, reading: asyncio.Future[Any]) -> Replies:
        """Until a job is handed over or may be claimable (then it is claimed), or the worker
        sends its next message (then it is read)."""
        if self.rt.stopping.is_set():
            raise Unavailable("shutting down", reason="SHUTTING_DOWN")
        waiting = asyncio.ensure_future(self._wait(self.worker))
        try:
            await asyncio.wait({reading, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiting.done():
                waiting.cancel()  # a job handed over just then goes back to the queue
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
        if waiting.cancelled():
            return []
        handed = waiting.result()
        if handed is None:
            return await self._claim()
        return [(job_pb2.WorkJobsResponse(leases=leases_to_proto([handed])), [handed])]
