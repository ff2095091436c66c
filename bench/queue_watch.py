"""WatchQueue fan-out: K contributors hold WatchQueue open on one daemon while the queue
advances; how long until every watcher has its new position, and what a stream costs.

Setup (not timed): a coordd process, K participants signed up and joined to one circuit.
Then K WatchQueue streams are opened (over --channels connections) and, each round, the
contributor holding the turn leaves, which moves every waiter up by one. For each round
and watcher: time from the Leave call to the message carrying the new position.
Memory per stream: the daemon's RSS with all K streams open minus before, divided by K.

Side by side in the same run: a bare grpc.aio server that pushes one message to K open
streams when triggered (no auth, no database, no per-watcher state): the floor for pushing K
messages through grpc.aio on this machine. Its message is a real WatchQueueResponse from the
coordd run (same size), parsed by the client as WatchQueueResponse, one per stream per round
like coordd's. The ratio is the figure to watch. Join throughput (JoinCeremony alone) and the
memory per joined contributor are reported too (the 20,000-contributor run: --watchers 20000).

    .venv/bin/python bench/queue_watch.py --watchers 1000 [--rounds 5] [--channels 8]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import percentile, start_coordd

from coordd_client.v1 import auth_pb2, auth_pb2_grpc, ceremony_pb2_grpc
from coordd_client.v1 import ceremony_pb2 as pb

FAST_ARGON = {
    "COORDD_ARGON2_MEMORY_KIB": "8",
    "COORDD_ARGON2_TIME_COST": "1",
    "COORDD_ARGON2_PARALLELISM": "1",
}
READY = pb.PARTICIPANT_STATUS_READY
OPEN_BATCH = 250


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(latencies: list[float], expected: int) -> dict[str, Any]:
    return {
        "updates": len(latencies),
        "expected": expected,
        # The first update's latency: when the fan-out began (the rest is its spread).
        "min_ms": round(min(latencies, default=0) * 1000, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "max_ms": round(max(latencies, default=0) * 1000, 1),
    }


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def gather_limited(coros: list[Any], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


def client_gc_off() -> None:
    """The bench client's own cyclic GC stays off while it measures (both sides): with 10,000
    watchers in its heap a full collection paused it for a few hundred ms in the middle of a
    round, and the updates waited for the client."""
    gc.collect()
    gc.freeze()
    gc.disable()


class RoundWait:
    """The end of a round: every waiting watcher updated (or failed). One counter, not a task
    per watcher: gathering 10,000 `Event.wait()`s made the client create 10,000 tasks just as
    the updates began to arrive, and the updates waited for the client, not for coordd."""

    def __init__(self, watchers: int) -> None:
        self.left = watchers
        self.done = asyncio.Event()
        if watchers <= 0:
            self.done.set()

    def hit(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done.set()


class Watcher:
    """One contributor's WatchQueue stream; records when each round's update arrives."""

    def __init__(self, token: str) -> None:
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.token = token
        self.position = 0
        self.status = 0
        self.first = asyncio.Event()
        self.round: RoundWait | None = None
        self.latency: float | None = None
        self.round_start = 0.0
        self.call: Any = None
        self.error = ""
        self.sample = b""

    async def run(self, stub: ceremony_pb2_grpc.CeremonyServiceStub, ceremony: str) -> None:
        self.call = stub.WatchQueue(pb.WatchQueueRequest(ceremony=ceremony), metadata=self.metadata)
        try:
            async for message in self.call:
                changed = message.position != self.position or message.participant.status != self.status
                self.position, self.status = message.position, message.participant.status
                self.sample = message.SerializeToString()
                if not self.first.is_set():
                    self.first.set()
                elif changed and self.latency is None and self.round_start:
                    self.latency = time.perf_counter() - self.round_start
                    if self.round is not None:
                        self.round.hit()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = f"{exc.code().name}: {exc.details()}"
                self.first.set()
                if self.round is not None and self.latency is None:
                    self.round.hit()


# `--gc-threshold N`: the daemon runs with its startup heap frozen out of the cyclic GC and a
# first-generation threshold of N (an experiment: `coordd serve` itself does not do this).
GC_TUNED = (
    "import gc, sys; from coordd import cli; gc.freeze(); "
    "gc.set_threshold({threshold}, 20, 100); sys.exit(cli.main())"
)


def start_daemon(gc_threshold: int) -> tuple[subprocess.Popen[bytes], int, str]:
    if not gc_threshold:
        return start_coordd(FAST_ARGON)
    data = tempfile.mkdtemp(prefix="coordd-bench-")
    port_file = Path(data) / "port"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COORDD_")}
    env.update({"COORDD_LOG_LEVEL": "warning", "COORDD_LOG_FORMAT": "json", **FAST_ARGON})
    code = GC_TUNED.format(threshold=gc_threshold)
    args = ["serve", "--data-dir", data, "--listen", "127.0.0.1:0", "--port-file", str(port_file)]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("coordd did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text()), data


async def coordd_side(watchers: int, rounds: int, channels: int, gc_threshold: int = 0) -> dict[str, Any]:
    proc, port, data_dir = start_daemon(gc_threshold)
    target = f"127.0.0.1:{port}"
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordd",
            "admin",
            "create-user",
            "--data-dir",
            data_dir,
            "--email",
            "bench-coordinator@example.com",
            "--role",
            "coordinator",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **FAST_ARGON},
        check=True,
    )
    admin = (("authorization", f"Bearer {json.loads(created.stdout)['api_key_secret']}"),)
    chans = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    try:
        stub = ceremony_pb2_grpc.CeremonyServiceStub(chans[0])
        auth = auth_pb2_grpc.AuthServiceStub(chans[0])
        now = datetime.now(UTC)
        start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
        start.FromDatetime(now)
        end.FromDatetime(now + timedelta(hours=2))
        ceremony = (
            await stub.CreateCeremony(
                pb.CreateCeremonyRequest(
                    title="bench",
                    prefix=f"bench-{uuid.uuid4().hex[:8]}",
                    start_time=start,
                    end_time=end,
                    timeout=pb.TimeoutConfig(
                        policy=pb.TIMEOUT_POLICY_FIXED,
                        fixed_timeout=duration_pb2.Duration(seconds=3600),
                        start_window=duration_pb2.Duration(seconds=3600),
                    ),
                    verifier=pb.Verifier(name="none"),
                ),
                metadata=admin,
            )
        ).ceremony
        circuit = (
            await stub.AddCircuit(
                pb.AddCircuitRequest(parent=ceremony.name, display_name="c"), metadata=admin
            )
        ).circuit
        genesis = b"genesis" * 10
        import hashlib

        await stub.UploadContribution(
            iter(
                [
                    pb.UploadContributionRequest(
                        header=pb.UploadHeader(
                            circuit=circuit.name,
                            size_bytes=len(genesis),
                            blake2b_512=hashlib.blake2b(genesis, digest_size=64).digest(),
                        )
                    ),
                    pb.UploadContributionRequest(chunk=pb.UploadChunk(offset=0, data=genesis)),
                ]
            ),
            metadata=admin,
        )
        setup_started = time.perf_counter()

        async def sign_up(i: int) -> str:
            reply = await auth.SignUp(
                auth_pb2.SignUpRequest(
                    email=f"w{i}-{uuid.uuid4().hex[:6]}@example.com", password="watcher password"
                )
            )
            return str(reply.access_token)

        async def join(token: str) -> None:
            md = (("authorization", f"Bearer {token}"),)
            await stub.JoinCeremony(pb.JoinCeremonyRequest(ceremony=ceremony.name), metadata=md)

        # The scheduler opens the ceremony within a second of start_time.
        while (
            await stub.GetCeremony(pb.GetCeremonyRequest(name=ceremony.name), metadata=admin)
        ).ceremony.state != (pb.CEREMONY_STATE_OPENED):
            await asyncio.sleep(0.1)
        progress(f"signing up and joining {watchers + rounds} participants")
        tokens = await gather_limited([sign_up(i) for i in range(watchers + rounds)], 32)
        rss_before_joins = rss_kib(proc.pid)
        joins_started = time.perf_counter()
        await gather_limited([join(t) for t in tokens], 32)
        join_s = time.perf_counter() - joins_started
        progress(f"joined in {time.perf_counter() - setup_started:.1f} s; opening streams")
        setup_s = time.perf_counter() - setup_started
        rss_before = rss_kib(proc.pid)
        all_watchers = [Watcher(t) for t in tokens]
        stubs = [ceremony_pb2_grpc.CeremonyServiceStub(c) for c in chans]
        opened = time.perf_counter()
        # Streams open in batches: a burst of thousands of new streams at once leaves some of
        # them stalled in grpc (seen with the bare grpc.aio server too), so clients ramp up.
        tasks = []
        for i, w in enumerate(all_watchers):
            tasks.append(asyncio.create_task(w.run(stubs[i % channels], ceremony.name)))
            if len(tasks) % OPEN_BATCH == 0 or len(tasks) == len(all_watchers):
                batch = all_watchers[len(tasks) - (len(tasks) - 1) % OPEN_BATCH - 1 : len(tasks)]
                await asyncio.wait_for(asyncio.gather(*(b.first.wait() for b in batch)), 120)
        open_s = time.perf_counter() - opened
        failed = [w.error for w in all_watchers if w.error]
        if failed:
            raise RuntimeError(f"{len(failed)} streams failed, e.g. {failed[0]}")
        progress(f"{len(all_watchers)} streams open in {open_s:.1f} s; advancing the queue")
        await asyncio.sleep(1.0)
        rss_open = rss_kib(proc.pid)
        latencies: list[float] = []
        per_round = []
        round_cpu = 0.0
        client_gc_off()
        for _ in range(rounds):
            # Let the previous round settle (the old holder's last message) and every stream idle.
            await asyncio.sleep(0.5)
            holder = next(w for w in all_watchers if w.status == READY)
            waiting = [w for w in all_watchers if w is not holder and w.position > 0]
            round_wait = RoundWait(len(waiting))
            t0 = time.perf_counter()
            for w in waiting:
                w.latency, w.round_start = None, t0
                w.round = round_wait
            cpu_before = cpu_s(proc.pid)
            await stub.LeaveCeremony(
                pb.LeaveCeremonyRequest(ceremony=ceremony.name), metadata=holder.metadata
            )
            left = time.perf_counter() - t0
            await asyncio.wait_for(round_wait.done.wait(), 120)
            round_cpu += cpu_s(proc.pid) - cpu_before
            failed = [w.error for w in waiting if w.error]
            if failed:
                raise RuntimeError(f"{len(failed)} streams failed, e.g. {failed[0]}")
            got = [w.latency for w in waiting if w.latency is not None]
            progress(f"round {len(per_round) + 1}: p99 {percentile(got, 99) * 1000:.0f} ms")
            latencies.extend(got)
            # The LeaveCeremony call itself (its reply), part of every update's latency.
            per_round.append({**summary(got, len(waiting)), "leave_reply_ms": round(left * 1000, 1)})
            for w in waiting:
                w.round_start, w.round = 0.0, None
        gc.enable()
        rss_after = rss_kib(proc.pid)
        # A waiting watcher's last message: the bare fan-out sends messages of this size.
        sample = max((w.sample for w in all_watchers if w.position > 0), key=len, default=b"")
        for w in all_watchers:
            if w.call is not None:
                w.call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for c in chans:
            await c.close()
        proc.terminate()
        proc.wait(20)
    streams = len(all_watchers)
    return {
        "streams": streams,
        "setup_s": round(setup_s, 1),
        "open_all_streams_s": round(open_s, 2),
        # JoinCeremony alone (32 in flight), after the sign-ups.
        "joins_per_s": round(len(tokens) / join_s, 1),
        "kib_per_joined_contributor_without_stream": round((rss_before - rss_before_joins) / len(tokens), 2),
        "update_latency": summary(latencies, sum(r["expected"] for r in per_round)),
        # Daemon CPU spent per delivered update: robust to other load on the machine.
        "daemon_cpu_us_per_update": round(round_cpu / max(len(latencies), 1) * 1e6, 1),
        "rounds": per_round,
        "rss_kib_before_streams": rss_before,
        "rss_kib_with_streams": rss_open,
        "rss_kib_after_rounds": rss_after,
        "kib_per_stream": round((rss_open - rss_before) / streams, 2),
        "message_bytes": len(sample),
        "sample": sample.hex(),
    }


BASELINE_SERVER = r"""
import asyncio, sys, grpc

