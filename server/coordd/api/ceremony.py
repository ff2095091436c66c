"""CeremonyService: validate -> domain -> proto, plus the byte streams and WatchQueue.

Uploads are written chunk by chunk to a temporary blob (fsynced before the offset is
recorded), never held whole in memory. Verification runs in its own small thread pool, as
a task that outlives the upload call, so a client that hangs up does not stop it.

WatchQueue streams share one read of a circuit's queue per change (QueueSnapshots): after
an event, the first stream to wake re-reads the queue and every other stream on that
circuit reuses it, so a change costs one query, not one per watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf import duration_pb2

from coordd.api.convert import duration, from_ts, parse_name, ts
from coordd.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Unavailable
from coordd.core.events import Event
from coordd.core.paging import PageRequest
from coordd.core.principal import require_user
from coordd.domain import ceremony
from coordd.domain import ceremony_verify as verify
from coordd.domain.ceremony_timeouts import estimated_wait
from coordd.events.notify import keys_of
from coordd.runtime import Runtime
from coordd.store.ceremony_models import (
    CLOSED,
    CREATED,
    DONE,
    FINALIZED,
    TIMEDOUT,
    WAITING,
    Ceremony,
    Circuit,
    Contribution,
)
from coordd_client.v1 import ceremony_pb2 as pb
from coordd_client.v1 import ceremony_pb2_grpc

# A stream with nothing new sends its last message again (keepalive=true) this often.
KEEPALIVE_S = 15.0
# A cached queue snapshot is re-read after this long even without events (lost hints).
SNAPSHOT_MAX_AGE_S = 5.0
DOWNLOAD_CHUNK = 1 << 20


def _keepalive_interval() -> float:
    """90-100 % of KEEPALIVE_S, drawn per message: streams updated by the same change would
    otherwise all send their keepalives in the same instant, 15 s later."""
    return KEEPALIVE_S * (0.9 + 0.1 * random.random())


VERIFY_THREADS = 2


# -- names and conversions -------------------------------------------------------------------


def parse_child(name: str, collection: str, field: str) -> tuple[str, str]:
    """`ceremonies/{c}/{collection}/{id}` -> (c, id)."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "ceremonies"
        or parts[2] != collection
        or not all(parts[i] and len(parts[i]) <= 64 for i in (1, 3))
    ):
        raise InvalidArgument(
            f"{field} must look like ceremonies/{{id}}/{collection}/{{id}}, got {name!r}",
            violations=[FieldViolation(field, f"expected ceremonies/{{id}}/{collection}/{{id}}")],
        )
    return parts[1], parts[3]


def _enum_name(enum: Any, prefix: str, value: int, field: str, allow_unspecified: bool = False) -> str:
    if value == 0 and allow_unspecified:
        return ""
    if value == 0 or value not in enum.values():
        raise InvalidArgument(
            f"{field} is not a valid value", violations=[FieldViolation(field, "unknown or unspecified")]
        )
    return str(enum.Name(value))[len(prefix) :]


def _seconds(value: duration_pb2.Duration) -> float:
    return value.ToTimedelta().total_seconds()


def ceremony_to_proto(c: Ceremony) -> pb.Ceremony:
    return pb.Ceremony(
        name=ceremony.ceremony_name(c.id),
        title=c.title,
        description=c.description,
        prefix=c.prefix,
        state=pb.CeremonyState.Value(f"CEREMONY_STATE_{c.state}"),
        coordinator=f"users/{c.coordinator_id}",
        start_time=ts(c.start_time),
        end_time=ts(c.end_time),
        timeout=pb.TimeoutConfig(
            policy=pb.TimeoutPolicy.Value(f"TIMEOUT_POLICY_{c.timeout_policy}"),
            fixed_timeout=duration(c.fixed_timeout_s),
            dynamic_threshold_percent=c.dynamic_threshold_pct,
            dynamic_floor=duration(c.dynamic_floor_s),
            start_window=duration(c.start_window_s),
            penalty=duration(c.penalty_s),
        ),
        verifier=pb.Verifier(command=c.verifier_command, timeout=duration(c.verify_timeout_s)),
        create_time=ts(c.create_time),
        update_time=ts(c.update_time),
    )


