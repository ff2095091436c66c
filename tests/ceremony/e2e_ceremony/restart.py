"""A real `coordd serve` with a real snarkjs verifier, for the restart tests: a ceremony open
with one circuit (r1cs, ptau, genesis), and a contributor who has made its contribution."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from coordd_client.v1 import auth_pb2, auth_pb2_grpc, ceremony_pb2_grpc
from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.toolchain import Artifacts, Toolchain
from tests.support.process import FAST_KDF_ENV, Daemon

# snarkjs behind a short pause, so a test can stop the daemon while it verifies.
SLOW_SNARKJS = (
    'sh -c \'sleep 2 && exec "$0" zkey verify "$1" "$2" "$3"\' {snarkjs} {{r1cs}} {{ptau}} {{zkey}}'
)


def ts(dt: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt)
    return out


def blake(path: Path) -> bytes:
    return hashlib.blake2b(path.read_bytes(), digest_size=64).digest()


def upload_requests(
    path: Path, circuit: str, *, index: int | None = None, chunk: int = 16 * 1024, start: int = 0
) -> Iterator[pb.UploadContributionRequest]:
    data = path.read_bytes()
    header = pb.UploadHeader(circuit=circuit, size_bytes=len(data), blake2b_512=blake(path))
    if index is not None:
        header.index = index
    yield pb.UploadContributionRequest(header=header)
    for offset in range(start, len(data), chunk):
        yield pb.UploadContributionRequest(
            chunk=pb.UploadChunk(offset=offset, data=data[offset : offset + chunk])
        )


def artifact_requests(path: Path, circuit: str, kind: int) -> Iterator[pb.UploadArtifactRequest]:
    for message in upload_requests(path, circuit):
        if message.WhichOneof("message") == "header":
            yield pb.UploadArtifactRequest(header=message.header, kind=kind)
        else:
            yield pb.UploadArtifactRequest(chunk=message.chunk)


def genesis_requests(path: Path, circuit: str) -> Iterator[pb.UploadGenesisRequest]:
    for message in upload_requests(path, circuit):
        if message.WhichOneof("message") == "header":
            yield pb.UploadGenesisRequest(header=message.header)
        else:
            yield pb.UploadGenesisRequest(chunk=message.chunk)


def snarkjs_hash(output: str) -> str:
    """The "Contribution Hash" `snarkjs zkey contribute` prints (hex of its 64 bytes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", output)
    tail = text.split("Contribution Hash:", 1)[1]
    return "".join(re.findall(r"[0-9a-f]{8}", tail)[:16])


def verifier_env(tools: Toolchain, slow: bool = True) -> dict[str, str]:
    """The daemon's environment declaring the operator's `snarkjs-slow` verifier."""
    command = SLOW_SNARKJS.format(snarkjs=shlex.quote(str(tools.snarkjs))) if slow else ""
    env = {"COORDD_SNARKJS_PATH": str(tools.snarkjs)}
    if command:
        env["COORDD_CEREMONY_VERIFIERS"] = (
            '{"snarkjs-slow": {"command": ' + _json_str(command) + ', "timeout_s": 120}}'
        )
    return env


def _json_str(text: str) -> str:
    return json.dumps(text)


@dataclass
class Session:
    daemon: Daemon
    channel: grpc.Channel
    stub: ceremony_pb2_grpc.CeremonyServiceStub

    @classmethod
    def connect(cls, daemon: Daemon) -> Session:
        channel = grpc.insecure_channel(daemon.target)
        return cls(daemon, channel, ceremony_pb2_grpc.CeremonyServiceStub(channel))

    def close(self) -> None:
        self.channel.close()


@dataclass
class Open:
    ceremony: str
    circuit: str
    coordinator: tuple[tuple[str, str], ...]


def create_admin(daemon: Daemon, database_url: str) -> dict[str, str]:
    """`coordd admin create-user` on the daemon's database (its data dir, or PostgreSQL)."""
    cmd = [sys.executable, "-m", "coordd", "admin", "create-user", "--data-dir", str(daemon.data_dir)]
    cmd += [
        "--email",
        f"coord-{uuid.uuid4().hex[:6]}@example.com",
        "--role",
        "admin",
        "--role",
        "coordinator",
    ]
    env = {"PATH": os.environ.get("PATH", ""), **FAST_KDF_ENV}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    if database_url:
        env["COORDD_DATABASE_URL"] = database_url
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def open_ceremony(
    s: Session, art: Artifacts, *, verifier: str, database_url: str, turn_s: int = 120, prefix: str = ""
) -> Open:
    admin = create_admin(s.daemon, database_url)
    md = (("authorization", f"Bearer {admin['api_key_secret']}"),)
    now = datetime.now(UTC)
    ceremony = s.stub.CreateCeremony(
        pb.CreateCeremonyRequest(
            title="restart",
            prefix=prefix or f"restart-{uuid.uuid4().hex[:8]}",
            start_time=ts(now + timedelta(hours=1)),
            end_time=ts(now + timedelta(hours=2)),
            timeout=pb.TimeoutConfig(
                policy=pb.TIMEOUT_POLICY_FIXED,
                fixed_timeout=duration_pb2.Duration(seconds=turn_s),
                start_window=duration_pb2.Duration(seconds=turn_s),
                penalty=duration_pb2.Duration(seconds=5),
            ),
            verifier=pb.Verifier(name=verifier),
        ),
        metadata=md,
    ).ceremony
    circuit = s.stub.AddCircuit(
        pb.AddCircuitRequest(
            parent=ceremony.name, display_name="multiplier", max_contribution_size_bytes=1 << 20
        ),
        metadata=md,
    ).circuit
    s.stub.UploadArtifact(artifact_requests(art.r1cs, circuit.name, pb.ARTIFACT_KIND_R1CS), metadata=md)
    s.stub.UploadArtifact(artifact_requests(art.ptau, circuit.name, pb.ARTIFACT_KIND_PTAU), metadata=md)
    genesis = s.stub.UploadGenesis(genesis_requests(art.genesis, circuit.name), metadata=md)
    assert genesis.contribution.state == pb.CONTRIBUTION_STATE_VALID, genesis.contribution.verifier_output
    s.stub.OpenCeremony(pb.OpenCeremonyRequest(name=ceremony.name), metadata=md)
    return Open(ceremony.name, circuit.name, md)


def contributor(s: Session, ceremony: str) -> tuple[tuple[str, str], ...]:
    auth = auth_pb2_grpc.AuthServiceStub(s.channel)
    signed = auth.SignUp(
        auth_pb2.SignUpRequest(email=f"c-{uuid.uuid4().hex[:8]}@example.com", password="contributor password")
    )
    md = (("authorization", f"Bearer {signed.access_token}"),)
    s.stub.JoinCeremony(pb.JoinCeremonyRequest(ceremony=ceremony), metadata=md)
    return md


def contribute(
    tools: Toolchain, s: Session, circuit: str, md: tuple[tuple[str, str], ...], work: Path
) -> tuple[Path, str]:
    """Downloads the latest zkey and makes a real contribution to it: the file and the
    contribution hash snarkjs printed."""
    work.mkdir(parents=True, exist_ok=True)
    previous = work / "previous.zkey"
    previous.write_bytes(
        b"".join(
            p.data
            for p in s.stub.DownloadContribution(pb.DownloadContributionRequest(circuit=circuit), metadata=md)
        )
    )
    mine = work / "mine.zkey"
    out = tools.run(
        tools.snarkjs,
        "zkey",
        "contribute",
        previous,
        mine,
        "--name=restart",
        f"-e={uuid.uuid4().hex}",
        cwd=work,
    )
    return mine, snarkjs_hash(out)


def child_pids(pid: int, needle: str) -> list[int]:
    """Processes started by `pid` whose command line contains `needle` (from /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if needle in text and parent == pid:
            found.append(int(cmdline.parent.name))
    return found


def kill_group(pid: int) -> None:
    """Ends a verifier left running by a SIGKILLed daemon (it has its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, **kw)  # type: ignore[call-overload]