async def main(port_file):
    subscribers = set()
    async def watch(request, context):
        queue = asyncio.Queue()
        subscribers.add(queue)
        try:
            yield b""
            while True:
                yield await queue.get()
        finally:
            subscribers.discard(queue)
    async def trigger(request, context):
        for q in list(subscribers):
            q.put_nowait(request)
        return b""
    handler = grpc.method_handlers_generic_handler("bench.Fanout", {
        "Watch": grpc.unary_stream_rpc_method_handler(watch),
        "Trigger": grpc.unary_unary_rpc_method_handler(trigger),
    })
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_concurrent_streams", 100000)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    open(port_file, "w").write(str(port))
    await server.wait_for_termination()

asyncio.run(main(sys.argv[1]))
"""


async def baseline_side(watchers: int, rounds: int, channels: int, sample: bytes) -> dict[str, Any]:
    """The same K streams, the same number of messages of the same size (a real
    WatchQueueResponse from the coordd run, its queue_length set to the round), parsed by the
    client as WatchQueueResponse like coordd's."""
    port_file = Path(tempfile.mkdtemp(prefix="fanout-")) / "port"
    proc = subprocess.Popen([sys.executable, "-c", BASELINE_SERVER, str(port_file)])
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None:
            raise RuntimeError("baseline server did not start")
        await asyncio.sleep(0.05)
    target = f"127.0.0.1:{port_file.read_text()}"
    chans = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    try:
        rss_before = rss_kib(proc.pid)
        stamps: dict[int, list[float]] = {}
        first = [asyncio.Event() for _ in range(watchers)]
        calls = []

        async def watch(i: int) -> None:
            call = chans[i % channels].unary_stream(
                "/bench.Fanout/Watch", response_deserializer=pb.WatchQueueResponse.FromString
            )(b"")
            calls.append(call)
            try:
                async for message in call:
                    if not message.queue_length:
                        first[i].set()
                    else:
                        stamps.setdefault(message.queue_length - 1, []).append(time.perf_counter())
            except grpc.aio.AioRpcError:
                pass

        tasks = []
        for i in range(watchers):
            tasks.append(asyncio.create_task(watch(i)))
            if len(tasks) % OPEN_BATCH == 0 or len(tasks) == watchers:
                start = len(tasks) - (len(tasks) - 1) % OPEN_BATCH - 1
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first[start : len(tasks)])), 120)
        await asyncio.sleep(1.0)
        rss_open = rss_kib(proc.pid)
        trigger = chans[0].unary_unary("/bench.Fanout/Trigger")
        latencies: list[float] = []
        per_round = []
        round_cpu = 0.0
        client_gc_off()
        for r in range(rounds):
            await asyncio.sleep(0.5)
            cpu_before = cpu_s(proc.pid)
            t0 = time.perf_counter()
            message = pb.WatchQueueResponse.FromString(sample)
            message.queue_length = r + 1
            await trigger(message.SerializeToString())
            while len(stamps.get(r, [])) < watchers:
                await asyncio.sleep(0.01)
            round_cpu += cpu_s(proc.pid) - cpu_before
            got = [t - t0 for t in stamps[r]]
            per_round.append(summary(got, watchers))
            latencies.extend(got)
        gc.enable()
        for call in calls:
            call.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for c in chans:
            await c.close()
        proc.terminate()
        proc.wait(10)
    return {
        "streams": watchers,
        "update_latency": summary(latencies, watchers * rounds),
        "server_cpu_us_per_update": round(round_cpu / max(len(latencies), 1) * 1e6, 1),
        "kib_per_stream": round((rss_open - rss_before) / watchers, 2),
        "rounds": per_round,
    }


