"""How far the job-store redesign (docs/job-store-v2.md) could take claim+complete on this machine:
coordd today, that design's ceiling (bench/job_store_ceiling_server.py: no coordd code, the
narrow hot row, one statement per claim and per ack, a worker stream of raw frames) with one
envelope per job and with one per batch, and pgqueuer, on the same PostgreSQL in one run.

Each side drains the same N no-op jobs with W workers taking B jobs at a time. The ceiling's
jobs are loaded with COPY before the phase (enqueue is not what it measures). Reported per side:
jobs/s and CPU per job of the server (or pgqueuer's workers), the bench client and the bench
database's PostgreSQL, and each side's ratio to pgqueuer in the same run. The ceiling leaves
out what coordd must also do (tokens, caps, fair share, the job graph, the ledger, events), so a
ratio it cannot reach is out of reach of any implementation of the design on this machine.

    .venv/bin/python bench/job_store_ceiling.py [--jobs 20000] [--workers 8] [--batch 100] [--no-coordd]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from array import array
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jobs as bench_jobs
from common import PgDatabase, percentile, wait_for_port
from job_store_ceiling_server import METHOD, SCHEMA, pack_blobs

OUTPUT = b"ok"


async def _load(url: str, jobs: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA)
        now = datetime.now(UTC)
        digest = hashlib.sha256(b"{}").hexdigest()
        await conn.copy_records_to_table(
            "job",
            records=[
                (i, "inference", "1" * 26, "noop", b"{}", digest, now, 3, 60_000, 0, None, None, None)
                for i in range(1, jobs + 1)
            ],
        )
        await conn.copy_records_to_table(
            "job_queue", records=[(i, 0, 0, None, 0) for i in range(1, jobs + 1)]
        )
        await conn.execute("VACUUM ANALYZE job")
        await conn.execute("VACUUM ANALYZE job_queue")
    finally:
        await conn.close()


def _servers_cpu(pids: list[int]) -> float:
    return sum(bench_jobs._cpu_seconds(pid) for pid in pids)


async def _drain(port: int, server_pids: list[int], jobs: int, workers: int, batch: int) -> dict[str, Any]:
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=bench_jobs._OWN_CONNECTION) for _ in range(4)
    ]
    claimed = 0
    seen: set[int] = set()
    duplicates = 0
    attested = 0
    last_ack = [0.0]
    round_ms: list[float] = []
    outputs = pack_blobs([OUTPUT] * batch)

    async def work(index: int) -> None:
        nonlocal claimed, duplicates, attested
        call = channels[index % len(channels)].stream_stream(METHOD)()
        await call.write(struct.pack("<II", batch, 0))
        asked = time.perf_counter()
        while True:
            frame = await call.read()
            round_ms.append((time.perf_counter() - asked) * 1000)
            signed = struct.unpack_from("<I", frame)[0]
            lengths = array("I")
            lengths.frombytes(frame[4 : 4 + 4 * signed])
            offset = 4 + 4 * signed + sum(lengths) + 64 * signed
            if signed:
                attested += 1
                last_ack[0] = time.perf_counter()
            count = struct.unpack_from("<I", frame, offset)[0]
            ids = array("q")
            ids.frombytes(frame[offset + 4 : offset + 4 + 8 * count])
            for job_id in ids:
                if job_id in seen:
                    duplicates += 1
                seen.add(job_id)
            claimed += count
            if not count and claimed >= jobs:
                break
            want = batch if claimed < jobs else 0
            body = outputs if count == batch else pack_blobs([OUTPUT] * count)
            await call.write(struct.pack("<II", want, count) + ids.tobytes() + body)
            asked = time.perf_counter()
        await call.done_writing()

    server_cpu = _servers_cpu(server_pids)
    client_cpu = bench_jobs._cpu_seconds(os.getpid(), children=False)
    db_cpu = bench_jobs._postgres_cpu_seconds(own=True)
    started = time.perf_counter()
    try:
        await asyncio.gather(*(work(i) for i in range(workers)))
    finally:
        for channel in channels:
            await channel.close()
    work_s = last_ack[0] - started
    return {
        "claim_complete_seconds": round(work_s, 2),
        "claim_complete_jobs_per_s": bench_jobs._rate(jobs, work_s),
        # A worker's round trip: its acks and its next claim, answered in one frame.
        "round_trip_ms_p50_p99": [round(percentile(round_ms, q), 1) for q in (50, 99)],
        "completed": len(seen),
        "double_claims": duplicates,
        "claim_complete_cpu_ms_per_job": {
            "server": round((_servers_cpu(server_pids) - server_cpu) * 1000 / jobs, 3),
            "bench_client": round(
                (bench_jobs._cpu_seconds(os.getpid(), children=False) - client_cpu) * 1000 / jobs, 3
            ),
            "postgres_bench_db": round(
                (bench_jobs._postgres_cpu_seconds(own=True) - db_cpu) * 1000 / jobs, 3
            ),
        },
    }


def run_ceiling(
    jobs: int, workers: int, batch: int, sign: str, pg_admin_url: str, processes: int = 1
) -> dict[str, Any]:
    """`processes` servers share one port (SO_REUSEPORT, on purpose); the kernel spreads the
    bench's 4 connections over them."""
    pg = PgDatabase(pg_admin_url, "ceiling")
    folder = Path(tempfile.mkdtemp(prefix="job-ceiling-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(_load(pg.url, jobs))
        server = [sys.executable, str(Path(__file__).parent / "job_store_ceiling_server.py")]
        port = 0
        for slot in range(processes):
            port_file = folder / f"port{slot}"
            shared = [str(port), str(slot), str(processes)] if processes > 1 else []
            procs.append(subprocess.Popen([*server, str(port_file), pg.url, sign, *shared]))
            port = wait_for_port(procs[-1], port_file)
        try:
            result = asyncio.run(_drain(port, [p.pid for p in procs], jobs, workers, batch))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
        if result["completed"] != jobs or result["double_claims"]:
            raise RuntimeError(f"the ceiling lost or repeated jobs: {result}")
        return {"sign": sign, "processes": processes, **result}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        pg.drop()


def _total(side: dict[str, Any]) -> float:
    cpu = side["claim_complete_cpu_ms_per_job"]
    return round(sum(v for k, v in cpu.items() if k != "postgres"), 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--no-coordd", action="store_true", help="leave coordd itself out of the run")
    parser.add_argument(
        "--server-processes", type=int, default=1, help="ceiling servers sharing the port (SO_REUSEPORT)"
    )
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    from coordd.logging import configure

    configure("console", "warning")
    out: dict[str, Any] = {
        "benchmark": "job_store_ceiling",
        "jobs": args.jobs,
        "workers": args.workers,
        "batch": args.batch,
        "cpus": os.cpu_count(),
    }
    # pgqueuer runs between the two ceilings: its rate drifts between runs (6,800-11,400 jobs/s
    # on one quiet machine), so its neighbours share its conditions.
    sides = {
        "ceiling_envelope_per_job": lambda: run_ceiling(
            args.jobs, args.workers, args.batch, "job", args.pg_admin_url, args.server_processes
        ),
        "pgqueuer": lambda: bench_jobs.run_pgqueuer(
            args.jobs, args.workers, 32, args.batch, args.pg_admin_url
        ),
        "ceiling_envelope_per_batch": lambda: run_ceiling(
            args.jobs, args.workers, args.batch, "batch", args.pg_admin_url, args.server_processes
        ),
    }
    if not args.no_coordd:
        sides["coordd"] = lambda: bench_jobs.run_coordd(
            "postgresql", args.jobs, args.workers, 32, args.batch, 0, args.pg_admin_url, 1, 0
        )
    for name, run in sides.items():
        out[name] = run()
    theirs = out["pgqueuer"]["claim_complete_jobs_per_s"]
    out["cpu_ms_per_job_total"] = {name: _total(out[name]) for name in sides}
    out["ratio_claim_complete_over_pgqueuer"] = {
        name: round(out[name]["claim_complete_jobs_per_s"] / theirs, 3)
        for name in sides
        if name != "pgqueuer"
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
