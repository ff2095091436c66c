"""The caller's address: the one place that decides who a call came from.

By default it is the TCP peer (`context.peer()`, "ipv4:10.0.0.7:51234"). Behind a proxy every
call has the proxy's address, so setting `trusted_proxies` (addresses and CIDRs, comma
separated) names the proxies: a call whose TCP peer is one of them is taken to come from the
last address of its `x-forwarded-for` metadata that is not a trusted proxy (read right to
left, as each proxy appends the address it saw), else from `x-real-ip`. A call from any other
peer has those headers ignored, so a client cannot choose the address it is limited, throttled,
audited and logged under. A forwarded address is given in grpc's form without a port
("ipv4:203.0.113.9", "ipv6:[2001:db8::1]").

Everything that needs the peer (rate limits, login throttle, audit rows, the rpc log line)
calls `client_peer`.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FORWARDED_FOR = "x-forwarded-for"
REAL_IP = "x-real-ip"


def parse_trusted(text: str) -> tuple[Network, ...]:
    """`trusted_proxies` -> networks; ValueError naming the bad entry."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(
                f"config trusted_proxies: {item[:60]!r} is not an IP address or CIDR "
                "(expected e.g. 10.0.0.5, 10.0.0.0/8, ::1)"
            ) from None
    return tuple(networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6]:port or [v6]
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _tcp_ip(peer: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    if kind == "ipv6":
        return _ip(rest.rpartition(":")[0] if rest.startswith("[") else rest)
    return _ip(rest.rpartition(":")[0] or rest)


def _grpc_form(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"ipv4:{address}" if address.version == 4 else f"ipv6:[{address}]"


@functools.lru_cache(maxsize=16)
def _trusted(text: str) -> tuple[Network, ...]:
    return parse_trusted(text)


def _is_trusted(address: Any, networks: tuple[Network, ...]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def client_peer(context: Any, trusted_proxies: str) -> str:
    """The address a call is accounted to (see the module docstring)."""
    peer = str(context.peer() or "")
    if not trusted_proxies:
        return peer
    networks = _trusted(trusted_proxies)
    tcp = _tcp_ip(peer)
    if tcp is None or not _is_trusted(tcp, networks):
        return peer
    forwarded: list[str] = []
    real_ip = ""
    for key, value in context.invocation_metadata() or ():
        if key == FORWARDED_FOR:
            forwarded.extend(str(value).split(","))
        elif key == REAL_IP and not real_ip:
            real_ip = str(value)
    client = None
    for hop in reversed(forwarded):
        address = _ip(hop)
        if address is None:  # garbage a client wrote: what the proxies appended ends here
            break
        client = address
        if not _is_trusted(address, networks):
            break
    if client is None and real_ip:
        client = _ip(real_ip)
    return _grpc_form(client) if client is not None else peer
