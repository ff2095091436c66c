"""coordctl competition list|show|watch|register|register-group|accept|cancel|transfer|
registrations|ticket|verify-ticket|check-in|submit|results, and coordctl competition team ...

Every command takes `--json` after it too (`coordctl competition list --json`); the
streaming one (`watch`) prints JSON lines: one compact document per line."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

from coordd_client import results as signed_results
from coordd_client.cli import competition_more
from coordd_client.cli.common import Context, emit, enum_word, json_flag, resource_name, table
from coordd_client.v1 import ceremony_pb2, competition_pb2


def _state(value: int, enum: Any) -> str:
    return enum_word(enum, value)


def _name(text: str) -> str:
    return resource_name("competitions", text)


def register(sub: Any) -> None:
    comp = json_flag(sub.add_parser("competition", help="competitions")).add_subparsers(
        dest="competition_command", required=True
    )
    listing = json_flag(comp.add_parser("list", help="competitions, newest first"))
    listing.add_argument("--state", help="e.g. open, running, ended")
    listing.add_argument("--tag")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(func=_list)
    for name, func, helptext in (
        ("show", _show, "one competition with its seats"),
        ("register", _register, "register (retry-safe: a retry returns the same registration)"),
        ("results", _results, "the signed results, verified offline against the coordinator key"),
    ):
        cmd = json_flag(comp.add_parser(name, help=helptext))
        cmd.add_argument("competition", help="competitions/{id} or the id")
        if name == "results":
            cmd.add_argument("--key-id", help="pin the coordinator key id you trust")
        cmd.set_defaults(func=func)
    cancel = json_flag(comp.add_parser("cancel", help="cancel your registration (frees the seat)"))
    cancel.add_argument("registration", help="competitions/{id}/registrations/{id}")
    cancel.set_defaults(func=_cancel)
    submit = json_flag(
        comp.add_parser("submit", help="submit (or replace) your entry while the competition runs")
    )
    submit.add_argument("competition")
    source = submit.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="send the file's bytes")
    source.add_argument("--uri", help="point at the entry elsewhere (needs --digest)")
    submit.add_argument("--digest", help="sha256 of the --uri content (hex, or sha256:<hex>)")
    submit.set_defaults(func=_submit)
    competition_more.register(comp)


def _list(ctx: Context, args: argparse.Namespace) -> int:
    state = (
        competition_pb2.CompetitionState.Value(f"COMPETITION_STATE_{args.state.upper()}") if args.state else 0
    )
    reply = ctx.client.competition.ListCompetitions(
        competition_pb2.ListCompetitionsRequest(page_size=args.limit, state=state, tag=args.tag or "")
    )
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    table(
        ctx,
        "competitions",
        ["competition", "title", "state", "capacity", "fee"],
        [
            [c.name, c.title, _state(c.state, competition_pb2.CompetitionState), c.capacity, c.entry_fee]
            for c in reply.competitions
        ],
    )
    return 0


def _show(ctx: Context, args: argparse.Namespace) -> int:
    c = ctx.client.competition.GetCompetition(
        competition_pb2.GetCompetitionRequest(name=_name(args.competition))
    )
    comp = c.competition
    emit(
        ctx,
        comp,
        f"{comp.name} {comp.title!r}: {_state(comp.state, competition_pb2.CompetitionState)}, "
        f"capacity {comp.capacity}, fee {comp.entry_fee}",
    )
    return 0


def _register(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.competition.Register(
        competition_pb2.RegisterRequest(competition=_name(args.competition))
    )
    reg = reply.registration
    state = _state(reg.state, competition_pb2.RegistrationState)
    where = f" (waitlist position {reg.position})" if reg.position else ""
    emit(ctx, reply, f"{reg.name}: {state}{where}" + ("" if reply.created else " (already registered)"))
    return 0


def _cancel(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.competition.CancelRegistration(
        competition_pb2.CancelRegistrationRequest(name=args.registration)
    )
    reg = reply.registration
    emit(ctx, reply, f"{reg.name}: {_state(reg.state, competition_pb2.RegistrationState)}")
    return 0


def _submit(ctx: Context, args: argparse.Namespace) -> int:
    if args.file:
        data = Path(args.file).read_bytes()
        request = competition_pb2.SubmitEntryRequest(
            competition=_name(args.competition),
            payload=data,
            digest="sha256:" + hashlib.sha256(data).hexdigest(),
        )
    else:
        digest = args.digest or ""
        if digest and not digest.startswith("sha256:"):
            digest = "sha256:" + digest
        request = competition_pb2.SubmitEntryRequest(
            competition=_name(args.competition), uri=args.uri, digest=digest
        )
    entry = ctx.client.competition.SubmitEntry(request).entry
    emit(ctx, entry, f"{entry.name} submitted")
    return 0


def _results(ctx: Context, args: argparse.Namespace) -> int:
    signed = ctx.client.competition.GetResults(
        competition_pb2.GetResultsRequest(competition=_name(args.competition))
    ).results
    # Trust the coordinator key served by its own RPC (or the pinned id), not the copy in the reply.
    key = ctx.client.ceremony.GetCoordinatorKey(ceremony_pb2.GetCoordinatorKeyRequest())
    if args.key_id and key.key_id != args.key_id:
        emit(
            ctx,
            {"verified": False, "error": f"coordinator key is {key.key_id}, pinned {args.key_id}"},
            f"coordinator key {key.key_id} is not the pinned {args.key_id}",
        )
        return 1
    try:
        document = signed_results.verify_results(
            signed.payload, signed.signature, key.public_key, competition=_name(args.competition)
        )
    except signed_results.ResultsVerificationError as exc:
        emit(ctx, {"verified": False, "error": str(exc)}, f"results do NOT verify: {exc}")
        return 1
    if ctx.as_json:
        emit(ctx, {"verified": True, "key_id": key.key_id, "results": document})
        return 0
    print(f"results verified with coordinator key {key.key_id}")
    table(
        ctx,
        "ranking",
        ["rank", "user", "score", "prize"],
        [
            [row.get("rank"), row.get("user"), row.get("score"), row.get("prize", 0)]
            for row in document["ranking"]
        ],
    )
    return 0
