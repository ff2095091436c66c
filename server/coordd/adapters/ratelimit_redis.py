"""Token buckets shared by every replica through Redis (keys `<redis_prefix>:rl:<kind>:<id>`).

One Lua script (sent with EVALSHA) does a bucket's refill and take atomically, on Redis's own
clock (so replicas' clocks need not agree), and sets the key's TTL to the time the bucket takes
to refill: an idle bucket disappears on its own. A check may take several tokens at once (a
`chunk`): the caller spends them locally before asking again, so a busy caller costs one round
trip per chunk, not per call. Tokens granted are never handed back, so N replicas admit at most
the configured budget plus N chunks.

Redis never decides a call's fate by failing: a command slower than `timeout_s` or an error
marks the store down for `retry_after_s`, during which `take` returns None without a round trip
and the caller falls back to its local, per-process bucket. Down and back are each logged once.
All of it runs on the event loop (redis.asyncio); nothing blocks.
"""

from __future__ import annotations

import math
import time

import structlog

log = structlog.get_logger(__name__)

MAX_CONNECTIONS = 32

# KEYS[1] bucket; ARGV rate (tokens/s), burst, tokens wanted, TTL (ms).
# Returns {granted, wait_us}: granted >= 1, or 0 and the microseconds until one token is back.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
end
local granted = math.min(want, math.floor(tokens))
if granted >= 1 then
  tokens = tokens - granted
else
  granted = 0
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if granted >= 1 then
  return {granted, 0}
end
return {0, math.ceil((1 - tokens) / rate * 1000000)}
"""


class RedisBuckets:
    """The shared store of token buckets; one per process, used from the event loop."""

    def __init__(self, url: str, prefix: str, timeout_s: float = 0.02, retry_after_s: float = 1.0) -> None:
        import redis.asyncio as aioredis

        self.prefix = f"{prefix}:rl"
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        # A bounded pool: a flood of checks waits (up to timeout_s) for a connection rather
        # than opening one each; waiting longer counts as slow.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=max(timeout_s, 0.1),
        )
        self._client = aioredis.Redis(connection_pool=pool)
        self._script = self._client.register_script(_TAKE)
        self.down_since: float | None = None
        self._retry_at = 0.0
        self.failures = 0  # checks that fell back to the local buckets

    @property
    def up(self) -> bool:
        return self.down_since is None

    async def take(
        self, kind: str, key: str, rate: float, burst: float, want: int
    ) -> tuple[int, float] | None:
        """(tokens granted, seconds until one is back when none was); None: Redis is down or
        slow, decide locally."""
        now = time.monotonic()
        if self.down_since is not None and now < self._retry_at:
            self.failures += 1
            return None
        ttl_ms = math.ceil(burst / rate * 1000) + 1000
        try:
            granted, wait_us = await self._script(
                keys=[f"{self.prefix}:{kind}:{key}"], args=[rate, burst, want, ttl_ms]
            )
        except Exception as exc:  # timeouts, connection errors, a Redis that answers errors
            self.failures += 1
            self._retry_at = time.monotonic() + self.retry_after_s
            if self.down_since is None:
                self.down_since = now
                log.warning(
                    "shared rate limits unavailable; using per-process limits",
                    error=str(exc) or type(exc).__name__,
                )
            return None
        if self.down_since is not None:
            log.warning("shared rate limits restored", down_s=round(now - self.down_since, 1))
            self.down_since = None
        return int(granted), int(wait_us) / 1e6

    async def close(self) -> None:
        await self._client.aclose(close_connection_pool=True)
