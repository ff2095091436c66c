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
from coordd_client.transcript import ReceiptError, verify_attestation
from coordd_client.v1 import ceremony_pb2 as pb
from tests.support.process import COORDCTL, Daemon, admin_create_user

pytestmark = pytest.mark.e2e
# A stand-in for `snarkjs zkey contribute`: the previous file plus fresh randomness.
STAND_IN = (
    f"{sys.executable} -c \"import os,sys; d=open(sys.argv[1],'rb').read(); "
    f"open(sys.argv[2],'wb').write(d + os.urandom(32))\" {{in}} {{out}}"
)
# The code under test, when the tests run from a source tree (PYTHONPATH) rather than an install.
_PYTHONPATH = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


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
            verifier=pb.Verifier(name="none"),  # random bytes, not zkeys
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
        env={"PATH": os.environ.get("PATH", ""), "XDG_CONFIG_HOME": str(workdir / "cfg"), **_PYTHONPATH},
    )


def _ctl(daemon: Daemon, key: str, *args: str) -> dict:
    out = subprocess.run(
        [COORDCTL, "--target", daemon.target, "--api-key", key, "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        # Its own config: the coordinator key is pinned there on first use.
        env={
            "PATH": os.environ.get("PATH", ""),
            "XDG_CONFIG_HOME": str(daemon.data_dir.parent / "ctl-config"),
            **_PYTHONPATH,
        },
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
            env={
                "PATH": os.environ.get("PATH", ""),
                "XDG_CONFIG_HOME": str(tmp_path / "ctl-config"),
                **_PYTHONPATH,
            },
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


def test_coordctl_lists_shows_steers_a_ceremony_and_publishes_a_verifiable_attestation(tmp_path):
    daemon = Daemon(tmp_path / "data").wait_ready()
    try:
        coord_key = admin_create_user(daemon, "coord@example.com", "coordinator")["api_key_secret"]
        coordinator = coordd_client.connect(daemon.target, api_key=coord_key)
        ceremony = _ceremony(coordinator, circuits=1, start_in=3600)
        listed = _ctl(daemon, coord_key, "ceremony", "list")["ceremonies"]
        mine = [c for c in listed if c["name"] == ceremony]
        assert mine and mine[0]["verifier"]["unverified"] is True
        shown = _ctl(daemon, coord_key, "ceremony", "show", ceremony)
        assert shown["verifier"]["name"] == "none" and shown["upload_retries"] == 2
        assert _ctl(daemon, coord_key, "ceremony", "open", ceremony)["state"] == "CEREMONY_STATE_OPENED"
        assert _ctl(daemon, coord_key, "ceremony", "pause", ceremony)["state"] == "CEREMONY_STATE_PAUSED"
        assert _ctl(daemon, coord_key, "ceremony", "resume", ceremony)["state"] == "CEREMONY_STATE_OPENED"
        key = admin_create_user(daemon, "p@example.com", "participant")["api_key_secret"]
        proc = _contributor(daemon, key, ceremony, tmp_path / "w")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
        people = _ctl(daemon, coord_key, "ceremony", "participants", ceremony)["participants"]
        assert [p["status"] for p in people] == ["PARTICIPANT_STATUS_DONE"]
        status = _ctl(daemon, coord_key, "ceremony", "status", ceremony)
        assert status["circuits"][0]["valid_contributions"] == 2
        published = _ctl(daemon, key, "ceremony", "attestation", ceremony)
        served = coordinator.ceremony.GetCoordinatorKey(pb.GetCoordinatorKeyRequest())
        signed = verify_attestation(published["attestation"], served.public_key)
        assert [s["index"] for s in signed] == [1] and published["key"] in ("pinned", "first use")
        forged = published["attestation"].replace(signed[0]["hash"][:16], "0" * 16, 1)
        with pytest.raises(ReceiptError):
            verify_attestation(forged, served.public_key)
        # The key pinned on first use is the one transcripts are checked with; a daemon that
        # presents another is refused, unless the key is given explicitly.
        config = daemon.data_dir.parent / "ctl-config" / "coordctl" / "config.json"
        saved = json.loads(config.read_text())
        assert saved["coordinator_keys"][daemon.target] == served.public_key.hex()
        saved["coordinator_keys"][daemon.target] = "11" * 32
        config.write_text(json.dumps(saved))
        refused = subprocess.run(
            [COORDCTL, "--target", daemon.target, "--json", "ceremony", "transcript", ceremony, "--verify"],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "PATH": os.environ.get("PATH", ""),
                "XDG_CONFIG_HOME": str(config.parents[1]),
                **_PYTHONPATH,
            },
        )
        assert refused.returncode == 1 and "pinned on first use" in refused.stdout
        given = _ctl(
            daemon,
            coord_key,
            "ceremony",
            "transcript",
            ceremony,
            "--verify",
            "--public-key",
            served.public_key.hex(),
        )
        assert given["verified"] is True and given["key_source"] == "given"
        coordinator.close()
    finally:
        daemon.stop()
