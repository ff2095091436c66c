"""Calls gathered on the event loop: one thread hop and one transaction per batch, not per call.

Register (per competition) and SubmitJob serialize on a row or commit anyway; handing each call
to the thread pool on its own costs the event loop a hop per call (the executor queue, a
cross-thread wake-up, a future), and the pool's threads then find each other again to form a
batch. So the calls for one key that arrive while its previous batch runs wait here, on the
loop, and go to the pool together: `work(key, items)` runs them as one batch of at most
`max_batch` and returns one outcome (an answer or an exception) per item, in order. At most one
batch per key is in flight from this loop; each caller gets its own outcome, and a caller that
went away does not undo its item (it was committed with the others).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from coordd.runtime import Runtime

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741 (the item)
R = TypeVar("R")


class Gatherer(Generic[K, I, R]):
    def __init__(
        self, rt: Runtime, work: Callable[[K, list[I]], list[Any]], max_batch: int, what: str
    ) -> None:
        self.rt = rt
        self.work = work
        self.max_batch = max_batch
        self.what = what  # for the error of a batch that ended abnormally
        self._waiting: dict[K, list[tuple[I, asyncio.Future[R]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: K, item: I) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        waiting = self._waiting.get(key)
        if waiting is None:
            self._waiting[key] = [(item, future)]
            # Its own empty context: a batch belongs to no single call (no caller's request id,
            # no caller's idempotency key for the store's before-commit hook).
            task = loop.create_task(self._drain(key), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            waiting.append((item, future))
        return await future

    async def _drain(self, key: K) -> None:
        try:
            while True:
                waiting = self._waiting.get(key)
                if not waiting:
                    return
                batch = waiting[: self.max_batch]
                del waiting[: self.max_batch]
                await self._run(key, batch)
        finally:
            # Whatever is left (only after an error here) is failed rather than stranded.
            for _, future in self._waiting.pop(key, []):
                if not future.done():
                    future.set_exception(RuntimeError(f"{self.what} batch ended"))

    async def _run(self, key: K, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        items = [item for item, _ in batch]
        try:
            outcomes: list[Any] = await self.rt.run(self.work, key, items)
        except Exception as exc:
            outcomes = [exc] * len(batch)
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if future.done():  # the caller went away; its item stands
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
