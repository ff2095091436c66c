"""The read model WatchQueue streams share: one read of a circuit's queue per change.

`queue_snapshot` reads everything a stream shows for every participant on one circuit, in
one go. `QueueSnapshots` caches one snapshot per circuit: a bus listener bumps the circuit's
generation when an event names its queue key (`QueueKey`), a stream asks for a snapshot at
least as new as the generation it saw, and concurrent askers share one in-flight read. The
read starts after the bump, so it sees the change: a change costs one query, not one per
watcher.

Streams do not wait on the queue key itself but on its `ready_key`: the listener starts the
re-read as soon as the change is committed and wakes the circuit's streams once it is done
(a burst of changes during the read costs one more read, and the streams wake once, with the
newest state). Woken streams find the snapshot cached and never wait on the read themselves,
so a change is one read plus one wake-up per stream.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from coordd.core.events import Event
from coordd.domain.ceremony.names import QueueKey, ceremony_name
from coordd.domain.ceremony.states import WAITING
from coordd.domain.ceremony.timeouts import average
from coordd.events.notify import keys_of
from coordd.runtime import Runtime
from coordd.store.ceremony import views
from coordd.store.ceremony.views import ParticipantView

__all__ = [
    "ParticipantView",
    "QueueSnapshot",
    "QueueSnapshots",
    "participant_view",
    "queue_snapshot",
    "ready_key",
]

# A cached queue snapshot is re-read after this long even without events (lost hints).
SNAPSHOT_MAX_AGE_S = 5.0


@dataclass(frozen=True)
class QueueSnapshot:
    """One read of a circuit's queue, shared by every stream watching it."""

    ceremony_id: str
    ceremony_state: str
    circuit_id: str
    current: ParticipantView | None
    per_turn: timedelta | None
    # How long the current contributor's turn has run, as of the read.
    current_elapsed: timedelta | None
    positions: dict[str, int] = field(default_factory=dict)
    participants: dict[str, ParticipantView] = field(default_factory=dict)
    # The ceremony's and the ready key every stream of the circuit waits on, interned: one
    # string each for all of them, formatted once per read rather than per wake-up.
    wait_keys: tuple[str, str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        keys = (sys.intern(ceremony_name(self.ceremony_id)), sys.intern(ready_key(self.circuit_id)))
        object.__setattr__(self, "wait_keys", keys)

    @property
    def queue_length(self) -> int:
        return len(self.positions)

    def elapsed_at(self, now: datetime) -> timedelta | None:
        """How long the current turn has run at `now`: a cached snapshot outlives its read (it
        is re-read on changes), and a waiting contributor's estimate counts down meanwhile."""
        if self.current is not None and self.current.turn_start_time is not None:
            return now - self.current.turn_start_time
        return self.current_elapsed


def ready_key(circuit_id: str) -> str:
    """The local key a circuit's streams wait on: signalled once a change's re-read is cached."""
    return f"snapshot-ready/{circuit_id}"


def participant_view(participant_id: str) -> ParticipantView | None:
    return views.participant_view(participant_id)


def queue_snapshot(circuit_id: str, now: datetime) -> QueueSnapshot | None:
    """Everything WatchQueue needs for every participant on one circuit, in one read."""
    circuit = views.circuit_with_ceremony(circuit_id)
    if circuit is None:
        return None
    c = circuit.ceremony
    participants: dict[str, ParticipantView] = {}
    positions: dict[str, int] = {}
    for view in views.queue_views(circuit_id):
        participants[view.id] = view
        if view.status == WAITING:
            positions[view.id] = len(positions) + 1
    current = participants.get(circuit.current_participant or "")
    avg_c = average(circuit.contribution_total_s, circuit.contribution_count)
    avg_v = average(circuit.verification_total_s, circuit.verification_count)
    per_turn = None if avg_c is None else avg_c + (avg_v or timedelta())
    elapsed = None
    if current is not None:
        elapsed = now - current.turn_start_time if current.turn_start_time else timedelta()
    return QueueSnapshot(c.id, c.state, circuit.id, current, per_turn, elapsed, positions, participants)


class QueueSnapshots:
    """One cached read per circuit, refreshed after any event on its queue key."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._generation: dict[str, int] = {}
        self._cache: dict[str, tuple[int, float, QueueSnapshot | None]] = {}
        self._inflight: dict[str, tuple[int, asyncio.Future[QueueSnapshot | None]]] = {}
        self._refreshing: dict[str, asyncio.Future[None]] = {}
        self.reads = 0
        rt.bus.add_listener(self._on_events)

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            for text in keys_of(event):
                key = QueueKey.parse(text)
                if key is not None:
                    circuit = key.circuit_id
                    self._generation[circuit] = self._generation.get(circuit, 0) + 1
                    # Only circuits someone has read are kept fresh (a stream reads first).
                    known = circuit in self._cache or circuit in self._inflight
                    if known and circuit not in self._refreshing:
                        self._refreshing[circuit] = asyncio.ensure_future(self._refresh(circuit))

    def is_current(self, snap: QueueSnapshot) -> bool:
        """Whether `snap` is still the newest read of its circuit (a stream that saw it may
        wait for the next change; otherwise a change came while it was busy)."""
        cached = self._cache.get(snap.circuit_id)
        return (
            cached is not None and cached[2] is snap and cached[0] >= self._generation.get(snap.circuit_id, 0)
        )

    async def _refresh(self, circuit_id: str) -> None:
        """Re-reads until the cache holds the newest generation, then wakes the streams."""
        try:
            while True:
                generation = self._generation.get(circuit_id, 0)
                await self.get(circuit_id)
                if self._generation.get(circuit_id, 0) == generation:
                    break
        except Exception:  # the streams' own reads (on their timers) report and retry
            pass
        finally:
            del self._refreshing[circuit_id]
        self.rt.notifier.wake(ready_key(circuit_id))

    def cached(self, circuit_id: str) -> QueueSnapshot | None:
        """The cached snapshot when `get` would return it without a read, else None."""
        cached = self._cache.get(circuit_id)
        if (
            cached is not None
            and cached[0] >= self._generation.get(circuit_id, 0)
            and time.monotonic() - cached[1] < SNAPSHOT_MAX_AGE_S
        ):
            return cached[2]
        return None

    async def get(self, circuit_id: str) -> QueueSnapshot | None:
        wanted = self._generation.get(circuit_id, 0)
        cached = self._cache.get(circuit_id)
        if cached is not None and cached[0] >= wanted and time.monotonic() - cached[1] < SNAPSHOT_MAX_AGE_S:
            return cached[2]
        flight = self._inflight.get(circuit_id)
        if flight is None or flight[0] < wanted:
            future = asyncio.ensure_future(self._read(circuit_id, wanted))
            flight = (wanted, future)
            self._inflight[circuit_id] = flight
        return await asyncio.shield(flight[1])

    async def _read(self, circuit_id: str, generation: int) -> QueueSnapshot | None:
        try:
            self.reads += 1
            snap = await self.rt.run(queue_snapshot, circuit_id, self.rt.now())
            held = self._cache.get(circuit_id)
            if held is None or held[0] <= generation:
                self._cache[circuit_id] = (generation, time.monotonic(), snap)
            return snap
        finally:
            flight = self._inflight.get(circuit_id)
            if flight is not None and flight[0] == generation:
                del self._inflight[circuit_id]
