"""CompetitionService: validate names -> call domain/competition -> map to proto."""

from __future__ import annotations

import csv
import functools
import io
from collections.abc import AsyncIterator
from typing import Any

from coordd.api.competition_convert import (
    competition_to_proto,
    entry_to_proto,
    input_from_proto,
    optional_user,
    registration_name,
    registration_to_proto,
    signed_to_proto,
    state_from_proto,
    team_name_parts,
    team_to_proto,
)
from coordd.api.convert import parse_name
from coordd.api.gather import Gatherer
from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.core.paging import PageRequest
from coordd.core.principal import require_user
from coordd.domain import competition as comp_rules
from coordd.domain import idempotency as idem
from coordd.runtime import Runtime
from coordd_client.v1 import competition_pb2, competition_pb2_grpc

# Streams re-read the competition at least this often, even without events.
WATCH_REFRESH_S = 10.0

# Register claims its idempotency key in the registration's own transaction (one commit per
# batch of registrations instead of three per keyed call; domain/idempotency.py).
REGISTER = "/coordd.v1.CompetitionService/Register"
idem.claims_in_call(REGISTER)


def _register_reply(view: comp_rules.RegistrationView) -> bytes:
    """Register's reply, as the idempotency record stores it (and the interceptor would)."""
    reply = competition_pb2.RegisterResponse(registration=registration_to_proto(view), created=view.created)
    return reply.SerializeToString()


