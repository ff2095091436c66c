"""Nodes: registration (with the node's own API key, shown once; only into a project whose
owner consents, see members.py), listing, changes, key rotation and decommissioning. A node
is UNKNOWN until its first beat (heartbeats.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

from coordd.core.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Violations,
)
from coordd.core.ids import new_id
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import NODE_OPERATOR, TOKEN, Principal, format_roles
from coordd.crypto.tokens import new_api_key
from coordd.domain import auth
from coordd.domain.node.access import get_project, may_join, require_operator, visible_node
from coordd.domain.node.machine import (
    close_incident,
    nodes_key,
    refresh_workloads,
    release_node,
    resolve_mass_outage,
    set_node_status,
)
from coordd.domain.node.placement import place_project
from coordd.domain.node.policies import Inventory, check_inventory, check_labels, check_name
from coordd.runtime import Runtime
from coordd.store.auth.models import ApiKey
from coordd.store.db import Tx
from coordd.store.node import members, queries
from coordd.store.node.models import DECOMMISSIONED, STATUSES, UNKNOWN, Node, Project

# How long a rotated-out node key keeps working by default, and at most.
ROTATION_OVERLAP_S = 600.0
MAX_ROTATION_OVERLAP_S = 7 * 86400.0


def _hour_floor(t: datetime) -> datetime:
    return t - timedelta(minutes=t.minute, seconds=t.second, microseconds=t.microsecond)


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
    if who.kind != TOKEN:
        raise PermissionDenied(
            "nodes are registered with a login token, not an API key", reason="TOKEN_REQUIRED"
        )
    v = Violations()
    check_name(v, display_name, "display_name")
    if len(region) > 64:
        v.add("region", "at most 64 characters")
    check_inventory(v, inventory)
    check_labels(v, labels, "labels")
    v.raise_if_any()
    secret, prefix, digest = new_api_key()
    with rt.store.write() as tx:
        project = get_project(project_id)
        if not may_join(who, project):
            # A node receives its project's workload specs (and their secrets): joining
            # needs the owner's consent, an invite accepted (members.py).
            raise PermissionDenied(
                "only the project's owner and the members it invited may register nodes into it",
                reason="NOT_PROJECT_MEMBER",
                metadata={"project": f"projects/{project.id}"},
            )
        node_id = new_id()
        key = _insert_key(tx, who.user_id, display_name, prefix, digest, node_id)
        hour = _hour_floor(tx.now)
        node = queries.insert_node(
            id=node_id,
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
        queries.replace_labels(node.id, labels)
        tx.emit(
            "node.registered",
            f"nodes/{node.id}",
            {"project": f"projects/{project.id}", "watch_keys": [nodes_key(project.id)]},
        )
    node.project = project
    return node, secret


def _insert_key(tx: Tx, user_id: str, display_name: str, prefix: str, digest: str, node_id: str) -> ApiKey:
    return queries.insert_node_key(
        user_id, f"node {display_name}"[:100], prefix, digest, format_roles({NODE_OPERATOR}), tx.now, node_id
    )


def rotate_node_key(
    rt: Runtime, who: Principal, node_id: str, overlap_s: float | None
) -> tuple[Node, str, datetime]:
    """A new key for the node, shown once; the previous key(s) keep working for the overlap
    (default ROTATION_OVERLAP_S), then expire. Returns the node, the secret and that time."""
    require_operator(who)
    overlap = ROTATION_OVERLAP_S if overlap_s is None else overlap_s
    if not 0 <= overlap <= MAX_ROTATION_OVERLAP_S:
        raise InvalidArgument(
            "overlap: between 0 and 7 days",
            violations=[FieldViolation("overlap", "between 0 and 7 days")],
        )
    secret, prefix, digest = new_api_key()
    with rt.store.write() as tx:
        queries.lock_node(node_id)
        node = visible_node(who, node_id)
        if node.owner_id != who.user_id and not who.is_admin:
            raise PermissionDenied(
                "only the node's operator or an admin may rotate its key", reason="NOT_OWNER"
            )
        if node.status == DECOMMISSIONED:
            raise FailedPrecondition("the node is decommissioned", reason="NODE_DECOMMISSIONED")
        ends = tx.now + timedelta(seconds=overlap)
        for old in members.live_node_keys(node.id):
            if old.expire_time is None or old.expire_time > ends:
                members.expire_key(old, ends)
                # Drops this replica's cached principal; others re-read within the cache TTL
                # and check the expiry against the clock on every hit meanwhile.
                auth.forget_api_key(old.secret_hash)
        key = _insert_key(tx, node.owner_id, node.display_name, prefix, digest, node.id)
        members.set_node_key(node, key.id, tx.now)
        tx.emit("node.key_rotated", f"nodes/{node.id}", {"api_key": key.id})
    return queries.node_with_project(node.id) or node, secret, ends


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
    filters = {"p": project_id, "s": status, "r": region, "l": label, "u": who.user_id}
    return queries.page_nodes(
        page,
        filters,
        visible_to=None if who.is_admin else who.user_id,
        project_id=project_id,
        status=status,
        region=region,
        label=(label_key, label_value) if label else None,
    )


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
        check_name(v, display_name, "node.display_name")
    if region is not None and len(region) > 64:
        v.add("node.region", "at most 64 characters")
    if inventory is not None:
        check_inventory(v, inventory, "node.inventory")
    if labels is not None:
        check_labels(v, labels, "node.labels")
    v.raise_if_any()
    with rt.store.write() as tx:
        # Locked before it is read: concurrent changes of one node run one after the other
        # (the label rows are replaced, which raced to a duplicate key on PostgreSQL).
        queries.lock_node(node_id)
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
            queries.replace_labels(node.id, labels)
        node.update_time = tx.now
        node.save()
        tx.emit("node.updated", f"nodes/{node.id}", {})
        if inventory is not None or labels is not None:
            # Capacity or labels changed: replicas that no longer fit stay (no eviction),
            # waiting ones may fit now.
            touched = place_project(tx, node.project)
            refresh_workloads(tx, touched, "placement changed", inhibited=False)
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
        if node.status == DECOMMISSIONED:
            return node
        hashes = retire_node(tx, node, node.project, reason or "decommissioned")
    for secret_hash in hashes:
        auth.forget_api_key(secret_hash)
    return node


def retire_node(tx: Tx, node: Node, project: Project, reason: str) -> list[str]:
    """Decommissions the node inside the caller's transaction: every key of it (current
    and rotated-out) is revoked, open incidents close, its replicas move elsewhere.
    Returns the revoked keys' digests, to drop from the credential cache after commit."""
    was_suppressed = node.suppressed
    set_node_status(tx, node, project, DECOMMISSIONED, reason)
    close_incident(
        tx,
        node.id,
        "decommissioned",
        recipients=set(),
        event_type="node.recovered",
        data={},
        notify=False,
    )
    hashes = members.revoke_node_keys(node.id, tx.now)
    release_node(tx, node, project, f"node nodes/{node.id} decommissioned")
    if was_suppressed:
        resolve_mass_outage(tx, project)
    tx.emit("node.decommissioned", f"nodes/{node.id}", {"api_key": node.api_key_id or ""})
    return hashes
