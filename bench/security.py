"""Hostile load against one `coordd serve` process; prints JSON.

(a) login flood: 64 concurrent wrong-password Login calls, back to back, for --seconds, while
    another user calls GetJob in a loop (its p50/p99 latency, before and during the flood) and
    health is polled every 100 ms (did it stay SERVING throughout?). The daemon runs with its
    production password-hashing cost (Argon2id 64 MiB, t=3), which is what makes the flood hurt.
(b) unread streams: one caller opens --streams WatchJob streams on a job with a --payload-kb
    inline input and never reads them; the daemon's RSS (from /proc) before, with the streams
    open, and after they are cancelled; how many streams the daemon admitted or refused.

    .venv/bin/python bench/security.py [--seconds 60] [--streams 2000] [--payload-kb 200]
        [--database-url postgresql://...] [--only flood|streams]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile, start_coordd

from coordd_client.v1 import auth_pb2, auth_pb2_grpc, job_pb2, job_pb2_grpc

PASSWORD = "benchmark-password"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _latency(values: list[float]) -> dict[str, float]:
    return {
        "calls": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "max_ms": round(max(values, default=0) * 1000, 2),
    }


async def _sign_up(auth: auth_pb2_grpc.AuthServiceStub, label: str) -> tuple[str, str]:
    email = f"{label}-{uuid.uuid4().hex[:8]}@example.com"
    reply = await auth.SignUp(auth_pb2.SignUpRequest(email=email, password=PASSWORD), timeout=60)
    return email, reply.access_token


async def _submit(stub: job_pb2_grpc.JobServiceStub, token: str, payload: bytes) -> str:
    request = job_pb2.SubmitJobRequest(
        kind=job_pb2.JOB_KIND_INFERENCE, model_ref="bench", input=job_pb2.Payload(data=payload), budget=0
    )
    reply = await stub.SubmitJob(request, metadata=(("authorization", f"Bearer {token}"),), timeout=60)
    return reply.job.name


class SourceForwarder:
    """A TCP forwarder on 127.0.0.1 whose outgoing connections leave from `source` (another
    loopback address): the attackers reach the daemon from their own address, as they would,
    instead of sharing 127.0.0.1 (and its per-peer bucket) with the user under test."""

    def __init__(self, source: str, port: int) -> None:
        self.source, self.port = source, port
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.port, local_addr=(self.source, 0))

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(copy(reader, up_w), copy(up_r, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def login_flood(port: int, seconds: float, attackers: int, attack_from: str) -> dict[str, Any]:
    forwarder = SourceForwarder(attack_from, port) if attack_from else None
    attack_target = f"127.0.0.1:{await forwarder.start()}" if forwarder else f"127.0.0.1:{port}"
    try:
        return await _flood(port, attack_target, seconds, attackers)
    finally:
        if forwarder is not None:
            await forwarder.close()


async def _flood(port: int, attack_target: str, seconds: float, attackers: int) -> dict[str, Any]:
    target = f"127.0.0.1:{port}"
    async with (
        grpc.aio.insecure_channel(attack_target) as attack_channel,
        grpc.aio.insecure_channel(target) as user_channel,
        grpc.aio.insecure_channel(target) as health_channel,
    ):
        auth = auth_pb2_grpc.AuthServiceStub(user_channel)
        victim_email, _ = await _sign_up(auth, "victim")
        _, token = await _sign_up(auth, "user")
        jobs = job_pb2_grpc.JobServiceStub(user_channel)
        job = await _submit(jobs, token, b"{}")
        metadata = (("authorization", f"Bearer {token}"),)
        get = job_pb2.GetJobRequest(name=job)

        async def user_loop(until: float, into: list[float], errors: collections.Counter[str]) -> None:
            while time.perf_counter() < until:
                started = time.perf_counter()
                try:
                    await jobs.GetJob(get, metadata=metadata, timeout=60)
                    into.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] += 1

        baseline: list[float] = []
        baseline_errors: collections.Counter[str] = collections.Counter()
        await user_loop(time.perf_counter() + min(5.0, max(1.0, seconds / 6)), baseline, baseline_errors)

        attack = auth_pb2_grpc.AuthServiceStub(attack_channel)
        wrong = auth_pb2.LoginRequest(email=victim_email, password="wrong-password-guess")
        login_codes: collections.Counter[str] = collections.Counter()
        health = health_pb2_grpc.HealthStub(health_channel)
        polls: collections.Counter[str] = collections.Counter()
        stop_at = time.perf_counter() + seconds

        async def attacker() -> None:
            while time.perf_counter() < stop_at:
                try:
                    await attack.Login(wrong, timeout=60)
                    login_codes["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    login_codes[exc.code().name] += 1

        async def poll_health() -> None:
            while time.perf_counter() < stop_at:
                tick = time.perf_counter()
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    polls[health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)] += 1
                except grpc.aio.AioRpcError as exc:
                    polls[f"error:{exc.code().name}"] += 1
                await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - tick)))

        during: list[float] = []
        during_errors: collections.Counter[str] = collections.Counter()
        await asyncio.gather(
            *(attacker() for _ in range(attackers)), poll_health(), user_loop(stop_at, during, during_errors)
        )
    return {
        "seconds": seconds,
        "attackers": attackers,
        "login_calls": sum(login_codes.values()),
        "login_codes": dict(login_codes),
        "get_job_before_flood": {**_latency(baseline), "errors": dict(baseline_errors)},
        "get_job_during_flood": {**_latency(during), "errors": dict(during_errors)},
        "health_polls": dict(polls),
        "health_serving_throughout": set(polls) == {"SERVING"},
    }


async def unread_streams(port: int, pid: int, streams: int, payload_kb: int) -> dict[str, Any]:
    target = f"127.0.0.1:{port}"
    channels = [grpc.aio.insecure_channel(target) for _ in range(8)]
    try:
        auth = auth_pb2_grpc.AuthServiceStub(channels[0])
        _, token = await _sign_up(auth, "watcher")
        stubs = [job_pb2_grpc.JobServiceStub(c) for c in channels]
        job = await _submit(stubs[0], token, os.urandom(payload_kb * 1024))
        metadata = (("authorization", f"Bearer {token}"),)
        request = job_pb2.WatchJobRequest(name=job)
        await asyncio.sleep(1)
        before = rss_mb(pid)
        calls: list[Any] = []
        started = time.perf_counter()
        for first in range(0, streams, 250):
            indexes = range(first, min(first + 250, streams))
            batch = [stubs[i % len(stubs)].WatchJob(request, metadata=metadata) for i in indexes]
            await asyncio.gather(*(c.initial_metadata() for c in batch), return_exceptions=True)
            calls.extend(batch)
        opened_s = time.perf_counter() - started
        await asyncio.sleep(3)  # let the daemon write (and buffer) what it can
        with_streams = rss_mb(pid)
        refused: collections.Counter[str] = collections.Counter()
        for call in calls:
            if call.done():
                refused[(await call.code()).name] += 1
        for call in calls:
            call.cancel()
        await asyncio.sleep(3)
        after = rss_mb(pid)
    finally:
        for channel in channels:
            await channel.close()
    return {
        "streams_requested": streams,
        "streams_held_open": streams - sum(refused.values()),
        "streams_ended_by_daemon": dict(refused),
        "payload_kb": payload_kb,
        "open_seconds": round(opened_s, 2),
        "rss_before_mb": before,
        "rss_with_streams_mb": with_streams,
        "rss_growth_mb": round(with_streams - before, 1),
        "rss_after_cancel_mb": after,
    }


async def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the login flood")
    parser.add_argument("--attackers", type=int, default=64)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--payload-kb", type=int, default=200)
    parser.add_argument("--database-url", default="", help="postgresql://... (default: embedded SQLite)")
    parser.add_argument("--only", choices=["flood", "streams"])
    parser.add_argument(
        "--attack-from",
        default="127.0.0.2",
        help="loopback source address of the attackers ('' : the same 127.0.0.1 as the user under test)",
    )
    parser.add_argument(
        "--max-streams-per-caller",
        type=int,
        default=0,
        help="the daemon's per-caller stream cap (0: its default, 1000); raise it to measure all --streams",
    )
    args = parser.parse_args()
    env = {"COORDD_DATABASE_URL": args.database_url} if args.database_url else {}
    if args.max_streams_per_caller:
        env["COORDD_MAX_STREAMS_PER_CALLER"] = str(args.max_streams_per_caller)
    result: dict[str, Any] = {
        "benchmark": "security",
        "backend": "postgresql" if args.database_url else "sqlite",
        "cpus": os.cpu_count(),
    }
    for part in ("flood", "streams"):
        if args.only not in (None, part):
            continue
        proc, port, _ = start_coordd(env)  # a fresh daemon per part: RSS is not mixed up
        try:
            if part == "flood":
                flood = await login_flood(port, args.seconds, args.attackers, args.attack_from)
                flood["attackers_address"] = args.attack_from or "127.0.0.1 (shared)"
                result["login_flood"] = flood
            else:
                result["unread_streams"] = await unread_streams(port, proc.pid, args.streams, args.payload_kb)
        finally:
            proc.terminate()
            proc.wait(30)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
