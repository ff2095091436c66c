"""CompetitionService messages: domain views -> proto, proto -> domain input, and the
resource names the service takes apart."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from coordd.api.convert import duration, from_ts, parse_name, ts
from coordd.core.errors import FieldViolation, InvalidArgument, Violations
from coordd.domain import competition as comp_rules
from coordd_client.v1 import competition_pb2


def state_to_proto(state: str) -> int:
    return competition_pb2.CompetitionState.Value("COMPETITION_STATE_" + state) if state else 0


def _regstate_to_proto(state: str) -> int:
    return competition_pb2.RegistrationState.Value("REGISTRATION_STATE_" + state)


def state_from_proto(value: int, field: str, enum: Any, prefix: str) -> str:
    if value == 0:
        return ""
    if value not in enum.values():
        raise InvalidArgument(
            f"{field} is not a valid value", violations=[FieldViolation(field, "unknown value")]
        )
    return str(enum.Name(value))[len(prefix) :]


def competition_to_proto(view: comp_rules.CompetitionView) -> competition_pb2.Competition:
    c = view.competition
    return competition_pb2.Competition(
        name=f"competitions/{c.id}",
        owner=f"users/{c.owner_id}",
        title=c.title,
        description=c.description,
        tags=c.tags,
        capacity=c.capacity,
        registration_open_time=ts(c.open_time),
        registration_close_time=ts(c.close_time),
        start_time=ts(c.start_time),
        end_time=ts(c.end_time),
        entry_fee=c.entry_fee,
        prize_split_bps=c.prize_split,
        offer_hold_duration=duration(c.offer_hold_s),
        reminder_lead=duration(c.reminder_lead_s),
        state=state_to_proto(c.state),
        previous_state=state_to_proto(c.previous_state),
        confirmed_count=c.confirmed,
        offered_count=c.offered,
        waitlisted_count=c.waitlisted,
        free_seats=max(c.capacity - c.confirmed - c.offered, 0),
        waitlist_entry_count=c.waitlisted - c.waitlist_extra,
        checked_in_count=c.checked_in,
        team_min_size=c.team_min,
        team_max_size=c.team_max,
        team_formation_deadline=ts(c.team_deadline),
        publish_time=ts(c.publish_time),
        create_time=ts(c.create_time),
        update_time=ts(c.update_time),
        transitions=[
            competition_pb2.StateTransition(
                from_state=state_to_proto(t.from_state),
                to_state=state_to_proto(t.to_state),
                reason=t.reason,
                time=ts(t.time),
            )
            for t in view.transitions
        ],
        errors=[
            competition_pb2.CompetitionError(message=e["message"], time=ts(datetime.fromisoformat(e["time"])))
            for e in c.errors
        ],
    )


def registration_to_proto(view: comp_rules.RegistrationView) -> competition_pb2.Registration:
    r = view.registration
    competition = f"competitions/{r.competition_id}"
    return competition_pb2.Registration(
        name=f"{competition}/registrations/{r.id}",
        competition=competition,
        user=f"users/{r.user_id}",
        state=_regstate_to_proto(r.state),
        position=view.position,
        offer_expire_time=ts(r.offer_expire_time),
        fee_held=r.fee_held,
        create_time=ts(r.create_time),
        update_time=ts(r.update_time),
        confirm_time=ts(r.confirm_time),
        group=comp_rules.group_name(r.competition_id, r.group_id) if r.group_id else "",
        payer=f"users/{r.payer_id}" if r.payer_id else "",
        check_in_time=ts(r.checkin_time),
    )


def entry_to_proto(entry: comp_rules.Entry) -> competition_pb2.Entry:
    return competition_pb2.Entry(
        name=f"competitions/{entry.competition_id}/entries/{entry.id}",
        user=f"users/{entry.user_id}",
        digest=entry.digest,
        size_bytes=entry.size_bytes,
        uri=entry.uri,
        revision=entry.revision,
        submit_time=ts(entry.submit_time),
    )


def signed_to_proto(signed: comp_rules.SignedResults) -> competition_pb2.SignedResults:
    return competition_pb2.SignedResults(
        payload=signed.payload, signature=signed.signature, key_id=signed.key_id, public_key=signed.public_key
    )


def input_from_proto(c: competition_pb2.Competition) -> comp_rules.CompetitionInput:
    """Unset timestamps stay None (the domain reports them as required)."""

    def when(field: str) -> datetime | None:
        return from_ts(getattr(c, field)) if c.HasField(field) else None

    v = Violations()
    for field in ("offer_hold_duration", "reminder_lead"):
        if c.HasField(field) and getattr(c, field).nanos:
            v.add(field, "whole seconds only")
    v.raise_if_any()
    return comp_rules.CompetitionInput(
        title=c.title,
        description=c.description,
        tags=list(c.tags),
        capacity=c.capacity,
        open_time=when("registration_open_time"),
        close_time=when("registration_close_time"),
        start_time=when("start_time"),
        end_time=when("end_time"),
        entry_fee=c.entry_fee,
        prize_split=list(c.prize_split_bps),
        offer_hold_s=c.offer_hold_duration.seconds if c.HasField("offer_hold_duration") else None,
        reminder_lead_s=c.reminder_lead.seconds if c.HasField("reminder_lead") else None,
        team_min=c.team_min_size,
        team_max=c.team_max_size,
        team_deadline=when("team_formation_deadline"),
    )


def registration_name(name: str, field: str = "name") -> tuple[str, str]:
    """`competitions/{c}/registrations/{r}` -> (c, r)."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "competitions"
        or parts[2] != "registrations"
        or not parts[1]
        or not parts[3]
    ):
        raise InvalidArgument(
            f"{field} must look like competitions/{{id}}/registrations/{{id}}, got {name!r}",
            violations=[FieldViolation(field, "expected competitions/{id}/registrations/{id}")],
        )
    return parts[1], parts[3]


def optional_user(name: str, field: str) -> str:
    return parse_name(name, "users", field) if name else ""


def team_to_proto(view: comp_rules.TeamView) -> competition_pb2.Team:
    t = view.team
    return competition_pb2.Team(
        name=comp_rules.team_name(t.competition_id, t.id),
        display_name=t.display_name,
        captain=f"users/{t.captain_id}",
        members=[
            competition_pb2.TeamMember(
                user=f"users/{m.user_id}",
                state=competition_pb2.TeamMemberState.Value("TEAM_MEMBER_STATE_" + m.state),
            )
            for m in view.members
        ],
        group=comp_rules.group_name(t.competition_id, t.id) if view.registered else "",
        create_time=ts(t.create_time),
    )


def team_name_parts(name: str, field: str) -> tuple[str, str]:
    """`competitions/{c}/teams/{t}` -> (c, t)."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "competitions" or parts[2] != "teams" or not parts[1] or not parts[3]:
        raise InvalidArgument(
            f"{field} must look like competitions/{{id}}/teams/{{id}}, got {name!r}",
            violations=[FieldViolation(field, "expected competitions/{id}/teams/{id}")],
        )
    return parts[1], parts[3]
