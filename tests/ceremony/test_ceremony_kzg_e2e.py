"""The whole of issue 15 in one real ceremony: snarkjs and circom2 from npm, a real `coordd
serve`, contributors signed in with Ethereum, a damaged upload sent again within the turn, an
invalid proof rejected, a SIGKILL of the daemon while a contribution is verified (the verdict
follows the restart), beacon finalization, and offline checks of the final zkey, of the
transcript with the key pinned before the ceremony, and of each published attestation."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import grpc
import pytest

from coordd_client.siwe import address_of, compose, sign
from coordd_client.transcript import attestation, file_hash, verify_attestation, verify_transcript
from coordd_client.v1 import auth_pb2, auth_pb2_grpc
from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.helpers import wait_for
from tests.ceremony.e2e_ceremony.restart import (
    Session,
    child_pids,
    contribute,
    kill_group,
    open_ceremony,
    upload_requests,
    verifier_env,
)
from tests.ceremony.e2e_ceremony.toolchain import build_artifacts, require_toolchain
from tests.ceremony.test_ceremony_restart import _upload_in_background
from tests.support.process import Daemon

pytestmark = pytest.mark.e2e
BEACON = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"


def _siwe(s: Session, key: bytes) -> tuple[tuple[str, str], ...]:
    stub = auth_pb2_grpc.AuthServiceStub(s.channel)
    nonce = stub.CreateSiweNonce(auth_pb2.CreateSiweNonceRequest())
    issued = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = compose(nonce.domain, address_of(key), nonce.uri, nonce.nonce, issued, statement="Contribute")
    signed = stub.SignInWithEthereum(
        auth_pb2.SignInWithEthereumRequest(message=message, signature=sign(message, key))
    )
    return (("authorization", f"Bearer {signed.access_token}"),)


def _me(s: Session, ceremony: str, md) -> pb.Participant:
    return s.stub.GetMyParticipation(pb.GetMyParticipationRequest(ceremony=ceremony), metadata=md).participant


def _turn(s: Session, ceremony: str, md) -> None:
    wait_for(lambda: _me(s, ceremony, md).status == pb.PARTICIPANT_STATUS_READY, timeout=60)


def test_a_siwe_ceremony_survives_damage_forgery_and_a_restart_and_everything_verifies_offline(
    tmp_path, database_url
):
    tools = require_toolchain()
    art = build_artifacts(tools, tmp_path / "setup")
    env = verifier_env(tools)
    if database_url:
        env["COORDD_DATABASE_URL"] = database_url
    data = tmp_path / "data"
    d1 = Daemon(data, env=env).wait_ready()
    s = Session.connect(d1)
    try:
        # Pinned before the ceremony, as a contributor or auditor would (trust on first use).
        pinned = s.stub.GetCoordinatorKey(pb.GetCoordinatorKeyRequest()).public_key
        o = open_ceremony(s, art, verifier="snarkjs-slow", database_url=database_url)
        keys = [os.urandom(32) for _ in range(3)]
        mds = [_siwe(s, key) for key in keys]
        for md in mds:
            s.stub.JoinCeremony(pb.JoinCeremonyRequest(ceremony=o.ceremony), metadata=md)
        names = [_me(s, o.ceremony, md).name for md in mds]
        hashes: dict[str, str] = {}

        # 1. A damaged upload (the bytes do not match the declared hash): sent again, valid.
        _turn(s, o.ceremony, mds[0])
        mine, hashes[names[0]] = contribute(tools, s, o.circuit, mds[0], tmp_path / "a")
        good = list(upload_requests(mine, o.circuit))
        good[0].header.blake2b_512 = bytes(64)
        damaged = s.stub.UploadContribution(iter(good), metadata=mds[0])
        assert damaged.contribution.transport_fault
        assert damaged.participant.status == pb.PARTICIPANT_STATUS_CONTRIBUTING
        resent = s.stub.UploadContribution(upload_requests(mine, o.circuit), metadata=mds[0])
        assert resent.contribution.state == pb.CONTRIBUTION_STATE_VALID, resent.contribution.verifier_output

        # 2. An invalid proof: rejected by snarkjs, and the turn ends.
        _turn(s, o.ceremony, mds[1])
        forged = tmp_path / "forged.zkey"
        forged.write_bytes(os.urandom(mine.stat().st_size))
        rejected = s.stub.UploadContribution(upload_requests(forged, o.circuit), metadata=mds[1])
        assert rejected.contribution.state == pb.CONTRIBUTION_STATE_INVALID
        assert not rejected.contribution.transport_fault
        assert rejected.participant.status == pb.PARTICIPANT_STATUS_DONE

        # 3. The daemon is SIGKILLed while the third contribution is verified.
        _turn(s, o.ceremony, mds[2])
        third, hashes[names[2]] = contribute(tools, s, o.circuit, mds[2], tmp_path / "c")
        thread, outcome = _upload_in_background(s, third, o.circuit, mds[2])
        (verifier,) = wait_for(lambda: child_pids(d1.proc.pid, "sleep 2 &&"), timeout=60)
        d1.proc.kill()
        d1.proc.wait(10)
        kill_group(verifier)
        thread.join(30)
        assert outcome == [grpc.StatusCode.UNAVAILABLE]
    finally:
        s.close()
        d1.stop()
    d2 = Daemon(data, env=env).wait_ready()
    s2 = Session.connect(d2)
    try:
        after = s2.stub.UploadContribution(upload_requests(third, o.circuit), metadata=mds[2], timeout=120)
        assert after.contribution.state == pb.CONTRIBUTION_STATE_VALID, after.contribution.verifier_output
        assert after.contribution.index == 2

        # 4. Finalization with a beacon.
        md = o.coordinator
        s2.stub.CloseCeremony(pb.CloseCeremonyRequest(name=o.ceremony), metadata=md)
        s2.stub.FinalizeCircuit(
            pb.FinalizeCircuitRequest(
                circuit=o.circuit, beacon_hash_hex=BEACON, beacon_iterations_exponent=10
            ),
            metadata=md,
        )
        latest = tmp_path / "latest.zkey"
        latest.write_bytes(
            b"".join(
                p.data
                for p in s2.stub.DownloadContribution(
                    pb.DownloadContributionRequest(circuit=o.circuit), metadata=md
                )
            )
        )
        final = tmp_path / "final.zkey"
        tools.run(
            tools.snarkjs, "zkey", "beacon", latest, final, BEACON, "10", "-n=Final beacon", cwd=tmp_path
        )
        finished = s2.stub.UploadContribution(upload_requests(final, o.circuit), metadata=md, timeout=120)
        assert finished.contribution.final and finished.contribution.state == pb.CONTRIBUTION_STATE_VALID
        done = s2.stub.FinalizeCeremony(pb.FinalizeCeremonyRequest(name=o.ceremony), metadata=md)
        assert done.ceremony.state == pb.CEREMONY_STATE_FINALIZED

        # 5. Offline: the final zkey, the transcript with the pinned key, each attestation.
        tools.run(tools.snarkjs, "zkey", "verify", art.r1cs, art.ptau, final, cwd=tmp_path)
        transcript = s2.stub.GetTranscript(pb.GetTranscriptRequest(ceremony=o.ceremony))
        assert not transcript.unverified
        report = verify_transcript(transcript, pinned)
        assert report.ok, report.problems
        assert (report.valid, report.invalid) == (4, 2)  # genesis, two, final; damaged and forged
        assert report.heads[o.circuit] == file_hash(str(final))
        assert not verify_transcript(transcript, os.urandom(32)).ok, "another key does not verify"
        for name in (names[0], names[2]):
            text = attestation(transcript, name, pinned)
            (signed,) = [f for f in verify_attestation(text, pinned) if f["valid"]]
            assert signed["contribution_hash"] == hashes[name], "the hash snarkjs printed to the contributor"
            assert signed["verifier"] == "snarkjs-slow"
    finally:
        s2.close()
        d2.stop()
