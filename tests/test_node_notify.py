"""Notifications: signed webhooks through the outbox to a real local HTTP receiver,
with retries and backoff, dedup by incident, inhibition and the delivery log."""

from __future__ import annotations

import json

import grpc
import pytest

from coordd.notify import outbox, webhook
from coordd.store.node_models import Incident
from coordd_client.v1 import node_pb2
from tests.helpers import rpc_error
from tests.test_node_helpers import Fleet, Receiver, serve


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


def deliveries(fleet: Fleet, channel: str) -> list[node_pb2.Delivery]:
    reply = fleet.stub.ListDeliveries(node_pb2.ListDeliveriesRequest(channel=channel), metadata=fleet.md)
    return list(reversed(reply.deliveries))


def test_down_and_recovery_are_signed_retried_and_deduplicated(srv, clock, receiver):
    fleet = Fleet(srv)
    created = fleet.stub.CreateChannel(
        node_pb2.CreateChannelRequest(display_name="ops", url=receiver.url), metadata=fleet.md
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
    assert pending.state == node_pb2.DELIVERY_STATE_PENDING and pending.attempts == 1
    assert pending.last_status_code == 500
    assert fleet.run(outbox.deliver_due) == 0, "the retry waits for its backoff"
    clock.advance(2)
    assert fleet.run(outbox.deliver_due) == 1
    clock.advance(4)
    assert fleet.run(outbox.deliver_due) == 1
    [delivered] = deliveries(fleet, channel)
    assert delivered.state == node_pb2.DELIVERY_STATE_DELIVERED and delivered.attempts == 3
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
        fleet.stub.CreateChannel,
        node_pb2.CreateChannelRequest(display_name="x", url="ftp://example.com", secret="short"),
        metadata=fleet.md,
    )
    assert {"url", "secret"} <= set(bad.violations)
    channel = fleet.stub.CreateChannel(
        node_pb2.CreateChannelRequest(
            display_name="only recoveries", url=receiver.url, secret="s" * 32, event_types=["node.recovered"]
        ),
        metadata=fleet.md,
    ).channel
    with srv.rt.store.write() as tx:
        assert outbox.enqueue(tx, {fleet.owner_id}, "node.down", "k1", {}) == 0, "filtered out"
    receiver.fail_first = 0
    test = fleet.stub.TestChannel(node_pb2.TestChannelRequest(name=channel.name), metadata=fleet.md).delivery
    assert test.event_type == "channel.test"
    fleet.run(outbox.deliver_due)
    assert webhook.verify("s" * 32, receiver.requests[0][1], receiver.requests[0][0]["x-coordd-signature"])
    stranger = Fleet(srv)
    rpc_error(
        grpc.StatusCode.NOT_FOUND,
        stranger.stub.ListDeliveries,
        node_pb2.ListDeliveriesRequest(channel=channel.name),
        metadata=stranger.md,
    )
    assert stranger.stub.ListChannels(node_pb2.ListChannelsRequest(), metadata=stranger.md).channels == []
    fleet.stub.DeleteChannel(node_pb2.DeleteChannelRequest(name=channel.name), metadata=fleet.md)
    assert fleet.stub.ListChannels(node_pb2.ListChannelsRequest(), metadata=fleet.md).channels == []


def test_a_delivery_gives_up_after_its_last_attempt(srv, clock):
    dead = Receiver(fail_first=1000)
    try:
        fleet = Fleet(srv)
        channel = fleet.stub.CreateChannel(
            node_pb2.CreateChannelRequest(display_name="dead", url=dead.url), metadata=fleet.md
        ).channel
        fleet.stub.TestChannel(node_pb2.TestChannelRequest(name=channel.name), metadata=fleet.md)
        for _ in range(outbox.MAX_ATTEMPTS + 2):
            fleet.run(outbox.deliver_due)
            clock.advance(outbox.BACKOFF_MAX_S)
            fleet.refresh()
        [failed] = deliveries(fleet, channel.name)
        assert failed.state == node_pb2.DELIVERY_STATE_FAILED
        assert failed.attempts == outbox.MAX_ATTEMPTS == len(dead.requests)
    finally:
        dead.close()


def test_mass_outage_sends_one_project_alert_instead_of_per_node_ones(srv, clock, receiver):
    receiver.fail_first = 0
    fleet = Fleet(srv)
    fleet.stub.CreateChannel(
        node_pb2.CreateChannelRequest(display_name="ops", url=receiver.url), metadata=fleet.md
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
