"""Project membership: joining a project needs its owner's consent. A node in a project
receives the project's workload specs (and the secrets in them), so only the owner, an
admin, and the users the owner invited and who accepted may register nodes into it.

    owner (or admin)  CreateProjectInvite(user)   -> membership INVITED
    the invitee       AcceptProjectInvite         -> ACTIVE: RegisterNode is allowed
    owner / admin / the member  RemoveProjectMember -> the member's nodes in the project are
                                                      decommissioned (keys revoked, replicas
                                                      moved): they receive no spec again.
"""

from __future__ import annotations

from coordd.core.errors import AlreadyExists, FailedPrecondition, NotFound
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain import auth
from coordd.domain.node.access import get_project, owned_project, require_operator
from coordd.domain.node.nodes import retire_node
from coordd.runtime import Runtime
from coordd.store.node import members
from coordd.store.node.members import ACTIVE, INVITED, ProjectMember

__all__ = [
    "ACTIVE",
    "INVITED",
    "ProjectMember",
    "accept_invite",
    "create_invite",
    "list_members",
    "remove_member",
]


def _member_name(project_id: str, user_id: str) -> str:
    return f"projects/{project_id}/members/{user_id}"


def _missing(project_id: str, user_id: str) -> NotFound:
    name = _member_name(project_id, user_id)
    return NotFound(f"{name} not found", metadata={"resource": name})


def create_invite(rt: Runtime, who: Principal, project_id: str, user_id: str) -> ProjectMember:
    """The owner (or an admin) invites a user; the membership is INVITED until accepted."""
    require_operator(who)
    with rt.store.write() as tx:
        project = owned_project(who, project_id)
        if user_id == project.owner_id:
            raise FailedPrecondition("the project's owner is not invited to it", reason="ALREADY_OWNER")
        if not members.user_exists(user_id):
            raise NotFound(f"users/{user_id} not found", metadata={"resource": f"users/{user_id}"})
        try:
            member = members.insert_member(project.id, user_id, who.user_id, tx.now)
        except members.Duplicate:
            raise AlreadyExists(
                f"users/{user_id} is already invited to or a member of projects/{project.id}",
                reason="ALREADY_MEMBER",
                metadata={"resource": _member_name(project.id, user_id)},
            ) from None
        tx.emit(
            "node.project.member_invited",
            _member_name(project.id, user_id),
            {"project": f"projects/{project.id}", "user": f"users/{user_id}"},
        )
    return member


def accept_invite(rt: Runtime, who: Principal, project_id: str, user_id: str) -> ProjectMember:
    """Only the invitee accepts; someone else's invite is reported as missing."""
    require_operator(who)
    with rt.store.write() as tx:
        member = members.lock_membership(project_id, user_id) if user_id == who.user_id else None
        if member is None:
            raise _missing(project_id, user_id)
        if member.state != ACTIVE:
            member.state = ACTIVE
            member.accept_time = tx.now
            members.save_member(member)
            tx.emit(
                "node.project.member_joined",
                _member_name(project_id, user_id),
                {"project": f"projects/{project_id}", "user": f"users/{user_id}"},
            )
    return member


def list_members(who: Principal, project_id: str, page: PageRequest) -> Page[ProjectMember]:
    require_operator(who)
    owned_project(who, project_id)
    return members.page_members(project_id, page)


def remove_member(rt: Runtime, who: Principal, project_id: str, user_id: str) -> list[str]:
    """The owner or an admin removes a member (or withdraws an invite); a member may leave.
    The member's nodes in the project are decommissioned in the same transaction. Returns
    their ids."""
    require_operator(who)
    revoked: list[str] = []
    retired: list[str] = []
    with rt.store.write() as tx:
        project = get_project(project_id)
        allowed = who.is_admin or who.user_id in (project.owner_id, user_id)
        # Locked: a RegisterNode that read this membership commits first (and its node is
        # retired below), or waits and then finds no membership.
        member = members.lock_membership(project.id, user_id) if allowed else None
        if member is None:
            raise _missing(project_id, user_id)
        members.delete_member(member)
        for n in members.live_nodes_of(project.id, user_id):
            revoked += retire_node(tx, n, project, "its operator was removed from the project")
            retired.append(n.id)
        tx.emit(
            "node.project.member_removed",
            _member_name(project.id, user_id),
            {"project": f"projects/{project.id}", "user": f"users/{user_id}", "nodes": retired},
        )
    for secret_hash in revoked:
        auth.forget_api_key(secret_hash)
    return retired
