"""The asyncio flavour of `coordd_client.connect`: same stubs, metadata, deadlines and
retry rules (see coordd_client.client), on a grpc.aio channel."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from coordd_client.client import (
    DEFAULT_TIMEOUT_S,
    RESUME_ATTEMPTS,
    _credentials_metadata,
    _service_modules,
    _stub_classes,
    backoff_delays,
    channel_options,
    is_mutating,
    is_resumable,
    resume_delay,
    transport_security,
)
from coordd_client.errors import from_rpc_error


def _prepare(details: Any, extra: Sequence[tuple[str, str]], timeout: float | None, key: str | None) -> Any:
    metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
    for k, v in extra:
        if k not in metadata:
            metadata.add(k, v)
    if key and "idempotency-key" not in metadata:
        metadata.add("idempotency-key", key)
    return grpc.aio.ClientCallDetails(
        details.method,
        details.timeout if details.timeout is not None else timeout,
        metadata,
        details.credentials,
        details.wait_for_ready,
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: Sequence[tuple[str, str]], timeout: float | None, retries: int) -> None:
        self.metadata, self.timeout, self.retries = list(metadata), timeout, retries

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        key = (
            str(uuid.uuid4())
            if is_mutating(details.method.decode() if isinstance(details.method, bytes) else details.method)
            else None
        )
        prepared = _prepare(details, self.metadata, self.timeout, key)
        delays = backoff_delays(self.retries)
        while True:
            call = await continuation(prepared, request)
            try:
                await call
                return call
            except grpc.aio.AioRpcError as exc:
                delay = next(delays, None)
                if exc.code() != grpc.StatusCode.UNAVAILABLE or delay is None:
                    return call
                await asyncio.sleep(delay)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.metadata = list(metadata)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_prepare(details, self.metadata, None, None), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.metadata = list(metadata)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_prepare(details, self.metadata, None, None), requests)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self.metadata = list(metadata)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_prepare(details, self.metadata, None, None), requests)


class _Method:
    def __init__(self, callable_: Any) -> None:
        self._callable = callable_

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        call = self._callable(*args, **kwargs)
        if hasattr(call, "__aiter__"):
            return _Stream(call)
        return self._await(call)

    @staticmethod
    async def _await(call: Any) -> Any:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None


class _Stream:
    def __init__(self, call: Any) -> None:
        self.call = call

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            async for item in self.call:
                yield item
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    def cancel(self) -> bool:
        return bool(self.call.cancel())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.call, name)


class ResumedStream:
    """The asyncio ResumedStream (see coordd_client.client.ResumedStream): `async for` over a
    server stream that is re-opened with `call_factory()` after a resumable error."""

    def __init__(
        self,
        call_factory: Callable[[], Any],
        *,
        attempts: int | None = RESUME_ATTEMPTS,
        on_resume: Callable[[Any, float], None] | None = None,
    ) -> None:
        self.call_factory = call_factory
        self.attempts = attempts
        self.on_resume = on_resume
        self.resumes = 0
        self.call: Any = None
        self._cancelled = False

    async def __aiter__(self) -> AsyncIterator[Any]:
        failures = 0
        while not self._cancelled:
            try:
                self.call = self.call_factory()
                async for message in self.call:
                    failures = 0
                    yield message
                return
            except grpc.RpcError as exc:
                if self._cancelled or not is_resumable(exc):
                    raise from_rpc_error(exc) from None
                if self.attempts is not None and failures >= self.attempts:
                    raise from_rpc_error(exc) from None
                delay = resume_delay(failures)
                failures += 1
                self.resumes += 1
                if self.on_resume is not None:
                    self.on_resume(from_rpc_error(exc), delay)
                await asyncio.sleep(delay)

    def cancel(self) -> bool:
        self._cancelled = True
        return bool(self.call.cancel()) if self.call is not None else True


def resume_stream(
    call_factory: Callable[[], Any],
    *,
    attempts: int | None = RESUME_ATTEMPTS,
    on_resume: Callable[[Any, float], None] | None = None,
) -> ResumedStream:
    """`async for update in resume_stream(lambda: client.job.WatchJob(request, timeout=None))`."""
    return ResumedStream(call_factory, attempts=attempts, on_resume=on_resume)


class _Service:
    def __init__(self, stub: Any) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Any:
        return _Method(getattr(self._stub, name))


class AsyncClient:
    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        server_name: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        retries: int = 4,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        metadata = _credentials_metadata(token, api_key)
        interceptors = [
            _UnaryUnary(metadata, timeout, retries),
            _UnaryStream(metadata),
            _StreamUnary(metadata),
            _StreamStream(metadata),
        ]
        creds, tls_options = transport_security(
            tls=tls,
            root_certificates=root_certificates,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            server_name=server_name,
        )
        opts = channel_options(tls_options, options)
        if creds is not None:
            self.channel = grpc.aio.secure_channel(target, creds, options=opts, interceptors=interceptors)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
        self.services: dict[str, _Service] = {}
        for name, module in _service_modules().items():
            for stub_class in _stub_classes(module):
                self.services[name] = _Service(stub_class(self.channel))
                setattr(self, name, self.services[name])

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def connect(target: str, **kwargs: Any) -> AsyncClient:
    """The asyncio `connect`; same arguments as coordd_client.connect (TLS included)."""
    return AsyncClient(target, **kwargs)
