"""What a completion signs, remembered from the claim that handed the job out.

A result statement names the job's submitter, kind, model, input digest, attempt and start
time. None of these change while a lease is held (the attempt and the start time are set by
the claim; the rest never change), so the claim that sets them can remember them for the
completion of that lease. A completion whose leases are all remembered is then signed first
and recorded with one conditional UPDATE that is also the lease check (see
`queries.complete_leased`), instead of a SELECT ... FOR UPDATE that locks every row (a tuple
lock, written and WAL-logged per job) and then the UPDATE.

The memo is only a shortcut, never the authority: the UPDATE re-checks the lease (attempt,
lease id, provider, running, no cancellation pending, the budget the fee was computed from)
on the row itself, and a lease it does not find, or one this process did not hand out (a
restart, another `--processes` worker, an entry evicted), takes the locking path. A claim
that rolled back leaves an entry whose lease id no row carries: it can never match.
"""

from __future__ import annotations

import threading
import weakref
from typing import NamedTuple

from coordd.runtime import Runtime

# Outstanding leases remembered per process; the oldest are forgotten beyond this (their
# completions then take the locking path). ~250 bytes each.
CAPACITY = 100_000


class Remembered(NamedTuple):
    attempt: int
    lease_id: str
    submitter: str
    kind: str
    model_ref: str
    input_digest: str
    start_us: int
    budget: int


class LeaseMemo:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self._entries: dict[str, Remembered] = {}
        self._lock = threading.Lock()
        self._capacity = capacity

    def remember(self, entries: list[tuple[str, Remembered]]) -> None:
        with self._lock:
            self._entries.update(entries)
            excess = len(self._entries) - self._capacity
            if excess > 0:  # a tenth more, so a full memo is not trimmed on every claim
                oldest = iter(self._entries)  # insertion order: the oldest first
                for job_id in [next(oldest) for _ in range(excess + self._capacity // 10)]:
                    del self._entries[job_id]

    def take(self, job_id: str, attempt: int, lease_id: str) -> Remembered | None:
        """The remembered lease (forgotten from now on) if it is this one."""
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None or entry.attempt != attempt or entry.lease_id != lease_id:
                return None
            del self._entries[job_id]
            return entry

    def __len__(self) -> int:
        return len(self._entries)


_MEMOS: weakref.WeakKeyDictionary[Runtime, LeaseMemo] = weakref.WeakKeyDictionary()
_MEMOS_LOCK = threading.Lock()


def memo_of(rt: Runtime) -> LeaseMemo:
    memo = _MEMOS.get(rt)
    if memo is None:
        with _MEMOS_LOCK:
            memo = _MEMOS.setdefault(rt, LeaseMemo())
    return memo
