"""The interceptor chain: observability (request id, logs, metrics, error mapping, limits,
stream shutdown) -> authentication and authorization -> idempotency -> servicer.

Each interceptor wraps the servicer's behaviour, so an error raised by an inner layer is
mapped to a status by the outer one, and the outer one sees the final code for its logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from google.protobuf import descriptor_pool
from google.protobuf.message import Message

from coordd import metrics
from coordd.api import decoding
from coordd.api.errors import clip, status_for
from coordd.api.peer import client_peer
from coordd.api.validation import check_request
from coordd.core.errors import (
    Aborted,
    DomainError,
    Internal,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from coordd.core.principal import ANONYMOUS, NODE_KEY, Principal, caller, current_principal
from coordd.domain import auth as auth_rules
from coordd.domain import idempotency as idem
from coordd.runtime import Runtime
from coordd_client.v1 import common_pb2, options_pb2

log = structlog.get_logger("coordd.rpc")

REQUEST_ID = "x-request-id"
IDEMPOTENCY_KEY = "idempotency-key"
AUTHORIZATION = "authorization"

# Codes a healthy daemon returns in normal operation; anything else logs at warning.
_EXPECTED_CODES = frozenset(
    {
        "OK",
        "CANCELLED",
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "ABORTED",
        "RESOURCE_EXHAUSTED",
    }
)

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]


class Policy:
    __slots__ = ("full_name", "mutating", "node_agent", "public", "roles", "service")

    def __init__(
        self, public: bool, mutating: bool, roles: frozenset[str], node_agent: bool = False, method: str = ""
    ) -> None:
        self.public = public
        self.mutating = mutating
        self.roles = roles
        self.node_agent = node_agent
        # What an API key's scopes name: `coordd.v1.JobService` and `coordd.v1.JobService.GetJob`.
        self.service, _, name = method.lstrip("/").partition("/")
        self.full_name = f"{self.service}.{name}"


_PUBLIC = Policy(public=True, mutating=False, roles=frozenset())
_policies: dict[str, Policy] = {}


def policy_for(method: str) -> Policy:
    """Reads (coordd.v1.policy) from the method's descriptor; other services are public."""
    found = _policies.get(method)
    if found is not None:
        return found
    policy = _PUBLIC
    if method.startswith("/coordd."):
        full_name = method.lstrip("/").replace("/", ".")
        try:
            desc = descriptor_pool.Default().FindMethodByName(full_name)
        except KeyError:
            desc = None
        if desc is not None:
            opts = desc.GetOptions().Extensions[options_pb2.policy]
            roles = frozenset(common_pb2.Role.Name(r)[5:].lower() for r in opts.roles)
            policy = Policy(opts.public, opts.mutating, roles, opts.node_agent, method)
        else:
            policy = Policy(public=False, mutating=False, roles=frozenset(), method=method)
    _policies[method] = policy
    return policy


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str:
    for item in context.invocation_metadata() or ():
        if item.key == key:
            return item.value if isinstance(item.value, str) else ""
    return ""


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Base: subclasses override `unary` (response is one message) and/or `stream`."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        return self.wrap(handler, details.method)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        # grpc.aio tells coroutine and async-generator handlers apart with `inspect`, which
        # sees through a partial of a plain function but not through a lambda.
        req_des, resp_ser = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary:
            inner = handler.unary_unary
            return grpc.unary_unary_rpc_method_handler(
                functools.partial(type(self).unary, self, method, inner), req_des, resp_ser
            )
        if handler.unary_stream:
            inner = handler.unary_stream
            return grpc.unary_stream_rpc_method_handler(
                functools.partial(type(self).stream, self, method, inner), req_des, resp_ser
            )
        if handler.stream_unary:
            inner = handler.stream_unary
            return grpc.stream_unary_rpc_method_handler(
                functools.partial(type(self).unary, self, method, inner), req_des, resp_ser
            )
        inner = handler.stream_stream
        return grpc.stream_stream_rpc_method_handler(
            functools.partial(type(self).stream, self, method, inner), req_des, resp_ser
        )

    async def unary(self, method: str, call: Behaviour, request: Any, context: Any) -> Any:
        return await call(request, context)

    async def stream(self, method: str, call: Behaviour, request: Any, context: Any) -> AsyncIterator[Any]:
        async for item in call(request, context):
            yield item


