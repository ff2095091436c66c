"""Queries of node health: heartbeats (last-seen flushes, replica reports), detection's due
nodes, the state machine's transitions and incidents, maintenance windows, the uptime
timeline and the rewards ledger. Each runs in the caller's transaction (if any)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

import peewee

from coordd.store.node.models import (
    DECOMMISSIONED,
    RUNNING,
    UP,
    Assignment,
    Incident,
    MaintenanceWindow,
    Node,
    Project,
    RewardEntry,
    Transition,
    Workload,
)
from coordd.store.paging import Page, PageRequest, keyset_page


class RewardTotals(NamedTuple):
    points: int
    entries: int


# -- heartbeats ----------------------------------------------------------------------------


def store_last_seen(node_id: str, seen: datetime, deadline: datetime | None) -> None:
    """Last-seen, and the deadline moved to `deadline` unless the node has none (only a node
    that can go DOWN has one)."""
    values: dict[Any, Any] = {Node.last_seen_time: seen}
    if deadline is not None:
        values[Node.deadline_time] = peewee.Case(
            None, ((Node.deadline_time.is_null(), None),), Node.deadline_time.db_value(deadline)
        )
    Node.update(values).where(Node.id == node_id).execute()


# A flush batch (about one row per beating node) goes to the database as ONE statement, on
# both backends: executemany, or a SELECT stepped row by row, gives the GIL up and takes it
# back once per row, and next to a thread that never lets go each take waits for the switch
# interval. bench/flush_convoy.py, 10,000 rows: per row 0.17 s alone and 55 s next to a
# spinning thread against 0.13 s and 0.26 s (SQLite); 2.4 s and 65 s against 0.60 s and 0.85 s
# (PostgreSQL). The event loop lets go more often than a spinning thread: bench/fleet.py read
# the same beats/s with either flush (docs/PERFORMANCE.md, issue 14 session 7).
_LOCK_PG = 'SELECT 1 FROM "nodes" WHERE "id" = ANY(%s) ORDER BY "id" FOR NO KEY UPDATE'
_STATUSES_PG = 'SELECT "id", "status" FROM "nodes" WHERE "id" = ANY(%s)'
_STATUSES_SQLITE = (
    'SELECT json_group_object("id", "status") FROM "nodes" WHERE "id" IN (SELECT value FROM json_each(?))'
)


def _update_nodes(
    sets: str, columns: tuple[tuple[str, str], ...], ids: list[str], *values: list[Any]
) -> None:
    """One UPDATE of many nodes by id: `sets` reads each node's new values as `j.<column>`
    (its current ones as `n.<column>`); `columns` names them, with their PostgreSQL types,
    and `values` holds one list per column, in the order of `ids`. PostgreSQL takes the
    rows' locks in id order first (one statement too), so batches never deadlock."""
    if not ids:
        return
    db = Node._meta.database
    names = ", ".join(name for name, _ in columns)
    if db.param == "%s":
        arrays = ", ".join(f"%s::{kind}[]" for _, kind in columns)
        db.execute_sql(_LOCK_PG, (ids,))
        db.execute_sql(
            f'UPDATE "nodes" AS n SET {sets} FROM unnest(%s::text[], {arrays}) AS j(id, {names})'
            ' WHERE n."id" = j.id',
            (ids, *values),
        )
        return
    picks = ", ".join(f"json_extract(value, '$[{k}]') AS {name}" for k, (name, _) in enumerate(columns, 1))
    db.execute_sql(
        f"UPDATE \"nodes\" AS n SET {sets} FROM (SELECT json_extract(value, '$[0]') AS id, {picks}"
        ' FROM json_each(?)) AS j WHERE n."id" = j.id',
        (json.dumps(list(zip(ids, *values, strict=True))),),
    )


def store_last_seen_many(rows: list[tuple[str, datetime, datetime | None]]) -> None:
    """`store_last_seen` for a whole flush batch (node id, seen, deadline or None), as one
    statement."""
    to_db = Node.last_seen_time.db_value
    _update_nodes(
        '"last_seen_time" = j.seen, "deadline_time" = CASE WHEN n."deadline_time" IS NULL'
        ' OR j.deadline IS NULL THEN n."deadline_time" ELSE j.deadline END',
        (("seen", "bigint"), ("deadline", "bigint")),
        [n for n, _, _ in rows],
        [to_db(s) for _, s, _ in rows],
        [to_db(d) for _, _, d in rows],
    )


