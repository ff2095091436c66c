"""The PostgreSQL transport on its own: two buses on one database, as two replicas have."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coordd.core.events import Event
from coordd.events.bus import ReplicatedBus, make_bus
from coordd.events.pgbus import PAYLOAD_LIMIT, PostgresTransport, payload_of
from coordd.store.db import Store
from tests.support import infra
from tests.support.server import make_settings


@pytest.fixture
def pg_url(pg_session_database: str) -> str:
    infra.wipe(pg_session_database)
    return pg_session_database


def _bus(name: str, url: str) -> ReplicatedBus:
    bus = ReplicatedBus(name)
    bus.transports.append(PostgresTransport(bus, url))
    return bus


async def _until(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        await asyncio.sleep(0.01)
    return bool(predicate())


def test_an_event_too_large_for_a_notification_is_sent_as_a_pointer_and_read_back(pg_url, tmp_path: Path):
    store = Store(make_settings(str(tmp_path), pg_url))
    big = {"blob": "x" * 20_000, "watch_keys": ["k"]}

    async def scenario() -> tuple[list[Event], list[Event]]:
        a, b = _bus("replica-a", pg_url), _bus("replica-b", pg_url)
        on_a: list[Event] = []
        on_b: list[Event] = []
        a.add_listener(on_a.extend)
        b.add_listener(on_b.extend)
        await a.start()
        await b.start()
        store.on_commit(a.publish_threadsafe)
        assert await _until(lambda: a.transports[0].has_peers), "B's hello tells A someone listens"
        try:

            def commit() -> None:
                with store.write() as tx:
                    tx.emit("test.big", "things/1", big)
                    tx.emit("test.small", "things/2", {"n": 1})

            await asyncio.to_thread(commit)
            assert await _until(lambda: len(on_b) == 2)
            await asyncio.sleep(0.2)  # time for a (wrong) echo of A's own events to come back
            return on_a, on_b
        finally:
            await a.close()
            await b.close()

    try:
        on_a, on_b = asyncio.run(scenario())
    finally:
        store.close()
    assert [e.type for e in on_b] == ["test.big", "test.small"]
    assert on_b[0].data == big and on_b[0].subject == "things/1"
    assert on_b[0] == on_a[0], "the pointer resolves to the very event, create_time included"
    assert [e.type for e in on_a] == ["test.big", "test.small"], "A's own events reach A once"


def test_a_replica_alone_on_the_database_sends_nothing_until_another_joins(pg_url):
    async def scenario() -> None:
        a = _bus("replica-a", pg_url)
        await a.start()
        try:
            assert not a.transports[0].has_peers
            a.publish_threadsafe([Event(1, "t", "s", {}, datetime.now(UTC))])
            b = _bus("replica-b", pg_url)
            await b.start()
            try:
                assert await _until(lambda: a.transports[0].has_peers)
            finally:
                await b.close()
            assert await _until(lambda: not a.transports[0].has_peers, timeout=15), "B left"
        finally:
            await a.close()
        assert a.sent == {}

    asyncio.run(scenario())


def test_payloads_are_the_wire_form_when_they_fit_and_a_pointer_otherwise():
    now = datetime.now(UTC)
    small = Event(7, "t", "s", {"a": 1}, now)
    assert Event.from_wire(payload_of(small, "me")) == (small, "me")
    large = Event(8, "t", "s", {"a": "y" * PAYLOAD_LIMIT}, now)
    pointer = payload_of(large, "me")
    assert len(pointer.encode()) < 8000 and '"ptr":8' in pointer


def test_the_postgresql_bus_is_chosen_only_on_postgresql_without_redis(tmp_path):
    assert make_bus("i", make_settings(str(tmp_path))).kind == "memory"
    assert make_bus("i", make_settings(str(tmp_path), "postgresql://x@h/db")).kind == "postgresql"
    both = make_bus("i", make_settings(str(tmp_path), "postgresql://x@h/db", "redis://h:1/0"))
    assert [t.name for t in both.transports] == ["redis", "postgresql"]  # type: ignore[attr-defined]
    off = make_settings(str(tmp_path), "postgresql://x@h/db", pg_event_bus=False)
    assert make_bus("i", off).kind == "memory"


def test_the_listener_works_in_a_process_with_descriptors_past_1024(pg_url):
    """A busy daemon holds thousands of sockets: the listener must not rely on select()."""
    import os

    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:

        async def scenario() -> bool:
            a, b = _bus("replica-a", pg_url), _bus("replica-b", pg_url)
            on_b: list[Event] = []
            b.add_listener(on_b.extend)
            await a.start()
            await b.start()
            try:
                assert await _until(lambda: a.transports[0].has_peers)
                a.publish_threadsafe([Event(7, "test.fd", "things/7", {}, datetime.now(UTC))])
                return await _until(lambda: [e.type for e in on_b] == ["test.fd"])
            finally:
                await a.close()
                await b.close()

        assert asyncio.run(scenario())
    finally:
        for fd in held:
            os.close(fd)
