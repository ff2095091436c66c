"""Projects, nodes and workloads: who may do what, validation, and the changes themselves.

A node's credential is an ordinary API key owned by its operator (role node_operator),
linked from the node row. Reusing API keys keeps one hashing, caching, expiry and
revocation path; the link is what makes it a node key, and a node key may only beat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import peewee

from coordd.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Violations,
)
from coordd.core.principal import NODE_OPERATOR, Principal, format_roles
from coordd.crypto.tokens import new_api_key
from coordd.domain import auth, node_placement, node_state
from coordd.runtime import Runtime
from coordd.store.models import ApiKey
from coordd.store.node_models import (
    DECOMMISSIONED,
    STATUSES,
    UNKNOWN,
    Assignment,
    Node,
    NodeLabel,
    Project,
    Workload,
)
from coordd.store.paging import Page, PageRequest, keyset_page

SLUG_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
MAX_LABELS = 32


@dataclass
class HealthPolicy:
    interval_s: float = 10.0
    misses: int = 2
    grace_s: float = 10.0
    successes_before_up: int = 2
    mass_outage_share: float = 0.5
    mass_outage_min_nodes: int = 3


@dataclass
class RewardPolicy:
    points_per_up_hour: int = 10
    cap_per_day: int = 200


@dataclass
class Inventory:
    cpu_cores: int = 0
    memory_mb: int = 0
    disk_gb: int = 0
    gpus: list[dict[str, Any]] | None = None


@dataclass
class Resources:
    cpu_millis: int = 0
    memory_mb: int = 0
    disk_gb: int = 0
    gpu_count: int = 0
    gpu_model: str = ""


def _not_found(collection: str, resource_id: str) -> NotFound:
    name = f"{collection}/{resource_id}"
    return NotFound(f"{name} not found", metadata={"resource": name})


# -- access ----------------------------------------------------------------------------


def is_node_key(who: Principal) -> bool:
    return bool(who.api_key_id) and Node.select().where(Node.api_key == who.api_key_id).exists()


def require_operator(who: Principal) -> None:
    """A node key authenticates beats only: a stolen node key cannot manage the fleet."""
    if is_node_key(who):
        raise PermissionDenied(
            "a node API key may only send heartbeats; use the operator's credential",
            reason="NODE_KEY_NOT_ALLOWED",
        )


def get_project(project_id: str) -> Project:
    project = Project.get_or_none(Project.id == project_id)
    if project is None:
        raise _not_found("projects", project_id)
    return project


def owned_project(who: Principal, project_id: str) -> Project:
    project = get_project(project_id)
    if project.owner_id != who.user_id and not who.is_admin:
        raise PermissionDenied("only the project's owner or an admin may do that", reason="NOT_OWNER")
    return project


def visible_node(who: Principal, node_id: str) -> Node:
    """Its operator, its project's owner and admins see a node; others get NOT_FOUND."""
    node = Node.select(Node, Project).join(Project).where(Node.id == node_id).first()
    if node is None or not (who.is_admin or who.user_id in (node.owner_id, node.project.owner_id)):
        raise _not_found("nodes", node_id)
    return node


def visible_workload(who: Principal, workload_id: str) -> Workload:
    workload = Workload.select(Workload, Project).join(Project).where(Workload.id == workload_id).first()
    if workload is None or not (who.is_admin or workload.project.owner_id == who.user_id):
        raise _not_found("workloads", workload_id)
    return workload


# -- validation ------------------------------------------------------------------------


def _check_name(v: Violations, value: str, path: str) -> None:
    if not value:
        v.add(path, "required")
    elif len(value) > 100:
        v.add(path, "at most 100 characters")
    elif value != value.strip():
        v.add(path, "must not start or end with white space")


def check_labels(v: Violations, labels: dict[str, str], path: str) -> None:
    if len(labels) > MAX_LABELS:
        v.add(path, f"at most {MAX_LABELS} labels")
    for key, value in labels.items():
        if not LABEL_KEY_RE.match(key):
            v.add(f"{path}[{key}]", "keys: letters, digits, . _ / -, at most 63 characters")
        elif len(value) > 255:
            v.add(f"{path}[{key}]", "values: at most 255 characters")


