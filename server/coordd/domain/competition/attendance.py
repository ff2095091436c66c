"""At the event: signed tickets, check-in and attendance, and transferring a seat.

A ticket is a canonical JSON document about one CONFIRMED registration, signed with the
coordinator key (Ed25519 over `TICKET_CONTEXT + payload`): the participant shows it, the
organizer's scanner checks it offline (`coordd_client.tickets.verify_ticket`) and checks
the participant in with it. Check-in is by the organizer (owner or admin), from
`checkin_open_s` (24 h) before the start until the end; it is counted once
(`Competition.checked_in`). A transfer moves a CONFIRMED registration, seat and all, to
another user before the start: the fee stays held from whoever paid it, the old holder's
ticket no longer checks in.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from datetime import timedelta

from coordd.core.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from coordd.core.principal import Principal
from coordd.domain.competition.common import (
    emit_registration,
    lock_owned,
    name,
    own_registration,
    payer_of,
    precondition,
    reg_not_found,
    registration_name,
)
from coordd.domain.competition.settings import settings_of
from coordd.domain.competition.states import ACTIVE, CONFIRMED, OPEN, REGISTRATION_CLOSED, RUNNING, SEATING
from coordd.domain.competition.views import RegistrationView
from coordd.runtime import Runtime
from coordd.store.competition import queries

TICKET_CONTEXT = b"coordd.competition.ticket.v1\n"


@dataclass(frozen=True)
class Ticket:
    payload: bytes
    signature: bytes
    key_id: str
    public_key: bytes


@dataclass(frozen=True)
class CheckInResult:
    registration: RegistrationView
    already_checked_in: bool


def get_ticket(rt: Runtime, who: Principal, comp_id: str, reg_id: str) -> Ticket:
    """The signed ticket of a CONFIRMED registration (its registrant, payer, or an admin)."""
    comp = queries.find_competition(comp_id)
    reg = queries.registration_in(comp_id, reg_id)
    if (
        comp is None
        or reg is None
        or (reg.user_id != who.user_id and reg.payer_id != who.user_id and not who.is_admin)
    ):
        raise reg_not_found(comp_id, reg_id)
    if reg.state != CONFIRMED:
        raise FailedPrecondition(
            f"only a CONFIRMED registration has a ticket, this one is {reg.state}",
            reason="NOT_CONFIRMED",
            metadata={"registration_state": reg.state},
        )
    document = {
        "competition": name(comp_id),
        "registration": registration_name(comp_id, reg.id),
        "user": f"users/{reg.user_id}",
        "title": comp.title,
        "start_time": comp.start_time.isoformat(),
        "end_time": comp.end_time.isoformat(),
        "issue_time": rt.now().isoformat(),
        "key_id": rt.signer.key_id,
    }
    payload = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return Ticket(payload, rt.signer.sign(TICKET_CONTEXT + payload), rt.signer.key_id, rt.signer.public_key)


def _bad_ticket(why: str) -> InvalidArgument:
    return InvalidArgument(f"ticket: {why}", violations=[FieldViolation("ticket", why)])


def read_ticket(rt: Runtime, payload: bytes, signature: bytes) -> tuple[str, str, str]:
    """(competition id, registration id, user id) of a ticket this coordinator signed."""
    # Ed25519 signatures are deterministic: signing again gives the same bytes.
    if not payload or not hmac.compare_digest(rt.signer.sign(TICKET_CONTEXT + payload), signature):
        raise _bad_ticket("the signature does not match (not issued by this coordinator, or altered)")
    try:
        document = json.loads(payload.decode("utf-8"))
        parts = str(document["registration"]).split("/")
        user = str(document["user"]).removeprefix("users/")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise _bad_ticket("the payload is not a ticket") from None
    if len(parts) != 4 or parts[0] != "competitions" or parts[2] != "registrations":
        raise _bad_ticket("the payload names no registration")
    return parts[1], parts[3], user


def check_in(rt: Runtime, who: Principal, comp_id: str, reg_id: str, ticket_user: str = "") -> CheckInResult:
    """Checks a registrant in (the competition's owner or an admin). With a ticket
    (`ticket_user` set), the registration must still belong to the ticket's user."""
    s = settings_of(rt)
    with rt.store.write() as tx:
        comp = lock_owned(rt, who, comp_id)
        reg = queries.registration_in(comp_id, reg_id)
        if reg is None:
            raise reg_not_found(comp_id, reg_id)
        if ticket_user and reg.user_id != ticket_user:
            raise precondition(
                "the ticket's holder no longer holds this registration (it was transferred)",
                "TICKET_SUPERSEDED",
                comp,
            )
        if reg.state != CONFIRMED:
            raise FailedPrecondition(
                f"only a CONFIRMED registration checks in, this one is {reg.state}",
                reason="NOT_CONFIRMED",
                metadata={"registration_state": reg.state},
            )
        if reg.checkin_time is not None:
            return CheckInResult(RegistrationView(reg, 0), already_checked_in=True)
        opens = comp.start_time - timedelta(seconds=s.checkin_open_s)
        if comp.state not in (OPEN, REGISTRATION_CLOSED, RUNNING) or not opens <= tx.now < comp.end_time:
            raise precondition(
                f"check-in is open from {opens.isoformat()} until the end of the competition",
                "CHECK_IN_CLOSED",
                comp,
            )
        reg.checkin_time = reg.update_time = tx.now
        queries.save_registration(reg)
        comp.checked_in += 1
        comp.update_time = tx.now
        queries.save_competition(comp)
        emit_registration(tx, reg, "checked_in")
    return CheckInResult(RegistrationView(reg, 0), already_checked_in=False)


def transfer_registration(
    rt: Runtime, who: Principal, comp_id: str, reg_id: str, to_user: str
) -> RegistrationView:
    """Moves a CONFIRMED registration (its seat, its confirmation time, its place in the
    count) to `to_user` before the start. The fee stays held from its payer."""
    if not queries.existing_users([to_user]):
        raise NotFound(f"users/{to_user} not found", metadata={"resource": f"users/{to_user}"})
    with rt.store.write() as tx:
        comp, reg = own_registration(rt, who, comp_id, reg_id)
        if reg.state != CONFIRMED:
            raise FailedPrecondition(
                f"only a CONFIRMED registration can be transferred, this one is {reg.state}",
                reason="NOT_CONFIRMED",
                metadata={"registration_state": reg.state},
            )
        if comp.state not in SEATING or tx.now >= comp.start_time:
            raise precondition("registrations are transferred before the start", "COMPETITION_STARTED", comp)
        if reg.checkin_time is not None:
            raise precondition("a checked-in registration cannot be transferred", "CHECKED_IN", comp)
        if to_user == reg.user_id:
            return RegistrationView(reg, 0)
        theirs = queries.registration_of(comp_id, to_user)
        if theirs is not None and theirs.state in ACTIVE:
            raise FailedPrecondition(
                f"users/{to_user} is registered for this competition already",
                reason="ALREADY_REGISTERED",
                metadata={"user": f"users/{to_user}"},
            )
        if theirs is not None:
            # Their old, inactive registration makes way (one row per user and competition).
            queries.delete_registration(theirs)
        previous = reg.user_id
        reg.payer = payer_of(reg)
        reg.user = to_user
        reg.update_time = tx.now
        queries.save_registration(reg)
        comp.update_time = tx.now
        queries.save_competition(comp)
        tx.emit(
            "competition.registration.transferred",
            registration_name(comp_id, reg.id),
            {"from": f"users/{previous}", "to": f"users/{to_user}", "watch_keys": [name(comp_id)]},
        )
    return RegistrationView(reg, 0)