class CompetitionServicer(competition_pb2_grpc.CompetitionServiceServicer):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        # Register calls, grouped per competition (domain/competition/bulk.py runs a batch).
        self.gatherer: Gatherer[str, comp_rules.Ask, comp_rules.Registered] = Gatherer(
            rt, functools.partial(comp_rules.register_many, rt), comp_rules.MAX_BATCH, "registration"
        )

    async def CreateCompetition(
        self, request: competition_pb2.CreateCompetitionRequest, context: Any
    ) -> competition_pb2.CreateCompetitionResponse:
        who = require_user()
        data = input_from_proto(request.competition)
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
        state = state_from_proto(
            request.state, "state", competition_pb2.CompetitionState, "COMPETITION_STATE_"
        )
        owner = optional_user(request.owner, "owner")
        page = await self.rt.run(comp_rules.list_competitions, who, page_request, state, request.tag, owner)
        return competition_pb2.ListCompetitionsResponse(
            competitions=[competition_to_proto(v) for v in page.items], next_page_token=page.next_token
        )

    async def UpdateCompetition(
        self, request: competition_pb2.UpdateCompetitionRequest, context: Any
    ) -> competition_pb2.UpdateCompetitionResponse:
        who = require_user()
        comp_id = parse_name(request.competition.name, "competitions", "competition.name")
        data = input_from_proto(request.competition)
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
    ) -> competition_pb2.RegisterResponse | bytes:
        who = require_user()
        comp_id = parse_name(request.competition, "competitions", "competition")
        # With an idempotency key, the record (and this reply) is written with the registration:
        # the reply is sent as the record holds it (a mutating call's serializer passes bytes).
        keyed = idem.in_call(REGISTER, request.SerializeToString(deterministic=True))
        got = await self.gatherer.submit(comp_id, comp_rules.Ask(self.rt, who, keyed, _register_reply))
        if got.view is None:  # the reply of the first call with this key
            await context.send_initial_metadata(((idem.REPLAYED_HEADER, "true"),))
            return got.replay
        if got.reply:
            return got.reply
        return competition_pb2.RegisterResponse(
            registration=registration_to_proto(got.view), created=got.view.created
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
        comp_id, reg_id = registration_name(request.name)
        view = await self.rt.run(comp_rules.cancel_registration, self.rt, who, comp_id, reg_id)
        return competition_pb2.CancelRegistrationResponse(registration=registration_to_proto(view))

    async def AcceptOffer(
        self, request: competition_pb2.AcceptOfferRequest, context: Any
    ) -> competition_pb2.AcceptOfferResponse:
        who = require_user()
        comp_id, reg_id = registration_name(request.name)
        view = await self.rt.run(comp_rules.accept_offer, self.rt, who, comp_id, reg_id)
        return competition_pb2.AcceptOfferResponse(registration=registration_to_proto(view))

    async def TransferRegistration(
        self, request: competition_pb2.TransferRegistrationRequest, context: Any
    ) -> competition_pb2.TransferRegistrationResponse:
        who = require_user()
        comp_id, reg_id = registration_name(request.name)
        to_user = parse_name(request.user, "users", "user")
        view = await self.rt.run(comp_rules.transfer_registration, self.rt, who, comp_id, reg_id, to_user)
        return competition_pb2.TransferRegistrationResponse(registration=registration_to_proto(view))

    async def GetTicket(
        self, request: competition_pb2.GetTicketRequest, context: Any
    ) -> competition_pb2.GetTicketResponse:
        who = require_user()
        comp_id, reg_id = registration_name(request.name)
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
            if request.name and registration_name(request.name) != (comp_id, reg_id):
                raise InvalidArgument(
                    "name: the ticket is for another registration",
                    violations=[FieldViolation("name", "does not match the ticket")],
                )
        elif request.name:
            comp_id, reg_id = registration_name(request.name)
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
        state = state_from_proto(
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

    async def CreateTeam(
        self, request: competition_pb2.CreateTeamRequest, context: Any
    ) -> competition_pb2.CreateTeamResponse:
        who = require_user()
        comp_id = parse_name(request.competition, "competitions", "competition")
        view = await self.rt.run(comp_rules.create_team, self.rt, who, comp_id, request.team.display_name)
        return competition_pb2.CreateTeamResponse(team=team_to_proto(view))

    async def GetTeam(
        self, request: competition_pb2.GetTeamRequest, context: Any
    ) -> competition_pb2.GetTeamResponse:
        who = require_user()
        comp_id, team_id = team_name_parts(request.name, "name")
        view = await self.rt.run(comp_rules.get_team, who, comp_id, team_id)
        return competition_pb2.GetTeamResponse(team=team_to_proto(view))

    async def ListTeams(
        self, request: competition_pb2.ListTeamsRequest, context: Any
    ) -> competition_pb2.ListTeamsResponse:
        who = require_user()
        comp_id = parse_name(request.competition, "competitions", "competition")
        page_request = PageRequest.of(request.page_size, request.page_token)
        page = await self.rt.run(comp_rules.list_teams, who, comp_id, page_request)
        return competition_pb2.ListTeamsResponse(
            teams=[team_to_proto(v) for v in page.items], next_page_token=page.next_token
        )

    async def InviteTeamMember(
        self, request: competition_pb2.InviteTeamMemberRequest, context: Any
    ) -> competition_pb2.InviteTeamMemberResponse:
        who = require_user()
        comp_id, team_id = team_name_parts(request.team, "team")
        user_id = parse_name(request.user, "users", "user")
        view = await self.rt.run(comp_rules.invite_member, self.rt, who, comp_id, team_id, user_id)
        return competition_pb2.InviteTeamMemberResponse(team=team_to_proto(view))

    async def AcceptTeamInvite(
        self, request: competition_pb2.AcceptTeamInviteRequest, context: Any
    ) -> competition_pb2.AcceptTeamInviteResponse:
        who = require_user()
        comp_id, team_id = team_name_parts(request.team, "team")
        view = await self.rt.run(comp_rules.accept_invite, self.rt, who, comp_id, team_id)
        return competition_pb2.AcceptTeamInviteResponse(team=team_to_proto(view))

    async def RemoveTeamMember(
        self, request: competition_pb2.RemoveTeamMemberRequest, context: Any
    ) -> competition_pb2.RemoveTeamMemberResponse:
        who = require_user()
        comp_id, team_id = team_name_parts(request.team, "team")
        user_id = parse_name(request.user, "users", "user")
        view = await self.rt.run(comp_rules.remove_member, self.rt, who, comp_id, team_id, user_id)
        return competition_pb2.RemoveTeamMemberResponse(team=team_to_proto(view))

    async def RegisterTeam(
        self, request: competition_pb2.RegisterTeamRequest, context: Any
    ) -> competition_pb2.RegisterTeamResponse:
        who = require_user()
        comp_id, team_id = team_name_parts(request.team, "team")
        view = await self.rt.run(comp_rules.register_team, self.rt, who, comp_id, team_id)
        return competition_pb2.RegisterTeamResponse(
            group=comp_rules.group_name(comp_id, view.group_id),
            registrations=[registration_to_proto(r) for r in view.registrations],
            created=view.created,
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
