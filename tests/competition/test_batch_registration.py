"""Registrations arriving together share one transaction (a batch): newcomers get seats in
one claim and exact waitlist places; a keyed Register writes its idempotency record, sealed,
with the registration; a key taken meanwhile answers with the first call's reply; and a
competition with teams takes no individual registration."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from coordd.api.competition import _register_reply as register_reply
from coordd.core.errors import Aborted, FailedPrecondition, InvalidArgument
from coordd.core.principal import Principal
from coordd.domain import competition as rules
from coordd.domain import idempotency as idem
from coordd.domain import notify as outbox
from coordd.store import idempotency_queries as idem_queries
from coordd.store.competition import bulk as bulk_store
from coordd.store.competition.models import Competition, CompetitionNotification, Registration
from coordd.store.models import IdempotencyRecord
from coordd_client.v1 import competition_pb2, competition_pb2_grpc
from tests.competition.support import QUIET, bulk_users, competition_server, create, get, reg_state, stub
from tests.helpers import rpc_error
from tests.support.process import Daemon
from tests.support.server import ServerHandle, bearer

__all__ = ["competition_server"]

REGISTER = "/coordd.v1.CompetitionService/Register"


def _comp_id(comp: competition_pb2.Competition) -> str:
    return comp.name.split("/")[1]


def _keyed_register_all(server, tokens: list[str], comp_name: str) -> list[competition_pb2.RegisterResponse]:
    svc = stub(server)
    request = competition_pb2.RegisterRequest(competition=comp_name)
    barrier = threading.Barrier(len(tokens))
    replies: list[competition_pb2.RegisterResponse | None] = [None] * len(tokens)
    errors: list[Exception] = []

    def call(i: int) -> None:
        try:
            barrier.wait()
            replies[i] = svc.Register(request, metadata=bearer(tokens[i], **{"idempotency-key": f"k{i}"}))
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(tokens))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    return [r for r in replies if r is not None]


def test_concurrent_keyed_newcomers_get_every_seat_once_and_exact_waitlist_places(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=40)
    users = bulk_users(server, 120)
    replies = _keyed_register_all(server, [t for _, t in users], comp.name)
    assert len(replies) == 120 and all(r.created for r in replies)
    states = [reg_state(r.registration.state) for r in replies]
    assert states.count("CONFIRMED") == 40 and states.count("WAITLISTED") == 80
    seen = get(server, org, comp.name)
    assert (seen.confirmed_count, seen.waitlisted_count, seen.free_seats) == (40, 80, 0)
    # Waitlist numbers are distinct and consecutive; each reply's position is its place in that order.
    waiting = list(
        Registration.select()
        .where((Registration.competition == _comp_id(comp)) & (Registration.state == "WAITLISTED"))
        .order_by(Registration.waitlist_seq)
    )
    seqs = [r.waitlist_seq for r in waiting]
    assert seqs == list(range(seqs[0], seqs[0] + 80))
    position_of = {r.registration.name.rsplit("/", 1)[1]: r.registration.position for r in replies}
    assert [position_of[r.id] for r in waiting] == list(range(1, 81))
    # Every keyed call left a finished record whose stored reply is sealed.
    records = list(IdempotencyRecord.select().where(IdempotencyRecord.key.startswith("k")))
    assert len(records) == 120 and {r.state for r in records} == {"done"}
    by_key = {r.key: r for r in records}
    for i, reply in enumerate(replies):
        stored = bytes(by_key[f"k{i}"].response)
        assert reply.registration.name.encode() not in stored
        assert server.rt.sealer.open_bytes(stored, f"idempotency\0{users[i][0]}\0k{i}") == (
            reply.SerializeToString()
        )


def test_a_keyed_retry_after_a_batch_replays_the_reply_byte_for_byte(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=1)
    (_, first_tok), (_, second_tok) = bulk_users(server, 2)
    svc = stub(server)
    request = competition_pb2.RegisterRequest(competition=comp.name)
    seated = svc.Register(request, metadata=bearer(first_tok, **{"idempotency-key": "once"}))
    waiting = svc.Register(request, metadata=bearer(second_tok, **{"idempotency-key": "once"}))
    assert reg_state(seated.registration.state) == "CONFIRMED"
    assert reg_state(waiting.registration.state) == "WAITLISTED" and waiting.registration.position == 1
    again, call = svc.Register.with_call(request, metadata=bearer(second_tok, **{"idempotency-key": "once"}))
    assert again.SerializeToString() == waiting.SerializeToString()
    assert ("idempotency-replayed", "true") in tuple(call.initial_metadata())


def test_a_keyed_register_sends_the_reply_its_record_holds_and_a_retry_gets_the_same_bytes(server):
    """The reply written into the idempotency record with the registration is the one sent
    (not built a second time): the first call and its retry get the same bytes."""
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=1)
    ((_, token),) = bulk_users(server, 1)
    raw = server.channel.unary_unary(
        "/coordd.v1.CompetitionService/Register",
        request_serializer=competition_pb2.RegisterRequest.SerializeToString,
        response_deserializer=None,
    )
    request = competition_pb2.RegisterRequest(competition=comp.name)
    meta = bearer(token, **{"idempotency-key": "raw"})
    first = raw(request, metadata=meta)
    again, call = raw.with_call(request, metadata=meta)
    assert isinstance(first, bytes) and again == first
    assert ("idempotency-replayed", "true") in tuple(call.initial_metadata())
    reply = competition_pb2.RegisterResponse.FromString(first)
    assert reply.created and reg_state(reply.registration.state) == "CONFIRMED"
    listed = stub(server).ListRegistrations(
        competition_pb2.ListRegistrationsRequest(competition=comp.name), metadata=bearer(org)
    )
    assert list(listed.registrations) == [reply.registration]


def _in_call(user_id: str, key: str, comp_name: str) -> idem.InCall:
    request = competition_pb2.RegisterRequest(competition=comp_name).SerializeToString(deterministic=True)
    pending = idem.PendingKey(user_id, key)
    return idem.InCall(user_id, key, REGISTER, idem.request_hash(REGISTER, request), pending)


def _reply(view: rules.RegistrationView) -> bytes:
    return register_reply(view)


def _competition_with_participants(server, n: int):  # type: ignore[no-untyped-def]
    """An open competition (capacity 5) and `n` participants: (competition id, [(user id, principal)])."""
    _, org = server.make_user("organizer")
    comp_id = _comp_id(create(server, org, capacity=5))
    people = [
        (user_id, Principal(user_id=user_id, roles=frozenset({"participant"}), kind="token"))
        for user_id, _ in bulk_users(server, n)
    ]
    return comp_id, people


def _keyed_first_call(server, key: str):  # type: ignore[no-untyped-def]
    """A competition and a user whose keyed Register committed: (competition, user id, reply)."""
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=5)
    ((user_id, token),) = bulk_users(server, 1)
    first = stub(server).Register(
        competition_pb2.RegisterRequest(competition=comp.name),
        metadata=bearer(token, **{"idempotency-key": key}),
    )
    return comp, user_id, first


def test_a_key_committed_meanwhile_by_the_same_request_answers_with_its_reply(server):
    """Two calls with one key both passed the claim's look (neither record existed yet): the one
    that commits second writes nothing and answers with the first one's stored reply."""
    comp, user_id, first = _keyed_first_call(server, "race")
    who = Principal(user_id=user_id, roles=frozenset({"participant"}), kind="token")
    got = rules.register_call(server.rt, who, _comp_id(comp), _in_call(user_id, "race", comp.name), _reply)
    assert got.view is None and got.replay == first.SerializeToString()
    assert Registration.select().where(Registration.user == user_id).count() == 1