def _avg(total: float, count: int) -> duration_pb2.Duration | None:
    return duration(total / count) if count else None


def circuit_to_proto(k: Circuit, waiting: int = 0) -> pb.Circuit:
    return pb.Circuit(
        name=ceremony.circuit_name(k.ceremony_id, k.id),
        display_name=k.display_name,
        sequence=k.sequence,
        r1cs=pb.BlobInfo(size_bytes=k.r1cs_size, blake2b_512=bytes.fromhex(k.r1cs_hash))
        if k.r1cs_hash
        else None,
        ptau=pb.BlobInfo(size_bytes=k.ptau_size, blake2b_512=bytes.fromhex(k.ptau_hash))
        if k.ptau_hash
        else None,
        max_contribution_size_bytes=k.max_contribution_bytes,
        valid_contributions=k.last_valid_index + 1,
        next_index=k.last_valid_index + 1,
        current_contributor=ceremony.participant_name(k.ceremony_id, k.current_participant)
        if k.current_participant
        else "",
        waiting_count=waiting,
        average_contribution_time=_avg(k.contribution_total_s, k.contribution_count),
        average_verification_time=_avg(k.verification_total_s, k.verification_count),
        beacon_hash_hex=k.beacon_hash,
        beacon_iterations_exponent=k.beacon_iterations,
        finalized=k.finalized,
    )


def participant_to_proto(p: Any) -> pb.Participant:
    """`p` is a Participant row or a ParticipantView: they share these attributes."""
    return pb.Participant(
        name=ceremony.participant_name(p.ceremony_id, p.id),
        user=f"users/{p.user_id}",
        status=pb.ParticipantStatus.Value(f"PARTICIPANT_STATUS_{p.status}"),
        step=pb.ContributionStep.Value(f"CONTRIBUTION_STEP_{p.step}") if p.step else 0,
        circuit=ceremony.circuit_name(p.ceremony_id, p.circuit_id) if p.circuit_id else "",
        completed_circuits=p.completed_circuits,
        timeouts_count=p.timeouts_count,
        deadline=ts(p.due_time),
        create_time=ts(p.create_time),
        update_time=ts(p.update_time),
    )


def contribution_to_proto(ceremony_id: str, k: Contribution) -> pb.Contribution:
    receipt = None
    if k.receipt_signature:
        receipt = pb.Receipt(
            payload=bytes(k.receipt_payload), signature=bytes(k.receipt_signature), key_id=k.receipt_key_id
        )
    return pb.Contribution(
        name=ceremony.contribution_name(ceremony_id, k.circuit_id, k.id),
        index=k.index,
        contributor=k.contributor,
        hash_hex=k.hash,
        previous_hash_hex=k.previous_hash,
        size_bytes=k.size,
        state=pb.ContributionState.Value(f"CONTRIBUTION_STATE_{k.state}"),
        verifier_output=k.verifier_output,
        contribution_time=duration(k.contribution_s),
        verification_time=duration(k.verification_s),
        upload_time=ts(k.upload_time),
        verify_time=ts(k.verify_time),
        final=k.is_final,
        receipt=receipt,
    )


def spec_from_proto(c: pb.Ceremony | pb.CreateCeremonyRequest, fields: set[str]) -> ceremony.CeremonySpec:
    spec = ceremony.CeremonySpec(title=c.title, description=c.description)
    if isinstance(c, pb.CreateCeremonyRequest):
        spec.prefix = c.prefix
    if c.HasField("start_time"):
        spec.start_time = from_ts(c.start_time)
    if c.HasField("end_time"):
        spec.end_time = from_ts(c.end_time)
    if "timeout" in fields:
        t = c.timeout
        spec.timeout_policy = _enum_name(
            pb.TimeoutPolicy, "TIMEOUT_POLICY_", t.policy, "timeout.policy", allow_unspecified=True
        )
        spec.fixed_timeout_s = _seconds(t.fixed_timeout)
        spec.dynamic_threshold_pct = t.dynamic_threshold_percent
        spec.dynamic_floor_s = _seconds(t.dynamic_floor)
        spec.start_window_s = _seconds(t.start_window)
        spec.penalty_s = _seconds(t.penalty)
    if "verifier" in fields:
        spec.verifier_command = c.verifier.command
        spec.verify_timeout_s = _seconds(c.verifier.timeout)
    return spec


