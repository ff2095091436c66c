"""A fleet on one process: N nodes (default 10,000) each beating once a second on its own
StreamHeartbeats stream against one real `coordd serve` process. Reports the beats/s the
server accepted (the `beats` each stream's reply counts), the detection latency of a
few nodes that stop (last beat -> DOWN seen on WatchNodes; bound: window + 1 s), and the
daemon's CPU (share of one core) and RSS while the fleet beats.

The beating is spread over `--workers` client processes (one asyncio loop each), so the
client is not the bottleneck on small machines; the per-peer rate limit is raised for the
run (every stream comes from 127.0.0.1).

    .venv/bin/python bench/fleet.py [--nodes 10000] [--seconds 20] [--workers 2] [--database-url ...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PgDatabase, percentile, start_coordd, wait_for_port

from coordd_client.v1 import auth_pb2, auth_pb2_grpc, common_pb2, node_pb2, node_pb2_grpc

INTERVAL_S, MISSES, GRACE_S = 1.0, 2, 1.0
WINDOW_S = INTERVAL_S * MISSES + GRACE_S
DETECTED = 50
RECONNECT_S = 0.5  # an agent's first reconnect pause (coordctl node agent)


def secs(value: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromTimedelta(timedelta(seconds=value))
    return out


def key_md(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric(metrics_port: int, name: str) -> float:
    """One unlabelled sample of the server's Prometheus text on its metrics port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def beats_counted(metrics_port: int) -> float:
    """The server's coordd_heartbeats_total."""
    return metric(metrics_port, "coordd_heartbeats_total")


def sample_backlog(metrics_port: int, until: float, samples: list[float]) -> None:
    """Thread: the daemon's coordd_heartbeat_backlog_seconds twice a second until `until`
    (the floor server has no such gauge: it reads 0)."""
    while time.time() < until:
        try:
            samples.append(metric(metrics_port, "coordd_heartbeat_backlog_seconds"))
        except OSError:
            return
        time.sleep(0.5)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def beat_streams(
    target: str,
    keys: list[str],
    start_at: float,
    steady_at: float,
    stop_at: float,
    ramp: float,
    per_channel: int,
) -> tuple[float, float, int, dict[str, int]]:
    """Each key: one stream, opened `ramp` streams a second from start_at, then one beat a
    second until stop_at. Returns the sum over streams of the beats the server says it
    accepted / the seconds the stream was open: the fleet's accepted beats/s once all are
    open, this process's CPU over the steady part (share of one core), the reconnects and
    their failures by kind. A channel (one HTTP/2 connection) per `per_channel` streams."""
    # A connection of its own per channel (gRPC shares one between equal channels otherwise).
    options = [("grpc.max_concurrent_streams", 100_000), ("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(target, options=options) for _ in range(max(1, len(keys) // per_channel))
    ]
    stubs = [node_pb2_grpc.NodeServiceStub(c) for c in channels]
    request = node_pb2.StreamHeartbeatsRequest(metrics={"load": 0.5})
    failures: collections.Counter[str] = collections.Counter()

    async def node(index: int, key: str) -> tuple[float, int, float | None]:
        # gRPC core refuses new calls beyond its pending-request limit when thousands
        # arrive within a second: streams open at `ramp` a second, as agents' jitter does.
        # A stream that fails is opened again after a short pause, as `coordctl node agent`
        # does (its backoff is bounded by what the daemon advertises): beats sent on a
        # stream that failed are not counted, since its reply never came.
        next_at = start_at + index / ramp
        await asyncio.sleep(max(next_at - time.time(), 0))
        opened = time.time()
        accepted = 0
        reconnects = 0
        ended_at, latency = None, None
        while next_at < stop_at:
            call = stubs[index % len(stubs)].StreamHeartbeats(metadata=key_md(key))
            try:
                while next_at < stop_at:
                    delay = next_at - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await call.write(request)
                    next_at += INTERVAL_S
                ended_at = time.time()
                await call.done_writing()
                accepted += (await call).beats
                latency = time.time() - ended_at
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError) as exc:
                reconnects += 1
                if isinstance(exc, grpc.aio.AioRpcError):
                    failures[f"{exc.code().name}: {exc.details()}"] += 1
                else:  # a write after the call ended: its status says why
                    failures[f"{(await call.code()).name} (write after end): {await call.details()}"] += 1
                call.cancel()
                await asyncio.sleep(RECONNECT_S)
                next_at = max(next_at, time.time())
        # Beats counted over the seconds the stream was writing; the reply's delay apart.
        return accepted / max((ended_at or time.time()) - opened, INTERVAL_S), reconnects, latency

    async def own_cpu() -> float:
        await asyncio.sleep(max(steady_at - time.time(), 0))
        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.sleep(max(stop_at - 0.5 - time.time(), 0.1))
        return (time.process_time() - cpu) / (time.monotonic() - wall)

    cpu_task = asyncio.create_task(own_cpu())
    try:
        replies = await asyncio.gather(*(node(i, k) for i, k in enumerate(keys)), return_exceptions=True)
    finally:
        for channel in channels:
            await channel.close()
    crashed = [r for r in replies if isinstance(r, BaseException)]
    if crashed:
        print(f"worker: {len(crashed)} nodes failed, e.g. {crashed[0]!r}", file=sys.stderr)
    done = [r for r in replies if isinstance(r, tuple)]
    latencies = [r[2] for r in done if r[2] is not None]
    return sum(r[0] for r in done), await cpu_task, sum(r[1] for r in done), dict(failures), latencies


