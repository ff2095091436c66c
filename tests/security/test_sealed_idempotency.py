"""Stored idempotency responses are sealed: a dump carries no usable secret, replay still works."""

from __future__ import annotations

import os

import grpc
import pytest

from coordd.crypto.sealing import Sealer, Unsealable
from coordd.store.auth.models import ApiKey
from coordd.store.models import IdempotencyRecord
from coordd_client.v1 import auth_pb2
from tests.helpers import rpc_error
from tests.support.server import bearer


def _create_key(server, token, key, name="k"):
    return server.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name=name), metadata=bearer(token, **{"idempotency-key": key})
    )


def _record(key: str) -> IdempotencyRecord:
    return IdempotencyRecord.get(IdempotencyRecord.key == key)


def test_a_stored_response_holds_no_secret_and_still_replays_byte_for_byte(server):
    _, token = server.make_user("participant")
    first = _create_key(server, token, "sealed-1")
    stored = bytes(_record("sealed-1").response)
    assert first.secret.encode() not in stored
    assert first.SerializeToString() not in stored
    assert first.api_key.name.encode() not in stored, "the whole reply is sealed, not just the secret"
    again = _create_key(server, token, "sealed-1")
    assert again.SerializeToString() == first.SerializeToString()
    assert ApiKey.select().count() == 1


def test_a_sealed_response_copied_onto_another_callers_record_does_not_open(server):
    _, alice = server.make_user("participant")
    bob_id, bob = server.make_user("participant")
    alices = _create_key(server, alice, "same-key")
    _create_key(server, bob, "same-key")
    stolen = bytes(
        IdempotencyRecord.get(
            (IdempotencyRecord.key == "same-key") & (IdempotencyRecord.scope != bob_id)
        ).response
    )
    IdempotencyRecord.update(response=stolen).where(
        (IdempotencyRecord.key == "same-key") & (IdempotencyRecord.scope == bob_id)
    ).execute()
    lost = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _create_key, server, bob, "same-key")
    assert lost.reason == "IDEMPOTENCY_RESPONSE_LOST"
    assert alices.secret not in lost.details
    assert ApiKey.select().count() == 2, "not executed again either"


def test_a_plaintext_response_stored_before_sealing_still_replays(server):
    """Records written by an older daemon keep their meaning until they expire: treating them
    as expired would run their (already applied) calls a second time."""
    _, token = server.make_user("participant")
    first = _create_key(server, token, "legacy")
    plaintext = first.SerializeToString()
    IdempotencyRecord.update(response=plaintext).where(IdempotencyRecord.key == "legacy").execute()
    again = _create_key(server, token, "legacy")
    assert again.SerializeToString() == plaintext
    assert ApiKey.select().count() == 1


def test_sealed_bytes_open_only_with_their_key_and_context():
    sealer = Sealer(os.urandom(32))
    sealed = sealer.seal_bytes(b"\x12\x05reply", "idempotency\0u1\0k")
    assert sealed[:1] == b"\x00" and b"reply" not in sealed
    assert sealer.open_bytes(sealed, "idempotency\0u1\0k") == b"\x12\x05reply"
    assert sealer.open_bytes(b"", "any") == b"", "an empty plaintext reply stays empty"
    with pytest.raises(Unsealable):
        sealer.open_bytes(sealed, "idempotency\0u2\0k")
    with pytest.raises(Unsealable):
        Sealer(os.urandom(32)).open_bytes(sealed, "idempotency\0u1\0k")
    assert sealer.seal_bytes(b"x", "c") != sealer.seal_bytes(b"x", "c"), "a fresh nonce each time"
