"""`connect()`: one channel, every service stub as an attribute, credentials attached,
default deadlines, keepalive for long streams, and safe retries.

Retries: a unary call that fails with UNAVAILABLE is retried with exponential backoff and
full jitter. That is safe for every unary method: reads are idempotent, and each call to a
mutating method (its `(coordd.v1.policy).mutating` option) carries an `idempotency-key`
generated once per logical call and reused across its retries, so the server replays the
first result instead of acting twice.

Streams are not retried by the channel: `resume_stream(lambda: client.job.WatchJob(...))`
re-opens a server stream that a dying server or a proxy cut (`is_resumable`), with backoff.
WatchJob, WatchQueue and WatchCompetition send the current state first on every open, so a
resumed watch loses nothing; WatchNodes and WatchEvents send only what happens after their
open (catch up with ListNodes / ListEvents).
"""

from __future__ import annotations

import importlib
import pkgutil
import random
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pool

from coordd_client import v1
from coordd_client.errors import from_rpc_error
from coordd_client.v1 import options_pb2

DEFAULT_TIMEOUT_S = 30.0
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # After an outage, try the server again within 5 s (grpc's default grows to 120 s),
    # so a resumed stream or a retried call finds a restarted server soon.
    ("grpc.max_reconnect_backoff_ms", 5_000),
]
RESUME_ATTEMPTS = 10

_mutating_cache: dict[str, bool] = {}


def is_mutating(method: str) -> bool:
    """Reads the method's policy from the generated descriptors (`/pkg.Service/Method`)."""
    cached = _mutating_cache.get(method)
    if cached is None:
        try:
            desc = descriptor_pool.Default().FindMethodByName(method.lstrip("/").replace("/", "."))
            cached = desc.GetOptions().Extensions[options_pb2.policy].mutating
        except KeyError:
            cached = False
        _mutating_cache[method] = cached
    return cached


