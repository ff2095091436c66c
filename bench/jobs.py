"""Job queue throughput: coordd (through gRPC) vs pgqueuer, side by side in one run.

Workload, for each system: enqueue N no-op jobs (C concurrent producers, one job per call),
then W workers claim and complete all of them. Reported: enqueue jobs/s, claim+complete
jobs/s, and enqueue->start latency p50/p99 (start = the moment a worker has the job in hand;
jobs are all enqueued before workers start, so this is mostly time spent waiting in line).

- coordd: a real `coordd serve` process on SQLite and on PostgreSQL. Producers call
  SubmitJob; workers long-poll ClaimJobs(max_jobs=B) and ack with BatchCompleteJobs, each
  completion signed (Ed25519 attestation) and recorded with its attempt row. `--budget`
  above 0 also moves money through the ledger for every job (hold, payment, fee).
- pgqueuer (PyPI, the `bench` extra): the same N jobs on the same PostgreSQL server (its own
  database), enqueued one per call through an asyncpg pool by C producers, drained by W
  QueueManagers (batch size B) running a no-op entrypoint in this process.

- `--worker-stream`: coordd on PostgreSQL once more, its workers on the WorkJobs stream through
  `coordd_client.worker.JobWorker` (leases and completions as columns, a batch's completions
  and the next claim in one message and one transaction): `coordd_postgresql_stream`.

The figures to watch are `ratio_claim_complete_coordd_pg_over_pgqueuer` and, with
`--worker-stream`, `ratio_claim_complete_coordd_pg_stream_over_pgqueuer`.

    .venv/bin/python bench/jobs.py [--jobs 20000] [--workers 8] [--batch 100] [--producers 32]
        [--budget 0] [--backends sqlite,postgresql] [--pg-admin-url postgresql://postgres@127.0.0.1:5432/postgres]
        [--submit-batch 1] [--processes 0] [--worker-stream] [--no-floor]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PgDatabase, percentile, start_coordd, wait_for_port

from coordd.config import load_settings
from coordd.domain import auth, ledger
from coordd.runtime import Runtime
from coordd.store.migrations import migrate
from coordd_client.v1 import job_pb2, job_pb2_grpc

JWT_SECRET = "bench-jobs-" + "x" * 32
# A TCP connection per channel (grpc shares one between channels to the same target otherwise):
# with `--processes`, the kernel spreads connections, not calls, over the serving processes.
_OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
FAST_ARGON = {"argon2_memory_kib": 8, "argon2_time_cost": 1, "argon2_parallelism": 1}


def _cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU time of a process, and of its live children (a `--processes`
    supervisor's serving processes) unless `children` is false (Linux /proc), to show where a
    phase spends CPU."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split() if children else []
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(_cpu_seconds(int(kid)) for kid in kids)


def _postgres_cpu_seconds(own: bool = False) -> float:
    """CPU time of every live PostgreSQL process on this machine: the database's share of a phase.
    With `own`, only the backends serving this bench's databases (`coordd_bench_*`) and the
    server's own background processes (WAL writer, checkpointer, ...): other engineers' tests
    on the same PostgreSQL server are then left out."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if own:
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "(postgres" not in stat and "(postmaster" not in stat:
            continue
        if own and ("(" in title.split(":", 2)[-1] or "[local]" in title) and " coordd_bench_" not in title:
            continue  # a client backend of another database
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds else 0.0


def _latency(values: list[float]) -> dict[str, float]:
    return {
        "enqueue_to_start_p50_ms": round(percentile(values, 50) * 1000, 1),
        "enqueue_to_start_p99_ms": round(percentile(values, 99) * 1000, 1),
    }


# -- coordd ---------------------------------------------------------------------------------


def _prepare_coordd(data_dir: str, database_url: str, workers: int, jobs: int, budget: int) -> list[str]:
    """Users created directly in the database; returns tokens: [submitter, provider...]."""
    settings = load_settings(
        None, env={}, data_dir=data_dir, database_url=database_url, jwt_secret=JWT_SECRET, **FAST_ARGON
    )
    rt = Runtime(settings)
    try:
        migrate(rt.store)
        now = datetime.now(UTC)
        tag = uuid.uuid4().hex[:8]
        submitter = auth.create_user(
            rt, f"submit-{tag}@bench.example", "bench-password-1", "", ["participant"], self_service=False
        )
        if budget:
            with rt.store.write() as tx:
                ledger.deposit(tx, submitter.id, budget * jobs, "bench")
        tokens = [rt.tokens.issue(submitter.id, ["participant"], now)[0]]
        for i in range(workers):
            provider = auth.create_user(
                rt, f"w{i}-{tag}@bench.example", "bench-password-1", "", ["provider"], self_service=False
            )
            tokens.append(rt.tokens.issue(provider.id, ["provider"], now)[0])
        return tokens
    finally:
        rt.close()


