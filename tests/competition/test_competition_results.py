"""Entries, signed results, leaderboard, exports, the watch stream, and notifications
(exactly once per registration and kind, across a scheduler restart)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from coordd.core.principal import Principal
from coordd.domain import competition as rules
from coordd.domain import notify as outbox
from coordd.notify import webhook
from coordd.store.competition.models import Competition, CompetitionNotification
from coordd.store.notify.models import Delivery
from coordd_client.results import ResultsVerificationError, key_id, verify_results
from coordd_client.v1 import competition_pb2
from tests.competition.support import (
    DAY,
    HOUR,
    QUIET,
    competition_server,
    create,
    get,
    register,
    spec,
    state_name,
    stub,
)
from tests.helpers import rpc_error
from tests.support.server import ServerHandle, bearer

__all__ = ["competition_server"]  # the `server` fixture: tokens outlive clock.advance()


class Receiver:
    """A webhook endpoint on an ephemeral port that records what it is sent."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def kinds(self) -> list[str]:
        return [headers["X-Coordd-Event"] for headers, _ in self.received]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _channel(server, user_id: str, url: str, secret: str = "s" * 20) -> None:
    who = Principal(user_id=user_id, roles=frozenset({"participant"}), kind="token")
    outbox.create_channel(server.rt, who, "competitions", url, secret, [])


def _ended(server, clock, capacity=5, players=3, **fields):
    _, org = server.make_user("organizer")
    people = [server.make_user("participant") for _ in range(players)]
    comp = create(server, org, capacity=capacity, **fields)
    for _, token in people:
        register(server, token, comp.name)
    return org, people, comp


def test_entries_only_while_running_by_confirmed_participants_and_replaced(server, clock):
    org, people, comp = _ended(server, clock, capacity=1, players=2)
    (_, winner), (_, waiting) = people
    svc = stub(server)

    def submit(token, **fields):
        return svc.SubmitEntry(
            competition_pb2.SubmitEntryRequest(competition=comp.name, **fields), metadata=bearer(token)
        ).entry

    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, submit, winner, payload=b"early")
    assert failure.reason == "NOT_RUNNING"
    clock.advance(2 * DAY + 1)
    rules.advance_due(server.rt)
    assert state_name(get(server, org, comp.name).state) == "RUNNING"
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, submit, waiting, payload=b"x")
    assert failure.reason == "NOT_CONFIRMED"
    first = submit(winner, payload=b"v1")
    assert (first.revision, first.digest) == (1, "sha256:" + hashlib.sha256(b"v1").hexdigest())
    digest = "sha256:" + "ab" * 32
    second = submit(winner, uri="s3://bucket/entry.tar", digest=digest)
    assert (second.name, second.revision, second.uri, second.digest) == (
        first.name,
        2,
        "s3://bucket/entry.tar",
        digest,
    )
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, submit, winner, uri="s3://bucket/x")
    assert "digest" in failure.violations
    rules.configure(server.rt, max_entry_bytes=4)
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, submit, winner, payload=b"12345")
    assert "payload" in failure.violations
    clock.advance(DAY)
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, submit, winner, payload=b"late")
    assert failure.reason == "NOT_RUNNING"


