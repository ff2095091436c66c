"""CeremonyService on SQLite and on PostgreSQL + Redis: state machines, queues, timeouts,
uploads, verification, transcript and finalization."""

from __future__ import annotations

import threading
from datetime import UTC

import grpc
import pytest
from google.protobuf import field_mask_pb2

from coordd.api import ceremony as ceremony_api
from coordd.core.principal import Principal
from coordd.domain import ceremony as rules
from coordd.store.ceremony.models import Circuit, Participant
from coordd_client.transcript import verify_transcript
from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.helpers import Ceremonies, blake, dur, stamp, upload_messages, wait_for
from tests.helpers import rpc_error
from tests.support.server import bearer

S = pb.ParticipantStatus


@pytest.fixture
def cer(server):
    return Ceremonies(server)


def _users(server, n):
    return [server.make_user("participant")[1] for _ in range(n)]


# -- ceremonies ------------------------------------------------------------------------------


def test_create_needs_the_coordinator_role_and_valid_fields(server, cer):
    _, participant = server.make_user("participant")
    failure = rpc_error(grpc.StatusCode.PERMISSION_DENIED, cer.create, participant)
    assert failure.reason == "ROLE_REQUIRED"
    bad = pb.CreateCeremonyRequest(
        title="",
        prefix="Bad Prefix",
        start_time=stamp(server, 100),
        end_time=stamp(server, 50),
        timeout=pb.TimeoutConfig(policy=pb.TIMEOUT_POLICY_DYNAMIC),
        verifier=pb.Verifier(command="snarkjs zkey verify {nope}"),
    )
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, cer.stub.CreateCeremony, bad, metadata=bearer(cer.coordinator)
    )
    assert {"title", "prefix", "end_time", "timeout.dynamic_floor", "verifier.command"} <= set(
        failure.violations
    )
    assert not cer.stub.ListCeremonies(pb.ListCeremoniesRequest(), metadata=bearer(participant)).ceremonies


def test_an_external_verifier_needs_an_admin_and_prefixes_are_unique(server, cer):
    request = pb.CreateCeremonyRequest(
        title="t",
        prefix="dup-prefix",
        start_time=stamp(server, 10),
        end_time=stamp(server, 100),
        timeout=pb.TimeoutConfig(policy=pb.TIMEOUT_POLICY_FIXED, fixed_timeout=dur(60)),
        verifier=pb.Verifier(command="true {zkey}"),
    )
    failure = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED, cer.stub.CreateCeremony, request, metadata=bearer(cer.coordinator)
    )
    assert failure.reason == "VERIFIER_COMMAND_NEEDS_ADMIN"
    _, admin = server.make_user("admin")
    cer.stub.CreateCeremony(request, metadata=bearer(admin))
    request.verifier.command = ""
    failure = rpc_error(
        grpc.StatusCode.ALREADY_EXISTS, cer.stub.CreateCeremony, request, metadata=bearer(cer.coordinator)
    )
    assert failure.reason == "PREFIX_TAKEN"


def test_scheduler_opens_and_closes_at_their_times_and_early_joiners_queue(server, cer, clock):
    ceremony = cer.create(start_in=120)
    circuit = cer.add_circuit(ceremony)
    cer.genesis(circuit)
    (alice,) = _users(server, 1)
    assert cer.join(ceremony, alice).status == S.Value("PARTICIPANT_STATUS_CREATED")
    updated = cer.stub.UpdateCeremony(
        pb.UpdateCeremonyRequest(
            ceremony=pb.Ceremony(name=ceremony.name, title="Renamed"),
            update_mask=field_mask_pb2.FieldMask(paths=["title"]),
        ),
        metadata=bearer(cer.coordinator),
    ).ceremony
    assert updated.title == "Renamed"
    for paths, field in (([], "update_mask"), (["title", "state"], "update_mask.paths[1]")):
        bad = rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            cer.stub.UpdateCeremony,
            pb.UpdateCeremonyRequest(
                ceremony=pb.Ceremony(name=ceremony.name, title="Not applied"),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            metadata=bearer(cer.coordinator),
        )
        assert field in bad.violations
    assert cer.get(ceremony.name).title == "Renamed"
    cer.tick()
    assert cer.get(ceremony.name).state == pb.CEREMONY_STATE_SCHEDULED
    clock.advance(121)
    cer.tick()
    assert cer.get(ceremony.name).state == pb.CEREMONY_STATE_OPENED
    me = cer.me(ceremony, alice)
    assert me.status == S.Value("PARTICIPANT_STATUS_READY") and me.circuit == circuit.name
    failure = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        cer.stub.UpdateCeremony,
        pb.UpdateCeremonyRequest(
            ceremony=pb.Ceremony(name=ceremony.name, title="x"),
            update_mask=field_mask_pb2.FieldMask(paths=["title"]),
        ),
        metadata=bearer(cer.coordinator),
    )
    assert failure.reason == "CEREMONY_STATE"
    clock.advance(86400)
    cer.tick()
    assert cer.get(ceremony.name).state == pb.CEREMONY_STATE_CLOSED


