"""Overload protection: token buckets per peer host and per caller, and a cap on the streams
one caller holds open. Over a limit a call gets RESOURCE_EXHAUSTED (with a google.rpc.RetryInfo
for rate limits) before any database work.

The chain is observability -> peer limit -> auth -> caller limit -> idempotency -> servicer: the
peer bucket runs before authentication (which may read the database for an API key), the
caller bucket right after it. "Caller" is the credential: the API key (each node key is one),
else the user of an access token; anonymous calls count against their peer only. Health and
reflection are exempt.

Without Redis the buckets are in memory, per process: N replicas behind a load balancer admit
up to N times the configured rates. With `redis_url` set (and `rate_limit_shared` on) the
buckets are shared by every replica (adapters/ratelimit_redis.py): a call first passes its
process's own bucket (the fast path, and the fallback), then the shared one, spending tokens
taken from Redis a chunk at a time and remembering a refusal until the bucket refills. If
Redis is down or slower than `rate_limit_redis_timeout_s`, the local bucket alone decides
(never a failed call; at most N times the rate while it lasts). The open-stream counts stay
per process. "Peer" is `api/peer.client_peer` (the forwarded address behind a trusted proxy).
Everything here runs on the event loop thread, so the counters need no lock.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from coordd.adapters.ratelimit_redis import RedisBuckets
from coordd.api.interceptors import Behaviour, WrappingInterceptor
from coordd.api.peer import client_peer, parse_trusted
from coordd.config import Settings
from coordd.core.errors import ResourceExhausted
from coordd.core.principal import caller

_EXEMPT = ("/grpc.health.", "/grpc.reflection.")
# Tokens taken from the shared bucket per round trip: this fraction of min(rate, burst).
CHUNK_FRACTION = 0.01
_MAX_KEYS = 100_000


class RateLimited(ResourceExhausted):
    """RESOURCE_EXHAUSTED whose status also carries RetryInfo(retry_delay=retry_after_s)."""

    def __init__(self, message: str, retry_after_s: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s


class Buckets:
    """Token buckets by key: `rate` tokens a second up to `burst`; a call takes one."""

    __slots__ = ("_max_keys", "_state", "burst", "rate")

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._max_keys = max_keys
        self._state: dict[str, list[float]] = {}  # key -> [tokens, time of last update]

    def take(self, key: str, now: float) -> float:
        """0.0 when the call may go ahead, else the seconds until a token is back."""
        state = self._state.get(key)
        if state is None:
            if len(self._state) >= self._max_keys:
                self._prune(now)
            self._state[key] = [self.burst - 1.0, now]
            return 0.0
        tokens = state[0] + (now - state[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        state[1] = now
        if tokens >= 1.0:
            state[0] = tokens - 1.0
            return 0.0
        state[0] = tokens
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Forgets buckets that have refilled (they would start full anyway); if every one is
        busy, starts over rather than grow without bound."""
        full = [k for k, (tokens, at) in self._state.items() if tokens + (now - at) * self.rate >= self.burst]
        for key in full:
            del self._state[key]
        if len(self._state) >= self._max_keys:
            self._state.clear()

    def __len__(self) -> int:
        return len(self._state)


def _buckets(rate: float, burst: int) -> Buckets | None:
    return Buckets(rate, burst) if rate else None


def peer_host(context: Any, trusted_proxies: str = "") -> str:
    """`ipv4:10.0.0.7:51234` -> `ipv4:10.0.0.7` (the port changes with every connection)."""
    peer = client_peer(context, trusted_proxies)
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


class SharedBuckets:
    """One kind of bucket ("caller", "peer") in the shared store, with what this process holds
    of it: tokens taken but not yet spent, and refusals until a token is back."""

    def __init__(self, kind: str, local: Buckets, store: RedisBuckets) -> None:
        self.kind = kind
        self.rate, self.burst = local.rate, local.burst
        self.chunk = max(1, int(min(local.rate, local.burst) * CHUNK_FRACTION))
        self.store = store
        self.leased: dict[str, int] = {}
        self.refused_until: dict[str, float] = {}

    async def take(self, key: str, now: float) -> float:
        """0.0 when the call may go ahead (also when Redis could not say), else the seconds
        until a token is back."""
        left = self.leased.get(key)
        if left:
            if left > 1:
                self.leased[key] = left - 1
            else:
                del self.leased[key]
            return 0.0
        until = self.refused_until.get(key)
        if until is not None:
            if now < until:
                return until - now
            del self.refused_until[key]
        answer = await self.store.take(self.kind, key, self.rate, self.burst, self.chunk)
        if answer is None:
            return 0.0
        granted, wait = answer
        if granted:
            if granted > 1:
                if len(self.leased) >= _MAX_KEYS:
                    self.leased.clear()
                self.leased[key] = granted - 1
            return 0.0
        if len(self.refused_until) >= _MAX_KEYS:
            self.refused_until.clear()
        self.refused_until[key] = now + wait
        return wait


def caller_key() -> str:
    who = caller()
    return who.api_key_id or who.user_id


