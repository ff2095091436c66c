"""Second chance: a contribution rejected for a transport fault (the bytes that arrived do not
match the declared size and BLAKE2b-512) may be sent again within the same turn, up to the
ceremony's limit; an invalid proof still ends the contributor's part in the circuit."""

from __future__ import annotations

import pytest

from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.helpers import Ceremonies, blake
from tests.ceremony.test_ceremony_verifiers import DECLARED
from tests.support.server import ServerHandle

S = pb.ParticipantStatus


@pytest.fixture
def declared(settings_factory, clock):
    handle = ServerHandle(settings_factory(ceremony_verifiers=DECLARED, snarkjs_path="off"), clock)
    try:
        yield handle
    finally:
        handle.stop()


def _damaged(cer, ceremony, token):
    """Downloads, then uploads bytes whose BLAKE2b-512 is not the one the header declared."""
    data, _ = cer.download(token, cer.me(ceremony, token).circuit)
    good = data + b" and mine"
    return good, cer.upload(
        token, cer.me(ceremony, token).circuit, good, digest=blake(b"what I meant to send")
    )


def test_a_damaged_upload_keeps_the_turn_and_the_file_can_be_sent_again(declared):
    cer = Ceremonies(declared)
    ceremony, (circuit,) = cer.open(verifier=pb.Verifier(name="extends-genesis"))
    assert ceremony.upload_retries == 2
    alice, bob = (declared.make_user("participant")[1] for _ in range(2))
    cer.join(ceremony, alice)
    cer.join(ceremony, bob)
    good, reply = _damaged(cer, ceremony, alice)
    assert reply.contribution.state == pb.CONTRIBUTION_STATE_INVALID
    assert reply.contribution.transport_fault
    assert reply.participant.status == S.Value("PARTICIPANT_STATUS_CONTRIBUTING"), "the turn is kept"
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_WAITING")
    again = cer.upload(alice, circuit.name, good)
    assert again.contribution.state == pb.CONTRIBUTION_STATE_VALID
    assert again.contribution.index == 1
    assert again.participant.status == S.Value("PARTICIPANT_STATUS_DONE")
    assert cer.me(ceremony, bob).status == S.Value("PARTICIPANT_STATUS_READY")
    entries = cer.transcript(ceremony).circuits[0].contributions
    assert [(e.state, e.transport_fault) for e in entries] == [
        (pb.CONTRIBUTION_STATE_VALID, False),
        (pb.CONTRIBUTION_STATE_INVALID, True),
        (pb.CONTRIBUTION_STATE_VALID, False),
    ]


def test_damaged_uploads_past_the_ceremony_limit_end_the_turn(declared):
    cer = Ceremonies(declared)
    ceremony, _ = cer.open(verifier=pb.Verifier(name="extends-genesis"), upload_retries=1)
    (alice,) = (declared.make_user("participant")[1] for _ in range(1))
    cer.join(ceremony, alice)
    _, first = _damaged(cer, ceremony, alice)
    assert first.participant.status == S.Value("PARTICIPANT_STATUS_CONTRIBUTING")
    _, second = _damaged(cer, ceremony, alice)
    assert second.contribution.transport_fault
    assert second.participant.status == S.Value("PARTICIPANT_STATUS_DONE")


def test_an_invalid_proof_ends_the_turn_even_with_retries_left(declared):
    cer = Ceremonies(declared)
    ceremony, _ = cer.open(verifier=pb.Verifier(name="extends-genesis"), upload_retries=3)
    (alice,) = (declared.make_user("participant")[1] for _ in range(1))
    cer.join(ceremony, alice)
    forged = cer.contribute(ceremony, alice, payload=b"no proof here" * 20)
    assert forged.contribution.state == pb.CONTRIBUTION_STATE_INVALID
    assert not forged.contribution.transport_fault
    assert forged.participant.status == S.Value("PARTICIPANT_STATUS_DONE")
