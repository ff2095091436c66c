"""Group registration: N users register as one, all seats or none, wait on the waitlist
as one entry, and are served in strict order (a head group that does not fit waits, and
nobody passes it)."""

from __future__ import annotations

import csv
import io
import random
import threading
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import grpc

from coordd.domain import competition as rules
from coordd.store.competition.models import Competition, Registration
from coordd_client.v1 import competition_pb2
from tests.competition.support import (
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
from tests.helpers import RpcFailure, rpc_error
from tests.support.server import bearer

__all__ = ["competition_server"]


def _group(server, token: str, comp_name: str, members: list[str], key: str = ""):
    meta = bearer(token, **({"idempotency-key": key} if key else {}))
    request = competition_pb2.RegisterGroupRequest(
        competition=comp_name, members=[f"users/{m}" for m in members]
    )
    return stub(server).RegisterGroup(request, metadata=meta, timeout=120)


def _cancel(server, token: str, reg_name: str):
    request = competition_pb2.CancelRegistrationRequest(name=reg_name)
    return stub(server).CancelRegistration(request, metadata=bearer(token)).registration


def _rows(comp_name: str) -> list[Registration]:
    return list(Registration.select().where(Registration.competition == comp_name.split("/")[1]))


def _assert_groups_whole_and_seats_exact(comp_name: str, capacity: int) -> dict[str, list[Registration]]:
    rows = _rows(comp_name)
    groups: dict[str, list[Registration]] = defaultdict(list)
    for row in rows:
        groups[row.group_id].append(row)
    for members in groups.values():
        # A member may leave on its own (cancelled); the rest stay together.
        assert len({m.state for m in members if m.state in rules.ACTIVE}) <= 1, "a group was split"
        assert len({m.waitlist_seq for m in members}) == 1
    stored = Competition.get_by_id(comp_name.split("/")[1])
    confirmed = sum(1 for r in rows if r.state == "CONFIRMED")
    waiting = [r for r in rows if r.state == "WAITLISTED"]
    assert stored.confirmed == confirmed <= capacity
    assert stored.waitlisted == len(waiting)
    assert stored.waitlisted - stored.waitlist_extra == len({r.waitlist_seq for r in waiting})
    return groups


def test_200_concurrent_group_registrations_for_50_seats_never_split_a_group_and_never_oversell(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=50)
    rng = random.Random(16)
    sizes = [rng.randint(2, 4) for _ in range(200)]
    people = bulk_users(server, sum(sizes))
    teams, start = [], 0
    for size in sizes:
        teams.append(people[start : start + size])
        start += size

    def call(team):
        return _group(server, team[0][1], comp.name, [u for u, _ in team], key=uuid.uuid4().hex)

    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(call, teams))
    assert all(r.created for r in replies) and len({r.group for r in replies}) == 200
    for reply, team in zip(replies, teams, strict=True):
        assert [r.user for r in reply.registrations] == [f"users/{u}" for u, _ in team]
        assert len({reg_state(r.state) for r in reply.registrations}) == 1
        assert len({r.position for r in reply.registrations}) == 1
    groups = _assert_groups_whole_and_seats_exact(comp.name, 50)
    waiting = sorted(
        (reply.registrations[0].position, reply.group)
        for reply in replies
        if reg_state(reply.registrations[0].state) == "WAITLISTED"
    )
    # One position per waiting group, 1..k, and the order is the waitlist numbers' order.
    assert [p for p, _ in waiting] == list(range(1, len(waiting) + 1))
    seq_of = {
        f"competitions/{comp.name.split('/')[1]}/groups/{g}": m[0].waitlist_seq for g, m in groups.items()
    }
    assert [seq_of[g] for _, g in waiting] == sorted(seq_of[g] for _, g in waiting)
    seated = sum(len(m) for m in groups.values() if m[0].state == "CONFIRMED")
    assert seated > 50 - 4  # it stopped only at a group that did not fit
    # Freeing seats (whole groups and single members) fills them in strict order, whole groups only.
    confirmed = [r for r in replies if reg_state(r.registrations[0].state) == "CONFIRMED"]
    tokens = dict(people)
    for reply in confirmed[:6]:
        member = reply.registrations[-1]
        _cancel(server, tokens[member.user.removeprefix("users/")], member.name)
        _assert_groups_whole_and_seats_exact(comp.name, 50)
    for reply in confirmed[6:9]:
        for member in reply.registrations:
            _cancel(server, tokens[member.user.removeprefix("users/")], member.name)
        _assert_groups_whole_and_seats_exact(comp.name, 50)
    promoted = [
        reply
        for reply in replies
        if reg_state(reply.registrations[0].state) == "WAITLISTED"
        and Registration.get_by_id(reply.registrations[0].name.split("/")[-1]).state == "CONFIRMED"
    ]
    positions = sorted(r.registrations[0].position for r in promoted)
    assert positions == list(range(1, len(positions) + 1)), "promotion skipped a waiting group"


