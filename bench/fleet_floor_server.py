"""A bare grpc.aio server for bench/fleet.py --floor: NodeService/StreamHeartbeats that only
counts the messages it reads (decoded as coordd decodes them) and replies with the count. No
auth, tracker, database or detection: what one Python process pays for the streams
themselves, the floor coordd's figures are compared with."""

from __future__ import annotations

import asyncio
import sys

import grpc
from prometheus_client import Counter, start_http_server

from coordd_client.v1 import node_pb2

# Read by bench/fleet.py as coordd's own counter is, added four times a second as coordd does.
HEARTBEATS = Counter("coordd_heartbeats_total", "Messages read")


async def main(port_file: str, metrics_port: int) -> None:
    read = 0

    async def beats(requests, context: grpc.aio.ServicerContext) -> node_pb2.StreamHeartbeatsResponse:
        nonlocal read
        count = 0
        async for _ in requests:
            count += 1
            read += 1
        return node_pb2.StreamHeartbeatsResponse(beats=count)

    async def count() -> None:
        counted = 0
        while True:
            await asyncio.sleep(0.25)
            HEARTBEATS.inc(read - counted)
            counted = read

    handler = grpc.method_handlers_generic_handler(
        "coordd.v1.NodeService",
        {
            "StreamHeartbeats": grpc.stream_unary_rpc_method_handler(
                beats,
                request_deserializer=node_pb2.StreamHeartbeatsRequest.FromString,
                response_serializer=node_pb2.StreamHeartbeatsResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_concurrent_streams", 100_000),
            ("grpc.server_max_unrequested_time_in_server", 120),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    start_http_server(metrics_port, addr="127.0.0.1")
    counting = asyncio.create_task(count())
    await server.start()
    with open(port_file, "w") as fh:
        fh.write(str(port))
    await server.wait_for_termination()
    counting.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
