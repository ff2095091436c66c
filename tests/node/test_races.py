"""PostgreSQL races: concurrent changes of one node, and concurrent workloads in one project,
all succeed (or get a clear client error): never INTERNAL, UNAVAILABLE, or a deadlock
reported as the database being down."""

from __future__ import annotations

import threading

import grpc
import pytest
from google.protobuf import field_mask_pb2

from coordd.core.principal import NODE_OPERATOR, Principal
from coordd.domain import node
from coordd.store.node.models import Assignment, NodeLabel, Workload
from coordd_client.v1 import node_pb2
from tests.node.helpers import Fleet, serve

THREADS = 8
pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


@pytest.fixture
def srv(settings_factory, clock):
    yield from serve(settings_factory, clock)


def _all_at_once(calls):
    """Runs the calls in THREADS threads released together; returns (results, errors)."""
    barrier = threading.Barrier(len(calls))
    results, errors = [], []
    lock = threading.Lock()

    def run(call):
        barrier.wait()
        try:
            out = call()
        except grpc.RpcError as exc:
            with lock:
                errors.append((exc.code(), exc.details()))
        else:
            with lock:
                results.append(out)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def test_concurrent_label_updates_of_one_node_all_succeed_and_leave_one_consistent_set(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    node, key = fleet.node(project, labels={"start": "yes"})
    fleet.up(key)

    def update(i):
        labels = {"tier": f"t{i}", "zone": f"z{i % 3}", "start": "yes"}
        request = node_pb2.UpdateNodeRequest(
            node=node_pb2.Node(name=node.name, labels=labels),
            update_mask=field_mask_pb2.FieldMask(paths=["labels"]),
        )
        return lambda: fleet.stub.UpdateNode(request, metadata=fleet.md, timeout=30)

    for _ in range(3):
        results, errors = _all_at_once([update(i) for i in range(THREADS)])
        assert errors == [] and len(results) == THREADS
        final = fleet.get(node.name).labels
        rows = {r.key: r.value for r in NodeLabel.select().where(NodeLabel.node == node.name.split("/")[1])}
        assert rows == dict(final), "the label rows ListNodes filters on match the node's labels"
        assert final["tier"] in {f"t{i}" for i in range(THREADS)}


def test_concurrent_workload_creation_in_one_project_never_deadlocks(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    for i in range(3):
        _, key = fleet.node(project, f"n{i}", cpu=64, mem=1 << 20)
        fleet.up(key)

    def create(i):
        request = node_pb2.CreateWorkloadRequest(
            project=project.name,
            display_name=f"w{i}",
            spec="image: x",
            replicas=2,
            resources=node_pb2.ResourceRequest(cpu_millis=100, memory_mb=64),
        )
        return lambda: fleet.stub.CreateWorkload(request, metadata=fleet.md, timeout=30)

    for round_ in range(3):
        results, errors = _all_at_once([create(i) for i in range(THREADS)])
        assert errors == [] and len(results) == THREADS
        assert all(len(r.workload.assignments) == 2 for r in results), "every replica placed"
        assert Workload.select().count() == THREADS * (round_ + 1)
    per_node = {}
    for a in Assignment.select():
        per_node.setdefault((a.workload_id, a.node_id), 0)
        per_node[(a.workload_id, a.node_id)] += 1
    assert set(per_node.values()) == {1}, "spread holds: one replica of a workload per node"


def _operator(fleet: Fleet) -> Principal:
    return Principal(user_id=fleet.owner_id, roles=frozenset({NODE_OPERATOR}), kind="token")


def _direct(fns):
    """Calls the domain functions in threads released together, bypassing Runtime.run (and
    its conflict retry): the store itself must not race. Returns the exceptions raised."""
    barrier = threading.Barrier(len(fns))
    failures = []

    def run(fn):
        barrier.wait()
        try:
            fn()
        except Exception as exc:
            failures.append(repr(exc))

    threads = [threading.Thread(target=run, args=(f,)) for f in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return failures


def test_label_updates_lock_the_node_so_no_retry_is_needed(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    created, key = fleet.node(project, labels={"a": "1"})
    fleet.up(key)
    who, node_id = _operator(fleet), created.name.split("/")[1]
    fns = [
        (lambda i=i: node.update_node(srv.rt, who, node_id, None, None, None, {"a": str(i), "b": "x"}))
        for i in range(THREADS)
    ]
    assert _direct(fns) == []


def test_workload_creation_locks_the_project_first_so_no_retry_is_needed(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    _, key = fleet.node(project, cpu=64, mem=1 << 20)
    fleet.up(key)
    who, project_id = _operator(fleet), project.name.split("/")[1]
    resources = node.Resources(100, 64, 0, 0, "")
    fns = [
        (lambda i=i: node.create_workload(srv.rt, who, project_id, f"w{i}", "img", 1, resources, {}))
        for i in range(THREADS)
    ]
    assert _direct(fns) == []
    assert Workload.select().count() == THREADS


def test_a_registration_racing_the_members_removal_never_leaves_a_live_node_behind(srv):
    owner, member = Fleet(srv), Fleet(srv)
    project = owner.project()
    owner.stub.CreateProjectInvite(
        node_pb2.CreateProjectInviteRequest(parent=project.name, user=f"users/{member.owner_id}"),
        metadata=owner.md,
    )
    name = f"{project.name}/members/{member.owner_id}"
    member.stub.AcceptProjectInvite(node_pb2.AcceptProjectInviteRequest(name=name), metadata=member.md)

    def register(i):
        request = node_pb2.RegisterNodeRequest(project=project.name, display_name=f"n{i}")
        return lambda: member.stub.RegisterNode(request, metadata=member.md, timeout=30)

    def remove():
        request = node_pb2.RemoveProjectMemberRequest(name=name)
        return owner.stub.RemoveProjectMember(request, metadata=owner.md, timeout=30)

    results, errors = _all_at_once([register(i) for i in range(THREADS - 1)] + [remove])
    assert {code for code, _ in errors} <= {grpc.StatusCode.PERMISSION_DENIED}, errors
    listed = owner.stub.ListNodes(node_pb2.ListNodesRequest(project=project.name), metadata=owner.md).nodes
    live = [n.name for n in listed if n.status != node_pb2.HEALTH_STATUS_DECOMMISSIONED]
    assert live == [], "every node registered before the removal was decommissioned with it"
    assert len(results) == THREADS - len(errors)
