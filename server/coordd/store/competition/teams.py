"""Team reads and writes (teams forming for a competition, and their members)."""

from __future__ import annotations

from coordd.store.competition.models import ACCEPTED, Team, TeamMember
from coordd.store.db import Store
from coordd.store.paging import Page, PageRequest, keyset_page


def find_team(comp_id: str, team_id: str) -> Team | None:
    return Team.get_or_none((Team.id == team_id) & (Team.competition == comp_id))


def lock_team(store: Store, comp_id: str, team_id: str) -> Team | None:
    """The team row, for change (locked until commit on PostgreSQL): invitations and
    acceptances of one team serialize on it, so its size limit holds."""
    query = Team.select().where((Team.id == team_id) & (Team.competition == comp_id))
    if store.is_postgres:
        query = query.for_update()
    return query.first()


def team_named(comp_id: str, display_name: str) -> Team | None:
    return Team.get_or_none((Team.competition == comp_id) & (Team.display_name == display_name))


def insert_team(team: Team) -> None:
    team.save(force_insert=True)


def save_team(team: Team) -> None:
    team.save()


def members_of(team_ids: list[str]) -> dict[str, list[TeamMember]]:
    """Each team's members, in the order they were added."""
    out: dict[str, list[TeamMember]] = {t: [] for t in team_ids}
    if team_ids:
        for m in TeamMember.select().where(TeamMember.team.in_(team_ids)).order_by(TeamMember.id):
            out[m.team_id].append(m)
    return out


def member(team_id: str, user_id: str) -> TeamMember | None:
    return TeamMember.get_or_none((TeamMember.team == team_id) & (TeamMember.user == user_id))


def accepted_team_of(comp_id: str, user_id: str) -> TeamMember | None:
    """The user's ACCEPTED membership in a team of this competition, if any."""
    return TeamMember.get_or_none(
        (TeamMember.competition == comp_id) & (TeamMember.user == user_id) & (TeamMember.state == ACCEPTED)
    )


def insert_member(row: TeamMember) -> None:
    row.save(force_insert=True)


def save_member(row: TeamMember) -> None:
    row.save()


def delete_member(row: TeamMember) -> None:
    row.delete_instance()


def teams_page(comp_id: str, page: PageRequest) -> Page[Team]:
    query = Team.select().where(Team.competition == comp_id)
    return keyset_page(query, Team.id, page, filters={"c": comp_id})
