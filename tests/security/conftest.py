"""Fixtures of the security tests: the daemon's log lines, captured as production writes them."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog


class LogCapture:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def events(self, event: str, wait_for: int = 0) -> list[dict[str, Any]]:
        """Lines of `event`; with `wait_for`, first waits (bounded) until that many are there:
        a call's `rpc` line is written just after its status went out to the client."""
        deadline = time.monotonic() + 10
        while True:
            found = [line for line in self.lines() if line.get("event") == event]
            if len(found) >= wait_for or time.monotonic() > deadline:
                return found
            time.sleep(0.01)


def _use(log_format: str, level: str, stream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configures coordd's logging and gives every loaded coordd module a fresh module logger:
    loggers cache their configuration on first use (cache_logger_on_first_use), so ones used
    by earlier tests would still write with the session's quiet configuration."""
    from coordd.logging import configure

    configure(log_format, level, stream=stream)
    for name, module in list(sys.modules.items()):
        old = getattr(module, "log", None) if name.startswith("coordd") else None
        if isinstance(old, structlog._config.BoundLoggerLazyProxy):
            fresh = structlog.get_logger(*old._logger_factory_args, **(old._initial_values or {}))
            monkeypatch.setattr(module, "log", fresh)


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[LogCapture]:
    """Every line the daemon logs (debug and up) as JSON, the production format."""
    capture = LogCapture()
    _use("json", "debug", capture.stream, monkeypatch)
    try:
        yield capture
    finally:
        from coordd.logging import configure

        configure("console", "warning")


@pytest.fixture
def console_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[LogCapture]:
    capture = LogCapture()
    _use("console", "debug", capture.stream, monkeypatch)
    try:
        yield capture
    finally:
        from coordd.logging import configure

        configure("console", "warning")
