"""Wake streams waiting on a resource when an event about it is committed.

Like grpc_health's async servicer: waiters per key, cleanup in `finally`. Streams treat a
wake-up as a hint and re-read state; they also wake on their timeout, so a lost event only
delays an update. One bus listener serves every waiter: cost per event is the number of
waiters on that key, not the number of open streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from coordd.core.events import Event
from coordd.events.bus import EventBus


def keys_of(event: Event) -> list[str]:
    """An event wakes its subject and any extra keys it lists in data["watch_keys"]."""
    extra = event.data.get("watch_keys") or []
    return [event.subject, *[k for k in extra if isinstance(k, str)]]


class Notifier:
    def __init__(self, bus: EventBus) -> None:
        self._waiters: dict[str, set[asyncio.Future[bool]]] = {}
        bus.add_listener(self._on_events)

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            for key in keys_of(event):
                for waiter in self._waiters.get(key, ()):
                    if not waiter.done():
                        waiter.set_result(True)

    def wake(self, key: str) -> None:
        """Wakes this process's waiters on `key` (a local signal, not an event: e.g. a shared
        read that a change made its waiters wait for is ready)."""
        for waiter in self._waiters.get(key, ()):
            if not waiter.done():
                waiter.set_result(True)

    def waiting(self, key: str) -> int:
        return len(self._waiters.get(key, ()))

    async def wait(self, keys: Iterable[str], timeout: float) -> bool:
        """Returns True when woken by an event on any key, False on timeout.

        One future and one timer handle per wait (no wait_for/shield): with thousands of
        streams waiting, this is on the hot path of every update.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        keys = list(keys)
        for key in keys:
            self._waiters.setdefault(key, set()).add(waiter)
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            for key in keys:
                bucket = self._waiters.get(key)
                if bucket is not None:
                    bucket.discard(waiter)
                    if not bucket:
                        del self._waiters[key]


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
