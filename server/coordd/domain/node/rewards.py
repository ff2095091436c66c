"""The rewards ledger: points for each closed hour a node was UP (a mass outage is ours, not
the operator's, and costs no points either), within a per-day cap."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from coordd.core.errors import PermissionDenied
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain.node.access import require_operator
from coordd.domain.node.uptime import measure, segments
from coordd.runtime import Runtime
from coordd.store.node import health, queries
from coordd.store.node.models import DECOMMISSIONED, RewardEntry

HOUR = timedelta(hours=1)


def bucket_key(node_id: str, start: datetime) -> str:
    return f"{node_id}:{start:%Y%m%dT%H}"


def credit_rewards(rt: Runtime, batch: int = 200, max_buckets: int = 48, budget_s: float = 10.0) -> int:
    """Scheduler task: credits every closed hour bucket of the due nodes, batch after
    batch within a time budget (the rest is still due next run). Returns entries written."""
    started = time.monotonic()
    written = 0
    while time.monotonic() - started < budget_s:
        due = health.reward_due_node_ids(rt.now(), batch)
        written += sum(_credit_node(rt, node_id, max_buckets) for node_id in due)
        if len(due) < batch:
            break
    return written


def _credit_node(rt: Runtime, node_id: str, max_buckets: int) -> int:
    written = 0
    with rt.store.write() as tx:
        node = queries.node_with_project(node_id)
        if node is None or node.reward_due_time is None:
            return 0
        project = node.project
        buckets: list[datetime] = []
        cursor = node.reward_cursor
        # A bucket is settled once an outage that began in it would have been detected
        # (outages count from the last beat, up to one detection window back).
        settle = timedelta(seconds=project.window_s)
        while cursor + HOUR + settle <= tx.now and len(buckets) < max_buckets:
            buckets.append(cursor)
            cursor += HOUR
        if not buckets:
            return 0
        finished = node.status == DECOMMISSIONED and cursor >= node.status_time
        # Claim the buckets by moving the cursor conditionally: a concurrent run wins or loses whole.
        if not health.advance_reward_cursor(
            node.id, node.reward_cursor, cursor, None if finished else cursor + HOUR
        ):
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
            used = health.points_used(node.owner_id, project.id, day)
            granted = max(0, min(points, project.reward_cap_per_day - used))
            health.insert_reward_entry(
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
            )
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
    totals = health.reward_totals(owner_id)
    return owner_id, totals.points, totals.entries


def list_reward_entries(who: Principal, owner_id: str, page: PageRequest) -> Page[RewardEntry]:
    owner_id = _reward_owner(who, owner_id)
    return health.page_reward_entries(owner_id, page)
