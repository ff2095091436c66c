"""One attempt to one channel, by its kind (blocking network I/O: call it from the
notification pool, never from the event loop)."""

from __future__ import annotations

from coordd.notify import smtp, webhook
from coordd.notify.outcome import Outcome


def send_to(
    kind: str,
    url: str,
    secret: str,
    body: str,
    event_type: str,
    delivery_id: str,
    allow_private_networks: bool,
) -> Outcome:
    if kind == "smtp":
        return smtp.send(url, secret, body, event_type, delivery_id, allow_private_networks)
    # Slack-compatible channels got their payload when queued; both are signed POSTs.
    return webhook.post(url, secret, body, event_type, delivery_id, allow_private_networks)
