"""Competition lifecycle: the persisted state machine, advanced by the scheduler by time."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from coordd.domain import competition as rules
from coordd.domain.competition import lifecycle
from coordd.store.competition.models import Competition
from coordd_client.v1 import competition_pb2
from tests.competition.support import (
    DAY,
    HOUR,
    competition_server,
    create,
    get,
    register,
    spec,
    state_name,
    stub,
)
from tests.helpers import rpc_error
from tests.support.server import bearer

__all__ = ["competition_server"]  # the `server` fixture: tokens outlive clock.advance()


def test_draft_is_private_until_published_then_opens(server):
    _, org = server.make_user("organizer")
    _, other = server.make_user("participant")
    draft = create(server, org, publish=False)
    assert state_name(draft.state) == "DRAFT"
    rpc_error(grpc.StatusCode.NOT_FOUND, get, server, other, draft.name)
    failure = rpc_error(grpc.StatusCode.NOT_FOUND, register, server, other, draft.name)
    assert failure.metadata["resource"] == draft.name
    published = (
        stub(server)
        .PublishCompetition(competition_pb2.PublishCompetitionRequest(name=draft.name), metadata=bearer(org))
        .competition
    )
    # registration_open_time has passed: publishing opens it at once, recorded as a transition.
    assert state_name(published.state) == "OPEN"
    assert [(state_name(t.from_state), state_name(t.to_state)) for t in published.transitions] == [
        ("DRAFT", "OPEN")
    ]
    assert published.transitions[0].reason == "registration opened"
    assert get(server, other, draft.name).name == draft.name


def test_publish_before_open_time_opens_when_the_scheduler_reaches_it(server, clock):
    _, org = server.make_user("organizer")
    now = server.rt.now()
    comp = create(
        server,
        org,
        registration_open_time=spec(now).registration_close_time,  # opens in 1 h
        registration_close_time=spec(now).start_time,
    )
    assert state_name(comp.state) == "DRAFT" and comp.HasField("publish_time")
    assert rules.advance_due(server.rt) == 0
    clock.advance(HOUR + 1)
    assert rules.advance_due(server.rt) == 1
    assert state_name(get(server, org, comp.name).state) == "OPEN"


def test_time_moves_it_through_every_state_in_one_tick_and_results_settle(server, clock):
    _, org = server.make_user("organizer")
    pid, participant = server.make_user("participant")
    comp = create(server, org)
    register(server, participant, comp.name)
    clock.advance(4 * DAY)
    # The scheduler was "down": one tick catches up OPEN -> CLOSED -> RUNNING -> ENDED.
    assert rules.advance_due(server.rt) == 3
    assert rules.advance_due(server.rt) == 0
    ended = get(server, org, comp.name)
    assert state_name(ended.state) == "ENDED"
    reply = stub(server).PublishResults(
        competition_pb2.PublishResultsRequest(
            competition=comp.name, ranking=[competition_pb2.RankedScore(user=f"users/{pid}", score=9.5)]
        ),
        metadata=bearer(org),
    )
    assert state_name(reply.competition.state) == "SETTLED"
    transitions = reply.competition.transitions
    path = [(state_name(t.from_state), state_name(t.to_state), t.reason) for t in transitions]
    assert [(a, b) for a, b, _ in path] == [
        ("DRAFT", "OPEN"),
        ("OPEN", "REGISTRATION_CLOSED"),
        ("REGISTRATION_CLOSED", "RUNNING"),
        ("RUNNING", "ENDED"),
        ("ENDED", "RESULTS_PUBLISHED"),
        ("RESULTS_PUBLISHED", "SETTLED"),
    ]
    assert path[1][2] == "registration deadline reached"
    assert all(t.HasField("time") for t in reply.competition.transitions)
    # Terminal: nothing more is due, and it cannot be cancelled any more.
    assert Competition.get_by_id(comp.name.split("/")[1]).due_time is None
    rpc_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        stub(server).CancelCompetition,
        competition_pb2.CancelCompetitionRequest(name=comp.name),
        metadata=bearer(org),
    )


def test_chains_are_bounded_per_tick(server, clock):
    rules.configure(server.rt, max_chain=1)
    _, org = server.make_user("organizer")
    comp = create(server, org)
    clock.advance(4 * DAY)
    assert rules.advance_due(server.rt) == 1
    assert state_name(get(server, org, comp.name).state) == "REGISTRATION_CLOSED"
    assert rules.advance_due(server.rt) == 1
    assert rules.advance_due(server.rt) == 1
    assert state_name(get(server, org, comp.name).state) == "ENDED"


def test_repeated_errors_are_listed_then_the_competition_fails(server, clock, monkeypatch):
    rules.configure(server.rt, max_errors=2, error_retry_s=30)
    _, org = server.make_user("organizer")
    comp = create(server, org)
    clock.advance(2 * HOUR)

    def broken(comp, now):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(lifecycle, "_next_step", broken)
    rules.advance_due(server.rt)
    first = get(server, org, comp.name)
    assert state_name(first.state) == "OPEN"
    assert [e.message for e in first.errors] == ["RuntimeError: disk on fire"]
    assert rules.advance_due(server.rt) == 0, "retried only after error_retry_s"
    clock.advance(31)
    rules.advance_due(server.rt)
    failed = get(server, org, comp.name)
    assert state_name(failed.state) == "FAILED"
    assert state_name(failed.previous_state) == "OPEN"
    assert len(failed.errors) == 2
    assert "failed after 2 errors" in failed.transitions[-1].reason


def test_update_uses_the_field_mask_and_capacity_rules(server):
    _, org = server.make_user("organizer")
    _, intruder = server.make_user("organizer")
    users = [server.make_user("participant")[1] for _ in range(3)]
    comp = create(server, org, capacity=2)
    for token in users:
        register(server, token, comp.name)
    svc = stub(server)

    def update(token, paths, **fields):
        return svc.UpdateCompetition(
            competition_pb2.UpdateCompetitionRequest(
                competition=competition_pb2.Competition(name=comp.name, **fields),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            metadata=bearer(token),
        ).competition

    failure = rpc_error(grpc.StatusCode.PERMISSION_DENIED, update, intruder, ["title"], title="mine")
    assert failure.reason == "NOT_OWNER"
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, update, org, ["capacity"], capacity=1)
    assert failure.reason == "CAPACITY_BELOW_TAKEN"
    failure = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, update, org, ["entry_fee"], entry_fee=5)
    assert failure.reason == "COMPETITION_PUBLISHED"
    failure = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, update, org, ["state"])
    assert "update_mask" in failure.violations
    # Only masked fields change; growing the capacity seats the waitlist head at once.
    grown = update(org, ["capacity", "title"], capacity=3, title="Summer cup", description="ignored")
    assert (grown.title, grown.description, grown.capacity) == ("Summer cup", "a test competition", 3)
    assert (grown.confirmed_count, grown.waitlisted_count, grown.free_seats) == (3, 0, 0)


def test_create_reports_every_bad_field_and_writes_nothing(server):
    _, org = server.make_user("organizer")
    _, participant = server.make_user("participant")
    now = server.rt.now()
    bad = spec(now, capacity=0, title="", tags=["Bad Tag"], prize_split_bps=[6000, 6000])
    bad.ClearField("end_time")
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub(server).CreateCompetition,
        competition_pb2.CreateCompetitionRequest(competition=bad),
        metadata=bearer(org),
    )
    assert {"title", "capacity", "tags[0]", "prize_split_bps", "end_time"} <= set(failure.violations)
    backwards = spec(now, end_time=spec(now).start_time)
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub(server).CreateCompetition,
        competition_pb2.CreateCompetitionRequest(competition=backwards),
        metadata=bearer(org),
    )
    assert "end_time" in failure.violations
    failure = rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        stub(server).CreateCompetition,
        competition_pb2.CreateCompetitionRequest(competition=spec(now)),
        metadata=bearer(participant),
    )
    assert failure.reason == "ROLE_REQUIRED"
    assert Competition.select().count() == 0


def test_list_filters_by_state_tag_and_owner_and_pages(server):
    org_id, org = server.make_user("organizer")
    _, other = server.make_user("organizer")
    a = create(server, org, tags=["chess"])
    b = create(server, org, tags=["go"])
    create(server, other, tags=["chess"], publish=False)  # someone else's draft: hidden
    svc = stub(server)

    def names(token, **filters):
        return [
            c.name
            for c in svc.ListCompetitions(
                competition_pb2.ListCompetitionsRequest(**filters), metadata=bearer(token)
            ).competitions
        ]

    assert names(org) == [a.name, b.name]
    assert names(org, tag="chess") == [a.name]
    open_state = competition_pb2.COMPETITION_STATE_OPEN
    assert names(org, owner=f"users/{org_id}", state=open_state) == [a.name, b.name]
    first = svc.ListCompetitions(competition_pb2.ListCompetitionsRequest(page_size=1), metadata=bearer(org))
    assert [c.name for c in first.competitions] == [a.name]
    second = svc.ListCompetitions(
        competition_pb2.ListCompetitionsRequest(page_size=1, page_token=first.next_page_token),
        metadata=bearer(org),
    )
    assert [c.name for c in second.competitions] == [b.name]


@pytest.mark.parametrize("who", ["owner", "admin"])
def test_cancel_records_the_previous_state_and_notifies_registrants(server, who):
    _, org = server.make_user("organizer")
    _, admin = server.make_user("admin")
    comp = create(server, org, capacity=1)
    register(server, server.make_user("participant")[1], comp.name)
    register(server, server.make_user("participant")[1], comp.name)
    cancelled = (
        stub(server)
        .CancelCompetition(
            competition_pb2.CancelCompetitionRequest(name=comp.name, reason="venue flooded"),
            metadata=bearer(org if who == "owner" else admin),
        )
        .competition
    )
    assert state_name(cancelled.state) == "CANCELLED"
    assert state_name(cancelled.previous_state) == "OPEN"
    assert cancelled.transitions[-1].reason == f"cancelled by {who}: venue flooded"
    notes = rules.notifications_of(comp.name.split("/")[1], rules.CANCELLATION)
    assert len(notes) == 2  # the confirmed and the waitlisted registrant
    rpc_error(grpc.StatusCode.FAILED_PRECONDITION, register, server, server.make_user()[1], comp.name)
