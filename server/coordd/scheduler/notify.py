"""Scheduler tasks of the notification outbox: the dispatcher.

Deliveries are sent concurrently in a thread pool of their own (never the database pool:
a POST may block for its whole timeout), at most `MAX_IN_FLIGHT` at once, and no more
per channel and per owner than domain/notify/delivery.py allows: a hung receiver, or an
owner flooding test sends, only slows itself. Each tick claims only as many deliveries
as there are free slots, so nothing waits claimed; when leadership is lost or the daemon
stops, the deliveries in flight finish and are recorded before the database closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from concurrent.futures import ThreadPoolExecutor

import structlog

from coordd.domain import notify
from coordd.notify import Outcome
from coordd.runtime import Runtime
from coordd.scheduler.core import Task

log = structlog.get_logger("coordd.notify")

TICK_S = 0.5


class Dispatcher:
    def __init__(self, rt: Runtime, size: int = notify.MAX_IN_FLIGHT) -> None:
        self.rt = rt
        self.size = size
        self.pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="coordd-notify")
        self.by_channel: dict[str, int] = {}
        self.by_owner: dict[str, int] = {}
        self.sending: set[asyncio.Task[None]] = set()
        self.sent = 0

    async def tick(self, rt: Runtime) -> int:
        """Claims what fits in the free slots and starts sending it; returns how many."""
        free = self.size - len(self.sending)
        if free <= 0:
            return 0
        claiming = asyncio.ensure_future(
            rt.run(notify.claim_due, rt, free, dict(self.by_channel), dict(self.by_owner))
        )
        try:
            claims = await asyncio.shield(claiming)
        except asyncio.CancelledError:
            # Stopped mid-claim: what was claimed is handed back, not left claimed.
            with contextlib.suppress(Exception):
                await rt.run(notify.release, rt, await claiming)
            raise
        for claim in claims:
            channel = claim.channel
            self.by_channel[channel.id] = self.by_channel.get(channel.id, 0) + 1
            self.by_owner[channel.owner_id] = self.by_owner.get(channel.owner_id, 0) + 1
            task = asyncio.create_task(self._send(claim), name=f"deliver:{claim.delivery.id}")
            self.sending.add(task)
            task.add_done_callback(self.sending.discard)
        return len(claims)

    async def _send(self, claim: notify.Claim) -> None:
        loop = asyncio.get_running_loop()
        channel = claim.channel
        try:
            try:
                outcome = await loop.run_in_executor(self.pool, notify.send, self.rt, claim)
            except Exception as exc:  # a bug in an adapter is one failed attempt, not a lost delivery
                outcome = Outcome(False, 0, f"{type(exc).__name__}: {exc}"[:500])
            await self.rt.run(notify.record, self.rt, claim, outcome)
            self.sent += 1
        except Exception as exc:
            # Not recorded: the claim expires and the delivery is attempted again.
            log.error("delivery outcome not recorded", delivery=claim.delivery.id, error=str(exc))
        finally:
            self._done(channel.id, channel.owner_id)

    def _done(self, channel_id: str, owner_id: str) -> None:
        for table, key in ((self.by_channel, channel_id), (self.by_owner, owner_id)):
            table[key] -= 1
            if table[key] <= 0:
                del table[key]

    async def drain(self, rt: Runtime) -> None:
        """Lets the deliveries in flight finish (each within its send timeout) and record."""
        if self.sending:
            log.info("waiting for deliveries in flight", count=len(self.sending))
            with contextlib.suppress(Exception):
                await asyncio.gather(*list(self.sending), return_exceptions=True)

    def close(self) -> None:
        self.pool.shutdown(wait=False)


_dispatchers: weakref.WeakKeyDictionary[Runtime, Dispatcher] = weakref.WeakKeyDictionary()


def dispatcher_for(rt: Runtime) -> Dispatcher:
    dispatcher = _dispatchers.get(rt)
    if dispatcher is None:
        dispatcher = _dispatchers[rt] = Dispatcher(rt)
    return dispatcher


async def deliver(rt: Runtime) -> int:
    return await dispatcher_for(rt).tick(rt)


async def drain(rt: Runtime) -> None:
    await dispatcher_for(rt).drain(rt)


def tasks() -> list[Task]:
    return [Task("notify-deliver", TICK_S, deliver, stop=drain)]
