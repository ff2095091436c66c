"""Templates and the filters they share. Autoescaped everywhere; times are written as
`<time datetime=ISO>` in UTC and the page's script shows them in the viewer's locale (without
JavaScript the UTC text stays, which reads fine)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def iso(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def when(value: datetime | None) -> str:
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(value: float | timedelta | None) -> str:
    """A length of time for people: "2 h 5 min", "3 min 20 s", "45 s"."""
    if value is None:
        return "unknown"
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def b64(value: bytes | memoryview | None) -> str:
    return base64.b64encode(bytes(value or b"")).decode()


def ascii_text(value: bytes | memoryview | None) -> str:
    return bytes(value or b"").decode("ascii", "replace")


def short(value: str, keep: int = 16) -> str:
    return value if len(value) <= keep else f"{value[:keep]}…"


def make_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(iso=iso, when=when, duration=duration, short=short, b64=b64, ascii=ascii_text)
    return env


class Renderer:
    def __init__(self) -> None:
        self.env = make_environment()

    def render(self, name: str, **context: Any) -> str:
        return self.env.get_template(name).render(**context)
