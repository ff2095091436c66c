"""Least privilege (issue #12, item 5): a node key does only what a node agent does, an API
key may be scoped to services and methods, node keys rotate with an overlap, and joining a
project needs its owner's consent."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2

from coordd.store.auth.models import ApiKey
from coordd_client.v1 import (
    auth_pb2,
    job_pb2,
    job_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    node_pb2,
    notification_pb2,
)
from tests.helpers import rpc_error
from tests.node.helpers import Fleet, serve
from tests.support.server import bearer


@pytest.fixture
def srv(settings_factory, clock):
    yield from serve(settings_factory, clock)


def _scope_denied(fn, *args, **kwargs):
    failure = rpc_error(grpc.StatusCode.PERMISSION_DENIED, fn, *args, **kwargs)
    assert failure.reason == "CREDENTIAL_SCOPE", failure.details
    return failure


# -- node keys ---------------------------------------------------------------------------


def test_a_node_key_cannot_touch_its_operators_keys_channels_or_balances(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    node, key = fleet.node(project)
    md = bearer(key)
    ledger = ledger_pb2_grpc.LedgerServiceStub(srv.channel)
    _scope_denied(srv.auth.ListApiKeys, auth_pb2.ListApiKeysRequest(), metadata=md)
    _scope_denied(srv.auth.RevokeApiKey, auth_pb2.RevokeApiKeyRequest(name=node.api_key), metadata=md)
    _scope_denied(srv.auth.WhoAmI, auth_pb2.WhoAmIRequest(), metadata=md)
    _scope_denied(
        fleet.notify.CreateChannel,
        notification_pb2.CreateChannelRequest(display_name="x", url="http://127.0.0.1:9/hook"),
        metadata=md,
    )
    _scope_denied(ledger.GetBalance, ledger_pb2.GetBalanceRequest(), metadata=md)
    _scope_denied(fleet.stub.GetRewardBalance, node_pb2.GetRewardBalanceRequest(), metadata=md)
    _scope_denied(fleet.stub.ListNodes, node_pb2.ListNodesRequest(), metadata=md)
    # What a node agent does still works, both ways.
    assert fleet.beat(key).node == node.name
    reply = fleet.stub.StreamHeartbeats(iter([node_pb2.StreamHeartbeatsRequest()]), metadata=md)
    assert reply.node == node.name and reply.beats == 1
    keys = srv.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=fleet.md).api_keys
    assert node.api_key in [k.name for k in keys] and not any(k.revoke_time.seconds for k in keys)


def test_the_denial_of_a_node_key_is_in_the_audit_trail(srv):
    fleet = Fleet(srv)
    _, key = fleet.node(fleet.project())
    _scope_denied(srv.auth.ListApiKeys, auth_pb2.ListApiKeysRequest(), metadata=bearer(key))
    _, admin = srv.make_user("admin")
    events = srv.auth.ListAuditEvents(
        auth_pb2.ListAuditEventsRequest(filter='action = "rpc.denied"'), metadata=bearer(admin)
    ).audit_events
    assert any(e.credential == "node_key" and e.detail["reason"] == "CREDENTIAL_SCOPE" for e in events)


def test_rotating_a_node_key_returns_a_new_one_and_the_old_one_lasts_ten_minutes(srv, clock):
    fleet = Fleet(srv)
    node, old = fleet.node(fleet.project())
    fleet.beat(old)  # cached by the daemon: the expiry must still be seen
    reply = fleet.stub.RotateNodeKey(node_pb2.RotateNodeKeyRequest(name=node.name), metadata=fleet.md)
    new = reply.api_key_secret
    assert new.startswith("ck_") and new != old
    assert reply.node.api_key != node.api_key and reply.node.name == node.name
    overlap = reply.previous_key_expire_time.ToDatetime() - srv.rt.now().replace(tzinfo=None)
    assert 590 <= overlap.total_seconds() <= 600
    assert fleet.beat(new).node == node.name
    clock.advance(9 * 60)
    assert fleet.beat(old).node == node.name, "the old key works during the overlap"
    clock.advance(2 * 60)
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, fleet.beat, old)
    assert fleet.beat(new).node == node.name
    fleet.refresh()
    # Both are the operator's keys: the new one a node key too (scoped to beats).
    _scope_denied(srv.auth.ListApiKeys, auth_pb2.ListApiKeysRequest(), metadata=bearer(new))


def test_a_rotation_overlap_is_chosen_by_the_caller_and_zero_ends_the_old_key_at_once(srv, clock):
    fleet = Fleet(srv)
    node, first = fleet.node(fleet.project())
    second = fleet.stub.RotateNodeKey(
        node_pb2.RotateNodeKeyRequest(name=node.name, overlap=duration_pb2.Duration(seconds=30)),
        metadata=fleet.md,
    ).api_key_secret
    clock.advance(20)
    fleet.beat(first)
    clock.advance(20)
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, fleet.beat, first)
    third = fleet.stub.RotateNodeKey(
        node_pb2.RotateNodeKeyRequest(name=node.name, overlap=duration_pb2.Duration()), metadata=fleet.md
    ).api_key_secret
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, fleet.beat, second)
    assert fleet.beat(third).node == node.name
    bad = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        fleet.stub.RotateNodeKey,
        node_pb2.RotateNodeKeyRequest(name=node.name, overlap=duration_pb2.Duration(seconds=8 * 86400)),
        metadata=fleet.md,
    )
    assert "overlap" in bad.violations


def test_only_the_nodes_operator_or_an_admin_rotates_and_decommission_ends_every_key(srv):
    fleet = Fleet(srv)
    project = fleet.project()
    node, old = fleet.node(project)
    stranger = Fleet(srv)
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        stranger.stub.RotateNodeKey,
        node_pb2.RotateNodeKeyRequest(name=node.name),
        metadata=stranger.md,
    )
    _scope_denied(
        fleet.stub.RotateNodeKey, node_pb2.RotateNodeKeyRequest(name=node.name), metadata=bearer(old)
    )
    _, admin = srv.make_user("admin")
    new = fleet.stub.RotateNodeKey(
        node_pb2.RotateNodeKeyRequest(name=node.name), metadata=bearer(admin)
    ).api_key_secret
    fleet.stub.DecommissionNode(node_pb2.DecommissionNodeRequest(name=node.name), metadata=fleet.md)
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, fleet.beat, old)
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, fleet.beat, new)
    again = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        fleet.stub.RotateNodeKey,
        node_pb2.RotateNodeKeyRequest(name=node.name),
        metadata=fleet.md,
    )
    assert again.reason == "NODE_DECOMMISSIONED"
    node_id = node.name.split("/")[1]
    assert ApiKey.select().where(ApiKey.node_id == node_id, ApiKey.revoke_time.is_null()).count() == 0


# -- scoped API keys ---------------------------------------------------------------------


def _key(srv, token, *scopes, roles=()):
    return srv.auth.CreateApiKey(
        auth_pb2.CreateApiKeyRequest(display_name="scoped", scopes=list(scopes), roles=list(roles)),
        metadata=bearer(token),
    )


def test_a_key_scoped_to_a_service_calls_only_that_service(srv):
    _, token = srv.make_user("participant", "provider")
    created = _key(srv, token, "coordd.v1.JobService")
    assert list(created.api_key.scopes) == ["coordd.v1.JobService"]
    jobs = job_pb2_grpc.JobServiceStub(srv.channel)
    md = bearer(created.secret)
    assert jobs.ListJobs(job_pb2.ListJobsRequest(), metadata=md).jobs == []
    assert jobs.GetQueueStats(job_pb2.GetQueueStatsRequest(), metadata=md) is not None
    denied = _scope_denied(srv.auth.ListApiKeys, auth_pb2.ListApiKeysRequest(), metadata=md)
    assert denied.metadata["method"] == "coordd.v1.AuthService.ListApiKeys"
    _scope_denied(
        ledger_pb2_grpc.LedgerServiceStub(srv.channel).GetBalance, ledger_pb2.GetBalanceRequest(), metadata=md
    )


def test_a_key_scoped_to_methods_calls_only_those_and_roles_still_apply(srv):
    _, token = srv.make_user("participant")
    created = _key(srv, token, "coordd.v1.AuthService.WhoAmI", "coordd.v1.JobService.ClaimJobs")
    md = bearer(created.secret)
    who = srv.auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=md)
    assert who.credential_kind == "api_key"
    _scope_denied(srv.auth.ListApiKeys, auth_pb2.ListApiKeysRequest(), metadata=md)
    # In scope, but ClaimJobs needs the provider role this participant does not hold.
    role = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        job_pb2_grpc.JobServiceStub(srv.channel).ClaimJobs,
        job_pb2.ClaimJobsRequest(),
        metadata=md,
    )
    assert role.reason == "ROLE_REQUIRED"


def test_scopes_must_name_real_services_or_methods_and_are_listed_with_the_key(srv):
    _, token = srv.make_user("participant")
    bad = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        _key,
        srv,
        token,
        "coordd.v1.JobService",
        "coordd.v1.NoSuchService",
        "coordd.v1.JobService.NoSuchMethod",
        "grpc.health.v1.Health",
    )
    assert set(bad.violations) == {"scopes[1]", "scopes[2]", "scopes[3]"}
    too_many = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _key, srv, token, *(["coordd.v1.JobService"] * 51))
    assert "scopes" in too_many.violations
    scoped = _key(srv, token, "coordd.v1.LedgerService", "coordd.v1.AuthService.WhoAmI")
    unscoped = _key(srv, token)
    listed = {
        k.name: list(k.scopes)
        for k in srv.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=bearer(token)).api_keys
    }
    assert listed[scoped.api_key.name] == ["coordd.v1.AuthService.WhoAmI", "coordd.v1.LedgerService"]
    assert listed[unscoped.api_key.name] == []
    # An unscoped key behaves as before: every RPC its roles allow.
    assert srv.auth.ListApiKeys(auth_pb2.ListApiKeysRequest(), metadata=bearer(unscoped.secret)).api_keys


# -- project membership --------------------------------------------------------------------


def _invite(owner: Fleet, project, user_id: str, md=None):
    return owner.stub.CreateProjectInvite(
        node_pb2.CreateProjectInviteRequest(parent=project.name, user=f"users/{user_id}"),
        metadata=md or owner.md,
    ).member


def _accept(member: Fleet, project):
    return member.stub.AcceptProjectInvite(
        node_pb2.AcceptProjectInviteRequest(name=f"{project.name}/members/{member.owner_id}"),
        metadata=member.md,
    ).member


def _workload(owner: Fleet, project, spec="image: app\nenv: {DB_PASSWORD: hunter2}"):
    return owner.stub.CreateWorkload(
        node_pb2.CreateWorkloadRequest(project=project.name, display_name="w", spec=spec, replicas=1),
        metadata=owner.md,
    ).workload


def test_an_operator_cannot_register_into_someone_elses_project_without_an_invite(srv):
    owner, intruder = Fleet(srv), Fleet(srv)
    project = owner.project()
    _workload(owner, project)
    denied = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        intruder.stub.RegisterNode,
        node_pb2.RegisterNodeRequest(project=project.name, display_name="spy"),
        metadata=intruder.md,
    )
    assert denied.reason == "NOT_PROJECT_MEMBER"
    # An invite not yet accepted is no consent either.
    assert _invite(owner, project, intruder.owner_id).state == node_pb2.ProjectMember.STATE_INVITED
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        intruder.stub.RegisterNode,
        node_pb2.RegisterNodeRequest(project=project.name, display_name="spy"),
        metadata=intruder.md,
    )


def test_an_invited_member_registers_nodes_that_run_the_projects_workloads(srv):
    owner, member = Fleet(srv), Fleet(srv)
    project = owner.project()
    invite = _invite(owner, project, member.owner_id)
    assert invite.name == f"{project.name}/members/{member.owner_id}"
    assert invite.inviter == f"users/{owner.owner_id}" and not invite.HasField("accept_time")
    accepted = _accept(member, project)
    assert accepted.state == node_pb2.ProjectMember.STATE_ACTIVE and accepted.HasField("accept_time")
    assert _accept(member, project).state == node_pb2.ProjectMember.STATE_ACTIVE, "accepting twice is fine"
    _, key = member.node(project, "m1")
    member.up(key)
    workload = _workload(owner, project)
    beat = member.beat(key)
    assert [a.workload for a in beat.assignments] == [workload.name]
    listed = owner.stub.ListProjectMembers(
        node_pb2.ListProjectMembersRequest(parent=project.name), metadata=owner.md
    ).members
    assert [(m.user, m.state) for m in listed] == [
        (f"users/{member.owner_id}", node_pb2.ProjectMember.STATE_ACTIVE)
    ]
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        member.stub.ListProjectMembers,
        node_pb2.ListProjectMembersRequest(parent=project.name),
        metadata=member.md,
    )


def test_invites_are_the_owners_to_give_and_the_invitees_to_accept(srv):
    owner, member, other = Fleet(srv), Fleet(srv), Fleet(srv)
    project = owner.project()
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        other.stub.CreateProjectInvite,
        node_pb2.CreateProjectInviteRequest(parent=project.name, user=f"users/{other.owner_id}"),
        metadata=other.md,
    )
    _invite(owner, project, member.owner_id)
    dup = rpc_error(grpc.StatusCode.ALREADY_EXISTS, _invite, owner, project, member.owner_id)
    assert dup.reason == "ALREADY_MEMBER"
    own = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _invite, owner, project, owner.owner_id)
    assert own.reason == "ALREADY_OWNER"
    rpc_error(grpc.StatusCode.NOT_FOUND, _invite, owner, project, "nosuchuser")
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        other.stub.AcceptProjectInvite,
        node_pb2.AcceptProjectInviteRequest(name=f"{project.name}/members/{member.owner_id}"),
        metadata=other.md,
    )
    bad = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        member.stub.AcceptProjectInvite,
        node_pb2.AcceptProjectInviteRequest(name=f"{project.name}/users/{member.owner_id}"),
        metadata=member.md,
    )
    assert "name" in bad.violations
    _, admin = srv.make_user("admin")
    assert _invite(owner, project, other.owner_id, md=bearer(admin)).inviter.startswith("users/")


def test_a_removed_member_s_nodes_are_decommissioned_and_receive_no_spec_again(srv):
    owner, member = Fleet(srv), Fleet(srv)
    project = owner.project()
    _invite(owner, project, member.owner_id)
    _accept(member, project)
    theirs, their_key = member.node(project, "theirs")
    member.up(their_key)
    workload = _workload(owner, project)
    assert member.beat(their_key).assignments[0].workload == workload.name
    mine, my_key = owner.node(project, "mine")
    owner.up(my_key)
    removed = owner.stub.RemoveProjectMember(
        node_pb2.RemoveProjectMemberRequest(name=f"{project.name}/members/{member.owner_id}"),
        metadata=owner.md,
    )
    assert list(removed.decommissioned_nodes) == [theirs.name]
    rpc_error(grpc.StatusCode.UNAUTHENTICATED, member.beat, their_key)
    assert owner.get(theirs.name).status == node_pb2.HEALTH_STATUS_DECOMMISSIONED
    assert [a.node for a in owner.workload(workload.name).assignments] == [mine.name]
    denied = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        member.stub.RegisterNode,
        node_pb2.RegisterNodeRequest(project=project.name, display_name="back"),
        metadata=member.md,
    )
    assert denied.reason == "NOT_PROJECT_MEMBER"
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        owner.stub.RemoveProjectMember,
        node_pb2.RemoveProjectMemberRequest(name=f"{project.name}/members/{member.owner_id}"),
        metadata=owner.md,
    )


def test_a_member_may_leave_and_an_outsider_may_not_remove_anyone(srv):
    owner, member, other = Fleet(srv), Fleet(srv), Fleet(srv)
    project = owner.project()
    _invite(owner, project, member.owner_id)
    _accept(member, project)
    name = f"{project.name}/members/{member.owner_id}"
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        other.stub.RemoveProjectMember,
        node_pb2.RemoveProjectMemberRequest(name=name),
        metadata=other.md,
    )
    member.stub.RemoveProjectMember(node_pb2.RemoveProjectMemberRequest(name=name), metadata=member.md)
    listed = owner.stub.ListProjectMembers(
        node_pb2.ListProjectMembersRequest(parent=project.name), metadata=owner.md
    )
    assert list(listed.members) == []
