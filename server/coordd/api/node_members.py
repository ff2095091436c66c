"""NodeService RPCs of project membership (joining a project needs its owner's consent)
and node key rotation; mixed into NodeServicer (api/node.py)."""

from __future__ import annotations

from typing import Any

from coordd.api.convert import parse_name, ts
from coordd.api.node_convert import node_to_proto
from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.core.paging import PageRequest
from coordd.core.principal import require_user
from coordd.domain import node
from coordd.runtime import Runtime
from coordd_client.v1 import node_pb2

_STATES = {"invited": node_pb2.ProjectMember.STATE_INVITED, "active": node_pb2.ProjectMember.STATE_ACTIVE}


def member_to_proto(m: node.ProjectMember) -> node_pb2.ProjectMember:
    return node_pb2.ProjectMember(
        name=f"projects/{m.project_id}/members/{m.user_id}",
        user=f"users/{m.user_id}",
        state=_STATES.get(m.state, node_pb2.ProjectMember.STATE_UNSPECIFIED),
        inviter=f"users/{m.inviter_id}",
        create_time=ts(m.create_time),
        accept_time=ts(m.accept_time),
    )


def parse_member_name(name: str, field: str = "name") -> tuple[str, str]:
    """`projects/{project}/members/{user}` -> (project id, user id)."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != "members" or not all(parts[1::2]):
        raise InvalidArgument(
            f"{field} must look like projects/{{project}}/members/{{user}}, got {name[:200]!r}",
            violations=[FieldViolation(field, "expected projects/{project}/members/{user}")],
        )
    if max(len(parts[1]), len(parts[3])) > 64:
        raise InvalidArgument(
            f"{field}: ids are at most 64 characters", violations=[FieldViolation(field, "too long")]
        )
    return parts[1], parts[3]


class MembershipRpcs:
    rt: Runtime

    async def RotateNodeKey(
        self, request: node_pb2.RotateNodeKeyRequest, context: Any
    ) -> node_pb2.RotateNodeKeyResponse:
        who = require_user()
        node_id = parse_name(request.name, "nodes")
        overlap = request.overlap.ToTimedelta().total_seconds() if request.HasField("overlap") else None
        rotated, secret, ends = await self.rt.run(node.rotate_node_key, self.rt, who, node_id, overlap)
        return node_pb2.RotateNodeKeyResponse(
            node=node_to_proto(rotated), api_key_secret=secret, previous_key_expire_time=ts(ends)
        )

    async def CreateProjectInvite(
        self, request: node_pb2.CreateProjectInviteRequest, context: Any
    ) -> node_pb2.CreateProjectInviteResponse:
        who = require_user()
        project_id = parse_name(request.parent, "projects", "parent")
        user_id = parse_name(request.user, "users", "user")
        member = await self.rt.run(node.create_invite, self.rt, who, project_id, user_id)
        return node_pb2.CreateProjectInviteResponse(member=member_to_proto(member))

    async def AcceptProjectInvite(
        self, request: node_pb2.AcceptProjectInviteRequest, context: Any
    ) -> node_pb2.AcceptProjectInviteResponse:
        who = require_user()
        project_id, user_id = parse_member_name(request.name)
        member = await self.rt.run(node.accept_invite, self.rt, who, project_id, user_id)
        return node_pb2.AcceptProjectInviteResponse(member=member_to_proto(member))

    async def ListProjectMembers(
        self, request: node_pb2.ListProjectMembersRequest, context: Any
    ) -> node_pb2.ListProjectMembersResponse:
        who = require_user()
        project_id = parse_name(request.parent, "projects", "parent")
        page = await self.rt.run(
            node.list_members, who, project_id, PageRequest.of(request.page_size, request.page_token)
        )
        return node_pb2.ListProjectMembersResponse(
            members=[member_to_proto(m) for m in page.items], next_page_token=page.next_token
        )

    async def RemoveProjectMember(
        self, request: node_pb2.RemoveProjectMemberRequest, context: Any
    ) -> node_pb2.RemoveProjectMemberResponse:
        who = require_user()
        project_id, user_id = parse_member_name(request.name)
        retired = await self.rt.run(node.remove_member, self.rt, who, project_id, user_id)
        return node_pb2.RemoveProjectMemberResponse(decommissioned_nodes=[f"nodes/{n}" for n in retired])
