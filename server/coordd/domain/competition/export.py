"""The organizer's CSV export of every registration."""

from __future__ import annotations

from collections.abc import Iterator

from coordd.core.principal import Principal
from coordd.domain.competition.common import owned, registration_name
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
)


def export_batches(who: Principal, comp_id: str, batch: int = 500) -> Iterator[list[list[str]]]:
    """CSV rows of every registration, in batches (each batch is one short read)."""
    owned(who, comp_id)
    positions = {reg_id: index for index, reg_id in enumerate(queries.waitlist_order(comp_id), start=1)}
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
            ]
            for r in rows
        ]
        after = rows[-1].id
