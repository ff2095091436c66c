"""Queries of the fleet: projects, nodes and their keys and labels, workloads, assignments,
and what placement reads and writes. Each runs in the caller's transaction (if any)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import peewee

from coordd.store.auth.models import ApiKey
from coordd.store.node.models import UP, Assignment, Node, NodeLabel, Project, Workload, window_of
from coordd.store.paging import Page, PageRequest, keyset_page


class Duplicate(Exception):
    """An insert hit a unique key (raised out of the transaction, which rolls back)."""


# -- projects ------------------------------------------------------------------------------


def find_project(project_id: str) -> Project | None:
    return Project.get_or_none(Project.id == project_id)


def get_project(project_id: str) -> Project:
    return Project.get_by_id(project_id)


def insert_project(project: Project) -> None:
    try:
        project.save(force_insert=True)
    except peewee.IntegrityError as exc:
        raise Duplicate(str(exc)) from None


def page_projects(page: PageRequest) -> Page[Project]:
    return keyset_page(Project.select(), Project.id, page, filters={})


# Row locks taken to serialize changes. NO KEY UPDATE, not UPDATE: it still excludes another
# such lock (and writers of the row), but not the key-share lock an insert referencing the
# row takes, so inserting a child row never waits behind (or deadlocks with) this lock.
_ROW_LOCK = "FOR NO KEY UPDATE"


def lock_project(project_id: str) -> None:
    """On PostgreSQL, locks the project row until the transaction ends (placement). Lock
    order: a node row before its project's (UpdateNode, beats), the project before inserts
    into it (CreateWorkload)."""
    lock = Project.select(Project.id).where(Project.id == project_id)
    if Project._meta.database.for_update:
        lock = lock.for_update(_ROW_LOCK)
    lock.first()


def projects_by_ids(project_ids: set[str]) -> dict[str, Project]:
    return {p.id: p for p in Project.select().where(Project.id.in_(sorted(project_ids)))}


# -- nodes and their keys ------------------------------------------------------------------


def node_with_project(node_id: str) -> Node | None:
    return Node.select(Node, Project).join(Project).where(Node.id == node_id).first()


def nodes_with_projects(node_ids: set[str]) -> dict[str, Node]:
    """Many nodes with their projects, in one query (a batch of beat-driven changes)."""
    rows = Node.select(Node, Project).join(Project).where(Node.id.in_(sorted(node_ids)))
    return {n.id: n for n in rows}


class NodeOfKey(NamedTuple):
    """What a heartbeat stream needs about the node behind its key."""

    node_id: str
    status: str
    project_id: str
    heartbeat_interval_s: float
    misses: int
    grace_s: float
    successes_before_up: int

    @property
    def window_s(self) -> float:
        return window_of(self.heartbeat_interval_s, self.misses, self.grace_s)


_NODE_OF_KEY = (
    'SELECT n."id", n."status", p."id", p."heartbeat_interval_s", p."misses", p."grace_s", '
    'p."successes_before_up" FROM "api_key" AS k JOIN "nodes" AS n ON n."id" = k."node_id" '
    'JOIN "node_projects" AS p ON p."id" = n."project_id" WHERE k."id" = {p} LIMIT 1'
)


def node_of_key(api_key_id: str) -> NodeOfKey | None:
    """The node of a node key (its current key or one rotated out, still in its overlap):
    the few fields a beat needs, by fixed SQL text (peewee's query building and model rows
    cost ~10x more, paid once per opened heartbeat stream)."""
    db = Node._meta.database
    row = db.execute_sql(_NODE_OF_KEY.format(p=db.param), (api_key_id,)).fetchone()
    return NodeOfKey(*row) if row else None


def lock_node(node_id: str) -> None:
    """On PostgreSQL, locks the node row until the transaction ends: concurrent changes of
    one node (its label rows) run one after the other instead of racing to a duplicate key."""
    lock = Node.select(Node.id).where(Node.id == node_id)
    if Node._meta.database.for_update:
        lock = lock.for_update(_ROW_LOCK)
    lock.first()


def insert_node_key(
    user_id: str, display_name: str, prefix: str, secret_hash: str, roles: str, now: datetime, node_id: str
) -> ApiKey:
    return ApiKey.create(
        user=user_id,
        display_name=display_name,
        prefix=prefix,
        secret_hash=secret_hash,
        roles=roles,
        create_time=now,
        node_id=node_id,
    )


def insert_node(**values: Any) -> Node:
    return Node.create(**values)


def replace_labels(node_id: str, labels: dict[str, str]) -> None:
    """The label rows ListNodes filters on, one per label."""
    NodeLabel.delete().where(NodeLabel.node == node_id).execute()
    for key, value in sorted(labels.items()):
        NodeLabel.create(node=node_id, key=key, value=value)


def page_nodes(
    page: PageRequest,
    filters: dict[str, Any],
    *,
    visible_to: str | None,
    project_id: str,
    status: str,
    region: str,
    label: tuple[str, str] | None,
) -> Page[Node]:
    """Nodes with their project; `visible_to` (unless None: an admin) keeps the user's own
    nodes and those of the user's projects."""
    query = Node.select(Node, Project).join(Project)
    if visible_to is not None:
        query = query.where((Node.owner == visible_to) | (Project.owner == visible_to))
    if project_id:
        query = query.where(Node.project == project_id)
    if status:
        query = query.where(Node.status == status)
    if region:
        query = query.where(Node.region == region)
    if label is not None:
        label_key, label_value = label
        query = query.where(
            Node.id.in_(
                NodeLabel.select(NodeLabel.node).where(
                    (NodeLabel.key == label_key) & (NodeLabel.value == label_value)
                )
            )
        )
    return keyset_page(query, Node.id, page, filters=filters)


