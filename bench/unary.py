"""Unary RPC throughput: coordd's authenticated WhoAmI vs a bare grpc.aio echo server.

Both servers run as separate processes in the same run and are driven by the same
closed-loop grpc.aio client; the ratio is the figure (what coordd's per-call pipeline and
JWT check cost over raw gRPC on this machine). The rate limits stay on, raised far above what
one caller sends here (the default 1,000/s per caller would refuse this bench's own calls), so
their buckets are still taken on every call.

The two sides take turns (`--slices`, 5 by default: echo, coordd, coordd, echo, ...), so a
change in the machine's load during the run (other work on a shared machine) hits both alike;
`slice_ratios` shows the spread within the run.

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
from common import closed_loop, percentile, start_coordd

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


async def interleaved(
    echo: Callable[[], Awaitable[Any]],
    coordd: Callable[[], Awaitable[Any]],
    concurrency: int,
    seconds: float,
    slices: int,
) -> tuple[dict[str, float], dict[str, float], list[float]]:
    """Each side `seconds` in all, in `slices` turns that alternate (echo first, then coordd
    first, ...), after a 0.5 s warm-up each: a change in the machine's load during the run
    hits both sides alike instead of only the one running then."""
    await _callers(echo, concurrency, 0.5)
    await _callers(coordd, concurrency, 0.5)
    turn = seconds / slices
    seen: dict[str, list[float]] = {"echo": [], "coordd": []}
    sides = {"echo": echo, "coordd": coordd}
    ratios = []
    for index in range(slices):
        counts = {}
        for name in ("echo", "coordd") if index % 2 == 0 else ("coordd", "echo"):
            latencies = await _callers(sides[name], concurrency, turn)
            seen[name].extend(latencies)
            counts[name] = len(latencies)
        ratios.append(round(counts["coordd"] / counts["echo"], 3) if counts["echo"] else 0.0)
    return _summary(seen["echo"], seconds), _summary(seen["coordd"], seconds), ratios


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

            if slices <= 1:
                baseline = await closed_loop(call_echo, concurrency, seconds)
                coordd = await closed_loop(call_whoami, concurrency, seconds)
                slice_ratios: list[float] = []
            else:
                baseline, coordd, slice_ratios = await interleaved(
                    call_echo, call_whoami, concurrency, seconds, slices
                )
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
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--slices", type=int, default=5, help="alternating turns per side (1: all echo, then all coordd)"
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.seconds, args.concurrency, args.slices)), indent=2))


if __name__ == "__main__":
    main()