# -- shared reads for WatchQueue -------------------------------------------------------------


class QueueSnapshots:
    """One cached read per circuit, refreshed after any event on its queue key.

    A bus listener bumps the circuit's generation when an event names its queue key; a
    stream asks for a snapshot at least as new as the generation it saw, and concurrent
    askers share one in-flight read. The read starts after the bump, so it sees the change.
    """

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._generation: dict[str, int] = {}
        self._cache: dict[str, tuple[int, float, ceremony.QueueSnapshot | None]] = {}
        self._inflight: dict[str, tuple[int, asyncio.Future[ceremony.QueueSnapshot | None]]] = {}
        self.reads = 0
        rt.bus.add_listener(self._on_events)

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            for key in keys_of(event):
                if key.endswith("/queue"):
                    circuit_id = key.split("/")[3] if key.count("/") == 4 else ""
                    if circuit_id:
                        self._generation[circuit_id] = self._generation.get(circuit_id, 0) + 1

    async def get(self, circuit_id: str) -> ceremony.QueueSnapshot | None:
        wanted = self._generation.get(circuit_id, 0)
        cached = self._cache.get(circuit_id)
        if cached is not None and cached[0] >= wanted and time.monotonic() - cached[1] < SNAPSHOT_MAX_AGE_S:
            return cached[2]
        flight = self._inflight.get(circuit_id)
        if flight is None or flight[0] < wanted:
            future = asyncio.ensure_future(self._read(circuit_id, wanted))
            flight = (wanted, future)
            self._inflight[circuit_id] = flight
        return await asyncio.shield(flight[1])

    async def _read(self, circuit_id: str, generation: int) -> ceremony.QueueSnapshot | None:
        try:
            self.reads += 1
            snap = await self.rt.run(ceremony.queue_snapshot, circuit_id, self.rt.now())
            held = self._cache.get(circuit_id)
            if held is None or held[0] <= generation:
                self._cache[circuit_id] = (generation, time.monotonic(), snap)
            return snap
        finally:
            flight = self._inflight.get(circuit_id)
            if flight is not None and flight[0] == generation:
                del self._inflight[circuit_id]


@dataclass(frozen=True)
class _WatchState:
    view: ceremony.ParticipantView
    snap: ceremony.QueueSnapshot | None
    state: str
    position: int
    wait: timedelta | None
    keys: list[str]
    finished: bool

    @property
    def key(self) -> tuple[Any, ...]:
        """Everything the message shows, for a cheap "did anything change" check."""
        current = self.snap.current.id if self.snap is not None and self.snap.current is not None else ""
        length = self.snap.queue_length if self.snap is not None else 0
        return (self.state, self.view, self.position, length, current, self.wait)


