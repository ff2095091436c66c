"""coordctl ceremony list | show | status | participants | open | pause | resume | attestation,
and the coordinator key coordctl trusts.

The key that signs receipts is pinned: given explicitly (`--public-key`), or trusted on first
use and stored with the saved login (config.json, `coordinator_keys` per target). A daemon
that later presents another key is refused: a transcript is never checked with the key of
the daemon being checked unless the user said to trust it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
from pathlib import Path
from typing import Any

from coordd_client import transcript as transcript_check
from coordd_client.cli.common import Context, emit, enum_word, resource_name, save_config, table, to_dict
from coordd_client.v1 import ceremony_pb2 as pb


class KeyMismatch(SystemExit):
    pass


def _name(text: str) -> str:
    return resource_name("ceremonies", text)


def parse_key(text: str) -> bytes:
    """A raw 32-byte Ed25519 key given as hex or base64, or a file holding either."""
    value = text.strip()
    path = Path(value)
    if len(value) < 200 and path.is_file():
        value = path.read_text().strip()
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            key = decode(value)
        except (ValueError, binascii.Error):
            continue
        if len(key) == 32:
            return key
    raise SystemExit("error: --public-key must be a raw 32-byte Ed25519 key in hex or base64 (or a file)")


def coordinator_key(ctx: Context, explicit: str | None = None) -> tuple[bytes, str]:
    """The coordinator key to check receipts with, and where it came from: given, pinned, or
    (first use) fetched and pinned now. Refuses a daemon whose key differs from the pin."""
    served = ctx.client.ceremony.GetCoordinatorKey(pb.GetCoordinatorKeyRequest()).public_key
    if explicit:
        key = parse_key(explicit)
        if served != key:
            raise KeyMismatch(
                f"error: the daemon's coordinator key {transcript_check.key_id(served)} is not the given "
                f"{transcript_check.key_id(key)}"
            )
        return key, "given"
    pins = ctx.config.setdefault("coordinator_keys", {})
    pinned = pins.get(ctx.target)
    if pinned:
        key = bytes.fromhex(pinned)
        if served != key:
            raise KeyMismatch(
                f"error: {ctx.target} now presents coordinator key {transcript_check.key_id(served)}, "
                f"not {transcript_check.key_id(key)} pinned on first use; if the operator rotated it, "
                "check the new key out of band and give it with --public-key"
            )
        return key, "pinned"
    pins[ctx.target] = served.hex()
    save_config(ctx.config)
    print(
        f"note: trusting coordinator key {transcript_check.key_id(served)} of {ctx.target} on first use "
        "(pinned in the saved login)",
        file=sys.stderr,
    )
    return served, "first use"


def register(cer: Any) -> None:
    ls = cer.add_parser("list", help="ceremonies, oldest first")
    ls.add_argument("--state", choices=["scheduled", "opened", "paused", "closed", "finalized"])
    ls.set_defaults(func=_list)
    show = cer.add_parser("show", help="one ceremony: its settings and verifier")
    show.add_argument("ceremony")
    show.set_defaults(func=_show)
    st = cer.add_parser("status", help="a ceremony's circuits: queue, current contributor, progress")
    st.add_argument("ceremony")
    st.set_defaults(func=_status)
    parts = cer.add_parser("participants", help="(coordinator) every participant and where they are")
    parts.add_argument("ceremony")
    parts.add_argument("--status", help="only this status, e.g. waiting")
    parts.set_defaults(func=_participants)
    for verb, rpc, request, text in (
        (
            "open",
            "OpenCeremony",
            pb.OpenCeremonyRequest,
            "(coordinator) open now (every circuit has a genesis)",
        ),
        ("pause", "PauseCeremony", pb.PauseCeremonyRequest, "(coordinator) start no new turns"),
        ("resume", "ResumeCeremony", pb.ResumeCeremonyRequest, "(coordinator) start turns again"),
    ):
        cmd = cer.add_parser(verb, help=text)
        cmd.add_argument("ceremony")
        cmd.set_defaults(func=_state_change(rpc, request))
    att = cer.add_parser("attestation", help="a ready-to-publish attestation of your contributions")
    att.add_argument("ceremony")
    att.add_argument("--public-key", help="the coordinator key you trust (hex, base64 or a file)")
    att.add_argument("--output", help="write it to this file instead of standard output")
    att.set_defaults(func=_attestation)


def _verifier(c: pb.Ceremony) -> str:
    name = c.verifier.name or ("command" if c.verifier.command else "none")
    return f"{name} (UNVERIFIED: size and hash only)" if c.verifier.unverified else name


def _list(ctx: Context, args: argparse.Namespace) -> int:
    state = pb.CeremonyState.Value(f"CEREMONY_STATE_{args.state.upper()}") if args.state else 0
    found: list[pb.Ceremony] = []
    token = ""
    while True:
        reply = ctx.client.ceremony.ListCeremonies(
            pb.ListCeremoniesRequest(page_size=200, page_token=token, state=state)
        )
        found.extend(reply.ceremonies)
        token = reply.next_page_token
        if not token:
            break
    if ctx.as_json:
        emit(ctx, {"ceremonies": [to_dict(c) for c in found]})
        return 0
    table(
        ctx,
        "ceremonies",
        ["name", "prefix", "title", "state", "verifier"],
        [[c.name, c.prefix, c.title, enum_word(pb.CeremonyState, c.state), _verifier(c)] for c in found],
    )
    return 0


def _show(ctx: Context, args: argparse.Namespace) -> int:
    c = ctx.client.ceremony.GetCeremony(pb.GetCeremonyRequest(name=_name(args.ceremony))).ceremony
    t = c.timeout
    human = "\n".join(
        [
            f"{c.name}  {c.title}  ({c.prefix})",
            f"  state:     {enum_word(pb.CeremonyState, c.state)}",
            f"  opens:     {c.start_time.ToJsonString()}   closes: {c.end_time.ToJsonString()}",
            f"  turns:     {enum_word(pb.TimeoutPolicy, t.policy)}, fixed {t.fixed_timeout.seconds}s, "
            f"start window {t.start_window.seconds}s, penalty {t.penalty.seconds}s",
            f"  verifier:  {_verifier(c)}",
            f"  retries:   {c.upload_retries} damaged uploads may be resent per turn",
        ]
    )
    emit(ctx, c, human)
    return 0


def _status(ctx: Context, args: argparse.Namespace) -> int:
    name = _name(args.ceremony)
    c = ctx.client.ceremony.GetCeremony(pb.GetCeremonyRequest(name=name)).ceremony
    circuits = ctx.client.ceremony.ListCircuits(pb.ListCircuitsRequest(parent=name)).circuits
    if ctx.as_json:
        emit(ctx, {"ceremony": to_dict(c), "circuits": [to_dict(k) for k in circuits]})
        return 0
    print(f"{c.name} {enum_word(pb.CeremonyState, c.state)}; verifier {_verifier(c)}")
    table(
        ctx,
        "circuits",
        ["circuit", "valid", "waiting", "contributing now", "avg contribution", "avg verification", "final"],
        [
            [
                k.display_name,
                k.valid_contributions,
                k.waiting_count,
                k.current_contributor or "-",
                f"{k.average_contribution_time.ToTimedelta().total_seconds():.0f}s",
                f"{k.average_verification_time.ToTimedelta().total_seconds():.1f}s",
                "yes" if k.finalized else "no",
            ]
            for k in circuits
        ],
    )
    return 0


def _participants(ctx: Context, args: argparse.Namespace) -> int:
    status = pb.ParticipantStatus.Value(f"PARTICIPANT_STATUS_{args.status.upper()}") if args.status else 0
    found: list[pb.Participant] = []
    token = ""
    while True:
        reply = ctx.client.ceremony.ListParticipants(
            pb.ListParticipantsRequest(
                parent=_name(args.ceremony), page_size=500, page_token=token, status=status
            )
        )
        found.extend(reply.participants)
        token = reply.next_page_token
        if not token:
            break
    if ctx.as_json:
        emit(ctx, {"participants": [to_dict(p) for p in found]})
        return 0
    table(
        ctx,
        "participants",
        ["participant", "user", "status", "circuit", "done", "timeouts"],
        [
            [
                p.name.rsplit("/", 1)[-1],
                p.user,
                enum_word(pb.ParticipantStatus, p.status),
                p.circuit.rsplit("/", 1)[-1] or "-",
                p.completed_circuits,
                p.timeouts_count,
            ]
            for p in found
        ],
    )
    return 0


def _state_change(rpc: str, request: Any) -> Any:
    def run(ctx: Context, args: argparse.Namespace) -> int:
        c = getattr(ctx.client.ceremony, rpc)(request(name=_name(args.ceremony))).ceremony
        emit(ctx, c, f"{c.name} {enum_word(pb.CeremonyState, c.state)}")
        return 0

    return run


def _attestation(ctx: Context, args: argparse.Namespace) -> int:
    name = _name(args.ceremony)
    key, source = coordinator_key(ctx, args.public_key)
    me = ctx.client.ceremony.GetMyParticipation(pb.GetMyParticipationRequest(ceremony=name)).participant
    transcript = ctx.anonymous_client().ceremony.GetTranscript(pb.GetTranscriptRequest(ceremony=name))
    try:
        text = transcript_check.attestation(transcript, me.name, key)
    except transcript_check.ReceiptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.output:
        Path(args.output).write_text(text)
    if ctx.as_json:
        emit(
            ctx,
            {
                "attestation": text,
                "participant": me.name,
                "key_id": transcript_check.key_id(key),
                "key": source,
            },
        )
    elif not args.output:
        print(text, end="")
    else:
        print(f"attestation written to {args.output}")
    return 0
