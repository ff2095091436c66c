"""SubmitJob calls gathered on the event loop: one thread hop and one transaction per batch,
not per call (the pattern of competition_register.py).

The calls that arrive while the previous batch runs wait here, on the loop, and go to the
pool together: `gathered.submit_gathered` runs them as one batch (or several of MAX_BATCH),
one commit for all. At most one batch is in flight from this loop; each caller gets its own
outcome. Calls with an idempotency key and calls handed over to a waiting worker keep the
per-call path (api/jobs.py).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from coordd.domain import jobs
from coordd.domain.jobs import gathered
from coordd.runtime import Runtime

_Waiting = list[tuple[gathered.Ask, "asyncio.Future[jobs.Submitted]"]]


class SubmitGatherer:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._waiting: _Waiting = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, ask: gathered.Ask) -> jobs.Submitted:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[jobs.Submitted] = loop.create_future()
        self._waiting.append((ask, future))
        if self._task is None:
            # Its own empty context: a batch belongs to no single call (no caller's request
            # id, no caller's idempotency key for the store's before-commit hook).
            self._task = loop.create_task(self._drain(), context=contextvars.Context())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: gathered.MAX_BATCH]
                del self._waiting[: gathered.MAX_BATCH]
                await self._run(batch)
        finally:
            self._task = None
            # Whatever is left (only after an error here) is failed rather than stranded.
            left, self._waiting = self._waiting, []
            for _, future in left:
                if not future.done():
                    future.set_exception(RuntimeError("submission batch ended"))

    async def _run(self, batch: _Waiting) -> None:
        asks = [ask for ask, _ in batch]
        try:
            outcomes: list[Any] = await self.rt.run(gathered.submit_gathered, self.rt, asks)
        except Exception as exc:
            outcomes = [exc] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the caller went away; its job stands
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
