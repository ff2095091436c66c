"""CeremonyService's byte streams: downloads, resumable uploads, and the verdict an upload waits for.

Uploads are written chunk by chunk to a temporary blob (fsynced before the offset is
recorded), never held whole in memory. Verification runs on the domain's runner (its own
small thread pool, under a lease), so a client that hangs up does not stop it and a restart
resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from coordd.api.ceremony_convert import (
    circuit_to_proto,
    contribution_to_proto,
    enum_name,
    parse_child,
    participant_to_proto,
)
from coordd.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Unavailable
from coordd.core.principal import Principal, require_user
from coordd.domain import ceremony
from coordd.runtime import Runtime
from coordd_client.v1 import ceremony_pb2 as pb

DOWNLOAD_CHUNK = 1 << 20


def _retrieved(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class TransferMethods:
    """Mixed into CeremonyServicer."""

    rt: Runtime
    _upload_locks: dict[tuple[str, str, str], asyncio.Lock]

    async def _stop_verifications_on_shutdown(self) -> None:
        await self.rt.stopping.wait()
        ceremony.stop_verifications(self.rt)

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

    async def UploadGenesis(
        self, request_iterator: AsyncIterator[pb.UploadGenesisRequest], context: Any
    ) -> pb.UploadGenesisResponse:
        who = require_user()
        requests = request_iterator.__aiter__()
        header = (await self._header(requests)).header
        cid, kid = parse_child(header.circuit, "circuits", "header.circuit")
        contribution = await self._contribution(who, cid, kid, header, 0, requests)
        return pb.UploadGenesisResponse(contribution=contribution_to_proto(cid, contribution))

    async def UploadContribution(
        self, request_iterator: AsyncIterator[pb.UploadContributionRequest], context: Any
    ) -> pb.UploadContributionResponse:
        who = require_user()
        requests = request_iterator.__aiter__()
        header = (await self._header(requests)).header
        cid, kid = parse_child(header.circuit, "circuits", "header.circuit")
        index = header.index if header.HasField("index") else None
        verified = await self._contribution(who, cid, kid, header, index, requests)
        response = pb.UploadContributionResponse(contribution=contribution_to_proto(cid, verified))
        with contextlib.suppress(NotFound):
            p = await self.rt.run(ceremony.get_participation, who, cid)
            response.participant.CopyFrom(participant_to_proto(p))
        return response

    async def _contribution(
        self,
        who: Principal,
        cid: str,
        kid: str,
        header: pb.UploadHeader,
        index: int | None,
        requests: AsyncIterator[Any],
    ) -> ceremony.Contribution:
        """Receives a contribution (or finds the same file sent before) and waits for its verdict."""
        # The same file sent again (a client retrying after losing the reply, e.g. across a
        # restart): the answer is that upload's verdict, not NOT_YOUR_TURN.
        earlier = await self.rt.run(ceremony.earlier_upload, who, cid, kid, header.blake2b_512)
        if earlier is None:
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
            earlier = contribution.id
        return await self._verification(earlier)

    async def _verification(self, contribution_id: str) -> ceremony.Contribution:
        """The verdict, from the runner; the run outlives this call if the client hangs up (and
        its outcome is then retrieved by nobody, which must not log a traceback)."""
        running = asyncio.wrap_future(ceremony.verify_contribution(self.rt, contribution_id))
        running.add_done_callback(_retrieved)
        stop = asyncio.ensure_future(self.rt.stopping.wait())
        try:
            await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not running.done():
            # Shutdown: a verifier may run for minutes; it is killed and redone after restart.
            ceremony.stop_verifications(self.rt)
        try:
            return await asyncio.shield(running)
        except ceremony.verifier.VerifierStopped:
            raise Unavailable(
                "shutting down: the contribution is verified again after the restart; "
                "send the same file again to get its verdict",
                reason="SHUTTING_DOWN",
            ) from None

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
