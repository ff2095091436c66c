"""The organizer's CSV export of every registration."""

from __future__ import annotations

from collections.abc import Iterator

from coordd.core.principal import Principal
from coordd.domain.competition.common import group_name, owned, registration_name
from coordd.store.competition import queries

EXPORT_COLUMNS = (
    "registration",
    "user",
    "email",
    "display_name",
    "state",
    "position",
    "fee_held",
    "create_time",
    "confirm_time",
    "group",
    "payer",
    "check_in_time",
)


def _positions(waiting: list[queries.WaitingRef]) -> dict[str, int]:
    """1-based waitlist positions: one per entry (a group's members share theirs)."""
    out: dict[str, int] = {}
    place, last = 0, None
    for ref in waiting:
        if ref.waitlist_seq != last:
            place, last = place + 1, ref.waitlist_seq
        out[ref.registration_id] = place
    return out


def export_batches(who: Principal, comp_id: str, batch: int = 500) -> Iterator[list[list[str]]]:
    """CSV rows of every registration, in batches (each batch is one short read)."""
    owned(who, comp_id)
    positions = _positions(queries.waitlist_order(comp_id))
    after = ""
    while True:
        rows = queries.registrations_with_users(comp_id, after, batch)
        if not rows:
            return
        yield [
            [
                registration_name(comp_id, r.id),
                f"users/{r.user_id}",
                r.user.email,
                r.user.display_name,
                r.state,
                str(positions.get(r.id, 0)),
                str(r.fee_held),
                r.create_time.isoformat(),
                r.confirm_time.isoformat() if r.confirm_time else "",
                group_name(comp_id, r.group_id) if r.group_id else "",
                f"users/{r.payer_id}" if r.payer_id else "",
                r.checkin_time.isoformat() if r.checkin_time else "",
            ]
            for r in rows
        ]
        after = rows[-1].id
