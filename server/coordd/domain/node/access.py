"""Who may see and change what. A node's credential is an API key owned by its operator
(role node_operator) and linked to the node (`api_key.node_id`): the link makes it a node
key, and a node key may only beat (the AuthInterceptor refuses anything else; the checks
here are the second line). Registering into a project needs its owner's consent."""

from __future__ import annotations

from coordd.core.errors import NotFound, PermissionDenied
from coordd.core.principal import NODE_KEY, Principal
from coordd.store.node import members, queries
from coordd.store.node.models import Node, Project, Workload


def not_found(collection: str, resource_id: str) -> NotFound:
    name = f"{collection}/{resource_id}"
    return NotFound(f"{name} not found", metadata={"resource": name})


def is_node_key(who: Principal) -> bool:
    return who.kind == NODE_KEY


def require_operator(who: Principal) -> None:
    """A node key authenticates beats only: a stolen node key cannot manage the fleet."""
    if is_node_key(who):
        raise PermissionDenied(
            "a node API key may only send heartbeats; use the operator's credential",
            reason="NODE_KEY_NOT_ALLOWED",
        )


def get_project(project_id: str) -> Project:
    project = queries.find_project(project_id)
    if project is None:
        raise not_found("projects", project_id)
    return project


def owned_project(who: Principal, project_id: str) -> Project:
    project = get_project(project_id)
    if project.owner_id != who.user_id and not who.is_admin:
        raise PermissionDenied("only the project's owner or an admin may do that", reason="NOT_OWNER")
    return project


def may_join(who: Principal, project: Project) -> bool:
    """The project's owner, an active member (invited and accepted) or an admin."""
    return (
        who.is_admin or project.owner_id == who.user_id or members.is_active_member(project.id, who.user_id)
    )


def visible_node(who: Principal, node_id: str) -> Node:
    """Its operator, its project's owner and admins see a node; others get NOT_FOUND."""
    node = queries.node_with_project(node_id)
    if node is None or not (who.is_admin or who.user_id in (node.owner_id, node.project.owner_id)):
        raise not_found("nodes", node_id)
    return node


def visible_workload(who: Principal, workload_id: str) -> Workload:
    workload = queries.workload_with_project(workload_id)
    if workload is None or not (who.is_admin or workload.project.owner_id == who.user_id):
        raise not_found("workloads", workload_id)
    return workload


def watchable_project(who: Principal, project_id: str) -> Project:
    require_operator(who)
    return owned_project(who, project_id)
