"""What a bus transport shares with the bus: its link state and the calls between them.

Separate from bus.py so transports (pgbus, redisbus) and the bus import it, not each other.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Protocol

import structlog

from coordd.core.clock import utcnow
from coordd.core.events import Event

log = structlog.get_logger("coordd.events.bus")


class Receiver(Protocol):
    """The bus as a transport sees it."""

    instance_id: str

    def receive(self, events: list[Event]) -> None:
        """Remote events, on the event loop."""

    def receive_threadsafe(self, events: list[Event]) -> None:
        """Remote events, from a transport's own thread."""


class Link:
    """A transport's state, shared by the threads using it: up, or down since a time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self.up = False
        self.down_since: datetime | None = None
        # Set once the first connection attempt has ended (either way): start() waits for it.
        self.settled = threading.Event()

    def mark_up(self) -> None:
        with self._lock:
            was_down = self.down_since is not None
            self.up, self.down_since = True, None
        self.settled.set()
        if was_down:
            log.warning("event bus link restored", link=self.name)

    def mark_down(self, error: str) -> None:
        with self._lock:
            first = self.down_since is None
            self.up = False
            if first:
                self.down_since = utcnow()
        self.settled.set()
        if first:
            log.warning("event bus link down; retrying", link=self.name, error=error)


class Transport(Protocol):
    """Carries events to the other replicas. `publish` runs on the publisher thread and
    raises when the events could not be sent; received events go to the bus's `receive`."""

    name: str
    link: Link
    # False when no other replica would receive what is sent (then nothing is).
    has_peers: bool

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def publish(self, events: list[Event]) -> None: ...
