"""coordctl notification channel create|list|show|delete|test and notification deliveries:
the caller's webhook channels (NotificationService) and their delivery logs."""

from __future__ import annotations

import argparse
from typing import Any

from coordd_client.cli.common import Context, emit, enum_word, table
from coordd_client.v1 import notification_pb2 as pb


def register(sub: Any) -> None:
    notification = sub.add_parser("notification", help="webhook channels and their deliveries")
    commands = notification.add_subparsers(dest="notification_command", required=True)
    channel = commands.add_parser("channel", help="the caller's webhook channels").add_subparsers(
        dest="channel_command", required=True
    )
    create = channel.add_parser("create", help="create a channel and print its signing secret once")
    create.add_argument("--name", required=True, help="display name")
    create.add_argument("--url", required=True, help="http:// or https:// URL that receives the POSTs")
    create.add_argument("--secret", default="", help="HMAC key, 16 to 200 characters (default: generated)")
    create.add_argument(
        "--event-type", action="append", default=[], help="e.g. node.down (repeatable; default: all)"
    )
    create.add_argument(
        "--kind",
        choices=["webhook", "slack", "smtp"],
        default="webhook",
        help="slack: an incoming-webhook URL; smtp: smtp://host:port/?to=a@example.com (secret: password)",
    )
    create.set_defaults(func=_create)
    channel.add_parser("list", help="the caller's channels").set_defaults(func=_list)
    for name, func, text in (
        ("show", _show, "one channel"),
        ("delete", _delete, "delete a channel; its pending deliveries are dropped"),
        ("test", _test, "queue a signed test delivery"),
    ):
        command = channel.add_parser(name, help=text)
        command.add_argument("channel", help="channels/{id}")
        command.set_defaults(func=func)
    deliveries = commands.add_parser("deliveries", help="the delivery log of a channel, newest first")
    deliveries.add_argument("channel", help="channels/{id}")
    deliveries.set_defaults(func=_deliveries)


def _events(channel: pb.Channel) -> str:
    return ",".join(channel.event_types) or "all"


def _create(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.notification.CreateChannel(
        pb.CreateChannelRequest(
            display_name=args.name,
            url=args.url,
            secret=args.secret,
            event_types=args.event_type,
            kind=pb.ChannelKind.Value("CHANNEL_KIND_" + args.kind.upper()),
        )
    )
    emit(ctx, reply, f"{reply.channel.name} created; signing secret (shown once): {reply.secret}")
    return 0


def _list(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.notification.ListChannels(pb.ListChannelsRequest())
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    table(
        ctx,
        "channels",
        ["channel", "name", "url", "events"],
        [[c.name, c.display_name, c.url, _events(c)] for c in reply.channels],
    )
    return 0


def _show(ctx: Context, args: argparse.Namespace) -> int:
    channel = ctx.client.notification.GetChannel(pb.GetChannelRequest(name=args.channel)).channel
    emit(ctx, channel, f"{channel.name} {channel.display_name}: {channel.url} ({_events(channel)})")
    return 0


def _delete(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.notification.DeleteChannel(pb.DeleteChannelRequest(name=args.channel))
    emit(ctx, reply, f"{args.channel} deleted")
    return 0


def _test(ctx: Context, args: argparse.Namespace) -> int:
    delivery = ctx.client.notification.TestChannel(pb.TestChannelRequest(name=args.channel)).delivery
    emit(ctx, delivery, f"{delivery.name} queued ({delivery.event_type})")
    return 0


def _deliveries(ctx: Context, args: argparse.Namespace) -> int:
    reply = ctx.client.notification.ListDeliveries(pb.ListDeliveriesRequest(channel=args.channel))
    if ctx.as_json:
        emit(ctx, reply)
        return 0
    table(
        ctx,
        "deliveries",
        ["delivery", "event", "state", "attempts", "last status", "last error"],
        [
            [
                d.name,
                d.event_type,
                enum_word(pb.DeliveryState, d.state),
                d.attempts,
                d.last_status_code or "-",
                d.last_error or "-",
            ]
            for d in reply.deliveries
        ],
    )
    return 0
