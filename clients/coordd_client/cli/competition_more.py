"""coordctl competition: groups, offers, transfers, tickets and check-in, the live view,
and teams (registered from cli/competition.py)."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

from google.protobuf.json_format import ParseDict

from coordd_client import tickets
from coordd_client.cli.common import Context, emit, enum_word, json_flag, resource_name, table, to_dict
from coordd_client.v1 import ceremony_pb2, competition_pb2


def _comp(text: str) -> str:
    return resource_name("competitions", text)


def _user(text: str) -> str:
    return resource_name("users", text)


def _reg_line(reg: competition_pb2.Registration) -> str:
    state = enum_word(competition_pb2.RegistrationState, reg.state)
    where = f" (waitlist position {reg.position})" if reg.position else ""
    return f"{reg.name} {reg.user}: {state}{where}"


def register(comp: Any) -> None:
    def cmd(name: str, func: Any, helptext: str, *positionals: tuple[str, str]) -> argparse.ArgumentParser:
        parser = json_flag(comp.add_parser(name, help=helptext))
        for arg, text in positionals:
            parser.add_argument(arg, help=text)
        parser.set_defaults(func=func)
        return parser

    reg = ("registration", "competitions/{id}/registrations/{id}")
    group = cmd("register-group", _register_group, "register users as one group (all seats or none)")
    group.add_argument("competition")
    group.add_argument("members", nargs="+", help="users/{id} or ids; you pay their fees")
    cmd("accept", _accept, "accept a seat offered from the waitlist (a group's offer: all of it)", reg)
    cmd("transfer", _transfer, "move a confirmed registration to another user", reg, ("user", "users/{id}"))
    listing = cmd("registrations", _registrations, "a competition's registrations (organizer)")
    listing.add_argument("competition")
    listing.add_argument("--state", help="e.g. confirmed, waitlisted, offered")
    listing.add_argument("--limit", type=int, default=1000)
    ticket = cmd("ticket", _ticket, "your signed ticket for a confirmed registration", reg)
    ticket.add_argument("--out", help="write the ticket (JSON) to this file")
    verify = cmd("verify-ticket", _verify_ticket, "verify a ticket file", ("file", "ticket JSON file"))
    verify.add_argument("--public-key", help="the coordinator's raw Ed25519 key (base64): fully offline")
    verify.add_argument("--competition", help="the ticket must be for this competition")
    check = cmd("check-in", _check_in, "check a registrant in (organizer)")
    check.add_argument("registration", nargs="?", default="", help="competitions/{id}/registrations/{id}")
    check.add_argument("--ticket", help="the participant's ticket file instead")
    cmd(
        "watch",
        _watch,
        "follow a competition's seats and state (JSON lines with --json)",
        ("competition", ""),
    )

    teams = json_flag(comp.add_parser("team", help="teams")).add_subparsers(
        dest="team_command", required=True
    )
    team = ("team", "competitions/{id}/teams/{id}")
    for name, func, helptext, args in (
        ("create", _team_create, "create a team (you are its captain)", [("competition", ""), ("name", "")]),
        ("show", _team_show, "a team and its members", [team]),
        ("list", _team_list, "a competition's teams", [("competition", "")]),
        ("invite", _team_invite, "invite a user (captain)", [team, ("user", "users/{id}")]),
        ("accept", _team_accept, "accept an invitation", [team]),
        ("remove", _team_remove, "remove a member or leave (yourself)", [team, ("user", "users/{id}")]),
        ("register", _team_register, "register the team's accepted members as one (captain)", [team]),
    ):
        parser = json_flag(teams.add_parser(name, help=helptext))
        for arg, text in args:
            parser.add_argument(arg, help=text)
        parser.set_defaults(func=func)


def _print_group(ctx: Context, reply: Any) -> int:
    lines = [f"{reply.group}" + ("" if reply.created else " (already registered)")]
    lines += ["  " + _reg_line(r) for r in reply.registrations]
    emit(ctx, reply, "\n".join(lines))
    return 0


def _register_group(ctx: Context, args: argparse.Namespace) -> int:
    request = competition_pb2.RegisterGroupRequest(
        competition=_comp(args.competition), members=[_user(m) for m in args.members]
    )
    return _print_group(ctx, ctx.client.competition.RegisterGroup(request))


def _accept(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.competition.AcceptOffer(competition_pb2.AcceptOfferRequest(name=args.registration))
    emit(ctx, reply, _reg_line(reply.registration))
    return 0


def _transfer(ctx: Context, args: argparse.Namespace) -> int:
    request = competition_pb2.TransferRegistrationRequest(name=args.registration, user=_user(args.user))
    reply = ctx.client.competition.TransferRegistration(request)
    emit(ctx, reply, _reg_line(reply.registration))
    return 0


def _registrations(ctx: Context, args: argparse.Namespace) -> int:
    state = (
        competition_pb2.RegistrationState.Value(f"REGISTRATION_STATE_{args.state.upper()}")
        if args.state
        else 0
    )
    request = competition_pb2.ListRegistrationsRequest(
        competition=_comp(args.competition), page_size=args.limit, state=state
    )
    reply = ctx.client.competition.ListRegistrations(request)
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    rows = [
        [
            r.name,
            r.user,
            enum_word(competition_pb2.RegistrationState, r.state),
            r.position or "",
            r.group,
            "yes" if r.HasField("check_in_time") else "",
        ]
        for r in reply.registrations
    ]
    table(ctx, "registrations", ["registration", "user", "state", "position", "group", "checked in"], rows)
    return 0


def _ticket(ctx: Context, args: argparse.Namespace) -> int:
    ticket = ctx.client.competition.GetTicket(competition_pb2.GetTicketRequest(name=args.registration)).ticket
    if args.out:
        Path(args.out).write_text(json.dumps(to_dict(ticket), indent=2, sort_keys=True) + "\n")
    emit(ctx, ticket, f"ticket for {args.registration}" + (f" written to {args.out}" if args.out else ""))
    return 0


def _read_ticket(path: str) -> competition_pb2.Ticket:
    return ParseDict(json.loads(Path(path).read_text()), competition_pb2.Ticket())


def _verify_ticket(ctx: Context, args: argparse.Namespace) -> int:
    ticket = _read_ticket(args.file)
    if args.public_key:
        public_key = base64.b64decode(args.public_key)
    else:
        public_key = ctx.client.ceremony.GetCoordinatorKey(ceremony_pb2.GetCoordinatorKeyRequest()).public_key
    competition = _comp(args.competition) if args.competition else None
    try:
        document = tickets.verify_ticket(
            ticket.payload, ticket.signature, public_key, competition=competition
        )
    except tickets.TicketVerificationError as exc:
        emit(ctx, {"verified": False, "error": str(exc)}, f"ticket does NOT verify: {exc}")
        return 1
    emit(
        ctx,
        {"verified": True, "ticket": document},
        f"ticket verified: {document['registration']} for {document['user']}",
    )
    return 0


def _check_in(ctx: Context, args: argparse.Namespace) -> int:
    request = competition_pb2.CheckInRequest(name=args.registration)
    if args.ticket:
        request.ticket.CopyFrom(_read_ticket(args.ticket))
    reply = ctx.client.competition.CheckIn(request)
    note = " (already checked in)" if reply.already_checked_in else " checked in"
    emit(ctx, reply, reply.registration.name + note)
    return 0


def _watch(ctx: Context, args: argparse.Namespace) -> int:
    request = competition_pb2.WatchCompetitionRequest(name=_comp(args.competition))
    for update in ctx.client.competition.WatchCompetition(request, timeout=None):
        c = update.competition
        if ctx.as_json:
            print(json.dumps(to_dict(update), sort_keys=True, separators=(",", ":")), flush=True)
        else:
            state = enum_word(competition_pb2.CompetitionState, c.state)
            print(
                f"{c.name}: {state}, {c.confirmed_count}/{c.capacity} confirmed,"
                f" {c.offered_count} offered, {c.waitlist_entry_count} waiting"
                f" ({c.waitlisted_count} people), {c.checked_in_count} checked in",
                flush=True,
            )
    return 0


def _team_line(team: competition_pb2.Team) -> str:
    members = ", ".join(
        f"{m.user} ({enum_word(competition_pb2.TeamMemberState, m.state)})" for m in team.members
    )
    registered = f", registered as {team.group}" if team.group else ""
    return f"{team.name} {team.display_name!r}: captain {team.captain}{registered}; {members}"


def _team_create(ctx: Context, args: argparse.Namespace) -> int:
    request = competition_pb2.CreateTeamRequest(
        competition=_comp(args.competition), team=competition_pb2.Team(display_name=args.name)
    )
    reply = ctx.client.competition.CreateTeam(request)
    emit(ctx, reply, _team_line(reply.team))
    return 0


def _team_show(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.competition.GetTeam(competition_pb2.GetTeamRequest(name=args.team))
    emit(ctx, reply, _team_line(reply.team))
    return 0


def _team_list(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.competition.ListTeams(
        competition_pb2.ListTeamsRequest(competition=_comp(args.competition), page_size=1000)
    )
    emit(ctx, reply, "\n".join(_team_line(t) for t in reply.teams) or "no teams")
    return 0


def _team_invite(ctx: Context, args: argparse.Namespace) -> int:
    request = competition_pb2.InviteTeamMemberRequest(team=args.team, user=_user(args.user))
    reply = ctx.client.competition.InviteTeamMember(request)
    emit(ctx, reply, _team_line(reply.team))
    return 0


def _team_accept(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.competition.AcceptTeamInvite(competition_pb2.AcceptTeamInviteRequest(team=args.team))
    emit(ctx, reply, _team_line(reply.team))
    return 0


def _team_remove(ctx: Context, args: argparse.Namespace) -> int:
    request = competition_pb2.RemoveTeamMemberRequest(team=args.team, user=_user(args.user))
    reply = ctx.client.competition.RemoveTeamMember(request)
    emit(ctx, reply, _team_line(reply.team))
    return 0


def _team_register(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.competition.RegisterTeam(competition_pb2.RegisterTeamRequest(team=args.team))
    return _print_group(ctx, reply)
