"""Registration: never oversold, exactly once under retries, the deadline, the waitlist,
and the money (entry fees held, refunded, paid out) staying consistent in the ledger."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import grpc

from coordd.domain import competition as rules
from coordd.domain import ledger
from coordd.store.auth.models import User
from coordd.store.competition.models import Competition, CompetitionNotification, Registration
from coordd_client.v1 import competition_pb2
from tests.competition.support import (
    DAY,
    HOUR,
    balance,
    competition_server,
    create,
    fund,
    get,
    reg_state,
    register,
    spec,
    state_name,
    stub,
)
from tests.helpers import rpc_error
from tests.support.server import bearer

__all__ = ["competition_server"]  # the `server` fixture: tokens outlive clock.advance()


def _bulk_users(server, count: int) -> list[tuple[str, str]]:
    """Participants inserted in one statement (hashing 1,000 passwords would dominate)."""
    now = datetime.now(UTC)
    rows = []
    for _ in range(count):
        tag = uuid.uuid4().hex
        rows.append(
            {
                "id": f"u{tag[:25]}",
                "email": f"{tag}@example.com",
                "email_key": f"{tag}@example.com",
                "display_name": tag[:8],
                "password_hash": "!",
                "roles": "participant",
                "create_time": now,
            }
        )
    with server.rt.store.write():
        for start in range(0, count, 200):
            User.insert_many(rows[start : start + 200]).execute()
    return [(r["id"], server.rt.tokens.issue(r["id"], ["participant"], now)[0]) for r in rows]


def test_1000_concurrent_registrations_for_100_seats_never_oversell(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=100)
    users = _bulk_users(server, 1000)
    svc = stub(server)

    def call(token: str) -> competition_pb2.Registration:
        request = competition_pb2.RegisterRequest(competition=comp.name)
        meta = bearer(token, **{"idempotency-key": uuid.uuid4().hex})
        return svc.Register(request, metadata=meta, timeout=120).registration

    with ThreadPoolExecutor(48) as pool:
        replies = list(pool.map(call, [token for _, token in users]))
    states = [reg_state(r.state) for r in replies]
    assert states.count("CONFIRMED") == 100
    assert states.count("WAITLISTED") == 900
    assert sorted(r.position for r in replies if reg_state(r.state) == "WAITLISTED") == list(range(1, 901))
    assert all(r.position == 0 for r in replies if reg_state(r.state) == "CONFIRMED")
    assert len({r.user for r in replies}) == 1000 and len({r.name for r in replies}) == 1000
    comp_id = comp.name.split("/")[1]
    assert Registration.select().where(Registration.competition == comp_id).count() == 1000
    stored = Competition.get_by_id(comp_id)
    assert (stored.confirmed, stored.offered, stored.waitlisted) == (100, 0, 900)
    seen = get(server, org, comp.name)
    assert (seen.confirmed_count, seen.waitlisted_count, seen.free_seats) == (100, 900, 0)
    # One confirmation per confirmed registration went into the outbox, none for the waitlist.
    assert (
        CompetitionNotification.select().where(CompetitionNotification.kind == "confirmation").count() == 100
    )


def test_same_idempotency_key_20_times_concurrently_gives_one_registration(server):
    _, org = server.make_user("organizer")
    user_id, token = server.make_user("participant")
    comp = create(server, org, capacity=5)
    svc = stub(server)
    request = competition_pb2.RegisterRequest(competition=comp.name)
    meta = bearer(token, **{"idempotency-key": "reg-burst"})
    results: list[bytes] = []
    errors: list[Exception] = []
    barrier = threading.Barrier(20)

    def call() -> None:
        try:
            barrier.wait()
            results.append(svc.Register(request, metadata=meta).SerializeToString())
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 20 and len(set(results)) == 1
    assert Registration.select().where(Registration.user == user_id).count() == 1
    assert get(server, org, comp.name).confirmed_count == 1


def test_replay_after_success_returns_the_original_and_a_different_body_is_refused(server):
    _, org = server.make_user("organizer")
    user_id, token = server.make_user("participant")
    comp = create(server, org, capacity=5)
    other = create(server, org, capacity=5)
    svc = stub(server)
    meta = bearer(token, **{"idempotency-key": "reg-1"})
    first, _ = svc.Register.with_call(competition_pb2.RegisterRequest(competition=comp.name), metadata=meta)
    assert first.created and reg_state(first.registration.state) == "CONFIRMED"
    # The registration changes afterwards; the retry still gets the original answer, unexecuted.
    svc.CancelRegistration(
        competition_pb2.CancelRegistrationRequest(name=first.registration.name), metadata=bearer(token)
    )
    again, call2 = svc.Register.with_call(
        competition_pb2.RegisterRequest(competition=comp.name), metadata=meta
    )
    assert again.SerializeToString() == first.SerializeToString()
    assert ("idempotency-replayed", "true") in tuple(call2.initial_metadata())
    assert Registration.get(Registration.user == user_id).state == "CANCELLED"
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        svc.Register,
        competition_pb2.RegisterRequest(competition=other.name),
        metadata=meta,
    )
    assert failure.reason == "IDEMPOTENCY_KEY_REUSED"
    assert Registration.select().where(Registration.competition == other.name.split("/")[1]).count() == 0


def test_registering_twice_with_different_keys_returns_the_existing_registration(server):
    _, org = server.make_user("organizer")
    _, token = server.make_user("participant")
    comp = create(server, org, capacity=5)
    svc = stub(server)
    request = competition_pb2.RegisterRequest(competition=comp.name)
    first = svc.Register(request, metadata=bearer(token, **{"idempotency-key": "a"}))
    second = svc.Register(request, metadata=bearer(token, **{"idempotency-key": "b"}))
    third = svc.Register(request, metadata=bearer(token))
    assert first.created and not second.created and not third.created
    assert first.registration.name == second.registration.name == third.registration.name
    assert get(server, org, comp.name).confirmed_count == 1


def test_the_registration_window_is_enforced_even_before_the_scheduler_runs(server, clock):
    _, org = server.make_user("organizer")
    _, token = server.make_user("participant")
    now = server.rt.now()
    comp = create(
        server,
        org,
        registration_open_time=spec(now).registration_close_time,  # opens in 1 h
        registration_close_time=spec(now).start_time,  # closes in 2 days
    )
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, register, server, token, comp.name)
    assert failure.reason == "REGISTRATION_NOT_OPEN"
    clock.advance(HOUR + 1)
    assert reg_state(register(server, token, comp.name).state) == "CONFIRMED"
    _, late = server.make_user("participant")
    clock.advance(2 * DAY)
    # The deadline is in the seat UPDATE itself: still OPEN in the table, yet refused.
    assert Competition.get_by_id(comp.name.split("/")[1]).state in ("DRAFT", "OPEN")
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, register, server, late, comp.name)
    assert failure.reason == "REGISTRATION_CLOSED"
    assert Registration.select().count() == 1


def test_cancel_promotes_the_waitlist_head_straight_to_confirmed_when_free(server):
    _, org = server.make_user("organizer")
    tokens = [server.make_user("participant")[1] for _ in range(4)]
    comp = create(server, org, capacity=2)
    regs = [register(server, t, comp.name) for t in tokens]
    assert [(reg_state(r.state), r.position) for r in regs] == [
        ("CONFIRMED", 0),
        ("CONFIRMED", 0),
        ("WAITLISTED", 1),
        ("WAITLISTED", 2),
    ]
    svc = stub(server)
    cancelled = svc.CancelRegistration(
        competition_pb2.CancelRegistrationRequest(name=regs[0].name), metadata=bearer(tokens[0])
    ).registration
    assert reg_state(cancelled.state) == "CANCELLED"
    mine = {
        r.name: r
        for t in tokens
        for r in svc.ListMyRegistrations(
            competition_pb2.ListMyRegistrationsRequest(), metadata=bearer(t)
        ).registrations
    }
    assert reg_state(mine[regs[2].name].state) == "CONFIRMED"
    assert (reg_state(mine[regs[3].name].state), mine[regs[3].name].position) == ("WAITLISTED", 1)
    seen = get(server, org, comp.name)
    assert (seen.confirmed_count, seen.waitlisted_count) == (2, 1)
    notes = rules.notifications_of(comp.name.split("/")[1], rules.CONFIRMATION)
    assert len(notes) == 3 and notes[-1].payload.get("promoted") is True
    # Someone else's registration is not found, not merely forbidden.
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        svc.CancelRegistration,
        competition_pb2.CancelRegistrationRequest(name=regs[1].name),
        metadata=bearer(tokens[3]),
    )


def test_paid_waitlist_gets_offers_that_expire_and_move_on(server, clock):
    _, org = server.make_user("organizer")
    people = [server.make_user("participant") for _ in range(3)]
    for user_id, _ in people:
        fund(server, user_id, 1000)
    comp = create(server, org, capacity=1, entry_fee=300, offer_hold_duration=2 * HOUR)
    regs = [register(server, t, comp.name) for _, t in people]
    assert balance(people[0][0]) == (700, 300)
    assert balance(people[1][0]) == (1000, 0), "the waitlist pays nothing"
    svc = stub(server)
    svc.CancelRegistration(
        competition_pb2.CancelRegistrationRequest(name=regs[0].name), metadata=bearer(people[0][1])
    )
    assert balance(people[0][0]) == (1000, 0), "refunded on cancel"
    offered = Registration.get_by_id(regs[1].name.split("/")[-1])
    assert offered.state == "OFFERED" and offered.fee_held == 0
    assert get(server, org, comp.name).free_seats == 0, "an offered seat is taken"
    # The offer lapses unanswered: the seat goes to the next person.
    clock.advance(2 * HOUR + 1)
    assert rules.expire_offers(server.rt) == 1
    failure = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        svc.AcceptOffer,
        competition_pb2.AcceptOfferRequest(name=regs[1].name),
        metadata=bearer(people[1][1]),
    )
    assert failure.reason == "NO_OPEN_OFFER"
    accepted = svc.AcceptOffer(
        competition_pb2.AcceptOfferRequest(name=regs[2].name), metadata=bearer(people[2][1])
    ).registration
    assert (reg_state(accepted.state), accepted.fee_held) == ("CONFIRMED", 300)
    assert balance(people[2][0]) == (700, 300)
    assert ledger.check_consistency() == []


def test_register_without_funds_fails_and_takes_no_seat(server):
    _, org = server.make_user("organizer")
    _, token = server.make_user("participant")
    comp = create(server, org, capacity=1, entry_fee=50)
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, register, server, token, comp.name)
    assert failure.reason == "INSUFFICIENT_FUNDS"
    assert Registration.select().count() == 0
    assert get(server, org, comp.name).free_seats == 1


def test_paid_competition_settles_with_prizes_and_a_consistent_ledger(server, clock):
    org_id, org = server.make_user("organizer")
    people = [server.make_user("participant") for _ in range(4)]
    for user_id, _ in people:
        fund(server, user_id, 1000)
    comp = create(server, org, capacity=3, entry_fee=333, prize_split_bps=[5000, 3000])
    for _, token in people:
        register(server, token, comp.name)  # three confirmed, one waitlisted
    clock.advance(4 * DAY)
    rules.advance_due(server.rt)
    ranking = [competition_pb2.RankedScore(user=f"users/{people[i][0]}", score=10.0 - i) for i in (2, 0, 1)]
    reply = stub(server).PublishResults(
        competition_pb2.PublishResultsRequest(competition=comp.name, ranking=ranking), metadata=bearer(org)
    )
    assert state_name(reply.competition.state) == "SETTLED"
    pool = 999
    assert balance(people[2][0]) == (1000 - 333 + pool * 5000 // 10000, 0)
    assert balance(people[0][0]) == (1000 - 333 + pool * 3000 // 10000, 0)
    assert balance(people[1][0]) == (1000 - 333, 0)
    assert balance(people[3][0]) == (1000, 0), "the waitlisted never paid"
    assert balance(org_id) == (pool - 499 - 299, 0), "what the split leaves goes to the organizer"
    assert ledger.check_consistency() == []


def test_cancelled_paid_competition_refunds_everyone(server):
    _, org = server.make_user("organizer")
    people = [server.make_user("participant") for _ in range(3)]
    for user_id, _ in people:
        fund(server, user_id, 500)
    comp = create(server, org, capacity=2, entry_fee=200)
    for _, token in people:
        register(server, token, comp.name)
    stub(server).CancelCompetition(
        competition_pb2.CancelCompetitionRequest(name=comp.name), metadata=bearer(org)
    )
    for user_id, _ in people:
        assert balance(user_id) == (500, 0)
    assert Registration.select().where(Registration.fee_held > 0).count() == 0
    assert ledger.check_consistency() == []
    assert len(rules.notifications_of(comp.name.split("/")[1], rules.CANCELLATION)) == 3


def test_concurrent_cancels_and_registrations_keep_counters_and_waitlist_exact(server):
    """Cancels (which lock the competition row and promote) racing new registrations (which
    insert first, then take the row): no deadlock, no error, counters equal the rows."""
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=20)
    first = _bulk_users(server, 40)
    svc = stub(server)
    regs = {}
    for user_id, token in first:
        regs[user_id] = register(server, token, comp.name)
    leaving = [(u, t) for u, t in first if reg_state(regs[u].state) == "CONFIRMED"][:10]
    arriving = _bulk_users(server, 30)

    def cancel(item):
        user_id, token = item
        request = competition_pb2.CancelRegistrationRequest(name=regs[user_id].name)
        return svc.CancelRegistration(request, metadata=bearer(token), timeout=60)

    def join(item):
        return register(server, item[1], comp.name)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(cancel, i) for i in leaving] + [pool.submit(join, i) for i in arriving]
        for future in futures:
            future.result()
    comp_id = comp.name.split("/")[1]
    rows = Registration.select().where(Registration.competition == comp_id)
    by_state = {s: [r for r in rows if r.state == s] for s in ("CONFIRMED", "WAITLISTED", "CANCELLED")}
    stored = Competition.get_by_id(comp_id)
    assert stored.confirmed == len(by_state["CONFIRMED"]) == 20
    assert stored.waitlisted == len(by_state["WAITLISTED"]) == 40 - 10 + 30 - 20
    assert len(by_state["CANCELLED"]) == 10
    listed = svc.ListRegistrations(
        competition_pb2.ListRegistrationsRequest(
            competition=comp.name, state=competition_pb2.REGISTRATION_STATE_WAITLISTED, page_size=100
        ),
        metadata=bearer(org),
    ).registrations
    assert sorted(r.position for r in listed) == list(range(1, len(listed) + 1))


def test_concurrent_paid_registrations_fail_alone_when_short_of_funds(server):
    """Registrations that arrive together may share one transaction (PostgreSQL); one
    caller's missing funds must undo only that caller's registration."""
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=30, entry_fee=100)
    people = _bulk_users(server, 40)
    funded = {user_id for user_id, _ in people[::2]}
    for user_id in funded:
        fund(server, user_id, 100)

    def call(item):
        try:
            return reg_state(register(server, item[1], comp.name).state)
        except grpc.RpcError as exc:
            return exc.code()

    with ThreadPoolExecutor(20) as pool:
        outcomes = dict(zip([u for u, _ in people], pool.map(call, people), strict=True))
    assert all(outcomes[u] == "CONFIRMED" for u in funded)
    assert all(outcomes[u] == grpc.StatusCode.FAILED_PRECONDITION for u, _ in people if u not in funded)
    comp_id = comp.name.split("/")[1]
    assert Registration.select().where(Registration.competition == comp_id).count() == 20
    assert Competition.get_by_id(comp_id).confirmed == 20
    assert all(balance(u) == (0, 100) for u in funded)
    assert ledger.check_consistency() == []