class CeremonyServicer(ceremony_pb2_grpc.CeremonyServiceServicer):
    SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CeremonyService"].full_name
    register = staticmethod(ceremony_pb2_grpc.add_CeremonyServiceServicer_to_server)

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.snapshots = QueueSnapshots(rt)
        self._verify_pool = ThreadPoolExecutor(max_workers=VERIFY_THREADS, thread_name_prefix="coordd-verify")
        self._verifying: dict[str, asyncio.Task[Contribution]] = {}
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
        state = _enum_name(
            pb.CeremonyState, "CEREMONY_STATE_", request.state, "state", allow_unspecified=True
        )
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
        status = _enum_name(
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
        step = _enum_name(pb.ContributionStep, "CONTRIBUTION_STEP_", request.step, "step")
        p = await self.rt.run(ceremony.report_progress, self.rt, who, cid, step)
        return pb.ReportProgressResponse(participant=participant_to_proto(p))

    # -- WatchQueue ------------------------------------------------------------------------

    async def _watch_state(self, cid: str, pid: str, hint: str | None) -> _WatchState:
        """What the caller's next message says; most wake-ups are served from a shared snapshot."""
        snap = await self.snapshots.get(hint) if hint else None
        view = snap.participants.get(pid) if snap is not None else None
        if view is None:
            view = await self.rt.run(ceremony.participant_view, pid)
            if view is None:
                raise NotFound("your participation no longer exists", reason="NOT_A_PARTICIPANT")
            snap = await self.snapshots.get(view.circuit_id) if view.circuit_id else None
            if snap is not None:
                view = snap.participants.get(pid, view)
        if snap is not None:
            state = snap.ceremony_state
        else:
            state = (await self.rt.run(ceremony.get_ceremony, cid)).state
        keys = [ceremony.participant_name(cid, pid), ceremony.ceremony_name(cid)]
        position, wait = 0, None
        if snap is not None:
            keys.append(ceremony.queue_key(cid, snap.circuit_id))
            position = snap.positions.get(pid, 0)
            if view.status == WAITING:
                wait = estimated_wait(position - 1, snap.per_turn, snap.current_elapsed)
        finished = view.status in (DONE, FINALIZED) or (
            state in (CLOSED, FINALIZED) and view.status in (CREATED, WAITING, TIMEDOUT)
        )
        return _WatchState(view, snap, state, position, wait, keys, finished)

    @staticmethod
    def _watch_message(cid: str, w: _WatchState) -> pb.WatchQueueResponse:
        msg = pb.WatchQueueResponse(
            ceremony_state=pb.CeremonyState.Value(f"CEREMONY_STATE_{w.state}"),
            participant=participant_to_proto(w.view),
            deadline=ts(w.view.due_time),
            position=w.position,
            estimated_wait=duration(w.wait) if w.wait is not None else None,
        )
        if w.snap is not None:
            msg.queue_length = w.snap.queue_length
            if w.snap.current is not None:
                msg.current_contributor = ceremony.participant_name(cid, w.snap.current.id)
        return msg

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
            w = await self._watch_state(cid, p.id, hint)
            hint = w.view.circuit_id
            now = time.monotonic()
            # A cheap comparison first: the message is only built when something changed.
            if w.key != last_key:
                msg = self._watch_message(cid, w)
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

    def _verification(self, contribution_id: str) -> asyncio.Task[Contribution]:
        task = self._verifying.get(contribution_id)
        if task is None:
            task = asyncio.create_task(self._verify(contribution_id), name=f"verify:{contribution_id}")
            self._verifying[contribution_id] = task
            task.add_done_callback(lambda _: self._verifying.pop(contribution_id, None))
        return task

    async def _verify(self, contribution_id: str) -> Contribution:
        job = await self.rt.run(ceremony.verification_job, self.rt, contribution_id)
        if job is not None:
            loop = asyncio.get_running_loop()
            running = loop.run_in_executor(self._verify_pool, verify.run, ceremony.blobs_of(self.rt), job)
            stop = asyncio.ensure_future(self.rt.stopping.wait())
            try:
                await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if not running.done():
                # Shutdown: a verifier may run for minutes; it is killed and redone after restart.
                verify.stop_all()
            try:
                result = await running
            except verify.VerifierStopped:
                raise Unavailable("shutting down", reason="SHUTTING_DOWN") from None
            return await self.rt.run(ceremony.finish_verification, self.rt, contribution_id, result)
        return await self.rt.run(Contribution.get_by_id, contribution_id)

    async def UploadArtifact(
        self, request_iterator: AsyncIterator[pb.UploadArtifactRequest], context: Any
    ) -> pb.UploadArtifactResponse:
        who = require_user()
        requests = request_iterator.__aiter__()
        first = await self._header(requests)
        kind = _enum_name(pb.ArtifactKind, "ARTIFACT_KIND_", first.kind, "kind").lower()
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
            kind = _enum_name(pb.ArtifactKind, "ARTIFACT_KIND_", request.kind, "kind").lower()
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
