"""Shared bench helpers: start servers as real processes, drive them with grpc.aio, report JSON."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent


def start_coordd(
    extra_env: dict[str, str] | None = None, data_dir: str | None = None, extra_args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], int, str]:
    data = data_dir or tempfile.mkdtemp(prefix="coordd-bench-")
    port_file = Path(data) / "port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDD_")}
    env.update({"COORDD_LOG_LEVEL": "warning", "COORDD_LOG_FORMAT": "json"})
    env.update(extra_env or {})
    # The daemon's log (stderr, warnings and up) goes to daemon.log in its data directory, or
    # to BENCH_DAEMON_LOG=path, for looking into a run.
    log_path = os.environ.get("BENCH_DAEMON_LOG", "") or str(Path(data) / "daemon.log")
    daemon_log = open(log_path, "ab")  # noqa: SIM115 (the daemon's lifetime)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordd",
            "serve",
            "--data-dir",
            data,
            "--listen",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            *extra_args,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=daemon_log,
    )
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            daemon_log.close()
            tail = Path(log_path).read_text(errors="replace").splitlines()[-5:]
            raise RuntimeError("coordd did not start; its log ends:\n" + "\n".join(tail))
        time.sleep(0.05)
    return proc, int(port_file.read_text()), data


def wait_for_port(proc: subprocess.Popen[bytes], port_file: Path, what: str = "the floor server") -> int:
    """The port a bench server process writes to `port_file` once it listens (30 s at most)."""
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)
    return int(port_file.read_text())


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def closed_loop(
    call: Callable[[], Awaitable[Any]], concurrency: int, seconds: float, warmup: float = 0.5
) -> dict[str, float]:
    """`concurrency` callers each issue calls back to back for `seconds` (after a warm-up)."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + warmup + seconds
    measure_from = time.perf_counter() + warmup

    async def worker() -> None:
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                return
            await call()
            end = time.perf_counter()
            if start >= measure_from:
                latencies.append(end - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "calls": len(latencies),
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3) if latencies else 0.0,
    }


class PgDatabase:
    """A throw-away database on the benchmark's PostgreSQL server."""

    def __init__(self, admin_url: str, tag: str) -> None:
        import psycopg2

        self.admin_url = admin_url
        self.name = f"coordd_bench_{tag}_{uuid.uuid4().hex[:10]}"
        conn = psycopg2.connect(admin_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{self.name}"')
        conn.close()
        self.url = urlparse(admin_url)._replace(path=f"/{self.name}").geturl()

    def drop(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.admin_url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        conn.close()