def test_a_key_committed_after_the_batch_looked_answers_with_that_reply_and_registers_once(
    server, monkeypatch
):
    """The other call's record committed between this batch's look for the key and its own
    record, which then fails (on PostgreSQL at the COMMIT, which carries it): the batch runs
    again, finds the record and answers with the stored reply."""
    comp, user_id, first = _keyed_first_call(server, "late")
    looks: list[object] = []
    real = idem_queries.records_of

    def blind_the_first_time(keys):  # type: ignore[no-untyped-def]
        looks.append(keys)
        return {} if len(looks) == 1 else real(keys)

    monkeypatch.setattr(idem_queries, "records_of", blind_the_first_time)
    who = Principal(user_id=user_id, roles=frozenset({"participant"}), kind="token")
    got = rules.register_call(server.rt, who, _comp_id(comp), _in_call(user_id, "late", comp.name), _reply)
    assert got.view is None and got.replay == first.SerializeToString()
    # PostgreSQL: the COMMIT failed and the run again looked again; SQLite's insert said at once.
    assert len(looks) == (2 if server.rt.store.is_postgres else 1)
    assert Registration.select().where(Registration.user == user_id).count() == 1
    assert IdempotencyRecord.select().where(IdempotencyRecord.key == "late").count() == 1


def _count_looks(monkeypatch) -> list[object]:  # type: ignore[no-untyped-def]
    looks: list[object] = []
    real = idem_queries.records_of

    def counted(keys):  # type: ignore[no-untyped-def]
        looks.append(keys)
        return real(keys)

    monkeypatch.setattr(idem_queries, "records_of", counted)
    return looks


