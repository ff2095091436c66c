"""Unary RPC throughput: coordd's authenticated WhoAmI vs a bare grpc.aio echo server.

Both servers run as separate processes in the same run and are driven by the same
closed-loop grpc.aio client; the ratio is the figure (what coordd's per-call pipeline and
JWT check cost over raw gRPC on this machine). The rate limits stay on, raised far above what
one caller sends here (the default 1,000/s per caller would refuse this bench's own calls), so
their buckets are still taken on every call.

The two sides take turns (`--slices`, 5 by default: echo, coordd, coordd, echo, ...), so a
change in the machine's load during the run (other work on a shared machine) hits both alike;
`slice_ratios` shows the spread within the run. `server_cpu_us_per_call` is each server
process's CPU time (all threads, from /proc) over its turns divided by its calls: far less
sensitive to other work on the machine than calls per second.

    .venv/bin/python bench/unary.py [--seconds 5] [--concurrency 32] [--slices 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile, start_coordd

from coordd_client.v1 import auth_pb2, auth_pb2_grpc

SERVER_ENV = {
    "COORDD_ARGON2_MEMORY_KIB": "8",
    "COORDD_ARGON2_TIME_COST": "1",
    "COORDD_ARGON2_PARALLELISM": "1",
    "COORDD_RATE_LIMIT_CALLER_RPS": "1000000",
    "COORDD_RATE_LIMIT_PEER_RPS": "1000000",
}


def start_echo() -> tuple[subprocess.Popen[bytes], int]:
    port_file = Path(tempfile.mkdtemp(prefix="echo-")) / "port"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "echo_server.py"), str(port_file)])
    deadline = time.monotonic() + 20
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("echo server did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


async def _callers(call: Callable[[], Awaitable[Any]], concurrency: int, seconds: float) -> list[float]:
    """`concurrency` callers back to back for `seconds`; each call's latency."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while (start := time.perf_counter()) < stop_at:
            await call()
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def _summary(latencies: list[float], seconds: float) -> dict[str, float]:
    return {
        "calls": len(latencies),
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3) if latencies else 0.0,
    }


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def interleaved(
    sides: dict[str, tuple[Callable[[], Awaitable[Any]], int]],
    concurrency: int,
    seconds: float,
    slices: int,
) -> tuple[dict[str, dict[str, float]], list[float]]:
    """Each side (`name: (call, server pid)`) `seconds` in all, in `slices` turns that
    alternate (echo first, then coordd first, ...), after a 0.5 s warm-up each: a change in
    the machine's load during the run hits both sides alike instead of only the one running
    then. Also each server's CPU time per call over its turns, which a busy machine changes
    far less than the throughput."""
    for call, _pid in sides.values():
        await _callers(call, concurrency, 0.5)
    turn = seconds / slices
    seen: dict[str, list[float]] = {name: [] for name in sides}
    cpu = dict.fromkeys(sides, 0.0)
    ratios = []
    names = list(sides)
    for index in range(slices):
        counts = {}
        for name in names if index % 2 == 0 else names[::-1]:
            call, pid = sides[name]
            before = cpu_s(pid)
            latencies = await _callers(call, concurrency, turn)
            cpu[name] += cpu_s(pid) - before
            seen[name].extend(latencies)
            counts[name] = len(latencies)
        ratios.append(round(counts["coordd"] / counts["echo"], 3) if counts["echo"] else 0.0)
    summaries = {}
    for name, latencies in seen.items():
        summary = _summary(latencies, seconds)
        summary["server_cpu_us_per_call"] = round(cpu[name] * 1e6 / len(latencies), 1) if latencies else 0.0
        summaries[name] = summary
    return summaries, ratios


async def run(seconds: float, concurrency: int, slices: int) -> dict[str, object]:
    echo_proc, echo_port = start_echo()
    coordd_proc, coordd_port, _ = start_coordd(SERVER_ENV)
    try:
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as echo_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{coordd_port}") as coordd_channel,
        ):
            echo = echo_channel.unary_unary("/bench.Echo/Echo")
            payload = auth_pb2.WhoAmIRequest().SerializeToString()
            auth = auth_pb2_grpc.AuthServiceStub(coordd_channel)
            signed = await auth.SignUp(
                auth_pb2.SignUpRequest(
                    email=f"bench-{uuid.uuid4().hex[:8]}@example.com", password="benchmark-password"
                )
            )
            metadata = (("authorization", f"Bearer {signed.access_token}"),)

            async def call_echo() -> None:
                await echo(payload)

            async def call_whoami() -> None:
                await auth.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=metadata)

            sides = {"echo": (call_echo, echo_proc.pid), "coordd": (call_whoami, coordd_proc.pid)}
            summaries, slice_ratios = await interleaved(sides, concurrency, seconds, max(slices, 1))
            baseline, coordd = summaries["echo"], summaries["coordd"]
    finally:
        for proc in (echo_proc, coordd_proc):
            proc.terminate()
            proc.wait(10)
    return {
        "benchmark": "unary",
        "seconds": seconds,
        "concurrency": concurrency,
        "cpus": os.cpu_count(),
        "server_env": {k: v for k, v in SERVER_ENV.items() if "RATE" in k},
        "echo_baseline": baseline,
        "coordd_whoami": coordd,
        "ratio_rps_coordd_over_echo": round(coordd["rps"] / baseline["rps"], 3) if baseline["rps"] else None,
        "slices": slices,
        "slice_ratios": slice_ratios,
        # Server CPU per call, echo over coordd: what the goal ratio would be with a core each.
        "ratio_cpu_per_call_echo_over_coordd": (
            round(baseline["server_cpu_us_per_call"] / coordd["server_cpu_us_per_call"], 3)
            if coordd["server_cpu_us_per_call"]
            else None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--slices", type=int, default=5, help="alternating turns per side (1: echo, then coordd)"
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.seconds, args.concurrency, args.slices)), indent=2))


if __name__ == "__main__":
    main()
