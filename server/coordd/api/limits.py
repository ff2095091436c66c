"""Overload protection: token buckets per peer host and per caller, and a cap on the streams
one caller holds open. Over a limit a call gets RESOURCE_EXHAUSTED (with a google.rpc.RetryInfo
for rate limits) before any database work.

Each call's wrapper (api/interceptors.py) runs request checks -> peer limit -> auth -> caller
limit -> idempotency -> servicer: the
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

import time
from typing import Any

from coordd.adapters.ratelimit_redis import RedisBuckets
from coordd.api.peer import client_peer, parse_trusted
from coordd.config import Settings
from coordd.core.errors import ResourceExhausted
from coordd.core.principal import Principal, caller

EXEMPT = ("/grpc.health.", "/grpc.reflection.")
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


def host_of(peer: str) -> str:
    """`ipv4:10.0.0.7:51234` -> `ipv4:10.0.0.7` (the port changes with every connection)."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


def peer_host(context: Any, trusted_proxies: str = "") -> str:
    """The host part of `client_peer(context)`."""
    return host_of(client_peer(context, trusted_proxies))


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


def caller_key(who: Principal | None = None) -> str:
    who = who or caller()
    return who.api_key_id or who.user_id


class Limits:
    """The buckets and open-stream counts of one process (the call pipeline in
    api/interceptors.py asks them: the peer bucket before authentication, the caller's after)."""

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

    @property
    def shared(self) -> bool:
        """True while the buckets are shared through Redis (configured and reachable)."""
        return self.store is not None and self.store.up

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    async def check_peer(self, host: str) -> None:
        """`host`: `host_of(client_peer(context))`."""
        assert self.peer is not None
        key, now = host, time.monotonic()
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

    async def open_stream(self, host: str, who: Principal | None = None) -> str:
        """Admits a stream for the caller (or, anonymous, its peer `host`) and counts it open;
        the returned key must be passed to close_stream when the stream ends, however it ends."""
        key = caller_key(who)
        await self.check_caller(key)
        key = key or f"peer:{host}"
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
