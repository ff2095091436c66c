"""Uptime, incidents, transitions, maintenance windows and the rewards ledger.

Uptime is computed from the stored transitions: seconds UP / seconds observed in the
window, where observed means UP or DOWN, minus maintenance windows and minus DOWN time
that began in a mass outage. Rewards credit closed hour buckets from the same timeline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import peewee

from coordd.core.errors import FailedPrecondition, PermissionDenied, Violations
from coordd.core.principal import Principal
from coordd.domain import node_health
from coordd.domain.node import owned_project, require_operator, visible_node, visible_workload
from coordd.runtime import Runtime
from coordd.store.node_models import (
    DECOMMISSIONED,
    DOWN,
    UP,
    Incident,
    MaintenanceWindow,
    Node,
    Project,
    RewardEntry,
    Transition,
)
from coordd.store.paging import Page, PageRequest, keyset_page

WINDOWS_S = (86400, 7 * 86400, 30 * 86400)
HOUR = timedelta(hours=1)
MAX_WINDOW = timedelta(days=366)


@dataclass(frozen=True)
class Segment:
    start: datetime
    end: datetime
    status: str
    excluded: bool


@dataclass(frozen=True)
class Uptime:
    window_s: int
    up_s: float
    observed_s: float

    @property
    def percent(self) -> float:
        return 100.0 if self.observed_s <= 0 else round(100.0 * self.up_s / self.observed_s, 4)


def segments(subject_id: str, start: datetime, end: datetime) -> list[Segment]:
    """The subject's statuses over [start, end): the last transition before start, then each after."""
    before = (
        Transition.select()
        .where((Transition.subject_id == subject_id) & (Transition.time < start))
        .order_by(Transition.time.desc(), Transition.id.desc())
        .first()
    )
    rows = (
        Transition.select()
        .where((Transition.subject_id == subject_id) & (Transition.time >= start) & (Transition.time < end))
        .order_by(Transition.time, Transition.id)
    )
    out: list[Segment] = []
    current = before
    cursor = start
    for row in rows:
        if current is not None and row.time > cursor:
            out.append(Segment(cursor, row.time, current.to_status, current.excluded))
        current, cursor = row, row.time
    if current is not None and end > cursor:
        out.append(Segment(cursor, end, current.to_status, current.excluded))
    return out


