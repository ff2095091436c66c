"""A heartbeat flush next to a busy event loop: the per-row way against the one statement.

The tracker flushes every beating node's last-seen once a second, on a database thread,
while the event loop thread stays busy reading beats. A statement per row (executemany, and
a SELECT stepped row by row) gives the GIL up and takes it back once per row; each take
waits for the busy thread's switch interval. So this measures, side by side in one run, the
flush of `--nodes` rows as the daemon does it now (store/node/health.py: one UPDATE and one
status read for the batch) and the per-row way it did before (executemany of the UPDATE,
statuses in chunks of 500), each alone and next to a thread that only spins, as the loop
would. Prints JSON with the ratios.

    .venv/bin/python bench/flush_convoy.py [--nodes 10000] [--database-url postgresql://...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "server"), str(ROOT / "clients")]

from coordd.config import Settings  # noqa: E402
from coordd.core.ids import new_id  # noqa: E402
from coordd.store.auth.models import User  # noqa: E402
from coordd.store.db import Store  # noqa: E402
from coordd.store.migrations import migrate  # noqa: E402
from coordd.store.node import health  # noqa: E402
from coordd.store.node.models import Node, Project  # noqa: E402


def _fleet(store: Store, count: int) -> list[str]:
    now = datetime.now(UTC)
    with store.write():
        owner = User.create(
            email="bench@example.com",
            email_key="bench@example.com",
            display_name="bench",
            password_hash="!",
            roles="operator",
            create_time=now,
        )
        project = Project.create(
            owner=owner,
            display_name="bench",
            slug=f"bench-{new_id()[:8]}",
            heartbeat_interval_s=1.0,
            misses=2,
            grace_s=1.0,
            successes_before_up=1,
            mass_outage_share=0.5,
            mass_outage_min_nodes=10,
            points_per_up_hour=0,
            reward_cap_per_day=0,
            create_time=now,
            update_time=now,
        )
        ids = [new_id() for _ in range(count)]
        rows = [
            {
                "id": i,
                "project": project.id,
                "owner": owner.id,
                "display_name": "n",
                "status": "UP",
                "status_time": now,
                "deadline_time": now,
                "reward_cursor": now,
                "create_time": now,
                "update_time": now,
            }
            for i in ids
        ]
        for start in range(0, len(rows), 500):
            Node.insert_many(rows[start : start + 500]).execute()
    return sorted(ids)


def _per_row(rows: list[tuple[str, datetime, datetime | None]]) -> dict[str, str]:
    """The flush as it was: one UPDATE per row by executemany, statuses 500 ids at a time."""
    db = Node._meta.database
    p = db.param
    value = Node.last_seen_time.db_value
    db.cursor().executemany(
        f'UPDATE "nodes" SET "last_seen_time" = {p}, "deadline_time" = '
        f'CASE WHEN "deadline_time" IS NULL THEN NULL ELSE {p} END WHERE "id" = {p}',
        [(value(s), value(d), n) for n, s, d in rows],
    )
    ids = [n for n, _, _ in rows]
    out: dict[str, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join([p] * len(chunk))
        sql = f'SELECT "id", "status" FROM "nodes" WHERE "id" IN ({marks})'
        out.update(db.execute_sql(sql, chunk).fetchall())
    return out


def _one_statement(rows: list[tuple[str, datetime, datetime | None]]) -> dict[str, str]:
    health.store_last_seen_many(rows)
    return health.statuses_of([n for n, _, _ in rows])


def _spin(stop: threading.Event) -> None:
    """What a busy event loop looks like to the flush's thread: never waiting, always runnable."""
    while not stop.is_set():
        pass


def _timed(store: Store, flush: Any, ids: list[str], busy: bool) -> float:
    seen = datetime.now(UTC)
    rows = [(n, seen, seen + timedelta(seconds=3)) for n in ids]
    stop = threading.Event()
    spinner = threading.Thread(target=_spin, args=(stop,), daemon=True)
    if busy:
        spinner.start()
        time.sleep(0.05)
    started = time.perf_counter()
    with store.write():
        statuses = flush(rows)
    elapsed = time.perf_counter() - started
    stop.set()
    if busy:
        spinner.join()
    assert len(statuses) == len(ids)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # no migration lines
    data_dir = tempfile.mkdtemp(prefix="coordd-bench-flush-")
    settings = Settings(data_dir=data_dir, database_url=args.database_url)
    store = Store(settings)
    migrate(store)
    ids = _fleet(store, args.nodes)
    results: dict[str, dict[str, float]] = {}
    for name, flush in (("per_row", _per_row), ("one_statement", _one_statement)):
        for busy in (False, True):
            key = "next_to_busy_thread_s" if busy else "alone_s"
            best = min(_timed(store, flush, ids, busy) for _ in range(args.rounds))
            results.setdefault(name, {})[key] = round(best, 4)
    store.close()
    per_row, one = results["per_row"], results["one_statement"]
    print(
        json.dumps(
            {
                "nodes": args.nodes,
                "backend": store.backend,
                **results,
                "busy_per_row_vs_one_statement": round(
                    per_row["next_to_busy_thread_s"] / one["next_to_busy_thread_s"], 1
                ),
                "alone_per_row_vs_one_statement": round(per_row["alone_s"] / one["alone_s"], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
