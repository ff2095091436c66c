"""Redis pub/sub between replicas (channel `<redis_prefix>:events`).

The subscriber runs on the event loop (redis.asyncio) and reconnects with backoff; the
publisher thread sends with a sync client and short timeouts. A failed publish or a lost
subscription marks the link down, so the bus sends over its fallback (PostgreSQL) until the
subscriber is back and Redis answers a ping.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from coordd.core.events import Event
from coordd.events.link import Link, Receiver

log = structlog.get_logger(__name__)

_BACKOFF_MIN_S = 0.2
_BACKOFF_MAX_S = 5.0
# The subscriber wakes this often to check the link (and a PING on the connection every
# _HEALTH_CHECK_S catches a server that went away without closing the socket).
_TICK_S = 1.0
_HEALTH_CHECK_S = 5


class RedisTransport:
    name = "redis"
    has_peers = True  # not known: always sent

    def __init__(self, bus: Receiver, url: str, prefix: str) -> None:
        import redis
        import redis.asyncio as aioredis

        self.bus = bus
        self.link = Link(self.name)
        self.channel = f"{prefix}:events"
        self._sync = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._async = aioredis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_keepalive=True, health_check_interval=_HEALTH_CHECK_S
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="redis-events")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._async.aclose()
        self._sync.close()

    def publish(self, events: list[Event]) -> None:
        pipe = self._sync.pipeline(transaction=False)
        for event in events:
            pipe.publish(self.channel, event.to_wire(self.bus.instance_id))
        pipe.execute()

    async def _listen(self) -> None:
        backoff = _BACKOFF_MIN_S
        while True:
            pubsub = self._async.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self._async.ping()
                self.link.mark_up()
                backoff = _BACKOFF_MIN_S
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_TICK_S)
                    if message is None:
                        if not self.link.up:  # a publish failed: back once Redis answers again
                            await self._async.ping()
                            self.link.mark_up()
                        continue
                    if message.get("type") != "message":
                        continue
                    event, origin = Event.from_wire(message["data"])
                    if origin != self.bus.instance_id:
                        self.bus.receive([event])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.link.mark_down(str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