async def _drive_coordd(
    port: int,
    tokens: list[str],
    jobs: int,
    producers: int,
    batch: int,
    budget: int,
    server_pid: int = 0,
    submit_batch: int = 1,
    worker_stream: bool = False,
) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_OWN_CONNECTION) for _ in range(4)]
    stubs = [job_pb2_grpc.JobServiceStub(c) for c in channels]
    submit_meta = (("authorization", f"Bearer {tokens[0]}"),)
    request = job_pb2.SubmitJobRequest(
        kind=job_pb2.JOB_KIND_INFERENCE,
        model_ref="noop",
        input=job_pb2.Payload(data=b"{}"),
        budget=budget,
    )
    remaining = jobs

    async def produce(index: int) -> None:
        nonlocal remaining
        stub = stubs[index % len(stubs)]
        while remaining > 0:
            count = min(submit_batch, remaining)
            remaining -= count
            if submit_batch == 1:
                await stub.SubmitJob(request, metadata=submit_meta, timeout=60)
            else:
                batch_request = job_pb2.BatchSubmitJobsRequest(requests=[request] * count)
                await stub.BatchSubmitJobs(batch_request, metadata=submit_meta, timeout=60)

    try:
        server_cpu, client_cpu = _cpu_seconds(server_pid), _cpu_seconds(os.getpid(), children=False)
        db_cpu = _postgres_cpu_seconds()
        started = time.perf_counter()
        await asyncio.gather(*(produce(i) for i in range(producers)))
        enqueue_s = time.perf_counter() - started
        enqueue_cpu = {
            "server": round((_cpu_seconds(server_pid) - server_cpu) * 1000 / jobs, 3),
            "bench_client": round((_cpu_seconds(os.getpid(), children=False) - client_cpu) * 1000 / jobs, 3),
            "postgres": round((_postgres_cpu_seconds() - db_cpu) * 1000 / jobs, 3),
        }

        if worker_stream:
            drained = await _drain_stream(channels, tokens[1:], jobs, batch, server_pid)
        else:
            drained = await _drain(stubs, tokens[1:], jobs, batch, server_pid)
    finally:
        for channel in channels:
            await channel.close()
    return {
        "enqueue_seconds": round(enqueue_s, 2),
        "enqueue_jobs_per_s": _rate(jobs, enqueue_s),
        "enqueue_cpu_ms_per_job": enqueue_cpu,
        **drained,
    }