def test_three_contributors_racing_to_join_get_one_turn_and_a_fair_queue(server, cer):
    ceremony, (circuit,) = cer.open()
    tokens = _users(server, 3)
    barrier = threading.Barrier(3)
    results: list = []

    def racer(token):
        barrier.wait()
        results.append(cer.join(ceremony, token))

    threads = [threading.Thread(target=racer, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(results) == 3
    statuses = sorted(S.Name(cer.me(ceremony, t).status) for t in tokens)
    assert statuses == [
        "PARTICIPANT_STATUS_READY",
        "PARTICIPANT_STATUS_WAITING",
        "PARTICIPANT_STATUS_WAITING",
    ]
    rows = list(Participant.select().order_by(Participant.queue_seq))
    assert len({r.queue_seq for r in rows}) == 3
    assert Circuit.get_by_id(circuit.name.split("/")[-1]).current_participant == rows[0].id
    assert cer.circuit(circuit.name).waiting_count == 2
    failure = rpc_error(grpc.StatusCode.ALREADY_EXISTS, cer.join, ceremony, tokens[0])
    assert failure.reason == "ALREADY_JOINED"


def test_a_full_turn_moves_through_circuits_and_the_transcript_verifies(server, cer):
    ceremony, circuits = cer.open(circuits=2)
    alice, bob = _users(server, 2)
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    first = cer.contribute(ceremony, alice)
    assert first.contribution.state == pb.CONTRIBUTION_STATE_VALID
    assert first.contribution.index == 1
    assert first.participant.status == S.Value("PARTICIPANT_STATUS_READY")
    assert first.participant.circuit == circuits[1].name
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_READY")
    # Two participants on two circuits at once.
    second = cer.contribute(ceremony, bob)
    assert second.contribution.previous_hash_hex == first.contribution.hash_hex
    last = cer.contribute(ceremony, alice)
    assert last.participant.status == S.Value("PARTICIPANT_STATUS_DONE")
    assert last.participant.completed_circuits == 2
    cer.contribute(ceremony, bob)
    stats = cer.circuit(circuits[0].name)
    assert stats.valid_contributions == 3 and stats.next_index == 3
    assert stats.HasField("average_contribution_time") and stats.HasField("average_verification_time")
    key = cer.stub.GetCoordinatorKey(pb.GetCoordinatorKeyRequest())
    assert key.algorithm == "Ed25519" and len(key.public_key) == 32
    transcript = cer.transcript(ceremony)
    report = verify_transcript(transcript, key.public_key)
    assert report.ok, report.problems
    assert report.valid == 6 and report.receipts == 6
    # A tampered entry no longer matches its receipt.
    transcript.circuits[0].contributions[1].hash_hex = "00" * 64
    assert not verify_transcript(transcript, key.public_key).ok


def test_progress_only_forward_and_only_by_the_current_contributor(server, cer):
    ceremony, _ = cer.open()
    alice, bob = _users(server, 2)
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)

    def report(token, step):
        return cer.stub.ReportProgress(
            pb.ReportProgressRequest(ceremony=ceremony.name, step=step), metadata=bearer(token)
        ).participant

    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, report, bob, pb.CONTRIBUTION_STEP_DOWNLOADING)
    assert failure.reason == "NOT_YOUR_TURN"
    me = report(alice, pb.CONTRIBUTION_STEP_COMPUTING)
    assert me.status == S.Value("PARTICIPANT_STATUS_CONTRIBUTING") and me.HasField("deadline")
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, report, alice, pb.CONTRIBUTION_STEP_DOWNLOADING)
    assert failure.reason == "STEP_NOT_FORWARD"
    rpc_error(grpc.StatusCode.INVALID_ARGUMENT, report, alice, pb.CONTRIBUTION_STEP_UNSPECIFIED)
    assert report(alice, pb.CONTRIBUTION_STEP_UPLOADING).step == pb.CONTRIBUTION_STEP_UPLOADING