def test_on_postgresql_a_fresh_key_is_not_looked_up_and_a_used_one_is_found_at_the_commit(
    server, monkeypatch
):
    """PostgreSQL writes a batch's records unlooked (a retry is rare): a key used before fails
    the COMMIT, and the run again looks and replays. SQLite looks on every run."""
    comp, used_id, first = _keyed_first_call(server, "again")
    ((fresh_id, _),) = bulk_users(server, 1)
    looks = _count_looks(monkeypatch)
    fresh, used = (
        Principal(user_id=u, roles=frozenset({"participant"}), kind="token") for u in (fresh_id, used_id)
    )

    got = rules.register_call(server.rt, fresh, _comp_id(comp), _in_call(fresh_id, "new", comp.name), _reply)
    assert got.view is not None and got.view.created
    assert len(looks) == (0 if server.rt.store.is_postgres else 1)

    again = rules.register_call(
        server.rt, used, _comp_id(comp), _in_call(used_id, "again", comp.name), _reply
    )
    assert again.view is None and again.replay == first.SerializeToString()
    assert len(looks) == (1 if server.rt.store.is_postgres else 2)
    assert Registration.select().where(Registration.user == used_id).count() == 1
    assert IdempotencyRecord.select().where(IdempotencyRecord.key == "again").count() == 1


def test_a_key_committed_meanwhile_for_another_competition_refuses_and_registers_nobody(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=5)
    other = create(server, org, capacity=5)
    ((user_id, token),) = bulk_users(server, 1)
    stub(server).Register(
        competition_pb2.RegisterRequest(competition=comp.name),
        metadata=bearer(token, **{"idempotency-key": "twice"}),
    )
    who = Principal(user_id=user_id, roles=frozenset({"participant"}), kind="token")
    with pytest.raises(InvalidArgument) as info:
        rules.register_call(server.rt, who, _comp_id(other), _in_call(user_id, "twice", other.name), _reply)
    assert info.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert Registration.select().where(Registration.competition == _comp_id(other)).count() == 0
    assert Competition.get_by_id(_comp_id(other)).waitlisted == 0


