"""Statements for verification leases and the restart clock.

A contribution being verified holds a lease in `verify_due_time`, renewed by the process
running its verifier; a lease that expired belongs to a process that died (or stopped), and
the contribution is claimed again by a conditional update, so one process wins.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from coordd.store.ceremony.models import (
    CONTRIBUTING,
    READY,
    VERIFYING,
    Ceremony,
    CeremonyClock,
    Contribution,
    Participant,
)

CLOCK_ID = "ceremony-deadlines"


def stale_verifications(now: datetime, batch: int) -> list[str]:
    """Contributions still VERIFYING whose lease has expired (indexed verify_due_time)."""
    return [
        cid
        for (cid,) in Contribution.select(Contribution.id)
        .where((Contribution.verify_due_time <= now) & (Contribution.state == VERIFYING))
        .order_by(Contribution.verify_due_time)
        .limit(batch)
        .tuples()
    ]


def take_lease(contribution_id: str, now: datetime, until: datetime, extra: dict[str, Any]) -> bool:
    """Claims an expired lease; False when another process claimed it first."""
    return bool(
        Contribution.update(verify_due_time=until, extra=extra)
        .where(
            (Contribution.id == contribution_id)
            & (Contribution.state == VERIFYING)
            & (Contribution.verify_due_time <= now)
        )
        .execute()
    )


def renew_lease(contribution_id: str, until: datetime) -> bool:
    """Extends the lease of a contribution still VERIFYING; False once it has a verdict."""
    return bool(
        Contribution.update(verify_due_time=until)
        .where((Contribution.id == contribution_id) & (Contribution.state == VERIFYING))
        .execute()
    )


def release_lease(contribution_id: str, now: datetime, extra: dict[str, Any]) -> None:
    """Lets any process claim the contribution at once (this one is shutting down)."""
    Contribution.update(verify_due_time=now, extra=extra).where(
        (Contribution.id == contribution_id) & (Contribution.state == VERIFYING)
    ).execute()


def touch_clock(now_us: int) -> int | None:
    """Records that deadlines run now (wall clock, µs); returns the previous time, if any."""
    row = CeremonyClock.get_or_none(CeremonyClock.id == CLOCK_ID)
    if row is None:
        CeremonyClock.create(id=CLOCK_ID, alive_time=now_us)
        return None
    previous = CeremonyClock.alive_time.db_value(row.alive_time)
    CeremonyClock.update(alive_time=now_us).where(CeremonyClock.id == CLOCK_ID).execute()
    return previous


def extend_turns(ceremony_ids: list[str], by_us: int) -> int:
    """Moves the deadlines of contributors holding a turn (READY, CONTRIBUTING) by `by_us`."""
    if not ceremony_ids:
        return 0
    return (
        Participant.update(due_time=Participant.due_time + by_us)
        .where(
            Participant.ceremony.in_(ceremony_ids)
            & Participant.status.in_((READY, CONTRIBUTING))
            & Participant.due_time.is_null(False)
        )
        .execute()
    )


def contribution_with_hash(circuit_id: str, participant_id: str | None, hash_hex: str) -> Contribution | None:
    """The latest contribution to the circuit with this hash by the participant (None: the
    coordinator's genesis, which has no participant)."""
    who = (
        Contribution.participant.is_null()
        if participant_id is None
        else (Contribution.participant == participant_id)
    )
    return (
        Contribution.select()
        .where((Contribution.circuit == circuit_id) & (Contribution.hash == hash_hex) & who)
        .order_by(Contribution.upload_time.desc(), Contribution.id.desc())
        .first()
    )


def last_verified_contribution(participant_id: str) -> Contribution | None:
    """The participant's most recent contribution with a verdict."""
    return (
        Contribution.select()
        .where((Contribution.participant == participant_id) & (Contribution.state != VERIFYING))
        .order_by(Contribution.verify_time.desc(), Contribution.id.desc())
        .first()
    )


def prefix_taken(prefix: str) -> bool:
    return Ceremony.select().where(Ceremony.prefix == prefix).exists()
