"""The domain event every layer passes around: written with a change, published after commit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Event:
    """A committed domain event; `id` orders events across replicas."""

    id: int
    type: str
    subject: str
    data: dict[str, Any]
    create_time: datetime

    def to_wire(self, origin: str) -> str:
        return json.dumps(
            {
                "id": self.id,
                "type": self.type,
                "subject": self.subject,
                "data": self.data,
                "create_time": self.create_time.isoformat(),
                "origin": origin,
            },
            separators=(",", ":"),
        )

    @staticmethod
    def from_wire(text: str | bytes) -> tuple[Event, str]:
        raw = json.loads(text)
        return (
            Event(
                id=int(raw["id"]),
                type=raw["type"],
                subject=raw["subject"],
                data=raw["data"],
                create_time=datetime.fromisoformat(raw["create_time"]),
            ),
            raw.get("origin", ""),
        )
