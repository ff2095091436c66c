"""A real `coordd serve` stopped (SIGTERM) while an external verifier runs: the verifier is
killed instead of holding the daemon's exit for its whole time limit, and no verdict is
recorded (the contribution is verified again after a restart)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from coordd_client.v1 import ceremony_pb2 as pb
from coordd_client.v1 import ceremony_pb2_grpc
from tests.ceremony.e2e_ceremony.helpers import wait_for
from tests.support.process import Daemon

pytestmark = pytest.mark.e2e


def _child_pid(pid: int, needle: str) -> int | None:
    """The pid of a process started by `pid` whose command line contains `needle` (from /proc)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if needle in text and parent == pid:
            return int(cmdline.parent.name)
    return None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _ts(dt: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt)
    return out


def test_sigterm_during_a_long_verification_kills_the_verifier_and_exits(tmp_path):
    daemon = Daemon(tmp_path / "data").wait_ready()
    try:
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "coordd",
                "admin",
                "create-user",
                "--data-dir",
                str(daemon.data_dir),
                "--email",
                "admin@example.com",
                "--role",
                "admin",
                "--role",
                "coordinator",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={
                "COORDD_ARGON2_MEMORY_KIB": "8",
                "COORDD_ARGON2_TIME_COST": "1",
                "COORDD_ARGON2_PARALLELISM": "1",
                "PATH": "/usr/bin:/bin",
            },
        )
        assert created.returncode == 0, created.stderr
        md = (("authorization", f"Bearer {json.loads(created.stdout)['api_key_secret']}"),)
        channel = grpc.insecure_channel(daemon.target)
        stub = ceremony_pb2_grpc.CeremonyServiceStub(channel)
        now = datetime.now(UTC)
        ceremony = stub.CreateCeremony(
            pb.CreateCeremonyRequest(
                title="slow",
                prefix="slow-shutdown",
                start_time=_ts(now + timedelta(hours=1)),
                end_time=_ts(now + timedelta(hours=2)),
                timeout=pb.TimeoutConfig(
                    policy=pb.TIMEOUT_POLICY_FIXED, fixed_timeout=duration_pb2.Duration(seconds=60)
                ),
                verifier=pb.Verifier(
                    command="sh -c 'sleep 300' {zkey}", timeout=duration_pb2.Duration(seconds=600)
                ),
            ),
            metadata=md,
        ).ceremony
        circuit = stub.AddCircuit(
            pb.AddCircuitRequest(parent=ceremony.name, display_name="c"), metadata=md
        ).circuit
        data = b"genesis" * 100
        header = pb.UploadHeader(
            circuit=circuit.name,
            size_bytes=len(data),
            blake2b_512=hashlib.blake2b(data, digest_size=64).digest(),
            index=0,
        )
        outcome: list = []

        def upload() -> None:
            try:
                stub.UploadContribution(
                    iter(
                        [
                            pb.UploadContributionRequest(header=header),
                            pb.UploadContributionRequest(chunk=pb.UploadChunk(offset=0, data=data)),
                        ]
                    ),
                    metadata=md,
                )
                outcome.append("returned")
            except grpc.RpcError as exc:
                outcome.append(exc.code())

        thread = threading.Thread(target=upload, daemon=True)
        thread.start()
        verifier = wait_for(lambda: _child_pid(daemon.proc.pid, "sleep 300"), timeout=30)
        # Without killing the verifier, the exit would wait for it (300 s) and this would time out.
        assert daemon.terminate(timeout=30) == 0
        thread.join(10)
        assert outcome and outcome[0] != "returned"
        assert not _alive(verifier), "the verifier was killed, not left behind"
        channel.close()
    finally:
        daemon.stop()
