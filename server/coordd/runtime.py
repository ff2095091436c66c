"""The Runtime: what every layer needs at run time, built once by the app.

`run()` is the only way async code touches the database: a bounded thread pool with the
caller's contextvars (request id, principal) carried into the worker thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import random
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import peewee

from coordd import __version__
from coordd.config import Settings
from coordd.core.clock import utcnow
from coordd.core.errors import Aborted
from coordd.core.ids import new_id
from coordd.crypto.passwords import Passwords
from coordd.crypto.sealing import Sealer
from coordd.crypto.secrets import load_or_create
from coordd.crypto.signing import Signer
from coordd.crypto.tokens import AccessTokens
from coordd.events.bus import EventBus, make_bus
from coordd.events.notify import Notifier
from coordd.store.db import Store, conflict_of, connection_lost
from coordd.store.idempotency_marks import mark_applied

# A write that lost a deadlock or serialization race is run again this many times.
CONFLICT_RETRIES = 4
P = ParamSpec("P")
T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.version = __version__
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[-6:]}"
        self.clock = clock
        self.start_time = clock()
        self.start_monotonic = time.monotonic()
        self.store = Store(settings, clock)
        self.bus: EventBus = make_bus(self.instance_id, settings)
        self.store.on_commit(self.bus.publish_threadsafe)
        # A keyed call's first committed change also marks its idempotency record applied.
        self.store.before_commit(mark_applied)
        self.notifier = Notifier(self.bus)
        self.executor = ThreadPoolExecutor(max_workers=settings.db_threads, thread_name_prefix="coordd-db")
        data_dir = settings.data_dir
        secret = settings.jwt_secret.encode() if settings.jwt_secret else None
        if secret is None:
            secret = load_or_create(Path(data_dir) / "jwt.secret")
        self.tokens = AccessTokens(secret, settings.access_token_ttl_s)
        self.passwords = Passwords(
            settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism
        )
        key_path = Path(settings.signing_key_path or Path(data_dir) / "coordinator.key")
        self.signer = Signer.load_or_create(key_path)
        self.sealer = Sealer.load_or_create(Path(settings.sealing_key_path or Path(data_dir) / "secrets.key"))
        # Set when shutdown starts: streams end with UNAVAILABLE, loops stop.
        self.stopping = asyncio.Event()
        self.open_streams = 0
        # Stream handler tasks waiting for their servicer's next message (see the
        # observability interceptor); shutdown cancels them to end their streams at once.
        self.parked_streams: set[asyncio.Task[Any]] = set()

    def now(self) -> datetime:
        return self.clock()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs blocking (database) work off the event loop, keeping contextvars."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, self._guarded, fn, *args, **kwargs)
        return await loop.run_in_executor(self.executor, call)

    def _guarded(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs `fn`; a deadlock, serialization failure or unique-violation race on PostgreSQL
        is retried (when nothing was committed yet), never reported as the database being down."""
        for attempt in range(CONFLICT_RETRIES + 1):
            committed = self.store.commits()
            try:
                return fn(*args, **kwargs)
            except (peewee.DatabaseError, peewee.InterfaceError) as exc:
                conflict = conflict_of(exc) if self.store.is_postgres else ""
                if not conflict:
                    lost = connection_lost(self.store, exc)
                    if lost is not None:
                        raise lost from exc
                    raise
                if attempt == CONFLICT_RETRIES or self.store.commits() != committed:
                    raise Aborted(
                        "a concurrent change conflicted with this call; retry it",
                        reason="CONCURRENT_CONFLICT",
                        metadata={"conflict": conflict},
                    ) from exc
                time.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
        raise AssertionError("unreachable")

    def close(self, wait_s: float = 5.0) -> None:
        """Drops queued DB work and waits a bounded time for running work: a call stuck on
        a lock must not hold shutdown forever."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.passwords.close()
        deadline = time.monotonic() + wait_s
        busy = 0
        for thread in list(getattr(self.executor, "_threads", ())):
            thread.join(max(deadline - time.monotonic(), 0))
            busy += thread.is_alive()
        if busy:
            import structlog

            structlog.get_logger("coordd").warning("database work still running at shutdown", threads=busy)
        self.store.close()
