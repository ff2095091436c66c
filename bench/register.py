"""Register throughput: C concurrent clients hammer one competition, on SQLite and PostgreSQL.

For each backend, side by side in one run:

- grpc: a real `coordd serve` process; C grpc.aio callers each send Register (with an
  `idempotency-key`, as real clients do) for distinct users until R registrations are done.
- grpc_without_idempotency_key: the same without the key (no idempotency records), to
  show what the key costs (its record is written in the registration's own transaction).
- direct: the database ceiling: the same registration transaction
  (`coordd.domain.competition.register`, batched per competition as the server batches it)
  called from C threads in this process, no gRPC, no interceptors, no idempotency records.

Capacity is R/2, so half the calls take a seat and half join the waitlist. Each run reports
registrations/s, p50/p99 latency, CPU ms per registration (server, client and PostgreSQL: all
postgres processes on the machine, so other users of it count too), and `oversold` (confirmed
beyond capacity; must be 0).

    .venv/bin/python bench/register.py [--registrations 2000] [--concurrency 32]
        [--backends sqlite,postgresql] [--pg-admin-url postgresql://postgres@127.0.0.1:5432/postgres]
        [--py-spy DIR]

Per backend it also prints the ratios (keyed gRPC / direct, unkeyed gRPC / direct, keyed /
unkeyed) and `oversold_total` over the three runs (must be 0); at the end the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PgDatabase, percentile, start_coordd

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
        cpu = (time.process_time(), _postgres_cpu())
        with ThreadPoolExecutor(concurrency) as pool:
            for future in [pool.submit(worker) for _ in range(concurrency)]:
                future.result()
        elapsed = time.perf_counter() - started
        per = 1000 / max(len(latencies), 1)
        cpu_ms = {
            "process_cpu_ms_per_registration": round((time.process_time() - cpu[0]) * per, 3),
            "postgres_cpu_ms_per_registration": (
                round(_postgres_cpu_since(cpu[1]) * per, 3) if rt.store.is_postgres else None
            ),
        }
        return {**_summary(latencies, elapsed), **cpu_ms, **_check(comp_id, registrations // 2)}
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


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu() -> dict[int, float]:
    """CPU seconds of each postgres process on this machine (shared with other users of it)."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    found[int(entry.name)] = _cpu_s(int(entry.name))
            except OSError:
                continue
    return found


def _postgres_cpu_since(before: dict[int, float]) -> float:
    """CPU seconds postgres processes used since `before` (processes that exited meanwhile
    are lost; ones started meanwhile count from zero)."""
    return sum(max(cpu - before.get(pid, 0.0), 0.0) for pid, cpu in _postgres_cpu().items())


def _py_spy(pid: int, out: str) -> subprocess.Popen[bytes]:
    """Samples the server while it is driven (collapsed stacks, one line per stack)."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    cmd = [spy, "record", "-p", str(pid), "-o", out, "--format", "raw", "-r", "250", "--nonblocking"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_grpc(
    settings_kw: dict[str, object],
    registrations: int,
    concurrency: int,
    keyed: bool = True,
    profile: str = "",
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
    spy = _py_spy(proc.pid, profile) if profile else None
    cpu = (_cpu_s(proc.pid), time.process_time(), _postgres_cpu())
    try:
        latencies, elapsed = asyncio.run(_drive_grpc(port, tokens, comp_id, concurrency, keyed))
        server_s, client_s, pg_s = (
            _cpu_s(proc.pid) - cpu[0],
            time.process_time() - cpu[1],
            _postgres_cpu_since(cpu[2]),
        )
    finally:
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        proc.terminate()
        proc.wait(20)
    per = 1000 / max(len(latencies), 1)
    cpu_ms = {
        "server_cpu_ms_per_registration": round(server_s * per, 3),
        "client_cpu_ms_per_registration": round(client_s * per, 3),
        "postgres_cpu_ms_per_registration": round(pg_s * per, 3) if settings.database_url else None,
    }
    rt = Runtime(settings)
    try:
        return {**_summary(latencies, elapsed), **cpu_ms, **_check(comp_id, registrations // 2)}
    finally:
        rt.close()


def run_backend(
    backend: str, registrations: int, concurrency: int, pg_admin_url: str, profile_dir: str = ""
) -> dict[str, object]:
    results: dict[str, object] = {}
    spy = f"{profile_dir}/{backend}-grpc-keyed.txt" if profile_dir else ""
    spy_unkeyed = f"{profile_dir}/{backend}-grpc-unkeyed.txt" if profile_dir else ""
    modes = (
        ("direct", run_direct),
        ("grpc", functools.partial(run_grpc, profile=spy)),
        ("grpc_without_idempotency_key", functools.partial(run_grpc, keyed=False, profile=spy_unkeyed)),
    )
    for mode, runner in modes:
        data_dir = tempfile.mkdtemp(prefix=f"coordd-bench-reg-{mode}-")
        pg = PgDatabase(pg_admin_url, "reg") if backend == "postgresql" else None
        try:
            kw: dict[str, object] = {"data_dir": data_dir, "database_url": pg.url if pg else ""}
            results[mode] = runner(kw, registrations, concurrency)
        finally:
            if pg is not None:
                pg.drop()
            shutil.rmtree(data_dir, ignore_errors=True)
    grpc_rate = results["grpc"]["registrations_per_s"]  # type: ignore[index]
    unkeyed_rate = results["grpc_without_idempotency_key"]["registrations_per_s"]  # type: ignore[index]
    direct_rate = results["direct"]["registrations_per_s"]  # type: ignore[index]
    results["ratio_grpc_over_direct"] = round(grpc_rate / direct_rate, 3) if direct_rate else None
    results["ratio_grpc_unkeyed_over_direct"] = round(unkeyed_rate / direct_rate, 3) if direct_rate else None
    results["ratio_grpc_over_grpc_unkeyed"] = round(grpc_rate / unkeyed_rate, 3) if unkeyed_rate else None
    results["oversold_total"] = sum(
        int(results[mode]["oversold"])  # type: ignore[index]
        for mode in ("direct", "grpc", "grpc_without_idempotency_key")
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--registrations", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--py-spy",
        default="",
        metavar="DIR",
        help="sample each gRPC server with py-spy (pip install py-spy) into DIR/<backend>-grpc-*.txt",
    )
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
        out[backend] = run_backend(
            backend, args.registrations, args.concurrency, args.pg_admin_url, args.py_spy
        )
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
