"""Alert policies (issue 14): flapping (one notice when it starts, one when it settles),
escalation and reminders until acknowledged, recovery to every channel told of the
outage, and silences that hold back notifications while states and uptime stay true."""

from __future__ import annotations

import grpc
import pytest

from coordd.domain import node as node_domain
from coordd.domain.notify import outbox
from coordd_client.v1 import node_pb2
from coordd_client.v1 import notification_pb2 as npb
from tests.helpers import rpc_error
from tests.node.helpers import Fleet, Receiver, secs, serve


@pytest.fixture
def srv(settings_factory, clock):
    yield from serve(settings_factory, clock)


@pytest.fixture
def receiver():
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def channel(fleet: Fleet, url: str, *events: str) -> str:
    request = npb.CreateChannelRequest(display_name="ops", url=url, event_types=list(events))
    return fleet.notify.CreateChannel(request, metadata=fleet.md).channel.name


def set_policy(fleet: Fleet, project: node_pb2.Project, **fields) -> node_pb2.MonitoringPolicy:  # type: ignore[no-untyped-def]
    policy = node_pb2.MonitoringPolicy(name=f"{project.name}/monitoringPolicy", **fields)
    request = node_pb2.UpdateMonitoringPolicyRequest(monitoring_policy=policy)
    return fleet.stub.UpdateMonitoringPolicy(request, metadata=fleet.md).monitoring_policy


def down(fleet: Fleet, clock) -> None:  # type: ignore[no-untyped-def]
    fleet.flush()
    clock.advance(4)  # past the 3 s window
    assert fleet.detect() == 1


def types(fleet: Fleet, receiver: Receiver) -> list[str]:
    fleet.run(outbox.deliver_due)
    return [b["type"] for b in receiver.bodies()]


def test_a_flapping_node_sends_one_notice_when_it_starts_and_one_when_it_settles(srv, clock, receiver):
    fleet = Fleet(srv)
    channel(fleet, receiver.url)
    project = fleet.project(min_nodes=10)
    set_policy(fleet, project, flap_changes=3, flap_window=secs(120), flap_settle=secs(30))
    node, key = fleet.node(project)
    fleet.up(key)
    down(fleet, clock)
    fleet.up(key)
    assert types(fleet, receiver) == ["node.down", "node.recovered"]
    down(fleet, clock)  # the 4th change in the window: FLAPPING
    got = fleet.get(node.name)
    assert got.flapping and got.status == node_pb2.HEALTH_STATUS_DOWN
    listed = fleet.stub.ListNodes(node_pb2.ListNodesRequest(project=project.name), metadata=fleet.md)
    assert [n.flapping for n in listed.nodes] == [True]
    for _ in range(3):
        fleet.up(key)
        down(fleet, clock)
    fleet.up(key)
    assert types(fleet, receiver) == ["node.down", "node.recovered", "node.flapping"], "no notice per change"
    assert len(fleet.incidents(node.name)) == 5, "incidents stay true while flapping"
    assert fleet.run(node_domain.settle_flapping) == 0, "not quiet long enough yet"
    for _ in range(31):
        clock.advance(1)
        fleet.beat(key)
    fleet.refresh()
    assert fleet.run(node_domain.settle_flapping) == 1
    assert not fleet.get(node.name).flapping
    assert types(fleet, receiver)[-1] == "node.flapping_settled"
    assert receiver.bodies()[-1]["data"]["status"] == "UP"


def test_flapping_that_settles_while_down_notifies_the_outage_and_then_its_recovery(srv, clock, receiver):
    fleet = Fleet(srv)
    channel(fleet, receiver.url)
    project = fleet.project(min_nodes=10)
    set_policy(fleet, project, flap_changes=1, flap_window=secs(120), flap_settle=secs(10))
    node, key = fleet.node(project)
    fleet.up(key)
    down(fleet, clock)  # 2 changes > 1: FLAPPING at once, the outage held back
    [incident] = fleet.incidents(node.name)
    assert incident.notification_held
    clock.advance(11)
    fleet.refresh()
    assert fleet.run(node_domain.settle_flapping) == 1
    assert types(fleet, receiver) == ["node.flapping", "node.flapping_settled"]
    assert receiver.bodies()[-1]["data"]["status"] == "DOWN"
    fleet.up(key)
    assert types(fleet, receiver)[-1] == "node.recovered", "the settled outage's recovery is notified"


