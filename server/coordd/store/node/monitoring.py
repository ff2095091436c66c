"""Queries of node monitoring (issue 14): monitoring policies, flapping, escalation and
reminders, silences, acknowledgements, and the SLA report's reads."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import peewee

from coordd.store.node.models import (
    DOWN,
    UP,
    Incident,
    MonitoringPolicy,
    Node,
    NodeLabel,
    Silence,
    Transition,
)
from coordd.store.paging import Page, PageRequest, keyset_page

# -- policies ------------------------------------------------------------------------------


def policy_of(project_id: str) -> MonitoringPolicy | None:
    return MonitoringPolicy.get_or_none(MonitoringPolicy.project == project_id)


def save_policy(project_id: str, values: dict[str, Any]) -> None:
    """Inserts or replaces the project's policy row."""
    row = {**values, "project": project_id}
    MonitoringPolicy.insert(**row).on_conflict(
        conflict_target=[MonitoringPolicy.project],
        update={getattr(MonitoringPolicy, k): v for k, v in values.items()},
    ).execute()


# -- flapping ------------------------------------------------------------------------------


def count_changes_since(node_id: str, since: datetime) -> int:
    """The node's UP/DOWN changes since `since`, through the (subject, time) index."""
    return (
        Transition.select()
        .where(
            (Transition.subject_id == node_id)
            & (Transition.time > since)
            & Transition.to_status.in_([UP, DOWN])
        )
        .count()
    )


def count_changes_since_many(node_ids: list[str], since: datetime) -> dict[str, int]:
    """`count_changes_since` for many nodes in one grouped query (absent: none)."""
    rows = (
        Transition.select(Transition.subject_id, peewee.fn.COUNT(Transition.id).alias("changes"))
        .where(
            Transition.subject_id.in_(sorted(node_ids))
            & (Transition.time > since)
            & Transition.to_status.in_([UP, DOWN])
        )
        .group_by(Transition.subject_id)
        .tuples()
    )
    return {subject: int(changes) for subject, changes in rows}


def flapping_nodes(batch: int) -> list[Node]:
    return list(
        Node.select().where(Node.flapping_since.is_null(False)).order_by(Node.flapping_since).limit(batch)
    )


def save_flapping(node: Node) -> None:
    node.save(only=[Node.flapping_since])


# -- incidents: notification, escalation, reminders ---------------------------------------------


def due_incidents(now: datetime, batch: int) -> list[Incident]:
    return list(
        Incident.select()
        .where(Incident.next_notify_time <= now)
        .order_by(Incident.next_notify_time)
        .limit(batch)
    )


def get_incident(incident_id: str) -> Incident | None:
    return Incident.get_or_none(Incident.id == incident_id)


def save_incident(incident: Incident) -> None:
    incident.save()


def open_node_incidents_of(node_ids: list[str]) -> list[Incident]:
    return list(
        Incident.select().where(
            Incident.subject_id.in_(sorted(node_ids))
            & Incident.end_time.is_null()
            & (Incident.kind == "node")
        )
    )


# -- silences ------------------------------------------------------------------------------


def insert_silence(**values: Any) -> Silence:
    return Silence.create(**values)


def get_silence(silence_id: str) -> Silence | None:
    return Silence.get_or_none(Silence.id == silence_id)


def save_silence(silence: Silence) -> None:
    silence.save()


def active_silences(project_id: str, now: datetime) -> list[Silence]:
    """The project's silences in force now (a handful: filtered in memory per node)."""
    return list(
        Silence.select().where(
            (Silence.project == project_id) & (Silence.start_time <= now) & (Silence.end_time > now)
        )
    )


def due_silences(now: datetime, batch: int) -> list[Silence]:
    return list(
        Silence.select()
        .where(Silence.next_action_time <= now)
        .order_by(Silence.next_action_time)
        .limit(batch)
    )


def page_silences(project_id: str, page: PageRequest) -> Page[Silence]:
    query = Silence.select().where(Silence.project == project_id)
    return keyset_page(query, Silence.id, page, filters={"p": project_id}, descending=True)


def nodes_matching(project_id: str, node_id: str, label_key: str, label_value: str) -> list[Node]:
    """The project's nodes a silence covers: one node, the nodes with a label, or all."""
    query = Node.select().where(Node.project == project_id)
    if node_id:
        query = query.where(Node.id == node_id)
    elif label_key:
        query = query.join(NodeLabel).where((NodeLabel.key == label_key) & (NodeLabel.value == label_value))
    return list(query)


# -- SLA report ------------------------------------------------------------------------------


def nodes_of_project_after(project_id: str, after_id: str, limit: int) -> list[Node]:
    """The project's nodes in id order, a page at a time (the report streams)."""
    return list(
        Node.select()
        .where((Node.project == project_id) & (Node.id > after_id))
        .order_by(Node.id)
        .limit(limit)
    )


def incident_counts(node_ids: list[str], start: datetime, end: datetime) -> dict[str, int]:
    """Per node: its incidents that overlap [start, end)."""
    if not node_ids:
        return {}
    rows = (
        Incident.select(Incident.subject_id, peewee.fn.COUNT(Incident.id).alias("n"))
        .where(
            Incident.subject_id.in_(node_ids)
            & (Incident.start_time < end)
            & (Incident.end_time.is_null() | (Incident.end_time > start))
        )
        .group_by(Incident.subject_id)
        .tuples()
    )
    return {subject: int(n) for subject, n in rows}
