"""PostgreSQL LISTEN/NOTIFY between replicas sharing one database (channel `coordd_events`).

Two dedicated psycopg2 connections, neither from the pool nor on the event loop:
- the publisher thread's: `SELECT pg_notify(...)` in autocommit after the change committed
  (with synchronous_commit off: a notification needs no WAL flush to be delivered);
- the listener thread's: `LISTEN`, then poll() on its socket; notifications are decoded
  there and handed to the loop in one call per batch.

A payload is the event's wire form when it fits under PostgreSQL's 8000-byte limit, else a
pointer (`{"ptr": id, "origin": ...}`) the listener resolves by reading the event_log row.
The listener reconnects with backoff after a restart or a lost connection (pinging an idle
connection, and TCP keepalives, notice a silent loss); meanwhile streams run on their timers.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import threading
import time
from datetime import UTC, datetime
from typing import Any

import structlog

from coordd.core.events import Event
from coordd.events.link import Link, Receiver

log = structlog.get_logger(__name__)

CHANNEL = "coordd_events"
# PostgreSQL refuses payloads of 8000 bytes or more; keep a margin.
PAYLOAD_LIMIT = 7900
_NOTIFIES_PER_STATEMENT = 64
_BACKOFF_MIN_S = 0.1
_BACKOFF_MAX_S = 5.0
_IDLE_PING_S = 5.0
# How often the listener counts the other replicas' listeners (see `has_peers`).
_PEER_CHECK_S = 2.0
_LISTENER_NAME = "coordd-events-listen"
_OTHER_LISTENERS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = %s AND pid <> pg_backend_pid()"
)
_CONNECT = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
}


def payload_of(event: Event, origin: str) -> str:
    wire = event.to_wire(origin)
    if len(wire.encode()) < PAYLOAD_LIMIT:
        return wire
    return json.dumps({"ptr": event.id, "origin": origin}, separators=(",", ":"))


def _connect(url: str, role: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(url, application_name=role, **_CONNECT)
    conn.autocommit = True
    return conn


class PostgresTransport:
    name = "postgresql"

    def __init__(self, bus: Receiver, url: str) -> None:
        self.bus = bus
        self.url = url
        self.link = Link(self.name)
        self._pub_conn: Any = None
        self._stop = threading.Event()
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self.received = 0
        # Whether another replica listens. Alone, nothing is sent: a single process on
        # PostgreSQL pays nothing for the bus. A replica joining says hello on the channel, so
        # the others start sending at once; one leaving is noticed by the periodic count.
        self._peers = True
        self._peers_checked = 0.0
        self._hello = json.dumps({"hello": 1, "origin": bus.instance_id}, separators=(",", ":"))
        # Our own notifications come back too; their payload ends with our origin.
        self._own_suffix = json.dumps({"origin": bus.instance_id}, separators=(",", ":"))[1:]

    async def start(self) -> None:
        self._wake_r, self._wake_w = os.pipe()  # close() writes to it to end the listener's select()
        self._thread = threading.Thread(target=self._listen, name="coordd-events-pg", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._stop.set()
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        await asyncio.to_thread(self._thread.join, 5.0)
        if self._pub_conn is not None:
            self._pub_conn.close()
            self._pub_conn = None
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- publisher thread ----------------------------------------------------------------

    @property
    def has_peers(self) -> bool:
        """False only when the listener is up and no other replica's listener exists."""
        return self._peers or not self.link.up

    def publish(self, events: list[Event]) -> None:
        """Raises if the events could not be sent, on a new connection if the old one broke
        (as it does when PostgreSQL restarts or terminates it)."""
        try:
            self._notify(events)
        except Exception:
            self._notify(events)

    def _notify(self, events: list[Event]) -> None:
        try:
            if self._pub_conn is None or self._pub_conn.closed:
                self._pub_conn = _connect(self.url, "coordd-events-publish")
                with self._pub_conn.cursor() as cur:
                    cur.execute("SET synchronous_commit = off")
            origin = self.bus.instance_id
            with self._pub_conn.cursor() as cur:
                for start in range(0, len(events), _NOTIFIES_PER_STATEMENT):
                    chunk = events[start : start + _NOTIFIES_PER_STATEMENT]
                    params: list[str] = []
                    for event in chunk:
                        params += [CHANNEL, payload_of(event, origin)]
                    cur.execute("SELECT " + ", ".join(["pg_notify(%s, %s)"] * len(chunk)), params)
        except Exception:
            if self._pub_conn is not None:
                self._pub_conn.close()
                self._pub_conn = None
            raise

    # -- listener thread -----------------------------------------------------------------

    def _listen(self) -> None:
        backoff = _BACKOFF_MIN_S
        while not self._stop.is_set():
            conn = None
            try:
                conn = _connect(self.url, _LISTENER_NAME)
                with conn.cursor() as cur:
                    cur.execute(f'LISTEN "{CHANNEL}"')
                    cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._hello))
                self._count_peers(conn)
                self.link.mark_up()
                backoff = _BACKOFF_MIN_S
                self._serve(conn)
            except Exception as exc:
                if self._stop.is_set():
                    break
                self.link.mark_down(str(exc).strip())
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
            finally:
                if conn is not None:
                    conn.close()

    def _count_peers(self, conn: Any) -> None:
        try:
            with conn.cursor() as cur:
                cur.execute(_OTHER_LISTENERS, (_LISTENER_NAME,))
                self._peers = cur.fetchone()[0] > 0
        except Exception:
            self._peers = True  # not knowing, send
            raise
        self._peers_checked = time.monotonic()

    def _serve(self, conn: Any) -> None:
        last = time.monotonic()
        # poll(), not select(): a busy process has descriptors past select()'s FD_SETSIZE (1024).
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            if time.monotonic() - self._peers_checked > _PEER_CHECK_S:
                self._count_peers(conn)
            ready = {fd for fd, _ in poller.poll(1000)}
            if conn.fileno() in ready:
                conn.poll()
                last = time.monotonic()
            elif time.monotonic() - last > _IDLE_PING_S or not self.link.up:
                # Idle, or a publish failed: the connection answering means the link is up.
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                last = time.monotonic()
                self.link.mark_up()
            while conn.notifies:  # reading a pointed-to event can bring in more
                notes = list(conn.notifies)
                del conn.notifies[:]
                events = [e for e in (self._decode(conn, n.payload) for n in notes) if e is not None]
                self.received += len(events)
                self.bus.receive_threadsafe(events)

    def _decode(self, conn: Any, payload: str) -> Event | None:
        if payload.endswith(self._own_suffix):
            return None
        try:
            raw = json.loads(payload)
            if raw.get("origin") == self.bus.instance_id:
                return None
            if "hello" in raw:
                self._peers = True
                return None
            if "ptr" in raw:
                return _read_event(conn, int(raw["ptr"]))
            return Event(
                int(raw["id"]),
                raw["type"],
                raw["subject"],
                raw["data"],
                datetime.fromisoformat(raw["create_time"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("undecodable event notification ignored", error=str(exc))
            return None


def _read_event(conn: Any, event_id: int) -> Event | None:
    """An event too large for a notification, from the event log (its create_time is stored as
    microseconds since the epoch, its data as JSON text)."""
    with conn.cursor() as cur:
        cur.execute("SELECT type, subject, data, create_time FROM event_log WHERE id = %s", (event_id,))
        row = cur.fetchone()
    if row is None:
        return None
    type_, subject, data, micros = row
    seconds, rest = divmod(int(micros), 1_000_000)
    created = datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest)
    return Event(event_id, type_, subject, json.loads(data) if isinstance(data, str) else data, created)
