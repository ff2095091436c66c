"""The call pipeline wraps each method handler as it is registered, keeping its own serializers."""

from __future__ import annotations

import asyncio

import grpc

from coordd.api.interceptors import Pipeline
from coordd.api.limits import Limits
from coordd.api.registration import Registrar
from coordd.runtime import Runtime


def _decode(data: bytes) -> str:
    if data.startswith(b"\xff"):
        raise ValueError("not text")
    return data.decode()


async def _shout(request: str, context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {"text": request + "!"}


async def _serve_and_call(settings) -> dict[str, object]:  # type: ignore[no-untyped-def]
    rt = Runtime(settings)
    server = grpc.aio.server()
    registrar = Registrar(server, Pipeline(rt, Limits(settings)))
    # The method's own serializers: a str request, a dict reply sent upper-cased.
    handler = grpc.unary_unary_rpc_method_handler(
        _shout, _decode, lambda reply: reply["text"].upper().encode()
    )
    registrar.add_registered_method_handlers("test.Registered", {"Shout": handler})
    registrar.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Generic", {"Shout": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    seen: dict[str, object] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for service in ("test.Registered", "test.Generic"):
                call = channel.unary_unary(f"/{service}/Shout")(b"hello")
                seen[service] = (await call, dict(await call.trailing_metadata()).get("x-request-id"))
            try:
                await channel.unary_unary("/test.Generic/Shout")(b"\xffbad")
            except grpc.aio.AioRpcError as exc:
                seen["malformed"] = exc.code()
    finally:
        await server.stop(0)
        rt.close()
    return seen


def test_wrapped_handlers_keep_their_own_serializers_and_get_request_ids_and_malformed_checks(
    settings_factory,
):
    seen = asyncio.run(_serve_and_call(settings_factory()))
    for service in ("test.Registered", "test.Generic"):
        reply, request_id = seen[service]  # type: ignore[misc]
        assert reply == b"HELLO!", "the method's own response serializer ran"
        assert request_id, "the pipeline set x-request-id"
    assert seen["malformed"] == grpc.StatusCode.INVALID_ARGUMENT
