"""A batch of beat-driven changes does each project's work once (domain/node/beat_batch.py):
what many nodes coming UP at once bring (placement, the mass outage's end, each outage's
recovery) is the same as when they come UP one by one."""

from __future__ import annotations

import math

import grpc
import pytest

from coordd.adapters import heartbeats
from coordd.store.node.models import Node, Transition
from coordd_client.v1 import node_pb2
from tests.helpers import rpc_error
from tests.node.helpers import Fleet, serve, statuses
from tests.support.server import bearer


@pytest.fixture
def srv(settings_factory, clock):
    yield from serve(settings_factory, clock)


def _node_id(node: node_pb2.Node) -> str:
    return node.name.split("/")[1]


def _recover_in_one_batch(srv, nodes: list[node_pb2.Node]) -> int:  # type: ignore[no-untyped-def]
    """Each node beats twice (successes_before_up = 2), as streams deliver beats; then the
    tracker's writer writes everything queued in one batch. Returns the batches it took."""
    tracker = heartbeats.tracker_for(srv.rt)

    async def recover() -> int:
        for _ in range(2):
            for node in nodes:
                info = tracker.info[_node_id(node)]
                change = tracker.beat(info, srv.rt.now(), [], {})
                assert change is not None
                tracker.queue(info, change)
        before = tracker.change_batches
        assert await tracker.write_changes() == len(nodes)
        return tracker.change_batches - before

    return srv.call(recover())


def test_nodes_coming_up_in_one_batch_share_the_waiting_replicas(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    waiting = fleet.stub.CreateWorkload(
        node_pb2.CreateWorkloadRequest(project=project.name, display_name="w", spec="img", replicas=3),
        metadata=fleet.md,
    ).workload
    assert list(waiting.assignments) == [], "no node is UP yet"
    registered = [fleet.node(project, f"n{i}") for i in range(3)]
    nodes = [node for node, _ in registered]
    for _, key in registered:  # the tracker learns each node from its first beat
        fleet.beat(key)
    tracker = heartbeats.tracker_for(srv.rt)

    async def second_beats() -> None:
        for node in nodes:
            info = tracker.info[_node_id(node)]
            tracker.queue(info, tracker.beat(info, srv.rt.now(), [], {}))
        await tracker.write_changes()

    srv.call(second_beats())
    placed = sorted(a.node for a in fleet.workload(waiting.name).assignments)
    assert placed == sorted(n.name for n in nodes), "one replica on each node that came up"
    for node in nodes:
        assert statuses(fleet.transitions(node.name)) == ["PENDING", "UP"]


def test_a_mass_outage_ends_when_one_batch_brings_its_nodes_back(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project(min_nodes=3, share=0.5)
    registered = [fleet.node(project, f"n{i}") for i in range(4)]
    for _, key in registered:
        fleet.up(key)
    fleet.flush()
    clock.advance(10)
    fleet.beat(registered[3][1])
    fleet.flush()
    assert fleet.detect() == 3
    [outage] = fleet.incidents(project.name)
    assert not outage.end_time.seconds
    down = [node for node, _ in registered[:3]]
    assert _recover_in_one_batch(srv, down) == 1
    [closed] = fleet.incidents(project.name)
    assert closed.end_time.seconds and closed.resolution == "recovered"
    for node in down:
        assert fleet.get(node.name).status == node_pb2.HEALTH_STATUS_UP
        assert statuses(fleet.transitions(node.name))[-3:] == ["DOWN", "PENDING", "UP"]
        assert fleet.incidents(node.name) == [], "a mass outage has no per-node incidents"


def test_each_outage_in_a_batch_is_recovered_once_with_its_downtime(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project(min_nodes=100)  # no mass-outage guard: per-node incidents
    registered = [fleet.node(project, f"n{i}") for i in range(4)]
    for _, key in registered:
        fleet.up(key)
    fleet.flush()
    clock.advance(10)
    assert fleet.detect() == 4
    clock.advance(20)
    nodes = [node for node, _ in registered]
    transitions_before = Transition.select().count()
    assert _recover_in_one_batch(srv, nodes) == 1
    assert Transition.select().count() == transitions_before + 8, "PENDING and UP, for each node"
    for node in nodes:
        [incident] = fleet.incidents(node.name)
        assert incident.resolution == "recovered"
        assert incident.end_time.seconds - incident.start_time.seconds >= 20
        stored = Node.get_by_id(_node_id(node))
        assert stored.status == "up" and stored.deadline_time > stored.status_time


def test_a_metric_that_stops_being_finite_is_refused_after_its_name_was_accepted(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    node, key = fleet.node(project)
    ok = fleet.stub.Heartbeat(node_pb2.HeartbeatRequest(metrics={"load": 0.5}), metadata=bearer(key))
    assert ok.node == node.name
    error = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: fleet.stub.Heartbeat(
            node_pb2.HeartbeatRequest(metrics={"load": math.inf}), metadata=bearer(key)
        ),
    )
    assert "metrics[load]" in error.violations
    renamed = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: fleet.stub.Heartbeat(
            node_pb2.HeartbeatRequest(metrics={"load": 0.5, "bad key!": 1.0}), metadata=bearer(key)
        ),
    )
    assert "metrics[bad key!]" in renamed.violations