def check_health_policy(v: Violations, p: HealthPolicy, path: str = "health_policy") -> None:
    if not 0.1 <= p.interval_s <= 3600:
        v.add(f"{path}.heartbeat_interval", "between 0.1 s and 1 hour")
    if not 1 <= p.misses <= 100:
        v.add(f"{path}.misses", "between 1 and 100")
    if not 0 <= p.grace_s <= 3600:
        v.add(f"{path}.grace", "between 0 and 1 hour")
    if not 1 <= p.successes_before_up <= 100:
        v.add(f"{path}.successes_before_up", "between 1 and 100")
    if not 0 < p.mass_outage_share <= 1:
        v.add(f"{path}.mass_outage_share", "greater than 0, at most 1")
    if not 1 <= p.mass_outage_min_nodes <= 1_000_000:
        v.add(f"{path}.mass_outage_min_nodes", "between 1 and 1000000")


def check_reward_policy(v: Violations, p: RewardPolicy, path: str = "reward_policy") -> None:
    if not 0 <= p.points_per_up_hour <= 1_000_000:
        v.add(f"{path}.points_per_up_hour", "between 0 and 1000000")
    if not 0 <= p.cap_per_day <= 1_000_000_000:
        v.add(f"{path}.cap_per_day", "between 0 and 1000000000")


def check_inventory(v: Violations, inv: Inventory, path: str = "inventory") -> None:
    if not 0 <= inv.cpu_cores <= 100_000:
        v.add(f"{path}.cpu_cores", "between 0 and 100000")
    if not 0 <= inv.memory_mb <= 10**9:
        v.add(f"{path}.memory_mb", "between 0 and 10^9")
    if not 0 <= inv.disk_gb <= 10**9:
        v.add(f"{path}.disk_gb", "between 0 and 10^9")
    for index, gpu in enumerate(inv.gpus or []):
        if not gpu.get("model") or len(gpu["model"]) > 100:
            v.add(f"{path}.gpus[{index}].model", "required, at most 100 characters")
        if not 1 <= int(gpu.get("count", 0)) <= 1024:
            v.add(f"{path}.gpus[{index}].count", "between 1 and 1024")


def check_resources(v: Violations, r: Resources, path: str = "resources") -> None:
    for name, limit in (("cpu_millis", 10**8), ("memory_mb", 10**9), ("disk_gb", 10**9), ("gpu_count", 1024)):
        if not 0 <= getattr(r, name) <= limit:
            v.add(f"{path}.{name}", f"between 0 and {limit}")
    if len(r.gpu_model) > 100:
        v.add(f"{path}.gpu_model", "at most 100 characters")


# -- projects --------------------------------------------------------------------------


def _apply_policies(project: Project, health: HealthPolicy | None, reward: RewardPolicy | None) -> None:
    if health is not None:
        project.heartbeat_interval_s = health.interval_s
        project.misses = health.misses
        project.grace_s = health.grace_s
        project.successes_before_up = health.successes_before_up
        project.mass_outage_share = health.mass_outage_share
        project.mass_outage_min_nodes = health.mass_outage_min_nodes
    if reward is not None:
        project.points_per_up_hour = reward.points_per_up_hour
        project.reward_cap_per_day = reward.cap_per_day


def create_project(
    rt: Runtime, who: Principal, display_name: str, slug: str, health: HealthPolicy, reward: RewardPolicy
) -> Project:
    require_operator(who)
    v = Violations()
    _check_name(v, display_name, "display_name")
    if not SLUG_RE.match(slug):
        v.add("slug", "lower-case letters, digits and dashes, 1 to 63 characters")
    check_health_policy(v, health)
    check_reward_policy(v, reward)
    v.raise_if_any()
    try:
        with rt.store.write() as tx:
            project = Project(owner=who.user_id, display_name=display_name, slug=slug)
            _apply_policies(project, health, reward)
            project.create_time = project.update_time = tx.now
            project.save(force_insert=True)
            tx.emit("node.project.created", f"projects/{project.id}", {"slug": slug})
    except peewee.IntegrityError:
        raise AlreadyExists(
            f"a project with slug {slug!r} already exists", reason="SLUG_TAKEN", metadata={"slug": slug}
        ) from None
    return project


def list_projects(page: PageRequest) -> Page[Project]:
    return keyset_page(Project.select(), Project.id, page, filters={})


