"""CompetitionService: validate names -> call domain/competition -> map to proto."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from coordd.api.convert import duration, from_ts, parse_name, ts
from coordd.core.errors import FieldViolation, InvalidArgument, Violations
from coordd.core.paging import PageRequest
from coordd.core.principal import require_user
from coordd.domain import competition as comp_rules
from coordd.runtime import Runtime
from coordd_client.v1 import competition_pb2, competition_pb2_grpc

# Streams re-read the competition at least this often, even without events.
WATCH_REFRESH_S = 10.0


def _state_to_proto(state: str) -> int:
    return competition_pb2.CompetitionState.Value("COMPETITION_STATE_" + state) if state else 0


def _reg_state_to_proto(state: str) -> int:
    return competition_pb2.RegistrationState.Value("REGISTRATION_STATE_" + state)


def _state_from_proto(value: int, field: str, enum: Any, prefix: str) -> str:
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
        state=_state_to_proto(c.state),
        previous_state=_state_to_proto(c.previous_state),
        confirmed_count=c.confirmed,
        offered_count=c.offered,
        waitlisted_count=c.waitlisted,
        free_seats=max(c.capacity - c.confirmed - c.offered, 0),
        waitlist_entry_count=c.waitlisted - c.waitlist_extra,
        checked_in_count=c.checked_in,
        publish_time=ts(c.publish_time),
        create_time=ts(c.create_time),
        update_time=ts(c.update_time),
        transitions=[
            competition_pb2.StateTransition(
                from_state=_state_to_proto(t.from_state),
                to_state=_state_to_proto(t.to_state),
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
        state=_reg_state_to_proto(r.state),
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


def _input_from_proto(c: competition_pb2.Competition) -> comp_rules.CompetitionInput:
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
    )


def _registration_name(name: str, field: str = "name") -> tuple[str, str]:
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


def _optional_user(name: str, field: str) -> str:
    return parse_name(name, "users", field) if name else ""


class CompetitionServicer(competition_pb2_grpc.CompetitionServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def CreateCompetition(
        self, request: competition_pb2.CreateCompetitionRequest, context: Any
    ) -> competition_pb2.CreateCompetitionResponse:
        who = require_user()
        data = _input_from_proto(request.competition)
        view = await self.rt.run(comp_rules.create_competition, self.rt, who, data)
        return competition_pb2.CreateCompetitionResponse(competition=competition_to_proto(view))

    async def GetCompetition(
        self, request: competition_pb2.GetCompetitionRequest, context: Any
    ) -> competition_pb2.GetCompetitionResponse:
        who = require_user()
        comp_id = parse_name(request.name, "competitions")
        view = await self.rt.run(comp_rules.get_competition, who, comp_id)
        return competition_pb2.GetCompetitionResponse(competition=competition_to_proto(view))

    async def ListCompetitions(
        self, request: competition_pb2.ListCompetitionsRequest, context: Any
    ) -> competition_pb2.ListCompetitionsResponse:
        who = require_user()
        page_request = PageRequest.of(request.page_size, request.page_token)
        state = _state_from_proto(
            request.state, "state", competition_pb2.CompetitionState, "COMPETITION_STATE_"
        )
        owner = _optional_user(request.owner, "owner")
        page = await self.rt.run(comp_rules.list_competitions, who, page_request, state, request.tag, owner)
        return competition_pb2.ListCompetitionsResponse(
            competitions=[competition_to_proto(v) for v in page.items], next_page_token=page.next_token
        )

    async def UpdateCompetition(
        self, request: competition_pb2.UpdateCompetitionRequest, context: Any
    ) -> competition_pb2.UpdateCompetitionResponse:
        who = require_user()
        comp_id = parse_name(request.competition.name, "competitions", "competition.name")
        data = _input_from_proto(request.competition)
        paths = list(request.update_mask.paths)
        view = await self.rt.run(comp_rules.update_competition, self.rt, who, comp_id, data, paths)
        return competition_pb2.UpdateCompetitionResponse(competition=competition_to_proto(view))

    async def PublishCompetition(
        self, request: competition_pb2.PublishCompetitionRequest, context: Any
    ) -> competition_pb2.PublishCompetitionResponse:
        who = require_user()
        comp_id = parse_name(request.name, "competitions")
        view = await self.rt.run(comp_rules.publish_competition, self.rt, who, comp_id)
        return competition_pb2.PublishCompetitionResponse(competition=competition_to_proto(view))

    async def CancelCompetition(
        self, request: competition_pb2.CancelCompetitionRequest, context: Any
    ) -> competition_pb2.CancelCompetitionResponse:
        who = require_user()
        comp_id = parse_name(request.name, "competitions")
        view = await self.rt.run(comp_rules.cancel_competition, self.rt, who, comp_id, request.reason)
        return competition_pb2.CancelCompetitionResponse(competition=competition_to_proto(view))

    async def Register(
        self, request: competition_pb2.RegisterRequest, context: Any
    ) -> competition_pb2.RegisterResponse:
        who = require_user()
        comp_id = parse_name(request.competition, "competitions", "competition")
        view = await self.rt.run(comp_rules.register, self.rt, who, comp_id)
        return competition_pb2.RegisterResponse(
            registration=registration_to_proto(view), created=view.created
        )

    async def RegisterGroup(
        self, request: competition_pb2.RegisterGroupRequest, context: Any
    ) -> competition_pb2.RegisterGroupResponse:
        who = require_user()
        comp_id = parse_name(request.competition, "competitions", "competition")
        members = [parse_name(m, "users", f"members[{i}]") for i, m in enumerate(request.members)]
        view = await self.rt.run(comp_rules.register_group, self.rt, who, comp_id, members)
        return competition_pb2.RegisterGroupResponse(
            group=comp_rules.group_name(comp_id, view.group_id),
            registrations=[registration_to_proto(r) for r in view.registrations],
            created=view.created,
        )

    async def CancelRegistration(
        self, request: competition_pb2.CancelRegistrationRequest, context: Any
    ) -> competition_pb2.CancelRegistrationResponse:
        who = require_user()
        comp_id, reg_id = _registration_name(request.name)
        view = await self.rt.run(comp_rules.cancel_registration, self.rt, who, comp_id, reg_id)
        return competition_pb2.CancelRegistrationResponse(registration=registration_to_proto(view))

    async def AcceptOffer(
        self, request: competition_pb2.AcceptOfferRequest, context: Any
    ) -> competition_pb2.AcceptOfferResponse:
        who = require_user()
        comp_id, reg_id = _registration_name(request.name)
        view = await self.rt.run(comp_rules.accept_offer, self.rt, who, comp_id, reg_id)
        return competition_pb2.AcceptOfferResponse(registration=registration_to_proto(view))

    async def TransferRegistration(
        self, request: competition_pb2.TransferRegistrationRequest, context: Any
    ) -> competition_pb2.TransferRegistrationResponse:
        who = require_user()
        comp_id, reg_id = _registration_name(request.name)
        to_user = parse_name(request.user, "users", "user")
        view = await self.rt.run(comp_rules.transfer_registration, self.rt, who, comp_id, reg_id, to_user)
        return competition_pb2.TransferRegistrationResponse(registration=registration_to_proto(view))

    async def GetTicket(
        self, request: competition_pb2.GetTicketRequest, context: Any
    ) -> competition_pb2.GetTicketResponse:
        who = require_user()
        comp_id, reg_id = _registration_name(request.name)
        ticket = await self.rt.run(comp_rules.get_ticket, self.rt, who, comp_id, reg_id)
        return competition_pb2.GetTicketResponse(
            ticket=competition_pb2.Ticket(
                payload=ticket.payload,
                signature=ticket.signature,
                key_id=ticket.key_id,
                public_key=ticket.public_key,
            )
        )

    async def CheckIn(
        self, request: competition_pb2.CheckInRequest, context: Any
    ) -> competition_pb2.CheckInResponse:
        who = require_user()
        ticket_user = ""
        if request.HasField("ticket"):
            comp_id, reg_id, ticket_user = await self.rt.run(
                comp_rules.read_ticket, self.rt, request.ticket.payload, request.ticket.signature
            )
            if request.name and _registration_name(request.name) != (comp_id, reg_id):
                raise InvalidArgument(
                    "name: the ticket is for another registration",
                    violations=[FieldViolation("name", "does not match the ticket")],
                )
        elif request.name:
            comp_id, reg_id = _registration_name(request.name)
        else:
            raise InvalidArgument(
                "name or ticket is required",
                violations=[FieldViolation("name", "give the registration's name or the ticket")],
            )
        result = await self.rt.run(comp_rules.check_in, self.rt, who, comp_id, reg_id, ticket_user)
        return competition_pb2.CheckInResponse(
            registration=registration_to_proto(result.registration),
            already_checked_in=result.already_checked_in,
        )

    async def ListRegistrations(
        self, request: competition_pb2.ListRegistrationsRequest, context: Any
    ) -> competition_pb2.ListRegistrationsResponse:
        who = require_user()
        comp_id = parse_name(request.competition, "competitions", "competition")
        page_request = PageRequest.of(request.page_size, request.page_token)
        state = _state_from_proto(
            request.state, "state", competition_pb2.RegistrationState, "REGISTRATION_STATE_"
        )
        page = await self.rt.run(comp_rules.list_registrations, who, comp_id, page_request, state)
        return competition_pb2.ListRegistrationsResponse(
            registrations=[registration_to_proto(v) for v in page.items], next_page_token=page.next_token
        )

    async def ExportRegistrations(
        self, request: competition_pb2.ExportRegistrationsRequest, context: Any
    ) -> AsyncIterator[competition_pb2.ExportRegistrationsResponse]:
        who = require_user()
        comp_id = parse_name(request.competition, "competitions", "competition")
        batches = await self.rt.run(comp_rules.export_batches, who, comp_id)
        # The first batch (and the ownership check inside it) runs before anything is sent.
        header = True
        while True:
            rows = await self.rt.run(next, batches, None)
            if rows is None and not header:
                return
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            if header:
                writer.writerow(comp_rules.EXPORT_COLUMNS)
                header = False
            writer.writerows(rows or [])
            yield competition_pb2.ExportRegistrationsResponse(csv_chunk=buffer.getvalue().encode())
            if rows is None:
                return

    async def ListMyRegistrations(
        self, request: competition_pb2.ListMyRegistrationsRequest, context: Any
    ) -> competition_pb2.ListMyRegistrationsResponse:
        who = require_user()
        page_request = PageRequest.of(request.page_size, request.page_token)
        page = await self.rt.run(comp_rules.list_my_registrations, who, page_request)
        return competition_pb2.ListMyRegistrationsResponse(
            registrations=[registration_to_proto(v) for v in page.items], next_page_token=page.next_token
        )

    async def SubmitEntry(
        self, request: competition_pb2.SubmitEntryRequest, context: Any
    ) -> competition_pb2.SubmitEntryResponse:
        who = require_user()
        comp_id = parse_name(request.competition, "competitions", "competition")
        entry = await self.rt.run(
            comp_rules.submit_entry, self.rt, who, comp_id, request.payload, request.uri, request.digest
        )
        return competition_pb2.SubmitEntryResponse(entry=entry_to_proto(entry))

    async def PublishResults(
        self, request: competition_pb2.PublishResultsRequest, context: Any
    ) -> competition_pb2.PublishResultsResponse:
        who = require_user()
        comp_id = parse_name(request.competition, "competitions", "competition")
        ranking = [
            (parse_name(r.user, "users", f"ranking[{i}].user"), r.score)
            for i, r in enumerate(request.ranking)
        ]
        view, signed = await self.rt.run(comp_rules.publish_results, self.rt, who, comp_id, ranking)
        return competition_pb2.PublishResultsResponse(
            competition=competition_to_proto(view), results=signed_to_proto(signed)
        )

    async def GetResults(
        self, request: competition_pb2.GetResultsRequest, context: Any
    ) -> competition_pb2.GetResultsResponse:
        who = require_user()
        comp_id = parse_name(request.competition, "competitions", "competition")
        signed = await self.rt.run(comp_rules.get_results, self.rt, who, comp_id)
        return competition_pb2.GetResultsResponse(results=signed_to_proto(signed))

    async def GetLeaderboard(
        self, request: competition_pb2.GetLeaderboardRequest, context: Any
    ) -> competition_pb2.GetLeaderboardResponse:
        who = require_user()
        comp_id = parse_name(request.competition, "competitions", "competition")
        page_request = PageRequest.of(request.page_size, request.page_token)
        page = await self.rt.run(comp_rules.leaderboard, who, comp_id, page_request)
        return competition_pb2.GetLeaderboardResponse(
            rows=[
                competition_pb2.LeaderboardRow(
                    rank=row.result.rank,
                    user=f"users/{row.result.user_id}",
                    display_name=row.display_name,
                    score=row.result.score,
                    prize=row.result.prize,
                )
                for row in page.items
            ],
            next_page_token=page.next_token,
        )

    async def WatchCompetition(
        self, request: competition_pb2.WatchCompetitionRequest, context: Any
    ) -> AsyncIterator[competition_pb2.WatchCompetitionResponse]:
        who = require_user()
        comp_id = parse_name(request.name, "competitions")
        key = f"competitions/{comp_id}"
        last = b""
        while True:
            view = await self.rt.run(comp_rules.get_competition, who, comp_id)
            message = competition_to_proto(view)
            data = message.SerializeToString(deterministic=True)
            if data != last:
                last = data
                yield competition_pb2.WatchCompetitionResponse(competition=message)
            if view.competition.state in comp_rules.TERMINAL:
                return
            await self.rt.notifier.wait([key], WATCH_REFRESH_S)
