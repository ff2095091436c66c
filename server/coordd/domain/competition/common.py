"""What every competition module uses: resource names, the errors they raise, who may see
a competition, and the events a change emits."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from coordd.core.errors import FailedPrecondition, NotFound
from coordd.core.principal import Principal, require_owner_or_admin
from coordd.domain.competition.states import DRAFT
from coordd.runtime import Runtime
from coordd.store.competition import queries
from coordd.store.competition.models import Competition, Registration
from coordd.store.db import Tx


def name(comp_id: str) -> str:
    return f"competitions/{comp_id}"


def registration_name(comp_id: str, reg_id: str) -> str:
    return f"{name(comp_id)}/registrations/{reg_id}"


def group_name(comp_id: str, group_id: str) -> str:
    return f"{name(comp_id)}/groups/{group_id}"


# Called by name: the layering check takes any `.join()` call for a query-builder join.
_join = str.join


def listing(items: Iterable[str]) -> str:
    """ "a, b, c", for messages."""
    return _join(", ", items)


def not_found(comp_id: str) -> NotFound:
    return NotFound(f"{name(comp_id)} not found", metadata={"resource": name(comp_id)})


def reg_not_found(comp_id: str, reg_id: str) -> NotFound:
    resource = registration_name(comp_id, reg_id)
    return NotFound(f"{resource} not found", metadata={"resource": resource})


def precondition(message: str, reason: str, comp: Competition | None = None) -> FailedPrecondition:
    meta = {"state": comp.state, "competition": name(comp.id)} if comp is not None else {}
    return FailedPrecondition(message, reason=reason, metadata=meta)


def visible(who: Principal, comp: Competition) -> bool:
    """Unpublished drafts are private to their owner (and admins); the rest is public.
    (queries.competitions_page applies the same rule as a condition.)"""
    return (
        comp.state != DRAFT or comp.publish_time is not None or comp.owner_id == who.user_id or who.is_admin
    )


def get_visible(who: Principal, comp_id: str) -> Competition:
    comp = queries.find_competition(comp_id)
    if comp is None or not visible(who, comp):
        raise not_found(comp_id)
    return comp


def owned(who: Principal, comp_id: str) -> Competition:
    comp = get_visible(who, comp_id)
    require_owner_or_admin(who, comp.owner_id, "competition")
    return comp


def lock(rt: Runtime, comp_id: str) -> Competition | None:
    """The competition row, for change (locked until commit on PostgreSQL)."""
    return queries.lock_competition(rt.store, comp_id)


def lock_owned(rt: Runtime, who: Principal, comp_id: str) -> Competition:
    """Locks a competition the caller may see and change (its owner, or an admin)."""
    comp = lock(rt, comp_id)
    if comp is None or not visible(who, comp):
        raise not_found(comp_id)
    require_owner_or_admin(who, comp.owner_id, "competition")
    return comp


def emit_competition(tx: Tx, comp: Competition, type_: str, data: dict[str, Any] | None = None) -> None:
    tx.emit(f"competition.{type_}", name(comp.id), {"state": comp.state, **(data or {})})


def registration_event(reg: Registration, type_: str) -> tuple[str, str, dict[str, Any]]:
    """(type, subject, data) of the event a registration change emits."""
    comp_name = name(reg.competition_id)
    return (
        f"competition.registration.{type_}",
        f"{comp_name}/registrations/{reg.id}",
        {"state": reg.state, "user": f"users/{reg.user_id}", "watch_keys": [comp_name]},
    )


def emit_registration(tx: Tx, reg: Registration, type_: str) -> None:
    tx.emit(*registration_event(reg, type_))


def payer_of(reg: Registration) -> str:
    """Whose balance holds the registration's fee: its payer (a group's leader, the holder
    before a transfer), else the registrant."""
    return reg.payer_id or reg.user_id


def own_registration(
    rt: Runtime, who: Principal, comp_id: str, reg_id: str
) -> tuple[Competition, Registration]:
    """Locks the competition, then reads the caller's registration: the registrant's, or
    the one whose fee the caller pays (a group leader's members); admins: anyone's."""
    comp = lock(rt, comp_id)
    reg = queries.registration_in(comp_id, reg_id)
    if (
        comp is None
        or reg is None
        or (reg.user_id != who.user_id and reg.payer_id != who.user_id and not who.is_admin)
    ):
        raise reg_not_found(comp_id, reg_id)
    return comp, reg
