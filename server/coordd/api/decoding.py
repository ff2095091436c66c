"""Request bytes that do not decode become INVALID_ARGUMENT, not UNKNOWN.

grpc deserializes a request before any interceptor runs, and a deserializer that raises ends
the call with UNKNOWN and the exception text (client streams: INTERNAL with a traceback),
without a request id, a log line or a metric. So the observability interceptor wraps every
handler's request deserializer: undecodable bytes become an `Undecodable` sentinel, which it
turns into an ordinary INVALID_ARGUMENT (reason MALFORMED_REQUEST) with the request id in
the trailers, the call's `rpc` log line and the `coordd_malformed_requests_total` metric.
Unary and server-streaming calls see the sentinel as their request; client streams see it as
the message that failed, raised from the request iterator the servicer reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import Counter

from coordd.core.errors import InvalidArgument

MALFORMED_REQUESTS = Counter(
    "coordd_malformed_requests_total", "Requests (or stream messages) whose bytes did not decode", ["method"]
)


class Undecodable:
    """Stands in for a request (or client-stream message) whose bytes did not decode."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None or getattr(deserialize, "coordd_tolerant", False):
        return deserialize

    def tolerant(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError and anything else a parser raises on bad bytes
            return Undecodable(type(exc).__name__)

    tolerant.coordd_tolerant = True  # type: ignore[attr-defined]
    return tolerant


def tolerant_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` with a request deserializer that never raises (see the module doc)."""
    deserialize = _tolerant(handler.request_deserializer)
    if deserialize is handler.request_deserializer:
        return handler
    return handler._replace(request_deserializer=deserialize)  # type: ignore[attr-defined,no-any-return]


def malformed(method: str) -> InvalidArgument:
    MALFORMED_REQUESTS.labels(method).inc()
    return InvalidArgument(
        f"the request bytes are not a valid protobuf message for {method}",
        reason="MALFORMED_REQUEST",
    )


class CheckedStream:
    """A client stream's messages read straight from the call: one `context.read()` per
    message instead of grpc's request generator and a checking generator over it (two
    generator steps a message; on a fleet's heartbeat streams that was ~15 % of the
    daemon's CPU). `read()` returns None at the end of the stream."""

    __slots__ = ("_method", "_read")

    def __init__(self, method: str, context: Any) -> None:
        self._method = method
        self._read = context.read

    async def read(self) -> Any:
        message = await self._read()
        if message is grpc.aio.EOF:
            return None
        if type(message) is Undecodable:
            raise malformed(self._method)
        return message

    def __aiter__(self) -> CheckedStream:
        return self

    async def __anext__(self) -> Any:
        message = await self.read()
        if message is None:
            raise StopAsyncIteration
        return message
