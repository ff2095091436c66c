"""The active contributor is cleared on every error path, so no queue ever waits forever
(the failure of the KZG sequencer's #140, a deadlock when the active contributor was not
cleared on an error path, and p0tion's queues stuck by a missed timeout), and the wait
estimate a waiting contributor sees is real and only goes down (kzg-ceremony #21).

Each verifier below accepts the genesis and any honest contribution and fails only for a
file containing CRASH, in its own way: an error exit, death by a signal, overrunning its time
limit. The daemon's own verification code failing is injected by replacing `verifier.run`.
After each failure the next contributor holds the turn and the chain goes on."""

from __future__ import annotations

import itertools
import threading

import grpc
import pytest

import coordd.domain.ceremony.verifier as verifier_module
from coordd.domain.ceremony import runner
from coordd.store.ceremony.models import Circuit
from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.helpers import Ceremonies, upload_messages, wait_for
from tests.support.server import ServerHandle, bearer

S = pb.ParticipantStatus
WHEN_CRASH = "sh -c 'if grep -q CRASH \"$0\"; then {}; fi' {{zkey}}"
FAILING = {
    "error-exit": {"command": WHEN_CRASH.format("echo verifier exploded >&2; exit 3"), "timeout_s": 30},
    "killed": {"command": WHEN_CRASH.format("kill -9 $$"), "timeout_s": 30},
    "overruns": {"command": WHEN_CRASH.format("sleep 30"), "timeout_s": 1},
}


@pytest.fixture
def daemon(settings_factory, clock):
    handle = ServerHandle(settings_factory(ceremony_verifiers=FAILING, snarkjs_path="off"), clock)
    try:
        yield handle
    finally:
        handle.stop()


def _holder(circuit: pb.Circuit) -> str:
    return Circuit.get_by_id(circuit.name.split("/")[-1]).current_participant or ""


def _two_waiting(
    server: ServerHandle, verifier: str, **timeout
) -> tuple[Ceremonies, pb.Ceremony, pb.Circuit, str, str]:
    cer = Ceremonies(server)
    ceremony, (circuit,) = cer.open(verifier=pb.Verifier(name=verifier), upload_retries=0, **timeout)
    alice, bob = (server.make_user("participant")[1] for _ in range(2))
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    return cer, ceremony, circuit, alice, bob


def _bob_holds_the_turn_and_the_chain_goes_on(cer, ceremony, circuit, alice, bob) -> None:
    assert cer.me(ceremony, alice).status == S.Value("PARTICIPANT_STATUS_DONE")
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_READY")
    assert _holder(circuit) == cer.me(ceremony, bob).name.split("/")[-1]
    honest = cer.contribute(ceremony, bob)
    assert honest.contribution.state == pb.CONTRIBUTION_STATE_VALID and honest.contribution.index == 1
    assert _holder(circuit) == "", "nobody left: the turn is free, not held by a finished contributor"


@pytest.mark.parametrize(
    ("verifier", "says"),
    [
        ("error-exit", "exit status 3"),
        ("killed", "exit status -9"),
        ("overruns", "did not finish within 1 s"),
    ],
)
def test_a_failing_verifier_clears_the_active_contributor_and_the_next_gets_the_turn(daemon, verifier, says):
    cer, ceremony, circuit, alice, bob = _two_waiting(daemon, verifier)
    data, _ = cer.download(alice, circuit.name)
    failed = cer.upload(alice, circuit.name, data + b"CRASH")
    assert failed.contribution.state == pb.CONTRIBUTION_STATE_INVALID
    assert says in failed.contribution.verifier_output
    assert failed.participant.status == S.Value("PARTICIPANT_STATUS_DONE")
    _bob_holds_the_turn_and_the_chain_goes_on(cer, ceremony, circuit, alice, bob)


def test_the_daemons_own_verification_failing_still_frees_the_turn_within_its_attempts(
    daemon, clock, monkeypatch
):
    cer, ceremony, circuit, alice, bob = _two_waiting(daemon, "error-exit")
    real_run = verifier_module.run
    calls: list[str] = []

    def broken(blobs, job, **kw):
        calls.append(job.contribution_id)
        raise RuntimeError("a bug in the verification code")

    monkeypatch.setattr(verifier_module, "run", broken)
    data, _ = cer.download(alice, circuit.name)
    with pytest.raises(grpc.RpcError) as crashed:
        cer.upload(alice, circuit.name, data + b"mine")
    assert crashed.value.code() != grpc.StatusCode.UNKNOWN
    # The turn is held while the contribution waits for a verdict; each lease that expires
    # without one is another attempt, and after the last the contribution is invalid.
    for _ in range(runner.MAX_ATTEMPTS + 2):
        clock.advance(runner.LEASE_S + 1)
        cer.tick()
        if cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_READY"):
            break
    assert len(calls) == runner.MAX_ATTEMPTS and len(set(calls)) == 1, "each attempt ran, then no more"
    monkeypatch.setattr(verifier_module, "run", real_run)
    listed = cer.transcript(ceremony).circuits[0].contributions
    assert listed[-1].state == pb.CONTRIBUTION_STATE_INVALID
    assert "interrupted" in listed[-1].verifier_output
    _bob_holds_the_turn_and_the_chain_goes_on(cer, ceremony, circuit, alice, bob)


