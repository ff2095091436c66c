"""Signed webhook POSTs with the standard library: no extra dependency, a hard timeout, and no
way for a channel owner to aim the daemon at a non-public address (unless allowed)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import socket
import ssl
from urllib.parse import urlparse

from coordd.notify.outcome import Outcome

__all__ = ["Outcome", "non_public", "post", "refused_host", "sign", "verify"]

SIGNATURE_HEADER = "X-Coordd-Signature"
EVENT_HEADER = "X-Coordd-Event"
DELIVERY_HEADER = "X-Coordd-Delivery"
TIMEOUT_S = 5.0


def sign(secret: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of the exact body bytes, as receivers recompute it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """For receivers (and tests): constant-time comparison of the signature header."""
    return hmac.compare_digest(sign(secret, body), header)


def non_public(address: str) -> bool:
    """Loopback, private, link-local (cloud metadata), shared, reserved, multicast or
    unspecified: anything but a global unicast address, IPv4-mapped IPv6 included."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def refused_host(host: str) -> str:
    """Why a channel URL's host is refused outright when private networks are not allowed
    ("" if it is not): an address literal that is not public, or a localhost name. Other
    names are checked on their resolved addresses at delivery (DNS can change meanwhile)."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return "localhost is not a public address"
    try:
        literal = non_public(name.strip("[]"))
    except ValueError:
        return ""
    return f"{host} is not a public address" if literal else ""


def _connect_any(addresses: list[str], port: int, timeout: float) -> socket.socket:
    """The first of the checked addresses that accepts, in resolver order (as
    socket.create_connection does with a name)."""
    failure: OSError = OSError(f"no address to connect to (port {port})")
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as exc:
            failure = exc
    raise failure


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the addresses that were checked, not to whatever the name resolves to next
    (DNS rebinding); the Host header still carries the name."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses

    def connect(self) -> None:
        self.sock = _connect_any(self._addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, addresses: list[str], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._addresses = addresses

    def connect(self) -> None:
        raw = _connect_any(self._addresses, self.port, self.timeout)
        # The certificate is verified against the name, as for any HTTPS request.
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


def post(
    url: str,
    secret: str,
    body: str,
    event_type: str,
    delivery_id: str,
    allow_private_networks: bool = False,
) -> Outcome:
    """One signed POST. Redirects are not followed (a 3xx is a failed attempt): a public
    receiver must not be able to bounce the daemon into a private one."""
    data = body.encode()
    parsed = urlparse(url)
    host = parsed.hostname or ""
    https = parsed.scheme == "https"
    try:
        port = parsed.port or (443 if https else 80)
        addresses = [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
    except (OSError, ValueError) as exc:
        return Outcome(False, 0, f"cannot resolve {host}: {exc}"[:500])
    if not allow_private_networks:
        blocked = [a for a in addresses if non_public(a)]
        if blocked:
            return Outcome(
                False,
                0,
                f"refused: {host} resolves to {blocked[0]}, not a public address"
                " (webhook_allow_private_networks is off)",
            )
    connection_type = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    connection = connection_type(host, port, list(dict.fromkeys(addresses)), TIMEOUT_S)
    target = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
    try:
        connection.request(
            "POST",
            target,
            body=data,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "coordd-webhook/1",
                SIGNATURE_HEADER: sign(secret, data),
                EVENT_HEADER: event_type,
                DELIVERY_HEADER: delivery_id,
            },
        )
        response = connection.getresponse()
        code = response.status
        response.read(64 * 1024)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Outcome(False, 0, f"{type(exc).__name__}: {exc}"[:500])
    finally:
        connection.close()
    return Outcome(200 <= code < 300, code, "" if 200 <= code < 300 else f"HTTP {code}")
