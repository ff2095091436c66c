"""Delivery isolation: deliveries run concurrently in their own bounded pool, a hung or
dead receiver only slows its own channel (circuit breaker), owners are limited in
channels and test sends, and a delivery is never lost or sent twice across a restart."""

from __future__ import annotations

import socket
import threading
import time
from datetime import UTC, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest

from coordd.domain import notify
from coordd.domain.notify import delivery as sending
from coordd.domain.notify import outbox
from coordd.store.notify.models import Delivery
from coordd_client.v1 import node_pb2, notification_pb2_grpc
from coordd_client.v1 import notification_pb2 as npb
from tests.helpers import rpc_error
from tests.node.helpers import Fleet, Receiver, serve
from tests.support.server import Clock, ServerHandle, bearer


@pytest.fixture
def srv(settings_factory, clock):
    yield from serve(settings_factory, clock)


class HungReceiver:
    """Accepts connections, reads what is sent, and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.open = 0
        self.most_open = 0
        self.accepted = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with self.lock:
            self.open += 1
            self.accepted += 1
            self.most_open = max(self.most_open, self.open)
        conn.settimeout(0.2)
        while not self.closing.is_set():
            try:
                if conn.recv(65536) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        with self.lock:
            self.open -= 1
        conn.close()

    def close(self) -> None:
        self.closing.set()
        self.sock.close()


class ArrivalReceiver(Receiver):
    """A Receiver that also notes, on the daemon's clock, when each POST arrived."""

    def __init__(self, clock: Clock, delay_s: float = 0.0) -> None:
        self.arrivals: list[Any] = []
        self.arrived = threading.Event()
        self.delay_s = delay_s
        outer = self
        super().__init__()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with outer.lock:
                    outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    outer.arrivals.append(clock())
                outer.arrived.set()
                time.sleep(outer.delay_s)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server.shutdown()
        self.server.server_close()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def channel(fleet: Fleet, url: str, name: str = "ops", **fields: Any) -> npb.Channel:
    request = npb.CreateChannelRequest(display_name=name, url=url, **fields)
    return fleet.notify.CreateChannel(request, metadata=fleet.md).channel


def wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_another_operators_down_alert_arrives_within_2s_while_a_receiver_hangs_and_its_owner_floods(
    settings_factory, clock
):
    hung = HungReceiver()
    good = ArrivalReceiver(clock)
    srv = ServerHandle(settings_factory(scheduler_enabled=True), clock)
    try:
        flooder = Fleet(srv)
        hung_channels = [channel(flooder, hung.url, f"hung-{i}") for i in range(3)]
        # The flooder's own alerts pile up on its hung receivers...
        with srv.rt.store.write() as tx:
            for i in range(40):
                outbox.enqueue(tx, {flooder.owner_id}, "node.down", f"flood-{i}", {"node": f"nodes/f{i}"})
        # ...and it floods TestChannel until refused.
        refused = 0
        for i in range(12):
            request = npb.TestChannelRequest(name=hung_channels[i % 3].name)
            try:
                flooder.notify.TestChannel(request, metadata=flooder.md)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                refused += 1
        assert refused == 12 - notify.MAX_TESTS_PER_MINUTE
        assert wait_for(lambda: hung.open >= 2, 5), "the hung receiver holds deliveries open"

        operator = Fleet(srv)
        channel(operator, good.url, event_types=["node.down"])
        project = operator.project(min_nodes=10)
        node, key = operator.node(project, "edge-1")
        operator.up(key)
        operator.flush()
        clock.advance(10)  # silent past its window: the scheduler's detector marks it DOWN
        assert good.arrived.wait(10), "the other operator's DOWN alert arrived"
        [down] = [t for t in operator.transitions(node.name) if t.to_status == node_pb2.HEALTH_STATUS_DOWN]
        latency = (good.arrivals[0] - down.time.ToDatetime(tzinfo=UTC)).total_seconds()
        print(
            f"DOWN webhook {latency:.3f}s after the DOWN transition;"
            f" the hung receiver held {hung.most_open} connections"
        )
        assert latency < 2.0, f"DOWN notified {latency:.2f}s after detection"
        assert good.bodies()[0]["type"] == "node.down"
        # The hung receiver never had more than the owner's share of the pool.
        assert hung.most_open <= sending.PER_OWNER_IN_FLIGHT
    finally:
        srv.stop()
        hung.close()
        good.close()


def test_the_circuit_opens_after_repeated_failures_shows_in_list_channels_and_closes_on_success(srv, clock):
    dead = Receiver(fail_first=1000)
    try:
        fleet = Fleet(srv)
        created = channel(fleet, dead.url)
        assert created.circuit_state == npb.CIRCUIT_STATE_CLOSED
        with srv.rt.store.write() as tx:
            for i in range(8):
                outbox.enqueue(tx, {fleet.owner_id}, "node.down", f"k{i}", {})
        attempts = 0
        while attempts < sending.CIRCUIT_FAILURES:
            attempts += fleet.run(lambda rt: sending.deliver_due(rt, batch=1))
        [listed] = fleet.notify.ListChannels(npb.ListChannelsRequest(), metadata=fleet.md).channels
        assert listed.circuit_state == npb.CIRCUIT_STATE_OPEN
        assert listed.consecutive_failures == sending.CIRCUIT_FAILURES
        opened_until = listed.circuit_open_until.ToDatetime()
        assert (
            timedelta(seconds=29) < opened_until - srv.rt.now().replace(tzinfo=None) <= timedelta(seconds=30)
        )

        clock.advance(sending.BACKOFF_MAX_S)  # every retry is due again, but the circuit...
        before = len(dead.requests)
        fleet.refresh()
        # ...is half-open now: one probe at a time, and it fails: open again, twice as long.
        assert fleet.run(outbox.deliver_due) == 1 and len(dead.requests) == before + 1
        reopened = fleet.notify.GetChannel(
            npb.GetChannelRequest(name=created.name), metadata=fleet.md
        ).channel
        assert reopened.circuit_state == npb.CIRCUIT_STATE_OPEN
        assert fleet.run(outbox.deliver_due) == 0, "nothing is attempted while open"
        untouched = Delivery.select().where(Delivery.attempts == 0).count()
        assert untouched == 8 - sending.CIRCUIT_FAILURES - 1, "an open circuit uses up no attempt"

        dead.fail_first = 0
        clock.advance(sending.BACKOFF_MAX_S)
        fleet.refresh()
        assert fleet.run(outbox.deliver_due) == 1, "half-open: a single probe"
        closed = fleet.notify.GetChannel(npb.GetChannelRequest(name=created.name), metadata=fleet.md).channel
        assert closed.circuit_state == npb.CIRCUIT_STATE_CLOSED and closed.consecutive_failures == 0
        fleet.run(outbox.deliver_due)
        assert Delivery.select().where(Delivery.state == notify.DELIVERED).count() == 8
    finally:
        dead.close()