def statuses_of(node_ids: list[str]) -> dict[str, str]:
    """Many nodes' statuses in one statement (a flush asks for every beating node each second)."""
    if not node_ids:
        return {}
    db = Node._meta.database
    if db.param == "%s":
        return dict(db.execute_sql(_STATUSES_PG, (list(node_ids),)).fetchall())
    (found,) = db.execute_sql(_STATUSES_SQLITE, (json.dumps(node_ids),)).fetchone()
    return json.loads(found) if found else {}


def report_replica(workload_id: str, node_id: str, state: str, message: str, now: datetime) -> int:
    """Stores a replica's reported state; 0 when nothing changed."""
    return (
        Assignment.update(state=state, message=message, update_time=now)
        .where(
            (Assignment.workload == workload_id)
            & (Assignment.node == node_id)
            & ((Assignment.state != state) | (Assignment.message != message))
        )
        .execute()
    )


def workload_ids_in_project(project_id: str, workload_ids: list[str]) -> set[str]:
    """Which of these workloads exist in the project."""
    rows = Workload.select(Workload.id).where(
        (Workload.project == project_id) & Workload.id.in_(sorted(set(workload_ids)))
    )
    return {row.id for row in rows}


def assignments_with_workloads(node_id: str) -> list[Assignment]:
    return list(
        Assignment.select(Assignment, Workload)
        .join(Workload)
        .where(Assignment.node == node_id)
        .order_by(Assignment.id)
    )


def save_last_seen(node: Node) -> None:
    node.save(only=[Node.last_seen_time, Node.deadline_time])


# -- detection -----------------------------------------------------------------------------


class DueNode(NamedTuple):
    id: str
    project_id: str
    last_seen_time: datetime | None


_DUE = (
    'SELECT "id", "project_id", "last_seen_time" FROM "nodes" WHERE "deadline_time" <= {p} '
    'ORDER BY "deadline_time" LIMIT {p}'
)


def due_brief(now: datetime, batch: int, *, skip_locked: bool) -> list[DueNode]:
    """Nodes whose deadline passed, oldest first, through the deadline index (with
    `skip_locked`, PostgreSQL, rows another detector holds are skipped): the three fields
    detection decides with, by fixed SQL text. A daemon that fell behind finds thousands
    due that were heard after all (their beats not flushed yet), and a model row for each
    cost more than the decision."""
    db = Node._meta.database
    sql = _DUE.format(p=db.param) + (" FOR UPDATE SKIP LOCKED" if skip_locked else "")
    seen = Node.last_seen_time.python_value
    rows = db.execute_sql(sql, (Node.deadline_time.db_value(now), batch)).fetchall()
    return [DueNode(node_id, project_id, seen(last)) for node_id, project_id, last in rows]


_WATCHED_PG = (
    'SELECT "id", "project_id", "last_seen_time" FROM "nodes" WHERE "id" = ANY(%s) '
    'AND "deadline_time" IS NOT NULL ORDER BY "id"'
)
_WATCHED_SQLITE = (
    'SELECT "id", "project_id", "last_seen_time" FROM "nodes" WHERE "id" IN '
    '(SELECT value FROM json_each(?)) AND "deadline_time" IS NOT NULL ORDER BY "id"'
)


def watched_brief(node_ids: list[str], *, skip_locked: bool) -> list[DueNode]:
    """`due_brief` for the given nodes that can go DOWN (UP or PENDING: a deadline is kept),
    whatever their stored deadline says (another source found them late)."""
    if not node_ids:
        return []
    db = Node._meta.database
    if db.param == "%s":
        sql = _WATCHED_PG + (" FOR UPDATE SKIP LOCKED" if skip_locked else "")
        rows = db.execute_sql(sql, (list(node_ids),)).fetchall()
    else:
        rows = db.execute_sql(_WATCHED_SQLITE, (json.dumps(node_ids),)).fetchall()
    seen = Node.last_seen_time.python_value
    return [DueNode(node_id, project_id, seen(last)) for node_id, project_id, last in rows]


def save_deadlines(rows: list[tuple[str, datetime]]) -> None:
    """Many nodes' deadlines (node, deadline) in one statement."""
    value = Node.deadline_time.db_value
    _update_nodes(
        '"deadline_time" = j.deadline',
        (("deadline", "bigint"),),
        [node_id for node_id, _ in rows],
        [value(deadline) for _, deadline in rows],
    )


def count_nodes_in(project_id: str, statuses: list[str]) -> int:
    return Node.select().where((Node.project == project_id) & Node.status.in_(statuses)).count()


