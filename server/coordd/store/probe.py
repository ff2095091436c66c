"""The health probe's own database connection, apart from the pool every call shares.

The probe answers "can the database be reached?", not "is the pool free?": run through the
shared pool, it queued behind slow work (password hashing, long transactions) and turned
health NOT_SERVING on a healthy database. It keeps one connection of its own (opened again
after any failure) and bounds every step by a timeout, so an unreachable server fails the
probe instead of hanging it.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from typing import Any

from coordd.config import Settings


class DatabaseProbe:
    """Blocking: call `check` from the probe's own thread, never the event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: Any = None

    def check(self, timeout_s: float) -> None:
        """Returns when the database answered a query; raises otherwise."""
        if self._conn is None:
            self._conn = self._connect(timeout_s)
        try:
            cursor = self._conn.cursor()
            # SQLite: reading the schema touches the file ("SELECT 1" alone would not).
            cursor.execute("SELECT 1" if self.settings.database_url else "SELECT count(*) FROM sqlite_master")
            cursor.fetchone()
            cursor.close()
        except Exception:
            self.close()
            raise

    def _connect(self, timeout_s: float) -> Any:
        if self.settings.database_url:
            import psycopg2

            conn = psycopg2.connect(
                self.settings.database_url,
                connect_timeout=max(2, math.ceil(timeout_s)),  # libpq's minimum is 2 s
                options=f"-c statement_timeout={max(1, int(timeout_s * 1000))}",
                application_name="coordd-health",
            )
            conn.autocommit = True
            return conn
        # mode=rw: a missing database file is a failure, not a new empty database.
        uri = f"{self.settings.db_path().resolve().as_uri()}?mode=rw"
        return sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to release
                conn.close()