def nodes_by_ids(node_ids: set[str]) -> dict[str, Node]:
    return {n.id: n for n in Node.select().where(Node.id.in_(sorted(node_ids)))}


def up_nodes(project_id: str) -> list[Node]:
    return list(Node.select().where((Node.project == project_id) & (Node.status == UP)).order_by(Node.id))


def node_owner_ids(project_id: str) -> set[str]:
    return {n.owner_id for n in Node.select(Node.owner).where(Node.project == project_id)}


# -- workloads -----------------------------------------------------------------------------


def workload_with_project(workload_id: str) -> Workload | None:
    return Workload.select(Workload, Project).join(Project).where(Workload.id == workload_id).first()


def get_workload(workload_id: str) -> Workload:
    return Workload.get_by_id(workload_id)


def insert_workload(workload: Workload) -> None:
    workload.save(force_insert=True)


def delete_workload(workload: Workload) -> None:
    """The workload with its assignments."""
    workload.delete_instance(recursive=True)


def page_workloads(project_id: str, page: PageRequest) -> Page[Workload]:
    query = Workload.select().where(Workload.project == project_id)
    return keyset_page(query, Workload.id, page, filters={"p": project_id})


def workloads_of_project(project_id: str) -> list[Workload]:
    return list(Workload.select().where(Workload.project == project_id).order_by(Workload.id))


def workloads_by_ids(workload_ids: set[str]) -> list[Workload]:
    return list(Workload.select().where(Workload.id.in_(sorted(workload_ids))))


def projects_with_waiting_workloads() -> list[str]:
    """Projects with a workload that has fewer assignments than replicas, sorted."""
    waiting = (
        Workload.select(Workload.project)
        .join(Assignment, join_type=peewee.JOIN.LEFT_OUTER, on=(Assignment.workload == Workload.id))
        .group_by(Workload.id, Workload.project, Workload.replicas)
        .having(Workload.replicas > peewee.fn.COUNT(Assignment.id))
    )
    return sorted({w.project_id for w in waiting})


# -- assignments ---------------------------------------------------------------------------


def assignments_of_workload(workload_id: str) -> list[Assignment]:
    return list(Assignment.select().where(Assignment.workload == workload_id))


def assignments_of_workloads(workload_ids: list[str]) -> list[Assignment]:
    return list(Assignment.select().where(Assignment.workload.in_(workload_ids)).order_by(Assignment.id))


def assignments_on_nodes(node_ids: list[str]) -> list[Assignment]:
    """With their workload (what they take from the node)."""
    return list(Assignment.select(Assignment, Workload).join(Workload).where(Assignment.node.in_(node_ids)))


def workload_ids_on_nodes(node_ids: list[str]) -> set[str]:
    rows = Assignment.select(Assignment.workload).where(Assignment.node.in_(sorted(node_ids)))
    return {a.workload_id for a in rows}


def workload_ids_on_node(node_id: str) -> list[str]:
    return [a.workload_id for a in Assignment.select(Assignment.workload).where(Assignment.node == node_id)]


def page_assignments(kind: str, parent_id: str, page: PageRequest) -> Page[Assignment]:
    """Of a workload (`kind` "workloads") or of a node."""
    if kind == "workloads":
        query = Assignment.select().where(Assignment.workload == parent_id)
    else:
        query = Assignment.select().where(Assignment.node == parent_id)
    return keyset_page(query, Assignment.id, page, filters={"k": kind, "p": parent_id})


def insert_assignment(workload_id: str, node_id: str, now: datetime) -> Assignment:
    return Assignment.create(workload=workload_id, node=node_id, create_time=now, update_time=now)


def delete_assignment(assignment: Assignment) -> None:
    assignment.delete_instance()


def delete_workload_assignments(workload_id: str) -> None:
    Assignment.delete().where(Assignment.workload == workload_id).execute()


def delete_node_assignments(node_id: str) -> None:
    Assignment.delete().where(Assignment.node == node_id).execute()