def test_a_timeout_promotes_the_next_and_requeues_after_the_penalty(server, cer, clock):
    ceremony, (circuit,) = cer.open(fixed_timeout=60, start_window=30, penalty=20)
    alice, bob, carol = _users(server, 3)
    for token in (alice, bob, carol):
        cer.join(ceremony, token)
    cer.download(alice, circuit.name)
    assert cer.me(ceremony, alice).status == S.Value("PARTICIPANT_STATUS_CONTRIBUTING")
    clock.advance(59)
    cer.tick()
    assert cer.me(ceremony, alice).status == S.Value("PARTICIPANT_STATUS_CONTRIBUTING")
    clock.advance(2)
    cer.tick()
    me = cer.me(ceremony, alice)
    assert me.status == S.Value("PARTICIPANT_STATUS_TIMEDOUT") and me.timeouts_count == 1
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_READY")
    # A timed-out participant cannot upload or download any more.
    rpc_error(grpc.StatusCode.FAILED_PRECONDITION, cer.upload, alice, circuit.name, b"late")
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, cer.download, alice, circuit.name)
    # After the penalty alice is back, at the end of the queue (behind carol).
    clock.advance(21)
    cer.tick()
    assert cer.me(ceremony, alice).status == S.Value("PARTICIPANT_STATUS_WAITING")
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_READY")
    # Bob does not start within the 30 s start window: he times out too, carol is next.
    clock.advance(10)
    cer.tick()
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_TIMEDOUT")
    assert cer.me(ceremony, carol).status == S.Value("PARTICIPANT_STATUS_READY")
    clock.advance(21)
    cer.tick()
    order = [
        p.id
        for p in Participant.select().where(Participant.status == "WAITING").order_by(Participant.queue_seq)
    ]
    assert [cer.me(ceremony, t).name.split("/")[-1] for t in (alice, bob)] == order
    cer.contribute(ceremony, carol)
    assert cer.me(ceremony, alice).status == S.Value("PARTICIPANT_STATUS_READY")
    reply = cer.contribute(ceremony, alice)
    assert reply.contribution.state == pb.CONTRIBUTION_STATE_VALID


def test_an_interrupted_upload_resumes_from_the_committed_offset(server, cer):
    ceremony, (circuit,) = cer.open()
    (alice,) = _users(server, 1)
    cer.join(ceremony, alice)
    data, _ = cer.download(alice, circuit.name)
    new = data + bytes(range(256)) * 2000
    chunk = 32 * 1024
    gate = threading.Event()

    def stalled():
        messages = upload_messages(circuit.name, new, chunk=chunk)
        for i, message in enumerate(messages):
            if i == 4:
                gate.wait(20)
                return
            yield message

    future = cer.stub.UploadContribution.future(stalled(), metadata=bearer(alice))

    def committed():
        return cer.stub.GetUploadStatus(
            pb.GetUploadStatusRequest(circuit=circuit.name), metadata=bearer(alice)
        ).committed_offset

    wait_for(lambda: committed() == 3 * chunk)
    future.cancel()
    gate.set()
    status = cer.stub.GetUploadStatus(pb.GetUploadStatusRequest(circuit=circuit.name), metadata=bearer(alice))
    assert status.committed_offset == 3 * chunk and status.size_bytes == len(new)
    # Resuming at the wrong offset is refused with the right one.
    failure = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION, cer.upload, alice, circuit.name, new, chunk=chunk, start=0
    )
    assert failure.reason == "OFFSET_MISMATCH" and failure.metadata["committed_offset"] == str(3 * chunk)
    reply = cer.upload(alice, circuit.name, new, chunk=chunk, start=status.committed_offset)
    assert reply.contribution.state == pb.CONTRIBUTION_STATE_VALID
    assert reply.contribution.hash_hex == blake(new).hex()
    got, parts = cer.download(cer.coordinator, circuit.name)
    assert got == new and parts[0].blake2b_512 == blake(new) and parts[0].index == 1
    tail, parts = cer.download(cer.coordinator, circuit.name, offset=len(new) - 10)
    assert tail == new[-10:] and parts[0].offset == len(new) - 10


