"""Project members (who may register nodes into a project besides its owner) and node keys
(current and rotated-out): the table and its queries, and migration 81."""

from __future__ import annotations

from datetime import datetime

import peewee

from coordd.core.paging import Page, PageRequest
from coordd.store.auth.models import ApiKey, User
from coordd.store.models import BaseModel, TimestampField
from coordd.store.node.models import DECOMMISSIONED, Node, Project
from coordd.store.paging import decode_token, encode_token

INVITED = "invited"
ACTIVE = "active"


class ProjectMember(BaseModel):
    """One row per (project, user): invited by the owner, active once the user accepts."""

    project = peewee.ForeignKeyField(Project, backref="members", on_delete="CASCADE")
    user = peewee.ForeignKeyField(User, backref="node_memberships", on_delete="CASCADE")
    state = peewee.CharField(max_length=16)  # invited | active
    inviter_id = peewee.CharField(max_length=26)
    create_time = TimestampField()
    accept_time = TimestampField(null=True)

    class Meta:
        table_name = "node_project_members"
        primary_key = peewee.CompositeKey("project", "user")
        indexes = ((("user", "project"), False),)


class Duplicate(Exception):
    """The membership exists already (the transaction must roll back)."""


def membership(project_id: str, user_id: str) -> ProjectMember | None:
    return ProjectMember.get_or_none((ProjectMember.project == project_id) & (ProjectMember.user == user_id))


def lock_membership(project_id: str, user_id: str) -> ProjectMember | None:
    """The row, locked until the transaction ends on PostgreSQL (accept vs. remove)."""
    query = ProjectMember.select().where(
        (ProjectMember.project == project_id) & (ProjectMember.user == user_id)
    )
    if ProjectMember._meta.database.for_update:
        query = query.for_update()
    return query.first()


def is_active_member(project_id: str, user_id: str) -> bool:
    """On PostgreSQL the row is share-locked until the transaction ends: a concurrent
    removal (which locks it for update) waits for the registration, or wins and this finds
    no row."""
    query = ProjectMember.select(ProjectMember.state).where(
        (ProjectMember.project == project_id)
        & (ProjectMember.user == user_id)
        & (ProjectMember.state == ACTIVE)
    )
    if ProjectMember._meta.database.for_update:
        query = query.for_update("FOR SHARE")
    return query.first() is not None


def insert_member(project_id: str, user_id: str, inviter_id: str, now: datetime) -> ProjectMember:
    try:
        with ProjectMember._meta.database.atomic():
            return ProjectMember.create(
                project=project_id, user=user_id, state=INVITED, inviter_id=inviter_id, create_time=now
            )
    except peewee.IntegrityError:
        raise Duplicate(f"{project_id}/{user_id}") from None


def save_member(member: ProjectMember) -> None:
    member.save()


def delete_member(member: ProjectMember) -> None:
    ProjectMember.delete().where(
        (ProjectMember.project == member.project_id) & (ProjectMember.user == member.user_id)
    ).execute()


def page_members(project_id: str, page: PageRequest) -> Page[ProjectMember]:
    """By user id (keyset; the key is the foreign key's raw value, not the user row)."""
    filters = {"members": project_id}
    query = ProjectMember.select().where(ProjectMember.project == project_id)
    if page.token:
        query = query.where(ProjectMember.user > decode_token(page.token, filters))
    rows = list(query.order_by(ProjectMember.user).limit(page.size + 1))
    more = len(rows) > page.size
    rows = rows[: page.size]
    return Page(rows, encode_token(rows[-1].user_id, filters) if more else "")


def user_exists(user_id: str) -> bool:
    return User.select().where(User.id == user_id).exists()


def live_nodes_of(project_id: str, owner_id: str) -> list[Node]:
    """The operator's nodes in the project that are not decommissioned, with the project."""
    return list(
        Node.select(Node, Project)
        .join(Project)
        .where((Node.project == project_id) & (Node.owner == owner_id) & (Node.status != DECOMMISSIONED))
        .order_by(Node.id)
    )


# -- node keys -------------------------------------------------------------------------


def link_node_key(api_key_id: str, node_id: str) -> None:
    ApiKey.update(node_id=node_id).where(ApiKey.id == api_key_id).execute()


def live_node_keys(node_id: str) -> list[ApiKey]:
    """The node's keys that are not revoked (the current one and any rotated-out one)."""
    return list(ApiKey.select().where((ApiKey.node_id == node_id) & ApiKey.revoke_time.is_null()))


def expire_key(key: ApiKey, expire_time: datetime) -> None:
    ApiKey.update(expire_time=expire_time).where(ApiKey.id == key.id).execute()


def revoke_node_keys(node_id: str, now: datetime) -> list[str]:
    """Revokes every key of the node; returns their secret digests (to drop from caches)."""
    keys = live_node_keys(node_id)
    if keys:
        ApiKey.update(revoke_time=now).where(ApiKey.id.in_([k.id for k in keys])).execute()
    return [k.secret_hash for k in keys]


def set_node_key(node: Node, api_key_id: str, now: datetime) -> None:
    Node.update(api_key=api_key_id, update_time=now).where(Node.id == node.id).execute()


# -- migration 81 ----------------------------------------------------------------------


def add_members_and_node_links(db: peewee.Database) -> None:
    """Migration 81: the members table. Node keys from before it are linked to their node,
    and every operator with a node in someone else's project becomes an active member of
    it (they joined before consent was asked; the owner may remove them)."""
    db.create_tables([ProjectMember], safe=True)
    db.execute_sql(
        "UPDATE api_key SET node_id = (SELECT n.id FROM nodes n WHERE n.api_key_id = api_key.id) "
        "WHERE node_id IS NULL AND id IN (SELECT api_key_id FROM nodes WHERE api_key_id IS NOT NULL)"
    )
    db.execute_sql(
        "INSERT INTO node_project_members (project_id, user_id, state, inviter_id, create_time, accept_time) "
        "SELECT DISTINCT n.project_id, n.owner_id, 'active', p.owner_id, p.create_time, p.create_time "
        "FROM nodes n JOIN node_projects p ON p.id = n.project_id "
        "WHERE n.owner_id <> p.owner_id AND NOT EXISTS (SELECT 1 FROM node_project_members m "
        "WHERE m.project_id = n.project_id AND m.user_id = n.owner_id)"
    )
