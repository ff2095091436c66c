"""Delivery fencing and the delivery limits as settings: a sender POSTs only while its
process leads and its claim outlives the send; what it does not send is handed back at
once; the concurrency, breaker and per-owner limits are read from the settings."""

from __future__ import annotations

import grpc
import pytest

from coordd.domain import notify
from coordd.domain.notify import delivery as sending
from coordd.domain.notify import outbox
from coordd.scheduler.notify import SEND_BUDGET_S, Dispatcher
from coordd.store.notify.models import Delivery
from coordd.store.scheduler_lease import FENCE, Fence
from coordd_client.v1 import notification_pb2 as npb
from tests.helpers import rpc_error
from tests.node.helpers import Fleet, Receiver, serve
from tests.notify.test_delivery_isolation import channel


@pytest.fixture
def srv(settings_factory, clock):
    yield from serve(settings_factory, clock)


def send_claim(srv, claim: sending.Claim, leading: bool) -> None:  # type: ignore[no-untyped-def]
    """One dispatcher send of `claim`, in a task whose fence says whether it still leads."""
    dispatcher = Dispatcher(srv.rt)
    dispatcher.by_channel[claim.channel.id] = dispatcher.by_owner[claim.channel.owner_id] = 1

    async def under_fence() -> None:
        FENCE.set(Fence("test-holder", 1, lambda: leading, 1000))
        await dispatcher._send(claim)

    try:
        srv.call(under_fence())
    finally:
        dispatcher.close()


def pending_delivery(srv, receiver: Receiver) -> tuple[Fleet, sending.Claim]:  # type: ignore[no-untyped-def]
    fleet = Fleet(srv)
    channel(fleet, receiver.url)
    with srv.rt.store.write() as tx:
        outbox.enqueue(tx, {fleet.owner_id}, "node.down", "fenced", {})
    [claim] = fleet.run(lambda rt: sending.claim_due(rt, 1))
    return fleet, claim


def test_a_sender_that_no_longer_leads_does_not_post_and_hands_the_delivery_back(srv, clock):
    receiver = Receiver()
    try:
        fleet, claim = pending_delivery(srv, receiver)
        send_claim(srv, claim, leading=False)
        assert receiver.requests == [], "no POST once leadership ended"
        row = Delivery.get_by_id(claim.delivery.id)
        assert row.state == notify.PENDING and row.attempts == 0
        assert row.next_attempt_time <= clock(), "due again at once, for whoever leads"
        [again] = fleet.run(lambda rt: sending.claim_due(rt, 1))
        send_claim(srv, again, leading=True)
        assert len(receiver.requests) == 1
        assert Delivery.get_by_id(claim.delivery.id).state == notify.DELIVERED
    finally:
        receiver.close()


def test_a_claim_too_close_to_expiry_for_a_whole_send_is_not_posted(srv, clock):
    receiver = Receiver()
    try:
        _, claim = pending_delivery(srv, receiver)
        clock.advance(sending.CLAIM_S - SEND_BUDGET_S + 1)  # the sender was stalled after claiming
        send_claim(srv, claim, leading=True)
        assert receiver.requests == [], "another sender could take it over mid-POST"
        assert Delivery.get_by_id(claim.delivery.id).attempts == 0
    finally:
        receiver.close()


def test_the_per_owner_limits_come_from_the_settings(settings_factory, clock):
    receiver = Receiver()
    srv_gen = serve(
        lambda **kw: settings_factory(notify_max_channels_per_owner=2, notify_max_tests_per_minute=1, **kw),
        clock,
    )
    srv = next(srv_gen)
    try:
        fleet = Fleet(srv)
        first = channel(fleet, receiver.url, "a")
        channel(fleet, receiver.url, "b")
        too_many = rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            fleet.notify.CreateChannel,
            npb.CreateChannelRequest(display_name="c", url=receiver.url),
            metadata=fleet.md,
        )
        assert too_many.reason == "CHANNEL_LIMIT"
        fleet.notify.TestChannel(npb.TestChannelRequest(name=first.name), metadata=fleet.md)
        limited = rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            fleet.notify.TestChannel,
            npb.TestChannelRequest(name=first.name),
            metadata=fleet.md,
        )
        assert limited.reason == "TEST_LIMIT"
    finally:
        srv_gen.close()
        receiver.close()


def test_the_circuit_opens_after_the_configured_failures(settings_factory, clock):
    dead = Receiver(fail_first=100)
    srv_gen = serve(
        lambda **kw: settings_factory(notify_circuit_failures=2, notify_circuit_open_s=7.0, **kw), clock
    )
    srv = next(srv_gen)
    try:
        fleet = Fleet(srv)
        created = channel(fleet, dead.url)
        with srv.rt.store.write() as tx:
            for i in range(4):
                outbox.enqueue(tx, {fleet.owner_id}, "node.down", f"breaker-{i}", {})
        for _ in range(2):
            fleet.run(lambda rt: notify.deliver_due(rt, 1))
        listed = fleet.notify.GetChannel(npb.GetChannelRequest(name=created.name), metadata=fleet.md).channel
        assert listed.circuit_state == npb.CIRCUIT_STATE_OPEN and listed.consecutive_failures == 2
        opened_until = listed.circuit_open_until.ToDatetime().timestamp()
        opened_for = opened_until - clock().replace(tzinfo=None).timestamp()
        assert 6.0 <= opened_for <= 7.5
        assert fleet.run(lambda rt: notify.deliver_due(rt, 10)) == 0, "open: nothing attempted"
    finally:
        srv_gen.close()
        dead.close()


def test_the_dispatcher_pool_size_comes_from_the_settings(settings_factory, clock):
    srv_gen = serve(lambda **kw: settings_factory(notify_max_in_flight=3, **kw), clock)
    srv = next(srv_gen)
    try:
        dispatcher = Dispatcher(srv.rt)
        assert dispatcher.size == 3
        dispatcher.close()
    finally:
        srv_gen.close()