def test_an_unacknowledged_outage_escalates_repeats_and_recovery_reaches_every_channel_told(
    srv, clock, receiver
):
    pager = Receiver()
    try:
        fleet = Fleet(srv)
        channel(fleet, receiver.url, "node.down")  # this one only asked for DOWN alerts
        escalation = channel(fleet, pager.url, "channel.test")
        project = fleet.project(min_nodes=10)
        policy = set_policy(
            fleet, project, escalate_after=secs(60), escalation_channel=escalation, repeat_every=secs(120)
        )
        assert policy.flap_changes == 5 and policy.escalation_channel == escalation
        node, key = fleet.node(project)
        fleet.up(key)
        down(fleet, clock)
        assert types(fleet, receiver) == ["node.down"]
        assert fleet.run(node_domain.run_escalations) == 0, "not yet"
        clock.advance(60)
        assert fleet.run(node_domain.run_escalations) == 1
        assert types(fleet, pager) == ["node.escalated"]
        clock.advance(60)  # 2 minutes after the alert: a reminder (to the pager: filtered for the other)
        assert fleet.run(node_domain.run_escalations) == 1
        assert types(fleet, pager) == ["node.escalated", "node.reminder"]
        [incident] = fleet.incidents(node.name)
        assert incident.escalate_time.seconds and incident.reminders == 1

        acked = fleet.stub.AcknowledgeIncident(
            node_pb2.AcknowledgeIncidentRequest(name=incident.name), metadata=fleet.md
        ).incident
        assert acked.acknowledged_by == f"users/{fleet.owner_id}" and acked.acknowledge_time.seconds
        clock.advance(600)
        fleet.refresh()
        assert fleet.run(node_domain.run_escalations) == 0, "acknowledged: no more reminders"
        stranger = Fleet(srv)
        rpc_error(
            grpc.StatusCode.NOT_FOUND,
            stranger.stub.AcknowledgeIncident,
            node_pb2.AcknowledgeIncidentRequest(name=incident.name),
            metadata=stranger.md,
        )

        fleet.up(key)
        assert types(fleet, receiver) == ["node.down", "node.recovered"], (
            "told of the outage, told of its end"
        )
        assert types(fleet, pager)[-1] == "node.recovered"
        assert pager.bodies()[-1]["data"]["outage_seconds"] >= 720
        closed = rpc_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            fleet.stub.AcknowledgeIncident,
            node_pb2.AcknowledgeIncidentRequest(name=incident.name),
            metadata=fleet.md,
        )
        assert closed.reason == "INCIDENT_CLOSED"
    finally:
        pager.close()


def test_monitoring_policy_defaults_validation_and_ownership(srv, receiver):
    fleet = Fleet(srv)
    project = fleet.project()
    name = f"{project.name}/monitoringPolicy"
    got = fleet.stub.GetMonitoringPolicy(node_pb2.GetMonitoringPolicyRequest(name=name), metadata=fleet.md)
    policy = got.monitoring_policy
    assert (policy.flap_changes, policy.flap_window.seconds, policy.flap_settle.seconds) == (5, 600, 300)
    assert policy.escalate_after.seconds == 0 and policy.repeat_every.seconds == 0
    stranger = Fleet(srv)
    theirs = channel(stranger, receiver.url)
    bad = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        fleet.stub.UpdateMonitoringPolicy,
        node_pb2.UpdateMonitoringPolicyRequest(
            monitoring_policy=node_pb2.MonitoringPolicy(
                name=name, escalate_after=secs(60), escalation_channel=theirs, repeat_every=secs(5)
            )
        ),
        metadata=fleet.md,
    )
    assert {"monitoring_policy.escalation_channel", "monitoring_policy.repeat_every"} <= set(bad.violations)
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        stranger.stub.UpdateMonitoringPolicy,
        node_pb2.UpdateMonitoringPolicyRequest(monitoring_policy=node_pb2.MonitoringPolicy(name=name)),
        metadata=stranger.md,
    )
    masked = fleet.stub.UpdateMonitoringPolicy(
        node_pb2.UpdateMonitoringPolicyRequest(
            monitoring_policy=node_pb2.MonitoringPolicy(name=name, flap_changes=9, repeat_every=secs(99)),
            update_mask={"paths": ["flap_changes"]},
        ),
        metadata=fleet.md,
    ).monitoring_policy
    assert masked.flap_changes == 9 and masked.repeat_every.seconds == 0, "only the masked path changed"


