"""The health probe: "can the database be reached?", not "is the pool free?".

Run through the shared database thread pool, the probe queued behind slow work (password
hashing, long transactions) and turned health NOT_SERVING on a healthy database. The app runs
`DatabaseProbe.check` on a thread of its own; peewee keeps one connection per thread, so the
probe also holds its own connection (SQLite: its own handle; PostgreSQL: one pool connection
it keeps checked out) and never waits for one that busy calls hold. After a failure that
connection is dropped, so the next probe connects afresh.
"""

from __future__ import annotations

import contextlib

from coordd.store.db import Store


class DatabaseProbe:
    """Blocking: call `check` from the probe's own thread, never the event loop."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def check(self) -> None:
        """Returns when the database answered a query; raises otherwise. A connection broken
        earlier (a database restart) gets one retry on a fresh one before the probe fails."""
        try:
            self.store.ping()
            return
        except Exception:
            self.close()
        try:
            self.store.ping()
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        """Releases this thread's connection (call it on the probe's thread)."""
        with contextlib.suppress(Exception):  # already broken: nothing to release
            self.store.close_thread_connection()
