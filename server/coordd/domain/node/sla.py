"""The SLA report of a project: each node's uptime over a period (a calendar month or any
range up to 400 days) with its downtime, maintenance, mass-outage time and incidents,
and the aggregate over every node. Read a page of nodes at a time (the api streams it;
CSV through `coordctl node sla --csv`)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime, timedelta

from coordd.core.errors import Violations
from coordd.core.principal import Principal
from coordd.domain.node.access import owned_project, require_operator
from coordd.domain.node.uptime import Uptime, month_bounds, uptime_between
from coordd.runtime import Runtime
from coordd.store.node import monitoring

MAX_PERIOD = timedelta(days=400)
PAGE = 200
CSV_COLUMNS = [
    "node",
    "name",
    "uptime_percent",
    "up_seconds",
    "down_seconds",
    "observed_seconds",
    "maintenance_seconds",
    "mass_outage_seconds",
    "incidents",
]


@dataclass(frozen=True)
class SlaRow:
    node_id: str  # "" for the aggregate
    display_name: str
    uptime: Uptime
    incidents: int


def period(
    rt: Runtime, month: str, start: datetime | None, end: datetime | None
) -> tuple[datetime, datetime]:
    now = rt.now()
    if month:
        return month_bounds(month, now)
    end = min(end or now, now)
    start = start or end - timedelta(days=30)
    v = Violations()
    if start >= end:
        v.add("start_time", "must be before end_time (and the past)")
    elif end - start > MAX_PERIOD:
        v.add("start_time", "a report covers at most 400 days")
    v.raise_if_any()
    return start, end


def check_access(who: Principal, project_id: str) -> None:
    require_operator(who)
    owned_project(who, project_id)


def page_rows(project_id: str, start: datetime, end: datetime, after_id: str, label: str) -> list[SlaRow]:
    nodes = monitoring.nodes_of_project_after(project_id, after_id, PAGE)
    counts = monitoring.incident_counts([n.id for n in nodes], start, end)
    return [
        SlaRow(
            n.id,
            n.display_name,
            uptime_between(n.id, project_id, n.id, start, end, label),
            counts.get(n.id, 0),
        )
        for n in nodes
    ]


def aggregate(rows: list[SlaRow], start: datetime, end: datetime, label: str) -> SlaRow:
    """Every node together: total UP over total observed."""
    u = [r.uptime for r in rows]
    total = Uptime(
        round((end - start).total_seconds()),
        sum(x.up_s for x in u),
        sum(x.observed_s for x in u),
        label,
        start,
        end,
        sum(x.down_s for x in u),
        sum(x.maintenance_s for x in u),
        sum(x.mass_outage_s for x in u),
    )
    return SlaRow("", f"all {len(rows)} nodes", total, sum(r.incidents for r in rows))


def csv_lines(rows: list[SlaRow], *, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for r in rows:
        u = r.uptime
        writer.writerow(
            [
                f"nodes/{r.node_id}" if r.node_id else "",
                r.display_name,
                f"{u.percent:.4f}",
                f"{u.up_s:.0f}",
                f"{u.down_s:.0f}",
                f"{u.observed_s:.0f}",
                f"{u.maintenance_s:.0f}",
                f"{u.mass_outage_s:.0f}",
                r.incidents,
            ]
        )
    return out.getvalue()
