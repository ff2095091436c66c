"""Server streams through the call pipeline (api/interceptors.py `Pipeline.stream`): the
servicer's messages go out in order with the method's own serializer, the stream ends with
the request id in its trailers, a domain error mid-stream ends it with its canonical code
after the messages already sent, and a stream parked waiting for its next message ends
UNAVAILABLE on shutdown; each call is counted once, by its final code."""

from __future__ import annotations

import asyncio

import grpc

from coordd import metrics
from coordd.api.interceptors import Pipeline
from coordd.api.limits import Limits
from coordd.api.registration import Registrar
from coordd.core.errors import FailedPrecondition
from coordd.runtime import Runtime

SERVICE = "test.Streams"


async def _count(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
    for i in range(int(request)):
        yield {"n": i}


async def _then_fail(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
    yield {"n": 0}
    raise FailedPrecondition("the thing moved", reason="MOVED")


async def _wait_forever(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
    yield {"n": 0}
    await asyncio.Event().wait()
    yield {"n": 1}  # never reached


def _handler(behaviour):  # type: ignore[no-untyped-def]
    return grpc.unary_stream_rpc_method_handler(
        behaviour, lambda data: data, lambda reply: b"n=%d" % reply["n"]
    )


def _counted(method: str, code: str) -> float:
    return metrics.RPCS.labels(f"/{SERVICE}/{method}", code)._value.get()


async def _scenario(settings) -> dict[str, object]:  # type: ignore[no-untyped-def]
    rt = Runtime(settings)
    server = grpc.aio.server()
    registrar = Registrar(server, Pipeline(rt, Limits(settings)))
    registrar.add_registered_method_handlers(
        SERVICE,
        {"Count": _handler(_count), "ThenFail": _handler(_then_fail), "Wait": _handler(_wait_forever)},
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    seen: dict[str, object] = {}
    before = {m: (_counted(m, "OK"), _counted(m, "FAILED_PRECONDITION")) for m in ("Count", "ThenFail")}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(f"/{SERVICE}/Count")(b"3")
            seen["count"] = [m async for m in call]
            seen["count_code"] = await call.code()
            seen["count_request_id"] = dict(await call.trailing_metadata()).get("x-request-id")

            call = channel.unary_stream(f"/{SERVICE}/ThenFail")(b"")
            got = []
            try:
                async for m in call:
                    got.append(m)
            except grpc.aio.AioRpcError as exc:
                seen["fail"] = (got, exc.code(), dict(exc.trailing_metadata()).get("x-request-id"))

            call = channel.unary_stream(f"/{SERVICE}/Wait")(b"")
            first = await call.read()
            while not rt.parked_streams:  # the task waits for the servicer's next message
                await asyncio.sleep(0.01)
            rt.stopping.set()  # what App.stop does
            for task in list(rt.parked_streams):
                task.cancel()
            try:
                await call.read()
            except grpc.aio.AioRpcError as exc:
                seen["shutdown"] = (first, exc.code(), exc.details())
            # The client can see the status before the server's task has finished its
            # bookkeeping: the counters must come back to zero, not within the same instant.
            for _ in range(500):
                if not rt.parked_streams and not rt.open_streams:
                    break
                await asyncio.sleep(0.01)
            seen["parked_after"] = len(rt.parked_streams)
            seen["open_after"] = rt.open_streams
    finally:
        await server.stop(0)
        rt.close()
    seen["counted"] = {
        m: (_counted(m, "OK") - ok, _counted(m, "FAILED_PRECONDITION") - failed)
        for m, (ok, failed) in before.items()
    }
    return seen


def test_server_streams_send_in_order_end_with_trailers_errors_and_unavailable_on_shutdown(
    settings_factory,
):
    seen = asyncio.run(_scenario(settings_factory()))
    assert seen["count"] == [b"n=0", b"n=1", b"n=2"], "in order, the method's own serializer"
    assert seen["count_code"] == grpc.StatusCode.OK
    assert seen["count_request_id"], "the pipeline set x-request-id in the trailers"
    got, code, request_id = seen["fail"]  # type: ignore[misc]
    assert got == [b"n=0"], "what was sent before the error arrives"
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert request_id
    first, code, details = seen["shutdown"]  # type: ignore[misc]
    assert first == b"n=0"
    assert code == grpc.StatusCode.UNAVAILABLE and details == "shutting down"
    assert seen["parked_after"] == 0 and seen["open_after"] == 0
    assert seen["counted"] == {"Count": (1, 0), "ThenFail": (0, 1)}
