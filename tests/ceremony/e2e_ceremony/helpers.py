"""Driving CeremonyService through the generated sync stubs, as contributor clients do."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from coordd.domain import ceremony as rules
from coordd_client.v1 import ceremony_pb2 as pb
from coordd_client.v1 import ceremony_pb2_grpc
from tests.support.server import ServerHandle, bearer


def blake(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=64).digest()


def dur(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=seconds))
    return out


def stamp(server: ServerHandle, offset_s: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(server.rt.now() + timedelta(seconds=offset_s))
    return out


def upload_messages(
    circuit: str,
    data: bytes,
    *,
    chunk: int = 64 * 1024,
    start: int = 0,
    digest: bytes | None = None,
    size: int | None = None,
    index: int | None = None,
) -> Iterator[pb.UploadContributionRequest]:
    header = pb.UploadHeader(
        circuit=circuit,
        size_bytes=len(data) if size is None else size,
        blake2b_512=blake(data) if digest is None else digest,
    )
    if index is not None:
        header.index = index
    yield pb.UploadContributionRequest(header=header)
    for offset in range(start, len(data), chunk):
        yield pb.UploadContributionRequest(
            chunk=pb.UploadChunk(offset=offset, data=data[offset : offset + chunk])
        )


class Ceremonies:
    """A coordinator and helpers; every call goes over gRPC."""

    def __init__(self, server: ServerHandle) -> None:
        self.server = server
        self.stub = ceremony_pb2_grpc.CeremonyServiceStub(server.channel)
        self.coordinator_id, self.coordinator = server.make_user("coordinator")

    def create(
        self,
        token: str | None = None,
        *,
        start_in: float = 3600,
        upload_retries: int | None = None,
        verifier: pb.Verifier | None = None,
        **timeout: Any,
    ) -> pb.Ceremony:
        config = pb.TimeoutConfig(
            policy=pb.TIMEOUT_POLICY_FIXED, fixed_timeout=dur(60), start_window=dur(30), penalty=dur(20)
        )
        for key, value in timeout.items():
            if key == "policy":
                config.policy = value
            elif key == "dynamic_threshold_percent":
                config.dynamic_threshold_percent = value
            else:
                getattr(config, key).CopyFrom(dur(value))
        request = pb.CreateCeremonyRequest(
            title="Test ceremony",
            prefix=f"c-{uuid.uuid4().hex[:10]}",
            start_time=stamp(self.server, start_in),
            end_time=stamp(self.server, 86400),
            timeout=config,
            # Test bytes, not zkeys: the size-and-hash check, explicitly.
            verifier=verifier or pb.Verifier(name="none"),
            upload_retries=upload_retries,
        )
        return self.stub.CreateCeremony(request, metadata=bearer(token or self.coordinator)).ceremony

    def add_circuit(self, ceremony: pb.Ceremony, name: str = "main", **extra: Any) -> pb.Circuit:
        return self.stub.AddCircuit(
            pb.AddCircuitRequest(parent=ceremony.name, display_name=name, **extra),
            metadata=bearer(self.coordinator),
        ).circuit

    def upload(self, token: str, circuit: str, data: bytes, **kw: Any) -> pb.UploadContributionResponse:
        return self.stub.UploadContribution(upload_messages(circuit, data, **kw), metadata=bearer(token))

    def genesis(self, circuit: pb.Circuit, data: bytes = b"genesis zkey" * 100) -> pb.Contribution:
        reply = self.upload(self.coordinator, circuit.name, data, index=0)
        assert reply.contribution.state == pb.CONTRIBUTION_STATE_VALID, reply.contribution.verifier_output
        return reply.contribution

    def open(
        self,
        circuits: int = 1,
        upload_retries: int | None = None,
        verifier: pb.Verifier | None = None,
        **timeout: Any,
    ) -> tuple[pb.Ceremony, list[pb.Circuit]]:
        """A ceremony with `circuits` circuits, each with a genesis, opened now. It is created to
        start in an hour (so the daemon's own scheduler cannot open it before its circuits are
        added), then moved to start now."""
        ceremony = self.create(start_in=3600, upload_retries=upload_retries, verifier=verifier, **timeout)
        made = [self.add_circuit(ceremony, f"circuit-{i + 1}") for i in range(circuits)]
        for circuit in made:
            self.genesis(circuit)
        self.stub.UpdateCeremony(
            pb.UpdateCeremonyRequest(
                ceremony=pb.Ceremony(name=ceremony.name, start_time=stamp(self.server, 0)),
                update_mask={"paths": ["start_time"]},
            ),
            metadata=bearer(self.coordinator),
        )
        self.tick()
        return self.get(ceremony.name), made

    def tick(self) -> None:
        """Runs the scheduler's ceremony work now, as its tasks would."""
        rules.run_lifecycle(self.server.rt)
        rules.fire_deadlines(self.server.rt)
        rules.recover_verifications(self.server.rt, wait=True)

    def get(self, name: str) -> pb.Ceremony:
        return self.stub.GetCeremony(
            pb.GetCeremonyRequest(name=name), metadata=bearer(self.coordinator)
        ).ceremony

    def join(self, ceremony: pb.Ceremony, token: str) -> pb.Participant:
        return self.stub.JoinCeremony(
            pb.JoinCeremonyRequest(ceremony=ceremony.name), metadata=bearer(token)
        ).participant

    def me(self, ceremony: pb.Ceremony, token: str) -> pb.Participant:
        return self.stub.GetMyParticipation(
            pb.GetMyParticipationRequest(ceremony=ceremony.name), metadata=bearer(token)
        ).participant

    def circuit(self, name: str) -> pb.Circuit:
        return self.stub.GetCircuit(
            pb.GetCircuitRequest(name=name), metadata=bearer(self.coordinator)
        ).circuit

    def download(
        self, token: str, circuit: str, **kw: Any
    ) -> tuple[bytes, list[pb.DownloadContributionResponse]]:
        parts = list(
            self.stub.DownloadContribution(
                pb.DownloadContributionRequest(circuit=circuit, **kw), metadata=bearer(token)
            )
        )
        return b"".join(p.data for p in parts), parts

    def contribute(
        self, ceremony: pb.Ceremony, token: str, payload: bytes | None = None
    ) -> pb.UploadContributionResponse:
        """One full turn: download the latest, report progress, upload something new."""
        me = self.me(ceremony, token)
        assert me.status in (pb.PARTICIPANT_STATUS_READY, pb.PARTICIPANT_STATUS_CONTRIBUTING), me
        data, _ = self.download(token, me.circuit)
        self.stub.ReportProgress(
            pb.ReportProgressRequest(ceremony=ceremony.name, step=pb.CONTRIBUTION_STEP_COMPUTING),
            metadata=bearer(token),
        )
        return self.upload(token, me.circuit, payload or data + uuid.uuid4().bytes)

    def transcript(self, ceremony: pb.Ceremony) -> pb.GetTranscriptResponse:
        return self.stub.GetTranscript(pb.GetTranscriptRequest(ceremony=ceremony.name))


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")