def test_a_head_group_that_does_not_fit_waits_and_nobody_passes_it(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=3)
    (_a, a_tok), *trio = bulk_users(server, 4)
    first = register(server, a_tok, comp.name)
    assert reg_state(first.state) == "CONFIRMED"
    group = _group(server, trio[0][1], comp.name, [u for u, _ in trio])
    assert [reg_state(r.state) for r in group.registrations] == ["WAITLISTED"] * 3
    assert {r.position for r in group.registrations} == {1}
    # Two seats are free, but the group at the head needs three: a newcomer waits behind it.
    later, later_tok = bulk_users(server, 1)[0]
    newcomer = register(server, later_tok, comp.name)
    assert reg_state(newcomer.state) == "WAITLISTED" and newcomer.position == 2
    seen = get(server, org, comp.name)
    assert (seen.free_seats, seen.waitlisted_count, seen.waitlist_entry_count) == (2, 4, 2)
    _cancel(server, a_tok, first.name)
    states = {r.user_id: r.state for r in _rows(comp.name)}
    assert [states[u] for u, _ in trio] == ["CONFIRMED"] * 3
    assert states[later] == "WAITLISTED"
    assert get(server, org, comp.name).free_seats == 0


def test_one_member_already_registered_refuses_the_whole_group(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=10)
    (a, a_tok), (b, _), (c, _) = bulk_users(server, 3)
    register(server, a_tok, comp.name)
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _group, server, a_tok, comp.name, [b, a, c])
    assert failure.reason == "ALREADY_REGISTERED" and failure.metadata["user"] == f"users/{a}"
    assert {r.user_id for r in _rows(comp.name)} == {a}
    assert get(server, org, comp.name).confirmed_count == 1


def test_registering_the_same_group_again_returns_it(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=10)
    (a, a_tok), (b, _) = bulk_users(server, 2)
    first = _group(server, a_tok, comp.name, [a, b])
    again = _group(server, a_tok, comp.name, [a, b])
    assert first.created and not again.created and again.group == first.group
    assert [r.name for r in again.registrations] == [r.name for r in first.registrations]
    assert get(server, org, comp.name).confirmed_count == 2


def test_a_paid_group_is_paid_by_its_leader_offered_as_one_and_lapses_as_one(server, clock):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=2, entry_fee=100, offer_hold_duration=3600)
    (a, a_tok), (b, _b_tok), (c, c_tok), (d, d_tok) = bulk_users(server, 4)
    for user_id in (a, b, c):
        fund(server, user_id, 1000)
    pair = _group(server, a_tok, comp.name, [a, b])
    assert [reg_state(r.state) for r in pair.registrations] == ["CONFIRMED"] * 2
    assert [r.payer for r in pair.registrations] == [f"users/{a}"] * 2
    assert balance(a) == (800, 200) and balance(b) == (1000, 0)
    # c leads a waiting pair with d (d has no money: the leader pays).
    waiting = _group(server, c_tok, comp.name, [c, d])
    _cancel(server, a_tok, pair.registrations[0].name)
    _cancel(server, a_tok, pair.registrations[1].name)  # the leader may cancel its members
    assert balance(a) == (1000, 0)
    states = {r.user_id: (r.state, r.offer_expire_time) for r in _rows(comp.name)}
    assert states[c][0] == states[d][0] == "OFFERED" and states[c][1] == states[d][1]
    accepted = (
        stub(server)
        .AcceptOffer(
            competition_pb2.AcceptOfferRequest(name=waiting.registrations[1].name), metadata=bearer(d_tok)
        )
        .registration
    )
    assert reg_state(accepted.state) == "CONFIRMED"
    assert {r.user_id: r.state for r in _rows(comp.name)}[c] == "CONFIRMED"
    assert balance(c) == (800, 200) and balance(d) == (0, 0)
    # A second waiting group's offer lapses for all its members at once.
    (e, e_tok), (f, _) = bulk_users(server, 2)
    fund(server, e, 1000)
    later = _group(server, e_tok, comp.name, [e, f])
    _cancel(server, c_tok, waiting.registrations[0].name)
    _cancel(server, c_tok, waiting.registrations[1].name)
    clock.advance(3601)
    assert rules.expire_offers(server.rt) == 1
    assert {r.user_id: r.state for r in _rows(comp.name)}[f] == "OFFER_EXPIRED"
    assert {r.user_id: r.state for r in _rows(comp.name)}[e] == "OFFER_EXPIRED"
    assert reg_state(later.registrations[0].state) == "WAITLISTED"