async def _drain(
    stubs: list[job_pb2_grpc.JobServiceStub], tokens: list[str], jobs: int, batch: int, server_pid: int
) -> dict[str, Any]:
    """One worker per token: ClaimJobs(max_jobs=batch, wait=1s), then BatchCompleteJobs for
    the claimed jobs, until `jobs` are done. CPU per job of the server, this process and
    PostgreSQL is measured over the phase."""
    done = 0
    seen: set[str] = set()
    duplicates = 0
    errors = 0
    latencies: list[float] = []
    wait = job_pb2.ClaimJobsRequest(max_jobs=batch)
    wait.wait.FromTimedelta(timedelta(seconds=1))
    output = job_pb2.Payload(data=b"ok")
    last_ack = [0.0]
    claim_ms: list[float] = []
    complete_ms: list[float] = []
    sizes: list[int] = []

    async def work(index: int) -> None:
        nonlocal done, duplicates, errors
        stub = stubs[index % len(stubs)]
        meta = (("authorization", f"Bearer {tokens[index]}"),)
        while done < jobs:
            asked = time.perf_counter()
            claimed = (await stub.ClaimJobs(wait, metadata=meta, timeout=60)).jobs
            now = time.time()
            if not claimed:
                continue
            claim_ms.append((time.perf_counter() - asked) * 1000)
            sizes.append(len(claimed))
            for leased in claimed:
                latencies.append(now - leased.job.create_time.ToMicroseconds() / 1e6)
                if leased.job.name in seen:
                    duplicates += 1
                seen.add(leased.job.name)
            asked = time.perf_counter()
            reply = await stub.BatchCompleteJobs(
                job_pb2.BatchCompleteJobsRequest(
                    requests=[job_pb2.CompleteJobRequest(lease=x.lease, output=output) for x in claimed]
                ),
                metadata=meta,
                timeout=60,
            )
            complete_ms.append((time.perf_counter() - asked) * 1000)
            errors += sum(1 for r in reply.results if r.error_code)
            done += len(claimed)
            last_ack[0] = time.perf_counter()

    server_cpu, client_cpu = _cpu_seconds(server_pid), _cpu_seconds(os.getpid(), children=False)
    db_cpu, own_db_cpu = _postgres_cpu_seconds(), _postgres_cpu_seconds(own=True)
    started = time.perf_counter()
    await asyncio.gather(*(work(i) for i in range(len(tokens))))
    # Until the last acknowledged completion: idle workers still long-polling at the end
    # would otherwise add up to one `wait` to the figure.
    work_s = last_ack[0] - started
    server_cpu = _cpu_seconds(server_pid) - server_cpu
    client_cpu = _cpu_seconds(os.getpid(), children=False) - client_cpu
    db_cpu = _postgres_cpu_seconds() - db_cpu
    own_db_cpu = _postgres_cpu_seconds(own=True) - own_db_cpu
    return {
        "claim_complete_seconds": round(work_s, 2),
        "claim_complete_jobs_per_s": _rate(jobs, work_s),
        **_latency(latencies),
        # Per worker round trip, as the worker sees it: a claim that leased something, and
        # its completion. Shows whether the daemon is busy or the calls wait on each other.
        "claim_rpc_ms_p50_p99": [round(percentile(claim_ms, q), 1) for q in (50, 99)],
        "complete_rpc_ms_p50_p99": [round(percentile(complete_ms, q), 1) for q in (50, 99)],
        "jobs_per_claim_mean": round(sum(sizes) / max(1, len(sizes)), 1),
        "completed": len(seen),
        "double_claims": duplicates,
        "completion_errors": errors,
        "claim_complete_cpu_ms_per_job": {
            "server": round(server_cpu * 1000 / jobs, 3),
            "bench_client": round(client_cpu * 1000 / jobs, 3),
            "postgres": round(db_cpu * 1000 / jobs, 3),
            "postgres_bench_db": round(own_db_cpu * 1000 / jobs, 3),
        },
    }


async def _drain_stream(
    channels: list[grpc.aio.Channel], tokens: list[str], jobs: int, batch: int, server_pid: int
) -> dict[str, Any]:
    """One WorkJobs stream per token through `coordd_client.worker.JobWorker` (what a worker
    would run): jobs one at a time, each completed at once; the worker sends the batch's
    completions with its next ask. Until `jobs` completions are recorded; CPU per job measured
    over the phase, as `_drain`."""
    from coordd_client.worker import JobWorker

    seen: set[str] = set()
    duplicates = 0
    workers: list[JobWorker] = []

    def recorded() -> int:
        return sum(w.succeeded + len(w.failures) for w in workers)

    async def work(index: int) -> None:
        nonlocal duplicates
        stub = job_pb2_grpc.JobServiceStub(channels[index % len(channels)])
        worker = JobWorker(_Authorized(stub, tokens[index]), batch=batch)
        workers.append(worker)
        async with worker:
            async for job in worker:
                if job.name in seen:
                    duplicates += 1
                seen.add(job.name)
                worker.complete(job, data=b"ok")

    server_cpu, client_cpu = _cpu_seconds(server_pid), _cpu_seconds(os.getpid(), children=False)
    db_cpu, own_db_cpu = _postgres_cpu_seconds(), _postgres_cpu_seconds(own=True)
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(work(i)) for i in range(len(tokens))]
    # Until the last completion is recorded (the workers themselves wait for more work).
    while recorded() < jobs and not any(t.done() for t in tasks):
        await asyncio.sleep(0.002)
    work_s = time.perf_counter() - started
    server_cpu = _cpu_seconds(server_pid) - server_cpu
    client_cpu = _cpu_seconds(os.getpid(), children=False) - client_cpu
    db_cpu = _postgres_cpu_seconds() - db_cpu
    own_db_cpu = _postgres_cpu_seconds(own=True) - own_db_cpu
    for task in tasks:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    broken = [o for o in outcomes if isinstance(o, Exception)]
    if broken:
        raise broken[0]
    return {
        "claim_complete_seconds": round(work_s, 2),
        "claim_complete_jobs_per_s": _rate(jobs, work_s),
        "completed": len(seen),
        "recorded": recorded(),
        "double_claims": duplicates,
        "completion_errors": sum(len(w.failures) for w in workers),
        "claim_complete_cpu_ms_per_job": {
            "server": round(server_cpu * 1000 / jobs, 3),
            "bench_client": round(client_cpu * 1000 / jobs, 3),
            "postgres": round(db_cpu * 1000 / jobs, 3),
            "postgres_bench_db": round(own_db_cpu * 1000 / jobs, 3),
        },
    }


