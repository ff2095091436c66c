"""Sign-In with Ethereum's own throttle: token buckets for nonces issued per client address,
sign-in attempts per client address, and signed sign-ins per Ethereum address.

The general rate limits (api/limits.py) allow thousands of calls a second; a nonce costs a
database row and an attempt a secp256k1 recovery and a nonce lookup, so these two RPCs get
budgets of their own, per minute. The client address is `api/peer.client_peer` (the
forwarded address behind a trusted proxy) with IPv6 grouped by /64, as for password logins.
The per-Ethereum-address bucket is taken only once the signature has been checked offline
(domain/auth/siwe.check_signed): a message that names someone else's address without their
signature is refused by the per-client bucket and the signature check, never counted against
that address, so nobody can lock another wallet out.

The buckets are api/limits.Buckets in memory, shared by every replica through Redis
(SharedBuckets over adapters/ratelimit_redis, keys `<redis_prefix>:rl:siwe-*:*`) when
`redis_url` is set and `rate_limit_shared` is on; a slow or failed Redis leaves the local
bucket to decide. Memory is bounded by Buckets' key cap; a refusal is RESOURCE_EXHAUSTED /
SIWE_THROTTLED with a google.rpc.RetryInfo and `retry_after_ms` in its metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from coordd.adapters.ratelimit_redis import RedisBuckets
from coordd.api.limits import Buckets, RateLimited, SharedBuckets
from coordd.api.peer import client_peer
from coordd.config import Settings
from coordd.domain.auth.throttle import peer_address

SCOPES = {
    # scope: (settings rate per minute, settings burst, what the message says)
    "siwe-nonce-peer": (
        "siwe_nonces_per_peer_per_min",
        "siwe_nonce_burst_per_peer",
        "Sign-In with Ethereum nonces for this client address",
    ),
    "siwe-peer": (
        "siwe_sign_ins_per_peer_per_min",
        "siwe_sign_in_burst_per_peer",
        "Sign-In with Ethereum attempts from this client address",
    ),
    "siwe-address": (
        "siwe_sign_ins_per_address_per_min",
        "siwe_sign_in_burst_per_address",
        "sign-ins of this Ethereum address",
    ),
}


class _Scope:
    def __init__(self, name: str, per_min: float, burst: int, what: str) -> None:
        self.name, self.per_min, self.what = name, per_min, what
        self.local = Buckets(per_min / 60.0, burst)
        self.shared: SharedBuckets | None = None

    async def take(self, key: str, now: float) -> None:
        wait = self.local.take(key, now)
        if not wait and self.shared is not None:
            wait = await self.shared.take(key, now)
        if wait:
            seconds = max(wait, 0.001)
            raise RateLimited(
                f"too many {self.what}: at most {self.per_min:g} a minute (bursts of "
                f"{self.local.burst:g}); retry in {seconds:.1f} s",
                seconds,
                reason="SIWE_THROTTLED",
                metadata={"scope": self.name, "retry_after_ms": str(max(1, round(seconds * 1000)))},
            )


class SiweLimits:
    """The three buckets of one process; `clock` is seconds (the runtime's clock in tests)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.trusted_proxies = settings.trusted_proxies
        self.clock = clock
        self.scopes: dict[str, _Scope | None] = {}
        for name, (rate, burst, what) in SCOPES.items():
            per_min = float(getattr(settings, rate))
            self.scopes[name] = _Scope(name, per_min, getattr(settings, burst), what) if per_min else None
        self.store: RedisBuckets | None = None
        active = [scope for scope in self.scopes.values() if scope is not None]
        if settings.redis_url and settings.rate_limit_shared and active:
            self.store = RedisBuckets(
                settings.redis_url, settings.redis_prefix, settings.rate_limit_redis_timeout_s
            )
            for scope in active:
                scope.shared = SharedBuckets(scope.name, scope.local, self.store)

    def client(self, context: Any) -> str:
        return peer_address(client_peer(context, self.trusted_proxies))

    async def _take(self, scope: str, key: str) -> None:
        bucket = self.scopes[scope]
        if bucket is not None and key:
            await bucket.take(key, self.clock())

    async def admit_nonce(self, context: Any) -> None:
        await self._take("siwe-nonce-peer", self.client(context))

    async def admit_attempt(self, context: Any) -> None:
        await self._take("siwe-peer", self.client(context))

    async def admit_address(self, address: str) -> None:
        await self._take("siwe-address", address.lower())

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    def close_when(self, stopping: asyncio.Event) -> asyncio.Task[None] | None:
        """Closes the Redis connections once `stopping` is set (the daemon's shutdown)."""
        if self.store is None:
            return None

        async def wait_then_close() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                await stopping.wait()
            await self.close()

        return asyncio.get_running_loop().create_task(wait_then_close(), name="siwe-limits-close")