def test_a_silence_holds_back_notifications_keeps_states_true_and_its_end_notifies_once(srv, clock, receiver):
    fleet = Fleet(srv)
    channel(fleet, receiver.url)
    project = fleet.project(min_nodes=10)
    node, key = fleet.node(project, labels={"rack": "r1"})
    _, other_key = fleet.node(project, labels={"rack": "r2"})
    fleet.up(key)
    fleet.up(other_key)
    missing_reason = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        fleet.stub.CreateSilence,
        node_pb2.CreateSilenceRequest(
            parent=project.name,
            silence=node_pb2.Silence(label_key="rack", label_value="r1"),
            duration=secs(600),
        ),
        metadata=fleet.md,
    )
    assert "silence.reason" in missing_reason.violations
    silence = fleet.stub.CreateSilence(
        node_pb2.CreateSilenceRequest(
            parent=project.name,
            silence=node_pb2.Silence(label_key="rack", label_value="r1", reason="moving rack r1"),
            duration=secs(600),
        ),
        metadata=fleet.md,
    ).silence
    assert silence.active and silence.created_by == f"users/{fleet.owner_id}"
    stranger = Fleet(srv)
    rpc_error(
        grpc.StatusCode.PERMISSION_DENIED,
        stranger.stub.CreateSilence,
        node_pb2.CreateSilenceRequest(
            parent=project.name, silence=node_pb2.Silence(reason="mine now"), duration=secs(60)
        ),
        metadata=stranger.md,
    )

    fleet.flush()
    clock.advance(4)
    fleet.beat(other_key)  # r2 keeps beating
    assert fleet.detect() == 1
    assert fleet.get(node.name).status == node_pb2.HEALTH_STATUS_DOWN, "the state stays true"
    [incident] = fleet.incidents(node.name)
    assert incident.notification_held
    assert types(fleet, receiver) == [], "held back by the silence"
    day = fleet.stub.GetUptime(node_pb2.GetUptimeRequest(name=node.name), metadata=fleet.md).windows[0]
    assert day.down.seconds >= 4, "uptime stays true"

    clock.advance(30)
    fleet.refresh()
    ended = fleet.stub.EndSilence(node_pb2.EndSilenceRequest(name=silence.name), metadata=fleet.md).silence
    assert not ended.active
    assert types(fleet, receiver) == ["node.down"], "its end, while still DOWN, notifies once"
    assert receiver.bodies()[0]["data"]["held_back"].startswith("silence")
    fleet.run(node_domain.run_silences)
    fleet.stub.EndSilence(node_pb2.EndSilenceRequest(name=silence.name), metadata=fleet.md)
    assert types(fleet, receiver) == ["node.down"], "once"
    fleet.up(key)
    assert types(fleet, receiver) == ["node.down", "node.recovered"]
    listed = fleet.stub.ListSilences(node_pb2.ListSilencesRequest(parent=project.name), metadata=fleet.md)
    assert [s.reason for s in listed.silences] == ["moving rack r1"]


def test_a_node_silence_that_expires_while_down_notifies_once_and_a_recovery_inside_says_nothing(
    srv, clock, receiver
):
    fleet = Fleet(srv)
    channel(fleet, receiver.url)
    project = fleet.project(min_nodes=10)
    node, key = fleet.node(project)
    fleet.up(key)
    fleet.stub.CreateSilence(
        node_pb2.CreateSilenceRequest(
            parent=project.name,
            silence=node_pb2.Silence(node=node.name, reason="reboot"),
            duration=secs(60),
        ),
        metadata=fleet.md,
    )
    down(fleet, clock)
    fleet.up(key)  # an outage and its recovery, both inside the silence: nothing sent
    down(fleet, clock)
    assert types(fleet, receiver) == []
    clock.advance(60)
    fleet.refresh()
    assert fleet.run(node_domain.run_silences) == 1
    assert fleet.run(node_domain.run_silences) == 0
    assert types(fleet, receiver) == ["node.down"]