class ObservabilityInterceptor(WrappingInterceptor):
    """Request id, structured log line, metrics, limits, and error -> status mapping."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        # Undecodable request bytes reach unary/stream below as a sentinel (api/decoding.py).
        return super().wrap(decoding.tolerant_handler(handler), method)

    def _begin(self, method: str, context: Any) -> str:
        request_id = metadata_value(context, REQUEST_ID)
        if not request_id or len(request_id) > 128 or not request_id.isprintable():
            # Not a secret, just unique: getrandbits avoids a urandom syscall per call.
            request_id = f"{random.getrandbits(128):032x}"
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, method=method, peer=client_peer(context, self.rt.settings.trusted_proxies)
        )
        return request_id

    def _check_limits(self, request: Any) -> None:
        if isinstance(request, Message):
            check_request(request, self.rt.settings.max_string_chars)

    async def _fail(self, context: Any, request_id: str, exc: BaseException) -> None:
        """Aborts the call with the mapped status. Only unexpected errors log here (with
        traceback); expected ones are summarised on the call's single `rpc` log line."""
        if isinstance(exc, DomainError):
            structlog.contextvars.bind_contextvars(reason=exc.reason, error=clip(exc.message))
            status = status_for(exc)
        else:
            log.error("rpc failed", exc_info=exc)
            status = status_for(Internal(f"internal error; request id {request_id}"))
        trailers = (*tuple(status.trailing_metadata or ()), (REQUEST_ID, request_id))
        try:
            await context.abort(status.code, status.details, trailers)
        except grpc.aio.AbortError:
            raise
        except Exception as abort_failure:  # the call is already ending (peer gone, server stopping)
            log.warning("could not send error status", error=str(abort_failure))

    @staticmethod
    def _code_of(context: Any) -> str:
        code = context.code() if hasattr(context, "code") else None
        if isinstance(code, grpc.StatusCode):
            return code.name
        return "UNKNOWN" if code else "OK"

    def _finish(self, method: str, code: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        metrics.RPCS.labels(method, code).inc()
        metrics.RPC_LATENCY.labels(method).observe(elapsed)
        level = "info" if code in _EXPECTED_CODES else "warning"
        getattr(log, level)("rpc", code=code, duration_ms=round(elapsed * 1000, 3))

    async def unary(self, method: str, call: Behaviour, request: Any, context: Any) -> Any:
        request_id = self._begin(method, context)
        started = time.perf_counter()
        code = "OK"
        try:
            request = decoding.check(method, request)
            self._check_limits(request)
            if isinstance(request, Message):
                response = await call(request, context)
            else:
                response = await self._until_shutdown(call(request, context), context)
            context.set_trailing_metadata(((REQUEST_ID, request_id),))
            return response
        except grpc.aio.AbortError:
            code = self._code_of(context)
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:
            code = exc.code if isinstance(exc, DomainError) else "INTERNAL"
            await self._fail(context, request_id, exc)
        finally:
            self._finish(method, code, started)

    async def _until_shutdown(self, work: Awaitable[Any], context: Any) -> Any:
        """Client streams end with UNAVAILABLE when the daemon shuts down: App.stop cancels
        the parked task, and the cancellation becomes the status here."""
        task = asyncio.current_task()
        assert task is not None
        self._stream_opened()
        self.rt.parked_streams.add(task)
        try:
            return await work
        except asyncio.CancelledError:
            if self.rt.stopping.is_set():
                raise Unavailable("shutting down", reason="SHUTTING_DOWN") from None
            raise
        finally:
            self.rt.parked_streams.discard(task)
            self._stream_closed()

    def _stream_opened(self) -> None:
        self.rt.open_streams += 1
        metrics.OPEN_STREAMS.inc()

    def _stream_closed(self) -> None:
        self.rt.open_streams -= 1
        metrics.OPEN_STREAMS.dec()

    async def stream(self, method: str, call: Behaviour, request: Any, context: Any) -> AsyncIterator[Any]:
        """Server streams. While the servicer waits for its next message the task is "parked":
        on shutdown App.stop cancels parked tasks and the cancellation becomes UNAVAILABLE.
        A task that is sending is never cancelled (an abort during an in-flight send fails
        with TOO_MANY_OPERATIONS); it sees `stopping` before it parks again."""
        request_id = self._begin(method, context)
        started = time.perf_counter()
        code = "OK"
        self._stream_opened()
        parked = self.rt.parked_streams
        task = asyncio.current_task()
        source = call(request, context)
        try:
            decoding.check(method, request)
            self._check_limits(request)
            # Headers go out first (never cancelled mid-send, see above); they also tell the
            # client at once that the stream is established. Servicers must not send them.
            await context.send_initial_metadata(())
            while True:
                if self.rt.stopping.is_set():
                    raise Unavailable("shutting down", reason="SHUTTING_DOWN")
                parked.add(task)
                try:
                    item = await source.__anext__()
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if self.rt.stopping.is_set():
                        raise Unavailable("shutting down", reason="SHUTTING_DOWN") from None
                    raise
                finally:
                    parked.discard(task)
                yield item
            context.set_trailing_metadata(((REQUEST_ID, request_id),))
        except grpc.aio.AbortError:
            code = self._code_of(context)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = "CANCELLED"
            raise
        except Exception as exc:
            code = exc.code if isinstance(exc, DomainError) else "INTERNAL"
            await self._fail(context, request_id, exc)
        finally:
            parked.discard(task)
            with contextlib.suppress(Exception):
                await source.aclose()
            self._stream_closed()
            self._finish(method, code, started)


class AuthInterceptor(WrappingInterceptor):
    """Turns the `authorization` metadata into a Principal and checks the method's roles."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def _authorize(self, method: str, context: Any) -> None:
        policy = policy_for(method)
        header = metadata_value(context, AUTHORIZATION)
        principal = ANONYMOUS
        if header:
            scheme, _, credential = header.partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                raise Unauthenticated(
                    "authorization metadata must be 'Bearer <access token or API key>'",
                    reason="BAD_AUTHORIZATION_HEADER",
                )
            principal = await auth_rules.authenticate(self.rt, credential)
            # Credential scope, on top of roles: attribute reads and a set lookup per call.
            if principal.kind == NODE_KEY:
                if not policy.node_agent:
                    await self._deny_scope(principal, policy, method, context)
            elif principal.scopes and not (
                policy.service in principal.scopes or policy.full_name in principal.scopes
            ):
                await self._deny_scope(principal, policy, method, context)
        elif not policy.public:
            raise Unauthenticated(
                "this call needs a credential: send 'authorization: Bearer <access token or API key>'",
                reason="CREDENTIAL_MISSING",
            )
        if not policy.public and not principal.has_any(policy.roles):
            needed = ", ".join(sorted(policy.roles))
            denied = PermissionDenied(
                f"{method} needs one of the roles: {needed}",
                reason="ROLE_REQUIRED",
                metadata={"roles": needed},
            )
            await self._audit(auth_rules.record_denial, principal, method, denied.reason, context)
            raise denied
        current_principal.set(principal)
        if principal.user_id:
            structlog.contextvars.bind_contextvars(caller=principal.user_id)

    async def _deny_scope(self, principal: Principal, policy: Policy, method: str, context: Any) -> None:
        """A node key only makes a node agent's calls; a scoped API key only its scopes'."""
        if principal.kind == NODE_KEY:
            denied = PermissionDenied(
                f"{method} is not a node agent's call: a node key may only send heartbeats; "
                "use the operator's own credential",
                reason="CREDENTIAL_SCOPE",
            )
        else:
            denied = PermissionDenied(
                f"this API key is scoped and {method} is outside its scopes",
                reason="CREDENTIAL_SCOPE",
                metadata={"method": policy.full_name},
            )
        await self._audit(auth_rules.record_denial, principal, method, denied.reason, context)
        raise denied

    async def _audit(
        self, record: Callable[..., None], who: Any, method: str, what: str, context: Any
    ) -> None:
        """Audit rows (auth_rules.record_*) never change the call's outcome."""
        try:
            peer = client_peer(context, self.rt.settings.trusted_proxies)
            await self.rt.run(record, self.rt, who, method, what, peer)
        except Exception as exc:
            log.warning("could not write an audit event", method=method, error=str(exc))

    async def unary(self, method: str, call: Behaviour, request: Any, context: Any) -> Any:
        await self._authorize(method, context)
        try:
            response = await call(request, context)
        except PermissionDenied as exc:
            await self._audit(auth_rules.record_denial, caller(), method, exc.reason, context)
            raise
        if auth_rules.is_admin_action(caller(), method, policy_for(method).mutating):
            await self._audit(auth_rules.record_admin_call, caller(), method, _target_of(request), context)
        return response

    async def stream(self, method: str, call: Behaviour, request: Any, context: Any) -> AsyncIterator[Any]:
        await self._authorize(method, context)
        async for item in call(request, context):
            yield item


def _target_of(request: Any) -> str:
    """The resource a request names (`name`, else `parent`), for the audit trail."""
    fields = getattr(getattr(request, "DESCRIPTOR", None), "fields_by_name", {})
    for field in ("name", "parent"):
        if field in fields and isinstance(getattr(request, field), str):
            return str(getattr(request, field))
    return ""


class IdempotencyInterceptor(WrappingInterceptor):
    """Replays the stored response of a keyed mutating unary call, byte for byte."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if not (handler.unary_unary and policy_for(method).mutating):
            return handler
        serialize = handler.response_serializer
        inner = handler.unary_unary
        return grpc.unary_unary_rpc_method_handler(
            functools.partial(type(self).unary, self, method, inner),
            handler.request_deserializer,
            # Replays (and first responses) are already bytes: sent exactly as stored.
            lambda value: value if isinstance(value, bytes) else serialize(value),
        )

    async def unary(self, method: str, call: Behaviour, request: Any, context: Any) -> Any:
        key = metadata_value(context, IDEMPOTENCY_KEY)
        if not key:
            return await call(request, context)
        idem.check_key(key)
        rt = self.rt
        scope = caller().scope
        digest = idem.request_hash(method, request.SerializeToString(deterministic=True))
        deadline = time.monotonic() + rt.settings.idempotency_wait_s
        delay = 0.01
        while True:
            claim = await rt.run(idem.claim, rt, scope, key, method, digest)
            if claim.action == "replay":
                await context.send_initial_metadata((("idempotency-replayed", "true"),))
                return claim.response
            if claim.action == "run":
                break
            if time.monotonic() >= deadline:
                raise Aborted(
                    "a call with this idempotency-key is still running; retry later",
                    reason="IDEMPOTENCY_KEY_IN_USE",
                    metadata={"idempotency_key": key},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)
        # The call's first committed write marks the record applied in the same transaction.
        token = idem.PENDING.set(idem.PendingKey(scope, key))
        try:
            response = await call(request, context)
        except BaseException:
            idem.PENDING.reset(token)
            # A failure is not a result: free the key so a retry runs again.
            await asyncio.shield(rt.run(idem.release, rt, scope, key))
            raise
        idem.PENDING.reset(token)
        data = response.SerializeToString()
        await asyncio.shield(rt.run(idem.complete, rt, scope, key, data))
        return data
