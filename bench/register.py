"""Register throughput: C concurrent clients hammer one competition, on SQLite and PostgreSQL.

For each backend, side by side in one run:

- grpc: a real `coordd serve` process; C grpc.aio callers each send Register (with an
  `idempotency-key`, as real clients do) for distinct users until R registrations are done.
- grpc_without_idempotency_key: the same without the key (no idempotency records), to
  show what the two extra idempotency transactions per call cost.
- direct: the database ceiling: the same registration transaction
  (`coordd.domain.competition.register`) called from C threads in this process, no gRPC,
  no interceptors, no idempotency records.

Capacity is R/2, so half the calls take a seat and half join the waitlist. Each run reports
registrations/s, p50/p99 latency, and `oversold` (confirmed beyond capacity; must be 0).

    .venv/bin/python bench/register.py [--registrations 2000] [--concurrency 32]
        [--backends sqlite,postgresql] [--pg-admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile, start_coordd

from coordd.config import load_settings
from coordd.core.principal import Principal
from coordd.domain import competition
from coordd.runtime import Runtime
from coordd.store.auth.models import User
from coordd.store.competition.models import Competition, Registration
from coordd.store.migrations import migrate
from coordd_client.v1 import competition_pb2, competition_pb2_grpc

JWT_SECRET = "bench-register-" + "x" * 32
FAST_ARGON = {"argon2_memory_kib": 8, "argon2_time_cost": 1, "argon2_parallelism": 1}


def _summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    return {
        "registrations": len(latencies),
        "seconds": round(elapsed, 3),
        "registrations_per_s": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
    }


def _prepare(rt: Runtime, registrations: int) -> tuple[str, list[str]]:
    """Migrates, inserts the participants in bulk, creates and publishes one competition."""
    migrate(rt.store)
    now = rt.now()
    rows = []
    for _ in range(registrations + 1):
        tag = uuid.uuid4().hex
        rows.append(
            {
                "id": f"b{tag[:25]}",
                "email": f"{tag}@bench.example",
                "email_key": f"{tag}@bench.example",
                "display_name": tag[:8],
                "password_hash": "!",
                "roles": "participant,organizer",
                "create_time": now,
            }
        )
    with rt.store.write():
        for start in range(0, len(rows), 500):
            User.insert_many(rows[start : start + 500]).execute()
    organizer = Principal(user_id=rows[0]["id"], roles=frozenset({"organizer"}), kind="token")
    view = competition.create_competition(
        rt,
        organizer,
        competition.CompetitionInput(
            title="bench",
            capacity=registrations // 2,
            open_time=now - timedelta(minutes=1),
            close_time=now + timedelta(hours=1),
            start_time=now + timedelta(days=2),
            end_time=now + timedelta(days=3),
        ),
    )
    competition.publish_competition(rt, organizer, view.competition.id)
    return view.competition.id, [r["id"] for r in rows[1:]]


def _check(comp_id: str, capacity: int) -> dict[str, int]:
    comp = Competition.get_by_id(comp_id)
    confirmed = (
        Registration.select()
        .where((Registration.competition == comp_id) & (Registration.state == competition.CONFIRMED))
        .count()
    )
    waitlisted = (
        Registration.select()
        .where((Registration.competition == comp_id) & (Registration.state == competition.WAITLISTED))
        .count()
    )
    return {
        "capacity": capacity,
        "confirmed": confirmed,
        "waitlisted": waitlisted,
        "counter_confirmed": comp.confirmed,
        "oversold": max(confirmed - capacity, 0) + max(comp.confirmed - capacity, 0),
    }


def run_direct(settings_kw: dict[str, object], registrations: int, concurrency: int) -> dict[str, object]:
    settings = load_settings(None, env={}, **settings_kw, db_pool_size=concurrency + 4, **FAST_ARGON)
    rt = Runtime(settings)
    try:
        comp_id, users = _prepare(rt, registrations)
        pending = iter(users)
        lock = threading.Lock()
        latencies: list[float] = []

        def worker() -> None:
            while True:
                with lock:
                    user_id = next(pending, None)
                if user_id is None:
                    return
                who = Principal(user_id=user_id, roles=frozenset({"participant"}), kind="token")
                start = time.perf_counter()
                competition.register(rt, who, comp_id)
                latencies.append(time.perf_counter() - start)

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for future in [pool.submit(worker) for _ in range(concurrency)]:
                future.result()
        elapsed = time.perf_counter() - started
        return {**_summary(latencies, elapsed), **_check(comp_id, registrations // 2)}
    finally:
        rt.close()


async def _drive_grpc(
    port: int, tokens: list[str], comp_id: str, concurrency: int, keyed: bool
) -> tuple[list[float], float]:
    latencies: list[float] = []
    queue = list(reversed(tokens))
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
    stubs = [competition_pb2_grpc.CompetitionServiceStub(c) for c in channels]
    request = competition_pb2.RegisterRequest(competition=f"competitions/{comp_id}")

    async def worker(index: int) -> None:
        stub = stubs[index % len(stubs)]
        while queue:
            token = queue.pop()
            meta: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),)
            if keyed:
                meta = (*meta, ("idempotency-key", uuid.uuid4().hex))
            start = time.perf_counter()
            await stub.Register(request, metadata=meta, timeout=60)
            latencies.append(time.perf_counter() - start)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return latencies, time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()


def run_grpc(
    settings_kw: dict[str, object], registrations: int, concurrency: int, keyed: bool = True
) -> dict[str, object]:
    settings = load_settings(None, env={}, **settings_kw, jwt_secret=JWT_SECRET, **FAST_ARGON)
    rt = Runtime(settings)
    try:
        comp_id, users = _prepare(rt, registrations)
        now = datetime.now(UTC)
        tokens = [rt.tokens.issue(u, ["participant"], now)[0] for u in users]
    finally:
        rt.close()
    env = {"COORDD_JWT_SECRET": JWT_SECRET, "COORDD_SCHEDULER_ENABLED": "false"}
    if settings.database_url:
        env["COORDD_DATABASE_URL"] = settings.database_url
    proc, port, _ = start_coordd(env, data_dir=settings.data_dir)
    try:
        latencies, elapsed = asyncio.run(_drive_grpc(port, tokens, comp_id, concurrency, keyed))
    finally:
        proc.terminate()
        proc.wait(20)
    rt = Runtime(settings)
    try:
        return {**_summary(latencies, elapsed), **_check(comp_id, registrations // 2)}
    finally:
        rt.close()


class _PgDatabase:
    def __init__(self, admin_url: str) -> None:
        import psycopg2

        self.admin_url = admin_url
        self.name = f"coordd_bench_reg_{uuid.uuid4().hex[:10]}"
        conn = psycopg2.connect(admin_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.name}"')
        conn.close()
        parsed = urlparse(admin_url)
        self.url = parsed._replace(path=f"/{self.name}").geturl()

    def drop(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        conn.close()


def run_backend(backend: str, registrations: int, concurrency: int, pg_admin_url: str) -> dict[str, object]:
    results: dict[str, object] = {}
    modes = (
        ("direct", run_direct),
        ("grpc", run_grpc),
        ("grpc_without_idempotency_key", functools.partial(run_grpc, keyed=False)),
    )
    for mode, runner in modes:
        data_dir = tempfile.mkdtemp(prefix=f"coordd-bench-reg-{mode}-")
        pg = _PgDatabase(pg_admin_url) if backend == "postgresql" else None
        try:
            kw: dict[str, object] = {"data_dir": data_dir, "database_url": pg.url if pg else ""}
            results[mode] = runner(kw, registrations, concurrency)
        finally:
            if pg is not None:
                pg.drop()
            shutil.rmtree(data_dir, ignore_errors=True)
    grpc_rate = results["grpc"]["registrations_per_s"]  # type: ignore[index]
    direct_rate = results["direct"]["registrations_per_s"]  # type: ignore[index]
    results["ratio_grpc_over_direct"] = round(grpc_rate / direct_rate, 3) if direct_rate else None
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registrations", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    from coordd.logging import configure

    configure("console", "warning")
    out: dict[str, object] = {
        "benchmark": "register",
        "registrations": args.registrations,
        "capacity": args.registrations // 2,
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
    }
    for backend in args.backends.split(","):
        out[backend] = run_backend(backend, args.registrations, args.concurrency, args.pg_admin_url)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