def count_node_transitions_to(project_id: str, to_status: str, since: datetime) -> int:
    return (
        Transition.select()
        .where(
            (Transition.project_id == project_id)
            & (Transition.kind == "node")
            & (Transition.to_status == to_status)
            & (Transition.time > since)
        )
        .count()
    )


# -- the state machine's rows --------------------------------------------------------------


def insert_transition(**values: Any) -> Transition:
    return Transition.create(**values)


def insert_transitions(rows: list[dict[str, Any]]) -> None:
    """Many transitions in one multi-row INSERT (a batch of beat-driven changes)."""
    if rows:
        Transition.insert_many(rows).execute()


def save_node_statuses(nodes: list[Node]) -> None:
    """The status fields of many nodes (and their last-seen) in one statement."""
    ts = Node.status_time.db_value
    _update_nodes(
        '"status" = j.status, "status_reason" = j.reason, "status_time" = j.status_time,'
        ' "suppressed" = j.suppressed, "deadline_time" = j.deadline, "last_seen_time" = j.seen,'
        ' "update_time" = j.updated',
        (
            ("status", "text"),
            ("reason", "text"),
            ("status_time", "bigint"),
            ("suppressed", "boolean"),
            ("deadline", "bigint"),
            ("seen", "bigint"),
            ("updated", "bigint"),
        ),
        [n.id for n in nodes],
        [n.status for n in nodes],
        [n.status_reason for n in nodes],
        [ts(n.status_time) for n in nodes],
        [bool(n.suppressed) for n in nodes],
        [ts(n.deadline_time) for n in nodes],
        [ts(n.last_seen_time) for n in nodes],
        [ts(n.update_time) for n in nodes],
    )


def open_incidents_of(subject_ids: list[str]) -> dict[str, Incident]:
    """The open incidents of many subjects, in one query."""
    rows = Incident.select().where(Incident.subject_id.in_(sorted(subject_ids)) & Incident.end_time.is_null())
    return {i.subject_id: i for i in rows}


def open_incident_of(subject_id: str) -> Incident | None:
    return Incident.get_or_none((Incident.subject_id == subject_id) & Incident.end_time.is_null())


def has_open_incident(subject_id: str) -> bool:
    return Incident.select().where((Incident.subject_id == subject_id) & Incident.end_time.is_null()).exists()


def insert_incident(**values: Any) -> Incident:
    return Incident.create(**values)


def has_suppressed_down(project_id: str, down: str) -> bool:
    """A node of the project that went `down` during a mass outage and still is."""
    return (
        Node.select()
        .where((Node.project == project_id) & (Node.status == down) & (Node.suppressed == True))  # noqa: E712
        .exists()
    )


def running_replicas(workload_id: str) -> int:
    """Replicas of the workload reported running on UP nodes."""
    return (
        Assignment.select()
        .join(Node)
        .where((Assignment.workload == workload_id) & (Assignment.state == RUNNING) & (Node.status == UP))
        .count()
    )


# -- maintenance windows -------------------------------------------------------------------


def insert_window(**values: Any) -> MaintenanceWindow:
    return MaintenanceWindow.create(**values)


def due_windows(now: datetime, batch: int) -> list[MaintenanceWindow]:
    return list(
        MaintenanceWindow.select()
        .where(MaintenanceWindow.next_action_time <= now)
        .order_by(MaintenanceWindow.next_action_time)
        .limit(batch)
    )


def nodes_covered_by(window: MaintenanceWindow) -> list[Node]:
    """The window's node, or every node of its project; decommissioned ones aside."""
    query = Node.select().where(Node.status != DECOMMISSIONED)
    if window.node_id:
        query = query.where(Node.id == window.node_id)
    else:
        query = query.where(Node.project == window.project_id)
    return list(query.order_by(Node.id))


def other_window_in_state(node: Node, window: MaintenanceWindow, state: str) -> bool:
    """Another window in `state` covers the node (its own or its project's)."""
    return (
        MaintenanceWindow.select()
        .where(
            (MaintenanceWindow.id != window.id)
            & (MaintenanceWindow.state == state)
            & (
                (MaintenanceWindow.node == node.id)
                | ((MaintenanceWindow.project == node.project_id) & MaintenanceWindow.node.is_null())
            )
        )
        .exists()
    )


