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
    """Waiters per key. A key with one waiter (a participant's own key, say) maps to the
    waiter itself, not to a one-element set: with thousands of streams each waiting on a key
    of its own, a set per key would be most of a waiting stream's memory here."""

    def __init__(self, bus: EventBus) -> None:
        self._waiters: dict[str, asyncio.Future[bool] | set[asyncio.Future[bool]]] = {}
        # Waiters armed with slack, by (slack, deadline slot), and the loop their timers run on.
        self._slots: dict[tuple[float, int], set[asyncio.Future[bool]]] = {}
        self._slots_loop: asyncio.AbstractEventLoop | None = None
        bus.add_listener(self._on_events)

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            for key in keys_of(event):
                self.wake(key)

    def wake(self, key: str) -> None:
        """Wakes this process's waiters on `key` (also a local signal, not an event: e.g. a
        shared read that a change made its waiters wait for is ready)."""
        held = self._waiters.get(key)
        if held is None:
            return
        if type(held) is set:
            for waiter in held:
                if not waiter.done():
                    waiter.set_result(True)
        elif not held.done():  # type: ignore[union-attr]
            held.set_result(True)  # type: ignore[union-attr]

    def waiting(self, key: str) -> int:
        held = self._waiters.get(key)
        if held is None:
            return 0
        return len(held) if type(held) is set else 1

    async def wait(self, keys: Iterable[str], timeout: float) -> bool:
        """Returns True when woken by an event on any key, False on timeout.

        One future and one timer handle per wait (no wait_for/shield): with thousands of
        streams waiting, this is on the hot path of every update.
        """
        if not isinstance(keys, (list, tuple)):
            keys = list(keys)
        waiter, timer = self.arm(keys, timeout)
        try:
            return await waiter
        finally:
            self.disarm(keys, waiter, timer)

    def arm(
        self, keys: list[str] | tuple[str, ...], timeout: float, *, slack: float = 0.0
    ) -> tuple[asyncio.Future[bool], asyncio.TimerHandle | set[asyncio.Future[bool]]]:
        """`wait` without its coroutine, for a caller that waits often and long (a stream):
        the future to await (True when woken, False on timeout) and its timer; the caller
        must `disarm` them in a `finally`.

        With `slack` (seconds), the timeout may fire up to that much late: the waiter joins
        the shared set of every waiter whose deadline falls in the same `slack`-long slot,
        expired by one timer for all of them, instead of a timer handle of its own (thousands
        of streams re-arm on every change; a handle each is a heap push, a cancel and ~250
        bytes per stream)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        waiters = self._waiters
        for key in keys:
            held = waiters.get(key)
            if held is None:
                waiters[key] = waiter
            elif type(held) is set:
                held.add(waiter)
            elif held is not waiter:
                waiters[key] = {held, waiter}  # type: ignore[arg-type]
        if slack <= 0.0:
            return waiter, loop.call_later(timeout, _expire, waiter)
        if loop is not self._slots_loop:  # slots belong to the loop that runs their timers
            self._slots_loop, self._slots = loop, {}
        slot = (slack, -int(-(loop.time() + timeout) // slack))  # the deadline, rounded up
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = set()
            loop.call_at(slot[1] * slack, self._expire_slot, slot, bucket)
        bucket.add(waiter)
        return waiter, bucket

    def disarm(
        self,
        keys: list[str] | tuple[str, ...],
        waiter: asyncio.Future[bool],
        timer: asyncio.TimerHandle | set[asyncio.Future[bool]],
    ) -> None:
        if type(timer) is set:
            timer.discard(waiter)
        else:
            timer.cancel()  # type: ignore[union-attr]
        waiters = self._waiters
        for key in keys:
            held = waiters.get(key)
            if held is waiter:
                del waiters[key]
            elif type(held) is set:
                held.discard(waiter)
                if len(held) == 1:
                    waiters[key] = next(iter(held))
                elif not held:
                    del waiters[key]

    def _expire_slot(self, slot: tuple[float, int], bucket: set[asyncio.Future[bool]]) -> None:
        if self._slots.get(slot) is bucket:
            del self._slots[slot]
        for waiter in bucket:
            if not waiter.done():
                waiter.set_result(False)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)