def test_a_batch_that_keeps_meeting_rows_written_after_its_read_registers_those_users_alone(
    server, monkeypatch
):
    """Another process registers one of the batch's users between the batch's read of who is
    registered and its one-statement insert (the read here never sees the row, as if the race
    happened on every run): the insert fails once, the run again registers those users one by
    one, and the user registered meanwhile gets that registration, not an error."""
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=5)
    comp_id = _comp_id(comp)
    (first_id, _), (second_id, _) = bulk_users(server, 2)
    first, second = (
        Principal(user_id=u, roles=frozenset({"participant"}), kind="token") for u in (first_id, second_id)
    )
    earlier = rules.register(server.rt, first, comp_id)
    monkeypatch.setattr(bulk_store, "states_and_channels", lambda comp_id, users: ({}, set()))
    got = rules.register_many(server.rt, comp_id, [rules.Ask(server.rt, first), rules.Ask(server.rt, second)])
    assert not [o for o in got if isinstance(o, BaseException)], got
    mine, theirs = got
    assert mine.view.registration.id == earlier.registration.id and not mine.view.created
    assert theirs.view.created and theirs.view.registration.state == "CONFIRMED"
    assert Registration.select().where(Registration.competition == comp_id).count() == 2
    assert Competition.get_by_id(comp_id).confirmed == 2


def test_a_batch_queues_confirmations_to_the_newcomers_with_a_channel_and_leaves_the_registered_alone(
    server,
):
    """The batch's one read of who is registered already and who has a live channel: the
    registered user keeps the registration, only the newcomer with a channel gets a delivery."""
    comp_id, ((known_id, known), (hooked_id, hooked), (plain_id, plain)) = _competition_with_participants(
        server, 3
    )
    earlier = rules.register(server.rt, known, comp_id)
    outbox.create_channel(server.rt, hooked, "competitions", "http://127.0.0.1:9/hook", "s" * 20, [])

    got = rules.register_many(server.rt, comp_id, [rules.Ask(server.rt, w) for w in (known, hooked, plain)])

    assert not [o for o in got if isinstance(o, BaseException)], got
    again, new_hooked, new_plain = got
    assert again.view.registration.id == earlier.registration.id and not again.view.created
    assert new_hooked.view.created and new_plain.view.created
    queued = {
        n.user_id: n.deliveries_queued
        for n in CompetitionNotification.select().where(CompetitionNotification.competition == comp_id)
    }
    assert queued == {known_id: 0, hooked_id: 1, plain_id: 0}


def test_a_race_met_by_the_newcomers_is_theirs_even_when_registered_users_follow_in_the_batch(
    server, monkeypatch
):
    """The newcomers' INSERT meets a row written after the batch's read, and the batch also
    holds a user registered before, who goes alone in a savepoint after them: the race is the
    newcomers' (their INSERT is sent before that savepoint), the batch runs again one by one,
    and every caller gets an answer."""
    comp_id, ((_, hidden), (_, new), (known_id, known)) = _competition_with_participants(server, 3)
    earlier = rules.register(server.rt, hidden, comp_id)  # the read below never sees it
    rules.register(server.rt, known, comp_id)
    monkeypatch.setattr(
        bulk_store, "states_and_channels", lambda comp_id, users: ({known_id: "CONFIRMED"}, set())
    )

    got = rules.register_many(server.rt, comp_id, [rules.Ask(server.rt, w) for w in (hidden, new, known)])

    assert not [o for o in got if isinstance(o, BaseException)], got
    mine, fresh, again = got
    assert mine.view.registration.id == earlier.registration.id and not mine.view.created
    assert fresh.view.created and not again.view.created
    assert Registration.select().where(Registration.competition == comp_id).count() == 3
    assert Competition.get_by_id(comp_id).confirmed == 3


def test_register_in_a_team_competition_is_refused_and_points_to_the_team(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=10, team_min_size=2, team_max_size=3)
    ((user_id, token),) = bulk_users(server, 1)
    svc = stub(server)
    for key in ("", "solo"):
        meta = bearer(token, **({"idempotency-key": key} if key else {}))
        failure = rpc_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            svc.Register,
            competition_pb2.RegisterRequest(competition=comp.name),
            metadata=meta,
        )
        assert failure.reason == "TEAM_COMPETITION"
        assert "team" in failure.details and "RegisterTeam" in failure.details
    assert Registration.select().where(Registration.user == user_id).count() == 0
    assert IdempotencyRecord.select().where(IdempotencyRecord.key == "solo").count() == 0
    who = Principal(user_id=user_id, roles=frozenset({"participant"}), kind="token")
    with pytest.raises(FailedPrecondition):
        rules.register(server.rt, who, _comp_id(comp))


