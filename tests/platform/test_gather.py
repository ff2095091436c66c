"""api/gather.py: calls arriving together for one key go to the pool as one batch, each caller
gets its own outcome, and keys do not share batches."""

from __future__ import annotations

import asyncio
import threading
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