class Limits:
    """The buckets and open-stream counts of one process, and its two interceptors."""

    def __init__(self, settings: Settings) -> None:
        s = settings
        for name in ("rate_limit_caller", "rate_limit_peer"):
            rate, burst = getattr(s, f"{name}_rps"), getattr(s, f"{name}_burst")
            if rate < 0 or (rate > 0 and burst < 1):
                raise ValueError(f"config {name}_rps / _burst: rate >= 0 (0 = off) and burst >= 1")
        if s.max_streams_per_caller < 0:
            raise ValueError("config max_streams_per_caller: must not be negative (0 = no limit)")
        if s.rate_limit_redis_timeout_s <= 0:
            raise ValueError("config rate_limit_redis_timeout_s: must be positive")
        self.trusted_proxies = s.trusted_proxies
        parse_trusted(s.trusted_proxies)  # a bad entry stops the start
        self.caller = _buckets(s.rate_limit_caller_rps, s.rate_limit_caller_burst)
        self.peer = _buckets(s.rate_limit_peer_rps, s.rate_limit_peer_burst)
        self.store: RedisBuckets | None = None
        self.shared_caller: SharedBuckets | None = None
        self.shared_peer: SharedBuckets | None = None
        if s.redis_url and s.rate_limit_shared and (self.caller is not None or self.peer is not None):
            store = self.store = RedisBuckets(s.redis_url, s.redis_prefix, s.rate_limit_redis_timeout_s)
            if self.caller is not None:
                self.shared_caller = SharedBuckets("caller", self.caller, store)
            if self.peer is not None:
                self.shared_peer = SharedBuckets("peer", self.peer, store)
        self.max_streams = s.max_streams_per_caller
        self.open_streams: dict[str, int] = {}
        self.peer_interceptor = PeerLimitInterceptor(self)
        self.caller_interceptor = CallerLimitInterceptor(self)

    @property
    def shared(self) -> bool:
        """True while the buckets are shared through Redis (configured and reachable)."""
        return self.store is not None and self.store.up

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    async def check_peer(self, context: Any) -> None:
        assert self.peer is not None
        key, now = peer_host(context, self.trusted_proxies), time.monotonic()
        wait = self.peer.take(key, now)
        if not wait and self.shared_peer is not None:
            wait = await self.shared_peer.take(key, now)
        if wait:
            raise self._limited("peer", self.peer, wait)

    async def check_caller(self, key: str) -> None:
        if self.caller is not None and key:
            now = time.monotonic()
            wait = self.caller.take(key, now)
            if not wait and self.shared_caller is not None:
                wait = await self.shared_caller.take(key, now)
            if wait:
                raise self._limited("caller", self.caller, wait)

    @staticmethod
    def _limited(scope: str, buckets: Buckets, wait: float) -> RateLimited:
        return RateLimited(
            f"too many calls from this {scope}: at most {buckets.rate:g}/s (bursts of {buckets.burst:g}); "
            f"retry in {wait:.3f} s",
            wait,
            reason="RATE_LIMITED",
            metadata={"scope": scope, "retry_after_ms": str(max(1, round(wait * 1000)))},
        )

    async def open_stream(self, context: Any) -> str:
        """Admits a stream for the caller (or, anonymous, its peer) and counts it open; the
        returned key must be passed to close_stream when the stream ends, however it ends."""
        key = caller_key()
        await self.check_caller(key)
        key = key or f"peer:{peer_host(context, self.trusted_proxies)}"
        held = self.open_streams.get(key, 0)
        if self.max_streams and held >= self.max_streams:
            raise ResourceExhausted(
                f"this caller already holds {held} open streams (the limit); close one first",
                reason="TOO_MANY_STREAMS",
                metadata={"limit": str(self.max_streams)},
            )
        self.open_streams[key] = held + 1
        return key

    def close_stream(self, key: str) -> None:
        held = self.open_streams.get(key, 0) - 1
        if held > 0:
            self.open_streams[key] = held
        else:
            self.open_streams.pop(key, None)


class PeerLimitInterceptor(WrappingInterceptor):
    """The per-peer bucket, before authentication."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if self.limits.peer is None or method.startswith(_EXEMPT):
            return handler
        return super().wrap(handler, method)

    async def unary(self, method: str, call: Behaviour, request: Any, context: Any) -> Any:
        await self.limits.check_peer(context)
        return await call(request, context)

    async def stream(self, method: str, call: Behaviour, request: Any, context: Any) -> AsyncIterator[Any]:
        await self.limits.check_peer(context)
        async for item in call(request, context):
            yield item


class CallerLimitInterceptor(WrappingInterceptor):
    """The per-caller bucket and open-stream count, after authentication."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if method.startswith(_EXEMPT):
            return handler
        req_des, resp_ser = handler.request_deserializer, handler.response_serializer
        cls = type(self)
        if handler.unary_unary:
            if self.limits.caller is None:
                return handler
            return grpc.unary_unary_rpc_method_handler(
                functools.partial(cls.unary, self, method, handler.unary_unary), req_des, resp_ser
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                functools.partial(cls.client_stream, self, method, handler.stream_unary), req_des, resp_ser
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                functools.partial(cls.stream, self, method, handler.unary_stream), req_des, resp_ser
            )
        return grpc.stream_stream_rpc_method_handler(
            functools.partial(cls.stream, self, method, handler.stream_stream), req_des, resp_ser
        )

    async def unary(self, method: str, call: Behaviour, request: Any, context: Any) -> Any:
        await self.limits.check_caller(caller_key())
        return await call(request, context)

    async def client_stream(self, method: str, call: Behaviour, request: Any, context: Any) -> Any:
        key = await self.limits.open_stream(context)
        try:
            return await call(request, context)
        finally:
            self.limits.close_stream(key)

    async def stream(self, method: str, call: Behaviour, request: Any, context: Any) -> AsyncIterator[Any]:
        key = await self.limits.open_stream(context)
        try:
            async for item in call(request, context):
                yield item
        finally:
            self.limits.close_stream(key)
