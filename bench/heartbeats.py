"""Heartbeat throughput: N simulated nodes over unary Heartbeat vs StreamHeartbeats, side by
side against one real `coordd serve` process, plus detection latency (last beat -> DOWN event
seen on WatchNodes).

Unary: `--concurrency` callers issue Heartbeat back to back, round-robin over the nodes;
latency is the call's round trip. Stream: one client stream per node, each writing beats
back to back; latency is the time `write()` takes to hand a beat to the transport (the
stream has no per-beat reply), and the rate counted is the server's (`beats` in its reply).

    .venv/bin/python bench/heartbeats.py [--nodes 200] [--seconds 5] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import grpc
from google.protobuf import duration_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile, start_coordd

from coordd_client.v1 import auth_pb2, auth_pb2_grpc, common_pb2, node_pb2, node_pb2_grpc


def secs(value: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=value))
    return out


def key_md(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def make_nodes(
    stub: node_pb2_grpc.NodeServiceStub,
    md: tuple[tuple[str, str], ...],
    count: int,
    policy: node_pb2.HealthPolicy,
) -> tuple[str, list[str]]:
    project = (
        await stub.CreateProject(
            node_pb2.CreateProjectRequest(
                display_name="bench", slug=f"bench-{uuid.uuid4().hex[:8]}", health_policy=policy
            ),
            metadata=md,
        )
    ).project
    keys = []
    for i in range(count):
        reply = await stub.RegisterNode(
            node_pb2.RegisterNodeRequest(project=project.name, display_name=f"n{i}"), metadata=md
        )
        keys.append(reply.api_key_secret)
    return project.name, keys


async def unary(
    stub: node_pb2_grpc.NodeServiceStub, keys: list[str], seconds: float, concurrency: int
) -> dict:
    latencies: list[float] = []
    warm_until = time.perf_counter() + 0.5
    stop_at = warm_until + seconds
    request = node_pb2.HeartbeatRequest(metrics={"load": 0.5})

    async def worker(offset: int) -> None:
        i = offset
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                return
            await stub.Heartbeat(request, metadata=key_md(keys[i % len(keys)]))
            i += concurrency
            if start >= warm_until:
                latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return {
        "beats": len(latencies),
        "beats_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
    }


async def stream(stub: node_pb2_grpc.NodeServiceStub, keys: list[str], seconds: float) -> dict:
    latencies: list[float] = []
    request = node_pb2.StreamHeartbeatsRequest(metrics={"load": 0.5})
    started = time.perf_counter()
    stop_at = started + seconds

    async def node(key: str) -> int:
        call = stub.StreamHeartbeats(metadata=key_md(key))
        while True:
            start = time.perf_counter()
            if start >= stop_at:
                break
            await call.write(request)
            latencies.append(time.perf_counter() - start)
        await call.done_writing()
        reply = await call
        return reply.beats

    accepted = sum(await asyncio.gather(*(node(k) for k in keys)))
    elapsed = time.perf_counter() - started
    return {
        "streams": len(keys),
        "beats_sent": len(latencies),
        "beats_accepted_by_server": accepted,
        "beats_per_s": round(accepted / elapsed, 1),
        "write_p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "write_p99_ms": round(percentile(latencies, 99) * 1000, 3),
    }


async def detection(stub: node_pb2_grpc.NodeServiceStub, md: tuple[tuple[str, str], ...], count: int) -> dict:
    interval, misses, grace = 1.0, 2, 1.0
    window = interval * misses + grace
    policy = node_pb2.HealthPolicy(
        heartbeat_interval=secs(interval),
        misses=misses,
        grace=secs(grace),
        successes_before_up=1,
        mass_outage_min_nodes=1_000_000,  # measure detection itself, not the mass-outage guard
    )
    project, keys = await make_nodes(stub, md, count, policy)
    watch = stub.WatchNodes(node_pb2.WatchNodesRequest(project=project), metadata=md)
    await watch.initial_metadata()
    last_beat: dict[str, float] = {}
    for key in keys:
        reply = await stub.Heartbeat(node_pb2.HeartbeatRequest(), metadata=key_md(key))
        last_beat[reply.node] = time.monotonic()
    latencies: list[float] = []
    deadline = time.monotonic() + window + 15
    async for item in watch:
        if item.transition.to_status == node_pb2.HEALTH_STATUS_DOWN:
            latencies.append(time.monotonic() - last_beat[item.node.name])
            if len(latencies) == len(keys) or time.monotonic() > deadline:
                break
    watch.cancel()
    bound = window + 1.0
    return {
        "nodes": count,
        "window_s": window,
        "bound_s": bound,
        "detected": len(latencies),
        "p50_s": round(percentile(latencies, 50), 3),
        "max_s": round(max(latencies), 3) if latencies else None,
        "within_bound": bool(latencies) and len(latencies) == count and max(latencies) <= bound,
    }


async def run(nodes: int, seconds: float, concurrency: int, database_url: str, redis_url: str) -> dict:
    env = {
        "COORDD_ARGON2_MEMORY_KIB": "8",
        "COORDD_ARGON2_TIME_COST": "1",
        "COORDD_ARGON2_PARALLELISM": "1",
        # Every simulated node dials from this one host: the per-host limit (2,000/s by default)
        # would measure itself, not the heartbeat path (node keys keep their own limits).
        "COORDD_RATE_LIMIT_PEER_RPS": "0",
        "COORDD_RATE_LIMIT_CALLER_RPS": "0",
    }
    if database_url:
        env["COORDD_DATABASE_URL"] = database_url
    if redis_url:
        env["COORDD_REDIS_URL"] = redis_url
        env["COORDD_REDIS_PREFIX"] = f"bench-{uuid.uuid4().hex[:8]}"
    proc, port, _ = start_coordd(env)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            signed = await auth.SignUp(
                auth_pb2.SignUpRequest(
                    email=f"bench-{uuid.uuid4().hex[:8]}@example.com",
                    password="benchmark-password",
                    roles=[common_pb2.ROLE_NODE_OPERATOR],
                )
            )
            md = (("authorization", f"Bearer {signed.access_token}"),)
            stub = node_pb2_grpc.NodeServiceStub(channel)
            # Load nodes beat far more often than their interval: they never go DOWN here.
            policy = node_pb2.HealthPolicy(heartbeat_interval=secs(60), successes_before_up=1)
            _, keys = await make_nodes(stub, md, nodes, policy)
            # First beats write (UNKNOWN -> UP); measure the steady state after them.
            for key in keys:
                await stub.Heartbeat(node_pb2.HeartbeatRequest(), metadata=key_md(key))
            unary_result = await unary(stub, keys, seconds, concurrency)
            stream_result = await stream(stub, keys, seconds)
            detect_result = await detection(stub, md, 20)
    finally:
        proc.terminate()
        proc.wait(20)
    return {
        "benchmark": "heartbeats",
        "backend": ("postgresql" if database_url else "sqlite") + ("+redis" if redis_url else ""),
        "nodes": nodes,
        "seconds": seconds,
        "unary_concurrency": concurrency,
        "cpus": os.cpu_count(),
        "unary": unary_result,
        "stream": stream_result,
        "ratio_beats_per_s_stream_over_unary": (
            round(stream_result["beats_per_s"] / unary_result["beats_per_s"], 2)
            if unary_result["beats_per_s"]
            else None
        ),
        "detection": detect_result,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database-url", default="", help="postgresql://... (default: embedded SQLite)")
    parser.add_argument("--redis-url", default="", help="redis://... (last-seen also kept in Redis)")
    args = parser.parse_args()
    result = asyncio.run(run(args.nodes, args.seconds, args.concurrency, args.database_url, args.redis_url))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
