"""Cross-replica wake-up latency: a change committed on replica A, seen by a stream on replica B.

Two in-process coordd Apps (each its own event loop thread, as tests/support/server.py runs
them) on ONE fresh, migrated PostgreSQL database, first with the PostgreSQL LISTEN/NOTIFY bus
(no Redis), then with Redis. In one process both replicas share a clock, so the latency is
measured from the commit itself, not from a client's view of it:

- t0: A's commit hook (Store.on_commit, right after COMMIT on A's DB thread);
- bus: B's bus dispatches the event on B's event loop (what wakes WatchJob/WatchQueue...);
- stream: a gRPC WatchEvents client on B receives it.

Beside each, `<bus>_transport_alone`: the same number of bare notifications through that
transport at the same pace (no coordd), to tell the machine's load from the bus's own cost.

The change is a SignUp through A's gRPC API, one at a time with a short pause (latency, not
throughput). Both replicas and the client share one Python process (one GIL): the figures are
an upper bound of what two separate processes see.

    PYTHONPATH=server:clients python bench/bus_latency.py [--changes 300] [--bus postgresql,redis]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import percentile  # noqa: E402

REDIS_URL = os.environ.get("COORDD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else 0.0,
    }


def run(bus: str, changes: int, pause_s: float) -> dict[str, Any]:
    import grpc

    from coordd_client.v1 import status_pb2, status_pb2_grpc
    from tests.support.infra import migrated_database
    from tests.support.server import ServerHandle, bearer, make_settings

    redis_url = REDIS_URL if bus == "redis" else ""
    prefix = f"coordd-bench-{uuid.uuid4().hex[:8]}"
    with migrated_database() as url, tempfile.TemporaryDirectory() as data:
        extra = {"jwt_secret": "b" * 40, "redis_prefix": prefix, "scheduler_enabled": False}
        a = ServerHandle(make_settings(data, url, redis_url, **extra))
        b = ServerHandle(make_settings(data, url, redis_url, **extra))
        try:
            assert b.rt.bus.kind == bus, b.rt.bus.kind
            committed: dict[int, float] = {}
            on_bus: dict[int, float] = {}
            on_stream: dict[int, float] = {}
            lock = threading.Lock()

            def commit_hook(events: list) -> None:  # type: ignore[type-arg]
                now = time.perf_counter()
                with lock:
                    for e in events:
                        if e.type == "auth.user.created":
                            committed[e.id] = now

            def bus_hook(events: list) -> None:  # type: ignore[type-arg]
                now = time.perf_counter()
                for e in events:
                    if e.type == "auth.user.created":
                        on_bus.setdefault(e.id, now)

            a.rt.store.on_commit(commit_hook)
            b.rt.bus.add_listener(bus_hook)
            _, admin = a.make_user("admin")
            channel = grpc.insecure_channel(b.target)
            stream = status_pb2_grpc.StatusServiceStub(channel).WatchEvents(
                status_pb2.WatchEventsRequest(type_prefix="auth.user.created"), metadata=bearer(admin)
            )

            def read() -> None:
                try:
                    for message in stream:
                        on_stream.setdefault(int(message.event.name.split("/")[1]), time.perf_counter())
                except grpc.RpcError:
                    pass

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            # Warm-up (and: the stream is subscribed once a change made on A arrives).
            deadline = time.monotonic() + 30
            while not on_stream and time.monotonic() < deadline:
                a.sign_up()
                time.sleep(0.2)
            assert on_stream, "no event crossed from A to B"
            with lock:
                committed.clear()
            on_bus.clear()
            on_stream.clear()
            for _ in range(changes):
                a.sign_up()
                time.sleep(pause_s)
            deadline = time.monotonic() + 10
            while len(on_stream) < len(committed) and time.monotonic() < deadline:
                time.sleep(0.05)
            stream.cancel()
            reader.join(5)
            channel.close()
            with lock:
                ids = sorted(committed)
            bus_lat = [on_bus[i] - committed[i] for i in ids if i in on_bus]
            stream_lat = [on_stream[i] - committed[i] for i in ids if i in on_stream]
            return {
                "changes": len(ids),
                "lost": len(ids) - len(stream_lat),
                "commit_to_bus_on_b": _summary(bus_lat),
                "commit_to_stream_on_b": _summary(stream_lat),
            }
        finally:
            a.stop()
            b.stop()


def baseline(bus: str, changes: int, pause_s: float) -> dict[str, Any]:
    """The transport alone, same machine, same moment: pg_notify -> a LISTENing psycopg2
    connection, or PUBLISH -> a subscribed redis-py client (no coordd in the path)."""
    import select

    got: dict[int, float] = {}
    sent: dict[int, float] = {}
    channel = f"bench_{uuid.uuid4().hex[:8]}"
    if bus == "postgresql":
        import psycopg2

        from tests.support.infra import PG_ADMIN_URL

        listener, publisher = psycopg2.connect(PG_ADMIN_URL), psycopg2.connect(PG_ADMIN_URL)
        listener.autocommit = publisher.autocommit = True
        listener.cursor().execute(f'LISTEN "{channel}"')
        publisher.cursor().execute("SET synchronous_commit = off")

        def receive() -> None:
            while len(got) < changes:
                if select.select([listener], [], [], 5)[0]:
                    listener.poll()
                    now = time.perf_counter()
                    while listener.notifies:
                        got[int(listener.notifies.pop(0).payload)] = now
                else:
                    return

        def send(i: int) -> None:
            publisher.cursor().execute("SELECT pg_notify(%s, %s)", (channel, str(i)))

        close = [listener.close, publisher.close]
    else:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        pubsub = client.pubsub()
        pubsub.subscribe(channel)
        pubsub.get_message(timeout=1)

        def receive() -> None:
            while len(got) < changes:
                message = pubsub.get_message(timeout=5)
                if message is None:
                    return
                if message["type"] == "message":
                    got[int(message["data"])] = time.perf_counter()

        def send(i: int) -> None:
            client.publish(channel, str(i))

        close = [pubsub.close, client.close]
    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    for i in range(changes):
        sent[i] = time.perf_counter()
        send(i)
        time.sleep(pause_s)
    reader.join(10)
    for fn in close:
        fn()
    return {"changes": changes, "lost": changes - len(got), **_summary([got[i] - sent[i] for i in got])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=300)
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between changes")
    parser.add_argument("--bus", default="postgresql,redis")
    args = parser.parse_args()
    from coordd.logging import configure

    configure("console", "error")
    report: dict[str, Any] = {
        "setup": "2 in-process coordd Apps on one fresh PostgreSQL database; SignUp on A, WatchEvents on B",
        "cpus": os.cpu_count(),
    }
    for bus in args.bus.split(","):
        report[bus] = run(bus, args.changes, args.pause)
        report[f"{bus}_transport_alone"] = baseline(bus, args.changes, args.pause)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