class _Authorized:
    """A JobServiceStub whose WorkJobs carries a bearer token (JobWorker takes a client's
    `job`, which adds it; the bench drives raw stubs)."""

    def __init__(self, stub: job_pb2_grpc.JobServiceStub, token: str) -> None:
        self._stub, self._meta = stub, (("authorization", f"Bearer {token}"),)

    def WorkJobs(self) -> Any:
        return self._stub.WorkJobs(metadata=self._meta)


def run_coordd(
    backend: str,
    jobs: int,
    workers: int,
    producers: int,
    batch: int,
    budget: int,
    pg_admin_url: str,
    submit_batch: int = 1,
    processes: int = 0,
    worker_stream: bool = False,
) -> dict[str, Any]:
    data_dir = tempfile.mkdtemp(prefix="coordd-bench-jobs-")
    pg = PgDatabase(pg_admin_url, "jobs") if backend == "postgresql" else None
    try:
        tokens = _prepare_coordd(data_dir, pg.url if pg else "", workers, jobs, budget)
        # Default settings otherwise (8 database threads, a pool of 16 connections), but the
        # rate limits off: all producers share one token and one host, and the defaults
        # (1,000/s a caller, 2,000/s a host) protect against tenants, not the queue measured.
        env = {
            "COORDD_JWT_SECRET": JWT_SECRET,
            "COORDD_RATE_LIMIT_CALLER_RPS": "0",
            "COORDD_RATE_LIMIT_PEER_RPS": "0",
        }
        if pg is not None:
            env["COORDD_DATABASE_URL"] = pg.url
        extra = ("--processes", str(processes)) if processes else ()
        proc, port, _ = start_coordd(env, data_dir=data_dir, extra_args=extra)
        try:
            drive = _drive_coordd(
                port, tokens, jobs, producers, batch, budget, proc.pid, submit_batch, worker_stream
            )
            return asyncio.run(drive)
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        if pg is not None:
            pg.drop()
        shutil.rmtree(data_dir, ignore_errors=True)


# -- coordd without gRPC ---------------------------------------------------------------------


def run_domain_ceiling(jobs: int, workers: int, batch: int, pg_admin_url: str) -> dict[str, Any]:
    """coordd's claim and batched completion called in-process by `workers` threads, the way
    the servicer calls them, with no gRPC, auth or protobuf: the ceiling for the server as
    DESIGN.md prescribes it (peewee on a thread pool, a signed attestation per job)."""
    import threading

    from coordd.core.principal import Principal
    from coordd.domain import jobs as job_domain

    data_dir = tempfile.mkdtemp(prefix="coordd-bench-ceiling-")
    pg = PgDatabase(pg_admin_url, "ceiling")
    settings = load_settings(
        None, env={}, data_dir=data_dir, database_url=pg.url, jwt_secret=JWT_SECRET, **FAST_ARGON
    )
    rt = Runtime(settings)
    try:
        migrate(rt.store)
        tag = uuid.uuid4().hex[:8]
        submitter = auth.create_user(
            rt, f"submit-{tag}@bench.example", "bench-password-1", "", ["participant"], self_service=False
        )
        providers = [
            auth.create_user(
                rt, f"w{i}-{tag}@bench.example", "bench-password-1", "", ["provider"], self_service=False
            )
            for i in range(workers)
        ]
        spec = job_domain.make_spec(
            "inference", "noop", job_domain.Payload(b"{}", "", ""), [], 0, 0, 0, 0, None, None, None, None
        )
        for start in range(0, jobs, 1000):
            with rt.store.write() as tx:
                job_domain.insert_jobs(tx, submitter.id, [spec] * min(1000, jobs - start))
        output = job_domain.Payload(b"ok", "", hashlib.sha256(b"ok").hexdigest())
        done = [0] * workers
        errors: list[BaseException] = []

        def work(index: int) -> None:
            who = Principal(providers[index].id, frozenset({"provider"}), "bench")
            worker = job_domain.Worker(who.user_id, frozenset(), 0)
            try:
                while True:
                    claimed = job_domain.claim(rt, worker, batch)
                    if not claimed:
                        return
                    leases = [job_domain.LeaseRef(x.job.id, x.job.attempt, x.lease_id) for x in claimed]
                    results = job_domain.complete_many(rt, who, [(lease, output) for lease in leases])
                    done[index] += sum(1 for r in results if isinstance(r, job_domain.Attestation))
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                rt.store.close_thread_connection()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        process_cpu, db_cpu = time.process_time(), _postgres_cpu_seconds()
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        work_s = time.perf_counter() - started
        process_cpu, db_cpu = time.process_time() - process_cpu, _postgres_cpu_seconds() - db_cpu
        if errors:
            raise errors[0]
        return {
            "claim_complete_seconds": round(work_s, 2),
            "claim_complete_jobs_per_s": _rate(jobs, work_s),
            "completed": sum(done),
            "claim_complete_cpu_ms_per_job": {
                "coordd_domain_in_process": round(process_cpu * 1000 / jobs, 3),
                "postgres": round(db_cpu * 1000 / jobs, 3),
            },
        }
    finally:
        rt.close()
        pg.drop()
        shutil.rmtree(data_dir, ignore_errors=True)