def test_an_invalid_contribution_is_recorded_and_the_chain_continues(server, cer):
    # No second chance for a damaged upload here (see test_ceremony_retries.py for one).
    ceremony, (circuit,) = cer.open(upload_retries=0)
    alice, bob = _users(server, 2)
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    genesis_hash = cer.circuit(circuit.name)
    data, _ = cer.download(alice, circuit.name)
    reply = cer.upload(alice, circuit.name, data + b"x", digest=blake(b"something else"))
    assert reply.contribution.state == pb.CONTRIBUTION_STATE_INVALID
    assert "does not match" in reply.contribution.verifier_output
    assert reply.participant.status == S.Value("PARTICIPANT_STATUS_DONE")
    assert cer.circuit(circuit.name).next_index == genesis_hash.next_index == 1
    good = cer.contribute(ceremony, bob)
    assert good.contribution.index == 1
    transcript = cer.transcript(ceremony)
    entries = transcript.circuits[0].contributions
    assert [e.state for e in entries] == [
        pb.CONTRIBUTION_STATE_VALID,
        pb.CONTRIBUTION_STATE_INVALID,
        pb.CONTRIBUTION_STATE_VALID,
    ]
    assert entries[2].previous_hash_hex == entries[0].hash_hex
    report = verify_transcript(transcript, transcript.public_key)
    assert report.ok and report.invalid == 1
    # The invalid blob is gone; the valid ones remain.
    assert len(list((server.rt.settings.data_dir and rules.blobs_of(server.rt).root).rglob("*.zkey"))) == 2


def test_upload_rules_turn_index_size_and_chunks(server, cer):
    ceremony, (circuit,) = cer.open()
    alice, bob = _users(server, 2)
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, cer.upload, bob, circuit.name, b"data")
    assert failure.reason == "NOT_YOUR_TURN"
    failure = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION, cer.upload, alice, circuit.name, b"data", index=5
    )
    assert failure.reason == "WRONG_INDEX" and failure.metadata["expected_index"] == "1"
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, cer.upload, alice, circuit.name, b"d", size=2 << 30)
    assert "header.size_bytes" in failure.violations
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, cer.upload, alice, circuit.name, b"d", digest=b"short"
    )
    assert "header.blake2b_512" in failure.violations
    big = b"z" * ((1 << 20) + 1)
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, cer.upload, alice, circuit.name, big, chunk=len(big)
    )
    assert "chunk.data" in failure.violations
    only_header = upload_messages(circuit.name, b"abc", start=3)
    failure = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION, cer.stub.UploadContribution, only_header, metadata=bearer(alice)
    )
    assert failure.reason == "UPLOAD_INCOMPLETE"
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, cer.stub.UploadContribution, iter([]), metadata=bearer(alice)
    )
    assert "header" in failure.violations


def test_a_small_size_cap_per_circuit(server, cer):
    ceremony = cer.create()
    circuit = cer.add_circuit(ceremony, max_contribution_size_bytes=1000)
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, cer.upload, cer.coordinator, circuit.name, b"g" * 1001, index=0
    )
    assert "header.size_bytes" in failure.violations


