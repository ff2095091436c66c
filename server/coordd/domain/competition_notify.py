"""Delivery of the competition outbox (competition_notifications) to each registrant's
webhook: an HTTP POST of the JSON payload, signed with HMAC-SHA256, retried with backoff.

This duplicates what a shared outbox (notify/) would do; it exists because that module
was not available when competitions were built, and should fold into it once it is.

Exactly-once per (registration, kind) is the outbox's unique key. Delivery to a webhook is
at least once: a row is claimed (a lease in next_attempt_time) before the POST and marked
sent after it, so only a crash between those two steps repeats a POST; receivers drop
repeats by the `X-Coordd-Notification-Id` header. Users without a webhook get a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from datetime import timedelta

import structlog

from coordd.domain.competition import settings_of
from coordd.domain.errors import Violations
from coordd.domain.principal import Principal
from coordd.runtime import Runtime
from coordd.store.competition_models import CompetitionNotification, CompetitionWebhook

log = structlog.get_logger("coordd.competition.notify")

PENDING = "pending"
SENT = "sent"
FAILED = "failed"
MIN_SECRET = 16


def set_webhook(rt: Runtime, who: Principal, url: str, secret: str) -> CompetitionWebhook | None:
    v = Violations()
    if url:
        if len(url) > 2048 or not url.startswith(("http://", "https://")):
            v.add("url", "an http:// or https:// URL, at most 2048 characters")
        if len(secret) < MIN_SECRET:
            v.add("secret", f"at least {MIN_SECRET} characters")
        elif len(secret) > 256:
            v.add("secret", "at most 256 characters")
    elif secret:
        v.add("secret", "only with a url")
    v.raise_if_any()
    with rt.store.write() as tx:
        CompetitionWebhook.delete().where(CompetitionWebhook.user == who.user_id).execute()
        if not url:
            return None
        hook = CompetitionWebhook.create(user=who.user_id, url=url, secret=secret, update_time=tx.now)
        tx.emit("competition.webhook.set", f"users/{who.user_id}", {})
    return hook


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, timestamp + "." + body): receivers recompute it
    and reject stale timestamps, so a captured request cannot be replayed later."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _claim(rt: Runtime, batch: int) -> list[CompetitionNotification]:
    s = settings_of(rt)
    with rt.store.write() as tx:
        query = (
            CompetitionNotification.select()
            .where(
                (CompetitionNotification.next_attempt_time <= tx.now)
                & (CompetitionNotification.state == PENDING)
            )
            .order_by(CompetitionNotification.next_attempt_time)
            .limit(batch)
        )
        if rt.store.is_postgres:
            query = query.for_update(skip_locked=True)
        rows = list(query)
        if rows:
            CompetitionNotification.update(
                next_attempt_time=tx.now + timedelta(seconds=s.notification_lease_s)
            ).where(CompetitionNotification.id.in_([r.id for r in rows])).execute()
    return rows


def _post(url: str, secret: str, row: CompetitionNotification, timeout: float) -> None:
    body = json.dumps(
        {"id": row.id, "kind": row.kind, "user": f"users/{row.user_id}", **row.payload},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    stamp = str(int(time.time()))
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "coordd-competition-notify",
            "X-Coordd-Notification-Id": str(row.id),
            "X-Coordd-Timestamp": stamp,
            "X-Coordd-Signature": sign(secret, stamp, body),
        },
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if not 200 <= response.status < 300:
            raise urllib.error.HTTPError(url, response.status, "non-2xx", response.headers, None)


def deliver(rt: Runtime) -> int:
    """Scheduler task: delivers due notifications, outside any transaction."""
    s = settings_of(rt)
    rows = _claim(rt, s.batch)
    if not rows:
        return 0
    hooks = {
        h.user_id: h
        for h in CompetitionWebhook.select().where(CompetitionWebhook.user.in_({r.user_id for r in rows}))
    }
    sent = 0
    for row in rows:
        hook = hooks.get(row.user_id)
        error = ""
        if hook is None:
            log.info(
                "competition notification",
                notification=row.id,
                to=f"users/{row.user_id}",
                payload=row.payload,
            )
        else:
            try:
                _post(hook.url, hook.secret, row, s.notification_timeout_s)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:1000]
        with rt.store.write() as tx:
            if not error:
                CompetitionNotification.update(
                    state=SENT,
                    sent_time=tx.now,
                    attempts=row.attempts + 1,
                    next_attempt_time=None,
                    delivered_to=hook.url if hook else "log",
                    last_error="",
                ).where(CompetitionNotification.id == row.id).execute()
                sent += 1
                continue
            attempts = row.attempts + 1
            give_up = attempts >= s.notification_max_attempts
            delay = min(s.notification_backoff_s * 2 ** (attempts - 1), 3600.0)
            CompetitionNotification.update(
                state=FAILED if give_up else PENDING,
                attempts=attempts,
                last_error=error,
                next_attempt_time=None if give_up else tx.now + timedelta(seconds=delay),
            ).where(CompetitionNotification.id == row.id).execute()
            log.warning(
                "competition webhook failed",
                notification=row.id,
                attempts=attempts,
                gave_up=give_up,
                error=error,
            )
    return sent
