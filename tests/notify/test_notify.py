"""Notifications: signed webhooks through the outbox to a real local HTTP receiver,
with retries and backoff, dedup by incident, inhibition and the delivery log."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
from cryptography.exceptions import InvalidTag

from coordd.domain.notify import outbox
from coordd.notify import webhook
from coordd.store.node.models import Incident
from coordd.store.notify.models import Channel
from coordd_client.v1 import node_pb2
from coordd_client.v1 import notification_pb2 as npb
from tests.helpers import rpc_error
from tests.node.helpers import Fleet, Receiver, serve
from tests.support.server import ServerHandle


@pytest.fixture
def srv(settings_factory, clock):
    yield from serve(settings_factory, clock)


@pytest.fixture
def receiver():
    r = Receiver(fail_first=2)
    try:
        yield r
    finally:
        r.close()


def deliveries(fleet: Fleet, channel: str) -> list[npb.Delivery]:
    reply = fleet.notify.ListDeliveries(npb.ListDeliveriesRequest(channel=channel), metadata=fleet.md)
    return list(reversed(reply.deliveries))


def test_down_and_recovery_are_signed_retried_and_deduplicated(srv, clock, receiver):
    fleet = Fleet(srv)
    created = fleet.notify.CreateChannel(
        npb.CreateChannelRequest(display_name="ops", url=receiver.url), metadata=fleet.md
    )
    secret, channel = created.secret, created.channel.name
    assert len(secret) >= 32, "a secret is generated and shown once"
    project = fleet.project(min_nodes=10)
    node, key = fleet.node(project, "edge-1")
    fleet.up(key)
    workload = fleet.stub.CreateWorkload(
        node_pb2.CreateWorkloadRequest(project=project.name, display_name="w", spec="img", replicas=1),
        metadata=fleet.md,
    ).workload
    fleet.beat(key, (workload.name, node_pb2.REPLICA_STATE_RUNNING))
    fleet.flush()
    clock.advance(10)
    assert fleet.detect() == 1

    assert fleet.run(outbox.deliver_due) == 1
    [pending] = deliveries(fleet, channel)
    assert pending.event_type == "node.down", "the workload's DOWN is inhibited by its node's"
    assert pending.state == npb.DELIVERY_STATE_PENDING and pending.attempts == 1
    assert pending.last_status_code == 500
    assert fleet.run(outbox.deliver_due) == 0, "the retry waits for its backoff"
    clock.advance(2)
    assert fleet.run(outbox.deliver_due) == 1
    clock.advance(4)
    assert fleet.run(outbox.deliver_due) == 1
    [delivered] = deliveries(fleet, channel)
    assert delivered.state == npb.DELIVERY_STATE_DELIVERED and delivered.attempts == 3
    assert len(receiver.requests) == 3
    for headers, body in receiver.requests:
        assert webhook.verify(secret, body, headers["x-coordd-signature"])
        assert headers["x-coordd-delivery"] == delivered.name.split("/")[1]
        assert headers["x-coordd-event"] == "node.down"
    assert not webhook.verify(
        "another secret entirely", receiver.requests[0][1], headers["x-coordd-signature"]
    )
    down = json.loads(receiver.requests[0][1])
    assert down["data"]["node"] == node.name and down["data"]["incident"].startswith("incidents/")

    # The same incident is never notified twice, however often it is replayed.
    incident = Incident.get(Incident.subject_id == node.name.split("/")[1])
    with srv.rt.store.write() as tx:
        assert outbox.enqueue(tx, {fleet.owner_id}, "node.down", f"{incident.id}:opened", {}) == 0
    assert len(deliveries(fleet, channel)) == 1

    clock.advance(30)
    fleet.up(key)
    fleet.run(outbox.deliver_due)
    recovered = receiver.bodies()[-1]
    assert recovered["type"] == "node.recovered"
    assert recovered["data"]["outage_seconds"] >= 30
    assert recovered["dedup_key"] == f"{incident.id}:resolved"
    assert [d.event_type for d in deliveries(fleet, channel)] == ["node.down", "node.recovered"]


def test_channels_are_owner_scoped_filtered_tested_and_deleted(srv, receiver):
    fleet = Fleet(srv)
    bad = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        fleet.notify.CreateChannel,
        npb.CreateChannelRequest(display_name="x", url="ftp://example.com", secret="short"),
        metadata=fleet.md,
    )
    assert {"url", "secret"} <= set(bad.violations)
    channel = fleet.notify.CreateChannel(
        npb.CreateChannelRequest(
            display_name="only recoveries", url=receiver.url, secret="s" * 32, event_types=["node.recovered"]
        ),
        metadata=fleet.md,
    ).channel
    with srv.rt.store.write() as tx:
        assert outbox.enqueue(tx, {fleet.owner_id}, "node.down", "k1", {}) == 0, "filtered out"
    receiver.fail_first = 0
    test = fleet.notify.TestChannel(npb.TestChannelRequest(name=channel.name), metadata=fleet.md).delivery
    assert test.event_type == "channel.test"
    fleet.run(outbox.deliver_due)
    assert webhook.verify("s" * 32, receiver.requests[0][1], receiver.requests[0][0]["x-coordd-signature"])
    stranger = Fleet(srv)
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        stranger.notify.ListDeliveries,
        npb.ListDeliveriesRequest(channel=channel.name),
        metadata=stranger.md,
    )
    assert stranger.notify.ListChannels(npb.ListChannelsRequest(), metadata=stranger.md).channels == []
    fleet.notify.DeleteChannel(npb.DeleteChannelRequest(name=channel.name), metadata=fleet.md)
    assert fleet.notify.ListChannels(npb.ListChannelsRequest(), metadata=fleet.md).channels == []


def test_get_channel_returns_the_callers_channel_and_hides_others(srv, receiver):
    fleet = Fleet(srv)
    created = fleet.notify.CreateChannel(
        npb.CreateChannelRequest(display_name="ops", url=receiver.url, event_types=["node.down"]),
        metadata=fleet.md,
    )
    got = fleet.notify.GetChannel(npb.GetChannelRequest(name=created.channel.name), metadata=fleet.md)
    assert got.channel == created.channel and got.channel.event_types == ["node.down"]
    stranger = Fleet(srv)
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        stranger.notify.GetChannel,
        npb.GetChannelRequest(name=created.channel.name),
        metadata=stranger.md,
    )
    bad = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        fleet.notify.GetChannel,
        npb.GetChannelRequest(name="nodes/abc"),
        metadata=fleet.md,
    )
    assert "name" in bad.violations
    fleet.notify.DeleteChannel(npb.DeleteChannelRequest(name=created.channel.name), metadata=fleet.md)
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        fleet.notify.GetChannel,
        npb.GetChannelRequest(name=created.channel.name),
        metadata=fleet.md,
    )


def test_a_delivery_gives_up_after_its_last_attempt(srv, clock):
    dead = Receiver(fail_first=1000)
    try:
        fleet = Fleet(srv)
        channel = fleet.notify.CreateChannel(
            npb.CreateChannelRequest(display_name="dead", url=dead.url), metadata=fleet.md
        ).channel
        fleet.notify.TestChannel(npb.TestChannelRequest(name=channel.name), metadata=fleet.md)
        for _ in range(outbox.MAX_ATTEMPTS + 2):
            fleet.run(outbox.deliver_due)
            clock.advance(outbox.BACKOFF_MAX_S)
            fleet.refresh()
        [failed] = deliveries(fleet, channel.name)
        assert failed.state == npb.DELIVERY_STATE_FAILED
        assert failed.attempts == outbox.MAX_ATTEMPTS == len(dead.requests)
    finally:
        dead.close()


def test_mass_outage_sends_one_project_alert_instead_of_per_node_ones(srv, clock, receiver):
    receiver.fail_first = 0
    fleet = Fleet(srv)
    fleet.notify.CreateChannel(
        npb.CreateChannelRequest(display_name="ops", url=receiver.url), metadata=fleet.md
    )
    project = fleet.project(min_nodes=3)
    keys = [fleet.node(project, f"n{i}")[1] for i in range(3)]
    for key in keys:
        fleet.up(key)
    fleet.flush()
    clock.advance(10)
    assert fleet.detect() == 3
    fleet.run(outbox.deliver_due)
    assert [b["type"] for b in receiver.bodies()] == ["project.mass_outage"]
    for key in keys:
        fleet.up(key)
    fleet.run(outbox.deliver_due)
    assert [b["type"] for b in receiver.bodies()] == ["project.mass_outage", "project.mass_outage_resolved"]


# -- webhook targets: no way into the daemon's own network unless allowed -------------------------


@pytest.fixture
def public_only(settings_factory, clock):
    handle = ServerHandle(
        settings_factory(scheduler_enabled=False, webhook_allow_private_networks=False), clock
    )
    try:
        yield handle
    finally:
        handle.stop()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/hook",
        "http://[::1]:9000/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://localhost:8080/hook",
        "https://api.localhost/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_webhook_channels_to_non_public_addresses_are_refused(public_only, url):
    fleet = Fleet(public_only)
    failure = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        fleet.notify.CreateChannel,
        npb.CreateChannelRequest(display_name="internal", url=url),
        metadata=fleet.md,
    )
    assert "webhook_allow_private_networks" in failure.violations["url"]
    channels = fleet.notify.ListChannels(npb.ListChannelsRequest(), metadata=fleet.md).channels
    assert list(channels) == []


def test_webhook_channel_to_a_public_name_is_accepted(public_only):
    """Names are not resolved when a channel is created: DNS is checked at each delivery."""
    fleet = Fleet(public_only)
    created = fleet.notify.CreateChannel(
        npb.CreateChannelRequest(display_name="ops", url="https://hooks.example.com/coordd"),
        metadata=fleet.md,
    )
    assert created.channel.url == "https://hooks.example.com/coordd"


def test_webhook_delivery_refuses_an_address_that_is_not_public():
    """A name may resolve to a private address after its channel was accepted (or a channel
    may predate the setting): the resolved address is checked before connecting."""
    target = Receiver()
    try:
        for url in (target.url, target.url.replace("127.0.0.1", "localhost")):
            outcome = webhook.post(url, "s" * 32, "{}", "node.down", "d1", allow_private_networks=False)
            assert not outcome.ok and outcome.status_code == 0
            assert outcome.error.startswith("refused:") and "not a public address" in outcome.error
        assert target.requests == []
        allowed = webhook.post(target.url, "s" * 32, "{}", "node.down", "d2", allow_private_networks=True)
        assert allowed.ok and len(target.requests) == 1
        # Every checked address is tried in resolver order (localhost may list ::1 first).
        by_name = target.url.replace("127.0.0.1", "localhost")
        assert webhook.post(by_name, "s" * 32, "{}", "node.down", "d3", allow_private_networks=True).ok
    finally:
        target.close()


def test_webhook_redirects_are_not_followed():
    """A receiver answering 3xx cannot bounce the daemon to another address."""
    inner = Receiver()

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(307)
            self.send_header("Location", inner.url)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    outer = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=outer.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{outer.server_address[1]}/hook"
        outcome = webhook.post(url, "s" * 32, "{}", "node.down", "d1", allow_private_networks=True)
        assert not outcome.ok and outcome.status_code == 307 and outcome.error == "HTTP 307"
        assert inner.requests == []
    finally:
        outer.shutdown()
        outer.server_close()
        inner.close()


# -- channel secrets are sealed at rest ----------------------------------------------------------


def test_channel_secrets_are_sealed_in_the_database_and_still_sign(srv, receiver):
    fleet = Fleet(srv)
    created = fleet.notify.CreateChannel(
        npb.CreateChannelRequest(display_name="ops", url=receiver.url, secret="s" * 40),
        metadata=fleet.md,
    )
    row = Channel.get_by_id(created.channel.name.split("/")[1])
    assert row.secret.startswith("sealed:v1:") and "s" * 40 not in row.secret
    # A sealed value is bound to its channel: copied onto another row it does not open.
    other = Channel.create(
        owner=fleet.owner_id,
        display_name="copy",
        url=receiver.url,
        secret=row.secret,
        create_time=srv.rt.now(),
    )
    with pytest.raises(InvalidTag):
        srv.rt.sealer.open(other.secret, f"notify_channels/{other.id}/secret")
    assert srv.rt.sealer.open(row.secret, f"notify_channels/{row.id}/secret") == "s" * 40


def test_a_channel_stored_before_sealing_still_delivers(srv, clock):
    """Rows written before migration 22 hold the secret as is: read as is, and still signing."""
    fleet = Fleet(srv)
    target = Receiver()
    try:
        legacy = Channel.create(
            owner=fleet.owner_id,
            display_name="old",
            url=target.url,
            secret="p" * 32,
            create_time=srv.rt.now(),
        )
        with srv.rt.store.write() as tx:
            assert outbox.enqueue(tx, {fleet.owner_id}, "node.down", "legacy-1", {"node": "nodes/x"}) == 1
        assert fleet.run(outbox.deliver_due) == 1
        [(headers, body)] = target.requests
        assert webhook.verify("p" * 32, body, headers["x-coordd-signature"])
        assert Channel.get_by_id(legacy.id).secret == "p" * 32
    finally:
        target.close()


def test_sealing_round_trips_and_detects_tampering(tmp_path):
    from coordd.crypto.sealing import Sealer

    sealer = Sealer.load_or_create(tmp_path / "secrets.key")
    sealed = sealer.seal("webhook key ✓", "ctx-a")
    assert sealed != sealer.seal("webhook key ✓", "ctx-a"), "a fresh nonce each time"
    assert Sealer.load_or_create(tmp_path / "secrets.key").open(sealed, "ctx-a") == "webhook key ✓"
    tampered = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    for value, context in ((tampered, "ctx-a"), (sealed, "ctx-b")):
        with pytest.raises(InvalidTag):
            sealer.open(value, context)
    with pytest.raises(InvalidTag):
        Sealer(b"k" * 32).open(sealed, "ctx-a")
    assert (tmp_path / "secrets.key").stat().st_mode & 0o777 == 0o600