def test_owners_are_limited_in_channels_and_test_sends(srv, clock):
    receiver = Receiver()
    try:
        fleet = Fleet(srv)
        created = [channel(fleet, receiver.url, f"c{i}") for i in range(notify.MAX_CHANNELS_PER_OWNER)]
        too_many = rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            fleet.notify.CreateChannel,
            npb.CreateChannelRequest(display_name="one more", url=receiver.url),
            metadata=fleet.md,
        )
        assert too_many.reason == "CHANNEL_LIMIT"
        fleet.notify.DeleteChannel(npb.DeleteChannelRequest(name=created[0].name), metadata=fleet.md)
        channel(fleet, receiver.url, "replacement")

        for _ in range(notify.MAX_TESTS_PER_MINUTE):
            fleet.notify.TestChannel(npb.TestChannelRequest(name=created[1].name), metadata=fleet.md)
        limited = rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            fleet.notify.TestChannel,
            npb.TestChannelRequest(name=created[2].name),
            metadata=fleet.md,
        )
        assert limited.reason == "TEST_LIMIT"
        other = Fleet(srv)
        theirs = channel(other, receiver.url)
        other.notify.TestChannel(npb.TestChannelRequest(name=theirs.name), metadata=other.md)
        clock.advance(61)
        fleet.refresh()
        fleet.notify.TestChannel(npb.TestChannelRequest(name=created[2].name), metadata=fleet.md)
    finally:
        receiver.close()


def test_channel_rpcs_need_a_role_that_owns_nodes_or_competitions(srv):
    stub = notification_pb2_grpc.NotificationServiceStub(srv.channel)
    _, participant = srv.make_user("participant")
    request = npb.CreateChannelRequest(display_name="x", url="http://127.0.0.1:9/hook")
    rpc_error(grpc.StatusCode.PERMISSION_DENIED, stub.CreateChannel, request, metadata=bearer(participant))
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        stub.ListChannels,
        npb.ListChannelsRequest(),
        metadata=bearer(participant),
    )
    _, organizer = srv.make_user("organizer")
    assert stub.CreateChannel(request, metadata=bearer(organizer)).channel.kind == npb.CHANNEL_KIND_WEBHOOK


def test_a_delivery_in_flight_at_shutdown_is_recorded_and_never_sent_twice(settings_factory, clock):
    slow = ArrivalReceiver(clock, delay_s=1.0)
    srv = ServerHandle(settings_factory(scheduler_enabled=True), clock)
    try:
        fleet = Fleet(srv)
        channel(fleet, slow.url)
        with srv.rt.store.write() as tx:
            for i in range(3):
                outbox.enqueue(tx, {fleet.owner_id}, "node.down", f"restart-{i}", {})
        assert slow.arrived.wait(10), "a delivery is in flight"
        srv.stop(grace=0)  # stops while the receiver is still answering: those are recorded
        # Nothing stays claimed by the stopped daemon: a restart sends the rest at once.
        srv = ServerHandle(settings_factory(scheduler_enabled=True), clock)
        assert wait_for(lambda: Delivery.select().where(Delivery.state == notify.DELIVERED).count() == 3, 15)
        ids = [headers["x-coordd-delivery"] for headers, _ in slow.requests]
        assert sorted(ids) == sorted(set(ids)) and len(ids) == 3, "each delivery was sent exactly once"
    finally:
        srv.stop()
        slow.close()


def test_a_sender_that_lost_its_claim_cannot_overwrite_the_new_owners_outcome(srv, clock):
    receiver = Receiver()
    try:
        fleet = Fleet(srv)
        channel(fleet, receiver.url)
        with srv.rt.store.write() as tx:
            outbox.enqueue(tx, {fleet.owner_id}, "node.down", "fenced", {})
        [stale] = fleet.run(lambda rt: sending.claim_due(rt, 1))
        clock.advance(sending.CLAIM_S + 1)  # the old leader hung past its claim
        [fresh] = fleet.run(lambda rt: sending.claim_due(rt, 1))
        assert fresh.delivery.id == stale.delivery.id
        assert fleet.run(lambda rt: sending.record(rt, fresh, sending.send(rt, fresh)))
        assert not fleet.run(lambda rt: sending.record(rt, stale, notify_outcome_failed()))
        row = Delivery.get_by_id(fresh.delivery.id)
        assert row.state == notify.DELIVERED and row.attempts == 1
    finally:
        receiver.close()


def notify_outcome_failed() -> Any:
    from coordd.notify import Outcome

    return Outcome(False, 500, "HTTP 500")