def test_watch_queue_first_message_at_once_then_updates_then_ends_when_done(server, cer, monkeypatch):
    monkeypatch.setattr(ceremony_api, "KEEPALIVE_S", 0.5)
    ceremony, _ = cer.open()
    alice, bob = _users(server, 2)
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    stream = cer.stub.WatchQueue(pb.WatchQueueRequest(ceremony=ceremony.name), metadata=bearer(bob))
    first = next(stream)
    assert first.participant.status == S.Value("PARTICIPANT_STATUS_WAITING")
    assert first.position == 1 and first.queue_length == 1
    assert first.current_contributor == cer.me(ceremony, alice).name
    keepalive = next(stream)
    assert keepalive.keepalive and keepalive.position == 1
    cer.contribute(ceremony, alice)
    seen = []
    for message in stream:
        seen.append(message)
        if message.participant.status == S.Value("PARTICIPANT_STATUS_READY"):
            break
    ready = seen[-1]
    assert ready.position == 0 and ready.current_contributor == ready.participant.name
    assert ready.HasField("deadline")
    cer.contribute(ceremony, bob)
    last = list(stream)[-1]
    assert last.participant.status == S.Value("PARTICIPANT_STATUS_DONE")


def test_estimated_wait_comes_from_the_circuit_statistics(server, cer):
    ceremony, _ = cer.open()
    alice, bob, carol, dave = _users(server, 4)
    for token in (alice, bob, carol, dave):
        cer.join(ceremony, token)
    stream = cer.stub.WatchQueue(pb.WatchQueueRequest(ceremony=ceremony.name), metadata=bearer(dave))
    assert not next(stream).HasField("estimated_wait")
    cer.contribute(ceremony, alice)
    message = wait_for(lambda: next(stream))
    while message.position != 2:
        message = next(stream)
    assert message.HasField("estimated_wait")
    stream.cancel()


def test_leaving_passes_the_turn_at_once(server, cer):
    ceremony, _ = cer.open()
    alice, bob = _users(server, 2)
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    left = cer.stub.LeaveCeremony(pb.LeaveCeremonyRequest(ceremony=ceremony.name), metadata=bearer(alice))
    assert left.participant.status == S.Value("PARTICIPANT_STATUS_DONE")
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_READY")
    rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        cer.stub.LeaveCeremony,
        pb.LeaveCeremonyRequest(ceremony=ceremony.name),
        metadata=bearer(alice),
    )


def test_pause_holds_the_queue_and_resume_promotes(server, cer):
    ceremony, _ = cer.open()
    alice, bob = _users(server, 2)
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    cer.stub.PauseCeremony(pb.PauseCeremonyRequest(name=ceremony.name), metadata=bearer(cer.coordinator))
    cer.contribute(ceremony, alice)
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_WAITING")
    _, other = server.make_user("coordinator")
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        cer.stub.ResumeCeremony,
        pb.ResumeCeremonyRequest(name=ceremony.name),
        metadata=bearer(other),
    )
    cer.stub.ResumeCeremony(pb.ResumeCeremonyRequest(name=ceremony.name), metadata=bearer(cer.coordinator))
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_READY")
    listed = cer.stub.ListParticipants(
        pb.ListParticipantsRequest(parent=ceremony.name, status=S.Value("PARTICIPANT_STATUS_DONE")),
        metadata=bearer(cer.coordinator),
    )
    assert [p.name for p in listed.participants] == [cer.me(ceremony, alice).name]


def test_repair_frees_a_turn_held_by_a_vanished_participant(server, cer):
    ceremony, (circuit,) = cer.open()
    alice, bob, carol = _users(server, 3)
    for token in (alice, bob, carol):
        cer.join(ceremony, token)
    circuit_id = circuit.name.split("/")[-1]
    holder = Circuit.get_by_id(circuit_id).current_participant
    # Simulate a lost row (e.g. a manual delete): the turn points at nobody.
    Participant.delete().where(Participant.id == holder).execute()
    assert rules.repair(server.rt) == {"released": 1}
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_READY")
    # A participant acting as contributor without the turn goes back to the queue.
    carol_id = cer.me(ceremony, carol).name.split("/")[-1]
    Participant.update(status="CONTRIBUTING").where(Participant.id == carol_id).execute()
    assert rules.repair(server.rt) == {"requeued": 1}
    assert cer.me(ceremony, carol).status == S.Value("PARTICIPANT_STATUS_WAITING")
    assert rules.repair(server.rt) == {}


