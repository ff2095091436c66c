"""Teams: a captain invites, invitees accept, size limits and the formation deadline hold,
a user is in one team per competition, and the team registers as one group."""

from __future__ import annotations

import threading
from datetime import timedelta

import grpc

from coordd.api.convert import ts
from coordd.store.competition.models import TeamMember
from coordd_client.v1 import competition_pb2
from tests.competition.support import bulk_users, competition_server, create, get, reg_state, spec, stub
from tests.helpers import rpc_error
from tests.support.server import bearer

__all__ = ["competition_server"]


def _create_team(server, token: str, comp_name: str, display_name: str = "Owls") -> competition_pb2.Team:
    request = competition_pb2.CreateTeamRequest(
        competition=comp_name, team=competition_pb2.Team(display_name=display_name)
    )
    return stub(server).CreateTeam(request, metadata=bearer(token)).team


def _invite(server, token: str, team: str, user_id: str) -> competition_pb2.Team:
    request = competition_pb2.InviteTeamMemberRequest(team=team, user=f"users/{user_id}")
    return stub(server).InviteTeamMember(request, metadata=bearer(token)).team


def _accept(server, token: str, team: str) -> competition_pb2.Team:
    return (
        stub(server)
        .AcceptTeamInvite(competition_pb2.AcceptTeamInviteRequest(team=team), metadata=bearer(token))
        .team
    )


def _remove(server, token: str, team: str, user_id: str) -> competition_pb2.Team:
    request = competition_pb2.RemoveTeamMemberRequest(team=team, user=f"users/{user_id}")
    return stub(server).RemoveTeamMember(request, metadata=bearer(token)).team


def _register(server, token: str, team: str) -> competition_pb2.RegisterTeamResponse:
    return stub(server).RegisterTeam(competition_pb2.RegisterTeamRequest(team=team), metadata=bearer(token))


def _states(team: competition_pb2.Team) -> dict[str, str]:
    return {
        m.user.removeprefix("users/"): competition_pb2.TeamMemberState.Name(m.state).removeprefix(
            "TEAM_MEMBER_STATE_"
        )
        for m in team.members
    }


def test_a_captain_invites_members_accept_and_the_team_registers_as_one_group(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=10, team_min_size=2, team_max_size=3)
    assert (comp.team_min_size, comp.team_max_size) == (2, 3)
    (cap, cap_tok), (b, b_tok), (c, c_tok), (d, _) = bulk_users(server, 4)
    team = _create_team(server, cap_tok, comp.name)
    assert team.captain == f"users/{cap}" and _states(team) == {cap: "ACCEPTED"}
    _invite(server, cap_tok, team.name, b)
    team = _invite(server, cap_tok, team.name, c)
    assert _states(team) == {cap: "ACCEPTED", b: "INVITED", c: "INVITED"}
    # Invitations count against the size: a fourth one is refused.
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _invite, server, cap_tok, team.name, d)
    assert failure.reason == "TEAM_FULL"
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, _invite, server, b_tok, team.name, d)
    _accept(server, b_tok, team.name)
    team = _accept(server, c_tok, team.name)
    assert set(_states(team).values()) == {"ACCEPTED"} and not team.group
    reply = _register(server, cap_tok, team.name)
    assert reply.created and reply.group == f"{comp.name}/groups/{team.name.split('/')[-1]}"
    assert [reg_state(r.state) for r in reply.registrations] == ["CONFIRMED"] * 3
    assert {r.user.removeprefix("users/") for r in reply.registrations} == {cap, b, c}
    assert _register(server, cap_tok, team.name).created is False
    got = stub(server).GetTeam(competition_pb2.GetTeamRequest(name=team.name), metadata=bearer(b_tok)).team
    assert got.group == reply.group
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _remove, server, c_tok, team.name, c)
    assert failure.reason == "TEAM_REGISTERED"
    listed = stub(server).ListTeams(
        competition_pb2.ListTeamsRequest(competition=comp.name), metadata=bearer(org)
    )
    assert [t.name for t in listed.teams] == [team.name]
    assert get(server, org, comp.name).confirmed_count == 3