def channel_options(
    tls_options: Sequence[tuple[str, Any]], options: Sequence[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    """The defaults, then TLS's, then the caller's: a later entry replaces an earlier one with
    the same key (gRPC itself would honour the first of two equal keys, silently)."""
    return list({**dict(KEEPALIVE_OPTIONS), **dict(tls_options), **dict(options)}.items())


def backoff_delays(attempts: int, base: float = 0.1, cap: float = 5.0) -> Iterator[float]:
    """Full-jitter exponential backoff (AWS architecture blog): sleep U(0, min(cap, base*2^n))."""
    for n in range(attempts):
        yield random.uniform(0, min(cap, base * 2**n))


def is_resumable(error: grpc.RpcError) -> bool:
    """A stream that ended this way can be opened again: the server went away (UNAVAILABLE:
    killed, draining, not reachable yet) or a proxy reset it because its backend died (nginx
    sends RST_STREAM INTERNAL_ERROR, which gRPC reports as INTERNAL "Received RST_STREAM")."""
    code = error.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    return code == grpc.StatusCode.INTERNAL and "RST_STREAM" in (error.details() or "")


def resume_delay(failures: int, base: float = 0.2, cap: float = 5.0) -> float:
    """Exponential backoff with jitter, never zero: U(d/2, d), d = min(cap, base*2^failures)."""
    ceiling = min(cap, base * 2**failures)
    return random.uniform(ceiling / 2, ceiling)


class ResumedStream:
    """The messages of a server stream opened by `call_factory()`, re-opened when it ends
    with a resumable error (see `is_resumable`). `attempts` bounds the re-opens in a row that
    bring no message (None: no bound); a message resets the count and the backoff. Other
    errors, and the last resumable one, are raised as coordd_client.errors exceptions.
    `on_resume(error, delay_s)` is called before each wait (to log it)."""

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

    def __iter__(self) -> Iterator[Any]:
        failures = 0
        while not self._cancelled:
            try:
                self.call = self.call_factory()
                for message in self.call:
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
                time.sleep(delay)

    def cancel(self) -> bool:
        self._cancelled = True
        return bool(self.call.cancel()) if self.call is not None else True


def resume_stream(
    call_factory: Callable[[], Any],
    *,
    attempts: int | None = RESUME_ATTEMPTS,
    on_resume: Callable[[Any, float], None] | None = None,
) -> ResumedStream:
    """`for update in resume_stream(lambda: client.job.WatchJob(request, timeout=None)): ...`
    follows the stream across server restarts and proxy resets (see ResumedStream)."""
    return ResumedStream(call_factory, attempts=attempts, on_resume=on_resume)


def _service_modules() -> dict[str, Any]:
    """Every generated `*_pb2_grpc` module with a Stub: auth, status, job, ledger, ..."""
    found: dict[str, Any] = {}
    for info in pkgutil.iter_modules(v1.__path__):
        if info.name.endswith("_pb2_grpc"):
            module = importlib.import_module(f"coordd_client.v1.{info.name}")
            if any(name.endswith("Stub") for name in dir(module)):
                found[info.name[: -len("_pb2_grpc")]] = module
    return found


def _stub_classes(module: Any) -> list[type]:
    return [
        getattr(module, n) for n in dir(module) if n.endswith("Stub") and isinstance(getattr(module, n), type)
    ]


def _with_metadata(
    details: Any, extra: Sequence[tuple[str, str]], timeout: float | None, key: str | None
) -> Any:
    metadata = list(details.metadata or ())
    present = {k for k, _ in metadata}
    metadata.extend((k, v) for k, v in extra if k not in present)
    if key and "idempotency-key" not in present:
        metadata.append(("idempotency-key", key))
    return details._replace(
        metadata=metadata, timeout=details.timeout if details.timeout is not None else timeout
    )


class _CallDetails:
    """grpc.ClientCallDetails is abstract; this is the plain record interceptors pass on."""

    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: Any,
        compression: Any,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression

    def _replace(self, **changes: Any) -> _CallDetails:
        values = {**self.__dict__, **changes}
        return _CallDetails(**values)


def _copy(details: grpc.ClientCallDetails) -> _CallDetails:
    return _CallDetails(
        details.method,
        details.timeout,
        details.metadata,
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


class _Interceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, metadata: Sequence[tuple[str, str]], timeout: float | None, retries: int) -> None:
        self.metadata = list(metadata)
        self.timeout = timeout
        self.retries = retries

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        key = str(uuid.uuid4()) if is_mutating(details.method) else None
        prepared = _with_metadata(_copy(details), self.metadata, self.timeout, key)
        outcome = continuation(prepared, request)
        for delay in backoff_delays(self.retries):
            error = outcome.exception()
            if error is None or error.code() != grpc.StatusCode.UNAVAILABLE:
                break
            time.sleep(delay)
            outcome = continuation(prepared, request)
        return outcome

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(_with_metadata(_copy(details), self.metadata, None, None), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(_with_metadata(_copy(details), self.metadata, None, None), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(_with_metadata(_copy(details), self.metadata, None, None), requests)


class _Method:
    """A stub method whose grpc.RpcErrors come out as coordd_client.errors exceptions."""

    def __init__(self, callable_: Any) -> None:
        self._callable = callable_

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = self._callable(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        if isinstance(result, grpc.Call) and hasattr(result, "__iter__"):
            return _Stream(result)
        return result

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._callable.with_call(*args, **kwargs)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._callable, name)


class _Stream:
    def __init__(self, call: Any) -> None:
        self.call = call

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self.call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def cancel(self) -> bool:
        return bool(self.call.cancel())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.call, name)


class _Service:
    def __init__(self, stub: Any) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._stub, name)
        return _Method(attr) if not name.startswith("_") else attr


def transport_security(
    *,
    tls: bool = False,
    root_certificates: bytes | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    server_name: str | None = None,
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """Channel credentials (None: plaintext) and channel options for TLS.

    Any TLS argument turns TLS on. `ca_file` (or `root_certificates`, PEM bytes) is the CA
    that signed the server's certificate (default: the system roots); `cert_file` and
    `key_file` are this client's certificate and key for mutual TLS; `server_name` is the
    name to check the server's certificate against when it differs from the target's host
    (an IP address, a tunnel)."""
    if not (tls or root_certificates or ca_file or cert_file or key_file or server_name):
        return None, []
    if bool(cert_file) != bool(key_file):
        raise ValueError("pass cert_file and key_file together (the client certificate and its key)")
    if ca_file:
        with open(ca_file, "rb") as fh:
            root_certificates = fh.read()
    chain = key = None
    if cert_file and key_file:
        with open(cert_file, "rb") as fh:
            chain = fh.read()
        with open(key_file, "rb") as fh:
            key = fh.read()
    options: list[tuple[str, Any]] = []
    if server_name:
        options = [("grpc.ssl_target_name_override", server_name), ("grpc.default_authority", server_name)]
    return grpc.ssl_channel_credentials(root_certificates, key, chain), options


def _credentials_metadata(token: str | None, api_key: str | None) -> list[tuple[str, str]]:
    if token and api_key:
        raise ValueError("pass token or api_key, not both")
    secret = token or api_key
    return [("authorization", f"Bearer {secret}")] if secret else []


class Client:
    """Synchronous client. Attributes: one per service (`auth`, `status`, `job`, ...)."""

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
            raw = grpc.secure_channel(target, creds, options=opts)
        else:
            raw = grpc.insecure_channel(target, options=opts)
        self._raw_channel = raw
        self.channel = grpc.intercept_channel(
            raw, _Interceptor(_credentials_metadata(token, api_key), timeout, retries)
        )
        self.services: dict[str, _Service] = {}
        for name, module in _service_modules().items():
            for stub_class in _stub_classes(module):
                self.services[name] = _Service(stub_class(self.channel))
                setattr(self, name, self.services[name])

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(target: str, **kwargs: Any) -> Client:
    """`connect("127.0.0.1:50051", token=...)` or `api_key=...`; see Client for options.

    TLS: `connect("coordd.example:50051", ca_file="ca.pem")`; mutual TLS adds
    `cert_file="client.pem", key_file="client.key"`; `server_name=` overrides the name the
    server's certificate is checked against (see `transport_security`)."""
    return Client(target, **kwargs)
