"""Live ceremony pages: N browsers hold the public ceremony page's server-sent event stream
open on one daemon while its queue moves; how long until every page has the change, and what
an open page costs the daemon.

Setup (not timed): a `coordd serve --http` process, a ceremony with one circuit opened by the
daemon's scheduler, N SSE streams on /ceremonies/ID/events (each has received the page once).
Each round one more participant joins, which changes the live fragment (whose turn it is, or
the queue length). For each round and page: time from the JoinCeremony call to the page's
`update` event. Memory per viewer: the daemon's RSS with all N streams open minus before, / N.
The client (aiohttp, one event loop) runs on the same machine, so the figures include its cost.

    .venv/bin/python bench/web_sse.py --viewers 1000 [--rounds 10]
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from google.protobuf import duration_pb2, timestamp_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile

from coordd_client.v1 import auth_pb2, auth_pb2_grpc, ceremony_pb2_grpc
from coordd_client.v1 import ceremony_pb2 as pb

SERVE = [sys.executable, "-m", "coordd", "serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]
ADMIN = [sys.executable, "-m", "coordd", "admin", "create-user"]
FAST_ARGON = {
    "COORDD_ARGON2_MEMORY_KIB": "8",
    "COORDD_ARGON2_TIME_COST": "1",
    "COORDD_ARGON2_PARALLELISM": "1",
}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def start_daemon(data: str) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    log = Path(data) / "daemon.log"
    port_file = Path(data) / "port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDD_")}
    env.update({"COORDD_LOG_FORMAT": "json", "COORDD_LOG_LEVEL": "info", **FAST_ARGON})
    env["COORDD_HTTP_MAX_STREAMS_PER_PEER"] = "0"  # every viewer comes from 127.0.0.1 here
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*SERVE, "--data-dir", data, "--port-file", str(port_file)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if '"http serving"' in line and port_file.exists() and port_file.read_text().strip():
                return proc, int(port_file.read_text()), int(json.loads(line)["port"]), log
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"coordd did not start:\n{log.read_text(errors='replace')}")


def ts(dt: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt)
    return out


class Viewer:
    """One open ceremony page: counts the `update` events and when the last one arrived."""

    def __init__(self) -> None:
        self.updates = 0
        self.arrived = 0.0
        self.first = asyncio.Event()
        self.error = ""

    async def run(self, session: aiohttp.ClientSession, url: str, changed: asyncio.Condition) -> None:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
                event = ""
                async for raw in response.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif not line and event == "update":
                        self.updates += 1
                        self.arrived = time.perf_counter()
                        self.first.set()
                        event = ""
                        async with changed:
                            changed.notify_all()
        except Exception as exc:  # reported in the JSON
            self.error = f"{type(exc).__name__}: {exc}"
            self.first.set()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    data = tempfile.mkdtemp(prefix="coordd-bench-web-")
    proc, grpc_port, http_port, _ = start_daemon(data)
    try:
        created = subprocess.run(
            [*ADMIN, "--data-dir", data, "--email", "coord@example.com", "--role", "coordinator"],
            capture_output=True,
            text=True,
            env={**os.environ, **FAST_ARGON},
            check=True,
        )
        coord = (("authorization", f"Bearer {json.loads(created.stdout)['api_key_secret']}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = ceremony_pb2_grpc.CeremonyServiceStub(channel)
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            now = datetime.now(UTC)
            ceremony = (
                await stub.CreateCeremony(
                    pb.CreateCeremonyRequest(
                        title="Bench",
                        prefix=f"bench-{uuid.uuid4().hex[:6]}",
                        start_time=ts(now + timedelta(seconds=2)),
                        end_time=ts(now + timedelta(hours=1)),
                        timeout=pb.TimeoutConfig(
                            policy=pb.TIMEOUT_POLICY_FIXED,
                            fixed_timeout=duration_pb2.Duration(seconds=3000),
                            start_window=duration_pb2.Duration(seconds=3000),
                        ),
                        verifier=pb.Verifier(name="none"),
                    ),
                    metadata=coord,
                )
            ).ceremony
            circuit = (
                await stub.AddCircuit(
                    pb.AddCircuitRequest(parent=ceremony.name, display_name="c"), metadata=coord
                )
            ).circuit
            genesis = b"genesis" * 100
            import hashlib

            header = pb.UploadHeader(
                circuit=circuit.name,
                size_bytes=len(genesis),
                blake2b_512=hashlib.blake2b(genesis).digest(),
                index=0,
            )
            await stub.UploadContribution(
                iter(
                    [
                        pb.UploadContributionRequest(header=header),
                        pb.UploadContributionRequest(chunk=pb.UploadChunk(offset=0, data=genesis)),
                    ]
                ),
                metadata=coord,
            )
            while (
                await stub.GetCeremony(pb.GetCeremonyRequest(name=ceremony.name), metadata=coord)
            ).ceremony.state != (pb.CEREMONY_STATE_OPENED):
                await asyncio.sleep(0.1)
            tokens = []
            for _ in range(args.rounds):
                reply = await auth.SignUp(
                    auth_pb2.SignUpRequest(
                        email=f"p{uuid.uuid4().hex[:10]}@example.com", password="bench password 1"
                    )
                )
                tokens.append(reply.access_token)
            cid = ceremony.name.split("/")[1]
            url = f"http://127.0.0.1:{http_port}/ceremonies/{cid}/events"
            before = rss_kib(proc.pid)
            changed = asyncio.Condition()
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as session:
                viewers = [Viewer() for _ in range(args.viewers)]
                tasks = [asyncio.create_task(v.run(session, url, changed)) for v in viewers]
                progress(f"opening {args.viewers} live pages")
                await asyncio.gather(*(v.first.wait() for v in viewers))
                errors = [v.error for v in viewers if v.error]
                await asyncio.sleep(1.0)
                after = rss_kib(proc.pid)
                latencies: list[float] = []
                joined: list[float] = []
                for r, token in enumerate(tokens, start=1):
                    start = time.perf_counter()
                    await stub.JoinCeremony(
                        pb.JoinCeremonyRequest(ceremony=ceremony.name),
                        metadata=(("authorization", f"Bearer {token}"),),
                    )
                    joined.append(time.perf_counter() - start)
                    async with changed:
                        await asyncio.wait_for(
                            changed.wait_for(lambda r=r: all(v.updates >= r + 1 or v.error for v in viewers)),
                            60,
                        )
                    latencies += [v.arrived - start for v in viewers if not v.error]
                    last = latencies[-len(viewers) :]
                    progress(
                        f"round {r}: join {joined[-1] * 1000:.1f} ms, updates p50"
                        f" {percentile(last, 50) * 1000:.1f} ms, p99 {percentile(last, 99) * 1000:.1f} ms"
                    )
                    await asyncio.sleep(0.2)
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return {
            "bench": "web_sse",
            "viewers": args.viewers,
            "rounds": args.rounds,
            "errors": len(errors),
            "update_p50_ms": round(percentile(latencies, 50) * 1000, 1),
            "update_p99_ms": round(percentile(latencies, 99) * 1000, 1),
            "update_max_ms": round(max(latencies, default=0) * 1000, 1),
            "join_call_p50_ms": round(percentile(joined, 50) * 1000, 1),
            "rss_before_mib": round(before / 1024, 1),
            "rss_with_viewers_mib": round(after / 1024, 1),
            "kib_per_viewer": round((after - before) / max(1, args.viewers), 1),
        }
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
