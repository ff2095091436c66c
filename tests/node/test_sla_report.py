"""The SLA report: every node's uptime over a month or a range, a page per message, then
the aggregate, optionally as CSV; owner only; bad periods are INVALID_ARGUMENT."""

from __future__ import annotations

import csv
import io

import grpc
import pytest

from coordd_client.v1 import node_pb2
from tests.helpers import rpc_error
from tests.node.helpers import Fleet, serve


@pytest.fixture
def srv(settings_factory, clock):
    yield from serve(settings_factory, clock)


def test_the_sla_report_streams_each_node_then_the_aggregate_and_renders_csv(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project(min_nodes=10)
    nodes = [fleet.node(project, f"n{i}") for i in range(3)]
    for _, key in nodes:
        fleet.up(key)
    for _ in range(60):  # n0 goes silent: DOWN from its last beat
        clock.advance(1)
        for _, key in nodes[1:]:
            fleet.beat(key)
    fleet.flush()
    fleet.detect()
    fleet.refresh()
    fleet.up(nodes[0][1])
    for _ in range(40):
        clock.advance(1)
        for _, key in nodes:
            fleet.beat(key)
    fleet.refresh()
    month = srv.rt.now().strftime("%Y-%m")
    replies = list(
        fleet.stub.StreamSlaReport(
            node_pb2.StreamSlaReportRequest(parent=project.name, month=month, csv=True), metadata=fleet.md
        )
    )
    rows = [r for reply in replies for r in reply.rows]
    assert [r.display_name for r in rows] == sorted(
        ["n0", "n1", "n2"], key=lambda n: nodes[int(n[1])][0].name
    )
    by_name = {r.display_name: r for r in rows}
    assert by_name["n0"].incidents == 1 and by_name["n1"].incidents == 0
    assert by_name["n0"].uptime.uptime_percent < by_name["n1"].uptime.uptime_percent == 100.0
    assert by_name["n0"].uptime.down.seconds >= 58
    aggregate = replies[-1].aggregate
    assert aggregate.node == "" and aggregate.incidents == 1
    total_up = sum(r.uptime.up.ToTimedelta().total_seconds() for r in rows)
    total_observed = sum(r.uptime.observed.ToTimedelta().total_seconds() for r in rows)
    assert abs(aggregate.uptime.uptime_percent - 100 * total_up / total_observed) < 0.01
    table = list(csv.DictReader(io.StringIO("".join(r.csv for r in replies))))
    assert [t["name"] for t in table] == [r.display_name for r in rows] + ["all 3 nodes"]
    assert table[-1]["incidents"] == "1"


def test_the_sla_report_is_for_the_projects_owner_over_a_sensible_period(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    stranger = Fleet(srv)
    with pytest.raises(grpc.RpcError) as denied:
        list(
            stranger.stub.StreamSlaReport(
                node_pb2.StreamSlaReportRequest(parent=project.name), metadata=stranger.md
            )
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    too_long = node_pb2.StreamSlaReportRequest(parent=project.name)
    too_long.start_time.FromSeconds(0)
    for request in (too_long, node_pb2.StreamSlaReportRequest(parent=project.name, month="2026-00")):
        failure = rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            lambda r, **kw: list(fleet.stub.StreamSlaReport(r, **kw)),
            request,
            metadata=fleet.md,
        )
        assert failure.violations
    [only] = list(
        fleet.stub.StreamSlaReport(node_pb2.StreamSlaReportRequest(parent=project.name), metadata=fleet.md)
    )
    assert only.aggregate.display_name == "all 0 nodes"
