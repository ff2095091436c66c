"""A worker loop over JobService.WorkJobs (asyncio): jobs handed out one at a time, their
completions sent in batches together with the next ask, as the stream is meant to be used.

    async with coordd_client.aio.connect(target, token=token) as client:
        async with JobWorker(client.job, batch=100) as worker:
            async for job in worker:
                worker.complete(job, data=run(job.model_ref, job.input_data))
                if time_to_stop:
                    worker.stop()
        print(worker.succeeded, worker.failures)

Completions are buffered until every job received so far has been handed out; then they go in
one message that also asks for as many jobs as were completed (so at most `batch` are leased to
this worker at once). Leaving the `async with` block sends what is buffered, waits for its
answer and ends the stream. A job that is not completed keeps its lease until it expires (or
use the unary HeartbeatJob, FailJob and SnoozeJob with `job.lease()`). `succeeded` counts the
recorded completions, `failures` lists the others with BatchCompleteJobs' code, reason and
message.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple

import grpc

from coordd_client.errors import from_rpc_error
from coordd_client.v1 import job_pb2


class StreamedJob(NamedTuple):
    """One leased job, from a `JobLeases` message's columns."""

    name: str
    attempt: int
    lease_id: str
    kind: int
    model_ref: str
    # The inline input (empty when `input_uri` is set).
    input_data: bytes
    input_uri: str
    input_sha256: str
    expire_time_us: int
    start_to_close_timeout_ms: int
    heartbeat_timeout_ms: int

    def lease(self) -> job_pb2.Lease:
        """For the unary calls (HeartbeatJob, FailJob, SnoozeJob, CompleteJob)."""
        return job_pb2.Lease(job=self.name, attempt=self.attempt, lease_id=self.lease_id)


class CompletionFailure(NamedTuple):
    """A completion the server did not record, as BatchCompleteJobs would report it."""

    job: str
    code: str
    reason: str
    message: str


def jobs_of(leases: job_pb2.JobLeases) -> list[StreamedJob]:
    return [
        StreamedJob(name, attempt, leases.lease_id, kind, model, data, uri, digest, expire, close, beat)
        for name, attempt, expire, kind, model, data, uri, digest, close, beat in zip(
            leases.jobs,
            leases.attempts,
            leases.expire_times_us,
            leases.kinds,
            leases.model_refs,
            leases.input_data,
            leases.input_uris,
            leases.input_sha256,
            leases.start_to_close_timeouts_ms,
            leases.heartbeat_timeouts_ms,
            strict=True,
        )
    ]


