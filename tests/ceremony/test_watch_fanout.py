"""WatchQueue fan-out: one change of a circuit's queue is one read shared by every watcher,
each watcher then gets its own new position; a burst of changes leaves every watcher with the
newest state; a watcher that does not read its stream stalls nobody else."""

from __future__ import annotations

import threading

import pytest

from coordd.domain.ceremony import snapshots
from coordd_client.v1 import ceremony_pb2 as pb
from tests.ceremony.e2e_ceremony.helpers import Ceremonies
from tests.support.server import bearer

WATCHERS = 8


@pytest.fixture
def reads(monkeypatch):
    """Counts the daemon's reads of a circuit's queue."""
    count = [0]
    real = snapshots.queue_snapshot

    def counting(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(snapshots, "queue_snapshot", counting)
    return count


def _queue(server, n):
    cer = Ceremonies(server)
    ceremony, _ = cer.open()
    tokens = [server.make_user("participant")[1] for _ in range(n)]
    for token in tokens:
        cer.join(ceremony, token)
    return cer, ceremony, tokens


def _leave(cer, ceremony, token):
    cer.stub.LeaveCeremony(pb.LeaveCeremonyRequest(ceremony=ceremony.name), metadata=bearer(token))


def _watch(cer, ceremony, token):
    request = pb.WatchQueueRequest(ceremony=ceremony.name)
    return cer.stub.WatchQueue(request, metadata=bearer(token), timeout=30)


def _until(stream, position):
    for message in stream:
        if message.position == position:
            return message
    raise AssertionError("stream ended")


def test_head_leaving_moves_every_watcher_up_with_one_shared_read(server, reads):
    cer, ceremony, tokens = _queue(server, WATCHERS + 1)
    streams = [_watch(cer, ceremony, t) for t in tokens[1:]]
    firsts = [next(s) for s in streams]
    assert [m.position for m in firsts] == list(range(1, WATCHERS + 1))
    before = reads[0]
    _leave(cer, ceremony, tokens[0])
    got = [_until(s, i) for i, s in enumerate(streams)]
    assert got[0].participant.status == pb.PARTICIPANT_STATUS_READY
    assert all(m.queue_length == WATCHERS - 1 for m in got)
    assert all(m.current_contributor == got[0].participant.name for m in got)
    # One change, one read for all watchers (a second only if an event raced the first).
    assert reads[0] - before <= 2
    for s in streams:
        s.cancel()


def test_a_burst_of_changes_leaves_every_watcher_with_the_newest_position(server, reads):
    cer, ceremony, tokens = _queue(server, WATCHERS + 3)
    streams = [_watch(cer, ceremony, t) for t in tokens[3:]]
    for i, s in enumerate(streams):
        assert next(s).position == i + 3
    before = reads[0]
    for token in tokens[:3]:  # three heads leave, one after the other
        _leave(cer, ceremony, token)
    final = [_until(s, i) for i, s in enumerate(streams)]
    assert final[0].participant.status == pb.PARTICIPANT_STATUS_READY
    assert all(m.queue_length == WATCHERS - 1 for m in final)
    # Coalesced: never more reads than changes (+1 for a change that raced a read).
    assert reads[0] - before <= 4
    for s in streams:
        s.cancel()


def test_a_watcher_that_never_reads_does_not_stall_the_others(server):
    cer, ceremony, tokens = _queue(server, 4)
    idle = _watch(cer, ceremony, tokens[1])  # opened, never read
    threading.Thread(target=lambda: idle.initial_metadata(), daemon=True).start()
    streams = [_watch(cer, ceremony, t) for t in tokens[2:]]
    assert [next(s).position for s in streams] == [2, 3]
    _leave(cer, ceremony, tokens[0])
    assert [_until(s, p).position for s, p in zip(streams, (1, 2), strict=True)] == [1, 2]
    for s in (idle, *streams):
        s.cancel()
