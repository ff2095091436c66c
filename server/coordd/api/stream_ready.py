"""Server streams that must be live before the client hears they are.

The call pipeline sends a server stream's headers before the servicer runs: the client's
`initial_metadata()` returns once they arrive. A watch that reads its starting cursor in the
servicer could then miss a change the client made right after the headers (WatchNodes:
the client's first beat, committed before the watch read where to start). A servicer marked
`ready_first` yields STREAM_READY first, once it is live; the pipeline (api/interceptors.py
`Pipeline.stream`) runs it that far before it sends the headers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


class _Ready:
    __slots__ = ()

    def __repr__(self) -> str:
        return "STREAM_READY"


STREAM_READY = _Ready()


def ready_first(fn: F) -> F:
    """Marks a server-streaming servicer method whose first yield is STREAM_READY."""
    fn.coordd_ready_first = True  # type: ignore[attr-defined]
    return fn


def is_ready_first(fn: object) -> bool:
    return bool(getattr(fn, "coordd_ready_first", False))
