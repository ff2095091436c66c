"""How the servicers' method handlers reach the grpc.aio server: wrapped by the call pipeline
(api/interceptors.py), all in one generic handler."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grpc

from coordd.api.interceptors import Pipeline


class _WrappedGeneric(grpc.GenericRpcHandler):
    """A generic handler whose method handlers come back wrapped (once per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Callable[..., grpc.RpcMethodHandler]) -> None:
        self._inner = inner
        self._wrap = wrap
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        found = self._wrapped.get(method)
        if found is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None
            found = self._wrapped[method] = self._wrap(method, handler)
        return found


class _Table(grpc.GenericRpcHandler):
    """Every wrapped method handler in one dict (one lookup per call), then any generic
    handlers that were registered without their methods being named."""

    def __init__(self) -> None:
        self.methods: dict[str, grpc.RpcMethodHandler] = {}
        self.generic: list[grpc.GenericRpcHandler] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        found = self.methods.get(handler_call_details.method)
        if found is not None:
            return found
        for handler in self.generic:
            found = handler.service(handler_call_details)
            if found is not None:
                return found
        return None


class Registrar:
    """Stands in for the grpc.aio server while servicers register (`add_*_to_server`):
    every method handler reaches the server wrapped by the pipeline, in one generic handler.

    Methods are deliberately NOT handed to grpc as "registered methods": grpc.aio's serving
    loop keeps one pending request per registered method and passes all of them to
    `asyncio.wait` for every call it accepts, which costs O(number of methods) per call (with
    coordd's ~150 methods, about a fifth of the event loop's time in the unary bench; see
    docs/PERFORMANCE.md). A generic handler is one dict lookup."""

    def __init__(self, server: grpc.aio.Server, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._table = _Table()
        server.add_generic_rpc_handlers((self._table,))

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        # Generated code also calls add_registered_method_handlers with the same methods;
        # those land in the table's dict and are found first.
        self._table.generic.extend(_WrappedGeneric(h, self.pipeline.wrap) for h in handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in method_handlers.items():
            method = f"/{service_name}/{name}"
            self._table.methods[method] = self.pipeline.wrap(method, handler)
