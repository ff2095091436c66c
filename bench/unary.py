"""Unary RPC throughput: coordd's authenticated WhoAmI vs a bare grpc.aio echo server.

Both servers run as separate processes in the same run and are driven by the same
closed-loop grpc.aio client; the ratio is the figure (what coordd's per-call pipeline and
JWT check cost over raw gRPC on this machine). The rate limits stay on, raised far above what
one caller sends here (the default 1,000/s per caller would refuse this bench's own calls), so
their buckets are still taken on every call.

    .venv/bin/python bench/unary.py [--seconds 5] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import closed_loop, start_coordd

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


async def run(seconds: float, concurrency: int) -> dict[str, object]:
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

            baseline = await closed_loop(call_echo, concurrency, seconds)
            coordd = await closed_loop(call_whoami, concurrency, seconds)
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
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.seconds, args.concurrency)), indent=2))


if __name__ == "__main__":
    main()