# -- the gRPC floor ---------------------------------------------------------------------------


def run_floor(jobs: int, workers: int, batch: int) -> dict[str, Any]:
    """The same worker loop against bench/job_floor_server.py (no auth, database or signing)."""
    port_file = Path(tempfile.mkdtemp(prefix="job-floor-")) / "port"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "job_floor_server.py"), str(port_file), str(jobs)]
    )
    try:
        port = wait_for_port(proc, port_file)

        async def drive() -> dict[str, Any]:
            channels = [
                grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_OWN_CONNECTION) for _ in range(4)
            ]
            try:
                stubs = [job_pb2_grpc.JobServiceStub(c) for c in channels]
                result = await _drain(stubs, ["floor"] * workers, jobs, batch, proc.pid)
            finally:
                for channel in channels:
                    await channel.close()
            result["claim_complete_cpu_ms_per_job"].pop("postgres")
            result["claim_complete_cpu_ms_per_job"].pop("postgres_bench_db")
            return result

        return asyncio.run(drive())
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(port_file.parent, ignore_errors=True)


# -- pgqueuer -------------------------------------------------------------------------------


async def _drive_pgqueuer(
    url: str, jobs: int, workers: int, producers: int, batch: int, submit_batch: int = 1
) -> dict[str, Any]:
    import asyncpg
    from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, QueueManager
    from pgqueuer.models import Job
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    setup = await asyncpg.connect(url)
    await Queries(AsyncpgDriver(setup)).install()
    await setup.close()

    pool = await asyncpg.create_pool(url, min_size=producers, max_size=producers)
    queries = Queries(AsyncpgPoolDriver(pool))
    remaining = jobs

    async def produce() -> None:
        nonlocal remaining
        while remaining > 0:
            count = min(submit_batch, remaining)
            remaining -= count
            if submit_batch == 1:
                await queries.enqueue("noop", b"{}", 0)
            else:
                await queries.enqueue(["noop"] * count, [b"{}"] * count, [0] * count)

    started = time.perf_counter()
    await asyncio.gather(*(produce() for _ in range(producers)))
    enqueue_s = time.perf_counter() - started
    await pool.close()

    latencies: list[float] = []
    seen: set[int] = set()
    duplicates = 0
    managers = []
    connections = []
    for _ in range(workers):
        conn = await asyncpg.connect(url)
        connections.append(conn)
        qm = QueueManager(Queries(AsyncpgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            nonlocal duplicates
            latencies.append(time.time() - job.created.timestamp())
            if job.id in seen:
                duplicates += 1
            seen.add(job.id)

        managers.append(qm)

    client_cpu = _cpu_seconds(os.getpid(), children=False)
    db_cpu, own_db_cpu = _postgres_cpu_seconds(), _postgres_cpu_seconds(own=True)
    started = time.perf_counter()
    await asyncio.gather(
        *(
            qm.run(
                dequeue_timeout=timedelta(seconds=1),
                batch_size=batch,
                mode=QueueExecutionMode.drain,
            )
            for qm in managers
        )
    )
    work_s = time.perf_counter() - started
    client_cpu = _cpu_seconds(os.getpid(), children=False) - client_cpu
    db_cpu = _postgres_cpu_seconds() - db_cpu
    own_db_cpu = _postgres_cpu_seconds(own=True) - own_db_cpu
    for conn in connections:
        await conn.close()
    return {
        "enqueue_seconds": round(enqueue_s, 2),
        "enqueue_jobs_per_s": _rate(jobs, enqueue_s),
        "claim_complete_seconds": round(work_s, 2),
        "claim_complete_jobs_per_s": _rate(jobs, work_s),
        **_latency(latencies),
        "completed": len(seen),
        "double_claims": duplicates,
        "claim_complete_cpu_ms_per_job": {
            "pgqueuer_workers": round(client_cpu * 1000 / jobs, 3),
            "postgres": round(db_cpu * 1000 / jobs, 3),
            "postgres_bench_db": round(own_db_cpu * 1000 / jobs, 3),
        },
    }


def run_pgqueuer(
    jobs: int, workers: int, producers: int, batch: int, pg_admin_url: str, submit_batch: int = 1
) -> dict[str, Any]:
    import pgqueuer

    pg = PgDatabase(pg_admin_url, "pgqueuer")
    try:
        result = asyncio.run(_drive_pgqueuer(pg.url, jobs, workers, producers, batch, submit_batch))
        return {"version": pgqueuer.__version__, **result}
    finally:
        pg.drop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--producers", type=int, default=32)
    parser.add_argument("--budget", type=int, default=0, help="per job; >0 exercises the ledger too")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare gRPC floor run")
    parser.add_argument(
        "--submit-batch",
        type=int,
        default=1,
        help="jobs per enqueue call (>1: BatchSubmitJobs / a list enqueue)",
    )
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--processes", type=int, default=0, help="serve coordd with `--processes N` (0: one process)"
    )
    parser.add_argument(
        "--worker-stream",
        action="store_true",
        help="on PostgreSQL, also run coordd with WorkJobs stream workers (coordd_postgresql_stream)",
    )
    args = parser.parse_args()
    from coordd.logging import configure

    configure("console", "warning")
    out: dict[str, Any] = {
        "benchmark": "jobs",
        "jobs": args.jobs,
        "workers": args.workers,
        "batch": args.batch,
        "producers": args.producers,
        "budget": args.budget,
        "submit_batch": args.submit_batch,
        "processes": args.processes or 1,
        "worker_stream": args.worker_stream,
        "cpus": os.cpu_count(),
    }

    def coordd(backend: str, worker_stream: bool = False) -> dict[str, Any]:
        return run_coordd(
            backend,
            args.jobs,
            args.workers,
            args.producers,
            args.batch,
            args.budget,
            args.pg_admin_url,
            args.submit_batch,
            args.processes,
            worker_stream=worker_stream,
        )

    for backend in args.backends.split(","):
        out[f"coordd_{backend}"] = coordd(backend)
    if args.worker_stream and "postgresql" in args.backends.split(","):
        out["coordd_postgresql_stream"] = coordd("postgresql", worker_stream=True)
    if not args.no_floor:
        out["grpc_floor"] = run_floor(args.jobs, args.workers, args.batch)
        if "postgresql" in args.backends.split(","):
            out["coordd_without_grpc_postgresql"] = run_domain_ceiling(
                args.jobs, args.workers, args.batch, args.pg_admin_url
            )
    if "postgresql" in args.backends.split(","):
        out["pgqueuer_postgresql"] = run_pgqueuer(
            args.jobs, args.workers, args.producers, args.batch, args.pg_admin_url, args.submit_batch
        )
        ours = out["coordd_postgresql"]["claim_complete_jobs_per_s"]
        theirs = out["pgqueuer_postgresql"]["claim_complete_jobs_per_s"]
        out["ratio_claim_complete_coordd_pg_over_pgqueuer"] = round(ours / theirs, 3) if theirs else None
        if "coordd_postgresql_stream" in out:
            ours = out["coordd_postgresql_stream"]["claim_complete_jobs_per_s"]
            ratio = round(ours / theirs, 3) if theirs else None
            out["ratio_claim_complete_coordd_pg_stream_over_pgqueuer"] = ratio
        ours = out["coordd_postgresql"]["enqueue_jobs_per_s"]
        theirs = out["pgqueuer_postgresql"]["enqueue_jobs_per_s"]
        out["ratio_enqueue_coordd_pg_over_pgqueuer"] = round(ours / theirs, 3) if theirs else None
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
