"""The idempotency record's `applied` mark, written inside the call's own transaction.

Between the moment a keyed call's changes commit and the moment its response is stored,
a crash used to leave the key `running`; after `idempotency_stale_s` a retry took it over and
ran the call again. Now the first write transaction the call commits also flips the record to
`applied`, atomically with those changes: a stale `running` key means nothing was committed
(re-running is safe), an `applied` key without a response means the effect happened and
must not happen twice.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from coordd.store.db import Tx
from coordd.store.models import IdempotencyRecord

RUNNING = "running"
APPLIED = "applied"
DONE = "done"


@dataclass
class PendingKey:
    """The key of the call running in this context (shared by the threads it hands work to)."""

    scope: str
    key: str
    applied: bool = False


PENDING: ContextVar[PendingKey | None] = ContextVar("coordd_idempotency_pending", default=None)


def mark_applied(tx: Tx) -> None:
    """Store.before_commit hook: the first committing write of a keyed call marks its record."""
    pending = PENDING.get()
    if pending is None or pending.applied:
        return
    IdempotencyRecord.update(state=APPLIED).where(
        (IdempotencyRecord.scope == pending.scope)
        & (IdempotencyRecord.key == pending.key)
        & (IdempotencyRecord.state == RUNNING)
    ).execute()
    pending.applied = True
