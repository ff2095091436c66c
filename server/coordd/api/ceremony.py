"""CeremonyService: validate -> domain -> proto, and WatchQueue (the byte streams are in
ceremony_uploads.py).

WatchQueue streams share one read of a circuit's queue per change (the domain's
QueueSnapshots): after an event, the first stream to wake re-reads the queue and every
other stream on that circuit reuses it, so a change costs one query, not one per watcher.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from coordd.api.ceremony_convert import (
    KEEPALIVE_SUFFIX,
    ceremony_to_proto,
    circuit_to_proto,
    contribution_to_proto,
    enum_name,
    parse_child,
    participant_to_proto,
    spec_from_proto,
    watch_own_bytes,
    watch_position_bytes,
    watch_shared_bytes,
)
from coordd.api.ceremony_uploads import TransferMethods
from coordd.api.convert import parse_name
from coordd.core.paging import PageRequest
from coordd.core.principal import require_user
from coordd.domain import ceremony
from coordd.domain.ceremony.watch import cached_watch_state
from coordd.runtime import Runtime
from coordd_client.v1 import ceremony_pb2 as pb
from coordd_client.v1 import ceremony_pb2_grpc

# A stream with nothing new sends its last message again (keepalive=true) this often.
KEEPALIVE_S = 15.0
# A waiting stream's timeout (its keepalive) may fire this much late: the streams whose timeouts
# fall in the same slot share one timer (Notifier.arm's slack) instead of a handle each.
WAIT_SLACK_S = 0.05


def _keepalive_interval() -> float:
    """90-100 % of KEEPALIVE_S, drawn per message: streams updated by the same change would
    otherwise all send their keepalives in the same instant, 15 s later."""
    return KEEPALIVE_S * (0.9 + 0.1 * random.random())


class CeremonyServicer(TransferMethods, ceremony_pb2_grpc.CeremonyServiceServicer):
    SERVICE_NAME = pb.DESCRIPTOR.services_by_name["CeremonyService"].full_name
    register = staticmethod(lambda servicer, server: register(servicer, server))

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.snapshots = ceremony.QueueSnapshots(rt)
        # Per circuit: the snapshot and ceremony state last encoded, and their shared bytes.
        self._shared: dict[str, tuple[ceremony.QueueSnapshot, str, bytes]] = {}
        self._upload_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        # Verifications started by a restart's recovery have no call waiting on them: they
        # are stopped here when shutdown starts.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._stopper = None
        else:
            self._stopper = loop.create_task(self._stop_verifications_on_shutdown(), name="ceremony-stopper")

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

    async def OpenCeremony(self, request: pb.OpenCeremonyRequest, context: Any) -> pb.OpenCeremonyResponse:
        c = await self.rt.run(
            ceremony.open_ceremony, self.rt, require_user(), parse_name(request.name, "ceremonies")
        )
        return pb.OpenCeremonyResponse(ceremony=ceremony_to_proto(c))

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

    async def WatchQueue(self, request: pb.WatchQueueRequest, context: Any) -> AsyncIterator[bytes]:
        """Yields pre-serialized WatchQueueResponse bytes (see `register`): the circuit's shared
        fields are encoded once per snapshot for every watcher, the caller's own fields once
        per change of its own row, and only position + estimated wait per message."""
        who = require_user()
        cid = parse_name(request.ceremony, "ceremonies", "ceremony")
        del request  # between messages the stream holds only what it compares and sends
        p = await self.rt.run(ceremony.get_participation, who, cid)
        del who
        pid: str = p.id
        hint: str | None = p.circuit_id
        del p  # the row is not needed again
        last_key: tuple[Any, ...] | None = None
        last_sent = time.monotonic()
        quiet = _keepalive_interval()
        # The caller's last verdict is read again only when its own status moves (a verdict
        # always moves it), not on every change of the queue ahead of it.
        mine: tuple[Any, ...] | None = None
        own_bytes = b""
        own_key: tuple[Any, ...] | None = None
        last: ceremony.Contribution | None = None
        while True:
            w = cached_watch_state(self.rt, self.snapshots, cid, pid, hint)
            if w is None:
                w = await ceremony.watch_state(self.rt, self.snapshots, cid, pid, hint)
            hint = w.view.circuit_id
            now = time.monotonic()
            own = (w.view.status, w.view.completed_circuits, w.view.circuit_id, w.view.update_time)
            if own != mine:
                mine = own
                last = await self.rt.run(ceremony.last_contribution, pid)
            key = (w.key, last.id if last is not None else "")
            # A cheap comparison first: the message is only built when something changed
            # or a keepalive is due.
            if key != last_key or now - last_sent >= quiet:
                if own_key != (w.view, key[1]):
                    own_key, own_bytes = (w.view, key[1]), watch_own_bytes(cid, w, last)
                # Not kept between messages: a keepalive (same key, so the same content) is
                # encoded again from the shared bytes, which costs less than holding them.
                data = self._shared_bytes(cid, w) + own_bytes + watch_position_bytes(w.position, w.wait)
                yield data if key != last_key else data + KEEPALIVE_SUFFIX
                del data
                last_key, last_sent, quiet = key, now, _keepalive_interval()
            if w.finished:
                return
            snap, keys = w.snap, w.keys
            del w, own
            if snap is not None and not self.snapshots.is_current(snap):
                continue  # the queue changed while this stream was busy: no wake-up will come
            del snap
            # The notifier's future, awaited here: no coroutine frame per waiting stream.
            notifier = self.rt.notifier
            waiter, timer = notifier.arm(
                keys, max(0.01, quiet - (time.monotonic() - last_sent)), slack=WAIT_SLACK_S
            )
            try:
                await waiter
            finally:
                notifier.disarm(keys, waiter, timer)
            del keys, waiter, timer

    def _shared_bytes(self, cid: str, w: ceremony.WatchState) -> bytes:
        """The circuit's shared fields, encoded once per (snapshot, ceremony state) for all of
        its watchers."""
        if w.snap is None:
            return watch_shared_bytes(cid, w)
        held = self._shared.get(w.snap.circuit_id)
        if held is not None and held[0] is w.snap and held[1] == w.state:
            return held[2]
        data = watch_shared_bytes(cid, w)
        self._shared[w.snap.circuit_id] = (w.snap, w.state, data)
        return data

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
            unverified=ceremony.verifiers.unverified(c.verifier_name, c.verifier_command),
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


# -- registration ----------------------------------------------------------------------------


class _Recorder:
    """Stands in for the server while the generated function lists the service's handlers."""

    name = ""
    handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, name: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.name, self.handlers = name, handlers


def _message_or_bytes(value: Any) -> bytes:
    """WatchQueue yields pre-serialized bytes; anything else is a message to serialize."""
    return value if isinstance(value, bytes) else pb.WatchQueueResponse.SerializeToString(value)


def register(servicer: Any, server: Any) -> None:
    """The generated handlers, except WatchQueue's response serializer, which passes the
    servicer's pre-serialized bytes through (the proto and the generated clients are
    unchanged; the interceptor chain wraps this handler like any other)."""
    rec = _Recorder()
    ceremony_pb2_grpc.add_CeremonyServiceServicer_to_server(servicer, rec)
    handlers = dict(rec.handlers)
    watch = handlers["WatchQueue"]
    handlers["WatchQueue"] = grpc.unary_stream_rpc_method_handler(
        watch.unary_stream,
        request_deserializer=watch.request_deserializer,
        response_serializer=_message_or_bytes,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(rec.name, handlers),))
    server.add_registered_method_handlers(rec.name, handlers)
