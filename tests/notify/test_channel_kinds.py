"""More channel kinds: e-mail over SMTP (against a real local SMTP server started by the
test) and Slack-compatible incoming-webhook payloads, beside the signed generic webhook."""

from __future__ import annotations

import json
import socket
import threading

import grpc
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from coordd.domain.notify import outbox
from coordd.notify import webhook
from coordd_client.v1 import notification_pb2 as npb
from tests.helpers import rpc_error
from tests.node.helpers import Fleet, Receiver, serve


@pytest.fixture
def srv(settings_factory, clock):
    yield from serve(settings_factory, clock)


class Mailbox:
    """An SMTP server on 127.0.0.1 that keeps every message it accepts."""

    def __init__(self, password: str = "") -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()
        box = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
                with box.lock:
                    box.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
                return "250 OK"

        def authenticate(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
            ok = isinstance(auth_data, LoginPassword) and auth_data.password.decode() == password
            return AuthResult(success=ok)

        kwargs = {"authenticator": authenticate, "auth_require_tls": False} if password else {}
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    def close(self) -> None:
        self.controller.stop()


def test_an_smtp_channel_mails_the_alert_to_its_recipients(srv):
    box = Mailbox()
    try:
        fleet = Fleet(srv)
        url = f"smtp://127.0.0.1:{box.port}/?to=ops@example.com,oncall@example.com&from=coordd@example.com"
        created = fleet.notify.CreateChannel(
            npb.CreateChannelRequest(display_name="mail", url=url, kind=npb.CHANNEL_KIND_SMTP),
            metadata=fleet.md,
        )
        assert created.channel.kind == npb.CHANNEL_KIND_SMTP and created.secret == ""
        data = {"node": "nodes/n1", "node_name": "edge-1", "cause": "no heartbeat for 30s"}
        with srv.rt.store.write() as tx:
            assert outbox.enqueue(tx, {fleet.owner_id}, "node.down", "mail-1", data) == 1
        assert fleet.run(outbox.deliver_due) == 1
        [(sender, rcpts, content)] = box.messages
        assert sender == "coordd@example.com" and rcpts == ["ops@example.com", "oncall@example.com"]
        text = content.decode()
        assert "Subject: [coordd] node edge-1 (nodes/n1) is DOWN: no heartbeat for 30s" in text
        assert "X-Coordd-Event: node.down" in text
        [delivery] = fleet.notify.ListDeliveries(
            npb.ListDeliveriesRequest(channel=created.channel.name), metadata=fleet.md
        ).deliveries
        assert delivery.state == npb.DELIVERY_STATE_DELIVERED and delivery.last_status_code == 250
        assert f"X-Coordd-Delivery: {delivery.name.split('/')[1]}" in text
    finally:
        box.close()


def test_an_smtp_channel_logs_in_with_its_secret_and_a_wrong_one_fails_the_attempt(srv):
    box = Mailbox(password="mail pass 123")
    try:
        fleet = Fleet(srv)
        url = f"smtp://alerts@127.0.0.1:{box.port}/?to=ops@example.com"
        for name, secret in (("good", "mail pass 123"), ("bad", "not the password")):
            fleet.notify.CreateChannel(
                npb.CreateChannelRequest(
                    display_name=name, url=url, secret=secret, kind=npb.CHANNEL_KIND_SMTP
                ),
                metadata=fleet.md,
            )
        with srv.rt.store.write() as tx:
            assert outbox.enqueue(tx, {fleet.owner_id}, "channel.test", "login", {}) == 2
        assert fleet.run(outbox.deliver_due) == 2
        assert len(box.messages) == 1, "only the right password delivers"
        channels = fleet.notify.ListChannels(npb.ListChannelsRequest(), metadata=fleet.md).channels
        assert sorted(c.consecutive_failures for c in channels) == [0, 1]
    finally:
        box.close()


def test_smtp_channel_urls_are_checked(srv):
    fleet = Fleet(srv)
    for url in ("smtp://127.0.0.1:25/", "smtp://127.0.0.1/?to=not-an-address", "http://127.0.0.1/?to=a@b.c"):
        failure = rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            fleet.notify.CreateChannel,
            npb.CreateChannelRequest(display_name="mail", url=url, kind=npb.CHANNEL_KIND_SMTP),
            metadata=fleet.md,
        )
        assert "url" in failure.violations
    unknown = rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        fleet.notify.CreateChannel,
        npb.CreateChannelRequest(display_name="x", url="http://127.0.0.1/h", kind=99),
        metadata=fleet.md,
    )
    assert "kind" in unknown.violations


def test_a_slack_channel_gets_a_slack_payload_signed_like_any_webhook(srv):
    receiver = Receiver()
    try:
        fleet = Fleet(srv)
        created = fleet.notify.CreateChannel(
            npb.CreateChannelRequest(display_name="chat", url=receiver.url, kind=npb.CHANNEL_KIND_SLACK),
            metadata=fleet.md,
        )
        data = {"node": "nodes/n1", "node_name": "edge-1", "outage_seconds": 75.0}
        with srv.rt.store.write() as tx:
            outbox.enqueue(tx, {fleet.owner_id}, "node.recovered", "slack-1", data)
        fleet.run(outbox.deliver_due)
        [(headers, body)] = receiver.requests
        payload = json.loads(body)
        assert payload["text"] == "[coordd] node edge-1 (nodes/n1) recovered after 75s down"
        [attachment] = payload["attachments"]
        assert {"title": "node", "value": "nodes/n1", "short": True} in attachment["fields"]
        assert webhook.verify(created.secret, body, headers["x-coordd-signature"])
    finally:
        receiver.close()