def test_a_team_member_registered_through_the_team_is_refused_individually_too(server):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=10, team_min_size=2, team_max_size=2)
    (_, cap_tok), (member, member_tok) = bulk_users(server, 2)
    svc = stub(server)
    team = svc.CreateTeam(
        competition_pb2.CreateTeamRequest(
            competition=comp.name, team=competition_pb2.Team(display_name="pair")
        ),
        metadata=bearer(cap_tok),
    ).team
    svc.InviteTeamMember(
        competition_pb2.InviteTeamMemberRequest(team=team.name, user=f"users/{member}"),
        metadata=bearer(cap_tok),
    )
    svc.AcceptTeamInvite(competition_pb2.AcceptTeamInviteRequest(team=team.name), metadata=bearer(member_tok))
    svc.RegisterTeam(competition_pb2.RegisterTeamRequest(team=team.name), metadata=bearer(cap_tok))
    failure = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        svc.Register,
        competition_pb2.RegisterRequest(competition=comp.name),
        metadata=bearer(member_tok),
    )
    assert failure.reason == "TEAM_COMPETITION"
    assert get(server, org, comp.name).confirmed_count == 2


def _record(user_id: str, key: str, comp_name: str, state: str, locked_s: float, expire_s: float) -> None:
    k = _in_call(user_id, key, comp_name)
    now = datetime.now(UTC)
    IdempotencyRecord.create(
        scope=user_id,
        key=key,
        method=REGISTER,
        request_hash=k.digest,
        state=state,
        response=None,
        locked_until=now + timedelta(seconds=locked_s),
        expire_time=now + timedelta(seconds=expire_s),
        create_time=now - timedelta(seconds=1),
    )


@pytest.mark.parametrize(
    ("state", "locked_s", "expire_s", "outcome"),
    [
        ("done", -60, -1, "runs"),  # expired: the key is free again
        ("running", -60, 3600, "runs"),  # a dead caller's claim, nothing committed: taken over
        ("running", 60, 3600, "IDEMPOTENCY_KEY_IN_USE"),  # still running elsewhere
        ("applied", -60, 3600, "IDEMPOTENCY_RESPONSE_LOST"),  # applied, response never stored
    ],
)
def test_a_keyed_register_treats_an_existing_record_as_claim_would(
    server, state, locked_s, expire_s, outcome
):
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=5)
    ((user_id, _),) = bulk_users(server, 1)
    _record(user_id, "seen", comp.name, state, locked_s, expire_s)
    who = Principal(user_id=user_id, roles=frozenset({"participant"}), kind="token")
    keyed = _in_call(user_id, "seen", comp.name)
    if outcome == "runs":
        got = rules.register_call(server.rt, who, _comp_id(comp), keyed, _reply)
        assert got.view is not None and got.view.created
        stored = IdempotencyRecord.get(
            (IdempotencyRecord.scope == user_id) & (IdempotencyRecord.key == "seen")
        )
        assert stored.state == "done"
        assert server.rt.sealer.open_bytes(bytes(stored.response), f"idempotency\0{user_id}\0seen") == _reply(
            got.view
        )
    else:
        with pytest.raises((Aborted, FailedPrecondition)) as info:
            rules.register_call(server.rt, who, _comp_id(comp), keyed, _reply)
        assert info.value.reason == outcome
        assert Registration.select().where(Registration.user == user_id).count() == 0


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_the_same_keys_sent_to_two_daemons_at_once_register_each_user_once_with_one_reply(
    settings_factory, clock, backend, tmp_path
):
    """Two `coordd serve` processes on one PostgreSQL database, each user's keyed Register sent
    to both at the same moment: batches in two processes race for the row lock and for the
    keys; every user is registered once, never beyond capacity, and both calls of a user get
    the same bytes (the loser answers with the winner's stored reply). With 150 users the two
    processes' batches overlap: a batch whose insert meets a row the other committed runs again."""
    server = ServerHandle(settings_factory(**QUIET, jwt_secret="two-daemons-" + "x" * 32), clock)
    try:
        _race_two_daemons(server, tmp_path)
    finally:
        server.stop()