def test_group_requests_are_checked(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=2)
    (a, a_tok), (b, _), (c, _) = bulk_users(server, 3)
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _group, server, a_tok, comp.name, [a])
    assert "members" in failure.violations
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, _group, server, a_tok, comp.name, [a, b, a])
    assert "members[2]" in failure.violations
    rpc_error(grpc.StatusCode.NOT_FOUND, _group, server, a_tok, comp.name, [a, "u" + "0" * 25])
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _group, server, a_tok, comp.name, [a, b, c])
    assert failure.reason == "GROUP_LARGER_THAN_CAPACITY"
    assert _rows(comp.name) == []


def _race_group_against_a_member(server, comp_name: str) -> None:
    (a, a_tok), (b, b_tok), (c, _) = bulk_users(server, 3)
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def solo() -> None:
        barrier.wait()
        outcomes["solo"] = reg_state(register(server, b_tok, comp_name).state)

    def group() -> None:
        barrier.wait()
        try:
            _group(server, a_tok, comp_name, [a, b, c])
            outcomes["group"] = "ok"
        except grpc.RpcError as exc:
            outcomes["group"] = RpcFailure(exc).reason

    threads = [threading.Thread(target=solo), threading.Thread(target=group)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = {r.user_id: r for r in _rows(comp_name) if r.user_id in (a, b, c)}
    if outcomes["group"] == "ok":
        # b's own call found the group's registration and returned it.
        assert {u: r.group_id is not None for u, r in rows.items()} == {a: True, b: True, c: True}
    else:
        assert outcomes["group"] == "ALREADY_REGISTERED"
        assert set(rows) == {b} and rows[b].group_id is None
    assert outcomes["solo"] == "CONFIRMED"


def test_a_group_and_a_members_own_registration_racing_leave_one_of_them_whole(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=50)
    for _ in range(10):
        _race_group_against_a_member(server, comp.name)
    _assert_groups_whole_and_seats_exact(comp.name, 50)


def test_a_leader_without_the_money_for_every_member_registers_nobody(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=5, entry_fee=100)
    (a, a_tok), (b, _), (c, _) = bulk_users(server, 3)
    fund(server, a, 250)  # two fees, not three
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, _group, server, a_tok, comp.name, [a, b, c])
    assert failure.reason == "INSUFFICIENT_FUNDS"
    assert _rows(comp.name) == []
    assert balance(a) == (250, 0)
    assert get(server, org, comp.name).confirmed_count == 0


def test_the_export_gives_a_waiting_group_one_position_and_names_group_and_payer(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=2)
    (a, a_tok), (b, b_tok), (c, _), (d, d_tok) = bulk_users(server, 4)
    register(server, a_tok, comp.name)
    pair = _group(server, b_tok, comp.name, [b, c])
    register(server, d_tok, comp.name)
    chunks = stub(server).ExportRegistrations(
        competition_pb2.ExportRegistrationsRequest(competition=comp.name), metadata=bearer(org)
    )
    rows = {r["user"]: r for r in csv.DictReader(io.StringIO(b"".join(c.csv_chunk for c in chunks).decode()))}
    assert [rows[f"users/{u}"]["position"] for u in (a, b, c, d)] == ["0", "1", "1", "2"]
    assert rows[f"users/{c}"]["group"] == pair.group and rows[f"users/{c}"]["payer"] == f"users/{b}"
    assert rows[f"users/{a}"]["group"] == "" and rows[f"users/{a}"]["check_in_time"] == ""


def test_cancelling_the_competition_refunds_the_leader_for_every_member(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=5, entry_fee=100)
    (a, a_tok), (b, _), (c, _) = bulk_users(server, 3)
    fund(server, a, 1000)
    _group(server, a_tok, comp.name, [a, b, c])
    assert balance(a) == (700, 300)
    stub(server).CancelCompetition(
        competition_pb2.CancelCompetitionRequest(name=comp.name, reason="venue lost"), metadata=bearer(org)
    )
    assert balance(a) == (1000, 0) and balance(b) == (0, 0) and balance(c) == (0, 0)
    assert {r.fee_held for r in _rows(comp.name)} == {0}


def test_prizes_come_out_of_the_fees_the_leader_paid(server, clock):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=5, entry_fee=100, prize_split_bps=[10_000])
    (a, a_tok), (b, _) = bulk_users(server, 2)
    fund(server, a, 1000)
    _group(server, a_tok, comp.name, [a, b])
    clock.advance(4 * 24 * 3600)
    rules.advance_due(server.rt)
    assert get(server, org, comp.name).state == competition_pb2.COMPETITION_STATE_ENDED
    request = competition_pb2.PublishResultsRequest(
        competition=comp.name, ranking=[competition_pb2.RankedScore(user=f"users/{b}", score=1.0)]
    )
    stub(server).PublishResults(request, metadata=bearer(org))
    assert balance(a) == (800, 0) and balance(b) == (200, 0)
