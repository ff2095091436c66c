"""Group commit: callers that arrive together share one write transaction.

When every write of a group serializes on one row (e.g. a competition's seat counters on
PostgreSQL, whose lock is held until the commit and whose commit waits for the WAL flush),
running callers one transaction each spends most of the time flushing. A `GroupCommit`
lets the callers of one group key (per process) queue up: the oldest waiting caller leads
and runs up to `max_batch` queued items in ONE transaction, each in its own savepoint, and
hands every caller its own answer after the one commit.

Per item:
- the work function returns normally: its result is that caller's answer, once committed;
- it raises: its savepoint is rolled back and the events it emitted are dropped; the error
  is that caller's (or `recover` turns it into an answer, see below); the others go on;
- the commit (or the connection) fails: nobody's item happened; every caller of the batch
  gets that error.

Or, with `batch_work`, the whole batch at once: `batch_work(tx, key, items)` returns one
outcome per item (an answer, or an exception that is that caller's error), so a batch can
claim its seats in one statement and insert its rows in one multi-row statement each. It may
raise `RetryBatch`: the transaction is rolled back and the batch runs again, at most
`MAX_RETRIES` times (e.g. a conflict found only after rows were written; the items may carry
what the retry must do differently).

Nobody waits for a batch that started after it arrived; the next leader is the oldest
caller still waiting. Nothing here knows what the items are.
"""

from __future__ import annotations

import random
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from coordd.core.errors import Aborted
from coordd.store.db import Store, Tx, conflict_of, connection_lost

K = TypeVar("K", bound=Hashable)
I = TypeVar("I")  # noqa: E741 (the item)
R = TypeVar("R")

# Re-runs of one batch after RetryBatch, at most.
MAX_RETRIES = 3


class RetryBatch(Exception):
    """Raised by a `batch_work` function: roll back and run the batch again. `progressed`:
    the run again settles at least one more item than this run did (e.g. a caller is then
    answered from a record another transaction wrote meanwhile, or run alone). Such re-runs
    do not count against MAX_RETRIES; at most twice as many as the batch has items run."""

    def __init__(self, *, progressed: bool = False) -> None:
        super().__init__()
        self.progressed = progressed


@dataclass
class _Pending(Generic[I, R]):
    """One caller's item waiting in its group."""

    item: I
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    finished: bool = False
    result: R | None = None
    error: BaseException | None = None


