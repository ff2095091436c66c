"""coordctl ceremony contribute + transcript --verify against a real daemon, with a stand-in
contribution command (the built-in verifier checks size and BLAKE2b-512)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

import coordd_client
from coordd_client.v1 import ceremony_pb2 as pb
from tests.support.process import COORDCTL, Daemon, admin_create_user

pytestmark = pytest.mark.e2e
# A stand-in for `snarkjs zkey contribute`: the previous file plus fresh randomness.
STAND_IN = (
    f"{sys.executable} -c \"import os,sys; d=open(sys.argv[1],'rb').read(); "
    f"open(sys.argv[2],'wb').write(d + os.urandom(32))\" {{in}} {{out}}"
)


def _stamp(seconds: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return out


def _genesis(circuit: str, data: bytes):
    yield pb.UploadContributionRequest(
        header=pb.UploadHeader(
            circuit=circuit,
            size_bytes=len(data),
            blake2b_512=hashlib.blake2b(data, digest_size=64).digest(),
            index=0,
        )
    )
    yield pb.UploadContributionRequest(chunk=pb.UploadChunk(offset=0, data=data))


def _ceremony(client, circuits: int, start_in: float) -> str:
    config = pb.TimeoutConfig(
        policy=pb.TIMEOUT_POLICY_FIXED,
        fixed_timeout=duration_pb2.Duration(seconds=60),
        start_window=duration_pb2.Duration(seconds=30),
        penalty=duration_pb2.Duration(seconds=5),
    )
    ceremony = client.ceremony.CreateCeremony(
        pb.CreateCeremonyRequest(
            title="CLI ceremony",
            prefix=f"cli-{uuid.uuid4().hex[:8]}",
            start_time=_stamp(start_in),
            end_time=_stamp(3600),
            timeout=config,
        )
    ).ceremony
    for i in range(circuits):
        circuit = client.ceremony.AddCircuit(
            pb.AddCircuitRequest(parent=ceremony.name, display_name=f"c{i}")
        ).circuit
        client.ceremony.UploadContribution(_genesis(circuit.name, os.urandom(4096)))
    return ceremony.name


def _contributor(daemon: Daemon, key: str, ceremony: str, workdir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            COORDCTL,
            "--target",
            daemon.target,
            "--api-key",
            key,
            "--json",
            "ceremony",
            "contribute",
            ceremony,
            "--contribute-cmd",
            STAND_IN,
            "--workdir",
            str(workdir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "XDG_CONFIG_HOME": str(workdir / "cfg")},
    )


def _ctl(daemon: Daemon, key: str, *args: str) -> dict:
    out = subprocess.run(
        [COORDCTL, "--target", daemon.target, "--api-key", key, "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ.get("PATH", "")},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_a_whole_ceremony_with_coordctl_only(tmp_path):
    """Coordinator: create, add circuits, close, finalize with a beacon. Two contributors
    finish every circuit. The transcript verifies offline."""
    daemon = Daemon(tmp_path / "data").wait_ready()
    try:
        coordinator = admin_create_user(daemon, "coord@example.com", "coordinator")["api_key_secret"]
        ceremony = _ctl(
            daemon,
            coordinator,
            "ceremony",
            "create",
            "--title",
            "CLI",
            "--prefix",
            "cli-1",
            "--start-in",
            "3600",
            "--turn-timeout",
            "60",
            "--verifier",
            "none",
        )["name"]
        for i in range(2):
            genesis = tmp_path / f"genesis{i}.zkey"
            genesis.write_bytes(os.urandom(4096))
            added = _ctl(
                daemon,
                coordinator,
                "ceremony",
                "add-circuit",
                ceremony,
                "--name",
                f"c{i}",
                "--genesis",
                str(genesis),
            )
            assert added["genesis"] == "valid"
        # Circuits are in: open now instead of at the scheduled time.
        assert "start_time" in _ctl(daemon, coordinator, "ceremony", "update", ceremony, "--start-in", "0")
        keys = [
            admin_create_user(daemon, f"p{i}@example.com", "participant")["api_key_secret"] for i in range(2)
        ]
        procs = [_contributor(daemon, key, ceremony, tmp_path / f"w{i}") for i, key in enumerate(keys)]
        outputs = [p.communicate(timeout=120) for p in procs]
        for proc, (out, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, out + err
            events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            valid = [e for e in events if e["event"] == "contribution valid"]
            assert len(valid) == 2, events
            assert all(e["receipt"]["valid"] for e in valid)
            assert events[-1] == {"event": "done", "receipts": 2}
        assert _ctl(daemon, coordinator, "ceremony", "close", ceremony)["state"] == "CEREMONY_STATE_CLOSED"
        beacon = (
            f"{sys.executable} -c \"import sys; data = open(sys.argv[1], 'rb').read(); "
            f"open(sys.argv[2], 'wb').write(data + bytes.fromhex(sys.argv[3]))\" {{in}} {{out}} {{beacon}}"
        )
        finalized = _ctl(
            daemon,
            coordinator,
            "ceremony",
            "finalize",
            ceremony,
            "--beacon",
            "ab" * 32,
            "--beacon-cmd",
            beacon,
            "--workdir",
            str(tmp_path / "final"),
        )
        assert finalized["state"] == "CEREMONY_STATE_FINALIZED"
        verified = subprocess.run(
            [COORDCTL, "--target", daemon.target, "--json", "ceremony", "transcript", ceremony, "--verify"],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": os.environ.get("PATH", "")},
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        report = json.loads(verified.stdout)
        assert report["verified"] is True
        assert report["valid"] == 2 * (1 + 2 + 1)  # genesis, two contributions, the final one; per circuit
    finally:
        daemon.stop()


def test_ctrl_c_while_waiting_leaves_the_ceremony(tmp_path):
    daemon = Daemon(tmp_path / "data").wait_ready()
    try:
        coordinator = coordd_client.connect(
            daemon.target,
            api_key=admin_create_user(daemon, "coord@example.com", "coordinator")["api_key_secret"],
        )
        ceremony = _ceremony(coordinator, circuits=1, start_in=3600)  # not open yet: everyone waits
        proc = _contributor(
            daemon,
            admin_create_user(daemon, "p@example.com", "participant")["api_key_secret"],
            ceremony,
            tmp_path / "w",
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listed = coordinator.ceremony.ListParticipants(pb.ListParticipantsRequest(parent=ceremony))
            if listed.participants:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, out + err
        assert '"left the ceremony"' in out
        participant = coordinator.ceremony.ListParticipants(
            pb.ListParticipantsRequest(parent=ceremony)
        ).participants[0]
        assert participant.status == pb.PARTICIPANT_STATUS_DONE
        coordinator.close()
    finally:
        daemon.stop()