async def run(watchers: int, rounds: int, channels: int, gc_threshold: int) -> dict[str, Any]:
    coordd = await coordd_side(watchers, rounds, channels, gc_threshold)
    baseline = await baseline_side(coordd["streams"], rounds, channels, bytes.fromhex(coordd.pop("sample")))
    c, b = coordd["update_latency"], baseline["update_latency"]
    return {
        "benchmark": "queue_watch",
        "watchers": coordd["streams"],
        "rounds": rounds,
        "channels": channels,
        "daemon_gc": f"frozen startup heap, threshold {gc_threshold}"
        if gc_threshold
        else "coordd default (COORDD_GC_THRESHOLD)",
        "cpus": os.cpu_count(),
        "loadavg_1m_at_end": os.getloadavg()[0],
        "coordd": coordd,
        "bare_grpc_fanout": baseline,
        "ratio_p50_coordd_over_bare": round(c["p50_ms"] / b["p50_ms"], 2) if b["p50_ms"] else None,
        "ratio_p99_coordd_over_bare": round(c["p99_ms"] / b["p99_ms"], 2) if b["p99_ms"] else None,
        "ratio_server_cpu_per_update_coordd_over_bare": round(
            coordd["daemon_cpu_us_per_update"] / baseline["server_cpu_us_per_update"], 2
        )
        if baseline["server_cpu_us_per_update"]
        else None,
        "goal": {"p99_ratio": 1.2, "kib_per_stream": 28},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--gc-threshold", type=int, default=0, help="experiment: tuned GC in the daemon")
    args = parser.parse_args()
    print(
        json.dumps(asyncio.run(run(args.watchers, args.rounds, args.channels, args.gc_threshold)), indent=2)
    )


if __name__ == "__main__":
    main()
