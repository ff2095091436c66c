"""Driving a real `coordd serve --http` for the browser tests: its HTTP port, users made with
`coordd admin create-user`, and a ceremony moved along over gRPC as contributors would."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from coordd_client.v1 import ceremony_pb2 as pb
from coordd_client.v1 import ceremony_pb2_grpc
from tests.ceremony.e2e_ceremony.helpers import dur, upload_messages
from tests.support.process import Daemon, admin_create_user
from tests.support.server import bearer

ROOT = Path(__file__).resolve().parents[2]
# Where the browser tests leave a screenshot of each page (the README names it; git-ignored).
SCREENSHOTS = ROOT / "var" / "screenshots"


def http_port(daemon: Daemon, timeout: float = 30) -> int:
    """The web port the daemon logged ("http serving", JSON logs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in daemon.log().splitlines():
            if '"http serving"' in line:
                return int(json.loads(line)["port"])
        time.sleep(0.05)
    raise AssertionError(f"coordd did not log its http port:\n{daemon.log()}")


def _ts(dt: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt)
    return out


class LiveCeremony:
    """One ceremony on the daemon with one circuit, opened by the daemon's own scheduler."""

    def __init__(self, daemon: Daemon, title: str = "Browser-tested ceremony") -> None:
        self.daemon = daemon
        self.channel = grpc.insecure_channel(daemon.target)
        self.stub = ceremony_pb2_grpc.CeremonyServiceStub(self.channel)
        made = admin_create_user(daemon, f"coord-{uuid.uuid4().hex[:8]}@example.com", "coordinator")
        self.coordinator = made["api_key_secret"]
        now = datetime.now(UTC)
        self.ceremony = self.stub.CreateCeremony(
            pb.CreateCeremonyRequest(
                title=title,
                description="A phase-2 ceremony for the browser tests.",
                prefix=f"web-{uuid.uuid4().hex[:8]}",
                start_time=_ts(now + timedelta(seconds=2)),
                end_time=_ts(now + timedelta(hours=2)),
                timeout=pb.TimeoutConfig(
                    policy=pb.TIMEOUT_POLICY_FIXED,
                    fixed_timeout=dur(300),
                    start_window=dur(300),
                    penalty=dur(5),
                ),
                # The built-in check only: the page, not the proof, is under test here.
                verifier=pb.Verifier(name="none"),
            ),
            metadata=bearer(self.coordinator),
        ).ceremony
        self.circuit = self.stub.AddCircuit(
            pb.AddCircuitRequest(parent=self.ceremony.name, display_name="multiplier"),
            metadata=bearer(self.coordinator),
        ).circuit
        self.stub.UploadContribution(
            upload_messages(self.circuit.name, b"genesis zkey" * 100, index=0),
            metadata=bearer(self.coordinator),
        )
        self._wait_opened()

    @property
    def id(self) -> str:
        return self.ceremony.name.split("/")[1]

    def _wait_opened(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.stub.GetCeremony(
                pb.GetCeremonyRequest(name=self.ceremony.name), metadata=bearer(self.coordinator)
            ).ceremony
            if got.state == pb.CEREMONY_STATE_OPENED:
                return
            time.sleep(0.1)
        raise AssertionError("the daemon's scheduler did not open the ceremony")

    def wait_recorded(self, valid: int, timeout: float = 30) -> None:
        """Until the daemon has verified and recorded `valid` contributions (genesis
        included): the moment the queue moves, from which a live page has its second."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.stub.GetCircuit(
                pb.GetCircuitRequest(name=self.circuit.name), metadata=bearer(self.coordinator)
            ).circuit
            if got.valid_contributions >= valid:
                return
            time.sleep(0.02)
        raise AssertionError(f"the daemon did not record {valid} valid contributions in {timeout:g} s")

    def participant(self) -> str:
        made = admin_create_user(self.daemon, f"p-{uuid.uuid4().hex[:8]}@example.com", "participant")
        return str(made["api_key_secret"])

    def join(self, token: str) -> pb.Participant:
        return self.stub.JoinCeremony(
            pb.JoinCeremonyRequest(ceremony=self.ceremony.name), metadata=bearer(token)
        ).participant

    def contribute(self, token: str) -> pb.Contribution:
        parts = self.stub.DownloadContribution(
            pb.DownloadContributionRequest(circuit=self.circuit.name), metadata=bearer(token)
        )
        data = b"".join(p.data for p in parts) + uuid.uuid4().bytes
        return self.stub.UploadContribution(
            upload_messages(self.circuit.name, data), metadata=bearer(token)
        ).contribution

    def close(self) -> None:
        self.channel.close()
