"""Calls gathered on the event loop: one thread hop and one transaction per batch, not per call.

Register (per competition) and SubmitJob serialize on a row or commit anyway; handing each call
to the thread pool on its own costs the event loop a hop per call (the executor queue, a
cross-thread wake-up, a future), and the pool's threads then find each other again to form a
batch. So the calls for one key wait here together: `work(key, items)` runs them as one batch of
at most `max_batch` and returns one outcome (an answer or an exception) per item, in order.

At most one batch per key is in flight from this loop, run by one pool thread that keeps
draining the key: when a batch is done it takes the calls that arrived meanwhile at once, in the
same thread, and hands the finished batch's outcomes to the loop (one wake-up per batch). The
hop to the pool is paid when a key's calls start arriving, not once per batch: under load a
batch's hop cost as much as its transaction's round trips (docs/PERFORMANCE.md, issue #18,
session 10). Each caller gets its own outcome, and a caller that went away does not undo its
item (it was committed with the others). `work` turns its own failures into outcomes (GroupCommit
does, with its retries); an exception it raises anyway fails that batch's callers only.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
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
        # Shared with the draining thread: the calls waiting per key, and the keys being drained.
        self._lock = threading.Lock()
        self._waiting: dict[K, list[tuple[I, asyncio.Future[R]]]] = {}
        self._draining: set[K] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, key: K, item: I) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        with self._lock:
            self._waiting.setdefault(key, []).append((item, future))
            start = key not in self._draining
            if start:
                self._draining.add(key)
        if start:
            # Its own empty context: a batch belongs to no single call (no caller's request id,
            # no caller's idempotency key for the store's before-commit hook).
            task = loop.create_task(self._drain(key), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, key: K) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self.rt.run(self._drain_in_thread, loop, key)
        except BaseException as exc:
            # Whatever is left (only after an error here) is failed rather than stranded. (After
            # a normal end the thread has let go of the key: it may be a new drain's already.)
            with self._lock:
                self._draining.discard(key)
                left = self._waiting.pop(key, [])
            for _, future in left:
                if not future.done():
                    future.set_exception(RuntimeError(f"{self.what} batch ended"))
            if not isinstance(exc, Exception):
                raise  # cancelled: the loop is shutting down

    def _drain_in_thread(self, loop: asyncio.AbstractEventLoop, key: K) -> None:
        """In a pool thread: batch after batch of the key's waiting calls until none is left."""
        while True:
            with self._lock:
                waiting = self._waiting.get(key)
                if not waiting:
                    self._waiting.pop(key, None)
                    self._draining.discard(key)
                    return
                batch = waiting[: self.max_batch]
                del waiting[: self.max_batch]
            try:
                outcomes: list[Any] = self.work(key, [item for item, _ in batch])
            except Exception as exc:
                outcomes = [exc] * len(batch)
            loop.call_soon_threadsafe(_deliver, batch, outcomes)


def _deliver(batch: list[tuple[Any, asyncio.Future[Any]]], outcomes: list[Any]) -> None:
    for (_, future), outcome in zip(batch, outcomes, strict=True):
        if future.done():  # the caller went away; its item stands
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