NODE_CLIENT = Path(__file__).resolve().parent / "fleet_client.js"
NODE_MODULES = Path(__file__).resolve().parents[1] / "tools" / "node_modules"
# Streams per HTTP/2 connection (both clients; `--streams-per-connection`). An agent has a
# connection of its own; 500 streams on one connection made gRPC cancel new streams when
# the daemon was busy (CANCELLED before the servicer saw them), 50 did not.
PER_CHANNEL = 50


def node_worker(
    target: str,
    keys: list[str],
    start_at: float,
    steady_at: float,
    stop_at: float,
    ramp: float,
    per_channel: int,
    out: multiprocessing.Queue,
) -> None:
    """The same beating by bench/fleet_client.js (@grpc/grpc-js from tools/package.json):
    about a third of grpc.aio's client CPU per beat, so the load generator leaves the daemon
    the core it is measured on."""
    request = node_pb2.StreamHeartbeatsRequest(metrics={"load": 0.5}).SerializeToString()
    job = {
        "target": target,
        "keys": keys,
        "start_at": start_at,
        "steady_at": steady_at,
        "stop_at": stop_at,
        "ramp": ramp,
        "interval": INTERVAL_S,
        "reconnect_s": RECONNECT_S,
        "per_channel": per_channel,
        "request_b64": base64.b64encode(request).decode(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.json"
        path.write_text(json.dumps(job))
        done = subprocess.run(
            ["node", str(NODE_CLIENT), str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
            timeout=stop_at - time.time() + 120,
            check=False,
        )
    if done.returncode != 0:
        print(f"node client failed: {done.stderr[-2000:]}", file=sys.stderr)
        out.put((0.0, 0.0, 0, {"node client failed": 1}, []))
        return
    result = json.loads(done.stdout)
    out.put(
        (
            result["accepted_per_s"],
            result["cpu_cores"],
            result["reconnects"],
            result["failures"],
            result["reply_latencies"],
        )
    )


def worker(
    target: str,
    keys: list[str],
    start_at: float,
    steady_at: float,
    stop_at: float,
    ramp: float,
    per_channel: int,
    out: multiprocessing.Queue,
) -> None:
    out.put(asyncio.run(beat_streams(target, keys, start_at, steady_at, stop_at, ramp, per_channel)))


async def setup(target: str, nodes: int) -> tuple[tuple[tuple[str, str], ...], str, list[str]]:
    async with grpc.aio.insecure_channel(target) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        stub = node_pb2_grpc.NodeServiceStub(channel)
        signed = await auth.SignUp(
            auth_pb2.SignUpRequest(
                email=f"fleet-{uuid.uuid4().hex[:6]}@example.com",
                password="correct horse battery",
                roles=[common_pb2.ROLE_NODE_OPERATOR],
            )
        )
        md = (("authorization", f"Bearer {signed.access_token}"),)
        policy = node_pb2.HealthPolicy(
            heartbeat_interval=secs(INTERVAL_S), misses=MISSES, grace=secs(GRACE_S), successes_before_up=1
        )
        project = (
            await stub.CreateProject(
                node_pb2.CreateProjectRequest(
                    display_name="fleet", slug=f"fleet-{uuid.uuid4().hex[:8]}", health_policy=policy
                ),
                metadata=md,
            )
        ).project.name
        keys: list[str] = []
        names: list[str] = []
        semaphore = asyncio.Semaphore(32)

        async def register(i: int) -> None:
            async with semaphore:
                reply = await stub.RegisterNode(
                    node_pb2.RegisterNodeRequest(project=project, display_name=f"n{i}"), metadata=md
                )
                keys.append(reply.api_key_secret)
                names.append(reply.node.name)

        await asyncio.gather(*(register(i) for i in range(nodes)))
        # The nodes whose detection is measured: a project of their own, so WatchNodes
        # carries their transitions only (not the fleet's 10,000 first UPs).
        watched = (
            await stub.CreateProject(
                node_pb2.CreateProjectRequest(
                    display_name="watched", slug=f"watched-{uuid.uuid4().hex[:8]}", health_policy=policy
                ),
                metadata=md,
            )
        ).project.name
        for i in range(DETECTED):
            reply = await stub.RegisterNode(
                node_pb2.RegisterNodeRequest(project=watched, display_name=f"w{i}"), metadata=md
            )
            keys.append(reply.api_key_secret)
        return md, watched, keys


async def detect(
    target: str, md: tuple[tuple[str, str], ...], project: str, keys: list[str], stop_at: float
) -> dict:
    """The DETECTED nodes beat until stop_at, then stop: last beat -> DOWN on WatchNodes."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = node_pb2_grpc.NodeServiceStub(channel)
        last_beat: dict[str, float] = {}
        downs: dict[str, float] = {}
        seen: dict[str, float] = {}
        watch = stub.WatchNodes(node_pb2.WatchNodesRequest(project=project), metadata=md)

        async def watcher() -> None:
            async for event in watch:
                if event.transition.to_status == node_pb2.HEALTH_STATUS_DOWN:
                    downs.setdefault(event.node.name, time.time())
                    # The daemon's own record of the last beat it received.
                    seen[event.node.name] = event.node.last_heartbeat_time.ToDatetime(tzinfo=UTC).timestamp()

        watching = asyncio.create_task(watcher())

        errors: list[str] = []

        async def node(key: str) -> None:
            while time.time() < stop_at:
                sent = time.time()  # the send time: the latency measured is an upper bound
                try:
                    reply = await stub.Heartbeat(node_pb2.HeartbeatRequest(), metadata=key_md(key))
                    last_beat[reply.node] = sent
                except grpc.aio.AioRpcError as exc:  # an overloaded server: a missed beat
                    errors.append(exc.code().name)
                await asyncio.sleep(INTERVAL_S)

        await asyncio.gather(*(node(k) for k in keys))
        deadline = time.time() + WINDOW_S + 10
        while len(downs) < len(keys) and time.time() < deadline:
            await asyncio.sleep(0.1)
        watching.cancel()
        # From the last beat the daemon received (its last_heartbeat_time) to the DOWN seen here;
        # `from_send`: from when that beat was sent (includes the beat's own queueing).
        latencies = [downs[n] - seen[n] for n in last_beat if n in downs]
        from_send = [downs[n] - last_beat[n] for n in last_beat if n in downs]
    return {
        "nodes": len(keys),
        "detected": len(latencies),
        "bound_s": WINDOW_S + 1,
        "p50_s": round(percentile(latencies, 50), 3),
        "p99_s": round(percentile(latencies, 99), 3),
        "max_s": round(max(latencies, default=0.0), 3),
        "from_send_p99_s": round(percentile(from_send, 99), 3),
        "beat_errors": len(errors),
        # Every latency, to tell one straggler from a shifted distribution.
        "all_s": sorted(round(x, 2) for x in latencies),
    }


def _drive(
    target: str,
    pid: int,
    fleet: list[str],
    seconds: float,
    workers: int,
    ramp: float,
    warm_s: float,
    client: str,
    per_channel: int,
    metrics_port: int,
    during: Any = None,
) -> dict:
    """Beats `fleet` against `target` (the server process `pid`) and measures the steady
    part; `during()` runs once the steady part has begun (profiling, detection) and its
    result is returned under "during"."""
    start_at = time.time() + 4.0
    steady_at = start_at + len(fleet) / ramp + warm_s
    stop_at = steady_at + seconds
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=node_worker if client == "node" else worker,
            args=(target, fleet[i::workers], start_at, steady_at, stop_at, ramp / workers, per_channel, out),
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    # The ramp (streams opening: each authenticates once) apart from the steady part.
    time.sleep(max(start_at - time.time(), 0))
    ramp_cpu, ramp_wall = cpu_seconds(pid), time.monotonic()
    time.sleep(max(steady_at - time.time(), 0))
    cpu_before, wall_before, beats_before = cpu_seconds(pid), time.monotonic(), beats_counted(metrics_port)
    backlog: list[float] = []
    sampler = threading.Thread(
        target=sample_backlog, args=(metrics_port, stop_at - 0.5, backlog), daemon=True
    )
    sampler.start()
    ramp_cores = (cpu_before - ramp_cpu) / max(wall_before - ramp_wall, 1e-3)
    extra = during() if during is not None else None
    time.sleep(max(stop_at - time.time() - 0.5, 0))
    cpu_after, wall_after, beats_after = cpu_seconds(pid), time.monotonic(), beats_counted(metrics_port)
    rss = rss_mb(pid)
    load = os.getloadavg()
    sampler.join(15)
    results = [out.get(timeout=120) for _ in procs]
    accepted = sum(r[0] for r in results)
    failures: collections.Counter[str] = collections.Counter()
    for r in results:
        failures.update(r[3])
    for p in procs:
        p.join(30)
    steady_cores = (cpu_after - cpu_before) / (wall_after - wall_before)
    # What the server read while the steady part lasted (its own counter): a server that
    # falls behind reads fewer than the fleet sends, however many it reads later.
    handled = (beats_after - beats_before) / (wall_after - wall_before)
    replies = [latency for r in results for latency in r[4]]
    return {
        "beats_accepted_per_s": round(handled, 1),
        # The `beats` the streams' replies counted over the seconds each stream was writing
        # (the fleet's whole run; a server that catches up later counts them all).
        "beats_replied_per_s": round(accepted, 1),
        "daemon_cpu_cores": round(steady_cores, 2),
        # The steadier figure on a shared machine: daemon CPU per beat it read.
        "daemon_cpu_us_per_beat": round(steady_cores * 1e6 / max(handled, 1.0), 1),
        "daemon_cpu_cores_ramp": round(ramp_cores, 2),
        "daemon_rss_mb": round(rss, 1),
        # Streams that failed (the daemon did not take the call in time) and were opened again.
        "stream_reconnects": sum(r[2] for r in results),
        "stream_failures": dict(failures.most_common(5)),
        # From a stream's half-close to its reply: how far behind the daemon is at the end.
        "reply_after_close_p50_s": round(percentile(replies, 50), 3),
        "reply_after_close_p99_s": round(percentile(replies, 99), 3),
        # The daemon's own backlog (coordd_heartbeat_backlog_seconds) over the steady part.
        "backlog_p50_s": round(percentile(backlog, 50), 3) if backlog else None,
        "backlog_max_s": round(max(backlog), 3) if backlog else None,
        "client_cpu_cores": [round(r[1], 2) for r in results],
        "load_average": [round(x, 2) for x in load],
        "during": extra,
    }


def run_floor(
    nodes: int, seconds: float, workers: int, ramp: float, warm_s: float, client: str, per_channel: int
) -> dict:
    """The same fleet against bench/fleet_floor_server.py (a handler that only counts)."""
    port_file = Path(tempfile.mkdtemp(prefix="fleet-floor-")) / "port"
    server = Path(__file__).parent / "fleet_floor_server.py"
    metrics_port = free_port()
    proc = subprocess.Popen([sys.executable, str(server), str(port_file), str(metrics_port)])
    try:
        target = f"127.0.0.1:{wait_for_port(proc, port_file)}"
        keys = [f"floor-{i}" for i in range(nodes)]
        result = _drive(
            target, proc.pid, keys, seconds, workers, ramp, warm_s, client, per_channel, metrics_port
        )
        result.pop("during")
        return result
    finally:
        proc.terminate()
        proc.wait(30)


def run(
    nodes: int,
    seconds: float,
    workers: int,
    database_url: str,
    ramp: float,
    redis_url: str = "",
    profile: str = "",
    warm_s: float = 10.0,
    gil: bool = False,
    client: str = "node",
    per_channel: int = PER_CHANNEL,
) -> dict:
    env = {
        "COORDD_RATE_LIMIT_PEER_RPS": "1000000",
        "COORDD_RATE_LIMIT_PEER_BURST": "1000000",
        "COORDD_RATE_LIMIT_CALLER_RPS": "1000000",
        "COORDD_RATE_LIMIT_CALLER_BURST": "1000000",
    }
    # A database of its own for each run: nodes left by an earlier run would be detected as DOWN
    # (thousands of transitions) while this one measures.
    pg = PgDatabase(database_url, "fleet") if database_url else None
    if pg is not None:
        env["COORDD_DATABASE_URL"] = pg.url
    if redis_url:
        env["COORDD_REDIS_URL"] = redis_url
        env["COORDD_REDIS_PREFIX"] = f"bench-fleet-{uuid.uuid4().hex[:6]}"
    if os.environ.get("FLEET_DAEMON_LOG"):
        env.update({"COORDD_LOG_LEVEL": "info"})
    metrics_port = free_port()
    env["COORDD_METRICS_PORT"] = str(metrics_port)
    try:
        proc, port, data_dir = start_coordd(env)
    except BaseException:
        if pg is not None:
            pg.drop()
        raise
    target = f"127.0.0.1:{port}"
    try:
        started = time.monotonic()
        md, project, keys = asyncio.run(setup(target, nodes))
        setup_s = time.monotonic() - started
        fleet, detected = keys[:nodes], keys[nodes:]

        def during() -> dict:
            spy = None
            if profile:  # py-spy (the `bench` extra) samples the daemon over the steady part
                spy = subprocess.Popen(
                    [
                        *(str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(proc.pid)),
                        *("--duration", str(int(seconds) - 1), "--output", profile),
                        *(["--gil"] if gil else []),
                        *("--format", "raw" if profile.endswith(".txt") else "flamegraph"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            # A few nodes beat three times, then stop (while the fleet keeps beating).
            detection = asyncio.run(detect(target, md, project, detected, time.time() + 3 * INTERVAL_S))
            return {"detection": detection, "spy": spy}

        shape = (seconds, workers, ramp, warm_s, client, per_channel, metrics_port)
        result = _drive(target, proc.pid, fleet, *shape, during)
        extra = result.pop("during")
        if extra["spy"] is not None:
            extra["spy"].wait(60)
        return {
            "nodes": nodes,
            "backend": ("postgresql" if database_url else "sqlite") + (" + redis" if redis_url else ""),
            "client": "node @grpc/grpc-js" if client == "node" else "python grpc.aio",
            "client_workers": workers,
            "streams_per_connection": per_channel,
            "setup_s": round(setup_s, 1),
            "streams_opened_per_s": ramp,
            "steady_s": seconds,
            "beats_expected_per_s": nodes / INTERVAL_S,
            **result,
            "detection": extra["detection"],
            "data_dir": data_dir,
        }
    finally:
        proc.terminate()
        proc.wait(30)
        if pg is not None:
            pg.drop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--database-url", default="", help="a PostgreSQL server: each run makes (and drops) its own database"
    )
    parser.add_argument(
        "--redis-url", default="", help="last-seen in Redis each second, the database every 5 s"
    )
    parser.add_argument("--ramp", type=float, default=500.0, help="streams opened per second (all workers)")
    parser.add_argument("--profile", default="", help="py-spy output (.svg flamegraph, .txt collapsed)")
    parser.add_argument("--gil", action="store_true", help="profile only samples holding the GIL")
    parser.add_argument(
        "--warm", type=float, default=10.0, help="seconds between the last stream opening and the steady part"
    )
    parser.add_argument("--streams-per-connection", type=int, default=PER_CHANNEL)
    parser.add_argument(
        "--client",
        choices=("node", "python"),
        default="node",
        help="what beats: bench/fleet_client.js (default; cheaper per beat) or grpc.aio processes",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="then the same fleet against a bare grpc.aio handler that only counts (the floor)",
    )
    args = parser.parse_args()
    result = run(
        args.nodes,
        args.seconds,
        args.workers,
        args.database_url,
        args.ramp,
        args.redis_url,
        args.profile,
        args.warm,
        args.gil,
        args.client,
        args.streams_per_connection,
    )
    if args.floor:
        shape = (args.ramp, args.warm, args.client, args.streams_per_connection)
        floor = run_floor(args.nodes, args.seconds, args.workers, *shape)
        result["floor"] = floor
        # Side by side in one run: what coordd costs a beat over what the streams cost.
        result["cpu_per_beat_vs_floor"] = round(
            result["daemon_cpu_us_per_beat"] / max(floor["daemon_cpu_us_per_beat"], 1e-9), 2
        )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