def test_results_are_signed_verifiable_offline_and_ranked(server, clock):
    org, people, comp = _ended(server, clock)
    svc = stub(server)
    ranking = [
        competition_pb2.RankedScore(user=f"users/{uid}", score=s)
        for (uid, _), s in zip(people, (3.5, 2, 1), strict=True)
    ]
    request = competition_pb2.PublishResultsRequest(competition=comp.name, ranking=ranking)
    failure = rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION, svc.PublishResults, request, metadata=bearer(org)
    )
    assert failure.reason == "NOT_ENDED"
    clock.advance(4 * DAY)
    rules.advance_due(server.rt)
    stranger, _ = server.make_user("participant")
    bad = competition_pb2.PublishResultsRequest(
        competition=comp.name, ranking=[*ranking, competition_pb2.RankedScore(user=f"users/{stranger}")]
    )
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, svc.PublishResults, bad, metadata=bearer(org))
    assert "ranking[3].user" in failure.violations
    published = svc.PublishResults(request, metadata=bearer(org))
    fetched = svc.GetResults(
        competition_pb2.GetResultsRequest(competition=comp.name), metadata=bearer(people[0][1])
    ).results
    assert fetched == published.results
    assert fetched.public_key == server.rt.signer.public_key and fetched.key_id == key_id(fetched.public_key)
    doc = verify_results(
        fetched.payload, fetched.signature, server.rt.signer.public_key, competition=comp.name
    )
    assert [r["user"] for r in doc["ranking"]] == [f"users/{uid}" for uid, _ in people]
    assert doc["ranking"][0] == {"rank": 1, "user": f"users/{people[0][0]}", "score": 3.5, "prize": 0}
    tampered = fetched.payload.replace(b'"score":3.5', b'"score":9.5')
    with pytest.raises(ResultsVerificationError):
        verify_results(tampered, fetched.signature, server.rt.signer.public_key)
    with pytest.raises(ResultsVerificationError):
        verify_results(
            fetched.payload, fetched.signature, server.rt.signer.public_key, competition="competitions/x"
        )
    board = svc.GetLeaderboard(
        competition_pb2.GetLeaderboardRequest(competition=comp.name, page_size=2), metadata=bearer(org)
    )
    assert [(r.rank, r.score) for r in board.rows] == [(1, 3.5), (2, 2.0)]
    rest = svc.GetLeaderboard(
        competition_pb2.GetLeaderboardRequest(
            competition=comp.name, page_size=2, page_token=board.next_page_token
        ),
        metadata=bearer(org),
    )
    assert [r.rank for r in rest.rows] == [3] and not rest.next_page_token
    assert len(rules.notifications_of(comp.name.split("/")[1], rules.RESULTS)) == 3


