"""Python memory per open WatchQueue stream, by source file: an in-process daemon (the test
server), N streams opened, tracemalloc snapshots before and after, grouped by file. Client-side
files (grpc/_channel.py, threading.py, ...) are the sync client's own and are listed too.

    PYTHONPATH=$PWD/server:$PWD/clients:$PWD .venv/bin/python bench/queue_watch_memory.py --streams 400
    ... --by lineno --top 40     # per source line instead of per file
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import tracemalloc

import grpc

from coordd_client.v1 import ceremony_pb2 as pb
from coordd_client.v1 import ceremony_pb2_grpc
from tests.ceremony.e2e_ceremony.helpers import Ceremonies
from tests.support.server import ServerHandle, bearer, make_settings


def _where(frame: tracemalloc.Frame, by: str) -> str:
    return frame.filename if by == "filename" else f"{frame.filename}:{frame.lineno}"


def _label(stat: tracemalloc.StatisticDiff, by: str) -> str:
    if by != "traceback":
        return _where(stat.traceback[0], by)
    return " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in stat.traceback)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=400)
    parser.add_argument("--by", choices=("filename", "lineno", "traceback"), default="filename")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--frames", type=int, default=1, help="traceback depth (with --by traceback)")
    args = parser.parse_args()
    n = args.streams
    server = ServerHandle(make_settings(tempfile.mkdtemp(prefix="coordd-mem-")))
    try:
        cer = Ceremonies(server)
        ceremony, _ = cer.open()
        tokens = [server.make_user("participant")[1] for _ in range(n + 1)]
        for token in tokens:
            cer.join(ceremony, token)
        stub = ceremony_pb2_grpc.CeremonyServiceStub(grpc.insecure_channel(server.target))
        gc.collect()
        time.sleep(0.5)
        tracemalloc.start(args.frames)
        before = tracemalloc.take_snapshot()
        request = pb.WatchQueueRequest(ceremony=ceremony.name)
        streams = [stub.WatchQueue(request, metadata=bearer(t)) for t in tokens[1:]]
        for stream in streams:
            next(stream)
        time.sleep(1.0)
        gc.collect()
        stats = tracemalloc.take_snapshot().compare_to(before, args.by)
        for stream in streams:
            stream.cancel()
    finally:
        server.stop()
    print(
        json.dumps(
            {
                "benchmark": "queue_watch_memory",
                "streams": n,
                "python_bytes_per_stream_total": round(sum(s.size_diff for s in stats) / n),
                "by_" + args.by: {_label(s, args.by): round(s.size_diff / n) for s in stats[: args.top]},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
