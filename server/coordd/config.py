"""One Settings object: defaults < optional TOML file < COORDD_* environment.

Bad configuration raises ConfigError with a one-line message; the CLI prints it and exits 2.
Configuration fails only on its own: the daemon reads `COORDD_<SETTING>` variables, and
- `COORDD_TEST_*` (the test suite's, e.g. COORDD_TEST_PG_URL) are ignored;
- variables other programs set (coordctl's old COORDD_NODE_KEY, the job runner's COORDD_JOB
  and COORDD_JOB_ATTEMPT) are ignored; clients use their own prefix, COORDCTL_*;
- any other unknown COORDD_* variable is a warning naming it (`Settings.warnings`, logged at
  start), except a close misspelling of a real setting (COORDD_DATABSE_URL), which is an error
  saying "did you mean": silently running on SQLite instead of PostgreSQL is worse than not
  starting.
Unknown keys in the TOML file (the daemon's own) are always an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    pass


@dataclass
class Settings:
    # The gRPC address; port 0 picks a free one (`coordd serve --port-file` writes it).
    listen: str = "127.0.0.1:50051"
    # SQLite file, generated keys and secrets, ceremony blobs (created 0700).
    data_dir: str = "./var"
    # Empty: SQLite file `coordd.db` under data_dir. Otherwise postgresql://user@host:port/db.
    database_url: str = ""
    # Threads running database work off the event loop, and PostgreSQL pool connections.
    db_threads: int = 8
    db_pool_size: int = 16
    # How long SQLite waits on a lock (writers are serialized in-process anyway).
    sqlite_busy_timeout_ms: int = 10000
    # Empty: in-process event bus. redis://host:port/db for cross-replica fan-out.
    redis_url: str = ""
    # Channel/key prefix in Redis, so deployments (or test runs) sharing one Redis stay apart.
    redis_prefix: str = "coordd"
    # On PostgreSQL: carry events between replicas with LISTEN/NOTIFY (the bus when no Redis is
    # configured, and Redis's fallback while it is down). Off: such replicas hear each other's
    # changes only on their streams' refresh timers.
    pg_event_bus: bool = True
    # Prometheus metrics on metrics_host:metrics_port; 0 = off.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # Log lines: json, console, or auto (json unless stderr is a terminal); the least level logged.
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    # Empty: a secret is generated into data_dir/jwt.secret (0600) on first start.
    jwt_secret: str = ""
    # Lifetime of a login access token (JWT).
    access_token_ttl_s: int = 3600
    # Argon2id cost; tests lower it. RFC 9106's second recommendation is 64 MiB, t=3.
    argon2_memory_kib: int = 65536
    argon2_time_cost: int = 3
    argon2_parallelism: int = 2
    # How long an authenticated API key is cached; a revoke clears it at once on its replica.
    api_key_cache_ttl_s: float = 30.0
    # How long a stored idempotent response is kept for replay.
    idempotency_retention_s: int = 86400
    # How long a duplicate waits for the first call with its key before ABORTED.
    idempotency_wait_s: float = 10.0
    # A first call that has held its key this long is presumed dead and may be re-run.
    idempotency_stale_s: float = 300.0
    # Largest gRPC message sent or received; longest string field in a request; drain time on shutdown.
    max_message_bytes: int = 4 * 1024 * 1024
    max_string_chars: int = 16384
    shutdown_grace_s: float = 10.0
    # The web pages and their JSON API (coordd.web) on their own host:port, in the daemon's
    # process and event loop. Empty: off (`coordd serve --http 127.0.0.1:8080` turns it on).
    http_listen: str = ""
    # A live page with nothing new re-reads and re-sends its state this often (lost hints).
    http_refresh_s: float = 15.0
    # Live pages (server-sent event streams) one client address may hold open; 0 = no limit.
    http_max_streams_per_peer: int = 100
    # Cyclic-GC generation-0 threshold for `coordd serve` (Python's default is 700; 0 keeps it).
    # With thousands of open streams the default runs full scans of every stream's objects
    # many times a second (bench/queue_watch.py: p99 6.9 s -> ~2 s at 10,000 watchers).
    gc_threshold: int = 50000
    # Run the built-in scheduler (leader-elected); its lease on PostgreSQL; the health probe period.
    scheduler_enabled: bool = True
    scheduler_lease_s: float = 10.0
    health_check_interval_s: float = 2.0
    # The health probe's own deadline (it runs on its own thread and connection, never
    # queued behind the database pool); a probe slower than this counts as unreachable.
    health_check_timeout_s: float = 3.0
    # TLS on the gRPC port: PEM files; both empty serves plaintext. With a client CA, every
    # client must present a certificate it signed (mutual TLS). SIGHUP re-reads all three.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # Overload protection: token buckets per caller credential (API key, else user) and per
    # peer host; rate in calls/s, 0 = off. In memory per process without Redis; shared by all
    # replicas through Redis when redis_url is set (see rate_limit_shared).
    rate_limit_caller_rps: float = 1000.0
    rate_limit_caller_burst: int = 2000
    rate_limit_peer_rps: float = 2000.0
    rate_limit_peer_burst: int = 4000
    # With redis_url: share the rate-limit buckets through Redis (keys <redis_prefix>:rl:*).
    # Off: per-process buckets even with Redis.
    rate_limit_shared: bool = True
    # A shared-bucket check slower than this (or failing) falls back to the process's own
    # bucket; Redis is then left alone for a second.
    rate_limit_redis_timeout_s: float = 0.02
    # Proxies (addresses or CIDRs, comma-separated) whose x-forwarded-for / x-real-ip metadata
    # names the caller's address for limits, login throttling, audit and logs. Empty: the TCP
    # peer is the caller's address and those headers are ignored.
    trusted_proxies: str = ""
    # Open streams (server, client and bidi) one caller credential may hold at once; 0 = no limit.
    max_streams_per_caller: int = 1000
    # Webhook channels may point at loopback, private, link-local or other non-public addresses
    # (checked when a channel is created and again, on the resolved address, at each delivery).
    # Off by default: a channel owner must not be able to make the daemon POST into its own
    # network (cloud metadata endpoints, admin ports). Turn on for receivers on a private network.
    webhook_allow_private_networks: bool = False
    # Ed25519 coordinator key; empty: generated into data_dir/coordinator.key (0600).
    signing_key_path: str = ""
    # AES-256 key sealing webhook secrets in the database; empty: data_dir/secrets.key (0600).
    # Replicas must share it, like the signing key.
    sealing_key_path: str = ""
    # Jobs: platform fee on each payment (basis points), retries, payload retention.
    job_fee_bps: int = 500
    job_default_max_attempts: int = 3
    job_backoff_base_s: float = 1.0
    job_backoff_max_s: float = 300.0
    job_payload_retention_s: float = 7 * 24 * 3600
    # Jobs: how many times a worker may snooze one job (SnoozeJob beyond it: FAILED_PRECONDITION).
    job_max_snoozes: int = 100
    # Competitions: waitlist offer hold, reminder lead, entry size, errors before FAILED.
    competition_offer_hold_s: int = 12 * 3600
    competition_reminder_lead_s: int = 24 * 3600
    competition_max_entry_bytes: int = 1024 * 1024
    competition_max_errors: int = 5
    # Ceremonies: verifiers the operator declares, by name, for coordinators to choose:
    # {"NAME": {"command": "TEMPLATE", "timeout_s": SECONDS}} (a table in the config file, JSON
    # in COORDD_CEREMONY_VERIFIERS). Placeholders: {r1cs} {ptau} {zkey} {previous} {circuit}.
    ceremony_verifiers: dict = field(default_factory=dict)
    # snarkjs, for the "snarkjs" verifier declared out of the box: a path; "" finds it on PATH;
    # "off" declares no such verifier.
    snarkjs_path: str = ""
    snarkjs_verify_timeout_s: float = 600.0
    # The verifier a ceremony gets when its coordinator names none ("none" is never a default).
    ceremony_default_verifier: str = "snarkjs"
    # Sign-In with Ethereum: the domain and URI a signed EIP-4361 message must name (a message
    # for another site is refused), and how long a nonce the daemon issued stays usable.
    siwe_domain: str = "coordd.local"
    siwe_uri: str = "https://coordd.local"
    siwe_nonce_ttl_s: float = 300.0
    # Sign-In with Ethereum throttle (per minute, with bursts; 0 = off): nonces issued to one
    # client address, sign-in attempts from one client address, and signed sign-ins of one
    # Ethereum address (counted once the signature checks out, so nobody can spend another
    # address's budget). Shared by every replica through Redis like the rate limits.
    siwe_nonces_per_peer_per_min: float = 30.0
    siwe_nonce_burst_per_peer: int = 60
    siwe_sign_ins_per_peer_per_min: float = 30.0
    siwe_sign_in_burst_per_peer: int = 60
    siwe_sign_ins_per_address_per_min: float = 6.0
    siwe_sign_in_burst_per_address: int = 10
    # Unused nonces outstanding at once (each expires after siwe_nonce_ttl_s); past it, new
    # nonces are refused with RESOURCE_EXHAUSTED until the oldest expires. 0 = no cap.
    siwe_max_nonces: int = 50000
    # Notification deliveries: concurrent sends in the daemon's notification pool, overall.
    notify_max_in_flight: int = 16
    # Concurrent sends to one channel (a hung receiver holds at most this many slots).
    notify_per_channel_in_flight: int = 2
    # Concurrent sends to the channels of one owner.
    notify_per_owner_in_flight: int = 4
    # Failed attempts in a row after which a channel's circuit opens (nothing is attempted).
    notify_circuit_failures: int = 5
    # The first cool-down of an open circuit; doubled per consecutive opening, up to the max.
    notify_circuit_open_s: float = 30.0
    notify_circuit_open_max_s: float = 300.0
    # Live notification channels one owner may have.
    notify_max_channels_per_owner: int = 20
    # TestChannel deliveries one owner may queue a minute.
    notify_max_tests_per_minute: int = 5
    # Not a setting: what loading noticed (unknown COORDD_* variables); logged at start.
    _warnings: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    def db_path(self) -> Path:
        return Path(self.data_dir) / "coordd.db"

    @property
    def backend(self) -> str:
        return "postgresql" if self.database_url else "sqlite"


_FIELDS = {f.name: f for f in fields(Settings) if not f.name.startswith("_")}
ENV_PREFIX = "COORDD_"
# The test suite's variables (COORDD_TEST_PG_URL, ...): never the daemon's.
TEST_ENV_PREFIX = "COORDD_TEST_"
# Set by other programs: coordctl before it moved to COORDCTL_*, the job runner for its child.
FOREIGN_ENV = frozenset({"COORDD_CONFIG", "COORDD_NODE_KEY", "COORDD_JOB", "COORDD_JOB_ATTEMPT"})
# How close an unknown name must be to a setting to be taken for its misspelling.
TYPO_CUTOFF = 0.85


def _from_env(env: dict[str, str], values: dict[str, Any], warnings: list[str]) -> None:
    for key, value in sorted(env.items()):
        if not key.startswith(ENV_PREFIX) or key.startswith(TEST_ENV_PREFIX) or key in FOREIGN_ENV:
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in _FIELDS:
            values[name] = _coerce(name, value)
            continue
        close = difflib.get_close_matches(name, list(_FIELDS), n=1, cutoff=TYPO_CUTOFF)
        if close:
            raise ConfigError(
                f"environment {key}: unknown setting; did you mean {ENV_PREFIX}{close[0].upper()}?"
            )
        warnings.append(f"environment {key}: not a coordd setting; ignored")


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected a boolean, got {value!r}")
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(f"expected an integer, got {value!r}")
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "dict":
            if isinstance(value, str):
                value = json.loads(value) if value.strip() else {}
            if not isinstance(value, dict):
                raise ValueError(f"expected a table, got {value!r}")
            return value
        if kind == "str":
            if not isinstance(value, str | int | float):
                raise ValueError(f"expected a string, got {value!r}")
            return str(value)
    except ValueError as exc:  # json.JSONDecodeError included
        raise ConfigError(f"config {name}: {exc}") from None
    raise ConfigError(f"config {name}: unsupported type {kind}")


def _validate(s: Settings) -> None:
    host, sep, port = s.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"config listen: expected host:port, got {s.listen!r}")
    if s.http_listen:
        host, sep, port = s.http_listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"config http_listen: expected host:port, got {s.http_listen!r}")
    if s.http_refresh_s <= 0:
        raise ConfigError("config http_refresh_s: must be positive")
    if s.http_max_streams_per_peer < 0:
        raise ConfigError("config http_max_streams_per_peer: must not be negative (0 = no limit)")
    if s.database_url and not s.database_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("config database_url: only postgresql:// URLs are supported (empty = SQLite)")
    if s.redis_url and not s.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("config redis_url: expected redis://host:port/db")
    if s.log_format not in ("auto", "json", "console"):
        raise ConfigError("config log_format: expected auto, json or console")
    if s.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("config log_level: expected debug, info, warning or error")
    if s.gc_threshold < 0:
        raise ConfigError("config gc_threshold: must not be negative (0 keeps Python's default)")
    if not 0 <= s.metrics_port <= 65535:
        raise ConfigError("config metrics_port: expected 0..65535")
    for name in ("db_threads", "db_pool_size", "access_token_ttl_s", "max_message_bytes", "max_string_chars"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"config {name}: must be positive")
    if s.argon2_parallelism < 1 or s.argon2_time_cost < 1:
        raise ConfigError("config argon2_parallelism and argon2_time_cost: must be at least 1")
    if s.argon2_memory_kib < 8 * s.argon2_parallelism:
        raise ConfigError("config argon2_memory_kib: must be at least 8 x argon2_parallelism")
    if not 0 <= s.job_fee_bps <= 10_000:
        raise ConfigError("config job_fee_bps: expected 0..10000 basis points")
    if (
        s.job_default_max_attempts < 1
        or s.job_backoff_base_s <= 0
        or s.job_backoff_max_s < s.job_backoff_base_s
    ):
        raise ConfigError("config job_*: attempts >= 1 and 0 < job_backoff_base_s <= job_backoff_max_s")
    if s.job_max_snoozes < 0:
        raise ConfigError("config job_max_snoozes: expected >= 0")
    if s.competition_offer_hold_s < 60 or s.competition_max_entry_bytes <= 0 or s.competition_max_errors < 1:
        raise ConfigError("config competition_*: offer hold >= 60 s, entry size and max errors positive")
    _validate_verifiers(s)
    _validate_siwe_throttle(s)
    _validate_notify(s)
    if s.jwt_secret and len(s.jwt_secret) < 32:
        raise ConfigError("config jwt_secret: must be at least 32 characters")


def _validate_siwe_throttle(s: Settings) -> None:
    for rate, burst in (
        ("siwe_nonces_per_peer_per_min", "siwe_nonce_burst_per_peer"),
        ("siwe_sign_ins_per_peer_per_min", "siwe_sign_in_burst_per_peer"),
        ("siwe_sign_ins_per_address_per_min", "siwe_sign_in_burst_per_address"),
    ):
        if getattr(s, rate) < 0 or (getattr(s, rate) > 0 and getattr(s, burst) < 1):
            raise ConfigError(f"config {rate} / {burst}: rate >= 0 (0 = off) and burst >= 1")
    if s.siwe_max_nonces < 0 or s.siwe_nonce_ttl_s <= 0:
        raise ConfigError("config siwe_max_nonces >= 0 (0 = no cap) and siwe_nonce_ttl_s > 0")


VERIFIER_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _validate_verifiers(s: Settings) -> None:
    for name, spec in s.ceremony_verifiers.items():
        where = f"config ceremony_verifiers.{name}"
        if not VERIFIER_NAME_RE.match(str(name)) or name == "none":
            raise ConfigError(f"{where}: a name is 1-63 of a-z, 0-9 and '-' (and not 'none')")
        command = spec.get("command") if isinstance(spec, dict) else None
        if not isinstance(command, str) or not command.strip():
            raise ConfigError(f"{where}: expected a table with a non-empty command")
        unknown = set(spec) - {"command", "timeout_s"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: command, timeout_s)")
        timeout = spec.get("timeout_s", 600)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 86400:
            raise ConfigError(f"{where}: timeout_s must be within 0..86400 seconds")
        try:
            shlex.split(spec["command"])
        except ValueError as exc:
            raise ConfigError(f"{where}: the command cannot be parsed: {exc}") from None
    if not 0 < s.snarkjs_verify_timeout_s <= 86400:
        raise ConfigError("config snarkjs_verify_timeout_s: expected 0..86400 seconds")
    if s.ceremony_default_verifier == "none":
        raise ConfigError("config ceremony_default_verifier: 'none' must be chosen per ceremony, explicitly")


def _validate_notify(s: Settings) -> None:
    for name in (
        "notify_max_in_flight",
        "notify_per_channel_in_flight",
        "notify_per_owner_in_flight",
        "notify_circuit_failures",
        "notify_max_channels_per_owner",
        "notify_max_tests_per_minute",
    ):
        if getattr(s, name) < 1:
            raise ConfigError(f"config {name}: must be at least 1")
    if not 0 < s.notify_circuit_open_s <= s.notify_circuit_open_max_s:
        raise ConfigError(
            "config notify_circuit_open_s: must be positive and at most notify_circuit_open_max_s"
        )


def load_settings(
    config_file: str | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Layers the sources; `overrides` (from CLI flags or tests) win over everything."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {config_file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from None
        for key, value in data.items():
            if key not in _FIELDS:
                raise ConfigError(f"config file {config_file}: unknown setting {key!r}")
            values[key] = _coerce(key, value)
    warnings: list[str] = []
    _from_env(env, values, warnings)
    for key, value in overrides.items():
        if value is not None:
            if key not in _FIELDS:
                raise ConfigError(f"unknown setting {key!r}")
            values[key] = _coerce(key, value)
    settings = dataclasses.replace(Settings(), **values, _warnings=warnings)
    _validate(settings)
    return settings
