"""Scheduler tasks of the notification outbox: the dispatcher.

Deliveries are sent concurrently in a thread pool of their own (never the database pool:
a POST may block for its whole timeout), at most `MAX_IN_FLIGHT` at once, and no more
per channel and per owner than domain/notify/delivery.py allows: a hung receiver, or an
owner flooding test sends, only slows itself. Each tick claims only as many deliveries
as there are free slots, so nothing waits claimed; when leadership is lost or the daemon
stops, the deliveries in flight finish and are recorded before the database closes.

Fencing: a claim is made in a fenced transaction (only the leader claims), and right before
each POST the sender checks again, in the sending thread, that this process still leads
(`Fence.still_leading`, the monotonic deadline) and that the claim has at least the send
timeout plus a margin left, so no other sender can take the delivery while the POST is in
flight. A delivery that fails the check is not sent and its claim is handed back. Once the
POST has been made its outcome is recorded even if leadership ended meanwhile: that write is
conditional on the claim (not on the lease), so a finished POST is never repeated by the
next leader only because its record was refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import structlog

from coordd.domain import notify
from coordd.notify import Outcome
from coordd.runtime import Runtime
from coordd.scheduler.core import Task
from coordd.store.scheduler_lease import FENCE

# A POST starts only if its claim outlives the longest send (webhook/SMTP timeouts) by this.
SEND_BUDGET_S = 15.0

log = structlog.get_logger("coordd.notify")

TICK_S = 0.5


class Dispatcher:
    def __init__(self, rt: Runtime, size: int | None = None) -> None:
        self.rt = rt
        self.size = size or rt.settings.notify_max_in_flight
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
            fence = FENCE.get()
            still_leading = fence.still_leading if fence is not None else (lambda: True)
            try:
                outcome = await loop.run_in_executor(self.pool, self._fenced_send, claim, still_leading)
            except Exception as exc:  # a bug in an adapter is one failed attempt, not a lost delivery
                outcome = Outcome(False, 0, f"{type(exc).__name__}: {exc}"[:500])
            if outcome is None:
                # Not sent: handed back (conditional on the claim), due at once for the leader.
                await self.rt.run(_unfenced, notify.release, self.rt, [claim])
                return
            await self.rt.run(_unfenced, notify.record, self.rt, claim, outcome)
            self.sent += 1
        except Exception as exc:
            # Not recorded: the claim expires and the delivery is attempted again.
            log.error("delivery outcome not recorded", delivery=claim.delivery.id, error=str(exc))
        finally:
            self._done(channel.id, channel.owner_id)

    def _fenced_send(self, claim: notify.Claim, still_leading: Callable[[], bool]) -> Outcome | None:
        """Notification pool thread: the POST, only while leading and with time left on the
        claim; None when it was not attempted."""
        if not still_leading():
            log.info("delivery not sent: leadership ended", delivery=claim.delivery.id)
            return None
        if self.rt.now() + timedelta(seconds=SEND_BUDGET_S) > claim.until:
            log.info("delivery not sent: its claim is about to expire", delivery=claim.delivery.id)
            return None
        return notify.send(self.rt, claim)

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


def _unfenced(fn: Callable[..., Any], *args: Any) -> Any:
    """DB thread (a copy of the task's context): runs `fn` without the lease fence. Only for
    writes conditional on a delivery's claim, which already fences them."""
    FENCE.set(None)
    return fn(*args)


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
