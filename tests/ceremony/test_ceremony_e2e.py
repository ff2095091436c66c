"""A real Groth16 phase-2 ceremony: snarkjs and circom2 from npm, a real `coordd serve`,
three contributor processes (one uploading garbage), a beacon, and offline checks."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from coordd_client.transcript import file_hash, verify_transcript
from coordd_client.v1 import ceremony_pb2 as pb
from coordd_client.v1 import ceremony_pb2_grpc
from tests.ceremony.e2e_ceremony.toolchain import build_artifacts, require_toolchain
from tests.support.process import COORDCTL, Daemon

pytestmark = pytest.mark.e2e

CONTRIBUTOR = Path(__file__).parent / "e2e_ceremony" / "contributor.py"
BEACON = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"


def _admin_secret(daemon: Daemon) -> str:
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
            "coordinator@example.com",
            "--role",
            "admin",
            "--role",
            "coordinator",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "COORDD_ARGON2_MEMORY_KIB": "8",
            "COORDD_ARGON2_TIME_COST": "1",
            "COORDD_ARGON2_PARALLELISM": "1",
            "PATH": "/usr/bin:/bin",
        },
        check=False,
    )
    assert created.returncode == 0, created.stderr
    return json.loads(created.stdout)["api_key_secret"]


def _ts(dt: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt)
    return out


def _dur(seconds: float) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(seconds))


def _upload(path: Path, circuit: str, chunk: int = 16 * 1024, **header_extra):
    data = path.read_bytes()
    header = pb.UploadHeader(
        circuit=circuit, size_bytes=len(data), blake2b_512=hashlib.blake2b(data, digest_size=64).digest()
    )
    for key, value in header_extra.items():
        setattr(header, key, value)
    yield header
    for offset in range(0, len(data), chunk):
        yield pb.UploadChunk(offset=offset, data=data[offset : offset + chunk])


def _contribution_stream(path: Path, circuit: str, **extra):
    for part in _upload(path, circuit, **extra):
        if isinstance(part, pb.UploadHeader):
            yield pb.UploadContributionRequest(header=part)
        else:
            yield pb.UploadContributionRequest(chunk=part)


def _artifact_stream(path: Path, circuit: str, kind: int):
    for part in _upload(path, circuit):
        if isinstance(part, pb.UploadHeader):
            yield pb.UploadArtifactRequest(header=part, kind=kind)
        else:
            yield pb.UploadArtifactRequest(chunk=part)


def test_a_real_snarkjs_ceremony_end_to_end(tmp_path):
    tools = require_toolchain()
    art = build_artifacts(tools, tmp_path / "setup")
    daemon = Daemon(tmp_path / "data").wait_ready()
    contributors: list[subprocess.Popen[str]] = []
    try:
        secret = _admin_secret(daemon)
        md = (("authorization", f"Bearer {secret}"),)
        channel = grpc.insecure_channel(daemon.target)
        stub = ceremony_pb2_grpc.CeremonyServiceStub(channel)
        verifier = f"{shlex.quote(str(tools.snarkjs))} zkey verify {{r1cs}} {{ptau}} {{zkey}}"
        now = datetime.now(UTC)
        ceremony = stub.CreateCeremony(
            pb.CreateCeremonyRequest(
                title="Multiplier phase 2",
                prefix="multiplier-e2e",
                # Opens once its circuit is ready (below): the daemon's scheduler must not open it first.
                start_time=_ts(now + timedelta(hours=1)),
                end_time=_ts(now + timedelta(hours=2)),
                timeout=pb.TimeoutConfig(
                    policy=pb.TIMEOUT_POLICY_FIXED,
                    fixed_timeout=_dur(180),
                    start_window=_dur(120),
                    penalty=_dur(5),
                ),
                verifier=pb.Verifier(command=verifier, timeout=_dur(120)),
            ),
            metadata=md,
        ).ceremony
        circuit = stub.AddCircuit(
            pb.AddCircuitRequest(
                parent=ceremony.name, display_name="multiplier", max_contribution_size_bytes=1 << 20
            ),
            metadata=md,
        ).circuit
        stub.UploadArtifact(_artifact_stream(art.r1cs, circuit.name, pb.ARTIFACT_KIND_R1CS), metadata=md)
        stub.UploadArtifact(_artifact_stream(art.ptau, circuit.name, pb.ARTIFACT_KIND_PTAU), metadata=md)
        genesis = stub.UploadContribution(
            _contribution_stream(art.genesis, circuit.name, index=0), metadata=md
        )
        assert genesis.contribution.state == pb.CONTRIBUTION_STATE_VALID, genesis.contribution.verifier_output
        stub.UpdateCeremony(
            pb.UpdateCeremonyRequest(
                ceremony=pb.Ceremony(name=ceremony.name, start_time=_ts(datetime.now(UTC))),
                update_mask=field_mask_pb2.FieldMask(paths=["start_time"]),
            ),
            metadata=md,
        )

        for i, bad in enumerate((False, True, False)):
            cmd = [
                sys.executable,
                str(CONTRIBUTOR),
                "--target",
                daemon.target,
                "--ceremony",
                ceremony.name,
                "--snarkjs",
                str(tools.snarkjs),
                "--workdir",
                str(tmp_path / f"contributor-{i}"),
            ]
            contributors.append(
                subprocess.Popen(
                    [*cmd, "--bad"] if bad else cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )
        # A fourth contributor is coordctl as a person runs it: sign up, then `ceremony contribute`
        # with its default command, the real `snarkjs zkey contribute` found on PATH.
        home = tmp_path / "coordctl-home"
        ctl_env = {
            "PATH": f"{tools.snarkjs.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "XDG_CONFIG_HOME": str(home),
            "COORDCTL_PASSWORD": "coordctl contributor",
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
        }
        signed = subprocess.run(
            [COORDCTL, "--target", daemon.target, "signup", "--email", "ctl@example.com"],
            capture_output=True,
            text=True,
            timeout=60,
            env=ctl_env,
        )
        assert signed.returncode == 0, signed.stderr
        ctl = subprocess.Popen(
            [COORDCTL, "--json", "ceremony", "contribute", ceremony.name, "--workdir", str(tmp_path / "ctl")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ctl_env,
        )
        contributors.append(ctl)
        ctl_out, ctl_err = ctl.communicate(timeout=240)
        assert ctl.returncode == 0, f"coordctl contribute failed:\n{ctl_out}\n{ctl_err}"
        ctl_events = [json.loads(line) for line in ctl_out.splitlines() if line.startswith("{")]
        assert [e["event"] for e in ctl_events].count("contribution valid") == 1, ctl_events
        results = []
        for proc in contributors[:3]:
            out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, f"contributor failed:\n{out}\n{err}\n{daemon.log()[-3000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
        states = sorted(r["state"] for r in results)
        assert states == [
            "CONTRIBUTION_STATE_INVALID",
            "CONTRIBUTION_STATE_VALID",
            "CONTRIBUTION_STATE_VALID",
        ]
        assert all(r["final_status"] == "PARTICIPANT_STATUS_DONE" for r in results)
        bad_result = results[1]
        assert bad_result["state"] == "CONTRIBUTION_STATE_INVALID" and "exit status" in bad_result["output"]
        script_indexes = {r["index"] for r in results if r["state"] == "CONTRIBUTION_STATE_VALID"}
        assert len(script_indexes) == 2 and script_indexes < {1, 2, 3}  # coordctl holds the third

        # The coordinator closes, applies the beacon to the latest valid zkey and uploads it.
        stub.CloseCeremony(pb.CloseCeremonyRequest(name=ceremony.name), metadata=md)
        stub.FinalizeCircuit(
            pb.FinalizeCircuitRequest(
                circuit=circuit.name, beacon_hash_hex=BEACON, beacon_iterations_exponent=10
            ),
            metadata=md,
        )
        latest = tmp_path / "latest.zkey"
        latest.write_bytes(
            b"".join(
                p.data
                for p in stub.DownloadContribution(
                    pb.DownloadContributionRequest(circuit=circuit.name), metadata=md
                )
            )
        )
        final = tmp_path / "final.zkey"
        tools.run(
            tools.snarkjs, "zkey", "beacon", latest, final, BEACON, "10", "-n=Final beacon", cwd=tmp_path
        )
        finished = stub.UploadContribution(_contribution_stream(final, circuit.name), metadata=md)
        assert finished.contribution.final
        assert finished.contribution.state == pb.CONTRIBUTION_STATE_VALID, (
            finished.contribution.verifier_output
        )
        done = stub.FinalizeCeremony(pb.FinalizeCeremonyRequest(name=ceremony.name), metadata=md)
        assert done.ceremony.state == pb.CEREMONY_STATE_FINALIZED

        # Offline: the final zkey verifies with snarkjs, and the transcript with the client package.
        tools.run(tools.snarkjs, "zkey", "verify", art.r1cs, art.ptau, final, cwd=tmp_path)
        key = stub.GetCoordinatorKey(pb.GetCoordinatorKeyRequest())
        anonymous = ceremony_pb2_grpc.CeremonyServiceStub(channel)
        transcript = anonymous.GetTranscript(pb.GetTranscriptRequest(ceremony=ceremony.name))
        report = verify_transcript(transcript, key.public_key)
        assert report.ok, report.problems
        assert (report.valid, report.invalid, report.receipts) == (5, 1, 6)
        checked = subprocess.run(
            [
                COORDCTL,
                "--target",
                daemon.target,
                "--json",
                "ceremony",
                "transcript",
                ceremony.name,
                "--verify",
                "--key-id",
                key.key_id,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=ctl_env,
        )
        assert checked.returncode == 0 and json.loads(checked.stdout)["verified"] is True, checked.stdout
        assert report.heads[circuit.name] == file_hash(str(final))
        channel.close()
    finally:
        for proc in contributors:
            if proc.poll() is None:
                proc.kill()
        daemon.stop()
