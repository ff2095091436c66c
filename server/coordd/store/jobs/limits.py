"""The statements of concurrency caps: the caps (read on every claim: an empty table keeps
the claim on its single statement), the caps locked for a capped claim (PostgreSQL: FOR
UPDATE, so capped claims on every replica take turns and each counts what the previous one
committed), the running jobs they count, and the candidates of a capped claim."""

from __future__ import annotations

import json
from datetime import datetime
from typing import NamedTuple

from coordd.store.db import Store
from coordd.store.jobs.models import JobLimit
from coordd.store.jobs.queries import CLAIM_SIZE_SQL, claimable_where


class Limit(NamedTuple):
    scope: str
    key: str
    max_running: int


def all_limits(store: Store, lock: bool = False) -> list[Limit]:
    sql = "SELECT scope, key, max_running FROM job_limit ORDER BY scope, key"
    if lock and store.is_postgres:
        sql += " FOR UPDATE"
    return [Limit(r[0], r[1], int(r[2])) for r in store.db.execute_sql(sql).fetchall()]


def set_limit(scope: str, key: str, max_running: int) -> None:
    JobLimit.insert(scope=scope, key=key, max_running=max_running).on_conflict(
        conflict_target=[JobLimit.scope, JobLimit.key], update={JobLimit.max_running: max_running}
    ).execute()


def delete_limit(scope: str, key: str) -> int:
    return JobLimit.delete().where((JobLimit.scope == scope) & (JobLimit.key == key)).execute()


_GROUP = {"submitter": "j.submitter", "model": "j.model_ref"}


def running_counts(store: Store, limits: list[Limit]) -> dict[tuple[str, str], int]:
    """Running jobs per (scope, key) the caps count: per submitter, per model ref, per label
    (through `job_lease_due`: a job is running exactly while it has a lease expiry)."""
    p = store.db.param
    out: dict[tuple[str, str], int] = {}
    running = "j.state = 'running' AND j.lease_expire_time IS NOT NULL"
    for scope in ("submitter", "model", "label"):
        keys = sorted({lim.key for lim in limits if lim.scope == scope})
        if not keys:
            continue
        if scope == "label":
            sql = (
                "SELECT l.label, COUNT(*) FROM job_label l JOIN job j ON j.id = l.job_id"
                f" WHERE {running} AND l.label IN ({', '.join([p] * len(keys))}) GROUP BY l.label"
            )
            params: list[object] = list(keys)
        elif "*" in keys and scope == "submitter":
            sql = f"SELECT j.submitter, COUNT(*) FROM job j WHERE {running} GROUP BY j.submitter"
            params = []
        else:
            column = _GROUP[scope]
            sql = (
                f"SELECT {column}, COUNT(*) FROM job j WHERE {running}"
                f" AND {column} IN ({', '.join([p] * len(keys))}) GROUP BY {column}"
            )
            params = list(keys)
        for key, count in store.db.execute_sql(sql, params).fetchall():
            out[(scope, key)] = int(count)
    return out


class Candidate(NamedTuple):
    id: str
    submitter: str
    model_ref: str
    labels: list[str]
    size: int


def capped_candidates(
    store: Store,
    now: datetime,
    labels: frozenset[str],
    gpus: int,
    limit: int,
    job_overhead: int,
    full_submitters: list[str],
    full_models: list[str],
    full_labels: list[str],
    only_job: str | None = None,
) -> list[Candidate]:
    """Up to `limit` claimable jobs in claim order (only `only_job`, if given), skipping
    those of a submitter, model or label already at its cap, locked (PostgreSQL: FOR UPDATE
    SKIP LOCKED)."""
    p = store.db.param
    where, params = claimable_where(store, now, labels, gpus)
    if only_job is not None:
        where.append(f"j.id = {p}")
        params.append(only_job)
    if full_submitters:
        where.append(f"j.submitter NOT IN ({', '.join([p] * len(full_submitters))})")
        params.extend(full_submitters)
    if full_models:
        where.append(f"j.model_ref NOT IN ({', '.join([p] * len(full_models))})")
        params.extend(full_models)
    if full_labels:
        where.append(
            "NOT EXISTS (SELECT 1 FROM job_label f WHERE f.job_id = j.id"
            f" AND f.label IN ({', '.join([p] * len(full_labels))}))"
        )
        params.extend(full_labels)
    size = f"{CLAIM_SIZE_SQL[store.is_postgres]} + {int(job_overhead)}"
    sql = (
        f"SELECT j.id, j.submitter, j.model_ref, j.labels, {size} FROM job j WHERE {' AND '.join(where)}"
        f" ORDER BY j.priority DESC, j.fair_seq, j.id LIMIT {p}"
    )
    if store.is_postgres:
        sql += " FOR UPDATE SKIP LOCKED"
    rows = store.db.execute_sql(sql, [*params, limit]).fetchall()
    return [Candidate(r[0], r[1], r[2], json.loads(r[3]) if r[3] else [], int(r[4])) for r in rows]