def _race_two_daemons(server: ServerHandle, tmp_path: Path) -> None:
    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=20)
    users = bulk_users(server, 150)
    settings = server.rt.settings
    env = {
        "COORDD_DATABASE_URL": settings.database_url,
        "COORDD_JWT_SECRET": settings.jwt_secret,
        "COORDD_SEALING_KEY_PATH": str(Path(settings.data_dir) / "secrets.key"),
        "COORDD_SCHEDULER_ENABLED": "false",
    }
    daemons = [Daemon(tmp_path / f"d{i}", env=env) for i in range(2)]
    try:
        for daemon in daemons:
            daemon.wait_ready()
        stubs = [
            competition_pb2_grpc.CompetitionServiceStub(grpc.insecure_channel(d.target)) for d in daemons
        ]
        request = competition_pb2.RegisterRequest(competition=comp.name)
        barrier = threading.Barrier(300)
        replies: dict[tuple[int, int], bytes] = {}
        errors: list[Exception] = []

        def call(user: int, which: int) -> None:
            try:
                barrier.wait()
                meta = bearer(users[user][1], **{"idempotency-key": f"both-{user}"})
                replies[(user, which)] = (
                    stubs[which].Register(request, metadata=meta, timeout=60).SerializeToString()
                )
            except Exception as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(u, w)) for u in range(150) for w in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    finally:
        for daemon in daemons:
            daemon.terminate()
    assert not errors, [d.unexpected_errors() for d in daemons]
    assert all(replies[(u, 0)] == replies[(u, 1)] for u in range(150))
    regs = Registration.select().where(Registration.competition == _comp_id(comp))
    assert regs.count() == 150 and len({r.user_id for r in regs}) == 150
    seen = get(server, org, comp.name)
    assert (seen.confirmed_count, seen.waitlisted_count) == (20, 130)
    records = IdempotencyRecord.select().where(IdempotencyRecord.key.startswith("both-"))
    assert records.count() == 150 and {r.state for r in records} == {"done"}


class _DeadlockDetected(Exception):
    pgcode = "40P01"  # what psycopg2 reports for PostgreSQL's deadlock_detected


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_registration_that_loses_a_deadlock_runs_again_instead_of_failing(server, monkeypatch):
    """A registration alone in its savepoint (here: a user raced before, so never in the batch
    claim) meets a deadlock with another process: the batch rolls back and runs again, and the
    caller gets its registration, not INTERNAL (seen once with two daemons on one database)."""
    import peewee

    from coordd.domain.competition import registration

    _, org = server.make_user("organizer")
    comp = create(server, org, capacity=5)
    [(user_id, _)] = bulk_users(server, 1)
    who = Principal(user_id=user_id, roles=frozenset({"participant"}), kind="token")
    real = registration.register_in
    calls: list[int] = []

    def deadlocks_once(tx, comp_id, principal):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:  # as peewee raises it: the driver's error as its cause
            cause = _DeadlockDetected("deadlock detected")
            raise peewee.OperationalError(cause) from cause
        return real(tx, comp_id, principal)

    monkeypatch.setattr(registration, "register_in", deadlocks_once)
    ask = rules.Ask(server.rt, who)
    ask.raced = True  # registered alone, in its own savepoint
    [got] = rules.register_many(server.rt, _comp_id(comp), [ask])
    assert not isinstance(got, BaseException), got
    assert got.view.created and got.view.registration.state == "CONFIRMED"
    assert len(calls) == 2
    assert Registration.select().where(Registration.user == user_id).count() == 1
