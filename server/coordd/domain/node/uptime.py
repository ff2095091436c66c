"""Uptime, incidents and transitions: the stored timeline of each node and workload.

Uptime is computed from the stored transitions: seconds UP / seconds observed in the
window, where observed means UP or DOWN, minus maintenance windows and minus DOWN time
that began in a mass outage (both shown separately). A DOWN counts from the moment its
state really began (`effective_time`: the last beat that arrived), not from when it was
detected, so the detection delay is never uptime. Windows: the last 24 h, 7 d and 30 d,
and any calendar month (UTC). Rewards (rewards.py) credit closed hour buckets from the
same timeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple

from coordd.core.errors import Violations
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
    label: str = ""
    start: datetime | None = None
    end: datetime | None = None
    down_s: float = 0.0
    maintenance_s: float = 0.0
    mass_outage_s: float = 0.0

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
        # When the state really began (a DOWN: its last beat), never before the previous one.
        at = max(row.effective_time or row.time, cursor)
        if current is not None and at > cursor:
            out.append(Segment(cursor, at, current.to_status, current.excluded))
        current, cursor = row, at
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


def _seconds(spans: list[tuple[datetime, datetime]]) -> float:
    return sum((e - s).total_seconds() for s, e in spans)


def uptime_between(
    subject_id: str, project_id: str, node_id: str | None, start: datetime, end: datetime, label: str
) -> Uptime:
    """The subject's uptime over [start, end), with what was left out and why."""
    holes = maintenance_intervals(project_id, node_id, start, end)
    up, observed, excluded = measure(segments(subject_id, start, end), holes)
    window_s = round((end - start).total_seconds())
    return Uptime(window_s, up, observed, label, start, end, observed - up, _seconds(holes), excluded)


def month_bounds(month: str, now: datetime) -> tuple[datetime, datetime]:
    """`YYYY-MM` (UTC) as [first instant, first instant of the next month), the end capped at now."""
    v = Violations()
    try:
        year, number = (int(part) for part in month.split("-"))
        if len(month) != 7 or not 1 <= number <= 12 or not 2000 <= year <= 9999:
            raise ValueError
        start = datetime(year, number, 1, tzinfo=now.tzinfo)
    except ValueError:
        v.add("month", "a calendar month as YYYY-MM")
        v.raise_if_any()
        raise AssertionError("unreachable") from None
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=now.tzinfo)
    if start > now:
        v.add("month", "must not be in the future")
        v.raise_if_any()
    return start, min(end, now)


def _label(window_s: int) -> str:
    return f"{window_s // 86400}d" if window_s >= 86400 * 2 else f"{window_s // 3600}h"


def get_uptime(rt: Runtime, who: Principal, kind: str, subject_id: str, month: str = "") -> list[Uptime]:
    require_operator(who)
    if kind == "nodes":
        node = visible_node(who, subject_id)
        project_id, node_id = node.project_id, node.id
    else:
        workload = visible_workload(who, subject_id)
        project_id, node_id = workload.project_id, None
    now = rt.now()
    bounds = [(now - timedelta(seconds=s), now, _label(s)) for s in WINDOWS_S]
    if month:
        bounds.append((*month_bounds(month, now), month))
    return [uptime_between(subject_id, project_id, node_id, s, e, label) for s, e, label in bounds]


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
