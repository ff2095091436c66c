"""Planning against execution time of the job hot path's three statements on PostgreSQL.

A fresh database of N queued jobs; coordd's own `jobs.claim` and `jobs.complete_many` run batches
of 100 in-process, and the statements they send are captured (the claim, the lease check, and the
deferred completion UPDATE). Each captured statement is then run again under `EXPLAIN (ANALYZE,
TIMING OFF, SUMMARY)` in a transaction that is rolled back, 5 times; the medians per statement of
the last batch are printed as JSON, in ms per batch. It answers how much a prepared statement could
save (planning) against what the row writes cost (execution).

    PYTHONPATH=$PWD/server:$PWD/clients .venv/bin/python bench/job_statement_plans.py \
        [--jobs 20000] [--batches 30]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from job_complete_statements import fill_queue, migrated_runtime

from coordd.core.principal import Principal
from coordd.domain import jobs as job_domain
from coordd.store.jobs import queries


def _kind(sql: str) -> str:
    if "SKIP LOCKED" in sql:
        return "claim"
    if "state = 'succeeded'" in sql:
        return "completion UPDATE"
    return "lease check (SELECT ... FOR UPDATE)"


def _timed(db: Any, execute: Any, sql: str, params: Any) -> tuple[float, float]:
    prefix, body = "", sql
    if body.startswith("SET LOCAL"):  # the claim's planner settings, then the statement
        at = body.index("WITH c AS")
        prefix, body = body[:at], body[at:]
    plans, runs = [], []
    for _ in range(5):
        with db.atomic() as tx:  # rolled back: the rows stay as the batch left them
            if prefix:
                execute(prefix)
            explained = execute("EXPLAIN (ANALYZE, TIMING OFF, SUMMARY) " + body, params).fetchall()
            lines = [r[0] for r in explained]
            tx.rollback()
        plans.append(float(next(x for x in lines if x.startswith("Planning Time")).split()[2]))
        runs.append(float(next(x for x in lines if x.startswith("Execution Time")).split()[2]))
    return statistics.median(plans), statistics.median(runs)


def run(jobs: int, batches: int, pg_admin_url: str) -> dict[str, Any]:
    pg, rt = migrated_runtime(pg_admin_url, "plans")
    try:
        provider = fill_queue(rt, jobs)
        db = rt.store.db
        execute = db.execute_sql
        db.execute_sql("ANALYZE job")
        who = Principal(provider.id, frozenset({"provider"}), "bench")
        worker = job_domain.Worker(who.user_id, frozenset(), 0)
        output = job_domain.Payload(b"ok", "", hashlib.sha256(b"ok").hexdigest())
        captured: list[tuple[str, Any]] = []
        real_defer = queries.defer

        def capture(sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
            if "job" in sql:
                captured.append((sql, params))
            return execute(sql, params, *args, **kwargs)

        def capture_deferred(sql: str, params: Any = ()) -> None:
            if "succeeded" in sql:
                captured.append((sql, params))
            real_defer(sql, params)

        for _ in range(batches):
            captured.clear()
            db.execute_sql = capture  # type: ignore[method-assign]
            queries.defer = capture_deferred  # type: ignore[assignment]
            try:
                claimed = job_domain.claim(rt, worker, 100)
                leases = [job_domain.LeaseRef(x.job.id, x.job.attempt, x.lease_id) for x in claimed]
                job_domain.complete_many(rt, who, [(lease, output) for lease in leases])
            finally:
                db.execute_sql = execute  # type: ignore[method-assign]
                queries.defer = real_defer  # type: ignore[assignment]
        figures: dict[str, dict[str, float]] = {}
        for sql, params in captured:
            planning, execution = _timed(db, execute, sql, params)
            figures[_kind(sql)] = {"planning_ms": round(planning, 3), "execution_ms": round(execution, 3)}
        return {"benchmark": "job_statement_plans", "jobs": jobs, "batch": 100, "statements": figures}
    finally:
        rt.close()
        pg.drop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument(
        "--batches", type=int, default=30, help="claim+complete batches before the last is timed"
    )
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with contextlib.redirect_stdout(sys.stderr):  # the daemon's log lines, not the figures
        result = run(args.jobs, args.batches, args.pg_admin_url)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
