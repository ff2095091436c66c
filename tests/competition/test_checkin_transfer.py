"""At the event: signed tickets verified offline, check-in by the organizer (by name or by
ticket) counted once, and a transfer that moves a confirmed seat to another user."""

from __future__ import annotations

import grpc
import pytest

from coordd_client.tickets import TicketVerificationError, verify_ticket
from coordd_client.v1 import competition_pb2
from tests.competition.support import (
    DAY,
    HOUR,
    balance,
    bulk_users,
    competition_server,
    create,
    fund,
    get,
    reg_state,
    register,
    stub,
)
from tests.helpers import rpc_error
from tests.support.server import bearer

__all__ = ["competition_server"]


def _ticket(server, token: str, reg_name: str) -> competition_pb2.Ticket:
    request = competition_pb2.GetTicketRequest(name=reg_name)
    return stub(server).GetTicket(request, metadata=bearer(token)).ticket


def _check_in(server, token: str, name: str = "", ticket: competition_pb2.Ticket | None = None):
    request = competition_pb2.CheckInRequest(name=name, ticket=ticket)
    return stub(server).CheckIn(request, metadata=bearer(token))


def _transfer(server, token: str, reg_name: str, user_id: str):
    request = competition_pb2.TransferRegistrationRequest(name=reg_name, user=f"users/{user_id}")
    return stub(server).TransferRegistration(request, metadata=bearer(token)).registration


def test_a_signed_ticket_verifies_offline_and_checks_in_once(server, clock):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=5)
    ((user_id, token),) = bulk_users(server, 1)
    reg = register(server, token, comp.name)
    ticket = _ticket(server, token, reg.name)
    document = verify_ticket(
        ticket.payload, ticket.signature, server.rt.signer.public_key, competition=comp.name
    )
    assert (document["registration"], document["user"]) == (reg.name, f"users/{user_id}")
    assert ticket.public_key == server.rt.signer.public_key
    forged = ticket.payload.replace(user_id.encode(), b"u" + b"1" * 25)
    with pytest.raises(TicketVerificationError):
        verify_ticket(forged, ticket.signature, server.rt.signer.public_key)
    with pytest.raises(TicketVerificationError):
        verify_ticket(
            ticket.payload, ticket.signature, server.rt.signer.public_key, competition="competitions/x"
        )
    # Too early: check-in opens 24 h before the start (two days away).
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _check_in, server, org, ticket=ticket)
    assert failure.reason == "CHECK_IN_CLOSED"
    clock.advance(DAY + HOUR)
    first = _check_in(server, org, ticket=ticket)
    assert not first.already_checked_in and first.registration.HasField("check_in_time")
    again = _check_in(server, org, name=reg.name)
    assert again.already_checked_in and again.registration.check_in_time == first.registration.check_in_time
    assert get(server, org, comp.name).checked_in_count == 1
    bad = competition_pb2.Ticket(payload=forged, signature=ticket.signature)
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _check_in, server, org, ticket=bad)
    assert "ticket" in failure.violations


def test_only_the_owner_checks_in_and_only_confirmed_registrations(server, clock):
    _, org = server.make_user("organizer")
    _, other_org = server.make_user("organizer")
    comp = create(server, org, capacity=1)
    (_, first_tok), (_, second_tok) = bulk_users(server, 2)
    seated = register(server, first_tok, comp.name)
    waiting = register(server, second_tok, comp.name)
    clock.advance(DAY + HOUR)
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, _check_in, server, first_tok, name=seated.name)
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, _check_in, server, other_org, name=seated.name)
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _check_in, server, org, name=waiting.name)
    assert failure.reason == "NOT_CONFIRMED"
    rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _ticket, server, second_tok, waiting.name)
    rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _check_in, server, org)
    assert get(server, org, comp.name).checked_in_count == 0


def test_a_transfer_keeps_the_seat_and_the_fee_and_voids_the_old_ticket(server, clock):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=1, entry_fee=100)
    (a, a_tok), (b, b_tok), (c, c_tok) = bulk_users(server, 3)
    for user_id in (a, c):
        fund(server, user_id, 1000)
    reg = register(server, a_tok, comp.name)
    waiting = register(server, c_tok, comp.name)
    old_ticket = _ticket(server, a_tok, reg.name)
    moved = _transfer(server, a_tok, reg.name, b)
    assert (moved.name, moved.user, moved.payer) == (reg.name, f"users/{b}", f"users/{a}")
    assert reg_state(moved.state) == "CONFIRMED" and moved.confirm_time == reg.confirm_time
    assert balance(a) == (900, 100) and balance(b) == (0, 0)
    seen = get(server, org, comp.name)
    assert (seen.confirmed_count, seen.waitlisted_count) == (1, 1)
    # The waitlist did not move: the seat never came free.
    listed = stub(server).ListMyRegistrations(
        competition_pb2.ListMyRegistrationsRequest(), metadata=bearer(c_tok)
    )
    assert [(r.name, r.position) for r in listed.registrations] == [(waiting.name, 1)]
    # Nobody can take it over who holds or waits for a seat; a waitlisted one cannot move.
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _transfer, server, b_tok, reg.name, c)
    assert failure.reason == "ALREADY_REGISTERED"
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _transfer, server, c_tok, waiting.name, a)
    assert failure.reason == "NOT_CONFIRMED"
    rpc_error(grpc.StatusCode.NOT_FOUND, _transfer, server, a_tok, waiting.name, a)  # not a's to move
    clock.advance(DAY + HOUR)
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _check_in, server, org, ticket=old_ticket)
    assert failure.reason == "TICKET_SUPERSEDED"
    assert not _check_in(server, org, ticket=_ticket(server, b_tok, reg.name)).already_checked_in
    rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _transfer, server, b_tok, reg.name, a)  # checked in


def test_a_cancelled_transfer_refunds_whoever_paid(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=2, entry_fee=100)
    (a, a_tok), (b, b_tok) = bulk_users(server, 2)
    fund(server, a, 1000)
    reg = register(server, a_tok, comp.name)
    # b had registered before and cancelled: that old registration makes way.
    fund(server, b, 100)
    old = register(server, b_tok, comp.name)
    stub(server).CancelRegistration(
        competition_pb2.CancelRegistrationRequest(name=old.name), metadata=bearer(b_tok)
    )
    _transfer(server, a_tok, reg.name, b)
    stub(server).CancelRegistration(
        competition_pb2.CancelRegistrationRequest(name=reg.name), metadata=bearer(b_tok)
    )
    assert balance(a) == (1000, 0) and balance(b) == (100, 0)
    assert get(server, org, comp.name).confirmed_count == 0