def test_an_external_verifier_that_overruns_its_limit_makes_the_contribution_invalid(server, cer):
    _, admin = server.make_user("admin", "coordinator")
    request = pb.CreateCeremonyRequest(
        title="slow verifier",
        prefix="slow-verifier",
        start_time=stamp(server, 3600),
        end_time=stamp(server, 7200),
        timeout=pb.TimeoutConfig(policy=pb.TIMEOUT_POLICY_FIXED, fixed_timeout=dur(600)),
        verifier=pb.Verifier(command="sh -c 'test -s {zkey} && sleep $(cat {zkey})'", timeout=dur(1)),
    )
    ceremony = cer.stub.CreateCeremony(request, metadata=bearer(admin)).ceremony
    circuit = cer.stub.AddCircuit(
        pb.AddCircuitRequest(parent=ceremony.name, display_name="c"), metadata=bearer(admin)
    ).circuit
    slow = cer.upload(admin, circuit.name, b"30", index=0)
    assert slow.contribution.state == pb.CONTRIBUTION_STATE_INVALID
    assert "did not finish within 1 s" in slow.contribution.verifier_output
    ok = cer.upload(admin, circuit.name, b"0", index=0)
    assert ok.contribution.state == pb.CONTRIBUTION_STATE_VALID


def test_finalization_after_close(server, cer):
    ceremony, (circuit,) = cer.open()
    (alice,) = _users(server, 1)
    cer.join(ceremony, alice)
    cer.contribute(ceremony, alice)
    finalize = pb.FinalizeCircuitRequest(
        circuit=circuit.name, beacon_hash_hex="ab" * 32, beacon_iterations_exponent=10
    )
    failure = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        cer.stub.FinalizeCircuit,
        finalize,
        metadata=bearer(cer.coordinator),
    )
    assert failure.reason == "CEREMONY_STATE"
    cer.stub.CloseCeremony(pb.CloseCeremonyRequest(name=ceremony.name), metadata=bearer(cer.coordinator))
    rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        cer.stub.FinalizeCeremony,
        pb.FinalizeCeremonyRequest(name=ceremony.name),
        metadata=bearer(cer.coordinator),
    )
    reply = cer.stub.FinalizeCircuit(finalize, metadata=bearer(cer.coordinator))
    assert reply.participant.status == S.Value("PARTICIPANT_STATUS_FINALIZING")
    latest, _ = cer.download(cer.coordinator, circuit.name)
    final = cer.upload(cer.coordinator, circuit.name, latest + b"beacon")
    assert final.contribution.final and final.contribution.state == pb.CONTRIBUTION_STATE_VALID
    assert cer.circuit(circuit.name).finalized
    done = cer.stub.FinalizeCeremony(
        pb.FinalizeCeremonyRequest(name=ceremony.name), metadata=bearer(cer.coordinator)
    )
    assert done.ceremony.state == pb.CEREMONY_STATE_FINALIZED
    assert cer.me(ceremony, cer.coordinator).status == S.Value("PARTICIPANT_STATUS_FINALIZED")
    report = verify_transcript(cer.transcript(ceremony), cer.transcript(ceremony).public_key)
    assert report.ok and report.valid == 3
    # Anyone may read a finalized circuit.
    assert cer.download(alice, circuit.name)[0] == latest + b"beacon"


def test_artifacts_upload_and_genesis_rules(server, cer):
    ceremony = cer.create()
    circuit = cer.add_circuit(ceremony)
    r1cs = b"r1cs bytes" * 500

    def artifact(kind, data, token=None):
        header = pb.UploadHeader(circuit=circuit.name, size_bytes=len(data), blake2b_512=blake(data))
        messages = [
            pb.UploadArtifactRequest(header=header, kind=kind),
            pb.UploadArtifactRequest(chunk=pb.UploadChunk(offset=0, data=data)),
        ]
        return cer.stub.UploadArtifact(iter(messages), metadata=bearer(token or cer.coordinator))

    got = artifact(pb.ARTIFACT_KIND_R1CS, r1cs).circuit
    assert got.r1cs.size_bytes == len(r1cs) and got.r1cs.blake2b_512 == blake(r1cs)
    _, participant = server.make_user("participant")
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, artifact, pb.ARTIFACT_KIND_PTAU, b"p", participant)
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, cer.upload, participant, circuit.name, b"g", index=0)
    cer.genesis(circuit)
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, artifact, pb.ARTIFACT_KIND_PTAU, b"p")
    assert failure.reason == "ARTIFACTS_FIXED"