@pytest.mark.parametrize("how", ["hangs up halfway", "sends a chunk at the wrong offset"])
def test_an_upload_that_fails_keeps_the_turn_only_until_its_deadline(daemon, clock, how):
    cer, ceremony, circuit, alice, bob = _two_waiting(daemon, "error-exit", fixed_timeout=60)
    data, _ = cer.download(alice, circuit.name)
    data += b"x" * (256 * 1024)
    messages = upload_messages(circuit.name, data, chunk=64 * 1024)
    if how == "hangs up halfway":
        release = threading.Event()

        def stalls():
            for _ in range(3):
                yield next(messages)
            release.wait(30)

        call = cer.stub.UploadContribution.future(stalls(), metadata=bearer(alice))
        wait_for(lambda: _committed(cer, alice, circuit) > 0)
        call.cancel()
        release.set()
    else:
        header = next(messages)
        bad = pb.UploadContributionRequest(chunk=pb.UploadChunk(offset=12345, data=b"out of place"))
        with pytest.raises(grpc.RpcError) as refused:
            cer.stub.UploadContribution(iter([header, bad]), metadata=bearer(alice))
        assert refused.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)
    # Resumable within the turn: alice still holds it; past its deadline it is bob's.
    assert _holder(circuit) == cer.me(ceremony, alice).name.split("/")[-1]
    clock.advance(61)
    cer.tick()
    assert cer.me(ceremony, alice).status == S.Value("PARTICIPANT_STATUS_TIMEDOUT")
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_READY")
    assert _holder(circuit) == cer.me(ceremony, bob).name.split("/")[-1]
    assert cer.contribute(ceremony, bob).contribution.state == pb.CONTRIBUTION_STATE_VALID


def _committed(cer: Ceremonies, token: str, circuit: pb.Circuit) -> int:
    status = cer.stub.GetUploadStatus(pb.GetUploadStatusRequest(circuit=circuit.name), metadata=bearer(token))
    return status.committed_offset


# -- the wait estimate --------------------------------------------------------------------------


def test_the_wait_estimate_is_present_and_only_goes_down_as_the_queue_moves(daemon, clock):
    """Everyone takes 10 s (of the test's clock): the estimate is the rest of the current
    turn plus one turn per contributor ahead, and never grows as the head moves."""
    cer = Ceremonies(daemon)
    ceremony, (circuit,) = cer.open(verifier=pb.Verifier(name="error-exit"), fixed_timeout=600)
    tokens = [daemon.make_user("participant")[1] for _ in range(5)]
    for token in tokens:
        cer.join(ceremony, token)
    last = tokens[-1]
    seen: list[tuple[int, float]] = []
    for token in tokens[:3]:
        data, _ = cer.download(token, circuit.name)  # the turn's clock starts
        clock.advance(10)
        assert (
            cer.upload(token, circuit.name, data + b"mine").contribution.state == pb.CONTRIBUTION_STATE_VALID
        )
        view = _watch_once(cer, ceremony, last)
        assert view.participant.status == S.Value("PARTICIPANT_STATUS_WAITING")
        assert view.HasField("estimated_wait"), f"position {view.position}: no estimate"
        seen.append((view.position, view.estimated_wait.ToTimedelta().total_seconds()))
    positions = [p for p, _ in seen]
    estimates = [w for _, w in seen]
    assert positions == [3, 2, 1], "a real position: one less each time the head moves"
    # The rest of the current turn (10 s, just begun) plus 10 s per contributor ahead; real
    # milliseconds in the measured turn lengths are tolerated, nothing more.
    assert estimates == pytest.approx([10.0 * p for p in positions], abs=1.0)
    assert all(later <= earlier for earlier, later in itertools.pairwise(estimates))
    # Within a turn the estimate counts down with the clock.
    cer.download(tokens[3], circuit.name)
    clock.advance(4)
    view = _watch_once(cer, ceremony, last)
    assert view.position == 1
    assert view.estimated_wait.ToTimedelta().total_seconds() == pytest.approx(6.0, abs=1.0)


def _watch_once(cer: Ceremonies, ceremony: pb.Ceremony, token: str) -> pb.WatchQueueResponse:
    stream = cer.stub.WatchQueue(pb.WatchQueueRequest(ceremony=ceremony.name), metadata=bearer(token))
    try:
        return next(stream)
    finally:
        stream.cancel()
