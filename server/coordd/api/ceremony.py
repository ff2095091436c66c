"""CeremonyService: validate -> domain -> proto, plus the byte streams and WatchQueue.

Uploads are written chunk by chunk to a temporary blob (fsynced before the offset is
recorded), never held whole in memory. Verification runs in its own small thread pool, as
a task that outlives the upload call, so a client that hangs up does not stop it.

WatchQueue streams share one read of a circuit's queue per change (the domain's
QueueSnapshots): after an event, the first stream to wake re-reads the queue and every
other stream on that circuit reuses it, so a change costs one query, not one per watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from coordd.api.ceremony_convert import (
    ceremony_to_proto,
    circuit_to_proto,
    contribution_to_proto,
    enum_name,
    parse_child,
    participant_to_proto,
    spec_from_proto,
    watch_message,
)
from coordd.api.convert import parse_name
from coordd.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Unavailable
from coordd.core.paging import PageRequest
from coordd.core.principal import require_user
from coordd.domain import ceremony
from coordd.runtime import Runtime
from coordd_client.v1 import ceremony_pb2 as pb
from coordd_client.v1 import ceremony_pb2_grpc

# A stream with nothing new sends its last message again (keepalive=true) this often.
KEEPALIVE_S = 15.0
DOWNLOAD_CHUNK = 1 << 20


def _keepalive_interval() -> float:
    """90-100 % of KEEPALIVE_S, drawn per message: streams updated by the same change would
    otherwise all send their keepalives in the same instant, 15 s later."""
    return KEEPALIVE_S * (0.9 + 0.1 * random.random())


VERIFY_THREADS = 2


class CeremonyServicer(ceremony_pb2_grpc.CeremonyServiceServicer):
    SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CeremonyService"].full_name
    register = staticmethod(ceremony_pb2_grpc.add_CeremonyServiceServicer_to_server)

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.snapshots = ceremony.QueueSnapshots(rt)
        self._verify_pool = ThreadPoolExecutor(max_workers=VERIFY_THREADS, thread_name_prefix="coordd-verify")
        self._verifying: dict[str, asyncio.Task[ceremony.Contribution]] = {}
        self._upload_locks: dict[tuple[str, str, str], asyncio.Lock] = {}

    # -- ceremonies ------------------------------------------------------------------------

    async def CreateCeremony(
        self, request: pb.CreateCeremonyRequest, context: Any
    ) -> pb.CreateCeremonyResponse:
        who = require_user()
        spec = spec_from_proto(request, set(ceremony.UPDATABLE))
        c = await self.rt.run(ceremony.create_ceremony, self.rt, who, spec)
        return pb.CreateCeremonyResponse(ceremony=ceremony_to_proto(c))

    async def GetCeremony(self, request: pb.GetCeremonyRequest, context: Any) -> pb.GetCeremonyResponse:
        cid = parse_name(request.name, "ceremonies")
        c = await self.rt.run(ceremony.get_ceremony, cid)
        return pb.GetCeremonyResponse(ceremony=ceremony_to_proto(c))

    async def ListCeremonies(
        self, request: pb.ListCeremoniesRequest, context: Any
    ) -> pb.ListCeremoniesResponse:
        page_request = PageRequest.of(request.page_size, request.page_token)
        state = enum_name(pb.CeremonyState, "CEREMONY_STATE_", request.state, "state", allow_unspecified=True)
        page = await self.rt.run(ceremony.list_ceremonies, page_request, state)
        return pb.ListCeremoniesResponse(
            ceremonies=[ceremony_to_proto(c) for c in page.items], next_page_token=page.next_token
        )

    async def UpdateCeremony(
        self, request: pb.UpdateCeremonyRequest, context: Any
    ) -> pb.UpdateCeremonyResponse:
        who = require_user()
        cid = parse_name(request.ceremony.name, "ceremonies", "ceremony.name")
        mask = list(request.update_mask.paths)
        spec = spec_from_proto(request.ceremony, set(mask))
        c = await self.rt.run(ceremony.update_ceremony, self.rt, who, cid, spec, mask)
        return pb.UpdateCeremonyResponse(ceremony=ceremony_to_proto(c))

    async def PauseCeremony(self, request: pb.PauseCeremonyRequest, context: Any) -> pb.PauseCeremonyResponse:
        c = await self.rt.run(
            ceremony.pause_ceremony, self.rt, require_user(), parse_name(request.name, "ceremonies")
        )
        return pb.PauseCeremonyResponse(ceremony=ceremony_to_proto(c))

    async def ResumeCeremony(
        self, request: pb.ResumeCeremonyRequest, context: Any
    ) -> pb.ResumeCeremonyResponse:
        c = await self.rt.run(
            ceremony.resume_ceremony, self.rt, require_user(), parse_name(request.name, "ceremonies")
        )
        return pb.ResumeCeremonyResponse(ceremony=ceremony_to_proto(c))

    async def CloseCeremony(self, request: pb.CloseCeremonyRequest, context: Any) -> pb.CloseCeremonyResponse:
        c = await self.rt.run(
            ceremony.close_ceremony, self.rt, require_user(), parse_name(request.name, "ceremonies")
        )
        return pb.CloseCeremonyResponse(ceremony=ceremony_to_proto(c))

    # -- circuits --------------------------------------------------------------------------

    async def AddCircuit(self, request: pb.AddCircuitRequest, context: Any) -> pb.AddCircuitResponse:
        who = require_user()
        cid = parse_name(request.parent, "ceremonies", "parent")
        k = await self.rt.run(
            ceremony.add_circuit, self.rt, who, cid, request.display_name, request.max_contribution_size_bytes
        )
        return pb.AddCircuitResponse(circuit=circuit_to_proto(k))

    async def GetCircuit(self, request: pb.GetCircuitRequest, context: Any) -> pb.GetCircuitResponse:
        cid, kid = parse_child(request.name, "circuits", "name")
        k = await self.rt.run(ceremony.get_circuit, cid, kid)
        waiting = await self.rt.run(ceremony.waiting_counts, [k.id])
        return pb.GetCircuitResponse(circuit=circuit_to_proto(k, waiting.get(k.id, 0)))

    async def ListCircuits(self, request: pb.ListCircuitsRequest, context: Any) -> pb.ListCircuitsResponse:
        cid = parse_name(request.parent, "ceremonies", "parent")
        circuits = await self.rt.run(ceremony.list_circuits, cid)
        waiting = await self.rt.run(ceremony.waiting_counts, [k.id for k in circuits])
        return pb.ListCircuitsResponse(circuits=[circuit_to_proto(k, waiting.get(k.id, 0)) for k in circuits])

    # -- participants ----------------------------------------------------------------------

    async def JoinCeremony(self, request: pb.JoinCeremonyRequest, context: Any) -> pb.JoinCeremonyResponse:
        who = require_user()
        p = await self.rt.run(
            ceremony.join, self.rt, who, parse_name(request.ceremony, "ceremonies", "ceremony")
        )
        return pb.JoinCeremonyResponse(participant=participant_to_proto(p))

    async def GetMyParticipation(
        self, request: pb.GetMyParticipationRequest, context: Any
    ) -> pb.GetMyParticipationResponse:
        who = require_user()
        cid = parse_name(request.ceremony, "ceremonies", "ceremony")
        p = await self.rt.run(ceremony.get_participation, who, cid)
        return pb.GetMyParticipationResponse(participant=participant_to_proto(p))

    async def LeaveCeremony(self, request: pb.LeaveCeremonyRequest, context: Any) -> pb.LeaveCeremonyResponse:
        who = require_user()
        cid = parse_name(request.ceremony, "ceremonies", "ceremony")
        p = await self.rt.run(ceremony.leave, self.rt, who, cid)
        return pb.LeaveCeremonyResponse(participant=participant_to_proto(p))

    async def ListParticipants(
        self, request: pb.ListParticipantsRequest, context: Any
    ) -> pb.ListParticipantsResponse:
        who = require_user()
        cid = parse_name(request.parent, "ceremonies", "parent")
        page_request = PageRequest.of(request.page_size, request.page_token)
        status = enum_name(
            pb.ParticipantStatus, "PARTICIPANT_STATUS_", request.status, "status", allow_unspecified=True
        )
        page = await self.rt.run(ceremony.list_participants, who, cid, page_request, status)
        return pb.ListParticipantsResponse(
            participants=[participant_to_proto(p) for p in page.items], next_page_token=page.next_token
        )

    async def ReportProgress(
        self, request: pb.ReportProgressRequest, context: Any
    ) -> pb.ReportProgressResponse:
        who = require_user()
        cid = parse_name(request.ceremony, "ceremonies", "ceremony")
        step = enum_name(pb.ContributionStep, "CONTRIBUTION_STEP_", request.step, "step")
        p = await self.rt.run(ceremony.report_progress, self.rt, who, cid, step)
        return pb.ReportProgressResponse(participant=participant_to_proto(p))

    # -- WatchQueue ------------------------------------------------------------------------

    async def WatchQueue(
        self, request: pb.WatchQueueRequest, context: Any
    ) -> AsyncIterator[pb.WatchQueueResponse]:
        who = require_user()
        cid = parse_name(request.ceremony, "ceremonies", "ceremony")
        p = await self.rt.run(ceremony.get_participation, who, cid)
        hint: str | None = p.circuit_id
        last_key: tuple[Any, ...] | None = None
        msg = pb.WatchQueueResponse()
        last_sent = time.monotonic()
        quiet = _keepalive_interval()
        while True:
            w = await ceremony.watch_state(self.rt, self.snapshots, cid, p.id, hint)
            hint = w.view.circuit_id
            now = time.monotonic()
            # A cheap comparison first: the message is only built when something changed.
            if w.key != last_key:
                msg = watch_message(cid, w)
                yield msg
                last_key, last_sent, quiet = w.key, now, _keepalive_interval()
            elif now - last_sent >= quiet:
                again = pb.WatchQueueResponse()
                again.CopyFrom(msg)
                again.keepalive = True
                yield again
                last_sent, quiet = now, _keepalive_interval()
            if w.finished:
                return
            await self.rt.notifier.wait(w.keys, max(0.01, quiet - (time.monotonic() - last_sent)))

    # -- downloads -------------------------------------------------------------------------

    async def DownloadContribution(
        self, request: pb.DownloadContributionRequest, context: Any
    ) -> AsyncIterator[pb.DownloadContributionResponse]:
        who = require_user()
        cid, kid = parse_child(request.circuit, "circuits", "circuit")
        index = request.index if request.HasField("index") else None
        plan = await self.rt.run(ceremony.open_download, self.rt, who, cid, kid, index)
        if not 0 <= request.offset <= plan.size:
            raise InvalidArgument(
                f"offset must be within 0..{plan.size}",
                violations=[FieldViolation("offset", f"0..{plan.size}")],
            )
        blobs = ceremony.blobs_of(self.rt)
        loop = asyncio.get_running_loop()
        offset = request.offset
        first = True
        while True:
            data = await loop.run_in_executor(None, blobs.read_at, plan.blob_key, offset, DOWNLOAD_CHUNK)
            msg = pb.DownloadContributionResponse(offset=offset, data=data)
            if first:
                msg.size_bytes, msg.blake2b_512, msg.index = plan.size, bytes.fromhex(plan.hash), plan.index
                first = False
            yield msg
            offset += len(data)
            if not data or offset >= plan.size:
                return

    # -- uploads ---------------------------------------------------------------------------

    async def _header(self, requests: AsyncIterator[Any]) -> pb.UploadHeader:
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            raise InvalidArgument(
                "the stream is empty: send a header first", violations=[FieldViolation("header", "required")]
            ) from None
        if first.WhichOneof("message") != "header":
            raise InvalidArgument(
                "the first message must be the header",
                violations=[FieldViolation("header", "required first")],
            )
        return first

    async def _receive(self, plan: ceremony.UploadPlan, requests: AsyncIterator[Any]) -> None:
        """Writes chunks at their offsets; each is fsynced, then its end offset is committed."""
        blobs = ceremony.blobs_of(self.rt)
        loop = asyncio.get_running_loop()
        offset = plan.committed
        async for message in requests:
            if message.WhichOneof("message") != "chunk":
                raise InvalidArgument(
                    "after the header only chunks may follow",
                    violations=[FieldViolation("chunk", "expected")],
                )
            chunk = message.chunk
            if chunk.offset != offset:
                raise FailedPrecondition(
                    f"expected a chunk at offset {offset}, got {chunk.offset}",
                    reason="OFFSET_MISMATCH",
                    metadata={"committed_offset": str(offset)},
                )
            size = len(chunk.data)
            if not 0 < size <= ceremony.MAX_CHUNK_BYTES:
                raise InvalidArgument(
                    f"chunks carry 1..{ceremony.MAX_CHUNK_BYTES} bytes",
                    violations=[FieldViolation("chunk.data", f"1..{ceremony.MAX_CHUNK_BYTES} bytes")],
                )
            if offset + size > plan.size:
                raise InvalidArgument(
                    f"the chunk goes past the declared size of {plan.size} bytes",
                    violations=[FieldViolation("chunk.data", "past the declared size")],
                )
            await loop.run_in_executor(None, blobs.write_at, plan.blob_key, offset, chunk.data)
            offset += size
            await self.rt.run(ceremony.commit_chunk, self.rt, plan.upload_id, offset)
        if offset < plan.size:
            raise FailedPrecondition(
                f"upload incomplete: {offset} of {plan.size} bytes; resume from GetUploadStatus's offset",
                reason="UPLOAD_INCOMPLETE",
                metadata={"committed_offset": str(offset)},
            )

    @contextlib.asynccontextmanager
    async def _one_stream(self, key: tuple[str, str, str]) -> AsyncIterator[None]:
        """One upload stream per (circuit, user, kind) on this replica: two would write the
        same temporary file."""
        lock = self._upload_locks.setdefault(key, asyncio.Lock())
        if lock.locked():
            raise FailedPrecondition(
                "another upload stream for this circuit is still open", reason="UPLOAD_IN_PROGRESS"
            )
        async with lock:
            try:
                yield
            finally:
                self._upload_locks.pop(key, None)

    async def UploadContribution(
        self, request_iterator: AsyncIterator[pb.UploadContributionRequest], context: Any
    ) -> pb.UploadContributionResponse:
        who = require_user()
        requests = request_iterator.__aiter__()
        header = (await self._header(requests)).header
        cid, kid = parse_child(header.circuit, "circuits", "header.circuit")
        index = header.index if header.HasField("index") else None
        async with self._one_stream((kid, who.user_id, ceremony.CONTRIBUTION_KIND)):
            plan = await self.rt.run(
                ceremony.begin_upload,
                self.rt,
                who,
                cid,
                kid,
                ceremony.CONTRIBUTION_KIND,
                header.size_bytes,
                header.blake2b_512,
                index,
            )
            await self._receive(plan, requests)
            contribution = await self.rt.run(
                ceremony.finish_contribution_upload, self.rt, who, cid, plan.upload_id
            )
        # The verification outlives this call if the client hangs up.
        verified = await asyncio.shield(self._verification(contribution.id))
        response = pb.UploadContributionResponse(contribution=contribution_to_proto(cid, verified))
        with contextlib.suppress(NotFound):
            p = await self.rt.run(ceremony.get_participation, who, cid)
            response.participant.CopyFrom(participant_to_proto(p))
        return response

    def _verification(self, contribution_id: str) -> asyncio.Task[ceremony.Contribution]:
        task = self._verifying.get(contribution_id)
        if task is None:
            task = asyncio.create_task(self._verify(contribution_id), name=f"verify:{contribution_id}")
            self._verifying[contribution_id] = task
            task.add_done_callback(lambda _: self._verifying.pop(contribution_id, None))
        return task

    async def _verify(self, contribution_id: str) -> ceremony.Contribution:
        job = await self.rt.run(ceremony.verification_job, self.rt, contribution_id)
        if job is not None:
            loop = asyncio.get_running_loop()
            running = loop.run_in_executor(
                self._verify_pool, ceremony.verifier.run, ceremony.blobs_of(self.rt), job
            )
            stop = asyncio.ensure_future(self.rt.stopping.wait())
            try:
                await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if not running.done():
                # Shutdown: a verifier may run for minutes; it is killed and redone after restart.
                ceremony.verifier.stop_all()
            try:
                result = await running
            except ceremony.verifier.VerifierStopped:
                raise Unavailable("shutting down", reason="SHUTTING_DOWN") from None
            return await self.rt.run(ceremony.finish_verification, self.rt, contribution_id, result)
        return await self.rt.run(ceremony.get_contribution, contribution_id)

    async def UploadArtifact(
        self, request_iterator: AsyncIterator[pb.UploadArtifactRequest], context: Any
    ) -> pb.UploadArtifactResponse:
        who = require_user()
        requests = request_iterator.__aiter__()
        first = await self._header(requests)
        kind = enum_name(pb.ArtifactKind, "ARTIFACT_KIND_", first.kind, "kind").lower()
        header = first.header
        cid, kid = parse_child(header.circuit, "circuits", "header.circuit")
        async with self._one_stream((kid, who.user_id, kind)):
            plan = await self.rt.run(
                ceremony.begin_upload,
                self.rt,
                who,
                cid,
                kid,
                kind,
                header.size_bytes,
                header.blake2b_512,
                None,
            )
            await self._receive(plan, requests)
            k = await self.rt.run(ceremony.finish_artifact_upload, self.rt, who, cid, plan.upload_id)
        return pb.UploadArtifactResponse(circuit=circuit_to_proto(k))

    async def GetUploadStatus(
        self, request: pb.GetUploadStatusRequest, context: Any
    ) -> pb.GetUploadStatusResponse:
        who = require_user()
        cid, kid = parse_child(request.circuit, "circuits", "circuit")
        kind = ceremony.CONTRIBUTION_KIND
        if request.kind:
            kind = enum_name(pb.ArtifactKind, "ARTIFACT_KIND_", request.kind, "kind").lower()
        up = await self.rt.run(ceremony.upload_status, who, cid, kid, kind)
        if up is None:
            return pb.GetUploadStatusResponse()
        return pb.GetUploadStatusResponse(
            committed_offset=up.committed, size_bytes=up.size, blake2b_512=bytes.fromhex(up.hash)
        )

    # -- transcript and finalization -------------------------------------------------------

    async def GetTranscript(self, request: pb.GetTranscriptRequest, context: Any) -> pb.GetTranscriptResponse:
        cid = parse_name(request.ceremony, "ceremonies", "ceremony")
        c, circuits = await self.rt.run(ceremony.transcript, cid)
        return pb.GetTranscriptResponse(
            ceremony=ceremony_to_proto(c),
            circuits=[
                pb.CircuitTranscript(
                    circuit=circuit_to_proto(k),
                    contributions=[contribution_to_proto(cid, x) for x in contribs],
                )
                for k, contribs in circuits
            ],
            public_key=self.rt.signer.public_key,
            key_id=self.rt.signer.key_id,
        )

    async def GetCoordinatorKey(
        self, request: pb.GetCoordinatorKeyRequest, context: Any
    ) -> pb.GetCoordinatorKeyResponse:
        signer = self.rt.signer
        return pb.GetCoordinatorKeyResponse(
            public_key=signer.public_key,
            public_key_pem=signer.public_key_pem(),
            key_id=signer.key_id,
            algorithm="Ed25519",
        )

    async def FinalizeCircuit(
        self, request: pb.FinalizeCircuitRequest, context: Any
    ) -> pb.FinalizeCircuitResponse:
        who = require_user()
        cid, kid = parse_child(request.circuit, "circuits", "circuit")
        k, p = await self.rt.run(
            ceremony.finalize_circuit,
            self.rt,
            who,
            cid,
            kid,
            request.beacon_hash_hex,
            request.beacon_iterations_exponent,
        )
        return pb.FinalizeCircuitResponse(circuit=circuit_to_proto(k), participant=participant_to_proto(p))

    async def FinalizeCeremony(
        self, request: pb.FinalizeCeremonyRequest, context: Any
    ) -> pb.FinalizeCeremonyResponse:
        who = require_user()
        c = await self.rt.run(
            ceremony.finalize_ceremony, self.rt, who, parse_name(request.name, "ceremonies")
        )
        return pb.FinalizeCeremonyResponse(ceremony=ceremony_to_proto(c))
