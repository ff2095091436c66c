"""Channels: owner-scoped targets for notifications (a signed webhook, a Slack-compatible
incoming webhook, e-mail over SMTP), with their delivery log.

A channel's secret (the HMAC key; the SMTP password) is shown once at creation and stored
sealed (bound to the channel id); someone else's channel is reported as missing, so
existence is not leaked. An owner has at most MAX_CHANNELS_PER_OWNER channels and
queues at most MAX_TESTS_PER_MINUTE test deliveries a minute.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from urllib.parse import urlparse

from coordd.core.errors import NotFound, ResourceExhausted, Violations
from coordd.core.ids import new_id
from coordd.core.paging import Page, PageRequest
from coordd.core.principal import Principal
from coordd.domain.notify import outbox
from coordd.notify import smtp, webhook
from coordd.runtime import Runtime
from coordd.store.notify import queries
from coordd.store.notify.models import KINDS, SMTP, WEBHOOK, Channel, Delivery

# Defaults of notify_max_channels_per_owner and notify_max_tests_per_minute (config.py).
MAX_CHANNELS_PER_OWNER = 20
MAX_TESTS_PER_MINUTE = 5


def _check(rt: Runtime, kind: str, display_name: str, url: str, secret: str, event_types: list[str]) -> None:
    v = Violations()
    if kind not in KINDS:
        v.add("kind", "webhook, slack or smtp")
    if not display_name:
        v.add("display_name", "required")
    elif len(display_name) > 100:
        v.add("display_name", "at most 100 characters")
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        parsed = urlparse("")
    if kind == SMTP:
        if parsed.scheme not in smtp.SCHEMES or not parsed.hostname:
            v.add("url", "must be an smtp:// or smtps:// URL with ?to=address")
        else:
            try:
                smtp.recipients(url)
            except ValueError as exc:
                v.add("url", str(exc))
    elif parsed.scheme not in ("http", "https") or not parsed.hostname:
        v.add("url", "must be an http:// or https:// URL")
    elif len(url) > 2000:
        v.add("url", "at most 2000 characters")
    elif not rt.settings.webhook_allow_private_networks:
        refused = webhook.refused_host(parsed.hostname)
        if refused:
            v.add("url", f"{refused} (webhook_allow_private_networks is off)")
    if secret and kind != SMTP and not 16 <= len(secret) <= 200:
        v.add("secret", "16 to 200 characters")
    elif len(secret) > 200:
        v.add("secret", "at most 200 characters")
    for index, kind in enumerate(event_types):
        if not kind or len(kind) > 100 or not all(c.isalnum() or c in "._-" for c in kind):
            v.add(f"event_types[{index}]", "a dotted event type such as node.down")
    v.raise_if_any()


def create_channel(
    rt: Runtime,
    who: Principal,
    display_name: str,
    url: str,
    secret: str,
    event_types: list[str],
    kind: str = WEBHOOK,
) -> tuple[Channel, str]:
    kind = kind or WEBHOOK
    _check(rt, kind, display_name, url, secret, event_types)
    if kind != SMTP:
        secret = secret or secrets.token_urlsafe(32)
    channel_id = new_id()
    with rt.store.write() as tx:
        limit = rt.settings.notify_max_channels_per_owner
        if queries.count_live_channels(who.user_id) >= limit:
            raise ResourceExhausted(
                f"at most {limit} channels per owner; delete one first",
                reason="CHANNEL_LIMIT",
            )
        channel = queries.insert_channel(
            kind=kind,
            id=channel_id,
            owner=who.user_id,
            display_name=display_name,
            url=url,
            secret=rt.sealer.seal(secret, outbox.secret_context(channel_id)),
            event_types=sorted(set(event_types)),
            create_time=tx.now,
        )
        tx.emit("notify.channel.created", f"channels/{channel.id}", {"owner": f"users/{who.user_id}"})
    return channel, secret


def get_channel(who: Principal, channel_id: str) -> Channel:
    channel = queries.live_channel(channel_id)
    if channel is None or (channel.owner_id != who.user_id and not who.is_admin):
        # Someone else's channel is reported as missing: existence is not leaked.
        raise NotFound(f"channels/{channel_id} not found", metadata={"resource": f"channels/{channel_id}"})
    return channel


def list_channels(who: Principal, page: PageRequest) -> Page[Channel]:
    return queries.page_channels(who.user_id, page)


def delete_channel(rt: Runtime, who: Principal, channel_id: str) -> None:
    with rt.store.write() as tx:
        channel = get_channel(who, channel_id)
        channel.delete_time = tx.now
        channel.save()
        queries.fail_pending(channel.id, "channel deleted")
        tx.emit("notify.channel.deleted", f"channels/{channel.id}", {})


def test_channel(rt: Runtime, who: Principal, channel_id: str) -> Delivery:
    with rt.store.write() as tx:
        channel = get_channel(who, channel_id)
        sent = queries.count_recent_deliveries(
            channel.owner_id, outbox.TEST_EVENT, tx.now - timedelta(minutes=1)
        )
        limit = rt.settings.notify_max_tests_per_minute
        if sent >= limit:
            raise ResourceExhausted(
                f"at most {limit} test deliveries a minute per owner; retry later",
                reason="TEST_LIMIT",
                retry_after_s=60,
            )
        # Every test is its own delivery: the key is fresh.
        delivery_id = outbox.queue_to(
            tx, channel, outbox.TEST_EVENT, f"test:{new_id()}", {"message": "test delivery"}
        )
        tx.emit("notify.delivery.queued", f"channels/{channel.id}", {"type": outbox.TEST_EVENT})
    return queries.get_delivery(delivery_id)


def list_deliveries(who: Principal, channel_id: str, page: PageRequest) -> Page[Delivery]:
    channel = get_channel(who, channel_id)
    return queries.page_deliveries(channel.id, page)