class JobWorker:
    """`async with JobWorker(client.job, ...) as worker: async for job in worker: ...`; see the
    module doc. `job_service` is an AsyncClient's `job` (or a grpc.aio JobServiceStub)."""

    def __init__(
        self,
        job_service: Any,
        *,
        batch: int = 100,
        labels: Sequence[str] = (),
        gpus: int = 0,
        max_reply_bytes: int = 0,
        attestations: bool = False,
    ) -> None:
        if not 1 <= batch <= 100:
            raise ValueError("batch: 1..100")
        self._service = job_service
        self._batch = batch
        self._open = job_pb2.WorkJobsOpen(
            capabilities=job_pb2.Capabilities(labels=list(labels), gpus=gpus),
            max_reply_bytes=max_reply_bytes,
            attestations=attestations,
        )
        self._call: Any = None
        self._ready: deque[StreamedJob] = deque()
        self._done = job_pb2.JobCompletions()
        self._answers_due = 0  # messages with completions not answered yet
        self._asked = 0  # jobs asked for and not received yet
        self._stopping = False
        self._stopped: asyncio.Event | None = None  # set by stop(), made inside the loop
        self._reading: asyncio.Future[Any] | None = None  # a read that outlived a stop()
        # One reader and one writer at a time: heartbeat() may run in another task.
        self._read_lock = asyncio.Lock()
        self._write_lock = asyncio.Lock()
        self._beats: deque[asyncio.Future[set[str]]] = deque()  # heartbeats not answered yet
        self.heartbeat_failures: list[CompletionFailure] = []
        self.succeeded = 0
        self.failures: list[CompletionFailure] = []
        # With attestations=True: (job name, DSSE payload, signature, key id) of each success.
        self.attested: list[tuple[str, bytes, bytes, str]] = []

    async def __aenter__(self) -> JobWorker:
        self._stopped = asyncio.Event()
        self._call = self._service.WorkJobs()
        await self._call.write(job_pb2.WorkJobsRequest(open=self._open, max_jobs=self._batch))
        self._asked = self._batch
        return self

    async def __aexit__(self, *exc: object) -> None:
        call, self._call = self._call, None
        if call is None:
            return
        try:
            if exc[0] is None:
                self._stopping = True
                await self._send(call)
                while self._answers_due:
                    if not await self._read(call, stoppable=False):
                        break
                await call.done_writing()
        finally:
            if self._reading is not None:
                self._reading.cancel()
            call.cancel()

    def complete(self, job: StreamedJob, data: bytes | None = None, uri: str = "", sha256: str = "") -> None:
        """Buffers `job`'s result: inline `data` (the server computes its SHA-256, and checks
        `sha256` against it when given), or a `uri` with its `sha256` (required). Sent with the
        next message."""
        if (data is None) == (not uri):
            raise ValueError("complete: give data or uri")
        if uri and not sha256:
            raise ValueError("complete: a uri needs its sha256")
        done = self._done
        done.jobs.append(job.name)
        done.attempts.append(job.attempt)
        done.lease_ids.append(job.lease_id)
        done.output_sha256.append(sha256)
        done.output_data.append(data if data is not None else b"")
        done.output_uris.append(uri)

    def stop(self) -> None:
        """Asks for no more jobs; iteration ends once the jobs already received are handed out,
        also when it is waiting for jobs (stop() may come from another task). Jobs asked for
        before are not waited for: leaving the `async with` block ends the stream, and a claim
        it cuts short goes back to the queue (server side)."""
        self._stopping = True
        if self._stopped is not None:
            self._stopped.set()

    async def heartbeat(self, jobs: Sequence[StreamedJob], progress: Sequence[float] = ()) -> set[str]:
        """Extends the leases of `jobs` (at most 100) and reports their `progress` (0..1 each, or
        none) in one message, and waits for the answer. Returns the names of the jobs that were
        cancelled meanwhile: they are over, stop working on them. A heartbeat the server refused
        (a stale lease, say) is added to `heartbeat_failures`. May be called from another task
        while the loop runs a job."""
        call = self._call
        if call is None:
            raise RuntimeError("use JobWorker inside `async with`")
        answer: asyncio.Future[set[str]] = asyncio.get_running_loop().create_future()
        beats = job_pb2.JobHeartbeats(
            jobs=[j.name for j in jobs],
            attempts=[j.attempt for j in jobs],
            lease_ids=[j.lease_id for j in jobs],
            progress=list(progress),
        )
        self._beats.append(answer)
        await self._write(call, job_pb2.WorkJobsRequest(heartbeat=beats))
        while not answer.done():
            if not await self._read(call, stoppable=False, unless=answer):
                raise EOFError("the WorkJobs stream ended before the heartbeat was answered")
        return answer.result()

    @property
    def unprocessed(self) -> list[StreamedJob]:
        """Jobs that arrived after the last one handed out (while leaving): their leases run out
        unless failed or snoozed with `job.lease()`."""
        return list(self._ready)

    def __aiter__(self) -> JobWorker:
        return self

    async def __anext__(self) -> StreamedJob:
        call = self._call
        if call is None:
            raise RuntimeError("use JobWorker inside `async with`")
        while not self._ready:
            if self._stopping:
                raise StopAsyncIteration
            await self._send(call)
            if not await self._read(call, stoppable=True):
                raise StopAsyncIteration
        return self._ready.popleft()

    async def _send(self, call: Any) -> None:
        """Buffered completions, and an ask for as many jobs as this worker is short of `batch`."""
        more = 0 if self._stopping else self._batch - self._asked - len(self._ready)
        if not self._done.jobs and more <= 0:
            return
        request = job_pb2.WorkJobsRequest(max_jobs=max(0, more))
        if self._done.jobs:
            request.complete.CopyFrom(self._done)
            self._done = job_pb2.JobCompletions()
            self._answers_due += 1
        self._asked += request.max_jobs
        await self._write(call, request)

    async def _write(self, call: Any, request: job_pb2.WorkJobsRequest) -> None:
        async with self._write_lock:
            try:
                await call.write(request)
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from None

    async def _read(self, call: Any, stoppable: bool, unless: asyncio.Future[Any] | None = None) -> bool:
        """The next reply, taken in; False at the end of the stream, or (`stoppable`) when
        stop() came first (the read stays pending for the next call). `unless`: nothing is read
        if it is done by the time this task may read (another task read its answer)."""
        async with self._read_lock:
            if unless is not None and unless.done():
                return True
            if self._reading is None:
                self._reading = asyncio.ensure_future(call.read())
            reading = self._reading
            if stoppable and self._stopped is not None and not reading.done():
                stopped = asyncio.ensure_future(self._stopped.wait())
                try:
                    await asyncio.wait({reading, stopped}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopped.cancel()
                if not reading.done():
                    return False
            self._reading = None
            try:
                reply = await reading
            except grpc.aio.AioRpcError as exc:
                raise from_rpc_error(exc) from None
            if reply is grpc.aio.EOF:
                return False
            self._take(reply)
            return True

    def _take(self, reply: job_pb2.WorkJobsResponse) -> None:
        if reply.HasField("heartbeats") and self._beats:
            b = reply.heartbeats
            failed = zip(b.failed_jobs, b.error_codes, b.error_reasons, b.error_messages, strict=True)
            self.heartbeat_failures.extend(CompletionFailure(*f) for f in failed)
            beat = self._beats.popleft()
            if not beat.done():
                beat.set_result(set(b.cancelled_jobs))
        if reply.HasField("completed"):
            self._answers_due -= 1
            a = reply.completed
            self.succeeded += a.succeeded
            failed = zip(a.failed_jobs, a.error_codes, a.error_reasons, a.error_messages, strict=True)
            self.failures.extend(CompletionFailure(*f) for f in failed)
            signed = zip(a.attested_jobs, a.attestation_payloads, a.attestation_signatures, strict=True)
            self.attested.extend((name, payload, sig, a.attestation_key_id) for name, payload, sig in signed)
        if reply.HasField("leases"):
            received = jobs_of(reply.leases)
            self._asked -= len(received)
            self._ready.extend(received)
