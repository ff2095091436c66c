"""Teams: a captain forms a team for a competition, invites users, invitees accept, and
the captain registers the accepted members as one group (groups.register_group: all
seats or none, one waitlist entry; the captain pays the fees).

Rules (defaults in docs/competition.md): only competitions with `team_max > 0` have
teams; a team has `team_min..team_max` accepted members when it registers (invitations
pending count against `team_max` too, so a full team cannot over-invite); teams form
until `team_deadline` (default: registration_close_time); a user is an accepted member of
at most one team per competition; once registered, the membership is frozen. Team changes
of one competition serialize on its row, so the limits hold under concurrency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from coordd.core.errors import FieldViolation, InvalidArgument, NotFound, PermissionDenied
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain.competition.common import get_visible, lock, name, not_found, precondition, visible
from coordd.domain.competition.groups import GroupView, register_group
from coordd.domain.competition.states import ACTIVE, DRAFT, OPEN
from coordd.runtime import Runtime
from coordd.store.competition import queries
from coordd.store.competition import teams as store
from coordd.store.competition.models import ACCEPTED, INVITED, Competition, Team, TeamMember


@dataclass(frozen=True)
class TeamView:
    team: Team
    members: list[TeamMember]
    # True once its members are registered (as the group named by the team's id).
    registered: bool


def team_name(comp_id: str, team_id: str) -> str:
    return f"{name(comp_id)}/teams/{team_id}"


def formation_deadline(comp: Competition) -> datetime:
    return comp.team_deadline or comp.close_time


def _view(team: Team) -> TeamView:
    members = store.members_of([team.id])[team.id]
    return TeamView(team, members, _registered(team))


def _registered(team: Team) -> bool:
    return any(r.state in ACTIVE for r in queries.group_members(team.competition_id, team.id))


def _team_not_found(comp_id: str, team_id: str) -> NotFound:
    resource = team_name(comp_id, team_id)
    return NotFound(f"{resource} not found", metadata={"resource": resource})


def _locked(rt: Runtime, who: Principal, comp_id: str) -> Competition:
    comp = lock(rt, comp_id)
    if comp is None or not visible(who, comp):
        raise not_found(comp_id)
    if comp.team_max == 0:
        raise precondition("this competition has no teams", "NO_TEAMS", comp)
    return comp


def _forming(comp: Competition, now: datetime) -> None:
    deadline = formation_deadline(comp)
    if comp.state not in (DRAFT, OPEN) or now >= deadline:
        raise precondition(f"team formation closed at {deadline.isoformat()}", "TEAM_FORMATION_CLOSED", comp)


def _team(comp: Competition, team_id: str) -> Team:
    team = store.find_team(comp.id, team_id)
    if team is None:
        raise _team_not_found(comp.id, team_id)
    return team


def _not_frozen(comp: Competition, team: Team) -> None:
    if _registered(team):
        raise precondition("the team is registered: its members are fixed", "TEAM_REGISTERED", comp)


def _captain_only(who: Principal, team: Team) -> None:
    if team.captain_id != who.user_id and not who.is_admin:
        raise PermissionDenied("only the team's captain may do this", reason="NOT_CAPTAIN")


def _free_of_teams(comp: Competition, user_id: str) -> None:
    if store.accepted_team_of(comp.id, user_id) is not None:
        raise precondition(
            f"users/{user_id} is in a team of this competition already", "ALREADY_IN_TEAM", comp
        )


def create_team(rt: Runtime, who: Principal, comp_id: str, display_name: str) -> TeamView:
    display_name = display_name.strip()
    if not 1 <= len(display_name) <= 100:
        raise InvalidArgument(
            "display_name: 1 to 100 characters",
            violations=[FieldViolation("team.display_name", "1 to 100 characters")],
        )
    with rt.store.write() as tx:
        comp = _locked(rt, who, comp_id)
        _forming(comp, tx.now)
        _free_of_teams(comp, who.user_id)
        if store.team_named(comp_id, display_name) is not None:
            raise precondition(f"a team named {display_name!r} exists already", "TEAM_NAME_TAKEN", comp)
        team = Team(competition=comp_id, display_name=display_name, captain=who.user_id, create_time=tx.now)
        store.insert_team(team)
        store.insert_member(
            TeamMember(
                team=team.id,
                competition=comp_id,
                user=who.user_id,
                state=ACCEPTED,
                create_time=tx.now,
                update_time=tx.now,
            )
        )
        tx.emit("competition.team.created", team_name(comp_id, team.id), {"watch_keys": [name(comp_id)]})
    return _view(team)


def invite_member(rt: Runtime, who: Principal, comp_id: str, team_id: str, user_id: str) -> TeamView:
    if not queries.existing_users([user_id]):
        raise NotFound(f"users/{user_id} not found", metadata={"resource": f"users/{user_id}"})
    with rt.store.write() as tx:
        comp = _locked(rt, who, comp_id)
        team = _team(comp, team_id)
        _captain_only(who, team)
        if store.member(team.id, user_id) is None:
            _forming(comp, tx.now)
            _not_frozen(comp, team)
            if len(store.members_of([team.id])[team.id]) >= comp.team_max:
                raise precondition(
                    f"the team has its {comp.team_max} members (accepted or invited)", "TEAM_FULL", comp
                )
            store.insert_member(
                TeamMember(
                    team=team.id,
                    competition=comp_id,
                    user=user_id,
                    state=INVITED,
                    create_time=tx.now,
                    update_time=tx.now,
                )
            )
            tx.emit(
                "competition.team.invited",
                team_name(comp_id, team.id),
                {"user": f"users/{user_id}", "watch_keys": [name(comp_id)]},
            )
    return _view(team)


def accept_invite(rt: Runtime, who: Principal, comp_id: str, team_id: str) -> TeamView:
    with rt.store.write() as tx:
        comp = _locked(rt, who, comp_id)
        team = _team(comp, team_id)
        row = store.member(team.id, who.user_id)
        if row is None:
            raise _team_not_found(comp_id, team_id)
        if row.state != ACCEPTED:
            _forming(comp, tx.now)
            _not_frozen(comp, team)
            _free_of_teams(comp, who.user_id)
            row.state, row.update_time = ACCEPTED, tx.now
            store.save_member(row)
            tx.emit(
                "competition.team.accepted",
                team_name(comp_id, team.id),
                {"user": f"users/{who.user_id}", "watch_keys": [name(comp_id)]},
            )
    return _view(team)


def remove_member(rt: Runtime, who: Principal, comp_id: str, team_id: str, user_id: str) -> TeamView:
    """The captain removes a member or withdraws an invitation; a user leaves, or declines."""
    with rt.store.write() as tx:
        comp = _locked(rt, who, comp_id)
        team = _team(comp, team_id)
        if user_id != who.user_id:
            _captain_only(who, team)
        if user_id == team.captain_id:
            raise precondition("the captain stays with the team", "CAPTAIN_STAYS", comp)
        row = store.member(team.id, user_id)
        if row is not None:
            _not_frozen(comp, team)
            store.delete_member(row)
            tx.emit(
                "competition.team.removed",
                team_name(comp_id, team.id),
                {"user": f"users/{user_id}", "watch_keys": [name(comp_id)]},
            )
    return _view(team)


def register_team(rt: Runtime, who: Principal, comp_id: str, team_id: str) -> GroupView:
    """The captain registers the accepted members as one group (the team's id is the
    group's). Registering again returns the registrations."""
    comp = get_visible(who, comp_id)
    team = store.find_team(comp_id, team_id)
    if team is None:
        raise _team_not_found(comp_id, team_id)
    _captain_only(who, team)
    accepted = [m.user_id for m in store.members_of([team.id])[team.id] if m.state == ACCEPTED]
    if not comp.team_min <= len(accepted) <= comp.team_max:
        raise precondition(
            f"a team registers with {comp.team_min} to {comp.team_max} accepted members, this one has"
            f" {len(accepted)}",
            "TEAM_SIZE",
            comp,
        )
    return register_group(rt, who, comp_id, accepted, group_id=team.id)


def get_team(who: Principal, comp_id: str, team_id: str) -> TeamView:
    get_visible(who, comp_id)
    team = store.find_team(comp_id, team_id)
    if team is None:
        raise _team_not_found(comp_id, team_id)
    return _view(team)


def list_teams(who: Principal, comp_id: str, page: PageRequest) -> Page[TeamView]:
    get_visible(who, comp_id)
    found = store.teams_page(comp_id, page)
    members = store.members_of([t.id for t in found.items])
    return Page([TeamView(t, members[t.id], _registered(t)) for t in found.items], found.next_token)