def test_registrations_are_listed_and_exported_as_csv_to_the_owner_only(server):
    _, org = server.make_user("organizer")
    tokens = [server.make_user("participant")[1] for _ in range(5)]
    comp = create(server, org, capacity=2)
    regs = [register(server, t, comp.name) for t in tokens]
    svc = stub(server)
    listed = svc.ListRegistrations(
        competition_pb2.ListRegistrationsRequest(
            competition=comp.name, state=competition_pb2.REGISTRATION_STATE_WAITLISTED
        ),
        metadata=bearer(org),
    ).registrations
    assert [(r.name, r.position) for r in listed] == [(regs[i].name, i - 1) for i in (2, 3, 4)]
    failure = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        svc.ListRegistrations,
        competition_pb2.ListRegistrationsRequest(competition=comp.name),
        metadata=bearer(tokens[0]),
    )
    assert failure.reason == "NOT_OWNER"
    chunks = svc.ExportRegistrations(
        competition_pb2.ExportRegistrationsRequest(competition=comp.name), metadata=bearer(org)
    )
    rows = list(csv.DictReader(io.StringIO(b"".join(c.csv_chunk for c in chunks).decode())))
    assert [r["registration"] for r in rows] == [r.name for r in regs]
    assert [(r["state"], r["position"]) for r in rows] == [
        ("CONFIRMED", "0"),
        ("CONFIRMED", "0"),
        ("WAITLISTED", "1"),
        ("WAITLISTED", "2"),
        ("WAITLISTED", "3"),
    ]
    with pytest.raises(grpc.RpcError) as info:
        list(
            svc.ExportRegistrations(
                competition_pb2.ExportRegistrationsRequest(competition=comp.name), metadata=bearer(tokens[0])
            )
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_watch_streams_seat_and_state_changes_until_terminal(server):
    _, org = server.make_user("organizer")
    _, token = server.make_user("participant")
    comp = create(server, org, capacity=1)
    stream = stub(server).WatchCompetition(
        competition_pb2.WatchCompetitionRequest(name=comp.name), metadata=bearer(token), timeout=30
    )
    first = next(stream).competition
    assert (first.free_seats, first.waitlisted_count) == (1, 0)
    register(server, token, comp.name)
    seen = next(stream).competition
    assert (seen.free_seats, seen.confirmed_count) == (0, 1)
    stub(server).CancelCompetition(
        competition_pb2.CancelCompetitionRequest(name=comp.name), metadata=bearer(org)
    )
    states = [state_name(m.competition.state) for m in stream]  # ends by itself after CANCELLED
    assert states[-1] == "CANCELLED"


def test_notifications_reach_the_webhook_signed_and_exactly_once(server, receiver):
    _, org = server.make_user("organizer")
    user_id, token = server.make_user("participant")
    _channel(server, user_id, receiver.url, secret="k" * 20)
    comp = create(server, org, capacity=1)
    register(server, token, comp.name)
    register(server, token, comp.name)  # again: the existing registration, no second confirmation
    assert outbox.deliver_due(server.rt) == 1
    assert receiver.kinds() == ["competition.confirmation"]
    headers, body = receiver.received[0]
    assert webhook.verify("k" * 20, body, headers["X-Coordd-Signature"])
    data = json.loads(body)["data"]
    assert (data["kind"], data["competition"], data["user"]) == (
        "confirmation",
        comp.name,
        f"users/{user_id}",
    )


def test_reminders_are_sent_exactly_once_across_a_scheduler_restart(settings_factory, clock, receiver):
    settings = settings_factory(**QUIET)
    first = ServerHandle(settings, clock)
    try:
        _, org = first.make_user("organizer")
        users = [first.make_user("participant") for _ in range(3)]
        for user_id, _ in users:
            _channel(first, user_id, receiver.url)
        comp = create(first, org, capacity=2, reminder_lead=DAY)
        for _, token in users:
            register(first, token, comp.name)  # two confirmed, one waitlisted
        assert rules.queue_reminders(first.rt) == 0, "not due yet"
        clock.advance(DAY + HOUR)  # start is now less than 24 h away
        assert rules.queue_reminders(first.rt) == 2
        assert rules.queue_reminders(first.rt) == 0
    finally:
        first.stop()
    second = ServerHandle(settings, clock)
    try:
        comp_id = comp.name.split("/")[1]
        assert rules.queue_reminders(second.rt) == 0
        # Even if the step ran again (a crash before its commit is the only way), the
        # unique (registration, kind) key keeps it to one reminder each.
        Competition.update(reminder_time=second.rt.now()).where(Competition.id == comp_id).execute()
        assert rules.queue_reminders(second.rt) == 0
        while outbox.deliver_due(second.rt):
            pass
        reminders = [k for k in receiver.kinds() if k == "competition.reminder"]
        assert len(reminders) == 2
        rows = CompetitionNotification.select().where(CompetitionNotification.kind == rules.REMINDER)
        assert sorted(r.user_id for r in rows) == sorted(uid for uid, _ in users[:2])
        assert Delivery.select().where(Delivery.event_type == "competition.reminder").count() == 2
    finally:
        second.stop()


def test_the_scheduler_loop_advances_competitions_by_itself(settings_factory, clock):
    """With the real scheduler running (no manual ticks): deadlines pass, states follow."""
    handle = ServerHandle(settings_factory(access_token_ttl_s=60 * 86400), clock)
    try:
        _, org = handle.make_user("organizer")
        comp = create(handle, org)
        clock.advance(4 * DAY)
        handle.app.scheduler.kick("competition-lifecycle")
        deadline = time.monotonic() + 20
        while state_name(get(handle, org, comp.name).state) != "ENDED" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state_name(get(handle, org, comp.name).state) == "ENDED"
    finally:
        handle.stop()


def test_someone_confirmed_after_the_reminders_went_out_gets_one_at_once(server, clock):
    _, org = server.make_user("organizer")
    (first_id, first), (late_id, late), (waiting_id, waiting) = [server.make_user() for _ in range(3)]
    now = server.rt.now()
    comp = create(
        server,
        org,
        capacity=2,
        reminder_lead=DAY,
        registration_close_time=spec(now).start_time,  # registration stays open until the start
    )
    register(server, first, comp.name)
    clock.advance(DAY + HOUR)
    assert rules.queue_reminders(server.rt) == 1
    late_reg = register(server, late, comp.name)  # after the reminders: gets one now
    register(server, waiting, comp.name)  # waitlisted: none

    def reminded() -> list[str]:
        return sorted(n.user_id for n in rules.notifications_of(comp.name.split("/")[1], rules.REMINDER))

    assert reminded() == sorted([first_id, late_id])
    stub(server).CancelRegistration(
        competition_pb2.CancelRegistrationRequest(name=late_reg.name), metadata=bearer(late)
    )
    # The promoted head is confirmed after the reminders too.
    assert reminded() == sorted([first_id, late_id, waiting_id])
    assert rules.queue_reminders(server.rt) == 0
