"""Beat-driven status changes are written in batches, and detection does not blame nodes
for the daemon's own backlog (issue 14: a fleet on one process)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from coordd.adapters import heartbeats
from coordd.domain import node as domain
from coordd.store.node.models import Node
from coordd_client.v1 import node_pb2
from tests.node.helpers import Fleet, serve, statuses


@pytest.fixture
def srv(settings_factory, clock):
    yield from serve(settings_factory, clock)


def _down_fleet(fleet: Fleet, clock, count: int) -> list[node_pb2.Node]:
    project = fleet.project(min_nodes=100)  # no mass-outage guard: per-node incidents
    nodes = []
    for index in range(count):
        node, key = fleet.node(project, f"n{index}")
        fleet.up(key)
        nodes.append(node)
    fleet.flush()
    clock.advance(10)
    assert fleet.detect() == count
    for node in nodes:
        assert fleet.get(node.name).status == node_pb2.HEALTH_STATUS_DOWN
    return nodes


def test_a_recovering_fleet_is_written_in_one_transaction(srv, clock):
    fleet = Fleet(srv)
    nodes = _down_fleet(fleet, clock, 5)
    tracker = heartbeats.tracker_for(srv.rt)
    ids = [n.name.split("/")[1] for n in nodes]

    async def recover() -> tuple[int, int, list[str]]:
        # Two beats each (successes_before_up = 2), as streams deliver them, then one batch.
        for _ in range(2):
            for node_id in ids:
                info = tracker.info[node_id]
                change = tracker.beat(info, srv.rt.now(), [], {})
                assert change is not None
                tracker.queue(info, change)
        in_memory = [tracker.info[n].status for n in ids]
        before = tracker.change_batches
        written = await tracker.write_changes()
        return written, tracker.change_batches - before, in_memory

    written, batches, in_memory = srv.call(recover())
    assert in_memory == ["up"] * 5, "the tracker knows at once"
    assert (written, batches) == (5, 1), "five recoveries, one transaction"
    for node in nodes:
        assert Node.get_by_id(node.name.split("/")[1]).status == "up"
        assert statuses(fleet.transitions(node.name)) == ["PENDING", "UP", "DOWN", "PENDING", "UP"]
        [incident] = fleet.incidents(node.name)
        assert incident.resolution == "recovered"


def test_a_queued_change_is_written_by_the_flush_a_graceful_stop_runs(srv, clock):
    fleet = Fleet(srv)
    [node] = _down_fleet(fleet, clock, 1)
    tracker = heartbeats.tracker_for(srv.rt)
    node_id = node.name.split("/")[1]

    async def beat_and_flush() -> None:
        info = tracker.info[node_id]
        for _ in range(2):
            tracker.queue(info, tracker.beat(info, srv.rt.now(), [], {}))
        await tracker.flush()  # what the flush loop runs once more when the daemon stops

    srv.call(beat_and_flush())
    assert not tracker.queued
    assert Node.get_by_id(node_id).status == "up"


def test_a_stream_reply_reports_the_stored_status(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    other, other_key = fleet.node(project, "s")
    reply = fleet.stub.StreamHeartbeats(
        iter([node_pb2.StreamHeartbeatsRequest() for _ in range(3)]),
        metadata=(("authorization", f"Bearer {other_key}"),),
    )
    assert reply.status == node_pb2.HEALTH_STATUS_UP
    assert Node.get_by_id(other.name.split("/")[1]).status == "up", "written before the reply"
    assert statuses(fleet.transitions(other.name)) == ["PENDING", "UP"]


def test_detection_does_not_blame_a_node_for_the_daemons_backlog(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project()  # window 3 s
    node, key = fleet.node(project)
    fleet.up(key)
    fleet.flush()
    tracker = heartbeats.tracker_for(srv.rt)

    def detect(backlog_s: float) -> int:
        return fleet.run(
            lambda rt: domain.detect_down(
                rt, tracker.latest_seen, backlog_s=backlog_s, shared=tracker.shared_deadlines()
            )
        )

    clock.advance(4)  # 1 s past the window, while the daemon is 2 s behind
    assert detect(2.0) == 0
    assert fleet.get(node.name).status == node_pb2.HEALTH_STATUS_UP
    clock.advance(2)  # 3 s past the window: more than the backlog
    assert detect(2.0) == 1
    assert fleet.get(node.name).status == node_pb2.HEALTH_STATUS_DOWN


def test_the_backlog_allowance_is_at_most_one_window(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project()  # window 3 s
    _, key = fleet.node(project)
    fleet.up(key)
    fleet.flush()
    tracker = heartbeats.tracker_for(srv.rt)
    clock.advance(6.5)  # silent for more than two windows
    assert (
        fleet.run(
            lambda rt: domain.detect_down(
                rt, tracker.latest_seen, backlog_s=100.0, shared=tracker.shared_deadlines()
            )
        )
        == 1
    )
    assert domain.backlog_allowance_s(100.0, 3.0) == 3.0
    assert domain.backlog_allowance_s(-1.0, 3.0) == 0.0


def test_a_blocked_event_loop_shows_as_backlog(srv):
    tracker = heartbeats.tracker_for(srv.rt)

    async def block() -> None:
        time.sleep(0.8)  # the loop can run nothing else meanwhile: beats would wait

    srv.call(block())
    deadline = time.monotonic() + 10
    while tracker.backlog_s() < 0.5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tracker.backlog_s() >= 0.5


def test_beats_read_late_across_the_fleet_show_as_backlog(srv):
    """The loop may keep time while gRPC hands beats over late: the median lateness of
    the UP nodes' beats counts too; one node back from a real silence does not."""
    tracker = heartbeats.tracker_for(srv.rt)
    start = srv.rt.now()

    async def beats(count: int, late_s: float) -> None:
        for index in range(count):
            info = domain.NodeInfo(f"fake-{count}-{index}", "p", "up", 1.0, 3.0, 2)
            tracker.beat(info, start, [], {})
            tracker.beat(info, start + timedelta(seconds=1.0 + late_s), [], {})

    srv.call(beats(1, 30.0))
    time.sleep(1.0)  # a few samples
    assert tracker.backlog_s() < 1.0, "one late node is not the daemon's backlog"
    srv.call(beats(40, 2.0))
    deadline = time.monotonic() + 10
    while tracker.backlog_s() < 2.0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tracker.backlog_s() == pytest.approx(2.0, abs=0.5)
