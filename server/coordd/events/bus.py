"""Publish/subscribe of committed domain events.

Events are hints: subscribers re-read state and also refresh on a timer, so a lost
event delays an update but never corrupts one. The event log table is the record.

`EventBus` fans out in-process (the SQLite default). `ReplicatedBus` also carries events
between replicas over transports (events/pgbus.py: PostgreSQL LISTEN/NOTIFY; events/redisbus.py:
Redis pub/sub), the first being the configured one and the next the fallback while it is
down. Committing threads only queue events: one publisher thread sends them, so a slow or
unreachable transport never holds a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import structlog

from coordd.core.clock import utcnow
from coordd.core.events import Event
from coordd.events.link import Transport

if TYPE_CHECKING:
    from coordd.config import Settings

log = structlog.get_logger(__name__)

_QUEUE_SIZE = 1024
# Events waiting for the publisher thread; past this the oldest are dropped (they are hints).
_OUTBOX_SIZE = 10_000
_PUBLISH_BATCH = 256
# Remote event ids remembered to drop a second copy (an event sent over both transports
# while one of them was going down).
_SEEN_IDS = 4096
# The health service name reporting the bus: NOT_SERVING while the configured bus is down.
HEALTH_SERVICE = "coordd.events"
REFRESH_FALLBACK = "the refresh interval"


class Subscription:
    """One subscriber's bounded queue. When a slow subscriber overflows, the oldest events go."""

    def __init__(self, bus: EventBus, prefix: str) -> None:
        self._bus = bus
        self.prefix = prefix
        self.queue: asyncio.Queue[Event] = asyncio.Queue(_QUEUE_SIZE)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        if not event.type.startswith(self.prefix):
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    def close(self) -> None:
        self._bus._subscriptions.discard(self)

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            while True:
                yield await self.queue.get()
        finally:
            self.close()


class EventBus:
    """In-process fan-out. Thread-safe publish: commits happen on worker threads."""

    kind = "memory"

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[Callable[[list[Event]], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        self._subscriptions.clear()

    @property
    def healthy(self) -> bool:
        """False while events cannot reach the other replicas the configured way."""
        return True

    def describe(self) -> str:
        """The bus and its state, as GetStatus reports it: `redis`, or
        `redis (down since 2026-01-01T10:00:00Z, falling back to postgresql)`."""
        return self.kind

    def add_listener(self, callback: Callable[[list[Event]], None]) -> None:
        """Called on the event loop with every batch of committed events (local and remote)."""
        self._listeners.append(callback)

    def subscribe(self, prefix: str = "") -> Subscription:
        sub = Subscription(self, prefix)
        self._subscriptions.add(sub)
        return sub

    def publish_threadsafe(self, events: list[Event]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closing during shutdown
            loop.call_soon_threadsafe(self._dispatch, events)

    def _dispatch(self, events: list[Event]) -> None:
        for listener in self._listeners:
            try:
                listener(events)
            except Exception as exc:  # a broken listener must not starve the others
                log.error("event listener failed", error=str(exc))
        for event in events:
            for sub in list(self._subscriptions):
                sub.offer(event)


class ReplicatedBus(EventBus):
    """In-process fan-out plus cross-replica transports, first = configured, rest = fallbacks.

    Local subscribers are served at once. Events from this replica coming back are ignored by
    origin (each transport checks), and a remote event received twice (over two transports)
    is delivered once.
    """

    def __init__(self, instance_id: str) -> None:
        super().__init__(instance_id)
        self.transports: list[Transport] = []
        self._outbox: deque[Event] = deque(maxlen=_OUTBOX_SIZE)
        self._wake = threading.Condition()
        self._stopping = False
        self._publisher: threading.Thread | None = None
        self._seen: set[int] = set()
        self._seen_order: deque[int] = deque()
        # Events sent, per transport name, and events no transport could send.
        self.sent: dict[str, int] = {}
        self.unsent = 0

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.transports[0].name

    @property
    def healthy(self) -> bool:
        return self.transports[0].link.up

    def describe(self) -> str:
        primary = self.transports[0].link
        if primary.up:
            return primary.name
        since = primary.down_since or utcnow()
        fallback = next((t.name for t in self.transports[1:] if t.link.up), REFRESH_FALLBACK)
        return (
            f"{primary.name} (down since {since.strftime('%Y-%m-%dT%H:%M:%SZ')}, falling back to {fallback})"
        )

    async def start(self) -> None:
        await super().start()
        for transport in self.transports:
            await transport.start()
        self._publisher = threading.Thread(target=self._publish_loop, name="coordd-events-pub", daemon=True)
        self._publisher.start()
        # Ready once every link has connected or failed once: a down transport must not hold start-up.
        for transport in self.transports:
            await asyncio.to_thread(transport.link.settled.wait, 5.0)

    async def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._publisher is not None:
            await asyncio.to_thread(self._publisher.join, 5.0)
        for transport in self.transports:
            with contextlib.suppress(Exception):
                await transport.close()
        await super().close()

    def publish_threadsafe(self, events: list[Event]) -> None:
        super().publish_threadsafe(events)
        if not any(t.has_peers for t in self.transports):
            return  # the only replica: nobody to tell
        with self._wake:
            self._outbox.extend(events)
            self._wake.notify()

    def receive_threadsafe(self, events: list[Event]) -> None:
        """Remote events from a transport's own thread."""
        loop = self._loop
        if loop is None or loop.is_closed() or not events:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self.receive, events)

    def receive(self, events: list[Event]) -> None:
        """Remote events, on the event loop."""
        fresh = []
        for event in events:
            if event.id in self._seen:
                continue
            self._seen.add(event.id)
            self._seen_order.append(event.id)
            if len(self._seen_order) > _SEEN_IDS:
                self._seen.discard(self._seen_order.popleft())
            fresh.append(event)
        if fresh:
            self._dispatch(fresh)

    def _publish_loop(self) -> None:
        while True:
            with self._wake:
                while not self._outbox and not self._stopping:
                    self._wake.wait()
                if not self._outbox:
                    return
                batch = [self._outbox.popleft() for _ in range(min(len(self._outbox), _PUBLISH_BATCH))]
            self._send(batch)

    def _send(self, batch: list[Event]) -> None:
        """Over the first transport that is up (or, if none is, the last one tried)."""
        usable = [t for t in self.transports if t.link.up] or self.transports[-1:]
        for transport in usable:
            if not transport.has_peers:
                return
            try:
                transport.publish(batch)
                self.sent[transport.name] = self.sent.get(transport.name, 0) + len(batch)
                return
            except Exception as exc:  # events are hints; never fail a committed change
                transport.link.mark_down(str(exc))
        self.unsent += len(batch)


def make_bus(instance_id: str, settings: Settings) -> EventBus:
    """Redis when configured; on PostgreSQL, LISTEN/NOTIFY (alone, or as Redis's fallback);
    otherwise in-process only."""
    pg = settings.database_url and settings.pg_event_bus
    if not settings.redis_url and not pg:
        return EventBus(instance_id)
    bus = ReplicatedBus(instance_id)
    if settings.redis_url:
        from coordd.events.redisbus import RedisTransport

        bus.transports.append(RedisTransport(bus, settings.redis_url, settings.redis_prefix))
    if pg:
        from coordd.events.pgbus import PostgresTransport

        bus.transports.append(PostgresTransport(bus, settings.database_url))
    return bus
