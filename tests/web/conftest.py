"""An in-process coordd with its web pages on, on both backends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import Clock, ServerHandle
from tests.web.helpers import Browser


@pytest.fixture
def web_server(settings_factory, clock: Clock) -> Iterator[ServerHandle]:  # type: ignore[no-untyped-def]
    # The scheduler off: tests run its ceremony work themselves (Ceremonies.tick), nothing races them.
    settings = settings_factory(http_listen="127.0.0.1:0", http_refresh_s=30.0, scheduler_enabled=False)
    handle = ServerHandle(settings, clock)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def browser(web_server: ServerHandle) -> Browser:
    return Browser(web_server.app.http_port)
