"""Python memory per open WatchQueue stream, by source file: an in-process daemon (the test
server), N streams opened, tracemalloc snapshots before and after, grouped by file. Client-side
files (grpc/_channel.py, threading.py, ...) are the sync client's own and are listed too.

    PYTHONPATH=$PWD/server:$PWD/clients:$PWD .venv/bin/python bench/queue_watch_memory.py --streams 400
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=400)
    n = parser.parse_args().streams
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
        tracemalloc.start(1)
        before = tracemalloc.take_snapshot()
        request = pb.WatchQueueRequest(ceremony=ceremony.name)
        streams = [stub.WatchQueue(request, metadata=bearer(t)) for t in tokens[1:]]
        for stream in streams:
            next(stream)
        time.sleep(1.0)
        gc.collect()
        stats = tracemalloc.take_snapshot().compare_to(before, "filename")
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
                "by_file": {s.traceback[0].filename: round(s.size_diff / n) for s in stats[:25]},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
