"""The public read model of a ceremony, shared by every live page watching it.

`read_board` reads what the ceremony page shows through the domain functions the gRPC API
uses: the transcript (GetTranscript) and each circuit's queue snapshot (WatchQueue's read
model). `Boards` caches one read per ceremony, rendered once: a bus listener bumps the
ceremony's generation when an event names one of its resources, a page asks for a board at
least as new as the generation it saw, and concurrent askers share one in-flight read, so a
change costs one read and one render however many pages are open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from coordd.core.events import Event
from coordd.domain import ceremony
from coordd.events.notify import keys_of
from coordd.runtime import Runtime

# A cached board is re-read after this long even without events (lost hints, clocks).
BOARD_MAX_AGE_S = 5.0


@dataclass(frozen=True)
class CircuitBoard:
    circuit: ceremony.Circuit
    queue_length: int
    # The participant whose turn it is (resource name), and since when.
    current: str
    current_status: str
    current_since: datetime | None
    # How long someone joining now would wait for this circuit (None: no statistics yet).
    estimated_wait_s: float | None
    contributions: list[ceremony.Contribution]


@dataclass(frozen=True)
class Board:
    ceremony: ceremony.Ceremony
    circuits: list[CircuitBoard]
    read_time: datetime
    # Filled by Boards: the rendered live fragment and the JSON document of this read.
    html: str = ""
    doc: dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return ceremony.ceremony_name(self.ceremony.id)

    @property
    def queue_length(self) -> int:
        return sum(k.queue_length for k in self.circuits)

    @property
    def contribution_count(self) -> int:
        return sum(len(k.contributions) for k in self.circuits)

    def watch_keys(self) -> list[str]:
        """The event keys a live page waits on (the ones WatchQueue streams wait on, and more)."""
        cid = self.ceremony.id
        keys = [ceremony.ceremony_name(cid), ceremony.ceremony_name(cid) + "/participants"]
        for k in self.circuits:
            keys += [ceremony.queue_key(cid, k.circuit.id), ceremony.circuit_name(cid, k.circuit.id)]
        return keys


def read_board(ceremony_id: str, now: datetime) -> Board:
    """Blocking: run it with rt.run. NotFound for an unknown ceremony."""
    c, circuits = ceremony.transcript(ceremony_id)
    out = []
    for circuit, contributions in circuits:
        snap = ceremony.queue_snapshot(circuit.id, now)
        length, current, status, since, wait = 0, "", "", None, None
        if snap is not None:
            length = snap.queue_length
            if snap.current is not None:
                current = ceremony.participant_name(c.id, snap.current.id)
                status, since = snap.current.status, snap.current.turn_start_time
            estimate = ceremony.timeouts.estimated_wait(length, snap.per_turn, snap.current_elapsed)
            wait = None if estimate is None else estimate.total_seconds()
        out.append(CircuitBoard(circuit, length, current, status, since, wait, contributions))
    return Board(c, out, now)


def ceremony_of_key(key: str) -> str | None:
    """`ceremonies/<id>...` -> <id>; None for any other key."""
    if not key.startswith("ceremonies/"):
        return None
    return key.split("/", 2)[1] or None


class Boards:
    """One cached, rendered board per ceremony, refreshed after any event about it."""

    def __init__(self, rt: Runtime, finish: Callable[[Board], Board]) -> None:
        self.rt = rt
        self.finish = finish  # adds the rendered fragment and the JSON document
        self._generation: dict[str, int] = {}
        self._cache: dict[str, tuple[int, float, Board]] = {}
        self._inflight: dict[str, tuple[int, asyncio.Future[Board]]] = {}
        self.reads = 0
        rt.bus.add_listener(self._on_events)

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            for key in keys_of(event):
                cid = ceremony_of_key(key)
                if cid is not None:
                    self._generation[cid] = self._generation.get(cid, 0) + 1

    def generation(self, ceremony_id: str) -> int:
        """How many events have named the ceremony: a board got after reading this is at
        least that new."""
        return self._generation.get(ceremony_id, 0)

    async def get(self, ceremony_id: str) -> Board:
        wanted = self._generation.get(ceremony_id, 0)
        cached = self._cache.get(ceremony_id)
        if cached is not None and cached[0] >= wanted and time.monotonic() - cached[1] < BOARD_MAX_AGE_S:
            return cached[2]
        flight = self._inflight.get(ceremony_id)
        if flight is None or flight[0] < wanted:
            future = asyncio.ensure_future(self._read(ceremony_id, wanted))
            flight = (wanted, future)
            self._inflight[ceremony_id] = flight
        return await asyncio.shield(flight[1])

    async def _read(self, ceremony_id: str, generation: int) -> Board:
        try:
            self.reads += 1
            board = self.finish(await self.rt.run(read_board, ceremony_id, self.rt.now()))
            held = self._cache.get(ceremony_id)
            if held is None or held[0] <= generation:
                self._cache[ceremony_id] = (generation, time.monotonic(), board)
            return board
        finally:
            flight = self._inflight.get(ceremony_id)
            if flight is not None and flight[0] == generation:
                del self._inflight[ceremony_id]


def sse_message(event: str, data: str, event_id: str = "") -> bytes:
    """One server-sent event; every line of `data` gets its own `data:` field."""
    lines = [f"event: {event}"]
    if event_id:
        lines.append(f"id: {event_id}")
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return ("\n".join(lines) + "\n\n").encode()
