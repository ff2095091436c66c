"""The call pipeline: one wrapper per method, built once when the servicers register.

Every RPC, in this order: request id, the call's log fields and metrics; undecodable bytes
and the request checks (api/decoding.py, api/validation.py); the peer's rate limit (before
any database work); authentication and the method's roles and credential scope; the caller's
rate limit (streams: the open-stream cap); idempotency (keyed mutating unary calls); the
servicer; the audit trail; one `rpc` log line. An error anywhere becomes its canonical status
with the request id in the trailers.

What a method needs is resolved at registration (`Plan`: its `(coordd.v1.policy)`, whether it is
rate limited or idempotent, its metric children), and `Registrar` hands the servicers' handlers,
wrapped, to the grpc.aio server (api/registration.py): no interceptor chain, so no per-call
handler lookup or handler objects per layer, and one coroutine per call. Each handler keeps
its own (de)serializers. Steps that only some calls take are in api/call_steps.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import random
import time
from collections.abc import Callable
from typing import Any

import grpc
import structlog
from google.protobuf.message import Message

from coordd import metrics
from coordd.api import decoding
from coordd.api.call_steps import REQUEST_ID, Behaviour, idempotent, passing_bytes, scan, target_of
from coordd.api.errors import clip, status_for
from coordd.api.limits import EXEMPT, Limits, host_of
from coordd.api.peer import client_peer
from coordd.api.policy import policy_for
from coordd.api.stream_ready import STREAM_READY, is_ready_first
from coordd.api.validation import check_request
from coordd.core.errors import (
    DomainError,
    Internal,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from coordd.core.principal import ANONYMOUS, NODE_KEY, Principal, current_principal
from coordd.domain import auth as auth_rules
from coordd.logging import ENABLED, call_fields
from coordd.runtime import Runtime

log = structlog.get_logger("coordd.rpc")


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


class Plan:
    """What one method needs on every call, resolved when it is registered."""

    __slots__ = (
        "caller_limited",
        "client_stream",
        "counts",
        "idempotent",
        "latency",
        "method",
        "peer_limited",
        "policy",
        "request_stream",
        "stream_limited",
    )

    def __init__(self, method: str, handler: grpc.RpcMethodHandler, limits: Limits) -> None:
        exempt = method.startswith(EXEMPT)
        self.method = method
        self.policy = policy_for(method)
        self.client_stream = bool(handler.stream_unary)
        self.request_stream = bool(handler.stream_unary or handler.stream_stream)
        self.peer_limited = limits.peer is not None and not exempt
        self.caller_limited = limits.caller is not None and not exempt and bool(handler.unary_unary)
        self.stream_limited = not exempt and not handler.unary_unary
        self.idempotent = bool(handler.unary_unary) and self.policy.mutating
        self.latency = metrics.RPC_LATENCY.labels(method)
        self.counts: dict[str, Any] = {}

    def finish(self, code: str, elapsed: float) -> None:
        counter = self.counts.get(code)
        if counter is None:
            counter = self.counts[code] = metrics.RPCS.labels(self.method, code)
        counter.inc()
        self.latency.observe(elapsed)
        if code in _EXPECTED_CODES:
            if ENABLED.info:
                log.info("rpc", code=code, duration_ms=round(elapsed * 1000, 3))
        else:
            log.warning("rpc", code=code, duration_ms=round(elapsed * 1000, 3))


class Pipeline:
    """Wraps method handlers; see the module doc."""

    def __init__(self, rt: Runtime, limits: Limits) -> None:
        self.rt = rt
        self.limits = limits
        self.trusted = rt.settings.trusted_proxies
        self.max_chars = rt.settings.max_string_chars
        self._role_sets: dict[frozenset[str], frozenset[str]] = {}

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        # grpc.aio tells coroutine and async-generator handlers apart with `inspect`, which
        # sees through a partial of a plain function but not through a lambda.
        handler = decoding.tolerant_handler(handler)  # undecodable bytes arrive as a sentinel
        plan = Plan(method, handler, self.limits)
        req_des, resp_ser = handler.request_deserializer, handler.response_serializer
        cls = type(self)
        if handler.unary_unary:
            if plan.idempotent and resp_ser is not None:
                resp_ser = passing_bytes(resp_ser)
            behaviour = functools.partial(cls.unary, self, plan, handler.unary_unary)
            return grpc.unary_unary_rpc_method_handler(behaviour, req_des, resp_ser)
        if handler.stream_unary:
            behaviour = functools.partial(cls.unary, self, plan, handler.stream_unary)
            return grpc.stream_unary_rpc_method_handler(behaviour, req_des, resp_ser)
        if handler.unary_stream:
            behaviour = functools.partial(cls.stream, self, plan, handler.unary_stream)
            return grpc.unary_stream_rpc_method_handler(behaviour, req_des, resp_ser)
        behaviour = functools.partial(cls.stream, self, plan, handler.stream_stream)
        return grpc.stream_stream_rpc_method_handler(behaviour, req_des, resp_ser)

    # -- the steps every call takes -------------------------------------------------------

    def _begin(self, plan: Plan, context: Any) -> tuple[str, str, str, str, dict[str, Any]]:
        request_id, authorization, key = scan(context.invocation_metadata())
        if not request_id or len(request_id) > 128 or not request_id.isprintable():
            # Not a secret, just unique: getrandbits avoids a urandom syscall per call.
            request_id = f"{random.getrandbits(128):032x}"
        peer = client_peer(context, self.trusted)
        fields = {"request_id": request_id, "method": plan.method, "peer": peer}
        call_fields.set(fields)
        return request_id, authorization, key, peer, fields

    def _check(self, plan: Plan, request: Any, context: Any) -> Any:
        if type(request) is decoding.Undecodable:
            raise decoding.malformed(plan.method)
        if plan.request_stream:  # each message checked as read
            return decoding.CheckedStream(plan.method, context)
        if isinstance(request, Message):
            check_request(request, self.max_chars)
        return request

    async def _admit(self, plan: Plan, authorization: str, peer: str) -> Principal:
        """The peer's bucket, then the credential -> Principal and the method's rules."""
        if plan.peer_limited:
            await self.limits.check_peer(host_of(peer))
        policy = plan.policy
        principal = ANONYMOUS
        if authorization:
            scheme, _, credential = authorization.partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                raise Unauthenticated(
                    "authorization metadata must be 'Bearer <access token or API key>'",
                    reason="BAD_AUTHORIZATION_HEADER",
                )
            found = auth_rules.authenticate_now(self.rt, credential)
            principal = found if found is not None else await auth_rules.authenticate(self.rt, credential)
            # Credential scope, on top of roles: attribute reads and a set lookup per call.
            if principal.kind == NODE_KEY:
                if not policy.node_agent:
                    await self._deny_scope(principal, plan, peer)
            elif principal.scopes and not (
                policy.service in principal.scopes or policy.full_name in principal.scopes
            ):
                await self._deny_scope(principal, plan, peer)
        elif not policy.public:
            raise Unauthenticated(
                "this call needs a credential: send 'authorization: Bearer <access token or API key>'",
                reason="CREDENTIAL_MISSING",
            )
        if not policy.public and not principal.has_any(policy.roles):
            needed = ", ".join(sorted(policy.roles))
            denied = PermissionDenied(
                f"{plan.method} needs one of the roles: {needed}",
                reason="ROLE_REQUIRED",
                metadata={"roles": needed},
            )
            await self._audit(auth_rules.record_denial, principal, plan.method, denied.reason, peer)
            raise denied
        current_principal.set(principal)
        return principal

    def _shared_roles(self, principal: Principal) -> Principal:
        """The principal with the one shared frozenset of its roles: a stream's principal
        lives as long as the stream (its task's context holds it), and there are few role
        sets but many streams."""
        roles = self._role_sets.setdefault(principal.roles, principal.roles)
        if roles is principal.roles:
            return principal
        principal = dataclasses.replace(principal, roles=roles)
        current_principal.set(principal)
        return principal

    async def _deny_scope(self, principal: Principal, plan: Plan, peer: str) -> None:
        """A node key only makes a node agent's calls; a scoped API key only its scopes'."""
        if principal.kind == NODE_KEY:
            denied = PermissionDenied(
                f"{plan.method} is not a node agent's call: a node key may only send heartbeats; "
                "use the operator's own credential",
                reason="CREDENTIAL_SCOPE",
            )
        else:
            denied = PermissionDenied(
                f"this API key is scoped and {plan.method} is outside its scopes",
                reason="CREDENTIAL_SCOPE",
                metadata={"method": plan.policy.full_name},
            )
        await self._audit(auth_rules.record_denial, principal, plan.method, denied.reason, peer)
        raise denied

    async def _audit(self, record: Callable[..., None], who: Any, method: str, what: str, peer: str) -> None:
        """Audit rows (auth_rules.record_*) never change the call's outcome."""
        try:
            await self.rt.run(record, self.rt, who, method, what, peer)
        except Exception as exc:
            log.warning("could not write an audit event", method=method, error=str(exc))

    async def _fail(self, context: Any, request_id: str, fields: dict[str, Any], exc: BaseException) -> None:
        """Aborts the call with the mapped status. Only unexpected errors log here (with
        traceback); expected ones are summarised on the call's single `rpc` log line."""
        if isinstance(exc, DomainError):
            fields["reason"] = exc.reason
            fields["error"] = clip(exc.message)
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

    # -- unary responses (unary and client-stream requests) --------------------------------

    async def unary(self, plan: Plan, call: Behaviour, request: Any, context: Any) -> Any:
        request_id, authorization, key, peer, fields = self._begin(plan, context)
        started = time.perf_counter()
        code = "OK"
        try:
            request = self._check(plan, request, context)
            principal = await self._admit(plan, authorization, peer)
            if principal.user_id:
                fields["caller"] = principal.user_id
            try:
                if plan.client_stream:
                    response = await self._client_stream(plan, call, request, context, peer, principal)
                else:
                    if plan.caller_limited:
                        await self.limits.check_caller(principal.api_key_id or principal.user_id)
                    if key and plan.idempotent:
                        response = await idempotent(
                            self.rt, plan.method, call, request, context, key, principal
                        )
                    else:
                        response = await call(request, context)
            except PermissionDenied as exc:
                await self._audit(auth_rules.record_denial, principal, plan.method, exc.reason, peer)
                raise
            if plan.policy.mutating and auth_rules.is_admin_action(principal, plan.method, True):
                target = target_of(request)
                await self._audit(auth_rules.record_admin_call, principal, plan.method, target, peer)
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
            await self._fail(context, request_id, fields, exc)
        finally:
            plan.finish(code, time.perf_counter() - started)

    async def _client_stream(
        self, plan: Plan, call: Behaviour, request: Any, context: Any, peer: str, who: Principal
    ) -> Any:
        """Client streams count against the caller's open streams and end with UNAVAILABLE
        when the daemon shuts down: App.stop cancels the parked task, and the cancellation
        becomes the status here."""
        held = await self.limits.open_stream(host_of(peer), who) if plan.stream_limited else None
        rt = self.rt
        task = asyncio.current_task()
        assert task is not None
        self._stream_opened()
        rt.parked_streams.add(task)
        try:
            return await call(request, context)
        except asyncio.CancelledError:
            if rt.stopping.is_set():
                raise Unavailable("shutting down", reason="SHUTTING_DOWN") from None
            raise
        finally:
            rt.parked_streams.discard(task)
            self._stream_closed()
            if held is not None:
                self.limits.close_stream(held)

    def _stream_opened(self) -> None:
        self.rt.open_streams += 1
        metrics.OPEN_STREAMS.inc()

    def _stream_closed(self) -> None:
        self.rt.open_streams -= 1
        metrics.OPEN_STREAMS.dec()

    # -- streamed responses ---------------------------------------------------------------

    async def stream(self, plan: Plan, call: Behaviour, request: Any, context: Any) -> None:
        """Server streams. While the servicer waits for its next message the task is "parked":
        on shutdown App.stop cancels parked tasks and the cancellation becomes UNAVAILABLE.
        A task that is sending is never cancelled (an abort during an in-flight send fails
        with TOO_MANY_OPERATIONS); it sees `stopping` before it parks again.

        A coroutine, not an async generator: it drives the servicer's generator and sends each
        message with `context.write` (grpc.aio runs a coroutine handler as a writer), so a
        message passes through one generator, the servicer's, not a second one wrapping it."""
        request_id, authorization, _key, peer, fields = self._begin(plan, context)
        started = time.perf_counter()
        code = "OK"
        self._stream_opened()
        parked = self.rt.parked_streams
        stopping = self.rt.stopping
        task = asyncio.current_task()
        source: Any = None
        held: str | None = None
        sending = False
        try:
            request = self._check(plan, request, context)
            principal = self._shared_roles(await self._admit(plan, authorization, peer))
            # A stream's frame lives as long as the stream: it keeps only what it needs
            # between messages (not the bearer token, the request or the principal).
            authorization = _key = ""
            if principal.user_id:
                fields["caller"] = principal.user_id
            if plan.stream_limited:
                held = await self.limits.open_stream(host_of(peer), principal)
            source = call(request, context)
            request = principal = None
            if is_ready_first(call) and await source.__anext__() is not STREAM_READY:
                raise TypeError(f"{plan.method}: a ready_first servicer yields STREAM_READY first")
            # Headers go out first (never cancelled mid-send, see above); they also tell the
            # client at once that the stream is established (for a `ready_first` servicer:
            # once it is live). Servicers must not send them.
            await context.send_initial_metadata(())
            while True:
                if stopping.is_set():
                    raise Unavailable("shutting down", reason="SHUTTING_DOWN")
                parked.add(task)  # type: ignore[arg-type]
                try:
                    item = await source.__anext__()
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if stopping.is_set():
                        raise Unavailable("shutting down", reason="SHUTTING_DOWN") from None
                    raise
                finally:
                    parked.discard(task)  # type: ignore[arg-type]
                sending = True
                await context.write(item)
                sending = False
                item = None  # sent: not held while the servicer waits for its next message
            context.set_trailing_metadata(((REQUEST_ID, request_id),))
        except grpc.aio.AbortError:
            code = self._code_of(context)
            raise
        except (asyncio.CancelledError, GeneratorExit):  # GeneratorExit: closed, never resumed
            code = "CANCELLED"
            raise
        except Exception as exc:
            if sending:  # grpc's own: the call is over (finished, server stopped)
                code = "CANCELLED"
                raise
            code = exc.code if isinstance(exc, DomainError) else "INTERNAL"
            await self._fail(context, request_id, fields, exc)
        finally:
            parked.discard(task)  # type: ignore[arg-type]
            if source is not None:
                with contextlib.suppress(Exception):
                    await source.aclose()
            if held is not None:
                self.limits.close_stream(held)
            self._stream_closed()
            plan.finish(code, time.perf_counter() - started)