class _Group(Generic[I, R]):
    """The callers of one group key in this process right now."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: list[_Pending[I, R]] = []
        self.busy = False


class GroupCommit(Generic[K, I, R]):
    """Runs `work(tx, key, item)` for items of the same key in shared transactions.

    `recover(tx, key, item, error)`, if given, runs in the transaction right after an item's
    savepoint was rolled back; what it returns is the caller's answer, or, if it is an
    exception, the caller's error. An exception it raises fails the whole batch (like any
    other error outside the savepoints).

    `on_conflict(items, error)`, if given, is told when a batch's whole transaction met a write
    conflict (e.g. a unique key taken meanwhile, which a deferred INSERT reports only at the
    COMMIT), before the batch runs again: it may change how the items run then."""

    def __init__(
        self,
        work: Callable[[Tx, K, I], R] | None = None,
        *,
        max_batch: int,
        recover: Callable[[Tx, K, I, Exception], R | BaseException] | None = None,
        batch_work: Callable[[Tx, K, list[I]], list[R | BaseException]] | None = None,
        on_conflict: Callable[[list[I], Exception], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if (work is None) == (batch_work is None):
            raise ValueError("give either work or batch_work")
        self.work = work
        self.batch_work = batch_work
        self.max_batch = max_batch
        self.recover = recover
        self.on_conflict = on_conflict
        self._groups: weakref.WeakValueDictionary[K, _Group[I, R]] = weakref.WeakValueDictionary()
        self._guard = threading.Lock()

    def _group_for(self, key: K) -> _Group[I, R]:
        with self._guard:
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group()
            return group

    def submit(self, store: Store, key: K, item: I) -> R:
        """Runs `item` in a batch of its key's group and returns its answer once committed
        (or raises its error). Blocks the calling thread until then."""
        group = self._group_for(key)  # held here: the weak dictionary keeps it while in use
        me: _Pending[I, R] = _Pending(item)
        with group.lock:
            group.queue.append(me)
            if not group.busy:
                group.busy = me.lead = True
        while not me.finished:
            if me.lead:
                self._lead(store, key, group)
            else:
                me.wake.wait()
                me.wake.clear()
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]

    def submit_many(self, store: Store, key: K, items: list[I]) -> list[R | BaseException]:
        """Runs several items of one caller (e.g. the requests an event loop gathered) like
        `submit` and returns their outcomes, each an answer or its error, in order."""
        if not items:
            return []
        group = self._group_for(key)
        wake = threading.Event()  # shared by all of them: set on any change of their state
        mine: list[_Pending[I, R]] = [_Pending(item, wake) for item in items]
        with group.lock:
            group.queue.extend(mine)
            if not group.busy:
                group.busy = mine[0].lead = True
        while True:
            # Cleared before looking, so a change made after the look is never slept through.
            wake.clear()
            if all(p.finished for p in mine):
                break
            if any(p.lead and not p.finished for p in mine):
                self._lead(store, key, group)
                continue
            wake.wait()
        return [p.error if p.error is not None else p.result for p in mine]  # type: ignore[misc]

    def _lead(self, store: Store, key: K, group: _Group[I, R]) -> None:
        with group.lock:
            batch = group.queue[: self.max_batch]
            del group.queue[: self.max_batch]
        try:
            self._run_batch(store, key, batch)
        finally:
            with group.lock:
                if group.queue:
                    successor = group.queue[0]
                    successor.lead = True
                    successor.wake.set()
                else:
                    group.busy = False
            for pending in batch:
                pending.lead = False
                pending.finished = True
                pending.wake.set()

    def _run_batch(self, store: Store, key: K, batch: list[_Pending[I, R]]) -> None:
        if self.batch_work is not None:
            self._run_whole(store, key, batch, self.batch_work)
            return
        assert self.work is not None
        outcomes: list[tuple[R | None, BaseException | None]] = []
        try:
            with store.write() as tx:
                for pending in batch:
                    mark = len(tx.pending_events)
                    try:
                        with store.db.atomic():  # a savepoint
                            result = self.work(tx, key, pending.item)
                        outcomes.append((result, None))
                    except Exception as exc:
                        del tx.pending_events[mark:]
                        if self.recover is None:
                            outcomes.append((None, exc))
                            continue
                        answer = self.recover(tx, key, pending.item, exc)
                        if isinstance(answer, BaseException):
                            outcomes.append((None, answer))
                        else:
                            outcomes.append((answer, None))
        except Exception as exc:
            # The commit (or the connection) failed: nobody's item happened.
            error = connection_lost(store, exc) or exc
            for pending in batch:
                pending.error = error
            return
        for pending, (result, error) in zip(batch, outcomes, strict=True):
            pending.result, pending.error = result, error

    def _run_whole(
        self,
        store: Store,
        key: K,
        batch: list[_Pending[I, R]],
        batch_work: Callable[[Tx, K, list[I]], list[R | BaseException]],
    ) -> None:
        items = [pending.item for pending in batch]
        attempt = progressed = 0
        while True:
            try:
                with store.write() as tx:
                    outcomes = batch_work(tx, key, items)
                break
            except RetryBatch as exc:
                if exc.progressed and progressed < 2 * len(items):
                    progressed += 1
                    continue
                if attempt == MAX_RETRIES:
                    # Still conflicting: ABORTED, which the caller may send again.
                    error = exc.__cause__ or exc
                    if isinstance(error, RetryBatch) or (store.is_postgres and conflict_of(error)):
                        error = _conflicted(error)
                    for pending in batch:
                        pending.error = error
                    return
                attempt += 1
            except Exception as exc:
                if store.is_postgres and conflict_of(exc) and attempt < MAX_RETRIES:
                    # A deadlock or unique-key race with another transaction (e.g. a group
                    # registration of one of the batch's users): the whole batch rolled back,
                    # so it runs again and meets the other's committed rows.
                    attempt += 1
                    if self.on_conflict is not None:
                        self.on_conflict(items, exc)
                    time.sleep(random.uniform(0.005, 0.02) * attempt)
                    continue
                conflict = store.is_postgres and conflict_of(exc)
                error = _conflicted(exc) if conflict else connection_lost(store, exc)
                # The commit (or the connection) failed: nobody's item happened.
                for pending in batch:
                    pending.error = error or exc
                return
        for pending, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                pending.error = outcome
            else:
                pending.result = outcome


def _conflicted(exc: BaseException) -> Aborted:
    """ABORTED for a conflict that outlasted the retries: the caller may send the call again."""
    return Aborted(
        "a concurrent change conflicted with this call; retry it",
        reason="CONCURRENT_CONFLICT",
        metadata={"conflict": conflict_of(exc) or "concurrent batch"},
    )
