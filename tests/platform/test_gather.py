"""api/gather.py: calls arriving together for one key go to the pool as one batch, each caller
gets its own outcome, and keys do not share batches."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from coordd.api.gather import Gatherer


class _Rt:
    """The one thing a Gatherer uses of the runtime: `run` on a thread pool."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(2)

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


def test_calls_arriving_together_run_as_one_batch_per_key_and_each_gets_its_own_outcome():
    batches: list[tuple[str, list[int]]] = []
    release = threading.Event()

    def work(key: str, items: list[int]) -> list[Any]:
        if not batches:
            release.wait(5)  # the first batch runs while the others arrive
        batches.append((key, items))
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    async def scenario() -> list[Any]:
        gatherer: Gatherer[str, int, int] = Gatherer(_Rt(), work, 3, "test")  # type: ignore[arg-type]
        first = asyncio.ensure_future(gatherer.submit("a", 0))
        await asyncio.sleep(0.05)
        rest = [
            asyncio.ensure_future(gatherer.submit(k, i))
            for k, i in [("a", 1), ("a", 2), ("b", 4), ("a", 6), ("a", 8)]
        ]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert [o if isinstance(o, int) else str(o) for o in outcomes] == [0, "odd 1", 20, 40, 60, 80]
    # "a": the first alone, then the three that waited (max_batch 3), then the last; "b" its own.
    assert sorted(batches) == sorted([("a", [0]), ("a", [1, 2, 6]), ("a", [8]), ("b", [4])])


def test_a_batch_that_fails_as_a_whole_fails_each_of_its_callers():
    def work(key: str, items: list[int]) -> list[Any]:
        raise RuntimeError("the database went away")

    async def scenario() -> list[Any]:
        gatherer: Gatherer[str, int, int] = Gatherer(_Rt(), work, 10, "test")  # type: ignore[arg-type]
        return await asyncio.gather(*(gatherer.submit("k", i) for i in range(3)), return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, RuntimeError) and "went away" in str(o) for o in outcomes)


def test_a_keys_next_batch_starts_in_the_pool_without_waiting_for_the_event_loop():
    started: dict[int, float] = {}
    gate = threading.Event()

    def work(key: str, items: list[int]) -> list[Any]:
        started[items[0]] = time.monotonic()
        if items == [0]:
            gate.wait(5)
        return items

    async def scenario() -> tuple[list[Any], float]:
        gatherer: Gatherer[str, int, int] = Gatherer(_Rt(), work, 10, "test")  # type: ignore[arg-type]
        first = asyncio.ensure_future(gatherer.submit("k", 0))
        await asyncio.sleep(0.05)  # [0] runs in the pool, held at the gate
        second = asyncio.ensure_future(gatherer.submit("k", 1))
        await asyncio.sleep(0)  # [1] waits for the key
        gate.set()
        time.sleep(0.3)  # the event loop is busy: it cannot hand [1] to the pool itself
        busy_until = time.monotonic()
        return list(await asyncio.gather(first, second)), busy_until

    outcomes, busy_until = asyncio.run(scenario())
    assert outcomes == [0, 1]
    assert started[1] < busy_until  # the thread that ran [0] took [1] at once


def test_calls_arriving_after_a_key_was_drained_start_a_new_drain():
    def work(key: str, items: list[int]) -> list[Any]:
        return [i + 1 for i in items]

    async def scenario() -> list[int]:
        gatherer: Gatherer[str, int, int] = Gatherer(_Rt(), work, 10, "test")  # type: ignore[arg-type]
        out = [await gatherer.submit("k", 1)]
        await asyncio.sleep(0.05)  # the drain ended
        out.append(await gatherer.submit("k", 2))
        # Submitted right as the previous drain lets go of the key: none is stranded or failed.
        for i in range(20):
            out.append(await gatherer.submit("k", 10 + i))
        return out

    assert asyncio.run(scenario()) == [2, 3, *range(11, 31)]
