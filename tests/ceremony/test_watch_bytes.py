"""WatchQueue's pre-serialized messages: the concatenation of the shared, own and position parts
parses to exactly the message `watch_message` builds, for every shape a stream sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from coordd.api.ceremony import _message_or_bytes
from coordd.api.ceremony_convert import (
    KEEPALIVE_SUFFIX,
    contribution_to_proto,
    watch_message,
    watch_own_bytes,
    watch_position_bytes,
    watch_shared_bytes,
)
from coordd.domain.ceremony import QueueSnapshot, WatchState
from coordd.store.ceremony.views import ParticipantView
from coordd_client.v1 import ceremony_pb2 as pb

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _view(pid: str, status: str, due: datetime | None = None) -> ParticipantView:
    return ParticipantView(pid, "cer1", "u-" + pid, status, "", "k1", 0, 1, due, None, NOW, NOW)


def _state(view: ParticipantView, position: int, wait: timedelta | None, snap: bool = True) -> WatchState:
    current = _view("head", "CONTRIBUTING")
    queue = QueueSnapshot("cer1", "OPENED", "k1", current, timedelta(seconds=30), timedelta(seconds=4))
    queue.positions.update({"a": 1, "b": 2, view.id: position})
    return WatchState(view, queue if snap else None, "OPENED", position, wait, [], False)


def _contribution() -> SimpleNamespace:
    return SimpleNamespace(
        id="x1",
        circuit_id="k1",
        index=3,
        contributor="cer1/participants/p",
        hash="ab" * 32,
        previous_hash="cd" * 32,
        size=1234,
        state="VALID",
        verifier_output="ok",
        contribution_s=12.5,
        verification_s=0.25,
        upload_time=NOW,
        verify_time=NOW,
        is_final=False,
        receipt_signature=b"sig",
        receipt_payload=b"payload",
        receipt_key_id="key",
        extra={"contribution_hash": "ff"},
    )


def _encoded(w: WatchState, last=None) -> bytes:
    return (
        watch_shared_bytes("cer1", w)
        + watch_own_bytes("cer1", w, last)
        + watch_position_bytes(w.position, w.wait)
    )


def _expected(w: WatchState, last=None) -> pb.WatchQueueResponse:
    msg = watch_message("cer1", w)
    if last is not None:
        msg.last_contribution.CopyFrom(contribution_to_proto("cer1", last))
    return msg


@pytest.mark.parametrize(
    "position, wait",
    [
        (1, timedelta()),
        (3, timedelta(seconds=56)),
        (300, timedelta(seconds=90061, microseconds=250001)),
        (20_000, timedelta(microseconds=7)),
        (0, None),
    ],
)
def test_waiting_watcher_bytes_parse_to_the_built_message(position, wait):
    w = _state(_view("me", "WAITING"), position, wait)
    assert pb.WatchQueueResponse.FromString(_encoded(w)) == _expected(w)


def test_holder_with_deadline_and_last_contribution_parses_to_the_built_message():
    w = _state(_view("me", "READY", due=NOW + timedelta(minutes=5)), 0, None)
    last = _contribution()
    got = pb.WatchQueueResponse.FromString(_encoded(w, last))
    assert got == _expected(w, last)
    assert got.last_contribution.index == 3 and got.deadline.seconds > 0


def test_watcher_outside_any_queue_gets_only_state_and_its_participant():
    w = _state(_view("me", "DONE"), 0, None, snap=False)
    got = pb.WatchQueueResponse.FromString(_encoded(w))
    assert got == _expected(w)
    assert got.queue_length == 0 and got.current_contributor == ""


def test_keepalive_suffix_sets_keepalive_and_changes_nothing_else():
    w = _state(_view("me", "WAITING"), 2, timedelta(seconds=5))
    got = pb.WatchQueueResponse.FromString(_encoded(w) + KEEPALIVE_SUFFIX)
    want = _expected(w)
    want.keepalive = True
    assert got == want


def test_response_serializer_passes_bytes_through_and_serializes_messages():
    msg = pb.WatchQueueResponse(position=4)
    assert _message_or_bytes(b"\x18\x04") == b"\x18\x04"
    assert _message_or_bytes(msg) == msg.SerializeToString()
