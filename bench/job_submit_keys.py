"""SubmitJob one job per call through gRPC on PostgreSQL, side by side on one `coordd serve`:
no key, an `idempotency-key` header per call, a unique job key per call. Rounds alternate
the three; printed: calls/s and the server's CPU per call (from /proc) of each.

    .venv/bin/python bench/job_submit_keys.py [--calls 2000] [--producers 32] [--rounds 2]
        [--pg-admin-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jobs as bench_jobs
from common import start_coordd

from coordd_client.v1 import job_pb2, job_pb2_grpc

MODES = ("plain", "idempotency_key", "unique_key")


async def _round(port: int, token: str, pid: int, mode: str, calls: int, producers: int) -> dict[str, float]:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(4)]
    stubs = [job_pb2_grpc.JobServiceStub(c) for c in channels]
    left = [calls]

    async def produce(index: int) -> None:
        while left[0] > 0:
            left[0] -= 1
            meta = [("authorization", f"Bearer {token}")]
            request = job_pb2.SubmitJobRequest(
                kind=job_pb2.JOB_KIND_INFERENCE, model_ref="noop", input=job_pb2.Payload(data=b"{}")
            )
            if mode == "idempotency_key":
                meta.append(("idempotency-key", uuid.uuid4().hex))
            elif mode == "unique_key":
                request.unique.key = uuid.uuid4().hex
            await stubs[index % len(stubs)].SubmitJob(request, metadata=meta, timeout=60)

    cpu = bench_jobs._cpu_seconds(pid)
    started = time.perf_counter()
    try:
        await asyncio.gather(*(produce(i) for i in range(producers)))
    finally:
        for channel in channels:
            await channel.close()
    elapsed = time.perf_counter() - started
    cpu = bench_jobs._cpu_seconds(pid) - cpu
    return {"calls_per_s": round(calls / elapsed, 1), "server_cpu_ms_per_call": round(cpu * 1000 / calls, 3)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--producers", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    from coordd.logging import configure

    configure("console", "warning")
    data_dir = tempfile.mkdtemp(prefix="coordd-bench-keys-")
    pg = bench_jobs.PgDatabase(args.pg_admin_url, "keys")
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    try:
        total = args.calls * args.rounds * len(MODES)
        tokens = bench_jobs._prepare_coordd(data_dir, pg.url, 1, total, 0)
        env = {"COORDD_JWT_SECRET": bench_jobs.JWT_SECRET, "COORDD_DATABASE_URL": pg.url}
        proc, port, _ = start_coordd(env, data_dir=data_dir)
        try:
            for _ in range(args.rounds):
                for mode in MODES:
                    results[mode].append(
                        asyncio.run(_round(port, tokens[0], proc.pid, mode, args.calls, args.producers))
                    )
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        pg.drop()
        shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps({"benchmark": "job_submit_keys", "calls": args.calls, "rounds": results}, indent=2))


if __name__ == "__main__":
    main()
