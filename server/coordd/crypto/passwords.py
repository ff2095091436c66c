"""Password hashing with Argon2id (memory-hard), cost from Settings.

Hashing runs in its own small thread pool, never on the event loop nor in the database
pool: a flood of logins queues here and cannot starve database work or health checks. The
pool admits a bounded number of waiting checks; beyond that a check is refused at once
(RESOURCE_EXHAUSTED) instead of queueing without end.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from coordd.core.errors import ResourceExhausted

DEFAULT_THREADS = 2
DEFAULT_MAX_WAITING = 64


class Passwords:
    def __init__(
        self,
        memory_kib: int,
        time_cost: int,
        parallelism: int,
        *,
        threads: int = DEFAULT_THREADS,
        max_waiting: int = DEFAULT_MAX_WAITING,
    ) -> None:
        self._hasher = PasswordHasher(memory_cost=memory_kib, time_cost=time_cost, parallelism=parallelism)
        # Verifying against this when the user does not exist keeps login timing uniform.
        self._dummy = self._hasher.hash("coordd-dummy-password")
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="coordd-kdf")
        self._limit = threads + max_waiting
        self._admitted = 0
        self._lock = threading.Lock()
        # Hashes computed in the pool (tests read it: a refused login never reaches the pool).
        self.pool_calls = 0

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored or self._dummy, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def hash_in_pool(self, password: str) -> str:
        return await self._submit(self.hash, password)

    async def verify_in_pool(self, stored: str | None, password: str) -> bool:
        return await self._submit(self.verify, stored, password)

    async def _submit(self, fn, *args):  # type: ignore[no-untyped-def]
        with self._lock:
            if self._admitted >= self._limit:
                raise ResourceExhausted(
                    "too many password checks in progress; retry shortly",
                    reason="PASSWORD_CHECKS_BUSY",
                    retry_after_s=1.0,
                )
            self._admitted += 1
            self.pool_calls += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        finally:
            with self._lock:
                self._admitted -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
