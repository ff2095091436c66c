"""NotificationService: the caller's webhook channels and their delivery logs (the rules
are domain/notify/)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from coordd.api.convert import parse_name, ts
from coordd.core.errors import FieldViolation, InvalidArgument
from coordd.core.paging import PageRequest
from coordd.core.principal import require_user
from coordd.domain import notify
from coordd.runtime import Runtime
from coordd_client.v1 import notification_pb2 as pb
from coordd_client.v1 import notification_pb2_grpc


def channel_to_proto(c: notify.Channel, now: datetime, failures: int = notify.CIRCUIT_FAILURES) -> pb.Channel:
    state = notify.circuit_state(c, now, failures)
    return pb.Channel(
        name=f"channels/{c.id}",
        owner=f"users/{c.owner_id}",
        display_name=c.display_name,
        url=c.url,
        event_types=c.event_types or [],
        create_time=ts(c.create_time),
        kind=pb.ChannelKind.Value("CHANNEL_KIND_" + (c.kind or "webhook").upper()),
        circuit_state=pb.CircuitState.Value("CIRCUIT_STATE_" + state.upper()),
        consecutive_failures=c.consecutive_failures,
        circuit_open_until=ts(c.circuit_open_until) if state == notify.OPEN else None,
    )


def kind_from_proto(kind: int) -> str:
    if kind == pb.CHANNEL_KIND_UNSPECIFIED:
        return "webhook"
    if kind not in pb.ChannelKind.values():
        raise InvalidArgument("unknown channel kind", violations=[FieldViolation("kind", "unknown value")])
    return pb.ChannelKind.Name(kind)[len("CHANNEL_KIND_") :].lower()


def delivery_to_proto(d: notify.Delivery) -> pb.Delivery:
    return pb.Delivery(
        name=f"deliveries/{d.id}",
        channel=f"channels/{d.channel_id}",
        event_type=d.event_type,
        dedup_key=d.dedup_key,
        state=pb.DeliveryState.Value("DELIVERY_STATE_" + d.state.upper()),
        attempts=d.attempts,
        last_status_code=d.last_status_code,
        last_error=d.last_error,
        create_time=ts(d.create_time),
        next_attempt_time=ts(d.next_attempt_time),
        delivered_time=ts(d.delivered_time),
        body=d.body,
    )


class NotificationServicer(notification_pb2_grpc.NotificationServiceServicer):
    SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NotificationService"].full_name
    register = staticmethod(notification_pb2_grpc.add_NotificationServiceServicer_to_server)

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def _channel(self, c: notify.Channel) -> pb.Channel:
        return channel_to_proto(c, self.rt.now(), self.rt.settings.notify_circuit_failures)

    async def CreateChannel(self, request: pb.CreateChannelRequest, context: Any) -> pb.CreateChannelResponse:
        who = require_user()
        channel, secret = await self.rt.run(
            notify.create_channel,
            self.rt,
            who,
            request.display_name,
            request.url,
            request.secret,
            list(request.event_types),
            kind_from_proto(request.kind),
        )
        return pb.CreateChannelResponse(channel=self._channel(channel), secret=secret)

    async def GetChannel(self, request: pb.GetChannelRequest, context: Any) -> pb.GetChannelResponse:
        who = require_user()
        channel = await self.rt.run(notify.get_channel, who, parse_name(request.name, "channels"))
        return pb.GetChannelResponse(channel=self._channel(channel))

    async def ListChannels(self, request: pb.ListChannelsRequest, context: Any) -> pb.ListChannelsResponse:
        who = require_user()
        page = await self.rt.run(
            notify.list_channels, who, PageRequest.of(request.page_size, request.page_token)
        )
        return pb.ListChannelsResponse(
            channels=[self._channel(c) for c in page.items], next_page_token=page.next_token
        )

    async def DeleteChannel(self, request: pb.DeleteChannelRequest, context: Any) -> pb.DeleteChannelResponse:
        who = require_user()
        await self.rt.run(notify.delete_channel, self.rt, who, parse_name(request.name, "channels"))
        return pb.DeleteChannelResponse()

    async def TestChannel(self, request: pb.TestChannelRequest, context: Any) -> pb.TestChannelResponse:
        who = require_user()
        delivery = await self.rt.run(notify.test_channel, self.rt, who, parse_name(request.name, "channels"))
        return pb.TestChannelResponse(delivery=delivery_to_proto(delivery))

    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: Any
    ) -> pb.ListDeliveriesResponse:
        who = require_user()
        channel_id = parse_name(request.channel, "channels", "channel")
        page = await self.rt.run(
            notify.list_deliveries, who, channel_id, PageRequest.of(request.page_size, request.page_token)
        )
        return pb.ListDeliveriesResponse(
            deliveries=[delivery_to_proto(d) for d in page.items], next_page_token=page.next_token
        )
