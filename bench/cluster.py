"""Scale-out: claim+complete and Register throughput for three shapes on one PostgreSQL server:

- `single`: one `coordd serve` process, the client dials it;
- `processes2`: `coordd serve --processes 2` (one port, SO_REUSEPORT children), when this coordd
  has the flag (else reported as unavailable);
- `replicas3`: three `coordd serve` replicas behind nginx (deploy/nginx.conf.template, the
  layout of deploy/cluster.toml), the client dials nginx.

Each shape gets a fresh database. Workloads (users and jobs are inserted before the servers
start, so only the measured calls go through gRPC):
- claim+complete: J queued no-op jobs drained by W workers (ClaimJobs max_jobs=B with a 1 s
  wait, then BatchCompleteJobs: each completion signed and recorded with its attempt row);
- register: R Register calls (each with an idempotency-key, as clients send) by C concurrent
  callers, for distinct users, on one competition of capacity R/2.

CPU per operation per component, from /proc (user + system time over the phase): coordd
(every server process, supervisor and children), postgres (the backends connected to the
shape's database; the shared WAL writer/checkpointer are left out), nginx (master + worker),
client (this process). The projection for 8 and 32 cores divides the cores by the server-side
CPU per operation (coordd + postgres + nginx; clients run elsewhere) and states its assumptions.

    .venv/bin/python bench/cluster.py [--jobs 3000] [--workers 8] [--batch 50]
        [--registrations 1500] [--concurrency 32] [--shapes single,processes2,replicas3] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
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
from common import percentile
from jobs import PgDatabase, _cpu_seconds
from register import _prepare as _prepare_competition

from coordd.config import load_settings
from coordd.domain import auth
from coordd.domain import jobs as job_domain
from coordd.runtime import Runtime
from coordd_client.v1 import competition_pb2, competition_pb2_grpc, job_pb2, job_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
FAST_ARGON = {"argon2_memory_kib": 8, "argon2_time_cost": 1, "argon2_parallelism": 1}
SERVE = [sys.executable, "-m", "coordd", "serve"]


def _render() -> Any:
    spec = importlib.util.spec_from_file_location("coordd_deploy_render", ROOT / "deploy" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _descendants(pids: list[int]) -> list[int]:
    """`pids` and every process below them (a supervisor's children, nginx's workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found = list(pids)
    frontier = list(pids)
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                found.append(child)
                frontier.append(child)
    return found


def _supports_processes() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "coordd", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    return "--processes" in out.stdout


class Shape:
    """The server processes of one shape, and where the client dials."""

    def __init__(self, name: str, database_url: str, base: Path) -> None:
        self.name = name
        self.database_url = database_url
        self.base = base
        self.procs: list[subprocess.Popen[bytes]] = []
        self.nginx: subprocess.Popen[bytes] | None = None
        self.nginx_dir: Path | None = None
        self.target = ""
        self.jwt_secret = secrets.token_urlsafe(48)
        keys = base / "keys"
        keys.mkdir(mode=0o700)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("COORDD_")}
        self.env.update(
            {
                "COORDD_LOG_LEVEL": "warning",
                "COORDD_LOG_FORMAT": "json",
                "COORDD_DATABASE_URL": database_url,
                "COORDD_JWT_SECRET": self.jwt_secret,
                "COORDD_SIGNING_KEY_PATH": str(keys / "coordinator.key"),
                "COORDD_SEALING_KEY_PATH": str(keys / "secrets.key"),
            }
        )

    def _serve(self, index: int, *args: str) -> int:
        data = self.base / f"replica-{index}"
        port = _free_port()
        proc = subprocess.Popen(
            [*SERVE, "--data-dir", str(data), "--listen", f"127.0.0.1:{port}", *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.base / f"replica-{index}.log", "ab"),  # noqa: SIM115 - lives with the process
        )
        self.procs.append(proc)
        self._wait_port(port, proc)
        return port

    @staticmethod
    def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    time.sleep(0.3)  # every child of a supervisor bound too
                    return
            time.sleep(0.05)
        raise RuntimeError("server did not start")

    def start(self) -> Shape:
        if self.name == "single":
            self.target = f"127.0.0.1:{self._serve(0)}"
        elif self.name == "processes2":
            self.target = f"127.0.0.1:{self._serve(0, '--processes', '2')}"
        else:
            ports = [self._serve(i) for i in range(3)]
            self._start_nginx(ports)
        return self

    def _start_nginx(self, ports: list[int]) -> None:
        render = _render()
        self.nginx_dir = Path(tempfile.mkdtemp(prefix="coordd-bench-nginx-"))
        self.nginx_dir.chmod(0o755)
        (self.nginx_dir / "temp").mkdir(mode=0o755)
        port = _free_port()
        conf = self.nginx_dir / "nginx.conf"
        conf.write_text(
            render.nginx_conf(
                listen=f"127.0.0.1:{port}",
                upstreams=[f"127.0.0.1:{p}" for p in ports],
                pid=str(self.nginx_dir / "nginx.pid"),
                error_log=str(self.nginx_dir / "error.log"),
                access_log="off",
                temp=str(self.nginx_dir / "temp"),
                worker_processes="1",
            )
        )
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = subprocess.Popen(
            [binary, "-p", str(self.nginx_dir), "-c", str(conf), "-e", str(self.nginx_dir / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_port(port, self.nginx)
        self.target = f"127.0.0.1:{port}"

    def coordd_pids(self) -> list[int]:
        return _descendants([p.pid for p in self.procs])

    def nginx_pids(self) -> list[int]:
        return _descendants([self.nginx.pid]) if self.nginx else []

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        if self.nginx is not None:
            self.nginx.send_signal(signal.SIGQUIT)
        for proc in [*self.procs, *([self.nginx] if self.nginx else [])]:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self.nginx_dir is not None:
            shutil.rmtree(self.nginx_dir, ignore_errors=True)


class CpuMeter:
    """CPU seconds per component over one phase."""

    def __init__(self, shape: Shape, database: str) -> None:
        import psycopg2

        self.shape = shape
        self.conn = psycopg2.connect(shape.database_url)
        self.conn.autocommit = True
        self.database = database

    def _pg_pids(self) -> list[int]:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.database,),
            )
            return [int(r[0]) for r in cur.fetchall()]

    def sample(self) -> dict[str, dict[int, float]]:
        return {
            "coordd": {p: _cpu_seconds(p) for p in self.shape.coordd_pids()},
            "postgres": {p: _cpu_seconds(p) for p in self._pg_pids()},
            "nginx": {p: _cpu_seconds(p) for p in self.shape.nginx_pids()},
            "client": {os.getpid(): _cpu_seconds(os.getpid())},
        }

    @staticmethod
    def per_op(
        before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], ops: int
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for component, now in after.items():
            # A process that appeared during the phase counts from zero; one that ended is lost
            # (none do: pools keep their connections).
            used = sum(max(cpu - before[component].get(pid, 0.0), 0.0) for pid, cpu in now.items())
            out[component] = round(used * 1000 / ops, 4) if ops else 0.0
        out["server_side"] = round(out["coordd"] + out["postgres"] + out["nginx"], 4)
        out["processes"] = {component: len(pids) for component, pids in after.items()}
        return out

    def close(self) -> None:
        self.conn.close()


def _prepare_all(
    url: str, data_dir: str, jwt_secret: str, jobs: int, workers: int, registrations: int
) -> dict[str, Any]:
    """Users, queued jobs and one open competition, straight into the database."""
    settings = load_settings(
        None, env={}, data_dir=data_dir, database_url=url, jwt_secret=jwt_secret, **FAST_ARGON
    )
    rt = Runtime(settings)
    try:
        comp_id, users = _prepare_competition(rt, registrations)
        now = datetime.now(UTC)
        tag = uuid.uuid4().hex[:8]
        submitter = auth.create_user(
            rt, f"submit-{tag}@bench.example", "bench-password-1", "", ["participant"], self_service=False
        )
        spec = job_domain.make_spec(
            "inference", "noop", job_domain.Payload(b"{}", "", ""), [], 0, 0, 0, 0, None, None, None, None
        )
        for start in range(0, jobs, 1000):
            with rt.store.write() as tx:
                job_domain.insert_jobs(tx, submitter.id, [spec] * min(1000, jobs - start))
        providers = []
        for i in range(workers):
            provider = auth.create_user(
                rt, f"w{i}-{tag}@bench.example", "bench-password-1", "", ["provider"], self_service=False
            )
            providers.append(rt.tokens.issue(provider.id, ["provider"], now)[0])
        registrants = [rt.tokens.issue(u, ["participant"], now)[0] for u in users]
        return {"competition": comp_id, "providers": providers, "registrants": registrants}
    finally:
        rt.close()


async def _claim_complete(
    target: str, tokens: list[str], jobs: int, batch: int, meter: CpuMeter
) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [job_pb2_grpc.JobServiceStub(c) for c in channels]
    claim = job_pb2.ClaimJobsRequest(max_jobs=batch)
    claim.wait.FromTimedelta(timedelta(seconds=1))
    output = job_pb2.Payload(data=b"ok")
    done = 0
    seen: set[str] = set()
    duplicates = errors = 0
    last_ack = [0.0]

    async def work(index: int) -> None:
        nonlocal done, duplicates, errors
        stub = stubs[index % len(stubs)]
        meta = (("authorization", f"Bearer {tokens[index]}"),)
        while done < jobs:
            leased = (await stub.ClaimJobs(claim, metadata=meta, timeout=60)).jobs
            if not leased:
                continue
            for item in leased:
                duplicates += item.job.name in seen
                seen.add(item.job.name)
            reply = await stub.BatchCompleteJobs(
                job_pb2.BatchCompleteJobsRequest(
                    requests=[job_pb2.CompleteJobRequest(lease=x.lease, output=output) for x in leased]
                ),
                metadata=meta,
                timeout=60,
            )
            errors += sum(1 for r in reply.results if r.error_code)
            done += len(leased)
            last_ack[0] = time.perf_counter()

    try:
        before = meter.sample()
        started = time.perf_counter()
        await asyncio.gather(*(work(i) for i in range(len(tokens))))
        after = meter.sample()
        seconds = last_ack[0] - started
    finally:
        for channel in channels:
            await channel.close()
    return {
        "jobs": jobs,
        "seconds": round(seconds, 2),
        "jobs_per_s": round(jobs / seconds, 1) if seconds else 0.0,
        "completed": len(seen),
        "double_claims": duplicates,
        "completion_errors": errors,
        "cpu_ms_per_job": CpuMeter.per_op(before, after, jobs),
    }


async def _register(
    target: str, tokens: list[str], comp_id: str, concurrency: int, meter: CpuMeter
) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    stubs = [competition_pb2_grpc.CompetitionServiceStub(c) for c in channels]
    request = competition_pb2.RegisterRequest(competition=f"competitions/{comp_id}")
    queue = list(reversed(tokens))
    latencies: list[float] = []
    states: dict[int, int] = {}

    async def worker(index: int) -> None:
        stub = stubs[index % len(stubs)]
        while queue:
            token = queue.pop()
            meta = (("authorization", f"Bearer {token}"), ("idempotency-key", uuid.uuid4().hex))
            start = time.perf_counter()
            reply = await stub.Register(request, metadata=meta, timeout=60)
            latencies.append(time.perf_counter() - start)
            states[reply.registration.state] = states.get(reply.registration.state, 0) + 1

    try:
        before = meter.sample()
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        seconds = time.perf_counter() - started
        after = meter.sample()
    finally:
        for channel in channels:
            await channel.close()
    n = len(latencies)
    return {
        "registrations": n,
        "seconds": round(seconds, 2),
        "registrations_per_s": round(n / seconds, 1) if seconds else 0.0,
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "confirmed": states.get(competition_pb2.REGISTRATION_STATE_CONFIRMED, 0),
        "waitlisted": states.get(competition_pb2.REGISTRATION_STATE_WAITLISTED, 0),
        "oversold": max(states.get(competition_pb2.REGISTRATION_STATE_CONFIRMED, 0) - len(tokens) // 2, 0),
        "cpu_ms_per_registration": CpuMeter.per_op(before, after, n),
    }


def run_shape(name: str, args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix=f"coordd-bench-cluster-{name}-"))
    pg = PgDatabase(args.pg_admin_url, "cluster")
    shape = Shape(name, pg.url, base)
    try:
        prepared = _prepare_all(
            pg.url, str(base / "prepare"), shape.jwt_secret, args.jobs, args.workers, args.registrations
        )
        shape.start()
        meter = CpuMeter(shape, pg.name)
        try:
            claimed = asyncio.run(
                _claim_complete(shape.target, prepared["providers"], args.jobs, args.batch, meter)
            )
            registered = asyncio.run(
                _register(
                    shape.target, prepared["registrants"], prepared["competition"], args.concurrency, meter
                )
            )
        finally:
            meter.close()
        return {"claim_complete": claimed, "register": registered}
    finally:
        shape.stop()
        pg.drop()
        shutil.rmtree(base, ignore_errors=True)


def _median_run(shape_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median claim+complete rate, with every run's two rates alongside."""
    ordered = sorted(shape_runs, key=lambda r: r["claim_complete"]["jobs_per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["runs"] = [
        {
            "jobs_per_s": r["claim_complete"]["jobs_per_s"],
            "registrations_per_s": r["register"]["registrations_per_s"],
            "coordd_cpu_ms_per_job": r["claim_complete"]["cpu_ms_per_job"]["coordd"],
        }
        for r in shape_runs
    ]
    return chosen


def _projection(results: dict[str, Any]) -> dict[str, Any]:
    """ops/s ~= cores * 1000 / server-side CPU ms per op: every core busy with coordd, nginx and
    PostgreSQL work in the measured proportions, clients on other machines, no lock or I/O
    limit reached first. Register on ONE competition is also bounded by its row lock (one
    registration commits at a time per competition), so its projection holds across
    competitions, not for one."""
    out: dict[str, Any] = {}
    for shape, result in results.items():
        if not isinstance(result, dict) or "claim_complete" not in result:
            continue
        job = result["claim_complete"]["cpu_ms_per_job"]
        reg = result["register"]["cpu_ms_per_registration"]
        job_ms, reg_ms = job["server_side"], reg["server_side"]
        out[shape] = {
            f"{cores}_cores": {
                "claim_complete_jobs_per_s": round(cores * 1000 / job_ms) if job_ms else None,
                "registrations_per_s": round(cores * 1000 / reg_ms) if reg_ms else None,
                # How those cores split for claim+complete: coordd processes (one core each at
                # most: run at least this many) vs PostgreSQL (and nginx).
                "claim_complete_cores_coordd": round(cores * job["coordd"] / job_ms, 1) if job_ms else None,
                "claim_complete_cores_postgres": round(cores * job["postgres"] / job_ms, 1)
                if job_ms
                else None,
            }
            for cores in (8, 32)
        }
        out[shape]["arithmetic"] = (
            f"jobs/s = cores x 1000 / {job_ms} ms (coordd {job['coordd']} + postgres {job['postgres']}"
            f" + nginx {job['nginx']}); registrations/s = cores x 1000 / {reg_ms} ms"
            f" (coordd {reg['coordd']} + postgres {reg['postgres']} + nginx {reg['nginx']})"
        )
    out["assumptions"] = _projection.__doc__.split("\n\n")[0].replace("\n    ", " ")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--registrations", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--shapes", default="single,processes2,replicas3")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds over the shapes; the median run is reported"
    )
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    from coordd.logging import configure

    configure("console", "warning")
    out: dict[str, Any] = {
        "benchmark": "cluster",
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "jobs": args.jobs,
        "workers": args.workers,
        "batch": args.batch,
        "registrations": args.registrations,
        "concurrency": args.concurrency,
    }
    shapes = args.shapes.split(",")
    if "processes2" in shapes and not _supports_processes():
        shapes.remove("processes2")
        out["processes2"] = "unavailable: this coordd has no `serve --processes`"
    # Shapes interleaved, `--repeat` rounds: a burst of load from elsewhere on the machine
    # then hits every shape alike, and the median run of each is reported.
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in shapes}
    for _ in range(args.repeat):
        for name in shapes:
            runs[name].append(run_shape(name, args))
    results: dict[str, Any] = {name: _median_run(shape_runs) for name, shape_runs in runs.items()}
    out["results"] = results
    single = results.get("single")
    for name in ("processes2", "replicas3"):
        other = results.get(name)
        if isinstance(single, dict) and isinstance(other, dict):
            out[f"ratio_{name}_over_single"] = {
                "claim_complete": round(
                    other["claim_complete"]["jobs_per_s"] / single["claim_complete"]["jobs_per_s"], 2
                ),
                "register": round(
                    other["register"]["registrations_per_s"] / single["register"]["registrations_per_s"], 2
                ),
            }
    out["projection"] = _projection(results)
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
