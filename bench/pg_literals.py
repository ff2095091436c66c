"""Writing statement parameters into the SQL text: psycopg2's `mogrify` against
coordd.store.pg_literals.interpolate, side by side on one connection, for statements of the store's
shapes: a completion batch's UPDATE (the shape of store/jobs/queries.record_successes: 7 parameters a
job plus the ids), the lease check of a batch (3 a job) and a one-row statement. Prints JSON: us per
statement of each, the ratio, and whether the two texts are identical.

    PYTHONPATH=$PWD/server:$PWD/clients .venv/bin/python bench/pg_literals.py [--jobs 100] [--repeat 300]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import psycopg2

from coordd.store.pg_literals import interpolate


def _completion(jobs: int) -> tuple[str, list[Any]]:
    row = "(%s, CAST(%s AS bigint), CAST(%s AS bytea), %s, %s, CAST(%s AS bytea))"
    results = [(f"{i:026d}", 0, psycopg2.Binary(b"ok"), "", "a" * 64, os.urandom(64)) for i in range(jobs)]
    sql = (
        f"WITH v(id, fee, data, uri, digest, sig) AS (VALUES {', '.join([row] * jobs)})"
        " UPDATE job SET state = 'succeeded', finish_time = %s, purge_time = %s, fee = v.fee,"
        " output_data = v.data, output_uri = v.uri, output_digest = v.digest, attestation_key_id = %s,"
        f" attestation_sig = v.sig FROM v WHERE job.id = v.id AND job.id IN ({', '.join(['%s'] * jobs)})"
    )
    params = [x for r in results for x in r]
    params += [1_764_806_400_000_000, 1_765_411_200_000_000, "key-1", *(r[0] for r in results)]
    return sql, params


def _lease_check(jobs: int) -> tuple[str, list[Any]]:
    ids = [f"{i:026d}" for i in range(jobs)]
    sql = (
        f"SELECT id FROM job WHERE id IN ({', '.join(['%s'] * jobs)})"
        f" AND id || ':' || attempt || ':' || lease_id IN ({', '.join(['%s'] * jobs)}) AND provider = %s"
    )
    return sql, [*ids, *(f"{i}:1:{'0' * 24}" for i in ids), "0" * 26]


def _timed(fn: Any, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    conn = psycopg2.connect(args.url)
    cursor = conn.cursor()
    out: dict[str, Any] = {"benchmark": "pg_literals", "jobs": args.jobs, "repeat": args.repeat}
    cases = {
        "completion_update": _completion(args.jobs),
        "lease_check": _lease_check(args.jobs),
        "one_row": ("SELECT * FROM job WHERE id = %s AND attempt = %s", ["0" * 26, 1]),
    }
    for name, (sql, params) in cases.items():
        theirs = _timed(lambda sql=sql, params=params: cursor.mogrify(sql, params), args.repeat)
        ours = _timed(lambda sql=sql, params=params: interpolate(sql, params), args.repeat)
        out[name] = {
            "parameters": len(params),
            "psycopg2_mogrify_us": round(theirs, 1),
            "interpolate_us": round(ours, 1),
            "ratio_mogrify_over_interpolate": round(theirs / ours, 2),
            "identical_text": cursor.mogrify(sql, params).decode() == interpolate(sql, params),
        }
    conn.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
