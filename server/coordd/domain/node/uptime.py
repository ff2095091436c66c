"""Uptime, incidents and transitions: the stored timeline of each node and workload.

Uptime is computed from the stored transitions: seconds UP / seconds observed in the
window, where observed means UP or DOWN, minus maintenance windows and minus DOWN time
that began in a mass outage. Rewards (rewards.py) credit closed hour buckets from the same
timeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain.node.access import owned_project, require_operator, visible_node, visible_workload
from coordd.runtime import Runtime
from coordd.store.node import health, queries
from coordd.store.node.models import DOWN, UP, Incident, Node, Transition

WINDOWS_S = (86400, 7 * 86400, 30 * 86400)


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


class NodeTransition(NamedTuple):
    """A node's transition with the node as it is now (what WatchNodes sends)."""

    transition: Transition
    node: Node


def segments(subject_id: str, start: datetime, end: datetime) -> list[Segment]:
    """The subject's statuses over [start, end): the last transition before start, then each after."""
    before = health.transition_before(subject_id, start)
    rows = health.transitions_between(subject_id, start, end)
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
    rows = health.windows_overlapping(project_id, node_id, start, end)
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


def get_uptime(rt: Runtime, who: Principal, kind: str, subject_id: str) -> list[Uptime]:
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
    return health.page_incidents(parent_id, open_only, page)


def list_transitions(who: Principal, kind: str, parent_id: str, page: PageRequest) -> Page[Transition]:
    require_operator(who)
    if kind == "nodes":
        visible_node(who, parent_id)
    else:
        visible_workload(who, parent_id)
    return health.page_transitions(parent_id, page)


def transitions_after(project_id: str, after_id: int, limit: int = 200) -> list[NodeTransition]:
    transitions = health.node_transitions_after(project_id, after_id, limit)
    nodes = queries.nodes_by_ids({t.subject_id for t in transitions})
    return [NodeTransition(t, nodes[t.subject_id]) for t in transitions if t.subject_id in nodes]


def last_transition_id(project_id: str) -> int:
    return health.last_transition_id(project_id)