def update_project(
    rt: Runtime,
    who: Principal,
    project_id: str,
    display_name: str | None,
    health: HealthPolicy | None,
    reward: RewardPolicy | None,
) -> Project:
    require_operator(who)
    v = Violations()
    if display_name is not None:
        _check_name(v, display_name, "project.display_name")
    if health is not None:
        check_health_policy(v, health, "project.health_policy")
    if reward is not None:
        check_reward_policy(v, reward, "project.reward_policy")
    v.raise_if_any()
    with rt.store.write() as tx:
        project = owned_project(who, project_id)
        if display_name is not None:
            project.display_name = display_name
        _apply_policies(project, health, reward)
        project.update_time = tx.now
        project.save()
        tx.emit("node.project.updated", f"projects/{project.id}", {"project": project.id})
    return project


def project_health(project: Project) -> HealthPolicy:
    return HealthPolicy(
        project.heartbeat_interval_s,
        project.misses,
        project.grace_s,
        project.successes_before_up,
        project.mass_outage_share,
        project.mass_outage_min_nodes,
    )


# -- nodes -----------------------------------------------------------------------------


def _hour_floor(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _set_labels(node: Node, labels: dict[str, str]) -> None:
    NodeLabel.delete().where(NodeLabel.node == node.id).execute()
    for key, value in sorted(labels.items()):
        NodeLabel.create(node=node.id, key=key, value=value)


def register_node(
    rt: Runtime,
    who: Principal,
    project_id: str,
    display_name: str,
    region: str,
    inventory: Inventory,
    labels: dict[str, str],
) -> tuple[Node, str]:
    """Creates the node (UNKNOWN until its first beat) and its API key, shown once."""
    require_operator(who)
    if who.kind == "api_key":
        raise PermissionDenied(
            "nodes are registered with a login token, not an API key", reason="TOKEN_REQUIRED"
        )
    v = Violations()
    _check_name(v, display_name, "display_name")
    if len(region) > 64:
        v.add("region", "at most 64 characters")
    check_inventory(v, inventory)
    check_labels(v, labels, "labels")
    v.raise_if_any()
    secret, prefix, digest = new_api_key()
    with rt.store.write() as tx:
        project = get_project(project_id)
        key = ApiKey.create(
            user=who.user_id,
            display_name=f"node {display_name}"[:100],
            prefix=prefix,
            secret_hash=digest,
            roles=format_roles({NODE_OPERATOR}),
            create_time=tx.now,
        )
        hour = _hour_floor(tx.now)
        node = Node.create(
            project=project.id,
            owner=who.user_id,
            display_name=display_name,
            region=region,
            cpu_cores=inventory.cpu_cores,
            memory_mb=inventory.memory_mb,
            disk_gb=inventory.disk_gb,
            gpus=inventory.gpus or [],
            labels=dict(sorted(labels.items())),
            status=UNKNOWN,
            status_reason="registered; no heartbeat yet",
            status_time=tx.now,
            api_key=key.id,
            reward_cursor=hour,
            reward_due_time=hour + timedelta(hours=1),
            create_time=tx.now,
            update_time=tx.now,
        )
        _set_labels(node, labels)
        tx.emit(
            "node.registered",
            f"nodes/{node.id}",
            {"project": f"projects/{project.id}", "watch_keys": [node_state.nodes_key(project.id)]},
        )
    node.project = project
    return node, secret


def get_node(who: Principal, node_id: str) -> Node:
    require_operator(who)
    return visible_node(who, node_id)


def list_nodes(
    who: Principal, project_id: str, status: str, region: str, label: str, page: PageRequest
) -> Page[Node]:
    require_operator(who)
    v = Violations()
    if status and status not in STATUSES:
        v.add("status", "unknown status")
    label_key, _, label_value = label.partition("=")
    if label and (not label_key or not _):
        v.add("label", "expected key=value")
    v.raise_if_any()
    query = Node.select(Node, Project).join(Project)
    if not who.is_admin:
        query = query.where((Node.owner == who.user_id) | (Project.owner == who.user_id))
    if project_id:
        query = query.where(Node.project == project_id)
    if status:
        query = query.where(Node.status == status)
    if region:
        query = query.where(Node.region == region)
    if label:
        query = query.where(
            Node.id.in_(
                NodeLabel.select(NodeLabel.node).where(
                    (NodeLabel.key == label_key) & (NodeLabel.value == label_value)
                )
            )
        )
    filters = {"p": project_id, "s": status, "r": region, "l": label, "u": who.user_id}
    return keyset_page(query, Node.id, page, filters=filters)


def update_node(
    rt: Runtime,
    who: Principal,
    node_id: str,
    display_name: str | None,
    region: str | None,
    inventory: Inventory | None,
    labels: dict[str, str] | None,
) -> Node:
    require_operator(who)
    v = Violations()
    if display_name is not None:
        _check_name(v, display_name, "node.display_name")
    if region is not None and len(region) > 64:
        v.add("node.region", "at most 64 characters")
    if inventory is not None:
        check_inventory(v, inventory, "node.inventory")
    if labels is not None:
        check_labels(v, labels, "node.labels")
    v.raise_if_any()
    with rt.store.write() as tx:
        node = visible_node(who, node_id)
        if node.owner_id != who.user_id and not who.is_admin:
            raise PermissionDenied("only the node's operator or an admin may change it", reason="NOT_OWNER")
        if node.status == DECOMMISSIONED:
            raise FailedPrecondition("the node is decommissioned", reason="NODE_DECOMMISSIONED")
        if display_name is not None:
            node.display_name = display_name
        if region is not None:
            node.region = region
        if inventory is not None:
            node.cpu_cores, node.memory_mb, node.disk_gb = (
                inventory.cpu_cores,
                inventory.memory_mb,
                inventory.disk_gb,
            )
            node.gpus = inventory.gpus or []
        if labels is not None:
            node.labels = dict(sorted(labels.items()))
            _set_labels(node, labels)
        node.update_time = tx.now
        node.save()
        tx.emit("node.updated", f"nodes/{node.id}", {})
        if inventory is not None or labels is not None:
            # Capacity or labels changed: replicas that no longer fit stay (no eviction),
            # waiting ones may fit now.
            touched = node_placement.place_project(tx, node.project)
            node_state.refresh_workloads(tx, touched, "placement changed", inhibited=False)
    return node


def decommission_node(rt: Runtime, who: Principal, node_id: str, reason: str) -> Node:
    """Final: the key is revoked, open incidents close, replicas move elsewhere."""
    require_operator(who)
    if len(reason) > 400:
        raise InvalidArgument(
            "reason: at most 400 characters", violations=[FieldViolation("reason", "at most 400 characters")]
        )
    with rt.store.write() as tx:
        node = visible_node(who, node_id)
        project = node.project
        if node.status == DECOMMISSIONED:
            return node
        was_suppressed = node.suppressed
        node_state.set_node_status(tx, node, project, DECOMMISSIONED, reason or "decommissioned")
        node_state.close_incident(
            tx,
            node.id,
            "decommissioned",
            recipients=set(),
            event_type="node.recovered",
            data={},
            notify=False,
        )
        if node.api_key_id:
            ApiKey.update(revoke_time=tx.now).where(
                (ApiKey.id == node.api_key_id) & ApiKey.revoke_time.is_null()
            ).execute()
        node_state.release_node(tx, node, project, f"node nodes/{node.id} decommissioned")
        if was_suppressed:
            node_state.resolve_mass_outage(tx, project)
        tx.emit("node.decommissioned", f"nodes/{node.id}", {"api_key": node.api_key_id or ""})
    if node.api_key_id:
        key = ApiKey.get_or_none(ApiKey.id == node.api_key_id)
        if key is not None:
            auth.forget_api_key(key.secret_hash)
    return node


# -- workloads -------------------------------------------------------------------------


def _check_workload(
    v: Violations,
    display_name: str | None,
    spec: str | None,
    replicas: int | None,
    resources: Resources | None,
    labels: dict[str, str] | None,
    prefix: str = "",
) -> None:
    if display_name is not None:
        _check_name(v, display_name, f"{prefix}display_name")
    if spec is not None and (not spec or len(spec) > 8000):
        v.add(f"{prefix}spec", "required, at most 8000 characters")
    if replicas is not None and not 0 <= replicas <= 1000:
        v.add(f"{prefix}replicas", "between 0 and 1000")
    if resources is not None:
        check_resources(v, resources, f"{prefix}resources")
    if labels is not None:
        check_labels(v, labels, f"{prefix}placement_labels")


def _apply_resources(w: Workload, r: Resources) -> None:
    w.cpu_millis, w.memory_mb, w.disk_gb = r.cpu_millis, r.memory_mb, r.disk_gb
    w.gpu_count, w.gpu_model = r.gpu_count, r.gpu_model


def create_workload(
    rt: Runtime,
    who: Principal,
    project_id: str,
    display_name: str,
    spec: str,
    replicas: int,
    resources: Resources,
    labels: dict[str, str],
) -> Workload:
    require_operator(who)
    v = Violations()
    _check_workload(v, display_name, spec, replicas, resources, labels)
    v.raise_if_any()
    with rt.store.write() as tx:
        project = owned_project(who, project_id)
        workload = Workload(
            project=project.id,
            display_name=display_name,
            spec=spec,
            replicas=replicas,
            placement_labels=dict(sorted(labels.items())),
            status_time=tx.now,
            create_time=tx.now,
            update_time=tx.now,
        )
        _apply_resources(workload, resources)
        workload.save(force_insert=True)
        tx.emit("node.workload.created", f"workloads/{workload.id}", {"project": f"projects/{project.id}"})
        node_placement.place_project(tx, project)
        node_state.refresh_workload(tx, workload, "created", inhibited=False)
    return Workload.get_by_id(workload.id)


def get_workload(who: Principal, workload_id: str) -> Workload:
    require_operator(who)
    return visible_workload(who, workload_id)


def list_workloads(who: Principal, project_id: str, page: PageRequest) -> Page[Workload]:
    require_operator(who)
    owned_project(who, project_id)
    query = Workload.select().where(Workload.project == project_id)
    return keyset_page(query, Workload.id, page, filters={"p": project_id})


def update_workload(
    rt: Runtime,
    who: Principal,
    workload_id: str,
    display_name: str | None,
    spec: str | None,
    replicas: int | None,
    resources: Resources | None,
    labels: dict[str, str] | None,
) -> Workload:
    require_operator(who)
    v = Violations()
    _check_workload(v, display_name, spec, replicas, resources, labels, prefix="workload.")
    v.raise_if_any()
    with rt.store.write() as tx:
        workload = visible_workload(who, workload_id)
        if display_name is not None:
            workload.display_name = display_name
        if spec is not None:
            workload.spec = spec
        if replicas is not None:
            workload.replicas = replicas
        if resources is not None:
            _apply_resources(workload, resources)
        if labels is not None:
            workload.placement_labels = dict(sorted(labels.items()))
        workload.update_time = tx.now
        workload.save()
        if resources is not None or labels is not None or spec is not None:
            # A changed request re-places every replica from scratch.
            for a in Assignment.select().where(Assignment.workload == workload.id):
                tx.emit("node.assignments_changed", f"nodes/{a.node_id}", {})
            Assignment.delete().where(Assignment.workload == workload.id).execute()
        tx.emit("node.workload.updated", f"workloads/{workload.id}", {})
        node_placement.place_project(tx, workload.project)
        node_state.refresh_workload(tx, workload, "updated", inhibited=False)
    return Workload.get_by_id(workload.id)


def delete_workload(rt: Runtime, who: Principal, workload_id: str) -> None:
    require_operator(who)
    with rt.store.write() as tx:
        workload = visible_workload(who, workload_id)
        for a in Assignment.select().where(Assignment.workload == workload.id):
            tx.emit("node.assignments_changed", f"nodes/{a.node_id}", {})
        node_state.close_incident(
            tx,
            workload.id,
            "deleted",
            recipients=set(),
            event_type="workload.recovered",
            data={},
            notify=False,
        )
        workload.delete_instance(recursive=True)
        tx.emit("node.workload.deleted", f"workloads/{workload.id}", {})


def workload_assignments(workload_ids: list[str]) -> dict[str, list[Assignment]]:
    out: dict[str, list[Assignment]] = {w: [] for w in workload_ids}
    for a in Assignment.select().where(Assignment.workload.in_(workload_ids)).order_by(Assignment.id):
        out[a.workload_id].append(a)
    return out


def list_assignments(who: Principal, kind: str, parent_id: str, page: PageRequest) -> Page[Assignment]:
    require_operator(who)
    if kind == "workloads":
        visible_workload(who, parent_id)
        query = Assignment.select().where(Assignment.workload == parent_id)
    else:
        visible_node(who, parent_id)
        query = Assignment.select().where(Assignment.node == parent_id)
    return keyset_page(query, Assignment.id, page, filters={"k": kind, "p": parent_id})


def watchable_project(who: Principal, project_id: str) -> Project:
    require_operator(who)
    return owned_project(who, project_id)
