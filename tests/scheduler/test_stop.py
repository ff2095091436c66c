"""Stopping the scheduler always finishes, even when the stop lands as an election completes."""

from __future__ import annotations

import asyncio

from coordd.scheduler.core import Elector, Leadership, Scheduler


class GatedElector(Elector):
    """An election that finishes only when the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def acquire(self, rt) -> Leadership | None:  # type: ignore[no-untyped-def]
        await self.gate.wait()
        self.gate.clear()
        return await super().acquire(rt)


def test_a_stop_that_lands_as_the_election_finishes_still_stops(server):
    async def scenario() -> None:
        elector = GatedElector()
        scheduler = Scheduler(server.rt, [], elector)
        await scheduler.start()
        await asyncio.sleep(0.05)  # the leader loop now waits in acquire()
        # The gate opens and the stop's cancellation arrives in the same turn of the loop:
        # Python 3.11's wait_for returns the election's result and drops the cancellation.
        elector.gate.set()
        stopping = asyncio.ensure_future(scheduler.stop())
        # asyncio.wait, not wait_for: a timeout must not cancel stop() (that would rescue it).
        done, _ = await asyncio.wait({stopping}, timeout=10)
        if not done:
            stopping.cancel()
            scheduler._main.cancel()  # type: ignore[union-attr]
        assert done, "stop() never returned: the leader loop kept running"
        assert scheduler._main is not None and scheduler._main.done()

    server.call(scenario())
