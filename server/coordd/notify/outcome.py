"""The result of one delivery attempt, whatever the channel kind."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    ok: bool
    # HTTP status (SMTP reply code for e-mail); 0 when nothing answered.
    status_code: int
    error: str
