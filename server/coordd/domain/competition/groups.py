"""Group registration: N users register as one, all seats or none.

The caller (the group's leader, e.g. a parent or a team captain) names the members and
pays every member's entry fee. In one transaction either every member gets a seat (only
when nobody waits and `capacity - confirmed - offered >= N`), or the group joins the tail
of the waitlist as ONE entry: its members share one waitlist number, and the waitlist
serves entries in strict order (waitlist.promote): a group at the head that needs more
seats than are free waits, and the free seats wait with it. A member may cancel alone;
the rest of the group keeps its seats, or its place.
"""

from __future__ import annotations

from dataclasses import dataclass

from coordd.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from coordd.core.ids import new_id
from coordd.core.principal import Principal
from coordd.domain import ledger
from coordd.domain.competition.common import (
    emit_registration,
    not_found,
    payer_of,
    precondition,
    registration_name,
    visible,
)
from coordd.domain.competition.notifications import notify_many
from coordd.domain.competition.registration import closed_error, in_window
from coordd.domain.competition.settings import settings_of
from coordd.domain.competition.states import ACTIVE, CONFIRMATION, CONFIRMED, WAITLISTED
from coordd.domain.competition.views import RegistrationView
from coordd.domain.competition.waitlist import late_reminder, position
from coordd.runtime import Runtime
from coordd.store.competition import queries
from coordd.store.competition.models import Registration


@dataclass(frozen=True)
class GroupView:
    group_id: str
    competition_id: str
    # In the order the members were given.
    registrations: list[RegistrationView]
    created: bool


def check_members(rt: Runtime, user_ids: list[str], field: str = "members") -> None:
    """2..max_group_size distinct, existing users."""
    limit = settings_of(rt).max_group_size
    if not 2 <= len(user_ids) <= limit:
        raise InvalidArgument(
            f"{field}: a group has between 2 and {limit} members",
            violations=[FieldViolation(field, f"between 2 and {limit} members")],
        )
    seen: set[str] = set()
    for index, user_id in enumerate(user_ids):
        if user_id in seen:
            raise InvalidArgument(
                f"{field}[{index}]: users/{user_id} is named twice",
                violations=[FieldViolation(f"{field}[{index}]", "named twice")],
            )
        seen.add(user_id)
    missing = [u for u in user_ids if u not in queries.existing_users(user_ids)]
    if missing:
        raise NotFound(f"users/{missing[0]} not found", metadata={"resource": f"users/{missing[0]}"})


def register_group(
    rt: Runtime, who: Principal, comp_id: str, user_ids: list[str], group_id: str = ""
) -> GroupView:
    """Registers `user_ids` as one group paid by `who`. The same group registered again by
    the same leader is returned as it is (`created: false`); a member registered otherwise
    already: FAILED_PRECONDITION `ALREADY_REGISTERED`, and nobody is registered."""
    check_members(rt, user_ids)
    try:
        return _register_group(rt, who, comp_id, user_ids, group_id or new_id())
    except queries.IntegrityError:
        # A member's own registration committed between our read and our insert.
        raise FailedPrecondition(
            "a member of the group registered meanwhile; nobody was registered",
            reason="ALREADY_REGISTERED",
        ) from None


def _register_group(rt: Runtime, who: Principal, comp_id: str, user_ids: list[str], gid: str) -> GroupView:
    with rt.store.write() as tx:
        now = tx.now
        existing = queries.registrations_of_users(comp_id, user_ids)
        active = [existing[u] for u in user_ids if u in existing and existing[u].state in ACTIVE]
        if active:
            same = active[0].group_id
            if (
                same
                and len(active) == len(user_ids)
                and all(r.group_id == same and payer_of(r) == who.user_id for r in active)
                and len(queries.group_members(comp_id, same)) == len(user_ids)
            ):
                views = [RegistrationView(r, position(r)) for r in active]
                return GroupView(same, comp_id, views, created=False)
            first = active[0]
            raise FailedPrecondition(
                f"users/{first.user_id} is registered for this competition already; nobody was registered",
                reason="ALREADY_REGISTERED",
                metadata={"user": f"users/{first.user_id}"},
            )
        # The rows first, the competition lock after: the order the single registration
        # path takes too, so the two never wait for each other in a cycle.
        regs: list[Registration] = []
        for user_id in user_ids:
            reg = existing.get(user_id) or Registration(competition=comp_id, user=user_id, create_time=now)
            reg.state, reg.group_id, reg.payer = WAITLISTED, gid, who.user_id
            reg.waitlist_seq = reg.offer_expire_time = reg.confirm_time = reg.checkin_time = None
            reg.fee_held, reg.update_time = 0, now
            if user_id in existing:
                queries.save_registration(reg)
            else:
                queries.insert_registration_row(reg)
            regs.append(reg)
        comp = queries.lock_competition_after_insert(rt.store, comp_id)
        if comp is None or not visible(who, comp):
            raise not_found(comp_id)
        if not in_window(comp, now):
            raise closed_error(comp, now)
        size = len(regs)
        if size > comp.capacity:
            raise precondition(
                f"the group has {size} members, the competition {comp.capacity} seats",
                "GROUP_LARGER_THAN_CAPACITY",
                comp,
            )
        seated = comp.waitlisted == 0 and comp.capacity - comp.confirmed - comp.offered >= size
        if seated:
            comp.confirmed += size
            for reg in regs:
                reg.state, reg.confirm_time = CONFIRMED, now
                if comp.entry_fee > 0:
                    reference = registration_name(comp_id, reg.id)
                    ledger.hold(tx, who.user_id, comp.entry_fee, reference, "competition.entry_fee")
                    reg.fee_held = comp.entry_fee
        else:
            comp.waitlist_seq += 1
            comp.waitlisted += size
            comp.waitlist_extra += size - 1
            for reg in regs:
                reg.waitlist_seq = comp.waitlist_seq
        for reg in regs:
            queries.save_registration(reg)
            emit_registration(tx, reg, "created")
        comp.update_time = now
        queries.save_competition(comp)
        if seated:
            notify_many(tx, comp, [(r.id, r.user_id) for r in regs], CONFIRMATION, {"group": gid})
            for reg in regs:
                late_reminder(tx, comp, reg)
        place = 0 if seated else comp.waitlisted - comp.waitlist_extra
        return GroupView(gid, comp_id, [RegistrationView(r, place) for r in regs], created=True)
