"""The PostgreSQL connection pool, sending fewer round trips per transaction.

Each round trip to PostgreSQL costs the calling thread a wake-up, and another for the GIL when
the answer comes back. Three things need no answer of their own, so they ride along with the
next statement (measured, docs/PERFORMANCE.md: "Issue #18, session 9", ~10% on the job paths'
throughput and server CPU, nothing measurable on Register; "session 10", the savepoints: +17%
for one-per-call SubmitJob, whose gathered batch went from 6 round trips to 4):

- `BEGIN`: sent in front of the transaction's first statement (psycopg2 sends a query text with
  several statements in one message; the answer is the last one's). A transaction that ran no
  statement sends neither BEGIN nor COMMIT.
- writes passed to `defer(sql, params)`: a write whose answer the caller does not need (an
  INSERT without RETURNING: every write's events, store/event_log.py; a register batch's rows and
  idempotency records). It is sent in front of the next statement, or of the COMMIT, in the
  same transaction, in order. Its error, should it fail, is raised by that next statement (at the
  latest by the end of the savepoint or transaction it was made in, whose RELEASE or COMMIT carries
  it): only code that treats any error there alike may defer (see its callers).

- savepoints (`atomic()` inside a transaction): `SAVEPOINT` and `RELEASE SAVEPOINT` wait like
  `BEGIN` when nothing pending could fail (only BEGIN and savepoint statements: a
  deferred write made inside the savepoint is sent with its RELEASE, so its error is still the
  savepoint's); a savepoint left with nothing sent since it began is dropped without a word to
  the server, and rolling back to one that was never sent drops what it held, unsent.

Order is kept exactly: whatever is pending goes first, and a caller that takes a raw cursor
(COPY, execute_values) gets the pending statements sent before it.
"""

from __future__ import annotations

import threading
from typing import Any

import peewee
from playhouse.pool import PooledPostgresqlDatabase

from coordd.store.pg_literals import conforming, interpolate


class _Pending(threading.local):
    def __init__(self) -> None:
        self.conn: Any = None
        self.texts: list[str] = []  # statements not sent yet: "BEGIN" first, if it is one


# Pending statements that cannot fail on their own: a savepoint's statements may wait behind them.
_HARMLESS = ("BEGIN", "SAVEPOINT ", "RELEASE SAVEPOINT ")


def _harmless(texts: list[str]) -> bool:
    return all(t.startswith(_HARMLESS) for t in texts)


class _Savepoint(peewee._savepoint):  # type: ignore[misc,name-defined]
    """A savepoint whose statements ride with the next one (see the module)."""

    db: PostgresDatabase

    def _build_ctx(self) -> _Savepoint:
        return type(self)(self.db)

    @property
    def _text(self) -> str:
        return f"SAVEPOINT {self.quoted_sid}"

    def _begin(self) -> None:
        texts = self.db._texts()
        if _harmless(texts):
            texts.append(self._text)
        else:  # a deferred write's error is raised before the savepoint, as it was made
            self.db.execute_sql(self._text)

    def commit(self, begin: bool = True) -> None:
        texts = self.db._texts()
        if texts and texts[-1] == self._text:
            texts.pop()  # nothing ran inside it
        elif _harmless(texts):
            texts.append(f"RELEASE {self._text}")
        else:
            self.db.execute_sql(f"RELEASE {self._text}")
        if begin:
            self._begin()

    def rollback(self, begin: bool = True) -> None:
        texts = self.db._texts()
        if self._text in texts:  # never sent: it and what it held are dropped unsent
            del texts[texts.index(self._text) :]
        else:
            self.db.execute_sql(f"ROLLBACK TO {self._text}")
        if begin:
            self._begin()


class PostgresDatabase(PooledPostgresqlDatabase):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending = _Pending()

    def _texts(self) -> list[str]:
        """This thread's unsent statements, for its current connection (a connection closed
        with some pending never sent them: nothing of that transaction happened)."""
        pending = self._pending
        conn = self._state.conn
        if pending.conn is not conn:
            pending.conn = conn
            pending.texts = []
        return pending.texts

    def _take(self) -> str:
        texts = self._texts()
        if not texts:
            return ""
        joined = ";\n".join(texts) + ";\n"
        texts.clear()
        return joined

    def begin(self, isolation_level: Any = None) -> None:
        if isolation_level is not None or self._isolation_level:
            self.flush()
            super().begin(isolation_level)
            return
        if self.is_closed():
            self.connect()
        texts = self._texts()
        texts.clear()
        texts.append("BEGIN")

    def savepoint(self) -> Any:
        if not self.in_transaction():
            return super().savepoint()
        return _Savepoint(self)

    def defer(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> None:
        """`sql` is sent with the next statement of this transaction (see the module)."""
        if not self.in_transaction():
            self.execute_sql(sql, params)
            return
        conn = self._state.conn
        text = interpolate(sql, params) if conforming(conn) else None
        if text is None:
            text = conn.cursor().mogrify(sql, tuple(params)).decode()
        self._texts().append(text)

    def flush(self) -> None:
        """Sends what is pending now (before a raw cursor or an isolation level)."""
        if self.is_closed():
            return
        prefix = self._take()
        if prefix:
            with peewee.__exception_wrapper__:
                self._state.conn.cursor().execute(prefix)

    def cursor(self, named_cursor: Any = None) -> Any:
        self.flush()
        return super().cursor(named_cursor)

    def _execute_cursor(self, sql: str, params: Any, **cursor_options: Any) -> Any:
        # peewee passes `params or ()`, so the driver interpolates the whole text, always: what
        # is written into it already has its `%` doubled.
        prefix = self._take()
        conn = self._state.conn
        if params and conn is not None and conforming(conn):
            text = interpolate(sql, params)  # store/pg_literals.py: psycopg2's text, faster
            if text is not None:
                return super()._execute_cursor((prefix + text).replace("%", "%%"), (), **cursor_options)
        return super()._execute_cursor(prefix.replace("%", "%%") + sql, params, **cursor_options)

    def commit(self) -> None:
        texts = self._texts()
        if texts == ["BEGIN"]:
            texts.clear()  # nothing ran: nothing to commit
            return
        prefix = self._take()
        if self.is_closed():
            raise peewee.InterfaceError("Cannot commit, database connection not open.")
        with peewee.__exception_wrapper__:
            self._state.conn.cursor().execute(prefix + "COMMIT")

    def close(self) -> bool:
        # peewee closes no connection inside a transaction, whose end clears what is pending;
        # this is only so that nothing unsent can ever outlive its connection's use here.
        self._pending.conn, self._pending.texts = None, []
        return bool(super().close())

    def rollback(self) -> None:
        texts = self._texts()
        never_began = bool(texts) and texts[0] == "BEGIN"
        texts.clear()
        if never_began:
            return
        super().rollback()