def test_transcript_and_key_are_public(server, cer):
    ceremony, _ = cer.open()
    transcript = cer.stub.GetTranscript(pb.GetTranscriptRequest(ceremony=ceremony.name))
    assert len(transcript.circuits) == 1 and transcript.circuits[0].contributions[0].index == 0
    rpc_error(
        grpc.StatusCode.UNAUTHENTICATED, cer.stub.GetCeremony, pb.GetCeremonyRequest(name=ceremony.name)
    )


def test_dynamic_turns_start_at_the_floor_then_follow_the_average(server, cer, clock):
    ceremony, (circuit,) = cer.open(
        policy=pb.TIMEOUT_POLICY_DYNAMIC, dynamic_floor=100, dynamic_threshold_percent=50, start_window=30
    )
    alice, bob = _users(server, 2)
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)

    def turn_left(token):
        me = cer.me(ceremony, token)
        return (me.deadline.ToDatetime(UTC) - server.rt.now()).total_seconds()

    # Bounds leave 5 s for real time passing between calls on a loaded machine.
    cer.download(alice, circuit.name)
    assert 95 < turn_left(alice) <= 100, "no average yet: the floor is the turn"
    clock.advance(80)
    data, _ = cer.download(alice, circuit.name)
    cer.upload(alice, circuit.name, data + b"alice")
    stats = cer.circuit(circuit.name)
    average = stats.average_contribution_time.ToTimedelta().total_seconds()
    assert 80 <= average < 85
    cer.download(bob, circuit.name)
    # The average x 1.5 (about 120 s), above the 100 s floor.
    assert average * 1.5 - 5 < turn_left(bob) <= average * 1.5


def test_a_verification_that_never_finished_is_redone_by_the_scheduler(server, cer, clock):
    ceremony, (circuit,) = cer.open()
    alice_id, alice = server.make_user("participant")
    _, bob = server.make_user("participant")
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    rt = server.rt
    who = Principal(user_id=alice_id, roles=frozenset({"participant"}), kind="token")
    cid, kid = ceremony.name.split("/")[1], circuit.name.split("/")[-1]
    data = b"alice's contribution" * 50
    # Upload through the rules without verifying: as if the daemon died right after the upload.
    plan = rules.begin_upload(rt, who, cid, kid, rules.CONTRIBUTION_KIND, len(data), blake(data), None)
    rules.blobs_of(rt).write_at(plan.blob_key, 0, data)
    rules.commit_chunk(rt, plan.upload_id, len(data))
    rules.finish_contribution_upload(rt, who, cid, plan.upload_id)
    assert cer.me(ceremony, alice).status == S.Value("PARTICIPANT_STATUS_CONTRIBUTED")
    cer.tick()
    assert cer.me(ceremony, alice).status == S.Value("PARTICIPANT_STATUS_CONTRIBUTED")
    clock.advance(rules.DEFAULT_VERIFY_TIMEOUT_S + rules.VERIFY_GRACE_S + 1)
    cer.tick()
    assert cer.me(ceremony, alice).status == S.Value("PARTICIPANT_STATUS_DONE")
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_READY")
    entries = cer.transcript(ceremony).circuits[0].contributions
    assert [e.state for e in entries] == [pb.CONTRIBUTION_STATE_VALID, pb.CONTRIBUTION_STATE_VALID]


def test_download_offsets_and_who_may_download(server, cer):
    ceremony, (circuit,) = cer.open()
    alice, bob = _users(server, 2)
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, cer.download, bob, circuit.name)
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, cer.download, alice, circuit.name, offset=10**9)
    assert "offset" in failure.violations
    failure = rpc_error(grpc.StatusCode.NOT_FOUND, cer.download, alice, circuit.name, index=7)
    assert failure.reason == "NO_CONTRIBUTION"
    data, parts = cer.download(alice, circuit.name, index=0)
    assert parts[0].index == 0 and len(data) == parts[0].size_bytes
