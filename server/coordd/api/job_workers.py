"""JobService's worker RPCs: claims (long-polled, handed over in memory by a submission that
finds a waiting worker), heartbeats, snoozes, completions, failures and the WorkJobs stream
(`coordd.api.job_stream`). A mixin of `coordd.api.jobs.JobServicer`, which holds the state."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from coordd.api.convert import ts
from coordd.api.decoding import CheckedStream
from coordd.api.job_messages import (
    attestation_to_proto,
    claim_reply,
    invalid,
    job_to_proto,
    lease_from_proto,
    payload_from_proto,
    time_of,
)
from coordd.api.job_stream import WorkStream, committing
from coordd.core.errors import (
    DomainError,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    Violations,
)
from coordd.core.principal import require_user
from coordd.domain import jobs
from coordd.runtime import Runtime
from coordd_client.v1 import job_pb2

MAX_WAIT_S = 60.0
# Waiting workers also re-poll this often: jobs leaving retry backoff publish no event.
REPOLL_S = 1.0


# -- in-memory hand-over to waiting workers ---------------------------------------------------


@dataclass(eq=False)
class Waiter:
    worker: jobs.Worker
    future: asyncio.Future[jobs.Leased] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Dispatcher:
    """Workers long-polling on this replica. A submission that matches one is leased to it
    in the submitting transaction and handed over through its future: no re-poll, no wake-up
    of the other waiters. Waiters on other replicas learn of new work through the event bus."""

    def __init__(self) -> None:
        self._waiting: list[Waiter] = []

    def add(self, waiter: Waiter) -> None:
        self._waiting.append(waiter)

    def remove(self, waiter: Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiting.remove(waiter)

    def take(self, labels: list[str], gpus: int, size: int) -> Waiter | None:
        """Reserves the longest-waiting live worker able to run such a job (and to receive it)."""
        for waiter in self._waiting:
            if not waiter.future.done() and waiter.worker.can_run(labels, gpus, size):
                self._waiting.remove(waiter)
                return waiter
        return None

    def __len__(self) -> int:
        return len(self._waiting)


class JobWorkerMethods:
    """The worker RPCs; `rt`, `dispatcher` and `_background` are JobServicer's."""

    rt: Runtime
    dispatcher: Dispatcher
    _background: set[asyncio.Task[Any]]

    async def ClaimJobs(self, request: job_pb2.ClaimJobsRequest, context: Any) -> job_pb2.ClaimJobsResponse:
        who = require_user()
        worker = jobs.check_worker(
            who.user_id,
            list(request.capabilities.labels),
            request.capabilities.gpus,
            request.max_reply_bytes,
            self.rt.settings.max_message_bytes,
        )
        limit = request.max_jobs or 1
        wait = request.wait.ToTimedelta().total_seconds() if request.HasField("wait") else 0.0
        v: list[FieldViolation] = []
        if not 1 <= limit <= jobs.MAX_CLAIM:
            v.append(FieldViolation("max_jobs", f"1..{jobs.MAX_CLAIM}"))
        if not 0 <= wait <= MAX_WAIT_S:
            v.append(FieldViolation("wait", f"0..{MAX_WAIT_S:g}s"))
        if v:
            raise invalid(v)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            leased = await self._claim(worker, limit)
            remaining = deadline - loop.time()
            if leased or remaining <= 0:
                return self._claim_reply(worker, leased)
            if self.rt.stopping.is_set():
                raise Unavailable("shutting down", reason="SHUTTING_DOWN")
            handed = await self._wait_for_work(worker, min(remaining, REPOLL_S))
            if handed is not None:
                return self._claim_reply(worker, [handed])

    async def _claim(self, worker: jobs.Worker, limit: int) -> list[jobs.Leased]:
        """One claim. If the call ends meanwhile (cancelled, deadline, caller gone), the
        transaction still commits in its thread: whatever it leased goes back at once."""
        return await committing(self.rt.run(jobs.claim, self.rt, worker, limit), self._return_undelivered)

    def _return_undelivered(self, leased: list[jobs.Leased]) -> None:
        if leased:
            self._spawn(self.rt.run(jobs.return_leases, self.rt, leased))

    def _claim_reply(self, worker: jobs.Worker, leased: list[jobs.Leased]) -> job_pb2.ClaimJobsResponse:
        """The reply; the claim statement already kept it within the worker's reply limit (an
        upper bound per job, see jobs.claim_bytes). Should it still not fit, its jobs go back
        instead of being lost in a failed send."""
        reply = claim_reply(leased)
        limit = worker.reply_budget + jobs.CLAIM_REPLY_HEADROOM
        inline = sum(len(x.job.input_data) for x in leased if x.job.input_data is not None)
        if inline * 2 > limit and reply.ByteSize() > limit:
            self._spawn(self.rt.run(jobs.return_leases, self.rt, leased))
            raise ResourceExhausted(
                f"the claimed jobs do not fit in one reply ({reply.ByteSize()} > {limit} bytes);"
                " they were put back: claim fewer",
                reason="REPLY_TOO_LARGE",
            )
        return reply

    async def _wait_for_work(self, worker: jobs.Worker, timeout: float) -> jobs.Leased | None:
        """Waits for a hand-over, a queue event (another replica, a retry) or the timeout."""
        waiter = Waiter(worker)
        self.dispatcher.add(waiter)
        notified = asyncio.ensure_future(self.rt.notifier.wait([jobs.QUEUE_KEY], timeout))
        try:
            await asyncio.wait({waiter.future, notified}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                # The call went away just as a job was handed to it: put the job back.
                self._spawn(self.rt.run(jobs.return_leases, self.rt, [waiter.future.result()]))
            raise
        finally:
            notified.cancel()
            self.dispatcher.remove(waiter)
            # A submission that reserved this waiter and finishes later sees it done and
            # returns the job to the queue instead of handing it to nobody.
            waiter.future.cancel()
        return waiter.future.result() if not waiter.future.cancelled() else None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def HeartbeatJob(
        self, request: job_pb2.HeartbeatJobRequest, context: Any
    ) -> job_pb2.HeartbeatJobResponse:
        who = require_user()
        lease = lease_from_proto(request.lease, request.HasField("lease"))
        beat = await self.rt.run(jobs.heartbeat, self.rt, who, lease, request.progress)
        return job_pb2.HeartbeatJobResponse(expire_time=ts(beat.expire_time), cancelled=beat.cancelled)

    async def SnoozeJob(self, request: job_pb2.SnoozeJobRequest, context: Any) -> job_pb2.SnoozeJobResponse:
        who = require_user()
        lease = lease_from_proto(request.lease, request.HasField("lease"))
        until = time_of(request.snooze_time, request.HasField("snooze_time"), "snooze_time")
        job = await self.rt.run(jobs.snooze, self.rt, who, lease, until, request.reason)
        return job_pb2.SnoozeJobResponse(job=job_to_proto(job))

    def _completion_args(
        self, request: job_pb2.CompleteJobRequest, prefix: str = ""
    ) -> tuple[jobs.LeaseRef, jobs.Payload]:
        lease = lease_from_proto(request.lease, request.HasField("lease"))
        v = Violations()
        payload = payload_from_proto(request.output, request.HasField("output"))
        output = jobs.check_payload(v, payload, prefix + "output")
        v.raise_if_any()
        assert output is not None
        return lease, output

    async def CompleteJob(
        self, request: job_pb2.CompleteJobRequest, context: Any
    ) -> job_pb2.CompleteJobResponse:
        who = require_user()
        lease, output = self._completion_args(request)
        done = await self.rt.run(jobs.complete, self.rt, who, lease, output)
        return job_pb2.CompleteJobResponse(
            job=job_to_proto(done.job), attestation=attestation_to_proto(done.attestation)
        )

    async def BatchCompleteJobs(
        self, request: job_pb2.BatchCompleteJobsRequest, context: Any
    ) -> job_pb2.BatchCompleteJobsResponse:
        who = require_user()
        if not 1 <= len(request.requests) <= jobs.MAX_CLAIM:
            raise InvalidArgument(
                f"requests: 1..{jobs.MAX_CLAIM} completions",
                violations=[FieldViolation("requests", f"1..{jobs.MAX_CLAIM} items")],
            )
        items = [self._completion_args(r, f"requests[{i}].") for i, r in enumerate(request.requests)]
        outcomes = await self.rt.run(jobs.complete_many, self.rt, who, items)
        results = []
        for (lease, _), outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, DomainError):
                results.append(
                    job_pb2.BatchCompleteJobsResult(
                        job=f"jobs/{lease.job_id}",
                        error_code=outcome.code,
                        error_reason=outcome.reason,
                        error_message=outcome.message,
                    )
                )
            else:
                results.append(
                    job_pb2.BatchCompleteJobsResult(
                        job=f"jobs/{lease.job_id}",
                        # Without the JSON form: it doubles a batch reply for a copy of the same bytes.
                        attestation=attestation_to_proto(outcome, with_json=False),
                    )
                )
        return job_pb2.BatchCompleteJobsResponse(results=results)

    def WorkJobs(
        self, request_iterator: CheckedStream, context: Any
    ) -> AsyncIterator[job_pb2.WorkJobsResponse]:
        # The generator itself, not one wrapping it: when the pipeline closes it, a reply it
        # could not send hands its jobs back at once (api/job_stream.py).
        wait = functools.partial(self._wait_for_work, timeout=REPOLL_S)
        return WorkStream(self.rt, require_user(), request_iterator, wait, self._return_undelivered).serve()

    async def FailJob(self, request: job_pb2.FailJobRequest, context: Any) -> job_pb2.FailJobResponse:
        who = require_user()
        lease = lease_from_proto(request.lease, request.HasField("lease"))
        job = await self.rt.run(jobs.fail, self.rt, who, lease, request.error, request.retryable)
        return job_pb2.FailJobResponse(job=job_to_proto(job))
