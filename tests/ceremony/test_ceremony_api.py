"""An API a coordinator can guess: OpenCeremony, UploadGenesis, WatchQueue's last_contribution;
a file sent again gets its earlier verdict; the time the daemon was down is given back to turns."""

from __future__ import annotations

import time

import grpc

from coordd.domain import ceremony as rules
from coordd.domain.ceremony import deadlines
from coordd.store.ceremony import leases
from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.helpers import Ceremonies, blake, upload_messages
from tests.helpers import rpc_error
from tests.support.server import bearer

S = pb.ParticipantStatus


def _genesis(circuit: str, data: bytes):
    for message in upload_messages(circuit, data):
        if message.WhichOneof("message") == "header":
            yield pb.UploadGenesisRequest(header=message.header)
        else:
            yield pb.UploadGenesisRequest(chunk=message.chunk)


def test_open_ceremony_needs_every_genesis_then_queues_early_joiners(server):
    cer = Ceremonies(server)
    md = bearer(cer.coordinator)
    ceremony = cer.create(start_in=3600)
    first, second = cer.add_circuit(ceremony, "a"), cer.add_circuit(ceremony, "b")
    (alice,) = [server.make_user("participant")[1]]
    cer.join(ceremony, alice)
    opening = pb.OpenCeremonyRequest(name=ceremony.name)
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, cer.stub.OpenCeremony, opening, metadata=md)
    assert failure.reason == "NO_CIRCUITS" or failure.reason == "NO_GENESIS"
    genesis = cer.stub.UploadGenesis(_genesis(first.name, b"genesis one" * 50), metadata=md).contribution
    assert genesis.index == 0 and genesis.state == pb.CONTRIBUTION_STATE_VALID
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, cer.stub.OpenCeremony, opening, metadata=md)
    assert failure.reason == "NO_GENESIS" and "b" in failure.details
    cer.stub.UploadGenesis(_genesis(second.name, b"genesis two" * 50), metadata=md)
    _, stranger = server.make_user("coordinator")
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, cer.stub.OpenCeremony, opening, metadata=bearer(stranger))
    opened = cer.stub.OpenCeremony(opening, metadata=md).ceremony
    assert opened.state == pb.CEREMONY_STATE_OPENED
    assert cer.me(ceremony, alice).status == S.Value("PARTICIPANT_STATUS_READY")
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, cer.stub.OpenCeremony, opening, metadata=md)


def test_upload_genesis_is_for_the_coordinator_only(server):
    cer = Ceremonies(server)
    ceremony = cer.create(start_in=3600)
    circuit = cer.add_circuit(ceremony)
    _, other = server.make_user("coordinator")
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        cer.stub.UploadGenesis,
        _genesis(circuit.name, b"genesis" * 10),
        metadata=bearer(other),
    )


def test_watch_queue_shows_the_callers_last_verified_contribution(server):
    cer = Ceremonies(server)
    ceremony, (_first, _second) = cer.open(circuits=2)
    (alice,) = [server.make_user("participant")[1]]
    cer.join(ceremony, alice)
    stream = cer.stub.WatchQueue(
        pb.WatchQueueRequest(ceremony=ceremony.name), metadata=bearer(alice), timeout=30
    )
    first_message = next(stream)
    assert not first_message.HasField("last_contribution")
    reply = cer.contribute(ceremony, alice)
    for message in stream:
        if message.last_contribution.name == reply.contribution.name:
            assert message.last_contribution.state == pb.CONTRIBUTION_STATE_VALID
            assert message.last_contribution.receipt.signature
            break
    stream.cancel()


def test_the_same_file_sent_again_gets_its_verdict_not_not_your_turn(server):
    cer = Ceremonies(server)
    ceremony, (circuit,) = cer.open()
    (alice,) = [server.make_user("participant")[1]]
    cer.join(ceremony, alice)
    data, _ = cer.download(alice, circuit.name)
    mine = data + b"alice"
    first = cer.upload(alice, circuit.name, mine)
    again = cer.upload(alice, circuit.name, mine)
    assert again.contribution.name == first.contribution.name
    assert again.contribution.state == pb.CONTRIBUTION_STATE_VALID
    other = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, cer.upload, alice, circuit.name, mine + b"2")
    assert other.reason == "NOT_YOUR_TURN"


def test_the_daemons_downtime_is_given_back_to_the_turns_it_interrupted(server):
    cer = Ceremonies(server)
    ceremony, (circuit,) = cer.open(fixed_timeout=60)
    (alice,) = [server.make_user("participant")[1]]
    cer.join(ceremony, alice)
    cer.download(alice, circuit.name)
    before = cer.me(ceremony, alice).deadline.ToDatetime()
    rt = server.rt
    # As after a restart: the deadlines last ran 100 s ago, and this process has not run them.
    with rt.store.write():
        leases.touch_clock(time.time_ns() // 1000 - 100_000_000)
    deadlines._resumed.discard(rt)
    assert rules.fire_deadlines(rt).get("extended") == 1
    after = cer.me(ceremony, alice).deadline.ToDatetime()
    assert 99 <= (after - before).total_seconds() <= 110
    # Once per start: later runs give nothing back.
    assert not rules.fire_deadlines(rt).get("extended")


def test_a_genesis_resent_while_it_is_verified_waits_for_the_same_verdict(server):
    cer = Ceremonies(server)
    ceremony = cer.create(start_in=3600)
    circuit = cer.add_circuit(ceremony)
    data = b"genesis" * 30
    md = bearer(cer.coordinator)
    first = cer.stub.UploadGenesis(_genesis(circuit.name, data), metadata=md).contribution
    assert blake(data).hex() == first.hash_hex
    again = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION, cer.stub.UploadGenesis, _genesis(circuit.name, data), metadata=md
    )
    assert again.reason == "WRONG_INDEX", "a verified genesis is not replaced"


def test_after_close_a_running_turn_still_times_out_and_waiters_never_block_finalization(server, clock):
    """p0tion #236: timeouts stopped once a ceremony closed, and waiting users blocked it."""
    cer = Ceremonies(server)
    ceremony, (circuit,) = cer.open(fixed_timeout=60)
    alice, bob = (server.make_user("participant")[1] for _ in range(2))
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    cer.download(alice, circuit.name)
    md = bearer(cer.coordinator)
    cer.stub.CloseCeremony(pb.CloseCeremonyRequest(name=ceremony.name), metadata=md)
    finalize = pb.FinalizeCircuitRequest(
        circuit=circuit.name, beacon_hash_hex="ab" * 32, beacon_iterations_exponent=10
    )
    busy = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, cer.stub.FinalizeCircuit, finalize, metadata=md)
    assert "turn" in busy.details or busy.reason
    clock.advance(61)
    cer.tick()
    assert cer.me(ceremony, alice).status == S.Value("PARTICIPANT_STATUS_TIMEDOUT")
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_WAITING"), "nobody new is promoted"
    watch = cer.stub.WatchQueue(
        pb.WatchQueueRequest(ceremony=ceremony.name), metadata=bearer(bob), timeout=30
    )
    assert [m.ceremony_state for m in watch] == [pb.CEREMONY_STATE_CLOSED], "the waiter's stream ends"
    reply = cer.stub.FinalizeCircuit(finalize, metadata=md)
    assert reply.participant.status == S.Value("PARTICIPANT_STATUS_FINALIZING")
