"""Restarts never stall a queue (p0tion #297/#363/#236/#131, KZG sequencer #140): a real
`coordd serve` with a real snarkjs verifier is stopped (SIGKILL, or SIGTERM as any deploy does)
while a contribution is verified, or while a contributor uploads; after the restart the
verdict comes within the verifier's own time and a few seconds, the contributor keeps the
turn the restart interrupted, and its upload resumes at the committed offset. Both backends.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from coordd.domain.ceremony.runner import LEASE_S
from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.helpers import wait_for
from tests.ceremony.e2e_ceremony.restart import (
    Session,
    child_pids,
    contribute,
    contributor,
    kill_group,
    open_ceremony,
    upload_requests,
    verifier_env,
)
from tests.ceremony.e2e_ceremony.toolchain import build_artifacts, require_toolchain
from tests.support.process import Daemon

pytestmark = pytest.mark.e2e

# "A few seconds" beyond the verifier's own time: the lease of a killed process, the
# scheduler's one-second tick, and a loaded 2-core machine.
SLACK_S = LEASE_S + 10


@pytest.fixture(scope="module")
def snark(tmp_path_factory):
    tools = require_toolchain()
    return tools, build_artifacts(tools, tmp_path_factory.mktemp("setup"))


def _start(data: Path, tools, database_url: str) -> Daemon:
    env = verifier_env(tools)
    if database_url:
        env["COORDD_DATABASE_URL"] = database_url
    return Daemon(data, env=env).wait_ready()


def _status(s: Session, ceremony: str, md) -> pb.Participant:
    return s.stub.GetMyParticipation(pb.GetMyParticipationRequest(ceremony=ceremony), metadata=md).participant


def _ready(s: Session, ceremony: str, md) -> None:
    wait_for(lambda: _status(s, ceremony, md).status == pb.PARTICIPANT_STATUS_READY, timeout=30)


def _upload_in_background(s: Session, mine: Path, circuit: str, md) -> tuple[threading.Thread, list]:
    outcome: list = []

    def upload() -> None:
        try:
            outcome.append(
                s.stub.UploadContribution(upload_requests(mine, circuit), metadata=md, timeout=120)
            )
        except grpc.RpcError as exc:
            outcome.append(exc.code())

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    return thread, outcome


def _verdict_after_restart(s2: Session, o, md, mine: Path, snarkjs_hash: str, restarted: float) -> None:
    """The contributor sends the same file again, as any client retrying would: the answer is
    the verdict of the verification the restart resumed, not NOT_YOUR_TURN."""
    reply = s2.stub.UploadContribution(upload_requests(mine, o.circuit), metadata=md, timeout=120)
    waited = time.monotonic() - restarted
    c = reply.contribution
    assert c.state == pb.CONTRIBUTION_STATE_VALID, c.verifier_output
    assert c.index == 1 and c.verifier == "snarkjs-slow"
    assert c.contribution_hash_hex == snarkjs_hash, "the receipt names the hash snarkjs printed"
    assert reply.participant.status == pb.PARTICIPANT_STATUS_DONE
    verifier_s = c.verification_time.ToTimedelta().total_seconds()
    assert waited < verifier_s + SLACK_S, f"verdict after {waited:.1f} s, verifier took {verifier_s:.1f} s"
    # WatchQueue shows the same verdict as the caller's last contribution.
    first = next(iter(s2.stub.WatchQueue(pb.WatchQueueRequest(ceremony=o.ceremony), metadata=md, timeout=30)))
    assert first.last_contribution.name == c.name
    assert first.last_contribution.state == pb.CONTRIBUTION_STATE_VALID
    entries = s2.stub.GetTranscript(pb.GetTranscriptRequest(ceremony=o.ceremony)).circuits[0].contributions
    assert [(e.index, e.state) for e in entries] == [
        (0, pb.CONTRIBUTION_STATE_VALID),
        (1, pb.CONTRIBUTION_STATE_VALID),
    ]


def _during_verification(snark, tmp_path, database_url, stop) -> None:
    tools, art = snark
    data = tmp_path / "data"
    d1 = _start(data, tools, database_url)
    s = Session.connect(d1)
    thread = None
    try:
        o = open_ceremony(s, art, verifier="snarkjs-slow", database_url=database_url)
        md = contributor(s, o.ceremony)
        _ready(s, o.ceremony, md)
        mine, snarkjs_hash = contribute(tools, s, o.circuit, md, tmp_path / "c")
        thread, outcome = _upload_in_background(s, mine, o.circuit, md)
        (verifier,) = wait_for(lambda: child_pids(d1.proc.pid, "sleep 2 &&"), timeout=60)
        stop(d1, verifier)
        thread.join(30)
        assert outcome == [grpc.StatusCode.UNAVAILABLE]
    finally:
        s.close()
        d1.stop()
    d2 = _start(data, tools, database_url)
    restarted = time.monotonic()
    s2 = Session.connect(d2)
    try:
        assert _status(s2, o.ceremony, md).status == pb.PARTICIPANT_STATUS_CONTRIBUTED
        _verdict_after_restart(s2, o, md, mine, snarkjs_hash, restarted)
    finally:
        s2.close()
        d2.stop()


def test_a_sigkill_during_verification_is_verified_again_at_once_after_the_restart(
    snark, tmp_path, database_url
):
    def kill(daemon: Daemon, verifier: int) -> None:
        daemon.proc.kill()
        daemon.proc.wait(10)
        kill_group(verifier)  # a SIGKILLed daemon cannot take its verifier with it

    _during_verification(snark, tmp_path, database_url, kill)


def test_a_sigterm_during_verification_stops_cleanly_and_the_verdict_follows_the_restart(
    snark, tmp_path, database_url
):
    def terminate(daemon: Daemon, verifier: int) -> None:
        assert daemon.terminate(timeout=30) == 0
        log = daemon.log()
        # JSON logging: no plain-text traceback on the way out.
        assert "Task exception was never retrieved" not in log
        assert "Future exception was never retrieved" not in log
        assert "Traceback" not in log, log[-3000:]
        assert not child_pids(daemon.proc.pid, "sleep 2 &&")
        kill_group(verifier)

    _during_verification(snark, tmp_path, database_url, terminate)


def test_a_contributor_keeps_the_turn_a_restart_interrupted_and_resumes_its_upload(
    snark, tmp_path, database_url
):
    tools, art = snark
    data = tmp_path / "data"
    d1 = _start(data, tools, database_url)
    s = Session.connect(d1)
    release = threading.Event()
    try:
        o = open_ceremony(s, art, verifier="snarkjs-slow", database_url=database_url, turn_s=15)
        md = contributor(s, o.ceremony)
        _ready(s, o.ceremony, md)
        mine, _ = contribute(tools, s, o.circuit, md, tmp_path / "c")
        me = _status(s, o.ceremony, md)
        assert me.status == pb.PARTICIPANT_STATUS_CONTRIBUTING
        deadline = me.deadline.ToDatetime(UTC)

        def half_then_wait():
            messages = list(upload_requests(mine, o.circuit, chunk=1024))
            yield from messages[:3]  # the header and two of the three chunks
            release.wait(60)

        outcome: list = []

        def upload():
            try:
                s.stub.UploadContribution(half_then_wait(), metadata=md, timeout=120)
            except grpc.RpcError as exc:
                outcome.append(exc.code())

        thread = threading.Thread(target=upload, daemon=True)
        thread.start()
        status = pb.GetUploadStatusRequest(circuit=o.circuit)
        wait_for(
            lambda: s.stub.GetUploadStatus(status, metadata=md).committed_offset == 2048,
            timeout=30,
        )
        d1.proc.kill()
        d1.proc.wait(10)
        release.set()
        thread.join(30)
    finally:
        release.set()
        s.close()
        d1.stop()
    # Down past the end of the turn it interrupted.
    time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + 2)
    d2 = _start(data, tools, database_url)
    s2 = Session.connect(d2)
    try:
        time.sleep(2)  # the deadlines task has run since the restart
        me = _status(s2, o.ceremony, md)
        assert me.status == pb.PARTICIPANT_STATUS_CONTRIBUTING, "the restart did not cost the turn"
        assert me.deadline.ToDatetime(UTC) > datetime.now(UTC)
        committed = s2.stub.GetUploadStatus(pb.GetUploadStatusRequest(circuit=o.circuit), metadata=md)
        assert committed.committed_offset == 2048 and committed.size_bytes == mine.stat().st_size
        reply = s2.stub.UploadContribution(
            upload_requests(mine, o.circuit, chunk=1024, start=2048), metadata=md, timeout=120
        )
        assert reply.contribution.state == pb.CONTRIBUTION_STATE_VALID, reply.contribution.verifier_output
        assert reply.participant.status == pb.PARTICIPANT_STATUS_DONE
    finally:
        s2.close()
        d2.stop()
