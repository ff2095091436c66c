"""With Redis, the deadlines every replica moves there find a silent node within its window,
while the database's deadlines (flushed five times less often) are a backstop that lags."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis

from coordd.adapters import heartbeats
from coordd.store.node.models import Node
from coordd_client.v1 import node_pb2
from tests.node.helpers import Fleet
from tests.support.server import ServerHandle

# Redis comes with the PostgreSQL backend in these tests; SQLite runs without it.
pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@pytest.fixture
def srv(backend, settings_factory, clock):  # type: ignore[no-untyped-def]
    handle = ServerHandle(settings_factory(scheduler_enabled=False), clock)
    yield handle
    handle.stop()


def node_id(node: node_pb2.Node) -> str:
    return node.name.partition("/")[2]


def stored_deadline(fleet: Fleet, node: node_pb2.Node) -> Any:
    def read(rt: Any) -> Any:
        with rt.store.read():
            return Node.get_by_id(node_id(node)).deadline_time

    return fleet.run(read)


def test_with_redis_a_silent_node_is_down_within_its_window_though_the_database_lags(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project()  # window: 1 s interval x 2 misses + 1 s grace
    silent, silent_key = fleet.node(project, "silent")
    beating, beating_key = fleet.node(project, "beating")
    fleet.up(silent_key)
    fleet.up(beating_key)
    fleet.flush()
    seen = srv.rt.now()
    assert stored_deadline(fleet, silent) >= seen + timedelta(seconds=3 + heartbeats.DB_SLACK_S - 1), (
        "the database's deadline is the backstop, DB_SLACK_S after the window"
    )
    tracker = heartbeats.tracker_for(srv.rt)
    for _ in range(2):
        clock.advance(1.5)
        fleet.beat(beating_key)
        srv.call(tracker.flush(database=False))  # Redis only, as between two database flushes
    assert fleet.detect() == 1, "3 s after its last beat the silent node is found through Redis"
    assert fleet.get(silent.name).status == node_pb2.HEALTH_STATUS_DOWN
    assert fleet.get(beating.name).status == node_pb2.HEALTH_STATUS_UP
    later = srv.rt.now() + timedelta(hours=1)
    assert set(tracker.late_nodes(later, 10)) == {node_id(beating)}, (
        "the DOWN node left the shared deadlines; the beating node stays in them"
    )
    assert fleet.detect() == 0, "nothing is looked at twice"


def test_a_settled_deadline_stays_when_a_beat_moved_it_meanwhile(srv):
    tracker = heartbeats.tracker_for(srv.rt)
    now = srv.rt.now()
    moved, unchanged = f"n-{uuid.uuid4().hex}", f"n-{uuid.uuid4().hex}"
    assert tracker.write_redis({moved: (now, 3.0), unchanged: (now, 3.0)})
    late = tracker.late_nodes(now + timedelta(seconds=4), 10)
    assert set(late) == {moved, unchanged}
    assert tracker.write_redis({moved: (now + timedelta(seconds=2), 3.0)})  # a beat, after the read
    tracker.settle_late(late)
    assert set(tracker.late_nodes(now + timedelta(hours=1), 10)) == {moved}
    assert tracker.write_redis({moved: (now, 3.0)}), "an older beat flushed late (another replica)"
    assert set(tracker.late_nodes(now + timedelta(seconds=4), 10)) == set(), "deadlines only move forward"


def test_when_redis_is_unreachable_the_database_deadlines_are_exact_again(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project()
    silent, silent_key = fleet.node(project, "silent")
    tracker = heartbeats.tracker_for(srv.rt)
    fleet.up(silent_key)
    reachable = tracker.redis
    # Nothing listens on port 1: every Redis call fails at once.
    tracker.redis = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    try:
        fleet.flush()
        assert stored_deadline(fleet, silent) <= srv.rt.now() + timedelta(seconds=3)
        clock.advance(3.5)
        assert fleet.detect() == 1, "the database alone finds the silent node on time"
    finally:
        tracker.redis = reachable
    assert fleet.get(silent.name).status == node_pb2.HEALTH_STATUS_DOWN
