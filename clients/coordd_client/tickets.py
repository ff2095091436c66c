"""Offline verification of competition tickets (CompetitionService.GetTicket).

Pure Python + `cryptography`: a scanner at the door holding the coordinator's public key
(pinned by its key id) checks a ticket without reaching the daemon. The coordinator signs
`TICKET_CONTEXT + payload` with Ed25519, where `payload` is canonical JSON naming the
competition, the registration and its holder. Verify the exact bytes received, then parse.
A ticket proves a seat was CONFIRMED when it was issued; `CheckIn` with it also checks the
seat was not cancelled or transferred since.

    from coordd_client.tickets import verify_ticket
    doc = verify_ticket(t.payload, t.signature, trusted_public_key, competition="competitions/...")
    doc["user"], doc["registration"]
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from coordd_client.results import key_id

TICKET_CONTEXT = b"coordd.competition.ticket.v1\n"

__all__ = ["TICKET_CONTEXT", "TicketVerificationError", "verify_ticket"]


class TicketVerificationError(Exception):
    """The signature does not match, or the payload is not a ticket (for this competition)."""


def verify_ticket(
    payload: bytes, signature: bytes, public_key: bytes, competition: str | None = None
) -> dict[str, Any]:
    """Returns the verified ticket document; raises TicketVerificationError otherwise.

    `public_key` is the raw 32-byte Ed25519 key you trust; `competition`, when given, must
    be the ticket's competition, so a ticket for one event does not open another's door."""
    if len(public_key) != 32:
        raise TicketVerificationError("public_key must be a raw 32-byte Ed25519 key")
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, TICKET_CONTEXT + payload)
    except InvalidSignature:
        raise TicketVerificationError("signature does not match the ticket payload") from None
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TicketVerificationError(f"payload is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("registration"), str):
        raise TicketVerificationError("payload is not a ticket")
    if document.get("key_id") != key_id(public_key):
        raise TicketVerificationError("payload names a different signing key")
    if competition is not None and document.get("competition") != competition:
        raise TicketVerificationError(f"ticket is for {document.get('competition')!r}, not {competition!r}")
    return document
