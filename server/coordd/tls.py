"""TLS and mutual TLS on the gRPC port, with the certificate files re-read on SIGHUP.

grpc's dynamic server credentials ask a fetcher for a new certificate configuration before
every TLS handshake. `ServerTls.reload()` (run on SIGHUP) reads and checks the files and
hands the new configuration to the next handshake; connections already open keep theirs.
A bad file on reload (missing, unparsable, key not matching the certificate) is logged and
the previous certificate stays in use: a botched rotation never takes the port down.

Whether clients must present a certificate (a client CA is set) is fixed at start; the CA's
contents reload like the certificate.
"""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from coordd.config import Settings

log = structlog.get_logger("coordd.tls")

_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


class TlsError(Exception):
    """A TLS file that cannot be used, as one line naming the setting."""


def is_loopback(listen: str) -> bool:
    """True when `host:port` only accepts connections from this machine."""
    host = listen.rpartition(":")[0].strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, or an empty host (every interface)


def tls_enabled(settings: Settings) -> bool:
    return bool(settings.tls_cert_file or settings.tls_key_file)


def _read(setting: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(f"config {setting}: cannot read {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise TlsError(f"config {setting}: {path} is empty")
    return data


def _check_pair(cert_pem: bytes, key_pem: bytes) -> None:
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsError("config tls_cert_file: not a PEM certificate (chain)") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsError("config tls_key_file: the key is encrypted; give an unencrypted PEM key") from None
    except ValueError:
        raise TlsError("config tls_key_file: not a PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.DER, public)
    theirs = chain[0].public_key().public_bytes(serialization.Encoding.DER, public)
    if ours != theirs:
        raise TlsError("config tls_key_file: the key does not match the first certificate of tls_cert_file")


def _check_ca(ca_pem: bytes) -> None:
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise TlsError("config tls_client_ca_file: not a PEM certificate (bundle)") from None


class ServerTls:
    """The server's certificate configuration and its reload."""

    def __init__(self, settings: Settings) -> None:
        if not (settings.tls_cert_file and settings.tls_key_file):
            raise TlsError("config tls_cert_file and tls_key_file: set both (or neither, for plaintext)")
        self.cert_file = settings.tls_cert_file
        self.key_file = settings.tls_key_file
        self.client_ca_file = settings.tls_client_ca_file
        self.require_client_auth = bool(self.client_ca_file)
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._lock = threading.Lock()
        self._initial = self._load()
        self.reloads = 0

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert = _read("tls_cert_file", self.cert_file)
        key = _read("tls_key_file", self.key_file)
        _check_pair(cert, key)
        ca = None
        if self.client_ca_file:
            ca = _read("tls_client_ca_file", self.client_ca_file)
            _check_ca(ca)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self._fetch, require_client_authentication=self.require_client_auth
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc before each handshake (on its own thread): None keeps the current one."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def reload(self) -> bool:
        """Re-reads the files (blocking file I/O: call it off the event loop). Returns whether
        the new certificate will be used; on failure the current one stays."""
        try:
            config = self._load()
        except TlsError as exc:
            log.error("TLS reload failed; keeping the current certificate", error=str(exc))
            return False
        with self._lock:
            self._pending = config
        self.reloads += 1
        log.info("TLS certificate reloaded; new connections use it", cert_file=self.cert_file)
        return True


def add_port(server: grpc.aio.Server, settings: Settings) -> tuple[int, ServerTls | None]:
    """Binds the gRPC port, with TLS when configured. Returns (port, tls or None)."""
    if not tls_enabled(settings):
        if settings.tls_client_ca_file:
            raise TlsError("config tls_client_ca_file: needs tls_cert_file and tls_key_file")
        port = server.add_insecure_port(settings.listen)
        if not is_loopback(settings.listen):
            log.warning(
                "SERVING PLAINTEXT gRPC ON A NON-LOOPBACK ADDRESS: tokens, API keys and passwords "
                "cross the network unencrypted; set tls_cert_file and tls_key_file",
                listen=settings.listen,
            )
        return port, None
    tls = ServerTls(settings)
    return server.add_secure_port(settings.listen, tls.credentials()), tls
