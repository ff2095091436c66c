"""coordctl project invite|accept|members|remove-member: who may register nodes into a
project. The owner invites a user, the user accepts; removing a member decommissions their
nodes in the project. coordctl project update: the owner renames the project or opts it in to
(or out of) its public status page."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf import field_mask_pb2

from coordd_client.cli.common import Context, emit, enum_word, table
from coordd_client.v1 import node_pb2


def register(sub: Any) -> None:
    project = sub.add_parser("project", help="project membership (node operators)").add_subparsers(
        dest="project_command", required=True
    )
    invite = project.add_parser("invite", help="invite a user to register nodes into your project")
    invite.add_argument("--project", required=True, help="projects/{id}")
    invite.add_argument("--user", required=True, help="users/{id}")
    invite.set_defaults(func=_invite)
    accept = project.add_parser("accept", help="accept an invite made to you")
    accept.add_argument("member", help="projects/{project}/members/{your user id}")
    accept.set_defaults(func=_accept)
    members = project.add_parser("members", help="a project's members and pending invites")
    members.add_argument("--project", required=True, help="projects/{id}")
    members.set_defaults(func=_members)
    remove = project.add_parser(
        "remove-member", help="remove a member or withdraw an invite (their nodes are decommissioned)"
    )
    remove.add_argument("member", help="projects/{project}/members/{user}")
    remove.set_defaults(func=_remove)
    update = project.add_parser("update", help="rename your project or turn its public status page on/off")
    update.add_argument("project", help="projects/{id}")
    update.add_argument("--display-name", help="a new display name")
    update.add_argument(
        "--public-status",
        choices=["true", "false"],
        help="publish the project's status page at /status/{id} (true) or take it down (false)",
    )
    update.set_defaults(func=_update)


def _state(value: int) -> str:
    return enum_word(node_pb2.ProjectMember.State, value)


def _invite(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.node.CreateProjectInvite(
        node_pb2.CreateProjectInviteRequest(parent=args.project, user=args.user)
    )
    emit(
        ctx,
        reply,
        f"{reply.member.name} invited; they accept with: coordctl project accept {reply.member.name}",
    )
    return 0


def _accept(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.node.AcceptProjectInvite(node_pb2.AcceptProjectInviteRequest(name=args.member))
    emit(ctx, reply, f"{reply.member.name}: {_state(reply.member.state)}")
    return 0


def _members(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.node.ListProjectMembers(node_pb2.ListProjectMembersRequest(parent=args.project))
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    table(
        ctx,
        "members",
        ["member", "user", "state", "invited by"],
        [[m.name, m.user, _state(m.state), m.inviter] for m in reply.members],
    )
    return 0


def _remove(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.node.RemoveProjectMember(node_pb2.RemoveProjectMemberRequest(name=args.member))
    retired = ", ".join(reply.decommissioned_nodes) or "none"
    emit(ctx, reply, f"{args.member} removed; nodes decommissioned: {retired}")
    return 0


def _update(ctx: Context, args: argparse.Namespace) -> int:
    changed = node_pb2.Project(name=args.project)
    paths = []
    if args.display_name is not None:
        changed.display_name = args.display_name
        paths.append("display_name")
    if args.public_status is not None:
        changed.public_status = args.public_status == "true"
        paths.append("public_status")
    if not paths:
        raise SystemExit("coordctl project update: give --display-name or --public-status")
    reply = ctx.client.node.UpdateProject(
        node_pb2.UpdateProjectRequest(project=changed, update_mask=field_mask_pb2.FieldMask(paths=paths))
    )
    p = reply.project
    page = "on" if p.public_status else "off"
    emit(ctx, reply, f"{p.name} ({p.display_name}): public status page {page}")
    return 0
