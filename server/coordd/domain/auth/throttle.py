"""Login throttling: per account and address, and per address across accounts.

Failures are counted per (account, address), not per account: an attacker guessing a
user's password from their own address delays only their own attempts, never the user's
login from elsewhere. After FREE_FAILURES failures in a row the next attempt for that pair
waits BASE_DELAY_S, then twice as long after each further failure, up to MAX_DELAY_S; a
success clears the pair. Across accounts, each address has a token bucket of PEER_BURST
failed logins, refilled at PEER_REFILL_PER_S: spraying one password over many accounts is
limited too. A refused attempt costs nothing (no database read, no hash) and is not counted.

IPv6 addresses are grouped by /64 (one host usually owns a whole /64). The state is in
memory, per replica, bounded to MAX_ENTRIES pairs and addresses (least recently used
dropped first): N replicas allow N times the budget; a restart forgets it.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import OrderedDict
from dataclasses import dataclass

from coordd.core.errors import ResourceExhausted

FREE_FAILURES = 5
BASE_DELAY_S = 1.0
MAX_DELAY_S = 900.0
# A pair whose last failure is this old starts again from zero.
FORGET_AFTER_S = 3600.0
PEER_BURST = 30.0
PEER_REFILL_PER_S = 30.0 / 600.0
MAX_ENTRIES = 100_000


def peer_address(peer: str) -> str:
    """grpc's `context.peer()` ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678") without the port,
    IPv6 reduced to its /64; anything else is kept as given."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = (rest if rest.endswith("]") else rest.rpartition(":")[0]).strip("[]") or rest
        try:
            return str(ipaddress.ip_network(f"{host}/64", strict=False))
        except ValueError:
            return host
    return peer


@dataclass
class _Failures:
    count: int
    last: float


@dataclass
class _Bucket:
    tokens: float
    updated: float


class LoginThrottle:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._pairs: OrderedDict[tuple[str, str], _Failures] = OrderedDict()
        self._peers: OrderedDict[str, _Bucket] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()

    def begin(self, account: str, address: str, now: float) -> None:
        """Admits one attempt (counted as a failure until `succeeded`), or raises
        ResourceExhausted with the time after which a retry may be admitted."""
        with self._lock:
            bucket = self._bucket(address, now)
            if bucket.tokens < 1:
                wait = (1 - bucket.tokens) / PEER_REFILL_PER_S
                raise _refused("too many failed logins from this address", wait)
            key = (account, address)
            pair = self._pairs.get(key)
            if pair is not None and now - pair.last > FORGET_AFTER_S:
                pair = None
            if pair is not None and pair.count >= FREE_FAILURES:
                delay = min(BASE_DELAY_S * 2 ** (pair.count - FREE_FAILURES), MAX_DELAY_S)
                if now < pair.last + delay:
                    raise _refused("too many failed logins for this account", pair.last + delay - now)
            # Counted before the password is checked, so concurrent guesses cannot all slip in.
            bucket.tokens -= 1
            if pair is None:
                pair = _Failures(0, now)
            pair.count += 1
            pair.last = now
            self._pairs[key] = pair
            self._pairs.move_to_end(key)
            while len(self._pairs) > self._max:
                self._pairs.popitem(last=False)

    def succeeded(self, account: str, address: str) -> None:
        with self._lock:
            self._pairs.pop((account, address), None)
            bucket = self._peers.get(address)
            if bucket is not None:
                bucket.tokens = min(bucket.tokens + 1, PEER_BURST)

    def _bucket(self, address: str, now: float) -> _Bucket:
        bucket = self._peers.get(address)
        if bucket is None:
            bucket = self._peers[address] = _Bucket(PEER_BURST, now)
            while len(self._peers) > self._max:
                self._peers.popitem(last=False)
        else:
            elapsed = max(now - bucket.updated, 0.0)
            bucket.tokens = min(bucket.tokens + elapsed * PEER_REFILL_PER_S, PEER_BURST)
            bucket.updated = now
            self._peers.move_to_end(address)
        return bucket

    def __len__(self) -> int:
        return len(self._pairs)


def _refused(what: str, wait_s: float) -> ResourceExhausted:
    seconds = max(int(wait_s + 0.999), 1)
    return ResourceExhausted(
        f"{what}; retry in {seconds} s",
        reason="LOGIN_THROTTLED",
        metadata={"retry_after_s": str(seconds)},
        retry_after_s=float(seconds),
    )
