"""Publish/subscribe of committed domain events.

Events are hints: subscribers re-read state and also refresh on a timer, so a lost
event delays an update but never corrupts one. The event log table is the record.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import structlog

from coordd.core.events import Event

log = structlog.get_logger(__name__)

_QUEUE_SIZE = 1024


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


class RedisEventBus(EventBus):
    """Fans events out to every replica through Redis pub/sub.

    Local subscribers are served at once; the echo of our own events is ignored by origin,
    so a Redis outage costs only cross-replica delivery.
    """

    kind = "redis"

    def __init__(self, instance_id: str, url: str, prefix: str) -> None:
        super().__init__(instance_id)
        self.channel = f"{prefix}:events"
        import redis
        import redis.asyncio as aioredis

        self._url = url
        # Publishing happens on DB worker threads right after commit: a sync client with short timeouts.
        self._sync = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._async = aioredis.Redis.from_url(url)
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        await super().start()
        self._listener = asyncio.create_task(self._listen(), name="redis-events")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 5)

    async def close(self) -> None:
        if self._listener:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await self._async.aclose()
        self._sync.close()
        await super().close()

    def publish_threadsafe(self, events: list[Event]) -> None:
        super().publish_threadsafe(events)
        try:
            for event in events:
                self._sync.publish(self.channel, event.to_wire(self.instance_id))
        except Exception as exc:  # events are hints; never fail a committed change
            log.warning("redis publish failed", error=str(exc))

    async def _listen(self) -> None:
        backoff = 0.2
        while True:
            try:
                pubsub = self._async.pubsub()
                await pubsub.subscribe(self.channel)
                self._ready.set()
                backoff = 0.2
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    event, origin = Event.from_wire(message["data"])
                    if origin != self.instance_id:
                        self._dispatch([event])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("redis subscription lost; retrying", error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


def make_bus(instance_id: str, redis_url: str, prefix: str) -> EventBus:
    return RedisEventBus(instance_id, redis_url, prefix) if redis_url else EventBus(instance_id)
