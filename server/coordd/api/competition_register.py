"""Register requests gathered on the event loop: one thread hop per batch, not per call.

The registrations of one competition serialize on its row and run in shared transactions
anyway (domain/competition/registration.py). Handing each call to the thread pool on its own
costs the event loop a hop per call (the executor queue, a cross-thread wake-up, a future),
and the pool's threads then find each other again to form the batch. So the calls for one
competition that arrive while its previous batch runs wait here, on the loop, and go to the
pool together: `register_many` runs them as one batch (or several of MAX_BATCH). At most one
batch per competition is in flight from this loop; each caller gets its own outcome.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from coordd.domain import competition as comp_rules
from coordd.runtime import Runtime

_Waiting = list[tuple[comp_rules.Ask, "asyncio.Future[comp_rules.Registered]"]]


class RegisterGatherer:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._waiting: dict[str, _Waiting] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def register(self, comp_id: str, ask: comp_rules.Ask) -> comp_rules.Registered:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[comp_rules.Registered] = loop.create_future()
        waiting = self._waiting.get(comp_id)
        if waiting is None:
            self._waiting[comp_id] = [(ask, future)]
            # Its own empty context: a batch belongs to no single call (no caller's request id,
            # no caller's idempotency key for the store's before-commit hook).
            task = loop.create_task(self._drain(comp_id), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            waiting.append((ask, future))
        return await future

    async def _drain(self, comp_id: str) -> None:
        try:
            while True:
                waiting = self._waiting.get(comp_id)
                if not waiting:
                    return
                batch = waiting[: comp_rules.MAX_BATCH]
                del waiting[: comp_rules.MAX_BATCH]
                await self._run(comp_id, batch)
        finally:
            # Whatever is left (only after an error here) is failed rather than stranded.
            for _, future in self._waiting.pop(comp_id, []):
                if not future.done():
                    future.set_exception(RuntimeError("registration batch ended"))

    async def _run(self, comp_id: str, batch: _Waiting) -> None:
        asks = [ask for ask, _ in batch]
        try:
            outcomes: list[Any] = await self.rt.run(comp_rules.register_many, self.rt, comp_id, asks)
        except Exception as exc:
            outcomes = [exc] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the caller went away; its registration stands
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