def test_team_size_limits_and_the_formation_deadline(server, clock):
    _, org = server.make_user("organizer")
    now = server.rt.now()
    comp = create(
        server,
        org,
        capacity=10,
        team_min_size=2,
        team_max_size=4,
        team_formation_deadline=ts(now + timedelta(minutes=30)),
    )
    (cap, cap_tok), (b, b_tok), (c, c_tok) = bulk_users(server, 3)
    team = _create_team(server, cap_tok, comp.name)
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _register, server, cap_tok, team.name)
    assert failure.reason == "TEAM_SIZE"
    _invite(server, cap_tok, team.name, b)
    _invite(server, cap_tok, team.name, c)
    _accept(server, b_tok, team.name)
    _remove(server, cap_tok, team.name, c)  # an invitation withdrawn
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, _remove, server, b_tok, team.name, cap)
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _remove, server, cap_tok, team.name, cap)
    assert failure.reason == "CAPTAIN_STAYS"
    clock.advance(31 * 60)
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _create_team, server, c_tok, comp.name, "Late")
    assert failure.reason == "TEAM_FORMATION_CLOSED"
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _invite, server, cap_tok, team.name, c)
    assert failure.reason == "TEAM_FORMATION_CLOSED"
    # Formation is over, registration is not (it closes after an hour): the team of two registers.
    reply = _register(server, cap_tok, team.name)
    assert [reg_state(r.state) for r in reply.registrations] == ["CONFIRMED"] * 2


def test_a_user_is_an_accepted_member_of_one_team_only_even_accepting_two_at_once(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=10, team_min_size=2, team_max_size=3)
    (_one, one_tok), (_two, two_tok), (b, b_tok) = bulk_users(server, 3)
    first = _create_team(server, one_tok, comp.name, "First")
    second = _create_team(server, two_tok, comp.name, "Second")
    _invite(server, one_tok, first.name, b)
    _invite(server, two_tok, second.name, b)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def accept(team: str) -> None:
        barrier.wait()
        try:
            _accept(server, b_tok, team)
            outcomes.append("accepted")
        except grpc.RpcError as exc:
            outcomes.append(exc.code().name)

    threads = [threading.Thread(target=accept, args=(t.name,)) for t in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["FAILED_PRECONDITION", "accepted"]
    accepted = TeamMember.select().where((TeamMember.user == b) & (TeamMember.state == "ACCEPTED")).count()
    assert accepted == 1
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _create_team, server, b_tok, comp.name, "Third")
    assert failure.reason == "ALREADY_IN_TEAM"
    ((_, fresh_tok),) = bulk_users(server, 1)
    failure = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION, _create_team, server, fresh_tok, comp.name, "First"
    )
    assert failure.reason == "TEAM_NAME_TAKEN"


def test_teams_need_a_competition_with_teams_and_sane_limits(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=10)
    ((_, tok),) = bulk_users(server, 1)
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _create_team, server, tok, comp.name)
    assert failure.reason == "NO_TEAMS"
    svc = stub(server)

    for bad in ({"team_min_size": 1, "team_max_size": 3}, {"team_min_size": 4, "team_max_size": 3}):
        request = competition_pb2.CreateCompetitionRequest(competition=spec(server.rt.now(), 5, **bad))
        failure = rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT, svc.CreateCompetition, request, metadata=bearer(org)
        )
        assert "team_min_size" in failure.violations
    late = spec(server.rt.now(), 5, team_min_size=2, team_max_size=3)
    late.team_formation_deadline.CopyFrom(late.start_time)
    request = competition_pb2.CreateCompetitionRequest(competition=late)
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, svc.CreateCompetition, request, metadata=bearer(org)
    )
    assert "team_formation_deadline" in failure.violations