def page_windows(kind: str, target: Node | Project, page: PageRequest) -> Page[MaintenanceWindow]:
    """Of a node (`kind` "nodes": its own and its project's) or of a project."""
    if kind == "nodes":
        query = MaintenanceWindow.select().where(
            (MaintenanceWindow.node == target.id)
            | ((MaintenanceWindow.project == target.project_id) & MaintenanceWindow.node.is_null())
        )
    else:
        query = MaintenanceWindow.select().where(MaintenanceWindow.project == target.id)
    return keyset_page(
        query, MaintenanceWindow.id, page, filters={"t": f"{kind}/{target.id}"}, descending=True
    )


def windows_overlapping(
    project_id: str, node_id: str | None, start: datetime, end: datetime
) -> list[MaintenanceWindow]:
    """Windows over [start, end) of the project, and of the node when given."""
    covers = MaintenanceWindow.node.is_null()
    if node_id:
        covers = covers | (MaintenanceWindow.node == node_id)
    return list(
        MaintenanceWindow.select().where(
            (MaintenanceWindow.project == project_id)
            & covers
            & (MaintenanceWindow.start_time < end)
            & (MaintenanceWindow.end_time > start)
        )
    )


# -- the timeline --------------------------------------------------------------------------


def transition_before(subject_id: str, start: datetime) -> Transition | None:
    return (
        Transition.select()
        .where((Transition.subject_id == subject_id) & (Transition.time < start))
        .order_by(Transition.time.desc(), Transition.id.desc())
        .first()
    )


def transitions_between(subject_id: str, start: datetime, end: datetime) -> list[Transition]:
    return list(
        Transition.select()
        .where((Transition.subject_id == subject_id) & (Transition.time >= start) & (Transition.time < end))
        .order_by(Transition.time, Transition.id)
    )


def page_incidents(parent_id: str, open_only: bool, page: PageRequest) -> Page[Incident]:
    query = Incident.select().where(Incident.subject_id == parent_id)
    if open_only:
        query = query.where(Incident.end_time.is_null())
    return keyset_page(query, Incident.id, page, filters={"p": parent_id, "o": open_only}, descending=True)


def page_transitions(parent_id: str, page: PageRequest) -> Page[Transition]:
    query = Transition.select().where(Transition.subject_id == parent_id)
    return keyset_page(query, Transition.id, page, filters={"p": parent_id}, descending=True)


def node_transitions_after(project_id: str, after_id: int, limit: int) -> list[Transition]:
    return list(
        Transition.select()
        .where(
            (Transition.project_id == project_id) & (Transition.kind == "node") & (Transition.id > after_id)
        )
        .order_by(Transition.id)
        .limit(limit)
    )


def last_transition_id(project_id: str) -> int:
    value = (
        Transition.select(peewee.fn.MAX(Transition.id)).where(Transition.project_id == project_id).scalar()
    )
    return int(value or 0)


# -- rewards -------------------------------------------------------------------------------


def reward_due_node_ids(now: datetime, batch: int) -> list[str]:
    rows = Node.select(Node.id).where(Node.reward_due_time <= now).order_by(Node.reward_due_time).limit(batch)
    return [row.id for row in rows]


def advance_reward_cursor(node_id: str, expected: datetime, cursor: datetime, due: datetime | None) -> bool:
    """Moves the node's reward cursor from `expected`: False when a concurrent run moved it."""
    won = (
        Node.update(reward_cursor=cursor, reward_due_time=due)
        .where((Node.id == node_id) & (Node.reward_cursor == expected))
        .execute()
    )
    return bool(won)


def points_used(owner_id: str, project_id: str, day: str) -> int:
    used = (
        RewardEntry.select(peewee.fn.COALESCE(peewee.fn.SUM(RewardEntry.points), 0))
        .where(
            (RewardEntry.owner == owner_id)
            & (RewardEntry.project_id == project_id)
            & (RewardEntry.day == day)
        )
        .scalar()
    )
    return int(used or 0)


def insert_reward_entry(**values: Any) -> None:
    """Ignored when the bucket was credited already (its unique key)."""
    RewardEntry.insert(**values).on_conflict_ignore().execute()


def reward_totals(owner_id: str) -> RewardTotals:
    row = (
        RewardEntry.select(
            peewee.fn.COALESCE(peewee.fn.SUM(RewardEntry.points), 0), peewee.fn.COUNT(RewardEntry.id)
        )
        .where(RewardEntry.owner == owner_id)
        .tuples()
        .first()
    )
    points, entries = row
    return RewardTotals(int(points or 0), int(entries or 0))


def page_reward_entries(owner_id: str, page: PageRequest) -> Page[RewardEntry]:
    query = RewardEntry.select().where(RewardEntry.owner == owner_id)
    return keyset_page(query, RewardEntry.id, page, filters={"o": owner_id}, descending=True)
