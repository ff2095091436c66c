"""Where one worker's claim+complete loop spends its time, statement by statement, in-process.

coordd's `jobs.claim` and `jobs.complete_many` called by one thread (as the servicer calls them, no
gRPC), batches of 100, on a fresh PostgreSQL database of N queued jobs. Prints JSON: this process's
CPU and the bench database's PostgreSQL CPU per job (its backends plus the server's background
processes: `_postgres_cpu_seconds(own=True)` of bench/jobs.py), wall time per job of each kind of
statement, the EXPLAIN ANALYZE
of the first completion UPDATE, and the job table's update / HOT update counters.

    PYTHONPATH=$PWD/server:$PWD/clients .venv/bin/python bench/job_complete_statements.py --jobs 20000
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import jobs as bench_jobs

from coordd.core.principal import Principal
from coordd.domain import auth
from coordd.domain import jobs as job_domain
from coordd.runtime import Runtime
from coordd.store.migrations import migrate


def _kind(sql: str) -> str:
    if sql.startswith("SET LOCAL"):
        return "claim"
    if "UPDATE job SET state = 'succeeded'" in sql:
        return "complete (lease check inside)" if "v.lease" in sql else "complete (after the lock)"
    if "FOR UPDATE" in sql and "SKIP" not in sql:
        return "lock leased rows"
    return sql.split("(")[0][:40].strip()


def migrated_runtime(pg_admin_url: str, name: str) -> tuple[Any, Runtime]:
    """A fresh PostgreSQL database (bench_jobs.PgDatabase: drop it when done) and an in-process
    Runtime on it, migrated."""
    pg = bench_jobs.PgDatabase(pg_admin_url, name)
    settings = bench_jobs.load_settings(
        None,
        env={},
        data_dir=tempfile.mkdtemp(prefix=f"coordd-bench-{name}-"),
        database_url=pg.url,
        jwt_secret=bench_jobs.JWT_SECRET,
        **bench_jobs.FAST_ARGON,
    )
    rt = Runtime(settings)
    migrate(rt.store)
    return pg, rt


def fill_queue(rt: Runtime, jobs: int) -> Any:
    """A submitter with `jobs` queued no-op jobs, and a provider to run them (returned)."""
    tag = uuid.uuid4().hex[:8]
    submitter = auth.create_user(
        rt, f"s-{tag}@bench.example", "bench-password-1", "", ["participant"], self_service=False
    )
    provider = auth.create_user(
        rt, f"p-{tag}@bench.example", "bench-password-1", "", ["provider"], self_service=False
    )
    spec = job_domain.make_spec(
        "inference", "noop", job_domain.Payload(b"{}", "", ""), [], 0, 0, 0, 0, None, None, None, None
    )
    for start in range(0, jobs, 1000):
        with rt.store.write() as tx:
            job_domain.insert_jobs(tx, submitter.id, [spec] * min(1000, jobs - start))
    return provider


def run(jobs: int, batch: int, pg_admin_url: str, drop_indexes: list[str]) -> dict[str, Any]:
    pg, rt = migrated_runtime(pg_admin_url, "statements")
    try:
        for name in drop_indexes:  # what an index costs the hot path (a measurement, not a proposal)
            rt.store.db.execute_sql(f'DROP INDEX "{name}"')
        provider = fill_queue(rt, jobs)
        db = rt.store.db
        execute = db.execute_sql
        timings: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
        plan: list[str] = []

        def timed(sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
            kind = _kind(sql)
            if kind.startswith("complete") and not plan:
                execute("SAVEPOINT explain")
                rows = execute("EXPLAIN (ANALYZE, COSTS OFF) " + sql, params).fetchall()
                plan.extend(r[0] for r in rows if "ANY" not in r[0])
                execute("ROLLBACK TO SAVEPOINT explain")
            started = time.perf_counter()
            result = execute(sql, params, *args, **kwargs)
            entry = timings[kind]
            entry[0] += 1
            entry[1] += time.perf_counter() - started
            return result

        db.execute_sql = timed  # type: ignore[method-assign]
        who = Principal(provider.id, frozenset({"provider"}), "bench")
        worker = job_domain.Worker(who.user_id, frozenset(), 0)
        output = job_domain.Payload(b"ok", "", hashlib.sha256(b"ok").hexdigest())
        cpu, db_cpu = time.process_time(), bench_jobs._postgres_cpu_seconds(own=True)
        started = time.perf_counter()
        done = 0
        while claimed := job_domain.claim(rt, worker, batch):
            leases = [job_domain.LeaseRef(x.job.id, x.job.attempt, x.lease_id) for x in claimed]
            results = job_domain.complete_many(rt, who, [(lease, output) for lease in leases])
            done += sum(1 for r in results if isinstance(r, job_domain.Attestation))
        wall = time.perf_counter() - started
        cpu, db_cpu = time.process_time() - cpu, bench_jobs._postgres_cpu_seconds(own=True) - db_cpu
        db.execute_sql = execute  # type: ignore[method-assign]
        counters = execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'job'"
        ).fetchone()
        return {
            "benchmark": "job_complete_statements",
            "jobs": jobs,
            "batch": batch,
            "dropped_indexes": drop_indexes,
            "completed": done,
            "wall_us_per_job": round(wall * 1e6 / jobs, 1),
            "cpu_us_per_job": {
                "coordd_in_process": round(cpu * 1e6 / jobs, 1),
                "postgres_bench_db": round(db_cpu * 1e6 / jobs, 1),
            },
            "statements": {
                kind: {"count": n, "wall_us_per_job": round(t * 1e6 / jobs, 1)}
                for kind, (n, t) in sorted(timings.items(), key=lambda x: -x[1][1])
            },
            "first_completion_plan": plan,
            # Reported by the statistics collector, which may lag a little behind.
            "job_updates": {"n_tup_upd": counters[0], "n_tup_hot_upd": counters[1]},
        }
    finally:
        rt.close()
        pg.drop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--drop-index", action="append", default=[], help="an index on job to drop first")
    args = parser.parse_args()
    with contextlib.redirect_stdout(sys.stderr):  # the daemon's log lines, not the figures
        result = run(args.jobs, args.batch, args.pg_admin_url, args.drop_index)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
