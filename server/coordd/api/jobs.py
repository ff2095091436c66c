"""JobService: submission, views, watch, stats, caps and attestations; the worker RPCs are
`coordd.api.job_workers` (a mixin), schedules `coordd.api.job_schedules`. Messages are
converted in `coordd.api.job_messages`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import structlog

from coordd.api.convert import duration, parse_name
from coordd.api.gather import Gatherer
from coordd.api.job_batches import BatchSpecs, JobTemplates, batch_submit_reply
from coordd.api.job_messages import (
    KINDS,
    STATE_PROTO,
    STATES,
    VIEWS,
    add_payloads,
    attestation_to_proto,
    full_view,
    invalid,
    job_id_of,
    job_to_proto,
    limit_from_proto,
    limit_to_proto,
    view_to_proto,
)
from coordd.api.job_schedules import JobScheduleMethods
from coordd.api.job_workers import Dispatcher, JobWorkerMethods, Waiter
from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.core.paging import PageRequest
from coordd.core.principal import Principal, require_user
from coordd.domain import idempotency as idem
from coordd.domain import jobs
from coordd.domain.jobs import gathered
from coordd.runtime import Runtime
from coordd_client.v1 import job_pb2, job_pb2_grpc

log = structlog.get_logger("coordd.jobs")

WATCH_REFRESH_S = 5.0


class JobServicer(JobScheduleMethods, JobWorkerMethods, job_pb2_grpc.JobServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.dispatcher = Dispatcher()
        # Plain SubmitJob calls, one group: a batch is one transaction (domain/jobs/gathered.py).
        self.gatherer: Gatherer[str, gathered.Ask, jobs.Submitted] = Gatherer(
            rt, lambda _group, asks: gathered.submit_gathered(rt, asks), gathered.MAX_BATCH, "submission"
        )
        self._background: set[asyncio.Task[Any]] = set()
        # SubmitJob calls mostly repeat their settings and their jobs' replies mostly share
        # everything but id and input: validated and built once, kept across calls.
        self._specs: BatchSpecs | None = None
        self._replies = JobTemplates()

    # -- submitters --------------------------------------------------------------------------

    async def SubmitJob(self, request: job_pb2.SubmitJobRequest, context: Any) -> job_pb2.SubmitJobResponse:
        who = require_user()
        spec = self._spec(request)
        # A job that may be pending (scheduled, with parents) or a duplicate is not handed over.
        plain = spec.schedule_time is None and not spec.parents and spec.unique is None
        waiter = self.dispatcher.take(spec.labels, spec.gpus, spec.claim_bytes) if plain else None
        if waiter is None and idem.PENDING.get() is None:
            # No hand-over and no idempotency key: gathered with the calls arriving together
            # (a caller that goes away does not undo its job: api/gather.py), no task of its own.
            done = await self.gatherer.submit("", gathered.Ask(self.rt, who, spec))
        else:
            # Shielded: if the caller goes away mid-transaction, the hand-over still completes
            # (or the job is put back) instead of leaving a job leased to a waiter nobody told.
            task = asyncio.ensure_future(self._submit(who, spec, waiter))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            done = await asyncio.shield(task)
        reply = job_pb2.SubmitJobResponse(already_existed=done.existed)
        self._replies.fill(reply.job, done.job)
        return reply

    async def BatchSubmitJobs(
        self, request: job_pb2.BatchSubmitJobsRequest, context: Any
    ) -> job_pb2.BatchSubmitJobsResponse:
        who = require_user()
        if not 1 <= len(request.requests) <= jobs.MAX_SUBMIT_BATCH:
            raise InvalidArgument(
                f"requests: 1..{jobs.MAX_SUBMIT_BATCH} submissions",
                violations=[FieldViolation("requests", f"1..{jobs.MAX_SUBMIT_BATCH} items")],
            )
        specs: list[jobs.JobSpec] = []
        violations: list[FieldViolation] = []
        batch = BatchSpecs(jobs.policy_of(self.rt), jobs.largest_reply_budget(self.rt))
        for i, item in enumerate(request.requests):
            try:
                specs.append(batch.spec(item))
            except InvalidArgument as exc:
                violations.extend(
                    FieldViolation(f"requests[{i}].{v.field}", v.description) for v in exc.violations
                )
        if violations:
            raise invalid(violations)
        # No hand-over to waiting workers: the queue event wakes them and they claim in bulk.
        queued = await self.rt.run(jobs.submit_batch, self.rt, who, specs)
        return batch_submit_reply([s.job for s in queued])

    def _spec(self, r: job_pb2.SubmitJobRequest) -> jobs.JobSpec:
        policy, max_claim = jobs.policy_of(self.rt), jobs.largest_reply_budget(self.rt)
        specs = self._specs
        if specs is None or specs.policy is not policy or specs.max_claim != max_claim:
            specs = self._specs = BatchSpecs(policy, max_claim)
        return specs.spec(r)

    async def _submit(self, who: Principal, spec: jobs.JobSpec, waiter: Waiter | None) -> jobs.Submitted:
        """One call in its own transaction: with an idempotency key, or handed to `waiter`."""
        try:
            done, leased = await self.rt.run(
                jobs.submit_one, self.rt, who, spec, waiter.worker if waiter is not None else None
            )
        except BaseException:
            if waiter is not None and not waiter.future.done():
                self.dispatcher.add(waiter)
            raise
        if waiter is not None:
            if leased is not None and not waiter.future.done():
                waiter.future.set_result(leased)
            elif leased is not None:
                self._spawn(self.rt.run(jobs.return_leases, self.rt, [leased]))
            elif not waiter.future.done():
                self.dispatcher.add(waiter)
        return done

    async def GetJob(self, request: job_pb2.GetJobRequest, context: Any) -> job_pb2.GetJobResponse:
        who = require_user()
        full = full_view(request.view, default_full=True)
        view = await self.rt.run(jobs.get_job, who, job_id_of(request.name), full)
        return job_pb2.GetJobResponse(job=view_to_proto(view))

    async def ListJobs(self, request: job_pb2.ListJobsRequest, context: Any) -> job_pb2.ListJobsResponse:
        who = require_user()
        v: list[FieldViolation] = []
        if request.state and request.state not in STATES:
            v.append(FieldViolation("state", "unknown state"))
        if request.kind and request.kind not in KINDS:
            v.append(FieldViolation("kind", "unknown kind"))
        if request.view not in VIEWS:
            v.append(FieldViolation("view", "unknown view"))
        if v:
            raise invalid(v)
        submitter = parse_name(request.submitter, "users", "submitter") if request.submitter else ""
        page_request = PageRequest.of(request.page_size, request.page_token)
        page = await self.rt.run(
            jobs.list_jobs,
            self.rt,
            who,
            page_request,
            STATES.get(request.state, ""),
            KINDS.get(request.kind, ""),
            submitter,
            full_view(request.view, default_full=False),
        )
        return job_pb2.ListJobsResponse(
            jobs=[view_to_proto(j) for j in page.items], next_page_token=page.next_token
        )

    async def CancelJob(self, request: job_pb2.CancelJobRequest, context: Any) -> job_pb2.CancelJobResponse:
        who = require_user()
        job = await self.rt.run(jobs.cancel, self.rt, who, job_id_of(request.name), request.reason)
        return job_pb2.CancelJobResponse(job=job_to_proto(job))

    async def WatchJob(
        self, request: job_pb2.WatchJobRequest, context: Any
    ) -> AsyncIterator[job_pb2.WatchJobResponse]:
        """Each change is read in the basic view (no payload read, a small message to compare
        with the last one sent). In the full view the payload bytes are read once, and again
        only when they change (the output appears), then added to each message sent."""
        who = require_user()
        job_id = job_id_of(request.name)
        full = full_view(request.view, default_full=False)
        last = b""
        payloads: tuple[tuple[str, str, bool], tuple[bytes | None, bytes | None]] | None = None
        while True:
            view, position = await self.rt.run(jobs.watch_view, who, job_id)
            update = job_pb2.WatchJobResponse(job=view_to_proto(view), queue_position=position)
            data = update.SerializeToString(deterministic=True)
            if data != last:
                last = data
                if full:
                    job = view.job
                    key = (job.input_digest, job.output_digest, job.payload_purged)
                    if payloads is None or payloads[0] != key:
                        payloads = (key, await self.rt.run(jobs.payloads, who, job_id))
                    add_payloads(update.job, *payloads[1])
                yield update
            if view.job.state in jobs.TERMINAL:
                return
            keys = [f"jobs/{job_id}"]
            if view.job.state == jobs.QUEUED:
                keys.append(jobs.QUEUE_KEY)  # the position moves when other jobs start
            await self.rt.notifier.wait(keys, WATCH_REFRESH_S)

    async def GetQueueStats(
        self, request: job_pb2.GetQueueStatsRequest, context: Any
    ) -> job_pb2.GetQueueStatsResponse:
        require_user()
        window = request.window.ToTimedelta().total_seconds() if request.HasField("window") else 60.0
        if not 0 < window <= 86400:
            raise InvalidArgument(
                "window must be positive and at most 1 day",
                violations=[FieldViolation("window", "0s < w <= 1d")],
            )
        stats = await self.rt.run(jobs.queue_stats, self.rt, window)
        return job_pb2.GetQueueStatsResponse(
            depths=[
                job_pb2.QueueDepth(state=STATE_PROTO[s], priority=p, count=n) for s, p, n in stats.depths
            ],
            oldest_queued_age=duration(stats.oldest_queued_age_s),
            throughput_per_second=stats.throughput,
            succeeded=stats.succeeded,
            failed=stats.failed,
            success_rate=stats.success_rate,
            average_run_time=duration(stats.average_run_time_s),
            window=duration(window),
        )

    # -- operators and verifiers -----------------------------------------------------------

    async def RequeueJob(
        self, request: job_pb2.RequeueJobRequest, context: Any
    ) -> job_pb2.RequeueJobResponse:
        who = require_user()
        job = await self.rt.run(jobs.requeue, self.rt, who, job_id_of(request.name))
        return job_pb2.RequeueJobResponse(job=job_to_proto(job))

    async def SetJobLimit(
        self, request: job_pb2.SetJobLimitRequest, context: Any
    ) -> job_pb2.SetJobLimitResponse:
        require_user()
        scope, key, max_running = limit_from_proto(request.limit)
        limits = await self.rt.run(jobs.set_limit, self.rt, scope, key, max_running)
        return job_pb2.SetJobLimitResponse(limits=[limit_to_proto(*x) for x in limits])

    async def ListJobLimits(
        self, request: job_pb2.ListJobLimitsRequest, context: Any
    ) -> job_pb2.ListJobLimitsResponse:
        require_user()
        limits = await self.rt.run(jobs.list_limits, self.rt)
        return job_pb2.ListJobLimitsResponse(limits=[limit_to_proto(*x) for x in limits])

    async def GetAttestation(
        self, request: job_pb2.GetAttestationRequest, context: Any
    ) -> job_pb2.GetAttestationResponse:
        who = require_user()
        att = await self.rt.run(jobs.get_attestation, who, job_id_of(request.name))
        return job_pb2.GetAttestationResponse(attestation=attestation_to_proto(att))

    async def GetSigningKey(
        self, request: job_pb2.GetSigningKeyRequest, context: Any
    ) -> job_pb2.GetSigningKeyResponse:
        signer = self.rt.signer
        return job_pb2.GetSigningKeyResponse(
            algorithm="ed25519",
            key_id=signer.key_id,
            public_key=signer.public_key,
            public_key_pem=signer.public_key_pem(),
        )