def maintenance_intervals(
    project_id: str, node_id: str | None, start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    """Merged maintenance windows over [start, end) for a node (its own and its project's)."""
    covers = MaintenanceWindow.node.is_null()
    if node_id:
        covers = covers | (MaintenanceWindow.node == node_id)
    rows = MaintenanceWindow.select().where(
        (MaintenanceWindow.project == project_id)
        & covers
        & (MaintenanceWindow.start_time < end)
        & (MaintenanceWindow.end_time > start)
    )
    spans = sorted((max(r.start_time, start), min(r.end_time, end)) for r in rows)
    merged: list[tuple[datetime, datetime]] = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _outside(seg: Segment, holes: list[tuple[datetime, datetime]]) -> float:
    total = (seg.end - seg.start).total_seconds()
    for s, e in holes:
        overlap = (min(seg.end, e) - max(seg.start, s)).total_seconds()
        if overlap > 0:
            total -= overlap
    return max(total, 0.0)


def measure(segs: list[Segment], holes: list[tuple[datetime, datetime]]) -> tuple[float, float, float]:
    """(up, observed, mass-outage excluded) seconds."""
    up = observed = excluded = 0.0
    for seg in segs:
        seconds = _outside(seg, holes)
        if seg.status == UP:
            up += seconds
            observed += seconds
        elif seg.status == DOWN and seg.excluded:
            excluded += seconds
        elif seg.status == DOWN:
            observed += seconds
    return up, observed, excluded


def uptime(rt: Runtime, who: Principal, kind: str, subject_id: str) -> list[Uptime]:
    require_operator(who)
    if kind == "nodes":
        node = visible_node(who, subject_id)
        project_id, node_id = node.project_id, node.id
    else:
        workload = visible_workload(who, subject_id)
        project_id, node_id = workload.project_id, None
    now = rt.now()
    out = []
    for window_s in WINDOWS_S:
        start = now - timedelta(seconds=window_s)
        segs = segments(subject_id, start, now)
        up, observed, _ = measure(segs, maintenance_intervals(project_id, node_id, start, now))
        out.append(Uptime(window_s, up, observed))
    return out


def list_incidents(
    who: Principal, kind: str, parent_id: str, open_only: bool, page: PageRequest
) -> Page[Incident]:
    require_operator(who)
    if kind == "nodes":
        visible_node(who, parent_id)
    elif kind == "workloads":
        visible_workload(who, parent_id)
    else:
        owned_project(who, parent_id)
    query = Incident.select().where(Incident.subject_id == parent_id)
    if open_only:
        query = query.where(Incident.end_time.is_null())
    return keyset_page(query, Incident.id, page, filters={"p": parent_id, "o": open_only}, descending=True)


def list_transitions(who: Principal, kind: str, parent_id: str, page: PageRequest) -> Page[Transition]:
    require_operator(who)
    if kind == "nodes":
        visible_node(who, parent_id)
    else:
        visible_workload(who, parent_id)
    query = Transition.select().where(Transition.subject_id == parent_id)
    return keyset_page(query, Transition.id, page, filters={"p": parent_id}, descending=True)


def transitions_after(project_id: str, after_id: int, limit: int = 200) -> list[tuple[Transition, Node]]:
    rows = (
        Transition.select()
        .where(
            (Transition.project_id == project_id) & (Transition.kind == "node") & (Transition.id > after_id)
        )
        .order_by(Transition.id)
        .limit(limit)
    )
    transitions = list(rows)
    nodes = {n.id: n for n in Node.select().where(Node.id.in_(sorted({t.subject_id for t in transitions})))}
    return [(t, nodes[t.subject_id]) for t in transitions if t.subject_id in nodes]


def last_transition_id(project_id: str) -> int:
    value = (
        Transition.select(peewee.fn.MAX(Transition.id)).where(Transition.project_id == project_id).scalar()
    )
    return int(value or 0)


# -- maintenance windows ---------------------------------------------------------------


def create_maintenance_window(
    rt: Runtime, who: Principal, kind: str, target_id: str, start: datetime, end: datetime, reason: str
) -> MaintenanceWindow:
    require_operator(who)
    now = rt.now()
    v = Violations()
    if end <= start:
        v.add("end_time", "must be after start_time")
    elif end <= now:
        v.add("end_time", "must be in the future")
    elif end - start > MAX_WINDOW:
        v.add("end_time", "a window lasts at most 366 days")
    if len(reason) > 400:
        v.add("reason", "at most 400 characters")
    v.raise_if_any()
    with rt.store.write() as tx:
        if kind == "nodes":
            node = visible_node(who, target_id)
            if node.status == DECOMMISSIONED:
                raise FailedPrecondition("the node is decommissioned", reason="NODE_DECOMMISSIONED")
            project_id, node_id = node.project_id, node.id
        else:
            project_id, node_id = owned_project(who, target_id).id, None
        window = MaintenanceWindow.create(
            project=project_id,
            node=node_id,
            created_by=who.user_id,
            start_time=start,
            end_time=end,
            reason=reason,
            state=node_health.SCHEDULED,
            next_action_time=start,
            create_time=tx.now,
        )
        tx.emit(
            "node.maintenance.created", f"maintenanceWindows/{window.id}", {"target": f"{kind}/{target_id}"}
        )
    return window


def list_maintenance_windows(
    who: Principal, kind: str, target_id: str, page: PageRequest
) -> Page[MaintenanceWindow]:
    require_operator(who)
    if kind == "nodes":
        node = visible_node(who, target_id)
        query = MaintenanceWindow.select().where(
            (MaintenanceWindow.node == node.id)
            | ((MaintenanceWindow.project == node.project_id) & MaintenanceWindow.node.is_null())
        )
    else:
        owned_project(who, target_id)
        query = MaintenanceWindow.select().where(MaintenanceWindow.project == target_id)
    return keyset_page(
        query, MaintenanceWindow.id, page, filters={"t": f"{kind}/{target_id}"}, descending=True
    )


# -- rewards ---------------------------------------------------------------------------


def bucket_key(node_id: str, start: datetime) -> str:
    return f"{node_id}:{start:%Y%m%dT%H}"


def credit_rewards(rt: Runtime, batch: int = 200, max_buckets: int = 48, budget_s: float = 10.0) -> int:
    """Scheduler task: credits every closed hour bucket of the due nodes, batch after
    batch within a time budget (the rest is still due next run). Returns entries written."""
    started = time.monotonic()
    written = 0
    while time.monotonic() - started < budget_s:
        due = list(
            Node.select(Node.id)
            .where(Node.reward_due_time <= rt.now())
            .order_by(Node.reward_due_time)
            .limit(batch)
        )
        written += sum(_credit_node(rt, row.id, max_buckets) for row in due)
        if len(due) < batch:
            break
    return written


def _credit_node(rt: Runtime, node_id: str, max_buckets: int) -> int:
    written = 0
    with rt.store.write() as tx:
        node = Node.select(Node, Project).join(Project).where(Node.id == node_id).first()
        if node is None or node.reward_due_time is None:
            return 0
        project = node.project
        buckets: list[datetime] = []
        cursor = node.reward_cursor
        while cursor + HOUR <= tx.now and len(buckets) < max_buckets:
            buckets.append(cursor)
            cursor += HOUR
        if not buckets:
            return 0
        finished = node.status == DECOMMISSIONED and cursor >= node.status_time
        # Claim the buckets by moving the cursor conditionally: a concurrent run wins or loses whole.
        won = (
            Node.update(reward_cursor=cursor, reward_due_time=None if finished else cursor + HOUR)
            .where((Node.id == node.id) & (Node.reward_cursor == node.reward_cursor))
            .execute()
        )
        if not won:
            return 0
        for start in buckets:
            end = start + HOUR
            up, _, excluded = measure(segments(node.id, start, end), [])
            # A mass outage is ours, not the operator's: it does not cost points either.
            credited = up + excluded
            points = int(project.points_per_up_hour * credited // 3600)
            if points <= 0:
                continue
            day = start.date().isoformat()
            used = (
                RewardEntry.select(peewee.fn.COALESCE(peewee.fn.SUM(RewardEntry.points), 0))
                .where(
                    (RewardEntry.owner == node.owner_id)
                    & (RewardEntry.project_id == project.id)
                    & (RewardEntry.day == day)
                )
                .scalar()
            )
            granted = max(0, min(points, project.reward_cap_per_day - int(used or 0)))
            RewardEntry.insert(
                owner=node.owner_id,
                project_id=project.id,
                node_id=node.id,
                bucket_key=bucket_key(node.id, start),
                bucket_start=start,
                bucket_end=end,
                day=day,
                up_seconds=credited,
                points=granted,
                capped=granted < points,
                create_time=tx.now,
            ).on_conflict_ignore().execute()
            written += 1
        if written:
            tx.emit("node.rewards.credited", f"users/{node.owner_id}", {"node": f"nodes/{node.id}"})
    return written


def _reward_owner(who: Principal, owner_id: str) -> str:
    require_operator(who)
    owner_id = owner_id or who.user_id
    if owner_id != who.user_id and not who.is_admin:
        raise PermissionDenied("only admins may read another operator's rewards", reason="NOT_OWNER")
    return owner_id


def reward_balance(who: Principal, owner_id: str) -> tuple[str, int, int]:
    owner_id = _reward_owner(who, owner_id)
    row = (
        RewardEntry.select(
            peewee.fn.COALESCE(peewee.fn.SUM(RewardEntry.points), 0), peewee.fn.COUNT(RewardEntry.id)
        )
        .where(RewardEntry.owner == owner_id)
        .tuples()
        .first()
    )
    return owner_id, int(row[0] or 0), int(row[1] or 0)


def list_reward_entries(who: Principal, owner_id: str, page: PageRequest) -> Page[RewardEntry]:
    owner_id = _reward_owner(who, owner_id)
    query = RewardEntry.select().where(RewardEntry.owner == owner_id)
    return keyset_page(query, RewardEntry.id, page, filters={"o": owner_id}, descending=True)
