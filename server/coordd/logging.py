"""structlog setup: JSON lines in production, console rendering in a terminal.

Request id, method, peer and caller are set per call by the RPC wrapper (api/interceptors.py)
in one context variable (`call_fields`, a dict), so every line logged while serving a call
carries them, also from DB worker threads (which run in a copy of the call's context). Setting
one variable per call costs less than structlog's bind/clear_contextvars, which copy the whole
context; `structlog.contextvars` bindings are merged too.

No secret leaves its place through a log line:
- tracebacks are rendered without frame locals (a frame's locals hold passwords, hashes,
  fresh API-key and webhook secrets while a call runs), in both renderers;
- `redact` runs on every line after the traceback is rendered and before the renderer: a
  value under a credential-looking key (password, secret, token, authorization, api_key, key
  material...) is replaced at any nesting depth, also inside (name, value) header pairs, and
  bearer credentials, API keys, JWTs, password hashes and `name=value` credentials inside any
  string (exception messages, reprs) are masked;
- protobuf messages are never rendered whole: a request logged by mistake shows its type only.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from google.protobuf.message import Message

REDACTED = "[redacted]"

# The fields of the call being served (request_id, method, peer, caller, reason, error).
call_fields: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "coordd_call_fields", default=None
)


def merge_call_fields(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: adds the current call's fields (explicit keys win)."""
    fields = call_fields.get()
    if fields:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
    return event_dict


# Names (lower case, '-' as '_') whose values are credentials or key material.
_SENSITIVE_NAME = re.compile(
    r"pass(?:word|wd|phrase)|secret|token|authori[sz]ation|api_?key|private_?key|signing_key|"
    r"sealing_key|credential|cookie|session|seed|salt|key_material|password_hash|^key$"
)
_NAME = (
    r"[A-Za-z0-9_-]*(?:pass(?:word|wd)|secret|token|authori[sz]ation|api[_-]?key|credential)"
    r"[A-Za-z0-9_-]*"
)
_VALUE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # `Bearer <credential>` wherever it appears (a header echoed into a message).
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + REDACTED),
    # API-key and node-key secrets (crypto.tokens.API_KEY_PREFIX).
    (re.compile(r"\bck_[A-Za-z0-9_-]{16,}"), "ck_" + REDACTED),
    # JWTs (compact JWS: three base64url parts, the header always starts with eyJ).
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), REDACTED),
    # Argon2 / other PHC-format password hashes.
    (re.compile(r"\$argon2(?:id|i|d)\$[A-Za-z0-9$=,+/.-]+"), REDACTED),
    # Passwords in URLs (postgresql://user:pass@host).
    (re.compile(r"(://[^:/@\s]+:)[^@/\s]+@"), r"\1" + REDACTED + "@"),
    # name='value', "name": "value", name: "value" (reprs, protobuf text format, JSON).
    (
        re.compile(rf"(?i)\b({_NAME})(['\"]?\s*[=:]\s*)(b?)(['\"])(.*?)(?<!\\)\4"),
        r"\1\2\3\4" + REDACTED + r"\4",
    ),
    # name=value unquoted (query strings, DSNs); `name = value` (source lines) is left alone.
    (re.compile(rf"(?i)\b({_NAME})([=:])(?![\s'\"\[=])([^\s'\",;&)}}\]]+)"), r"\1\2" + REDACTED),
)
# Cheap pre-check: strings without any of these fragments skip the substitutions.
_MAYBE_SECRET = re.compile(
    r"(?i)bearer|ck_|eyJ|\$argon2|://[^@\s]*@|pass|secret|token|authori|api.?key|credential"
)
_name_cache: dict[str, bool] = {}


class _Enabled:
    """Which levels `configure` let through, for a line logged on every call: its caller skips
    building the line's fields when they would be dropped (a call through structlog's lazy
    proxy to a no-op still cost ~3 us an RPC)."""

    info = True  # before configure(): structlog's defaults print every level


ENABLED = _Enabled()


def is_sensitive_name(name: str) -> bool:
    found = _name_cache.get(name)
    if found is None:
        found = bool(_SENSITIVE_NAME.search(name.lower().replace("-", "_")))
        if len(_name_cache) < 4096:
            _name_cache[name] = found
    return found


def scrub(text: str) -> str:
    """`text` with credential-looking substrings masked."""
    if not _MAYBE_SECRET.search(text):
        return text
    for pattern, replacement in _VALUE_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _masked(value: Any) -> Any:
    return value if value in (None, "", b"", 0, False) else REDACTED


def _clean(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth > 32:
        return "[too deep]"
    if isinstance(value, Message):
        return f"<{value.DESCRIPTOR.full_name}>"  # never a whole request or reply
    if isinstance(value, Mapping):
        return {
            k: _masked(v) if isinstance(k, str) and is_sensitive_name(k) else _clean(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        if (
            isinstance(value, tuple)
            and len(value) == 2
            and isinstance(value[0], str)
            and is_sensitive_name(value[0])
        ):
            return (value[0], _masked(value[1]))  # a (header, value) pair
        cleaned = [_clean(v, depth + 1) for v in value]
        return cleaned if isinstance(value, list) else tuple(cleaned)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    # Anything else would be rendered through repr(): render it here, masked.
    return scrub(repr(value))


def redact(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: masks credentials anywhere in the event (see the module doc)."""
    for key, value in event_dict.items():
        if is_sensitive_name(key):
            event_dict[key] = _masked(value)
        elif isinstance(value, str):
            if _MAYBE_SECRET.search(value):
                event_dict[key] = scrub(value)
        elif not (value is None or isinstance(value, bool | int | float)):
            event_dict[key] = _clean(value)
    return event_dict


# Structured tracebacks for JSON lines; never the frames' local variables.
dict_tracebacks = structlog.processors.ExceptionRenderer(
    structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
)


def processors(use_json: bool) -> list[structlog.typing.Processor]:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        # plain_traceback never shows locals (rich's default formatter does); exceptions
        # reach the renderer already formatted (and redacted) by format_exc_info anyway.
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    return [
        merge_call_fields,
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        dict_tracebacks if use_json else structlog.processors.format_exc_info,
        redact,
        renderer,
    ]


def configure(log_format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """`stream` (default stderr) is where the lines go; tests capture them there."""
    out = stream or sys.stderr
    threshold = logging.getLevelName(level.upper())
    ENABLED.info = threshold <= logging.INFO
    use_json = log_format == "json" or (log_format == "auto" and not out.isatty())
    structlog.configure(
        processors=processors(use_json),
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
