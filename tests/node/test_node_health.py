"""Detection guards, maintenance windows, uptime and rewards."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from coordd.adapters import heartbeats
from coordd.domain.node import rewards
from coordd.store.node.models import MaintenanceWindow, Node, RewardEntry
from coordd.store.notify.models import Delivery
from coordd_client.v1 import node_pb2
from tests.helpers import rpc_error
from tests.node.helpers import Fleet, next_utc_day_at, serve, statuses
from tests.support.server import ServerHandle


@pytest.fixture
def srv(settings_factory, clock):
    yield from serve(settings_factory, clock)


def stamp(value) -> timestamp_pb2.Timestamp:  # type: ignore[no-untyped-def]
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def test_due_work_is_selected_through_indexed_due_times(srv):
    """Detection, maintenance, rewards and the outbox select what is due through an index
    on the due-time column, never by scanning every row."""
    now = srv.rt.now()
    queries = [
        Node.select().where(Node.deadline_time <= now).order_by(Node.deadline_time).limit(10),
        Node.select(Node.id).where(Node.reward_due_time <= now).order_by(Node.reward_due_time).limit(10),
        MaintenanceWindow.select().where(MaintenanceWindow.next_action_time <= now).limit(10),
        Delivery.select()
        .where(Delivery.next_attempt_time <= now)
        .order_by(Delivery.next_attempt_time)
        .limit(10),
    ]
    db = srv.rt.store.db
    for query in queries:
        sql, params = query.sql()
        with db.atomic():
            if srv.rt.store.is_postgres:
                db.execute_sql(
                    "SET LOCAL enable_seqscan = off"
                )  # tiny tables: ask whether an index can serve
                plan = " ".join(row[0] for row in db.execute_sql("EXPLAIN " + sql, params).fetchall())
            else:
                plan = " ".join(
                    str(row[-1]) for row in db.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall()
                )
        assert "index" in plan.lower(), plan


def test_a_restart_gives_every_node_a_failover_grace(settings_factory, clock):
    settings = settings_factory(scheduler_enabled=False)
    first = ServerHandle(settings, clock)
    try:
        fleet = Fleet(first)
        project = fleet.project()
        alive, alive_key = fleet.node(project, "alive")
        dead, dead_key = fleet.node(project, "dead")
        fleet.up(alive_key)
        fleet.up(dead_key)
        fleet.flush()
    finally:
        first.stop()
    clock.advance(10)  # the daemon was away longer than the 3 s detection window
    second = ServerHandle(settings, clock)
    try:
        fleet.rebind(second)
        assert fleet.detect() == 0, "a restart alone never marks a node DOWN"
        assert fleet.get(alive.name).status == node_pb2.HEALTH_STATUS_UP
        fleet.beat(alive_key)
        fleet.flush()
        clock.advance(2)
        fleet.beat(alive_key)
        fleet.flush()
        clock.advance(2)  # grace (one window from the restart) is over
        assert fleet.detect() == 1
        assert fleet.get(dead.name).status == node_pb2.HEALTH_STATUS_DOWN, (
            "a node that stays silent still goes DOWN"
        )
        assert "DOWN" not in statuses(fleet.transitions(alive.name))
    finally:
        second.stop()


# Two replicas share PostgreSQL and Redis; one SQLite file has one daemon.
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_beat_on_another_replica_reaches_the_detector_through_redis(backend, settings_factory, clock):
    leader = ServerHandle(settings_factory(scheduler_enabled=False), clock)
    other = ServerHandle(settings_factory(scheduler_enabled=False), clock)
    try:
        fleet = Fleet(leader)
        project = fleet.project()
        node, key = fleet.node(project)
        fleet.up(key)
        fleet.flush()
        clock.advance(10)
        elsewhere = Fleet(other)
        elsewhere.beat(key)  # the node's beats now land on the other replica
        other.call(heartbeats.tracker_for(other.rt).flush(database=False))  # Redis only
        assert fleet.detect() == 0, "the leader saw the beat in Redis"
        assert fleet.get(node.name).status == node_pb2.HEALTH_STATUS_UP
        clock.advance(10)
        assert fleet.detect() == 1
    finally:
        other.stop()
        leader.stop()


def test_mass_outage_opens_one_project_incident_and_debits_no_uptime(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project(min_nodes=3, share=0.5)
    nodes = [fleet.node(project, f"n{i}") for i in range(4)]
    for _, key in nodes:
        fleet.up(key)
    fleet.flush()
    clock.advance(10)
    fleet.beat(nodes[3][1])
    fleet.flush()
    assert fleet.detect() == 3
    [outage] = fleet.incidents(project.name)
    assert "mass outage: 3 of 4" in outage.cause and not outage.end_time.seconds
    for node, _ in nodes[:3]:
        assert fleet.incidents(node.name) == [], "no per-node incidents in a mass outage"
        [down] = [t for t in fleet.transitions(node.name) if t.to_status == node_pb2.HEALTH_STATUS_DOWN]
        assert down.uptime_excluded
    clock.advance(60)
    for node, key in nodes[:3]:
        fleet.up(key)
        [day, *_] = fleet.stub.GetUptime(node_pb2.GetUptimeRequest(name=node.name), metadata=fleet.md).windows
        assert day.uptime_percent == 100.0, "the outage is ours: no uptime debit"
    [closed] = fleet.incidents(project.name)
    assert closed.end_time.seconds and closed.resolution == "recovered"


def test_a_single_node_outage_is_not_a_mass_outage(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project(min_nodes=3, share=0.5)
    nodes = [fleet.node(project, f"n{i}") for i in range(3)]
    for _, key in nodes:
        fleet.up(key)
    fleet.flush()
    clock.advance(10)
    for _, key in nodes[1:]:
        fleet.beat(key)
    fleet.flush()
    assert fleet.detect() == 1
    assert fleet.incidents(project.name) == []
    assert len(fleet.incidents(nodes[0][0].name)) == 1


def test_maintenance_window_suppresses_incidents_and_debits_until_it_ends(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project()
    node, key = fleet.node(project)
    beating, beating_key = fleet.node(project, "beating")
    fleet.up(key)
    fleet.up(beating_key)
    fleet.flush()
    now = srv.rt.now()
    bad = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        fleet.stub.CreateMaintenanceWindow,
        node_pb2.CreateMaintenanceWindowRequest(
            target=node.name, start_time=stamp(now), end_time=stamp(now - timedelta(seconds=1))
        ),
        metadata=fleet.md,
    )
    assert "end_time" in bad.violations
    for target in (node.name, beating.name):
        fleet.stub.CreateMaintenanceWindow(
            node_pb2.CreateMaintenanceWindowRequest(
                target=target,
                start_time=stamp(now),
                end_time=stamp(now + timedelta(seconds=60)),
                reason="kernel",
            ),
            metadata=fleet.md,
        )
    assert fleet.run(heartbeats.run_maintenance) == 2
    assert fleet.get(node.name).status == node_pb2.HEALTH_STATUS_MAINTENANCE
    clock.advance(30)
    assert fleet.detect() == 0, "no deadline inside a window"
    clock.advance(31)
    fleet.beat(beating_key)
    assert fleet.run(heartbeats.run_maintenance) == 2
    assert fleet.get(beating.name).status == node_pb2.HEALTH_STATUS_UP
    assert fleet.incidents(beating.name) == []
    ended = fleet.get(node.name)
    assert ended.status == node_pb2.HEALTH_STATUS_DOWN and "maintenance window ended" in ended.status_reason
    [incident] = fleet.incidents(node.name)
    assert incident.start_time.seconds >= int((now + timedelta(seconds=60)).timestamp())
    assert statuses(fleet.transitions(node.name)) == ["PENDING", "UP", "MAINTENANCE", "DOWN"]
    [day, *_] = fleet.stub.GetUptime(node_pb2.GetUptimeRequest(name=node.name), metadata=fleet.md).windows
    assert day.observed.seconds < 5, "the 61 s in maintenance are not observed"
    windows = fleet.stub.ListMaintenanceWindows(
        node_pb2.ListMaintenanceWindowsRequest(target=node.name), metadata=fleet.md
    ).maintenance_windows
    assert [w.state for w in windows] == [node_pb2.MAINTENANCE_STATE_ENDED]


def test_uptime_is_seconds_up_over_seconds_observed(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project()
    node, key = fleet.node(project)
    fleet.up(key)
    for _ in range(100):  # beating every second for 100 s...
        clock.advance(1)
        fleet.beat(key)
    fleet.flush()
    clock.advance(10)  # ...then silent: DOWN, counted from the last beat (issue 14)
    assert fleet.detect() == 1
    clock.advance(40)
    fleet.up(key)
    reply = fleet.stub.GetUptime(node_pb2.GetUptimeRequest(name=node.name), metadata=fleet.md)
    assert [w.window.seconds for w in reply.windows] == [86400, 7 * 86400, 30 * 86400]
    for window in reply.windows:
        assert abs(window.uptime_percent - 100 * 100 / 150) < 0.5
        assert abs(window.observed.seconds - 150) <= 1
    stranger = Fleet(srv)
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        stranger.stub.GetUptime,
        node_pb2.GetUptimeRequest(name=node.name),
        metadata=stranger.md,
    )


def test_rewards_credit_each_closed_bucket_once_with_a_daily_cap(srv, clock, monkeypatch):
    clock.advance(next_utc_day_at(0, 5, srv.rt.now()))
    fleet = Fleet(srv)
    project = fleet.project(points=100, cap=250)
    node, key = fleet.node(project)
    fleet.up(key)
    fleet.flush()
    clock.advance(3 * 3600)
    fleet.refresh()
    # A crash in the middle of a run (here: on the second bucket) rolls the whole node back.
    real_measure = rewards.measure
    calls = []

    def crash_on_second_bucket(segs, holes):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("scheduler crashed")
        return real_measure(segs, holes)

    monkeypatch.setattr(rewards, "measure", crash_on_second_bucket)
    with pytest.raises(RuntimeError):
        fleet.run(rewards.credit_rewards)
    monkeypatch.setattr(rewards, "measure", real_measure)
    assert RewardEntry.select().count() == 0
    assert fleet.run(rewards.credit_rewards) == 3
    entries = fleet.stub.ListRewardEntries(node_pb2.ListRewardEntriesRequest(), metadata=fleet.md).entries
    points = [e.points for e in reversed(entries)]
    assert points == [91, 100, 59], "55 UP minutes, a full hour, then the 250/day cap"
    assert [e.capped for e in reversed(entries)] == [False, False, True]
    assert fleet.stub.GetRewardBalance(node_pb2.GetRewardBalanceRequest(), metadata=fleet.md).points == 250
    assert fleet.run(rewards.credit_rewards) == 0
    # A crash after writing entries but before the cursor moved: the unique key holds.
    node_id = node.name.split("/")[1]
    stored = Node.get_by_id(node_id)
    first_bucket = stored.reward_cursor - timedelta(hours=3)
    Node.update(reward_cursor=first_bucket, reward_due_time=first_bucket + timedelta(hours=1)).where(
        Node.id == node_id
    ).execute()
    fleet.run(rewards.credit_rewards)
    assert RewardEntry.select().count() == 3
    assert fleet.stub.GetRewardBalance(node_pb2.GetRewardBalanceRequest(), metadata=fleet.md).points == 250
    other = Fleet(srv)
    denied = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        other.stub.GetRewardBalance,
        node_pb2.GetRewardBalanceRequest(owner=f"users/{fleet.owner_id}"),
        metadata=other.md,
    )
    assert denied.reason == "NOT_OWNER"
