"""The Notifier WatchQueue streams wait on: a key with one waiter holds the waiter itself,
a shared key a set; either way every waiter is woken, and nothing stays behind."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from coordd.events.bus import EventBus
from coordd.events.notify import Notifier


def _run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def test_a_waiter_on_its_own_key_is_woken_and_leaves_no_entry() -> None:
    async def scenario() -> None:
        n = Notifier(EventBus("test"))
        task = asyncio.ensure_future(n.wait(("own/1", "shared"), 5.0))
        await asyncio.sleep(0)
        assert n.waiting("own/1") == 1
        n.wake("own/1")
        assert await task is True
        assert n.waiting("own/1") == 0
        assert n.waiting("shared") == 0
        assert n._waiters == {}

    _run(scenario())


def test_every_waiter_on_a_shared_key_is_woken_and_one_leaving_keeps_the_others() -> None:
    async def scenario() -> None:
        n = Notifier(EventBus("test"))
        tasks = [asyncio.ensure_future(n.wait((f"own/{i}", "shared"), 5.0)) for i in range(3)]
        await asyncio.sleep(0)
        assert n.waiting("shared") == 3
        n.wake("own/0")
        assert await tasks[0] is True
        assert n.waiting("shared") == 2
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
        assert n.waiting("shared") == 1
        n.wake("shared")
        assert await tasks[2] is True
        assert n._waiters == {}

    _run(scenario())


def test_a_wait_times_out_with_false_and_arm_disarm_clean_up() -> None:
    async def scenario() -> None:
        n = Notifier(EventBus("test"))
        assert await n.wait(["k"], 0.01) is False
        waiter, timer = n.arm(("k", "k", "j"), 5.0)
        other, other_timer = n.arm(("k",), 5.0)
        assert n.waiting("k") == 2
        n.wake("j")
        assert await waiter is True
        n.disarm(("k", "k", "j"), waiter, timer)
        assert n.waiting("k") == 1
        n.disarm(("k",), other, other_timer)
        assert n._waiters == {}
        assert not other.done()  # disarmed, never woken: its timer is cancelled too

    _run(scenario())


def test_waiters_armed_with_slack_share_one_timer_per_slot_and_expire_on_it() -> None:
    async def scenario() -> None:
        n = Notifier(EventBus("test"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        first, slot = n.arm(("own/1", "shared"), 0.05, slack=0.05)
        second, same = n.arm(("own/2", "shared"), 0.05, slack=0.05)
        later, other = n.arm(("own/3",), 0.5, slack=0.05)
        assert slot is same and slot is not other  # one shared set per slot, no handle each
        assert slot == {first, second}
        n.wake("own/2")  # woken before the slot expires: True, and the expiry leaves it alone
        assert await second is True
        n.disarm(("own/2", "shared"), second, same)
        assert await first is False  # the slot's timer
        assert loop.time() - started >= 0.05  # never early; at most `slack` late
        assert not later.done()
        n.disarm(("own/1", "shared"), first, slot)
        n.disarm(("own/3",), later, other)
        assert n._waiters == {}
        assert not other  # a disarmed waiter leaves its slot
        await asyncio.sleep(0.6)
        assert not later.done()  # disarmed before its slot expired: never resolved
        assert n._slots == {}  # expired slots are dropped

    _run(scenario())
