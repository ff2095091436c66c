"""The idempotency-key contract (DESIGN.md): replay byte for byte, scoped per caller."""

from __future__ import annotations

import threading
from datetime import timedelta

import grpc

from coordd.domain import idempotency
from coordd.store.auth.models import ApiKey
from coordd.store.models import IdempotencyRecord
from coordd_client.v1 import auth_pb2
from tests.helpers import rpc_error
from tests.support.server import ServerHandle, bearer


def _create_key(server, token, key, name="k"):
    return server.auth.CreateApiKey.with_call(
        auth_pb2.CreateApiKeyRequest(display_name=name),
        metadata=bearer(token, **{"idempotency-key": key}),
    )


def test_replay_returns_the_identical_response_and_creates_nothing_twice(server):
    _, token = server.make_user("participant")
    first, call1 = _create_key(server, token, "retry-1")
    second, call2 = _create_key(server, token, "retry-1")
    assert first.SerializeToString() == second.SerializeToString()
    assert first.secret == second.secret
    assert ApiKey.select().count() == 1
    assert ("idempotency-replayed", "true") in tuple(call2.initial_metadata())
    assert ("idempotency-replayed", "true") not in tuple(call1.initial_metadata())


def test_same_key_with_a_different_request_is_invalid_argument(server):
    _, token = server.make_user("participant")
    _create_key(server, token, "k-1", name="first")
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _create_key, server, token, "k-1", "second")
    assert failure.reason == "IDEMPOTENCY_KEY_REUSED"
    assert ApiKey.select().count() == 1


def test_keys_are_scoped_per_caller(server):
    _, alice = server.make_user("participant")
    _, bob = server.make_user("participant")
    a, _ = _create_key(server, alice, "shared-key")
    b, _ = _create_key(server, bob, "shared-key")
    assert a.api_key.name != b.api_key.name
    assert ApiKey.select().count() == 2


def test_a_failed_call_is_not_stored_and_a_retry_runs_again(server):
    server.sign_up(email="taken@example.com")
    request = auth_pb2.SignUpRequest(email="taken@example.com", password="correct horse battery")
    meta = (("idempotency-key", "signup-1"),)
    rpc_error(grpc.StatusCode.ALREADY_EXISTS, server.auth.SignUp, request, metadata=meta)
    assert IdempotencyRecord.select().count() == 0
    # The retry executes (and fails the same way) instead of replaying or aborting.
    rpc_error(grpc.StatusCode.ALREADY_EXISTS, server.auth.SignUp, request, metadata=meta)


def test_concurrent_duplicates_get_one_result(server):
    _, token = server.make_user("participant")
    results: list[bytes] = []
    errors: list[Exception] = []

    def call() -> None:
        try:
            reply, _ = _create_key(server, token, "burst")
            results.append(reply.SerializeToString())
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 20 and len(set(results)) == 1
    assert ApiKey.select().count() == 1


def test_a_key_still_running_elsewhere_gets_aborted(settings_factory, clock):
    server = ServerHandle(settings_factory(idempotency_wait_s=0.2), clock)
    try:
        user_id, token = server.make_user("participant")
        request = auth_pb2.CreateApiKeyRequest(display_name="k")
        digest = idempotency.request_hash(
            "/coordd.v1.AuthService/CreateApiKey", request.SerializeToString(deterministic=True)
        )
        assert (
            idempotency.claim(
                server.rt, user_id, "busy", "/coordd.v1.AuthService/CreateApiKey", digest
            ).action
            == "run"
        )
        failure = rpc_error(
            grpc.StatusCode.ABORTED,
            server.auth.CreateApiKey,
            request,
            metadata=bearer(token, **{"idempotency-key": "busy"}),
        )
        assert failure.reason == "IDEMPOTENCY_KEY_IN_USE"
        assert ApiKey.select().count() == 0
        # A claim whose holder died (past the stale limit) is taken over by the retry.
        clock.advance(server.settings.idempotency_stale_s + 1)
        reply, _ = _create_key(server, token, "busy")
        assert reply.secret
    finally:
        server.stop()


def test_a_call_that_committed_before_the_server_died_is_never_run_twice(settings_factory, clock):
    """The crash window between the call's commit and the stored response: the record was
    marked applied in the call's own transaction, so the retry does not execute again."""
    from coordd.core.principal import Principal
    from coordd.domain import auth

    server = ServerHandle(settings_factory(idempotency_wait_s=0.2), clock)
    try:
        user_id, token = server.make_user("participant")
        method = "/coordd.v1.AuthService/CreateApiKey"
        request = auth_pb2.CreateApiKeyRequest(display_name="k")
        digest = idempotency.request_hash(method, request.SerializeToString(deterministic=True))
        assert idempotency.claim(server.rt, user_id, "crashy", method, digest).action == "run"
        # The first call's handler commits its change, then the process dies before `complete`.
        marker = idempotency.PENDING.set(idempotency.PendingKey(user_id, "crashy"))
        try:
            who = Principal(user_id, frozenset({"participant"}), "token")
            auth.create_api_key(server.rt, who, "k", [], None)
        finally:
            idempotency.PENDING.reset(marker)
        assert IdempotencyRecord.get().state == "applied"
        meta = bearer(token, **{"idempotency-key": "crashy"})
        busy = rpc_error(grpc.StatusCode.ABORTED, server.auth.CreateApiKey, request, metadata=meta)
        assert busy.reason == "IDEMPOTENCY_KEY_IN_USE", "the holder may still be storing its response"
        clock.advance(server.settings.idempotency_stale_s + 1)
        lost = rpc_error(
            grpc.StatusCode.FAILED_PRECONDITION, server.auth.CreateApiKey, request, metadata=meta
        )
        assert lost.reason == "IDEMPOTENCY_RESPONSE_LOST"
        assert ApiKey.select().count() == 1, "not executed a second time"
    finally:
        server.stop()


def test_a_completed_call_marks_its_record_applied_in_its_own_transaction(server):
    """Observed from inside the call: by the time the response is stored, the record had been
    applied by the same commit as the API key (the replay test shows the final state)."""
    seen: list[str] = []
    _, token = server.make_user("participant")

    def spy(tx) -> None:  # runs inside every write transaction, after mark_applied
        record = IdempotencyRecord.get_or_none(IdempotencyRecord.key == "observed")
        if record is not None and ApiKey.select().count() == 1:
            seen.append(record.state)

    server.rt.store.before_commit(spy)
    _create_key(server, token, "observed")
    assert seen[0] == "applied"
    assert IdempotencyRecord.get().state == "done"


def test_bad_idempotency_key_is_invalid_argument(server):
    _, token = server.make_user("participant")
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _create_key, server, token, "x" * 200)
    assert "idempotency-key" in failure.violations


def test_expired_records_are_purged_and_the_key_is_free_again(server, clock):
    _, token = server.make_user("participant")
    first, _ = _create_key(server, token, "old")
    clock.advance(server.settings.idempotency_retention_s + 1)
    assert idempotency.purge_expired(server.rt) == 1
    assert IdempotencyRecord.select().count() == 0
    again, _ = _create_key(server, token, "old")
    assert again.api_key.name != first.api_key.name


def test_records_expire_even_before_the_purge_runs(server, clock):
    _, token = server.make_user("participant")
    _create_key(server, token, "k", name="a")
    clock.advance(server.settings.idempotency_retention_s + timedelta(seconds=1).total_seconds())
    reply, _ = _create_key(server, token, "k", name="b")
    assert reply.api_key.display_name == "b"
