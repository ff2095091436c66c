"""NodeService: projects, nodes, node keys, workloads and placement, the state machine,
heartbeats kept in memory, WatchNodes and StreamHeartbeats."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from google.protobuf import field_mask_pb2

from coordd import metrics
from coordd.adapters import heartbeats
from coordd.scheduler.node import place_all
from coordd.store.models import EventLog
from coordd.store.node.models import Assignment, Node, Transition
from coordd_client.v1 import auth_pb2, node_pb2
from tests.helpers import rpc_error
from tests.node.helpers import Fleet, serve, statuses
from tests.support.server import bearer

RUNNING = node_pb2.REPLICA_STATE_RUNNING


@pytest.fixture
def srv(settings_factory, clock):
    yield from serve(settings_factory, clock)


def test_projects_validate_and_slugs_are_unique(srv):
    fleet = Fleet(srv)
    bad = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        fleet.stub.CreateProject,
        node_pb2.CreateProjectRequest(
            display_name="", slug="Not A Slug", health_policy=node_pb2.HealthPolicy(misses=-1)
        ),
        metadata=fleet.md,
    )
    assert {"display_name", "slug", "health_policy.misses"} <= set(bad.violations)
    project = fleet.project()
    assert project.health_policy.misses == 2 and project.reward_policy.points_per_up_hour == 10
    dup = rpc_error(
        grpc.StatusCode.ALREADY_EXISTS,
        fleet.stub.CreateProject,
        node_pb2.CreateProjectRequest(display_name="again", slug=project.slug),
        metadata=fleet.md,
    )
    assert dup.reason == "SLUG_TAKEN"
    other = Fleet(srv)
    denied = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        other.stub.UpdateProject,
        node_pb2.UpdateProjectRequest(
            project=node_pb2.Project(name=project.name, display_name="mine"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=other.md,
    )
    assert denied.reason == "NOT_OWNER"
    updated = fleet.stub.UpdateProject(
        node_pb2.UpdateProjectRequest(
            project=node_pb2.Project(name=project.name, display_name="Renamed"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=fleet.md,
    ).project
    assert updated.display_name == "Renamed" and updated.slug == project.slug
    assert not updated.public_status, "a status page is opt-in: off until the owner sets it"
    _, participant = srv.make_user("participant")
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        fleet.stub.ListProjects,
        node_pb2.ListProjectsRequest(),
        metadata=bearer(participant),
    )


def test_nodes_register_list_filter_update_and_stay_private(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    gpu, key = fleet.node(project, "gpu-1", region="eu", labels={"tier": "gpu"}, gpus=[("a100", 2)])
    fleet.node(project, "cpu-1", region="us", labels={"tier": "cpu"})
    assert key.startswith("ck_") and gpu.status == node_pb2.HEALTH_STATUS_UNKNOWN
    assert gpu.inventory.gpus[0].model == "a100" and gpu.api_key.startswith("apiKeys/")
    keys = srv.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=fleet.md).api_keys
    assert gpu.api_key in [k.name for k in keys], "the node key is the operator's, revocable like any key"

    def names(**filters):
        request = node_pb2.ListNodesRequest(project=project.name, **filters)
        return [n.display_name for n in fleet.stub.ListNodes(request, metadata=fleet.md).nodes]

    assert names() == ["gpu-1", "cpu-1"]
    assert names(region="eu") == ["gpu-1"]
    assert names(label="tier=cpu") == ["cpu-1"]
    assert names(status=node_pb2.HEALTH_STATUS_UP) == []
    page = fleet.stub.ListNodes(
        node_pb2.ListNodesRequest(project=project.name, page_size=1), metadata=fleet.md
    )
    assert len(page.nodes) == 1 and page.next_page_token
    bad = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        fleet.stub.ListNodes,
        node_pb2.ListNodesRequest(label="no-equals-sign"),
        metadata=fleet.md,
    )
    assert "label" in bad.violations

    stranger = Fleet(srv)
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        stranger.stub.GetNode,
        node_pb2.GetNodeRequest(name=gpu.name),
        metadata=stranger.md,
    )
    assert stranger.stub.ListNodes(node_pb2.ListNodesRequest(), metadata=stranger.md).nodes == []

    updated = fleet.stub.UpdateNode(
        node_pb2.UpdateNodeRequest(
            node=node_pb2.Node(name=gpu.name, region="ap", labels={"tier": "gpu", "x": "y"}),
            update_mask=field_mask_pb2.FieldMask(paths=["region", "labels"]),
        ),
        metadata=fleet.md,
    ).node
    assert updated.region == "ap" and dict(updated.labels) == {"tier": "gpu", "x": "y"}
    assert names(label="x=y") == ["gpu-1"]
    bad_mask = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        fleet.stub.UpdateNode,
        node_pb2.UpdateNodeRequest(node=updated, update_mask=field_mask_pb2.FieldMask(paths=["status"])),
        metadata=fleet.md,
    )
    assert "update_mask" in bad_mask.violations


def test_register_node_with_an_idempotency_key_replays_instead_of_registering_twice(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    request = node_pb2.RegisterNodeRequest(project=project.name, display_name="once")
    md = bearer(fleet.token, **{"idempotency-key": "register-once"})
    first = fleet.stub.RegisterNode(request, metadata=md)
    again = fleet.stub.RegisterNode(request, metadata=md)
    assert again == first
    assert Node.select().count() == 1


def test_a_node_key_only_beats_and_only_a_node_key_beats(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    node, key = fleet.node(project)
    denied = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        fleet.stub.GetNode,
        node_pb2.GetNodeRequest(name=node.name),
        metadata=bearer(key),
    )
    assert denied.reason == "CREDENTIAL_SCOPE", "the AuthInterceptor refuses a node key beyond beats"
    not_node = rpc_error(grpc.StatusCode.PERMISSION_DENIED, fleet.beat, fleet.token)
    assert not_node.reason == "NODE_KEY_REQUIRED"
    assert fleet.beat(key).node == node.name
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, fleet.beat, "ck_not-a-real-key")
    bad = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, fleet.beat, key, ("workloads/x", 99))
    assert "workloads[0].state" in bad.violations


def test_state_machine_stores_every_transition_with_its_reason(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project()
    node, key = fleet.node(project)
    first = fleet.beat(key)
    assert first.status == node_pb2.HEALTH_STATUS_PENDING
    assert first.next_interval.seconds == 1
    assert fleet.beat(key).status == node_pb2.HEALTH_STATUS_UP
    fleet.flush()
    clock.advance(10)
    assert fleet.detect() == 1
    down = fleet.get(node.name)
    assert down.status == node_pb2.HEALTH_STATUS_DOWN and "no heartbeat for 3s" in down.status_reason
    assert fleet.beat(key).status == node_pb2.HEALTH_STATUS_PENDING, "one beat is not enough after DOWN"
    assert fleet.beat(key).status == node_pb2.HEALTH_STATUS_UP
    transitions = fleet.transitions(node.name)
    assert statuses(transitions) == ["PENDING", "UP", "DOWN", "PENDING", "UP"]
    assert all(t.reason for t in transitions)
    [incident] = fleet.incidents(node.name)
    assert incident.end_time.seconds and incident.resolution == "recovered"
    assert incident.duration.seconds >= 0 and "no heartbeat" in incident.cause


def test_heartbeats_cost_no_write_until_the_batched_flush(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project()
    node, key = fleet.node(project)
    fleet.up(key)
    fleet.flush()
    node_id = node.name.split("/")[1]
    before = Node.get_by_id(node_id)
    events = EventLog.select().count()
    clock.advance(2)
    for _ in range(20):
        fleet.beat(key)
    after = Node.get_by_id(node_id)
    assert after.last_seen_time == before.last_seen_time, "beats stay in memory"
    assert EventLog.select().count() == events
    assert fleet.flush() == 1, "twenty beats, one row written"
    flushed = Node.get_by_id(node_id)
    assert flushed.last_seen_time > before.last_seen_time
    assert flushed.deadline_time > before.deadline_time, "the indexed deadline moves with the flush"


def test_detection_believes_a_fresher_unflushed_beat(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project()
    node, key = fleet.node(project)
    fleet.up(key)
    fleet.flush()
    clock.advance(10)
    fleet.beat(key)  # not flushed: the stored deadline has passed, memory knows better
    assert fleet.detect() == 0
    assert fleet.get(node.name).status == node_pb2.HEALTH_STATUS_UP
    clock.advance(10)
    assert fleet.detect() == 1


def test_placement_spreads_fits_inventory_and_labels_and_reassigns_on_down(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project(min_nodes=10)
    keys = {}
    for name, cpu, labels in (
        ("a", 4, {"zone": "x"}),
        ("b", 4, {"zone": "x"}),
        ("c", 1, {"zone": "x"}),
        ("d", 8, {}),
    ):
        n, k = fleet.node(project, name, cpu=cpu, labels=labels)
        keys[n.name] = (name, k)
        fleet.up(k)
    request = node_pb2.CreateWorkloadRequest(
        project=project.name,
        display_name="web",
        spec="registry/web:1",
        replicas=2,
        resources=node_pb2.ResourceRequest(cpu_millis=2000, memory_mb=1024),
        placement_labels={"zone": "x"},
    )
    workload = fleet.stub.CreateWorkload(request, metadata=fleet.md).workload
    placed = sorted(keys[a.node][0] for a in workload.assignments)
    assert placed == ["a", "b"], "spread over two nodes; c is too small, d lacks the label"
    assert workload.status == node_pb2.HEALTH_STATUS_PENDING
    by_name = {v[0]: (n, v[1]) for n, v in keys.items()}
    reply = fleet.beat(by_name["a"][1])
    assert [a.workload for a in reply.assignments] == [workload.name]
    assert reply.assignments[0].spec == "registry/web:1"
    for name in ("a", "b"):
        fleet.beat(by_name[name][1], (workload.name, RUNNING))
    assert fleet.workload(workload.name).status == node_pb2.HEALTH_STATUS_UP

    # b falls silent; a node with the label and room is needed: give c more cores.
    fleet.stub.UpdateNode(
        node_pb2.UpdateNodeRequest(
            node=node_pb2.Node(
                name=by_name["c"][0], inventory=node_pb2.Inventory(cpu_cores=4, memory_mb=8192)
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["inventory"]),
        ),
        metadata=fleet.md,
    )
    fleet.flush()
    clock.advance(10)
    for name in ("a", "c", "d"):
        fleet.beat(by_name[name][1])
    fleet.flush()
    assert fleet.detect() == 1
    moved = fleet.workload(workload.name)
    assert sorted(keys[a.node][0] for a in moved.assignments) == ["a", "c"]
    assert moved.status == node_pb2.HEALTH_STATUS_DOWN
    [incident] = fleet.incidents(workload.name)
    assert incident.notifications_inhibited, "the node's DOWN inhibits its workloads' notifications"
    fleet.beat(by_name["c"][1], (workload.name, RUNNING))
    assert fleet.workload(workload.name).status == node_pb2.HEALTH_STATUS_UP
    listed = fleet.stub.ListAssignments(
        node_pb2.ListAssignmentsRequest(parent=by_name["c"][0]), metadata=fleet.md
    )
    assert [a.state for a in listed.assignments] == [RUNNING]

    # The scheduler's safety net re-places replicas that are missing for any reason.
    Assignment.delete().where(Assignment.workload == workload.name.split("/")[1]).execute()
    assert fleet.run(place_all) == 1
    assert len(fleet.workload(workload.name).assignments) == 2
    windows = fleet.stub.GetUptime(node_pb2.GetUptimeRequest(name=workload.name), metadata=fleet.md).windows
    assert len(windows) == 3 and 0 < windows[0].uptime_percent < 100

    scaled = fleet.stub.UpdateWorkload(
        node_pb2.UpdateWorkloadRequest(
            workload=node_pb2.Workload(name=workload.name, replicas=1),
            update_mask=field_mask_pb2.FieldMask(paths=["replicas"]),
        ),
        metadata=fleet.md,
    ).workload
    assert len(scaled.assignments) == 1
    fleet.stub.DeleteWorkload(node_pb2.DeleteWorkloadRequest(name=workload.name), metadata=fleet.md)
    rpc_error(grpc.StatusCode.NOT_FOUND, fleet.workload, workload.name)


def test_decommission_revokes_the_key_and_moves_replicas(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    a, key_a = fleet.node(project, "a")
    b, key_b = fleet.node(project, "b")
    fleet.up(key_a)
    workload = fleet.stub.CreateWorkload(
        node_pb2.CreateWorkloadRequest(project=project.name, display_name="w", spec="img", replicas=1),
        metadata=fleet.md,
    ).workload
    assert workload.assignments[0].node == a.name
    fleet.up(key_b)
    done = fleet.stub.DecommissionNode(
        node_pb2.DecommissionNodeRequest(name=a.name, reason="retired"), metadata=fleet.md
    )
    assert done.node.status == node_pb2.HEALTH_STATUS_DECOMMISSIONED
    assert [x.node for x in fleet.workload(workload.name).assignments] == [b.name]
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, fleet.beat, key_a)


def test_stream_heartbeats_carry_the_same_beats(srv):
    fleet = Fleet(srv)
    project = fleet.project(successes=3)
    node, key = fleet.node(project)
    beats = iter([node_pb2.StreamHeartbeatsRequest(metrics={"load": 0.5}) for _ in range(5)])
    reply = fleet.stub.StreamHeartbeats(beats, metadata=bearer(key))
    assert reply.beats == 5 and reply.node == node.name
    assert reply.status == node_pb2.HEALTH_STATUS_UP
    assert statuses(fleet.transitions(node.name)) == ["PENDING", "UP"]
    assert heartbeats.tracker_for(srv.rt).metrics[node.name.split("/")[1]] == {"load": 0.5}


def test_accepted_beats_are_counted_in_the_heartbeats_metric(srv):
    fleet = Fleet(srv)
    project = fleet.project(successes=1)
    _, key = fleet.node(project)
    before = metrics.HEARTBEATS._value.get()
    beats = iter([node_pb2.StreamHeartbeatsRequest() for _ in range(4)])
    assert fleet.stub.StreamHeartbeats(beats, metadata=bearer(key)).beats == 4
    fleet.beat(key)
    # Added by the tracker a few times a second, not per beat.
    deadline = time.monotonic() + 5
    while metrics.HEARTBEATS._value.get() - before < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metrics.HEARTBEATS._value.get() - before == 5


def test_watch_nodes_streams_status_changes(srv, clock):
    fleet = Fleet(srv)
    project = fleet.project()
    _, key = fleet.node(project)
    stream = fleet.stub.WatchNodes(node_pb2.WatchNodesRequest(project=project.name), metadata=fleet.md)
    stream.initial_metadata()
    seen: list[node_pb2.WatchNodesResponse] = []
    done = threading.Event()

    def consume() -> None:
        for item in stream:
            seen.append(item)
            if len(seen) == 3:
                done.set()
                return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    fleet.up(key)
    fleet.flush()
    clock.advance(10)
    fleet.detect()
    assert done.wait(15)
    stream.cancel()
    assert [x.transition.to_status for x in seen] == [
        node_pb2.HEALTH_STATUS_PENDING,
        node_pb2.HEALTH_STATUS_UP,
        node_pb2.HEALTH_STATUS_DOWN,
    ]
    assert seen[-1].node.status == node_pb2.HEALTH_STATUS_DOWN
    stranger = Fleet(srv)
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        lambda: next(
            stranger.stub.WatchNodes(node_pb2.WatchNodesRequest(project=project.name), metadata=stranger.md)
        ),
    )
    assert Transition.select().count() == 3


def test_a_watch_is_live_when_its_headers_arrive(srv, monkeypatch):
    """WatchNodes reads where to start before the client hears the stream is up: a change
    made right after `initial_metadata()` is never missed, however slow that read is."""
    import time

    from coordd.domain import node as domain

    fleet = Fleet(srv)
    project = fleet.project()
    _, key = fleet.node(project)
    read_cursor = domain.last_transition_id

    def slow_cursor(project_id: str) -> int:
        time.sleep(0.5)  # a busy database pool
        return read_cursor(project_id)

    monkeypatch.setattr(domain, "last_transition_id", slow_cursor)
    stream = fleet.stub.WatchNodes(
        node_pb2.WatchNodesRequest(project=project.name), metadata=fleet.md, timeout=10
    )
    stream.initial_metadata()
    fleet.beat(key)  # PENDING, committed before the reply
    first = next(stream)
    stream.cancel()
    assert first.transition.to_status == node_pb2.HEALTH_STATUS_PENDING


def test_the_owner_opts_a_project_in_to_its_public_status_page_and_others_cannot(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    assert project.public_status is False

    def opt(md, on: bool, paths=("public_status",)):  # type: ignore[no-untyped-def]
        return fleet.stub.UpdateProject(
            node_pb2.UpdateProjectRequest(
                project=node_pb2.Project(name=project.name, public_status=on, display_name="ignored"),
                update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
            ),
            metadata=md,
        ).project

    other = Fleet(srv)
    denied = rpc_error(grpc.StatusCode.PERMISSION_DENIED, opt, other.md, True)
    assert denied.reason == "NOT_OWNER"
    on = opt(fleet.md, True)
    assert on.public_status and on.display_name == project.display_name, "only the masked path changes"
    got = fleet.stub.GetProject(node_pb2.GetProjectRequest(name=project.name), metadata=fleet.md).project
    assert got.public_status
    renamed = opt(fleet.md, False, paths=("display_name",))
    assert renamed.public_status, "a mask without public_status leaves it as it is"
    assert not opt(fleet.md, False).public_status
