"""Steps of the call pipeline (api/interceptors.py) that only some calls take, and its small
helpers: reading the call's metadata, the idempotency replay, the audit target."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from coordd.core.errors import Aborted
from coordd.core.principal import Principal
from coordd.domain import idempotency as idem
from coordd.runtime import Runtime

REQUEST_ID = "x-request-id"
IDEMPOTENCY_KEY = "idempotency-key"
AUTHORIZATION = "authorization"

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]


def scan(metadata: Iterable[Any] | None) -> tuple[str, str, str]:
    """(request id, authorization, idempotency key): the first of each, in one pass."""
    request_id = authorization = key = None
    for name, value in metadata or ():
        if name == REQUEST_ID:
            request_id = value if request_id is None else request_id
        elif name == AUTHORIZATION:
            authorization = value if authorization is None else authorization
        elif name == IDEMPOTENCY_KEY:
            key = value if key is None else key
    return (
        request_id if isinstance(request_id, str) else "",
        authorization if isinstance(authorization, str) else "",
        key if isinstance(key, str) else "",
    )


async def idempotent(
    rt: Runtime, method: str, call: Behaviour, request: Any, context: Any, key: str, who: Principal
) -> Any:
    """Replays the stored response of a keyed mutating unary call, byte for byte."""
    idem.check_key(key)
    scope = who.scope
    if idem.writes_in_call(method):
        # The call's own transaction looks the key up, replays or refuses, and writes the
        # finished record with its effect: no claim, completion or release around it (two
        # thread hops and a transaction fewer per call).
        token = idem.PENDING.set(idem.PendingKey(scope, key))
        try:
            return await call(request, context)
        finally:
            idem.PENDING.reset(token)
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


def passing_bytes(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """Idempotent methods reply with bytes (replays, and first responses as stored): sent as is."""

    def serializer(value: Any) -> bytes:
        return value if isinstance(value, bytes) else serialize(value)

    return serializer


def target_of(request: Any) -> str:
    """The resource a request names (`name`, else `parent`), for the audit trail."""
    fields = getattr(getattr(request, "DESCRIPTOR", None), "fields_by_name", {})
    for field in ("name", "parent"):
        if field in fields and isinstance(getattr(request, field), str):
            return str(getattr(request, field))
    return ""
