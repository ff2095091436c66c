"""Public project status and competition pages."""

from __future__ import annotations

from typing import Any


def add_routes(ws: Any) -> None:
    return None
