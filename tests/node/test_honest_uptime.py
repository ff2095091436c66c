"""Honest uptime and sensible guards: an outage starts at the last beat that arrived, not
when it was detected; maintenance and confirmed mass outages are left out and shown apart;
rolling windows and calendar months; a mass outage needs a meaningful share of a
meaningful number of nodes; beats with unknown workloads or unbounded metrics are refused."""

from __future__ import annotations

from datetime import UTC, timedelta

import grpc
import pytest

from coordd.adapters import heartbeats
from coordd_client.v1 import node_pb2
from tests.helpers import rpc_error
from tests.node.helpers import Fleet, serve
from tests.support.server import bearer


@pytest.fixture
def srv(settings_factory, clock):
    yield from serve(settings_factory, clock)


def uptime(fleet: Fleet, name: str, month: str = "") -> list[node_pb2.UptimeWindow]:
    request = node_pb2.GetUptimeRequest(name=name, month=month)
    return list(fleet.stub.GetUptime(request, metadata=fleet.md).windows)


def test_an_outage_counts_from_the_last_beat_not_from_its_detection(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project(interval=10, misses=2, grace=10)  # the defaults: a 30 s window
    node, key = fleet.node(project)
    fleet.up(key)
    fleet.flush()
    last_beat = srv.rt.now()
    clock.advance(31)
    assert fleet.detect() == 1
    clock.advance(9)  # 40 s silent in all, 9 of them after detection
    fleet.refresh()
    fleet.up(key)

    down = next(t for t in fleet.transitions(node.name) if t.to_status == node_pb2.HEALTH_STATUS_DOWN)
    began = down.effective_time.ToDatetime(tzinfo=UTC)
    assert abs((began - last_beat).total_seconds()) < 0.5, "the outage began at the last beat"
    assert (down.time.ToDatetime(tzinfo=UTC) - began).total_seconds() >= 31, "detected a window later"
    [incident] = fleet.incidents(node.name)
    assert abs((incident.start_time.ToDatetime(tzinfo=UTC) - last_beat).total_seconds()) < 0.5
    assert incident.duration.seconds >= 40
    day = uptime(fleet, node.name)[0]
    assert day.label == "24h"
    assert 39.5 <= day.down.ToTimedelta().total_seconds() <= 41, "the detection delay is DOWN time"
    assert day.up.ToTimedelta() < timedelta(seconds=1)


def test_maintenance_and_mass_outages_are_left_out_and_shown_apart(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project(min_nodes=10, share=0.5)
    nodes = [fleet.node(project, f"n{i}") for i in range(10)]
    for _, key in nodes:
        fleet.up(key)
    fleet.flush()
    # Half the fleet goes silent at once: a mass outage (ours, not theirs).
    silent, beating = nodes[:5], nodes[5:]
    for _ in range(4):
        clock.advance(1)
        for _, key in beating:
            fleet.beat(key)
    fleet.flush()
    assert fleet.detect() == 5
    [mass] = fleet.incidents(project.name)
    assert "mass outage" in mass.cause
    clock.advance(20)
    for _, key in silent:
        fleet.refresh()
        fleet.up(key)
    day = uptime(fleet, silent[0][0].name)[0]
    assert day.uptime_percent == 100.0
    assert day.mass_outage.ToTimedelta().total_seconds() >= 20
    assert day.down.ToTimedelta().total_seconds() == 0

    # A maintenance window: not observed, shown as maintenance.
    node, key = beating[0]
    now = srv.rt.now()
    start, end = now + timedelta(seconds=1), now + timedelta(seconds=61)
    request = node_pb2.CreateMaintenanceWindowRequest(target=node.name, reason="kernel")
    request.start_time.FromDatetime(start)
    request.end_time.FromDatetime(end)
    fleet.stub.CreateMaintenanceWindow(request, metadata=fleet.md)
    clock.advance(2)
    fleet.run(heartbeats.run_maintenance)
    clock.advance(60)
    fleet.refresh()
    fleet.beat(key)
    fleet.run(heartbeats.run_maintenance)
    fleet.up(key)
    day = uptime(fleet, node.name)[0]
    assert abs(day.maintenance.ToTimedelta().total_seconds() - 60) < 1
    assert day.uptime_percent == 100.0


def test_uptime_of_a_calendar_month_and_bad_months(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project()
    node, key = fleet.node(project)
    fleet.up(key)
    now = srv.rt.now()
    month = now.strftime("%Y-%m")
    windows = uptime(fleet, node.name, month)
    assert [w.label for w in windows] == ["24h", "7d", "30d", month]
    this_month = windows[-1]
    assert this_month.start_time.ToDatetime(tzinfo=UTC) == now.replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    assert this_month.uptime_percent == 100.0
    last_month = (now.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    before = uptime(fleet, node.name, last_month)[-1]
    assert before.observed.ToTimedelta() == timedelta(0) and before.uptime_percent == 100.0
    assert (before.end_time.ToDatetime() - before.start_time.ToDatetime()).days in (28, 29, 30, 31)
    future = (now.replace(day=28) + timedelta(days=5)).strftime("%Y-%m")
    for bad in ("2026-13", "26-01", "soon", future):
        failure = rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            fleet.stub.GetUptime,
            node_pb2.GetUptimeRequest(name=node.name, month=bad),
            metadata=fleet.md,
        )
        assert "month" in failure.violations


def test_by_default_a_mass_outage_needs_half_of_at_least_ten_nodes(srv, clock):
    fleet = Fleet(srv)
    small = fleet.project(min_nodes=0, share=0)  # 0: the defaults (>= 50 % of >= 10 nodes)
    assert small.health_policy.mass_outage_min_nodes == 10
    assert small.health_policy.mass_outage_share == 0.5
    keys = [fleet.node(small, f"s{i}")[1] for i in range(3)]
    for key in keys:
        fleet.up(key)
    fleet.flush()
    clock.advance(1)
    fleet.beat(keys[2])
    fleet.flush()
    clock.advance(2.5)
    assert fleet.detect() == 2
    assert fleet.incidents(small.name) == [], "2 of 3 nodes down is their outage, not a mass outage"

    fleet.refresh()
    big = fleet.project(min_nodes=0, share=0)
    fleet_nodes = [fleet.node(big, f"b{i}") for i in range(10)]
    for _, key in fleet_nodes:
        fleet.up(key)
    fleet.flush()
    for _ in range(4):
        clock.advance(1)
        for _, key in fleet_nodes[4:]:
            fleet.beat(key)
    fleet.flush()
    assert fleet.detect() >= 4
    assert fleet.incidents(big.name) == [], "4 of 10 is not half"
    for node, _ in fleet_nodes[:4]:
        assert len(fleet.incidents(node.name)) == 1, "each is its own incident"


def test_a_beat_about_an_unknown_workload_or_with_unbounded_metrics_is_refused(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project()
    node, key = fleet.node(project)
    fleet.up(key)
    other = fleet.project()
    foreign = fleet.stub.CreateWorkload(
        node_pb2.CreateWorkloadRequest(project=other.name, display_name="w", spec="img", replicas=1),
        metadata=fleet.md,
    ).workload
    for workload in ("workloads/00000000000000000000000000", foreign.name):
        failure = rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            fleet.stub.Heartbeat,
            node_pb2.HeartbeatRequest(
                workloads=[node_pb2.WorkloadReport(workload=workload, state=node_pb2.REPLICA_STATE_RUNNING)]
            ),
            metadata=bearer(key),
        )
        assert "workloads[0].workload" in failure.violations
    # A workload of the project that is not (or no longer) placed here: accepted, ignored.
    unplaced = fleet.stub.CreateWorkload(
        node_pb2.CreateWorkloadRequest(project=project.name, display_name="w", spec="img", replicas=0),
        metadata=fleet.md,
    ).workload
    fleet.beat(key, (unplaced.name, node_pb2.REPLICA_STATE_RUNNING))

    too_many = {f"m{i}": float(i) for i in range(65)}
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        fleet.stub.Heartbeat,
        node_pb2.HeartbeatRequest(metrics=too_many),
        metadata=bearer(key),
    )
    assert "metrics" in failure.violations
    for bad in ({"x" * 65: 1.0}, {"bad key": 1.0}, {"load": float("nan")}):
        rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            fleet.stub.Heartbeat,
            node_pb2.HeartbeatRequest(metrics=bad),
            metadata=bearer(key),
        )
    fleet.stub.Heartbeat(node_pb2.HeartbeatRequest(metrics={"load.1m": 0.5}), metadata=bearer(key))
    tracker = heartbeats.tracker_for(srv.rt)
    assert tracker.metrics[node.name.split("/")[1]] == {"load.1m": 0.5}


def test_a_workload_that_lost_its_node_is_down_from_the_nodes_last_beat(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project(min_nodes=10)
    _, key = fleet.node(project)
    fleet.up(key)
    workload = fleet.stub.CreateWorkload(
        node_pb2.CreateWorkloadRequest(project=project.name, display_name="w", spec="img", replicas=1),
        metadata=fleet.md,
    ).workload
    fleet.beat(key, (workload.name, node_pb2.REPLICA_STATE_RUNNING))
    assert fleet.workload(workload.name).status == node_pb2.HEALTH_STATUS_UP
    fleet.flush()
    last_beat = srv.rt.now()
    clock.advance(10)
    assert fleet.detect() == 1
    down = next(t for t in fleet.transitions(workload.name) if t.to_status == node_pb2.HEALTH_STATUS_DOWN)
    assert abs((down.effective_time.ToDatetime(tzinfo=UTC) - last_beat).total_seconds()) < 0.5
    clock.advance(20)
    fleet.refresh()
    day = uptime(fleet, workload.name)[0]
    assert day.down.ToTimedelta().total_seconds() >= 29.5
