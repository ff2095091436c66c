"""What a WatchQueue stream shows a participant next: its status, its place in the queue, an
estimated wait, the keys to wait on, and whether the stream is finished. Most wake-ups are
served from the circuit's shared snapshot (see snapshots)."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

from coordd.core.errors import NotFound
from coordd.domain.ceremony.lookup import get_ceremony
from coordd.domain.ceremony.names import ceremony_name, participant_name
from coordd.domain.ceremony.snapshots import (
    ParticipantView,
    QueueSnapshot,
    QueueSnapshots,
    participant_view,
)
from coordd.domain.ceremony.states import CLOSED, CREATED, DONE, FINALIZED, TIMEDOUT, WAITING
from coordd.domain.ceremony.timeouts import estimated_wait
from coordd.runtime import Runtime


class WatchState:
    """What a stream shows now. A plain slotted class: built on every wake-up of every stream
    (a frozen dataclass's __init__ costs a setattr call per field)."""

    __slots__ = ("finished", "keys", "position", "snap", "state", "view", "wait")

    def __init__(
        self,
        view: ParticipantView,
        snap: QueueSnapshot | None,
        state: str,
        position: int,
        wait: timedelta | None,
        keys: tuple[str, ...],
        finished: bool,
    ) -> None:
        self.view = view
        self.snap = snap
        self.state = state
        self.position = position
        self.wait = wait
        self.keys = keys
        self.finished = finished

    @property
    def key(self) -> tuple[Any, ...]:
        """Everything the message shows, for a cheap "did anything change" check."""
        current = self.snap.current.id if self.snap is not None and self.snap.current is not None else ""
        length = self.snap.queue_length if self.snap is not None else 0
        return (self.state, self.view, self.position, length, current, self.wait)


def cached_watch_state(
    rt: Runtime, snapshots: QueueSnapshots, cid: str, pid: str, hint: str | None
) -> WatchState | None:
    """`watch_state` when it needs no read (the circuit's snapshot is cached, fresh, and has
    the participant): no coroutine per wake-up for the common case. None otherwise."""
    snap = snapshots.cached(hint) if hint else None
    if snap is None:
        return None
    view = snap.participants.get(pid)
    if view is None:
        return None
    return _state(rt, cid, pid, view, snap, snap.ceremony_state)


async def watch_state(
    rt: Runtime, snapshots: QueueSnapshots, cid: str, pid: str, hint: str | None
) -> WatchState:
    """Participant `pid` of ceremony `cid` as its stream shows it now; `hint` is the circuit it
    was last seen on."""
    snap = await snapshots.get(hint) if hint else None
    view = snap.participants.get(pid) if snap is not None else None
    if view is None:
        view = await rt.run(participant_view, pid)
        if view is None:
            raise NotFound("your participation no longer exists", reason="NOT_A_PARTICIPANT")
        snap = await snapshots.get(view.circuit_id) if view.circuit_id else None
        if snap is not None:
            view = snap.participants.get(pid, view)
    state = snap.ceremony_state if snap is not None else (await rt.run(get_ceremony, cid)).state
    return _state(rt, cid, pid, view, snap, state)


def _state(
    rt: Runtime, cid: str, pid: str, view: ParticipantView, snap: QueueSnapshot | None, state: str
) -> WatchState:
    # Every stream of a ceremony waits on the same ceremony and ready keys: one string each
    # (interned, kept by the snapshot), not one per stream. Not the queue key: its changes
    # wake the stream once their re-read is cached.
    own_key = participant_name(cid, pid)
    position, wait = 0, None
    if snap is None:
        keys: tuple[str, ...] = (own_key, sys.intern(ceremony_name(cid)))
    else:
        ceremony_key, ready = snap.wait_keys
        keys = (own_key, ceremony_key, ready)
        position = snap.positions.get(pid, 0)
        if view.status == WAITING and snap.per_turn is not None:  # no estimate without statistics
            wait = estimated_wait(position - 1, snap.per_turn, snap.elapsed_at(rt.now()))
    finished = view.status in (DONE, FINALIZED) or (
        state in (CLOSED, FINALIZED) and view.status in (CREATED, WAITING, TIMEDOUT)
    )
    return WatchState(view, snap, state, position, wait, keys, finished)
